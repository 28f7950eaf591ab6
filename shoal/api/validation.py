"""Validation of user-written specs, with Docker's (swarmkit controlapi's) error messages.

The API server calls `validate_service_spec` on service create and update before writing to the
store; the scheduler imports `parse_constraint`/`Constraint` to evaluate placement constraints.
Every error is an `InvalidArgument` (HTTP 400) carrying the text Docker answers with.
"""

from __future__ import annotations

import re

import msgspec

from shoal.api.errors import InvalidArgument
from shoal.api.types import (
    ContainerSpec,
    EndpointSpec,
    Resources,
    RestartPolicy,
    ServiceSpec,
    TaskSpec,
    UpdateConfig,
)

_INVALID = "rpc error: code = InvalidArgument desc = "
# Errors swarmkit's constraint parser returns as plain Go errors reach the client as code Unknown.
_UNKNOWN = "rpc error: code = Unknown desc = "

_DNS_NAME = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
# swarmkit manager/constraint: keys and values it accepts; values must not contain operators.
_KEY = re.compile(r"^[a-z_][a-z0-9\-_.]+$", re.IGNORECASE)
_VALUE = re.compile(r"^[a-z0-9:\-_\s.*()?+\[\]\\^$|/]+$", re.IGNORECASE)
_OPERATORS = ("==", "!=")
_PLAIN_KEYS = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")
_LABEL_PREFIXES = ("node.labels.", "engine.labels.")
_ROLES = ("manager", "worker")
_RESTART_CONDITIONS = ("", "none", "on-failure", "any")


class Constraint(msgspec.Struct, frozen=True):
    """One placement constraint. `key` has its prefix lower-cased ("node.labels.Zone" keeps the
    label's case, which is significant); `op` is "==" or "!="; values compare case-insensitively."""

    key: str
    op: str
    value: str

    def matches(self, actual: str) -> bool:
        """Whether a node whose attribute for `key` is `actual` satisfies this constraint."""
        equal = self.value.casefold() == actual.casefold()
        return equal if self.op == "==" else not equal


def validate_name(name: str) -> None:
    """A service name: a DNS label of at most 63 characters (swarmkit validateAnnotations)."""
    if not name:
        raise InvalidArgument(_INVALID + "meta: name must be provided")
    if len(name) > 63:
        raise InvalidArgument(_INVALID + "name must be 63 characters or fewer")
    if not _DNS_NAME.match(name):
        raise InvalidArgument(_INVALID + "name must be valid as a DNS name component")


def parse_constraint(text: str) -> Constraint:
    """`key==value` or `key!=value` with a key the scheduler knows; InvalidArgument otherwise."""
    for op in _OPERATORS:
        if op not in text:
            continue
        raw_key, raw_value = text.split(op, 1)
        key, value = raw_key.strip(), raw_value.strip()
        if not _KEY.match(key):
            raise InvalidArgument(_UNKNOWN + f"key '{key}' is invalid")
        if not _VALUE.match(value):
            raise InvalidArgument(_UNKNOWN + f"value '{value}' is invalid")
        key = _normalise_key(key)
        if key == "node.role" and value.lower() not in _ROLES:
            raise InvalidArgument(_INVALID + f"invalid constraint value '{value}' for node.role: "
                                  "must be manager or worker")
        return Constraint(key, op, value)
    raise InvalidArgument(_UNKNOWN + "constraint expected one operator from ==, !=")


def _normalise_key(key: str) -> str:
    lower = key.lower()
    if lower in _PLAIN_KEYS:
        return lower
    for prefix in _LABEL_PREFIXES:
        if lower.startswith(prefix) and len(key) > len(prefix):
            return prefix + key[len(prefix):]
    raise InvalidArgument(_INVALID + f"invalid constraint key '{key}': expected one of "
                          + ", ".join(_PLAIN_KEYS) + ", node.labels.<label>, engine.labels.<label>")


def validate_service_spec(spec: ServiceSpec) -> None:
    """Refuse a spec Docker would refuse; the first problem found is reported."""
    validate_name(spec.name)
    _validate_task(spec.task_template)
    _validate_update(spec.update_config, "update")
    _validate_update(spec.rollback_config, "rollback")
    _validate_mode(spec)
    validate_endpoint(spec.endpoint_spec)


def _validate_task(task: TaskSpec) -> None:
    _validate_resources(task.resources)
    _validate_restart(task.restart_policy)
    if task.placement is not None:
        for text in task.placement.constraints or ():
            parse_constraint(text)
        if task.placement.max_replicas < 0:
            raise InvalidArgument(_INVALID + "TaskSpec: max-replicas cannot be negative")
    _validate_container(task.container_spec)


def _validate_container(cs: ContainerSpec | None) -> None:
    if cs is None:
        raise InvalidArgument(_INVALID + "ContainerSpec: missing in service spec")
    if not cs.image:
        raise InvalidArgument(_INVALID + "ContainerSpec: image reference must be provided")
    if cs.image != cs.image.strip() or any(c.isspace() for c in cs.image):
        raise InvalidArgument(_INVALID + f'ContainerSpec: "{cs.image}" is not a valid repository/tag')
    if cs.stop_grace_period is not None and cs.stop_grace_period < 0:
        raise InvalidArgument(_INVALID + "ContainerSpec: stop-grace-period cannot be negative")


def _validate_resources(res: Resources | None) -> None:
    if res is None:
        return
    for what, part in (("limit", res.limits), ("reservation", res.reservations)):
        if part is None:
            continue
        cpus, mem = part.nano_cpus, part.memory_bytes
        if cpus < 0:
            raise InvalidArgument(_INVALID + f"invalid cpu {what} {cpus / 1e9:g}: cannot be negative")
        if mem < 0:
            raise InvalidArgument(_INVALID + f"invalid memory {what} {mem}: cannot be negative")
        if 0 < cpus < 1_000_000:
            raise InvalidArgument(_INVALID + f"invalid cpu value {cpus / 1e9:g}: Must be at least 0.001")
        if 0 < mem < 4 * 1024 * 1024:
            raise InvalidArgument(_INVALID + f"invalid memory value {mem}: Must be at least 4MiB")
    if res.limits is not None and res.limits.pids < 0:
        raise InvalidArgument(_INVALID + f"invalid pids limit {res.limits.pids}: cannot be negative")


def _validate_restart(rp: RestartPolicy | None) -> None:
    if rp is None:
        return
    if rp.condition not in _RESTART_CONDITIONS:
        raise InvalidArgument(_INVALID + f"TaskSpec: invalid restart condition '{rp.condition}': "
                              "must be none, on-failure or any")
    if rp.delay is not None and rp.delay < 0:
        raise InvalidArgument(_INVALID + "TaskSpec: restart-delay cannot be negative")
    if rp.window is not None and rp.window < 0:
        raise InvalidArgument(_INVALID + "TaskSpec: restart-window cannot be negative")
    if rp.max_attempts is not None and rp.max_attempts < 0:
        raise InvalidArgument(_INVALID + "TaskSpec: restart-max-attempts cannot be negative")


def _validate_update(uc: UpdateConfig | None, what: str) -> None:
    if uc is None:
        return
    if uc.delay < 0:
        raise InvalidArgument(_INVALID + f"TaskSpec: {what}-delay cannot be negative")
    if uc.monitor < 0:
        raise InvalidArgument(_INVALID + f"TaskSpec: {what}-monitor cannot be negative")
    if uc.parallelism < 0:
        raise InvalidArgument(_INVALID + f"TaskSpec: {what}-parallelism cannot be negative")
    if not 0 <= uc.max_failure_ratio <= 1:
        raise InvalidArgument(
            _INVALID + f"TaskSpec: {what}-maxfailureratio cannot be less than 0 or bigger than 1")


def _validate_mode(spec: ServiceSpec) -> None:
    mode = spec.mode
    if mode.replicated is not None and mode.global_ is not None:
        # moby's converter refuses this before swarmkit sees it, hence no rpc prefix.
        raise InvalidArgument("cannot specify both replicated mode and global mode")
    if mode.replicated_job is not None or mode.global_job is not None:
        raise InvalidArgument(_INVALID + "jobs are not supported (service mode must be replicated or global)")
    replicas = mode.replicated.replicas if mode.replicated is not None else None
    if replicas is not None and replicas < 0:
        raise InvalidArgument(_INVALID + "Number of replicas must be non-negative")


_PROTOCOLS = ("", "tcp", "udp", "sctp")
_PUBLISH_MODES = ("", "ingress", "host")
_NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def validate_endpoint(ep: EndpointSpec | None) -> None:
    """swarmkit validateEndpointSpec: mode, port ranges, protocols, duplicates, dnsrr + ingress."""
    if ep is None:
        return
    if ep.mode not in ("", "vip", "dnsrr"):
        raise InvalidArgument(_INVALID + f"EndpointSpec: invalid resolution mode '{ep.mode}': "
                              "must be vip or dnsrr")
    seen: set[tuple[str, int, str]] = set()
    for port in ep.ports or ():
        if port.protocol not in _PROTOCOLS:
            raise InvalidArgument(_INVALID + f"EndpointSpec: invalid protocol '{port.protocol}': "
                                  "must be tcp, udp or sctp")
        if port.publish_mode not in _PUBLISH_MODES:
            raise InvalidArgument(_INVALID + f"EndpointSpec: invalid publish mode '{port.publish_mode}': "
                                  "must be ingress or host")
        if not 1 <= port.target_port <= 65535:
            raise InvalidArgument(_INVALID + f"EndpointSpec: invalid target port {port.target_port}: "
                                  "must be between 1 and 65535")
        if not 0 <= port.published_port <= 65535:
            raise InvalidArgument(_INVALID + f"EndpointSpec: invalid published port {port.published_port}: "
                                  "must be between 0 and 65535")
        ingress = port.publish_mode in ("", "ingress")
        if ingress and ep.mode == "dnsrr":
            raise InvalidArgument(_INVALID + "EndpointSpec: port published with ingress mode can't be "
                                  "used with dnsrr mode")
        key = (port.protocol or "tcp", port.published_port, port.publish_mode or "ingress")
        if port.published_port and key in seen:
            raise InvalidArgument(_INVALID + "EndpointSpec: duplicate published ports provided")
        seen.add(key)


def validate_network_name(name: str) -> None:
    """A network name as Docker accepts it: a letter or digit, then letters, digits, `_.-`."""
    if not name:
        raise InvalidArgument(_INVALID + "meta: name must be provided")
    if len(name) > 63 or not _NETWORK_NAME.match(name):
        raise InvalidArgument(_INVALID + f"invalid network name {name!r}: use letters, digits, "
                              "'_', '.' and '-' (at most 63 characters), starting with a letter or digit")
