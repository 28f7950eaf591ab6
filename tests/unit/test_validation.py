"""Service spec validation (shoal.api.validation): what Docker accepts, and its messages otherwise."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from shoal.api.errors import InvalidArgument
from shoal.api.types import (
    ContainerSpec,
    GlobalService,
    Limits,
    Placement,
    ReplicatedService,
    Reservations,
    Resources,
    RestartPolicy,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
    UpdateConfig,
)
from shoal.api.validation import Constraint, parse_constraint, validate_name, validate_service_spec


def spec(**task: Any) -> ServiceSpec:
    """A valid spec, with TaskSpec fields overridden by `task` and ServiceSpec ones by `svc_*`."""
    svc = {k[4:]: task.pop(k) for k in list(task) if k.startswith("svc_")}
    task.setdefault("container_spec", ContainerSpec(image="busybox:1.36"))
    return ServiceSpec(name=svc.pop("name", "web"), task_template=TaskSpec(**task), **svc)


@pytest.mark.parametrize("name", ["web", "a", "A1", "my-app-2", "x" * 63, "0abc"])
def test_valid_names_pass(name: str) -> None:
    validate_name(name)
    validate_service_spec(spec(svc_name=name))


@pytest.mark.parametrize(("name", "message"), [
    ("", "meta: name must be provided"),
    ("x" * 64, "name must be 63 characters or fewer"),
    ("-web", "name must be valid as a DNS name component"),
    ("web-", "name must be valid as a DNS name component"),
    ("my_app", "name must be valid as a DNS name component"),
    ("my.app", "name must be valid as a DNS name component"),
    ("we b", "name must be valid as a DNS name component"),
])
def test_invalid_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_service_spec(spec(svc_name=name))
    assert err.value.message == "rpc error: code = InvalidArgument desc = " + message
    assert err.value.status == 400


@pytest.mark.parametrize(("text", "expected"), [
    ("node.role==manager", Constraint("node.role", "==", "manager")),
    ("node.role != worker", Constraint("node.role", "!=", "worker")),
    ("Node.Hostname==box1", Constraint("node.hostname", "==", "box1")),
    ("node.id==abc123", Constraint("node.id", "==", "abc123")),
    ("node.platform.os==linux", Constraint("node.platform.os", "==", "linux")),
    ("node.platform.arch!=arm64", Constraint("node.platform.arch", "!=", "arm64")),
    ("node.labels.Zone==eu-1", Constraint("node.labels.Zone", "==", "eu-1")),
    ("engine.labels.disk==ssd", Constraint("engine.labels.disk", "==", "ssd")),
])
def test_constraints_parse(text: str, expected: Constraint) -> None:
    assert parse_constraint(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("node.role", "rpc error: code = Unknown desc = constraint expected one operator from ==, !="),
    ("node.role=manager", "rpc error: code = Unknown desc = constraint expected one operator from ==, !="),
    ("==manager", "rpc error: code = Unknown desc = key '' is invalid"),
    ("node.role==man<ager", "rpc error: code = Unknown desc = value 'man<ager' is invalid"),
    ("node.color==red", "invalid constraint key 'node.color'"),
    ("node.labels.==x", "invalid constraint key 'node.labels.'"),
    ("node.role==boss", "invalid constraint value 'boss' for node.role"),
])
def test_bad_constraints_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_service_spec(spec(placement=Placement(constraints=[text])))
    assert message in err.value.message
    assert err.value.message.startswith("rpc error: code = ")


def test_constraint_matching_ignores_case() -> None:
    assert parse_constraint("node.role==Manager").matches("manager")
    assert not parse_constraint("node.role!=manager").matches("MANAGER")
    assert parse_constraint("node.labels.zone!=eu").matches("")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"container_spec": None}, "ContainerSpec: missing in service spec"),
    ({"container_spec": ContainerSpec()}, "ContainerSpec: image reference must be provided"),
    ({"container_spec": ContainerSpec(image="bad image")}, 'ContainerSpec: "bad image" is not a valid'),
    ({"container_spec": ContainerSpec(image="b", stop_grace_period=-1)}, "stop-grace-period cannot be"),
    ({"restart_policy": RestartPolicy(condition="always")}, "invalid restart condition 'always'"),
    ({"restart_policy": RestartPolicy(delay=-1)}, "TaskSpec: restart-delay cannot be negative"),
    ({"restart_policy": RestartPolicy(window=-5)}, "TaskSpec: restart-window cannot be negative"),
    ({"restart_policy": RestartPolicy(max_attempts=-1)}, "restart-max-attempts cannot be negative"),
    ({"resources": Resources(limits=Limits(nano_cpus=-1))}, "invalid cpu limit"),
    ({"resources": Resources(limits=Limits(memory_bytes=-1))}, "invalid memory limit -1"),
    ({"resources": Resources(limits=Limits(pids=-1))}, "invalid pids limit -1"),
    ({"resources": Resources(reservations=Reservations(memory_bytes=-4))}, "invalid memory reservation -4"),
    ({"resources": Resources(reservations=Reservations(nano_cpus=-2))}, "invalid cpu reservation"),
    ({"resources": Resources(limits=Limits(memory_bytes=1024))}, "invalid memory value 1024: Must be"),
    ({"placement": Placement(max_replicas=-1)}, "max-replicas cannot be negative"),
    ({"svc_update_config": UpdateConfig(delay=-1)}, "TaskSpec: update-delay cannot be negative"),
    ({"svc_update_config": UpdateConfig(monitor=-1)}, "TaskSpec: update-monitor cannot be negative"),
    ({"svc_rollback_config": UpdateConfig(delay=-1)}, "TaskSpec: rollback-delay cannot be negative"),
    ({"svc_update_config": UpdateConfig(max_failure_ratio=1.5)}, "update-maxfailureratio cannot be"),
    ({"svc_mode": ServiceMode(replicated=ReplicatedService(replicas=-1))},
     "Number of replicas must be non-negative"),
])
def test_invalid_specs_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_service_spec(spec(**overrides))
    assert message in err.value.message
    assert err.value.status == 400


def test_both_modes_are_refused_with_moby_text() -> None:
    mode = ServiceMode(replicated=ReplicatedService(replicas=1), global_=GlobalService())
    with pytest.raises(InvalidArgument) as err:
        validate_service_spec(spec(svc_mode=mode))
    assert err.value.message == "cannot specify both replicated mode and global mode"


@pytest.mark.parametrize("overrides", [
    {},
    {"svc_mode": ServiceMode(replicated=ReplicatedService(replicas=0))},
    {"svc_mode": ServiceMode(global_=GlobalService())},
    {"restart_policy": RestartPolicy(condition="on-failure", delay=0, window=0, max_attempts=3)},
    {"restart_policy": RestartPolicy(condition="none")},
    {"resources": Resources(limits=Limits(nano_cpus=500_000_000, memory_bytes=64 << 20, pids=100))},
    {"placement": Placement(constraints=["node.role==manager", "node.labels.zone!=eu"])},
    {"svc_update_config": UpdateConfig(parallelism=2, delay=10, max_failure_ratio=0.5)},
])
def test_valid_specs_pass(overrides: dict[str, Any]) -> None:
    validate_service_spec(spec(**overrides))


def test_constraint_is_frozen() -> None:
    c = parse_constraint("node.id==x")
    with pytest.raises(AttributeError):
        c.key = "node.role"  # type: ignore[misc]
    assert msgspec.structs.replace(c, value="y").value == "y"
