"""`shoal service create|update` flags → ServiceSpec JSON, and bad values → exit 1 before any request.

Drives the click commands with CliRunner and an httpx.MockTransport standing in for the daemon.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from shoal.cli.client import App
from shoal.cli.main import cli

SERVICE_ID = "abcdefghijklmnopqrstuvwxy"


class FakeDaemon:
    """Records requests; answers ping, create, get and update."""

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.spec = spec or {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        headers = {"Api-Version": "1.50"}
        path = request.url.path
        if path == "/_ping":
            return httpx.Response(200, headers=headers, text="OK")
        if path.endswith("/services/create"):
            return httpx.Response(201, headers=headers, json={"ID": SERVICE_ID, "Warnings": None})
        if request.method == "GET" and "/services/" in path:
            return httpx.Response(200, headers=headers,
                                  json={"ID": SERVICE_ID, "Version": {"Index": 7}, "Spec": self.spec})
        if path.endswith("/update"):
            return httpx.Response(200, headers=headers, json={"Warnings": None})
        return httpx.Response(404, headers={"Content-Type": "application/json"}, json={"message": "nope"})

    def bodies(self, suffix: str) -> list[Any]:
        return [json.loads(r.content) for r in self.requests if r.url.path.endswith(suffix)]


def run(args: list[str], daemon: FakeDaemon) -> Any:
    app = App(host="tcp://127.0.0.1:1", transport=httpx.MockTransport(daemon))
    return CliRunner().invoke(cli, args, obj=app)


BASE_TASK = {"Resources": {"Limits": {}, "Reservations": {}}, "Placement": {}, "ForceUpdate": 0}

CREATE_CASES: list[tuple[list[str], dict[str, Any]]] = [
    (["busybox"], {"Labels": {}, "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest"}, **BASE_TASK},
                   "Mode": {"Replicated": {}}, "EndpointSpec": {"Mode": "vip"}}),
    (["--name", "web", "--replicas", "3", "busybox", "sleep", "1000"],
     {"Name": "web", "Labels": {},
      "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Args": ["sleep", "1000"]}, **BASE_TASK},
      "Mode": {"Replicated": {"Replicas": 3}}, "EndpointSpec": {"Mode": "vip"}}),
    (["--mode", "global", "-e", "A=1", "--env", "B=2", "-l", "tier=fe", "--entrypoint", "sh -c 'x y'", "img"],
     {"Labels": {"tier": "fe"},
      "TaskTemplate": {"ContainerSpec": {"Image": "img:latest", "Command": ["sh", "-c", "x y"],
                                         "Env": ["A=1", "B=2"]}, **BASE_TASK},
      "Mode": {"Global": {}}, "EndpointSpec": {"Mode": "vip"}}),
]


@pytest.mark.parametrize(("args", "expected"), CREATE_CASES)
def test_create_spec(args: list[str], expected: dict[str, Any]) -> None:
    daemon = FakeDaemon()
    result = run(["service", "create", "-d", *args], daemon)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == SERVICE_ID
    assert daemon.bodies("/services/create") == [expected]


SECTION_CASES: list[tuple[list[str], str, Any]] = [
    (["--limit-cpu", "0.5", "--limit-memory", "64M", "--limit-pids", "10"], "Resources",
     {"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20, "Pids": 10}, "Reservations": {}}),
    (["--reserve-cpu", "1", "--reserve-memory", "1g"], "Resources",
     {"Limits": {}, "Reservations": {"NanoCPUs": 1_000_000_000, "MemoryBytes": 1 << 30}}),
    (["--restart-condition", "on-failure"], "RestartPolicy",
     {"Condition": "on-failure", "Delay": 5_000_000_000, "MaxAttempts": 0}),
    (["--restart-delay", "1s", "--restart-max-attempts", "3", "--restart-window", "1m"], "RestartPolicy",
     {"Condition": "any", "Delay": 1_000_000_000, "MaxAttempts": 3, "Window": 60_000_000_000}),
    (["--constraint", "node.role==manager", "--placement-pref", "spread=node.labels.zone",
      "--max-replicas", "2"], "Placement",
     {"Constraints": ["node.role==manager"],
      "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}], "MaxReplicas": 2}),
]


@pytest.mark.parametrize(("args", "section", "expected"), SECTION_CASES)
def test_create_task_sections(args: list[str], section: str, expected: Any) -> None:
    daemon = FakeDaemon()
    result = run(["service", "create", "-d", *args, "busybox"], daemon)
    assert result.exit_code == 0, result.output
    assert daemon.bodies("/services/create")[0]["TaskTemplate"][section] == expected


def test_container_flags() -> None:
    daemon = FakeDaemon()
    args = ["-w", "/srv", "-u", "nobody", "--hostname", "h", "--init", "--read-only", "--stop-signal",
            "SIGINT", "--stop-grace-period", "3s", "--container-label", "a=b"]
    result = run(["service", "create", "-d", *args, "busybox"], daemon)
    assert result.exit_code == 0, result.output
    assert daemon.bodies("/services/create")[0]["TaskTemplate"]["ContainerSpec"] == {
        "Image": "busybox:latest", "Labels": {"a": "b"}, "Hostname": "h", "Dir": "/srv", "User": "nobody",
        "StopSignal": "SIGINT", "Init": True, "ReadOnly": True, "StopGracePeriod": 3_000_000_000}


def test_update_config_only_when_given_and_filled_with_defaults() -> None:
    daemon = FakeDaemon()
    result = run(["service", "create", "-d", "--update-monitor", "1s", "--update-parallelism", "2",
                  "busybox"], daemon)
    assert result.exit_code == 0, result.output
    body = daemon.bodies("/services/create")[0]
    assert body["UpdateConfig"] == {"Parallelism": 2, "Delay": 0, "FailureAction": "pause",
                                    "Monitor": 1_000_000_000, "MaxFailureRatio": 0, "Order": "stop-first"}
    assert "RollbackConfig" not in body


def test_publish() -> None:
    daemon = FakeDaemon()
    result = run(["service", "create", "-d", "-p", "8080:80", "busybox"], daemon)
    assert result.exit_code == 0, result.output
    assert daemon.bodies("/services/create")[0]["EndpointSpec"] == {
        "Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishMode": "ingress",
                                  "PublishedPort": 8080}]}


BAD_VALUES: list[tuple[list[str], str]] = [
    (["--replicas", "-1"], 'invalid argument "-1" for "--replicas" flag'),
    (["--replicas", "x"], 'invalid argument "x" for "--replicas" flag'),
    (["--limit-memory", "lots"], 'invalid argument "lots" for "--limit-memory" flag: invalid size'),
    (["--limit-cpu", "abc"], 'invalid argument "abc" for "--limit-cpu" flag: failed to parse abc'),
    (["--restart-condition", "sometimes"], 'invalid argument "sometimes" for "--restart-condition" flag'),
    (["--restart-delay", "5 parsecs"], 'invalid argument "5 parsecs" for "--restart-delay" flag'),
    (["--constraint", "node.role=manager"], "constraint expected one operator from ==, !="),
    (["--placement-pref", "pack=x"], "only spread is supported"),
    (["--name", "bad name!"], "name must be valid as a DNS name component"),
    (["--mode", "sometimes"], "Unknown mode: sometimes"),
    (["--mode", "global", "--replicas", "2"], "replicas can only be used with replicated"),
    (["--update-failure-action", "panic"], '"--update-failure-action" flag: must be one of'),
    (["--timeout", "soon"], 'invalid argument "soon" for "--timeout" flag'),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES)
def test_bad_values_exit_1_before_any_request(args: list[str], message: str) -> None:
    daemon = FakeDaemon()
    result = run(["service", "create", *args, "busybox"], daemon)
    assert result.exit_code == 1
    assert message in result.output
    assert daemon.requests == []


def test_unknown_flag_exits_1() -> None:
    daemon = FakeDaemon()
    result = run(["service", "create", "--no-such-flag", "busybox"], daemon)
    assert result.exit_code == 1
    assert "--no-such-flag" in result.output


def test_args_after_image_are_not_flags() -> None:
    daemon = FakeDaemon()
    result = run(["service", "create", "-d", "busybox", "ls", "-l", "--name", "x"], daemon)
    assert result.exit_code == 0, result.output
    body = daemon.bodies("/services/create")[0]
    assert body["TaskTemplate"]["ContainerSpec"]["Args"] == ["ls", "-l", "--name", "x"]
    assert "Name" not in body


def test_update_sends_full_spec_with_version() -> None:
    spec = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "a", "Env": ["X=1", "Y=2"]},
                                            "ForceUpdate": 1}, "Mode": {"Replicated": {"Replicas": 1}}}
    daemon = FakeDaemon(spec)
    result = run(["service", "update", "-d", "--image", "b", "--env-add", "Z=3", "--env-rm", "X",
                  "--replicas", "4", "--force", "web"], daemon)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "web"
    update = next(r for r in daemon.requests if r.url.path.endswith("/update"))
    assert update.url.params["version"] == "7"
    assert json.loads(update.content) == {
        "Name": "web",
        "TaskTemplate": {"ContainerSpec": {"Image": "b:latest", "Env": ["Y=2", "Z=3"]}, "ForceUpdate": 2},
        "Mode": {"Replicated": {"Replicas": 4}}}


def test_scale_bad_specifier_exits_1() -> None:
    daemon = FakeDaemon()
    result = run(["service", "scale", "web=-2"], daemon)
    assert result.exit_code == 1
    assert "invalid replicas value -2" in result.output
    assert daemon.requests == []


def test_daemon_error_is_printed_like_docker() -> None:
    daemon = FakeDaemon()
    result = run(["service", "rm", "ghost"], daemon)
    assert result.exit_code == 1
    assert "Error response from daemon: nope" in result.output


def test_connection_refused_message() -> None:
    result = CliRunner().invoke(cli, ["-H", "unix:///nonexistent/shoal.sock", "service", "ls"])
    assert result.exit_code == 1
    assert "Cannot connect to the Shoal daemon at unix:///nonexistent/shoal.sock: is shoald running?" in \
        result.output
