"""`shoal node ...`, `swarm join|update|join-token` and `info` on a worker, against a fake daemon.

Drives the click commands with CliRunner and an httpx.MockTransport standing in for the daemon
(as test_cli_flags does): request paths, queries and bodies, and docker's output texts.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from shoal.cli.client import App
from shoal.cli.main import cli
from shoal.cli.node import ls_rows

MANAGER_ID = "m" * 25
WORKER2_ID = "w2" + "a" * 23
WORKER10_ID = "w10" + "b" * 22
JSON = {"Content-Type": "application/json"}


def make_node(node_id: str, hostname: str, role: str, state: str = "ready", availability: str = "active",
              manager: dict[str, Any] | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {
        "ID": node_id, "Version": {"Index": 11}, "CreatedAt": "2025-01-02T03:04:05.123456789Z",
        "Spec": {"Labels": {"zone": "a"}, "Role": role, "Availability": availability},
        "Description": {"Hostname": hostname, "Platform": {"Architecture": "x86_64", "OS": "linux"},
                        "Resources": {"NanoCPUs": 4_000_000_000, "MemoryBytes": 8 << 30},
                        "Engine": {"EngineVersion": "0.1.0"}},
        "Status": {"State": state, "Addr": "10.0.0.1"}}
    if manager is not None:
        node["ManagerStatus"] = manager
    return node


def default_nodes() -> list[dict[str, Any]]:
    return [
        make_node(WORKER10_ID, "node10", "worker", state="down", availability="drain"),
        make_node(MANAGER_ID, "manager", "manager",
                  manager={"Leader": True, "Reachability": "reachable", "Addr": "10.0.0.1:2377"}),
        make_node(WORKER2_ID, "node2", "worker", availability="pause"),
    ]


class FakeDaemon:
    """Records requests; answers /info, /nodes, /tasks, /services, /swarm from canned state."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.nodes = default_nodes()
        self.info: dict[str, Any] = {"Swarm": {"NodeID": MANAGER_ID, "LocalNodeState": "active",
                                               "ControlAvailable": True}}
        self.cluster: dict[str, Any] = {
            "ID": "c1", "Version": {"Index": 42},
            "Spec": {"Name": "default", "Orchestration": {"TaskHistoryRetentionLimit": 5},
                     "Dispatcher": {"HeartbeatPeriod": 5_000_000_000}},
            "JoinTokens": {"Worker": "SWMTKN-1-worker", "Manager": "SWMTKN-1-manager"}}
        self.tasks: list[dict[str, Any]] = []
        self.update_error: str | None = None

    def find(self, ref: str) -> dict[str, Any] | None:
        return next((n for n in self.nodes if ref in (n["ID"], n["Description"]["Hostname"])), None)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/v1.50")
        if path == "/_ping":
            return httpx.Response(200, headers={"Api-Version": "1.50"}, text="OK")
        answer = self.answer(request.method, path)
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json=answer) if answer is not None else httpx.Response(200)

    def answer(self, method: str, path: str) -> Any:
        if path == "/info":
            return self.info
        if path == "/nodes":
            return self.nodes
        if path == "/tasks":
            return self.tasks
        if path == "/swarm" and method == "GET":
            return self.cluster
        if path in ("/swarm/join", "/swarm/update"):
            return None
        if path.startswith("/services/"):
            return {"ID": path.split("/")[2], "Spec": {"Name": "web"}}
        if path.startswith("/nodes/"):
            return self.node_answer(method, path.split("/")[2], path.endswith("/update"))
        return httpx.Response(404, headers=JSON, json={"message": "page not found"})

    def node_answer(self, method: str, ref: str, is_update: bool) -> Any:
        node = self.find(ref)
        if node is None:
            return httpx.Response(404, headers=JSON, json={"message": f"node {ref} not found"})
        if is_update and self.update_error:
            return httpx.Response(400, headers=JSON, json={"message": self.update_error})
        return node if method == "GET" else None

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path.removeprefix('/v1.50')}" for r in self.requests
                if r.url.path != "/_ping"]

    def sent(self, suffix: str) -> httpx.Request:
        return next(r for r in self.requests if r.method == "POST" and r.url.path.endswith(suffix))


def run(args: list[str], daemon: FakeDaemon) -> Any:
    app = App(host="tcp://127.0.0.1:1", transport=httpx.MockTransport(daemon))
    return CliRunner().invoke(cli, args, obj=app)


# ------------------------------------------------------------------------------------------ node ls
def test_node_ls_table() -> None:
    daemon = FakeDaemon()
    result = run(["node", "ls"], daemon)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER", "STATUS", "ENGINE",
                                "VERSION"]
    assert lines[0].startswith("ID" + " " * 28 + "HOSTNAME")
    assert lines[1].startswith(f"{MANAGER_ID} *   manager ")
    assert lines[1].split()[3:] == ["Ready", "Active", "Leader", "0.1.0"]
    assert lines[2].startswith(f"{WORKER2_ID}     node2 ")
    assert lines[2].split()[1:] == ["node2", "Ready", "Pause", "0.1.0"]
    assert lines[3].split()[1:] == ["node10", "Down", "Drain", "0.1.0"]
    assert daemon.paths() == ["GET /nodes", "GET /info"]


def test_node_ls_quiet_skips_info_and_filters_pass_through() -> None:
    daemon = FakeDaemon()
    result = run(["node", "ls", "-q", "--filter", "role=worker"], daemon)
    assert result.exit_code == 0, result.output
    assert result.output.split() == [MANAGER_ID, WORKER2_ID, WORKER10_ID]
    assert daemon.paths() == ["GET /nodes"]
    assert json.loads(daemon.requests[-1].url.params["filters"]) == {"role": {"worker": True}}


def test_node_ls_format_fields() -> None:
    daemon = FakeDaemon()
    result = run(["node", "ls", "--format", "{{.Hostname}} {{.Self}} {{.ManagerStatus}} {{.TLSStatus}}"],
                 daemon)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["manager true Leader Unknown", "node2 false  Unknown",
                                          "node10 false  Unknown"]


def test_ls_rows_manager_status_reachable() -> None:
    node = make_node("x", "h", "manager", manager={"Leader": False, "Reachability": "reachable"})
    assert ls_rows([node], {})[0]["ManagerStatus"] == "Reachable"


# ------------------------------------------------------------------------------------- node inspect
def test_node_inspect_self_prints_json_array() -> None:
    daemon = FakeDaemon()
    result = run(["node", "inspect", "self"], daemon)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["ID"] == MANAGER_ID
    assert daemon.paths() == ["GET /info", f"GET /nodes/{MANAGER_ID}"]


def test_node_inspect_pretty_and_missing() -> None:
    daemon = FakeDaemon()
    result = run(["node", "inspect", "--pretty", "node2", "ghost"], daemon)
    assert result.exit_code == 1
    out = result.output
    for text in (f"ID:\t\t\t{WORKER2_ID}", "Hostname:              \tnode2", "Joined at:",
                 " State:\t\t\tReady", " Availability:         \tPause", " Address:\t\t10.0.0.1",
                 " Operating System:\tlinux", " CPUs:\t\t\t4", " Memory:\t\t8GiB", "Engine Version:\t\t0.1.0",
                 " - zone=a", "Error response from daemon: node ghost not found"):
        assert text in out


# -------------------------------------------------------------------------------------- node update
def test_node_update_sends_full_spec_with_version() -> None:
    daemon = FakeDaemon()
    result = run(["node", "update", "--availability", "drain", "--label-add", "disk=ssd", "--label-add", "x",
                  "--label-rm", "zone", "node2"], daemon)
    assert result.exit_code == 0, result.output
    assert result.output == "node2\n"
    request = daemon.sent("/update")
    assert request.url.path == f"/v1.50/nodes/{WORKER2_ID}/update"
    assert request.url.params["version"] == "11"
    assert json.loads(request.content) == {"Labels": {"disk": "ssd", "x": ""}, "Role": "worker",
                                           "Availability": "drain"}


def test_node_update_label_rm_of_missing_key() -> None:
    daemon = FakeDaemon()
    result = run(["node", "update", "--label-rm", "nope", "node2"], daemon)
    assert result.exit_code == 1
    assert "key nope doesn't exist in node's labels" in result.output
    assert not [r for r in daemon.requests if r.method == "POST"]


def test_promote_refused_by_server() -> None:
    daemon = FakeDaemon()
    daemon.update_error = "promotion to manager is not supported yet"
    result = run(["node", "promote", "node2"], daemon)
    assert result.exit_code == 1
    assert "Error response from daemon: promotion to manager is not supported yet" in result.output
    assert json.loads(daemon.sent("/update").content)["Role"] == "manager"


def test_promote_and_demote_texts() -> None:
    daemon = FakeDaemon()
    result = run(["node", "promote", "node2", "manager"], daemon)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["Node node2 promoted to a manager in the swarm.",
                                          f"Node {MANAGER_ID} is already a manager."]
    result = run(["node", "demote", "manager"], daemon)
    assert result.output == "Manager manager demoted in the swarm.\n"


# ------------------------------------------------------------------------------------ node rm and ps
def test_node_rm_force() -> None:
    daemon = FakeDaemon()
    result = run(["node", "rm", "--force", "node2", "node10"], daemon)
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["node2", "node10"]
    deletes = [r for r in daemon.requests if r.method == "DELETE"]
    assert [r.url.path for r in deletes] == ["/v1.50/nodes/node2", "/v1.50/nodes/node10"]
    assert all(r.url.params["force"] == "1" for r in deletes)
    daemon.requests.clear()
    assert run(["node", "rm", "node2"], daemon).exit_code == 0
    assert "force" not in daemon.requests[-1].url.params


def test_node_ps_defaults_to_self() -> None:
    daemon = FakeDaemon()
    daemon.tasks = [{"ID": "t" * 25, "ServiceID": "s1", "Slot": 1, "NodeID": MANAGER_ID,
                     "Spec": {"ContainerSpec": {"Image": "busybox:latest"}}, "DesiredState": "running",
                     "Status": {"State": "running"}}]
    result = run(["node", "ps"], daemon)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "IMAGE"]
    assert lines[1].split() == ["t" * 12, "web.1", "busybox:latest", "manager", "Running", "Running"]
    tasks_request = next(r for r in daemon.requests if r.url.path.endswith("/tasks"))
    assert json.loads(tasks_request.url.params["filters"]) == {"node": {MANAGER_ID: True}}


# -------------------------------------------------------------------------------------------- swarm
@pytest.mark.parametrize(("control", "role"), [(False, "worker"), (True, "manager")])
def test_swarm_join(control: bool, role: str) -> None:
    daemon = FakeDaemon()
    daemon.info = {"Swarm": {"NodeID": WORKER2_ID, "LocalNodeState": "active", "ControlAvailable": control}}
    result = run(["swarm", "join", "--token", "SWMTKN-1-x", "--advertise-addr", "127.0.0.2",
                  "127.0.0.1:2377"], daemon)
    assert result.exit_code == 0, result.output
    assert result.output == f"This node joined a swarm as a {role}.\n"
    assert json.loads(daemon.sent("/swarm/join").content) == {
        "ListenAddr": "0.0.0.0:2377", "AdvertiseAddr": "127.0.0.2", "DataPathAddr": "",
        "RemoteAddrs": ["127.0.0.1:2377"], "JoinToken": "SWMTKN-1-x", "Availability": ""}
    assert daemon.paths() == ["POST /swarm/join", "GET /info"]


def test_join_token_quiet_only_reads_swarm() -> None:
    daemon = FakeDaemon()
    result = run(["swarm", "join-token", "-q", "manager"], daemon)
    assert result.output == "SWMTKN-1-manager\n"
    assert daemon.paths() == ["GET /swarm"]


def test_join_token_rotate() -> None:
    daemon = FakeDaemon()
    result = run(["swarm", "join-token", "--rotate", "worker"], daemon)
    assert result.exit_code == 0, result.output
    assert result.output == ("Successfully rotated worker join token.\n\n"
                             "To add a worker to this swarm, run the following command:\n\n"
                             "    shoal swarm join --token SWMTKN-1-worker 10.0.0.1:2377\n\n")
    request = daemon.sent("/swarm/update")
    assert dict(request.url.params) == {"rotateManagerToken": "false", "rotateManagerUnlockKey": "false",
                                        "rotateWorkerToken": "true", "version": "42"}
    assert json.loads(request.content) == daemon.cluster["Spec"]


def test_swarm_update_merges_spec() -> None:
    daemon = FakeDaemon()
    result = run(["swarm", "update", "--cert-expiry", "720h", "--dispatcher-heartbeat", "10s",
                  "--task-history-limit", "2"], daemon)
    assert result.exit_code == 0, result.output
    assert result.output == "Swarm updated.\n"
    request = daemon.sent("/swarm/update")
    assert request.url.params["version"] == "42"
    assert request.url.params["rotateWorkerToken"] == "false"
    expected = copy.deepcopy(daemon.cluster["Spec"])
    expected.update({"Orchestration": {"TaskHistoryRetentionLimit": 2},
                     "Dispatcher": {"HeartbeatPeriod": 10_000_000_000},
                     "CAConfig": {"NodeCertExpiry": 720 * 3600 * 1_000_000_000}})
    assert json.loads(request.content) == expected


def test_swarm_init_spec_flags() -> None:
    daemon = FakeDaemon()
    run(["swarm", "init", "--cert-expiry", "1h", "--listen-addr", "127.0.0.1"], daemon)
    body = json.loads(daemon.sent("/swarm/init").content)
    assert body["Spec"] == {"CAConfig": {"NodeCertExpiry": 3600 * 1_000_000_000}}
    assert body["ListenAddr"] == "127.0.0.1:2377"


def test_info_on_a_worker() -> None:
    daemon = FakeDaemon()
    daemon.info = {"Swarm": {"NodeID": WORKER2_ID, "LocalNodeState": "active", "ControlAvailable": False,
                             "NodeAddr": "127.0.0.2",
                             "RemoteManagers": [{"NodeID": MANAGER_ID, "Addr": "127.0.0.1:2377"}]}}
    result = run(["info"], daemon)
    assert result.exit_code == 0, result.output
    assert (" Swarm: active\n"
            f"  NodeID: {WORKER2_ID}\n"
            "  Is Manager: false\n"
            "  Node Address: 127.0.0.2\n"
            "  Manager Addresses:\n"
            "   127.0.0.1:2377\n") in result.output
    assert "ClusterID" not in result.output


BAD_VALUES: list[tuple[list[str], str]] = [
    (["node", "update", "--availability", "sleepy", "n"], 'invalid argument "sleepy" for "--availability"'),
    (["node", "update", "--role", "boss", "n"], 'invalid argument "boss" for "--role" flag'),
    (["node", "update", "--label-add", "=v", "n"], "invalid label '=v': empty name"),
    (["node", "update", "--label-add", "a b=c", "n"], "label 'a b' contains whitespaces"),
    (["swarm", "join", "127.0.0.1:2377"], 'required flag(s) "token" not set'),
    (["swarm", "join", "--token", "t", "--availability", "gone", "h:1"], '"--availability" flag'),
    (["swarm", "join", "--token", "t", "--listen-addr", "h:port", "h:1"], "invalid port: port"),
    (["swarm", "update", "--cert-expiry", "forever"], 'invalid argument "forever" for "--cert-expiry" flag'),
    (["swarm", "update", "--dispatcher-heartbeat", "5 s"], '"--dispatcher-heartbeat" flag'),
    (["swarm", "update", "--task-history-limit", "-1"], '"--task-history-limit" flag'),
    (["swarm", "init", "--dispatcher-heartbeat", "x"], 'invalid argument "x" for "--dispatcher-heartbeat"'),
    (["swarm", "join-token", "boss"], "unknown role boss"),
    (["node", "rm"], "Missing argument"),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES)
def test_bad_values_exit_1_before_any_request(args: list[str], message: str) -> None:
    daemon = FakeDaemon()
    result = run(args, daemon)
    assert result.exit_code == 1
    assert message in result.output
    assert daemon.requests == []
