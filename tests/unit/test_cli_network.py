"""`shoal network ...`, the service `--network`/`--publish`/`--endpoint-mode` flags and swarm init's
address pools, against a fake daemon.

Drives the click commands with CliRunner and an httpx.MockTransport standing in for the daemon
(as test_cli_flags does): request bodies, name → ID resolution, docker's output and exit codes.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from shoal.cli.client import App
from shoal.cli.endpoint import parse_ports, ports_text
from shoal.cli.main import cli

SERVICE_ID = "s" * 25
JSON = {"Content-Type": "application/json", "Api-Version": "1.50"}
NETWORKS: dict[str, dict[str, Any]] = {
    "backend": {"Name": "backend", "Id": "b" * 64, "Driver": "overlay", "Scope": "swarm",
                "Created": "2025-01-02T03:04:05.5Z", "Labels": {"tier": "db"}},
    "front": {"Name": "front", "Id": "f" * 64, "Driver": "overlay", "Scope": "swarm",
              "Created": "2025-01-02T03:04:05Z"},
    "ingress": {"Name": "ingress", "Id": "i" * 64, "Driver": "overlay", "Scope": "swarm", "Ingress": True},
}
B_ID, F_ID = NETWORKS["backend"]["Id"], NETWORKS["front"]["Id"]


class FakeDaemon:
    """Records requests; answers ping, networks (by name or ID), services, swarm init."""

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.spec = spec or {}

    def _network(self, request: httpx.Request, ref: str) -> httpx.Response:
        found = next((n for n in NETWORKS.values() if ref in (n["Name"], n["Id"])), None)
        if found is None:
            return httpx.Response(404, headers=JSON, json={"message": f"network {ref} not found"})
        if request.method == "DELETE":
            return httpx.Response(204, headers=JSON)
        return httpx.Response(200, headers=JSON, json=found)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/v1.50")
        if path == "/_ping":
            return httpx.Response(200, headers=JSON, text="OK")
        if path == "/networks/create":
            return httpx.Response(201, headers=JSON, json={"Id": "n" * 64, "Warning": ""})
        if path == "/networks":
            return httpx.Response(200, headers=JSON, json=list(NETWORKS.values()))
        if path.startswith("/networks/"):
            return self._network(request, path.removeprefix("/networks/"))
        if path == "/services/create":
            return httpx.Response(201, headers=JSON, json={"ID": SERVICE_ID, "Warnings": None})
        if request.method == "GET" and path.startswith("/services/"):
            return httpx.Response(200, headers=JSON,
                                  json={"ID": SERVICE_ID, "Version": {"Index": 7}, "Spec": self.spec})
        if path.endswith("/update"):
            return httpx.Response(200, headers=JSON, json={"Warnings": None})
        if path == "/swarm/init":
            return httpx.Response(200, headers=JSON, json="node1")
        if path == "/nodes/node1":
            return httpx.Response(200, headers=JSON,
                                  json={"ID": "node1", "ManagerStatus": {"Addr": "1.2.3.4:2377"}})
        if path == "/swarm":
            return httpx.Response(200, headers=JSON, json={"JoinTokens": {"Worker": "SWMTKN-w"}})
        return httpx.Response(404, headers=JSON, json={"message": "nope"})

    def bodies(self, suffix: str) -> list[Any]:
        return [json.loads(r.content) for r in self.requests if r.url.path.endswith(suffix)]

    def calls(self) -> list[str]:
        return [f"{r.method} {r.url.path.removeprefix('/v1.50')}" for r in self.requests
                if r.url.path != "/_ping"]


def run(args: list[str], daemon: FakeDaemon, stdin: str | None = None) -> Any:
    app = App(host="tcp://127.0.0.1:1", transport=httpx.MockTransport(daemon))
    return CliRunner().invoke(cli, args, obj=app, input=stdin)


# ------------------------------------------------------------------------------------ network create
BASE_NETWORK: dict[str, Any] = {
    "Name": "net", "Driver": "overlay", "Scope": "",
    "IPAM": {"Driver": "default", "Options": {}, "Config": []},
    "Internal": False, "Attachable": False, "Ingress": False, "ConfigOnly": False, "ConfigFrom": None,
    "Options": {}, "Labels": {}}

NETWORK_CASES: list[tuple[list[str], dict[str, Any]]] = [
    ([], {}),
    (["-d", "overlay"], {}),
    (["--driver", "bridge"], {"Driver": "bridge"}),
    (["--attachable"], {"Attachable": True}),
    (["--internal"], {"Internal": True}),
    (["--scope", "swarm"], {"Scope": "swarm"}),
    (["--subnet", "10.10.0.0/24"], {"IPAM": {"Driver": "default", "Options": {},
                                             "Config": [{"Subnet": "10.10.0.0/24"}]}}),
    (["--subnet", "10.10.0.0/24", "--gateway", "10.10.0.1"],
     {"IPAM": {"Driver": "default", "Options": {},
               "Config": [{"Subnet": "10.10.0.0/24", "Gateway": "10.10.0.1"}]}}),
    (["--subnet", "10.1.0.0/24", "--subnet", "10.2.0.0/24", "--gateway", "10.2.0.254"],
     {"IPAM": {"Driver": "default", "Options": {},
               "Config": [{"Subnet": "10.1.0.0/24"}, {"Subnet": "10.2.0.0/24", "Gateway": "10.2.0.254"}]}}),
    (["--label", "a=b", "--label", "flag"], {"Labels": {"a": "b", "flag": ""}}),
    (["--opt", "encrypted", "-o", "com.docker.network.driver.mtu=1400"],
     {"Options": {"encrypted": "", "com.docker.network.driver.mtu": "1400"}}),
]


@pytest.mark.parametrize(("args", "changes"), NETWORK_CASES)
def test_network_create_body(args: list[str], changes: dict[str, Any]) -> None:
    daemon = FakeDaemon()
    result = run(["network", "create", *args, "net"], daemon)
    assert result.exit_code == 0, result.output
    assert result.output == "n" * 64 + "\n"
    assert daemon.bodies("/networks/create") == [{**BASE_NETWORK, **changes}]


BAD_NETWORKS: list[tuple[list[str], str]] = [
    (["--gateway", "10.0.0.1"], "every ip-range or gateway must have a corresponding subnet"),
    (["--subnet", "10.0.0.0/24", "--gateway", "10.9.0.1"], "no matching subnet for gateway 10.9.0.1"),
    (["--subnet", "nonsense"], "invalid subnet: invalid CIDR address: nonsense"),
    (["--subnet", "10.0.0.0/16", "--subnet", "10.0.1.0/24"],
     "multiple overlapping subnet configuration is not supported"),
    ([], "Missing argument"),
]


@pytest.mark.parametrize(("args", "message"), BAD_NETWORKS)
def test_network_create_bad_values_exit_1_before_any_request(args: list[str], message: str) -> None:
    daemon = FakeDaemon()
    result = run(["network", "create", *args] + (["net"] if args else []), daemon)
    assert result.exit_code == 1
    assert message in result.output
    assert daemon.requests == []


# ---------------------------------------------------------------------------- network ls/inspect/rm
def test_network_ls_table() -> None:
    daemon = FakeDaemon()
    result = run(["network", "ls"], daemon)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "NETWORK ID     NAME      DRIVER    SCOPE",
        "bbbbbbbbbbbb   backend   overlay   swarm",
        "ffffffffffff   front     overlay   swarm",
        "iiiiiiiiiiii   ingress   overlay   swarm"]
    assert daemon.calls() == ["GET /networks"]


def test_network_ls_quiet_no_trunc_filter_and_format() -> None:
    daemon = FakeDaemon()
    assert run(["network", "ls", "-q"], daemon).output.split() == ["b" * 12, "f" * 12, "i" * 12]
    assert run(["network", "ls", "-q", "--no-trunc"], daemon).output.split()[0] == B_ID
    result = run(["network", "ls", "-f", "driver=overlay", "--format",
                  "{{.Name}} {{.Labels}} {{.Internal}} {{.CreatedAt}}"], daemon)
    assert result.output.splitlines()[0] == "backend tier=db false 2025-01-02 03:04:05.5 +0000 UTC"
    assert daemon.requests[-1].url.params["filters"] == '{"driver":{"overlay":true}}'


def test_network_inspect_and_missing() -> None:
    daemon = FakeDaemon()
    result = run(["network", "inspect", "front"], daemon)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [NETWORKS["front"]]
    result = run(["network", "inspect", "--format", "{{.Id}}", "backend", "ghost"], daemon)
    assert result.exit_code == 1
    assert result.output.splitlines() == [B_ID, "Error response from daemon: network ghost not found"]


def test_network_rm_echoes_and_fails_after_trying_all() -> None:
    daemon = FakeDaemon()
    result = run(["network", "rm", "backend", "ghost", "front"], daemon)
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "backend", "Error response from daemon: network ghost not found", "front"]
    assert [c for c in daemon.calls() if c.startswith("DELETE")] == [
        "DELETE /networks/backend", "DELETE /networks/ghost", "DELETE /networks/front"]


def test_network_rm_force_ignores_missing_and_ingress_asks() -> None:
    daemon = FakeDaemon()
    result = run(["network", "rm", "-f", "ghost", "front"], daemon)
    assert result.exit_code == 0, result.output
    assert result.output == "front\n"
    result = run(["network", "rm", "ingress"], daemon, stdin="n\n")
    assert result.exit_code == 0
    assert "DELETE /networks/ingress" not in daemon.calls()


# --------------------------------------------------------------------------- service create --network
NETWORK_FLAG_CASES: list[tuple[list[str], list[dict[str, Any]]]] = [
    (["--network", "front"], [{"Target": F_ID}]),
    (["--network", "front", "--network", "backend"], [{"Target": B_ID}, {"Target": F_ID}]),
    (["--network", "name=backend,alias=db,alias=pg"], [{"Target": B_ID, "Aliases": ["db", "pg"]}]),
    (["--network", B_ID], [{"Target": B_ID}]),
]


@pytest.mark.parametrize(("args", "expected"), NETWORK_FLAG_CASES)
def test_create_network_resolved_to_id(args: list[str], expected: list[dict[str, Any]]) -> None:
    daemon = FakeDaemon()
    result = run(["service", "create", "-d", *args, "busybox"], daemon)
    assert result.exit_code == 0, result.output
    assert daemon.bodies("/services/create")[0]["TaskTemplate"]["Networks"] == expected
    lookups = [r for r in daemon.requests if r.url.path.removeprefix("/v1.50").startswith("/networks/")]
    assert lookups and all(r.url.params["scope"] == "swarm" for r in lookups)


def test_create_unknown_network_fails_before_create() -> None:
    daemon = FakeDaemon()
    result = run(["service", "create", "-d", "--network", "ghost", "busybox"], daemon)
    assert result.exit_code == 1
    assert "Error response from daemon: network ghost not found" in result.output
    assert daemon.bodies("/services/create") == []


# --------------------------------------------------------------------------- service create --publish
PUBLISH_CASES: list[tuple[list[str], dict[str, Any]]] = [
    (["-p", "8080:80"], {"Mode": "vip", "Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "ingress", "PublishedPort": 8080}]}),
    (["--publish", "80"], {"Mode": "vip", "Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "ingress"}]}),
    (["-p", "5353:53/udp"], {"Mode": "vip", "Ports": [
        {"Protocol": "udp", "TargetPort": 53, "PublishMode": "ingress", "PublishedPort": 5353}]}),
    (["-p", "published=8080,target=80,protocol=tcp,mode=ingress"], {"Mode": "vip", "Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "ingress", "PublishedPort": 8080}]}),
    (["-p", "mode=host,target=80,published=8081"], {"Mode": "vip", "Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "host", "PublishedPort": 8081}]}),
    (["-p", "target=53,protocol=udp"], {"Mode": "vip", "Ports": [
        {"Protocol": "udp", "TargetPort": 53, "PublishMode": "ingress"}]}),
    (["-p", "8080-8081:80-81"], {"Mode": "vip", "Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "ingress", "PublishedPort": 8080},
        {"Protocol": "tcp", "TargetPort": 81, "PublishMode": "ingress", "PublishedPort": 8081}]}),
    (["-p", "8080:80", "-p", "9090:90/udp"], {"Mode": "vip", "Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "ingress", "PublishedPort": 8080},
        {"Protocol": "udp", "TargetPort": 90, "PublishMode": "ingress", "PublishedPort": 9090}]}),
    (["--endpoint-mode", "dnsrr"], {"Mode": "dnsrr"}),
    (["--endpoint-mode", "VIP", "-p", "mode=host,target=80"], {"Mode": "vip", "Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "host"}]}),
]


@pytest.mark.parametrize(("args", "expected"), PUBLISH_CASES)
def test_create_endpoint_spec(args: list[str], expected: dict[str, Any]) -> None:
    daemon = FakeDaemon()
    result = run(["service", "create", "-d", *args, "busybox"], daemon)
    assert result.exit_code == 0, result.output
    assert daemon.bodies("/services/create")[0]["EndpointSpec"] == expected


BAD_ENDPOINTS: list[tuple[list[str], str]] = [
    (["-p", "abc"], 'invalid argument "abc" for "-p, --publish" flag: invalid containerPort: abc'),
    (["-p", "x:80"], 'invalid argument "x:80" for "-p, --publish" flag: invalid hostPort: x'),
    (["-p", "8080:80/icmp"], 'invalid argument "8080:80/icmp" for "-p, --publish" flag: invalid proto: icmp'),
    (["-p", "70000:80"], "invalid hostPort: 70000"),
    (["-p", "127.0.0.1:8080:80"], "hostip is not supported"),
    (["-p", "8080-8082:80-81"], "invalid ranges specified for container and host Ports: 80-81 and 8080-8082"),
    (["-p", "published=8080"], "missing mandatory field 'target'"),
    (["-p", "target=80,mode=bridge"],
     "invalid publish mode value (bridge): must be either 'ingress' or 'host'"),
    (["-p", "target=80,protocol=icmp"], "invalid protocol value 'icmp'"),
    (["-p", "target=80,color=red"], "invalid field key: color"),
    (["-p", "target=http"], 'strconv.ParseUint: parsing "http": invalid syntax'),
    (["--endpoint-mode", "round-robin"], 'invalid argument "round-robin" for "--endpoint-mode" flag'),
    (["--network", "name=front,colour=blue"],
     'invalid argument "name=front,colour=blue" for "--network" flag: invalid field key colour'),
    (["--network", "alias=x"], "network name/id is not specified"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ENDPOINTS)
def test_bad_endpoint_values_exit_1_before_any_request(args: list[str], message: str) -> None:
    daemon = FakeDaemon()
    result = run(["service", "create", *args, "busybox"], daemon)
    assert result.exit_code == 1
    assert message in result.output
    assert daemon.requests == []


def test_parse_ports_host_range_for_one_target() -> None:
    assert [p["PublishedPort"] for p in parse_ports("8080-8082:80")] == [8080, 8081, 8082]


# ---------------------------------------------------------------------------------- service update
UPDATE_SPEC: dict[str, Any] = {
    "Name": "web", "Labels": {},
    "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest"}, "ForceUpdate": 0,
                     "Networks": [{"Target": F_ID, "Aliases": ["web"]}]},
    "Mode": {"Replicated": {"Replicas": 1}},
    "EndpointSpec": {"Mode": "vip", "Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "ingress", "PublishedPort": 8080},
        {"Protocol": "udp", "TargetPort": 53, "PublishMode": "ingress", "PublishedPort": 5353}]},
}


def updated(args: list[str], spec: dict[str, Any] | None = None) -> Any:
    daemon = FakeDaemon(json.loads(json.dumps(spec or UPDATE_SPEC)))
    result = run(["service", "update", "-d", *args, "web"], daemon)
    assert result.exit_code == 0, result.output
    assert result.output == "web\n"
    request = next(r for r in daemon.requests if r.url.path.endswith("/update"))
    assert request.url.params["version"] == "7"
    return json.loads(request.content)


def test_update_network_add_resolves_and_sorts() -> None:
    body = updated(["--network-add", "name=backend,alias=db"])
    assert body["TaskTemplate"]["Networks"] == [{"Target": B_ID, "Aliases": ["db"]},
                                                {"Target": F_ID, "Aliases": ["web"]}]
    assert {k: v for k, v in body.items() if k != "TaskTemplate"} == \
        {k: v for k, v in UPDATE_SPEC.items() if k != "TaskTemplate"}


def test_update_network_rm_by_name_matches_id_and_name_targets() -> None:
    assert "Networks" not in updated(["--network-rm", "front"])["TaskTemplate"]
    by_name = {**UPDATE_SPEC,
               "TaskTemplate": {**UPDATE_SPEC["TaskTemplate"], "Networks": [{"Target": "front"}]}}
    assert "Networks" not in updated(["--network-rm", "front"], by_name)["TaskTemplate"]


def test_update_network_add_twice_fails() -> None:
    daemon = FakeDaemon(json.loads(json.dumps(UPDATE_SPEC)))
    result = run(["service", "update", "-d", "--network-add", "front", "web"], daemon)
    assert result.exit_code == 1
    assert "service is already attached to network front" in result.output
    assert not any(r.url.path.endswith("/update") for r in daemon.requests)


def test_update_publish_add_and_rm() -> None:
    body = updated(["--publish-add", "9090:90", "--publish-rm", "80"])
    assert body["EndpointSpec"] == {"Mode": "vip", "Ports": [
        {"Protocol": "udp", "TargetPort": 53, "PublishMode": "ingress", "PublishedPort": 5353},
        {"Protocol": "tcp", "TargetPort": 90, "PublishMode": "ingress", "PublishedPort": 9090}]}
    assert body["TaskTemplate"] == UPDATE_SPEC["TaskTemplate"]


def test_update_publish_rm_by_spec_and_protocol() -> None:
    body = updated(["--publish-rm", "8080:80", "--publish-rm", "53/udp"])
    assert body["EndpointSpec"] == {"Mode": "vip"}
    # 53/tcp does not match the udp port
    body = updated(["--publish-rm", "53"])
    assert [p["TargetPort"] for p in body["EndpointSpec"]["Ports"]] == [53, 80]


def test_update_publish_add_existing_is_kept_once_and_endpoint_mode() -> None:
    body = updated(["--publish-add", "8080:80", "--endpoint-mode", "dnsrr"])
    assert body["EndpointSpec"]["Mode"] == "dnsrr"
    assert len(body["EndpointSpec"]["Ports"]) == 2


def test_update_without_endpoint_spec_gets_one() -> None:
    spec = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "a"}}, "Mode": {"Replicated": {}}}
    body = updated(["--publish-add", "published=8443,target=443,mode=host"], spec)
    assert body["EndpointSpec"] == {"Ports": [
        {"Protocol": "tcp", "TargetPort": 443, "PublishMode": "host", "PublishedPort": 8443}]}


@pytest.mark.parametrize("args", [["--publish-add", "nope"], ["--publish-rm", "80/icmp"],
                                  ["--endpoint-mode", "x"], ["--network-add", "name=a,bad=b"]])
def test_update_bad_values_exit_1_before_any_request(args: list[str]) -> None:
    daemon = FakeDaemon(UPDATE_SPEC)
    result = run(["service", "update", *args, "web"], daemon)
    assert result.exit_code == 1
    assert "invalid argument" in result.output
    assert daemon.requests == []


# ------------------------------------------------------------------------------- ls PORTS and init
LS_PORTS: list[tuple[list[dict[str, Any]], str]] = [
    ([{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"}],
     "*:8080->80/tcp"),
    ([{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}], ""),
    ([{"Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353, "PublishMode": "ingress"},
      {"Protocol": "tcp", "TargetPort": 90, "PublishedPort": 9090, "PublishMode": "ingress"},
      {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"}],
     "*:8080->80/tcp, *:9090->90/tcp, *:5353->53/udp"),
    ([{"Protocol": "tcp", "TargetPort": 80 + i, "PublishedPort": 8080 + i, "PublishMode": "ingress"}
      for i in range(3)], "*:8080-8082->80-82/tcp"),
    ([], ""),
]


@pytest.mark.parametrize(("ports", "expected"), LS_PORTS)
def test_service_ls_ports(ports: list[dict[str, Any]], expected: str) -> None:
    assert ports_text(ports) == expected


def test_swarm_init_address_pools() -> None:
    daemon = FakeDaemon()
    result = run(["swarm", "init", "--default-addr-pool", "10.20.0.0/16", "--default-addr-pool",
                  "10.30.1.0/16,fd00::/48", "--default-addr-pool-mask-length", "26"], daemon)
    assert result.exit_code == 0, result.output
    body = daemon.bodies("/swarm/init")[0]
    assert body["DefaultAddrPool"] == ["10.20.0.0/16", "10.30.0.0/16", "fd00::/48"]
    assert body["SubnetSize"] == 26
    plain = FakeDaemon()
    run(["swarm", "init"], plain)
    assert plain.bodies("/swarm/init")[0]["DefaultAddrPool"] == []
    assert plain.bodies("/swarm/init")[0]["SubnetSize"] == 24


@pytest.mark.parametrize(("args", "message"), [
    (["--default-addr-pool", "10.0.0.0"], 'for "--default-addr-pool" flag: invalid CIDR address: 10.0.0.0'),
    (["--default-addr-pool-mask-length", "x"], 'invalid argument "x" for "--default-addr-pool-mask-length"')])
def test_swarm_init_bad_pool_exits_1_before_any_request(args: list[str], message: str) -> None:
    daemon = FakeDaemon()
    result = run(["swarm", "init", *args], daemon)
    assert result.exit_code == 1
    assert message in result.output
    assert daemon.requests == []
