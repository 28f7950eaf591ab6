"""The CLI's formatting: Go-template subset, docker's human durations, tables, `service ps` rows,
logs framing and the convergence loop (against canned JSON; no daemon)."""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any

import pytest

from shoal.cli.client import CliError
from shoal.cli.format import human_duration, human_size, render_rows, tabwrite
from shoal.cli.progress import LineRenderer, Watch, bar
from shoal.cli.service import LS_HEADERS, LS_TABLE
from shoal.cli.service_logs import frames, parse_details
from shoal.cli.service_ps import PS_HEADERS, PS_TABLE, ps_rows
from shoal.cli.template import TemplateError, render

DATA = {"Name": "web", "Replicas": "3/3",
        "Spec": {"Name": "web", "Labels": {"k": "v"}, "Mode": {"Global": {}}},
        "List": ["a", "b"], "Flag": True, "Nil": None}

TEMPLATES = [
    ("{{.Name}}", "web"),
    ("{{.Name}} {{.Replicas}}", "web 3/3"),
    ("{{.Spec.Name}}", "web"),
    ("{{json .Spec.Labels}}", '{"k":"v"}'),
    ("{{json .List}}", '["a","b"]'),
    ('{{index .Spec.Labels "k"}}', "v"),
    ("{{upper .Name}}", "WEB"),
    ("{{.Name | upper}}", "WEB"),
    ("{{lower .Replicas}}", "3/3"),
    ('{{join .List ","}}', "a,b"),
    ("{{.Spec.Labels}}", "map[k:v]"),
    ("{{.List}}", "[a b]"),
    ("{{.Flag}}", "true"),
    ("{{.Nil}}", "<nil>"),
    ("{{.Missing}}", "<no value>"),
    ("{{json .Spec.Mode}}", '{"Global":{}}'),
    ("x{{- .Name -}}y", "xweby"),
    ("{{json .}}", '{"Name":"web","Replicas":"3/3",'
                   '"Spec":{"Name":"web","Labels":{"k":"v"},"Mode":{"Global":{}}},'
                   '"List":["a","b"],"Flag":true,"Nil":null}'),
]


@pytest.mark.parametrize(("template", "expected"), TEMPLATES)
def test_template(template: str, expected: str) -> None:
    assert render(template, DATA) == expected


@pytest.mark.parametrize("template", ["{{range .List}}x{{end}}", "{{nosuch .Name}}", "{{.Name", "{{}}"])
def test_template_errors(template: str) -> None:
    with pytest.raises(TemplateError):
        render(template, DATA)


def test_json_escapes_html_like_go() -> None:
    assert render("{{json .}}", {"a": "<&>"}) == '{"a":"\\u003c\\u0026\\u003e"}'


DURATIONS = [
    (0.2, "Less than a second"), (1, "1 second"), (59, "59 seconds"), (60, "About a minute"),
    (119, "About a minute"), (120, "2 minutes"), (3599, "59 minutes"), (3600, "About an hour"),
    (7200, "2 hours"), (47 * 3600, "47 hours"), (3 * 86400, "3 days"), (15 * 86400, "2 weeks"),
    (90 * 86400, "3 months"), (800 * 86400, "2 years"),
]


@pytest.mark.parametrize(("seconds", "expected"), DURATIONS)
def test_human_duration(seconds: float, expected: str) -> None:
    assert human_duration(seconds) == expected


SIZES = [(999, "999B"), (4_260_000, "4.26MB"), (1_500_000_000, "1.5GB")]


@pytest.mark.parametrize(("size", "expected"), SIZES)
def test_human_size(size: int, expected: str) -> None:
    assert human_size(size) == expected


def test_tabwriter_minwidth_and_padding() -> None:
    assert tabwrite(["ID\tNAME\tX", "abcdefghijkl\tw\t"]) == ["ID             NAME      X",
                                                             "abcdefghijkl   w         "]


LS_ROW = {"ID": "abcdefghijkl", "Name": "web", "Mode": "replicated", "Replicas": "3/3", "Image": "busybox",
          "Ports": ""}


def test_ls_default_table() -> None:
    lines = render_rows([LS_ROW], LS_HEADERS, LS_TABLE, None)
    assert lines[0].split() == ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
    assert lines[1].split() == ["abcdefghijkl", "web", "replicated", "3/3", "busybox"]


def test_custom_table_and_plain_template_and_json() -> None:
    assert render_rows([LS_ROW], LS_HEADERS, LS_TABLE, "table {{.Name}}\\t{{.Replicas}}") == [
        "NAME      REPLICAS", "web       3/3"]
    assert render_rows([LS_ROW], LS_HEADERS, LS_TABLE, "{{.Name}} {{.Replicas}}") == ["web 3/3"]
    assert render_rows([LS_ROW], LS_HEADERS, LS_TABLE, "json") == [
        '{"ID":"abcdefghijkl","Name":"web","Mode":"replicated","Replicas":"3/3","Image":"busybox","Ports":""}']


def test_bad_format_is_a_cli_error() -> None:
    with pytest.raises(CliError):
        render_rows([LS_ROW], LS_HEADERS, LS_TABLE, "{{range .}}")


NOW = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def _task(tid: str, slot: int, state: str, desired: str, created: str, stamp: str,
          err: str = "") -> dict[str, Any]:
    return {"ID": tid * 25, "ServiceID": "svc1", "Slot": slot, "NodeID": "node1", "DesiredState": desired,
            "CreatedAt": created, "Spec": {"ContainerSpec": {"Image": "busybox:latest@sha256:abc"}},
            "Status": {"State": state, "Timestamp": stamp, "Err": err}}


TASKS = [
    _task("b", 1, "failed", "shutdown", "2025-01-01T11:50:00Z", "2025-01-01T11:51:00.123456789Z",
          "task: non-zero exit (1): something long went wrong"),
    _task("c", 2, "running", "running", "2025-01-01T11:50:00Z", "2025-01-01T11:58:00Z"),
    _task("a", 1, "running", "running", "2025-01-01T11:55:00Z", "2025-01-01T11:59:59.5Z"),
]


def test_ps_rows_history_sorting_and_states() -> None:
    rows = ps_rows(TASKS, {"svc1": "web"}, {"node1": "host1"}, now=NOW)
    assert [r["Name"] for r in rows] == ["web.1", " \\_ web.1", "web.2"]
    assert rows[0]["ID"] == "a" * 12
    assert rows[0]["CurrentState"] == "Running less than a second ago"
    assert rows[1]["CurrentState"] == "Failed 8 minutes ago"
    assert rows[1]["DesiredState"] == "Shutdown"
    assert rows[1]["Error"] == '"task: non-zero exit (1): some…"'
    assert rows[2]["CurrentState"] == "Running 2 minutes ago"
    assert {r["Node"] for r in rows} == {"host1"}
    assert {r["Image"] for r in rows} == {"busybox:latest"}


def test_ps_table() -> None:
    rows = ps_rows(TASKS, {"svc1": "web"}, {"node1": "host1"}, now=NOW)
    lines = render_rows(rows, PS_HEADERS, PS_TABLE, None)
    assert lines[0].startswith("ID             NAME        IMAGE            NODE      DESIRED STATE")
    assert lines[2].startswith("bbbbbbbbbbbb    \\_ web.1   busybox:latest")


def test_ps_no_trunc_keeps_ids_and_errors() -> None:
    rows = ps_rows(TASKS, {"svc1": "web"}, {}, now=NOW, trunc=False)
    assert rows[1]["ID"] == "b" * 25
    assert rows[1]["Error"] == '"task: non-zero exit (1): something long went wrong"'
    assert rows[1]["Image"] == "busybox:latest@sha256:abc"


def test_stdcopy_frames_across_chunks() -> None:
    payload = struct.pack(">BxxxI", 1, 6) + b"hello\n" + struct.pack(">BxxxI", 2, 4) + b"err\n"
    chunks = [payload[:3], payload[3:11], payload[11:]]
    assert list(frames(chunks)) == [(1, b"hello\n"), (2, b"err\n")]


def test_details_are_unescaped() -> None:
    expected = {"com.docker.swarm.node.id": "n1", "x": "a,b"}
    assert parse_details("com.docker.swarm.node.id=n1,x=a%2Cb") == expected


def test_bar() -> None:
    assert bar("running") == "running   [" + "=" * 50 + ">]"
    assert bar("new").startswith("new       [=====>")


class FakeClient:
    """Answers the progress loop's three GETs from a script of polls."""

    def __init__(self, polls: list[list[dict[str, Any]]], monitor_ns: int = 1_000_000_000,
                 replicas: int = 2) -> None:
        self.polls = polls
        self.service = {"ID": "svc1", "Spec": {"Mode": {"Replicated": {"Replicas": replicas}},
                                               "UpdateConfig": {"Monitor": monitor_ns}}}
        self.count = 0

    def get(self, path: str, params: Any = None) -> Any:
        if path.startswith("/services/"):
            self.count += 1
            return self.service
        if path == "/tasks":
            return self.polls[min(self.count, len(self.polls)) - 1]
        return [{"ID": "node1", "Status": {"State": "ready"}}]


def _t(slot: int, state: str, desired: str = "running", err: str = "", ts: str = "") -> dict[str, Any]:
    return {"ID": f"t{slot}{state}{ts}", "Slot": slot, "NodeID": "node1", "DesiredState": desired,
            "Status": {"State": state, "Err": err, "Timestamp": ts}}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _watch(client: FakeClient, timeout: float | None = None) -> tuple[Watch, list[str]]:
    lines: list[str] = []
    clock = Clock()
    watch = Watch(client, "svc1", LineRenderer(lines.append), timeout, sleep=clock.sleep,  # type: ignore[arg-type]
                  clock=clock)
    return watch, lines


def test_convergence_lines() -> None:
    polls = [[_t(1, "pending"), _t(2, "pending")], [_t(1, "running"), _t(2, "starting")],
             [_t(1, "running"), _t(2, "running")]]
    watch, lines = _watch(FakeClient(polls))
    watch.run()
    assert lines[0] == "overall progress: 0 out of 2 tasks"
    assert "1/2: running   [" + "=" * 50 + ">]" in lines
    assert "overall progress: 2 out of 2 tasks" in lines
    assert "verify: Waiting 1 seconds to verify that tasks are stable..." in lines
    assert lines[-1] == "verify: Service svc1 converged"


def test_every_slot_failing_gives_up_with_the_task_error() -> None:
    err = "No such image: nope:latest"
    failing = [_t(1, "rejected", "shutdown", err, "1"), _t(1, "rejected", "shutdown", err, "2"),
               _t(1, "new"), _t(2, "rejected", "shutdown", err, "1"), _t(2, "rejected", "shutdown", err, "2")]
    watch, _ = _watch(FakeClient([failing]))
    with pytest.raises(CliError) as info:
        watch.run()
    assert info.value.message == f"Error: {err}"


def test_one_failure_with_a_retry_pending_keeps_waiting_until_timeout() -> None:
    polls = [[_t(1, "failed", "shutdown", "exit 1", "1"), _t(1, "new")]]
    watch, _ = _watch(FakeClient(polls, replicas=1), timeout=2.0)
    with pytest.raises(CliError) as info:
        watch.run()
    assert "timed out" in info.value.message
