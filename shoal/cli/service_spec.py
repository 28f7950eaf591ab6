"""Flag values → ServiceSpec JSON, as the docker CLI builds it (cli/command/service/opts.go, update.go).

Called by `service_create` (a new spec) and `service` (update: the same helpers applied to the
spec read from the daemon). Options arrive as click's parameter dict where `None` means "flag not
given" (docker's `flags.Changed`). Every bad value raises `CliError` with docker's wording
`invalid argument "x" for "--flag" flag: reason` before any request is sent.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from shoal.api.units import parse_bytes, parse_duration_ns, parse_nano_cpus
from shoal.cli.client import CliError
from shoal.cli.endpoint import endpoint_mode, parse_network, parse_ports

T = TypeVar("T")
Options = Mapping[str, Any]
Spec = dict[str, Any]

RESTART_CONDITIONS = ("none", "on-failure", "any")
FAILURE_ACTIONS = ("pause", "continue", "rollback")
UPDATE_ORDERS = ("stop-first", "start-first")
# swarmkit's defaults (api/defaults/service.go), filled in when any --update-*/--rollback-* flag is given.
UPDATE_DEFAULTS: Spec = {"Parallelism": 1, "Delay": 0, "FailureAction": "pause", "Monitor": 5_000_000_000,
                         "MaxFailureRatio": 0, "Order": "stop-first"}
ROLLBACK_DEFAULTS: Spec = {**UPDATE_DEFAULTS}
_DNS_NAME = re.compile(r"^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$")
_CONSTRAINT = re.compile(r"^\s*([^=!\s][^=!]*?)\s*(==|!=)\s*(\S.*?)\s*$")


def invalid(value: str, flag: str, reason: str) -> CliError:
    return CliError(f'invalid argument "{value}" for "{flag}" flag: {reason}')


def convert(value: str, flag: str, parser: Callable[[str], T]) -> T:
    """Run a parser; its ValueError becomes docker's flag error."""
    try:
        return parser(value)
    except ValueError as exc:
        raise invalid(value, flag, str(exc)) from None


# ------------------------------------------------------------------------------------ value parsers
def parse_uint(text: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()):
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    return int(text)


def parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f'strconv.ParseFloat: parsing "{text}": invalid syntax') from None


def parse_duration(text: str) -> int:
    """A non-negative Go duration in ns (docker's PositiveDurationOpt)."""
    if text.strip().startswith("-"):
        raise ValueError("duration cannot be negative")
    try:
        return parse_duration_ns(text)
    except ValueError:
        raise ValueError(f'time: invalid duration "{text}"') from None


def parse_cpus(text: str) -> int:
    try:
        return parse_nano_cpus(text)
    except ValueError as exc:
        # units' message repeats `invalid argument "x": `; docker's flag error already says it.
        raise ValueError(str(exc).split(": ", 1)[-1]) from None


def parse_memory(text: str) -> int:
    if text.strip().startswith("-"):
        raise ValueError(f"invalid size: '{text}'")
    return parse_bytes(text)


def one_of(choices: Iterable[str]) -> Callable[[str], str]:
    allowed = tuple(choices)

    def check(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text
    return check


def parse_constraint(text: str) -> str:
    """swarmkit's constraint syntax: key==value or key!=value."""
    if not _CONSTRAINT.match(text):
        raise ValueError("constraint expected one operator from ==, !=")
    return text


def parse_placement_pref(text: str) -> Spec:
    strategy, sep, arg = text.partition("=")
    if not sep or not arg:
        raise ValueError('placement preference must be of the format "<strategy>=<arg>"')
    if strategy.lower() != "spread":
        raise ValueError(f"unsupported placement preference {strategy} (only spread is supported)")
    return {"Spread": {"SpreadDescriptor": arg}}


def validate_name(text: str) -> str:
    if len(text) > 63 or not _DNS_NAME.match(text):
        raise ValueError("name must be valid as a DNS name component")
    return text


def env_entry(text: str) -> str:
    """docker's ValidateEnv: `K` alone takes the value from this process's environment."""
    if "=" in text or not text:
        if text.startswith("="):
            raise ValueError(f"invalid environment variable: {text}")
        return text
    return f"{text}={os.environ[text]}" if text in os.environ else text


def kv_map(items: Iterable[str]) -> dict[str, str]:
    """docker's ConvertKVStringsToMap: `k=v`, or `k` meaning an empty value."""
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = value
    return out


# ----------------------------------------------------------------------------------- spec sections
def given(o: Options, *names: str) -> bool:
    return any(o.get(n) not in (None, ()) for n in names)


def apply_resources(resources: Spec | None, o: Options) -> Spec:
    """Resources{Limits, Reservations}: docker always sends both, with the changed fields set."""
    out: Spec = dict(resources or {})
    limits: Spec = dict(out.get("Limits") or {})
    reservations: Spec = dict(out.get("Reservations") or {})
    if o.get("limit_cpu") is not None:
        limits["NanoCPUs"] = convert(o["limit_cpu"], "--limit-cpu", parse_cpus)
    if o.get("limit_memory") is not None:
        limits["MemoryBytes"] = convert(o["limit_memory"], "--limit-memory", parse_memory)
    if o.get("limit_pids") is not None:
        limits["Pids"] = convert(o["limit_pids"], "--limit-pids", parse_uint)
    if o.get("reserve_cpu") is not None:
        reservations["NanoCPUs"] = convert(o["reserve_cpu"], "--reserve-cpu", parse_cpus)
    if o.get("reserve_memory") is not None:
        reservations["MemoryBytes"] = convert(o["reserve_memory"], "--reserve-memory", parse_memory)
    out["Limits"] = {k: v for k, v in limits.items() if v}
    out["Reservations"] = {k: v for k, v in reservations.items() if v}
    return out


def apply_restart(policy: Spec | None, o: Options) -> Spec | None:
    """RestartPolicy only when a --restart-* flag is given, starting from swarmkit's defaults."""
    if not given(o, "restart_condition", "restart_delay", "restart_max_attempts", "restart_window"):
        return policy
    out: Spec = dict(policy) if policy else {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0}
    if o.get("restart_condition") is not None:
        out["Condition"] = convert(o["restart_condition"], "--restart-condition", one_of(RESTART_CONDITIONS))
    if o.get("restart_delay") is not None:
        out["Delay"] = convert(o["restart_delay"], "--restart-delay", parse_duration)
    if o.get("restart_max_attempts") is not None:
        out["MaxAttempts"] = convert(o["restart_max_attempts"], "--restart-max-attempts", parse_uint)
    if o.get("restart_window") is not None:
        out["Window"] = convert(o["restart_window"], "--restart-window", parse_duration)
    return out


def apply_update_config(config: Spec | None, o: Options, prefix: str) -> Spec | None:
    """Update/RollbackConfig: only when a --<prefix>-* flag is given, from swarmkit's defaults."""
    keys = {k: f"{prefix}_{k}" for k in ("parallelism", "delay", "monitor", "failure_action", "order",
                                         "max_failure_ratio")}
    if not given(o, *keys.values()):
        return config
    out: Spec = dict(config) if config else dict(UPDATE_DEFAULTS)
    flag = f"--{prefix}-"
    table: list[tuple[str, str, Callable[[str], Any]]] = [
        ("parallelism", "Parallelism", parse_uint), ("delay", "Delay", parse_duration),
        ("monitor", "Monitor", parse_duration), ("failure_action", "FailureAction", one_of(FAILURE_ACTIONS)),
        ("order", "Order", one_of(UPDATE_ORDERS)), ("max_failure_ratio", "MaxFailureRatio", parse_float),
    ]
    for key, field, parser in table:
        value = o.get(keys[key])
        if value is not None:
            out[field] = convert(value, flag + key.replace("_", "-"), parser)
    return out


def service_mode(o: Options) -> Spec:
    """Mode from --mode/--replicas (docker's ToServiceMode)."""
    mode = o.get("mode") or "replicated"
    if mode not in ("replicated", "global"):
        raise CliError(f"Unknown mode: {mode}, only replicated and global supported")
    replicas = o.get("replicas")
    if mode == "global":
        if replicas is not None:
            raise CliError("replicas can only be used with replicated or replicated-job mode")
        if o.get("max_replicas") is not None:
            raise CliError("replicas-max-per-node can only be used with replicated or replicated-job mode")
        return {"Global": {}}
    replicated: Spec = {}
    if replicas is not None:
        replicated["Replicas"] = convert(replicas, "--replicas", parse_uint)
    return {"Replicated": replicated}


def placement(o: Options) -> Spec:
    out: Spec = {}
    constraints = [convert(c, "--constraint", parse_constraint) for c in o.get("constraint") or ()]
    if constraints:
        out["Constraints"] = constraints
    prefs = [convert(p, "--placement-pref", parse_placement_pref) for p in o.get("placement_pref") or ()]
    if prefs:
        out["Preferences"] = prefs
    if o.get("max_replicas") is not None:
        out["MaxReplicas"] = convert(o["max_replicas"], "--replicas-max-per-node", parse_uint)
    return out


def container_spec(image: str, args: tuple[str, ...], o: Options) -> Spec:
    spec: Spec = {"Image": image_with_tag(image)}
    labels = kv_map(o.get("container_label") or ())
    if labels:
        spec["Labels"] = labels
    if o.get("entrypoint") is not None:
        spec["Command"] = convert(o["entrypoint"], "--entrypoint", shlex.split)
    if args:
        spec["Args"] = list(args)
    simple = {"hostname": "Hostname", "workdir": "Dir", "user": "User", "stop_signal": "StopSignal"}
    for key, field in simple.items():
        if o.get(key):
            spec[field] = o[key]
    env = [convert(e, "--env", env_entry) for e in o.get("env") or ()]
    if env:
        spec["Env"] = env
    if o.get("init") is not None:
        spec["Init"] = bool(o["init"])
    if o.get("read_only"):
        spec["ReadOnly"] = True
    if o.get("stop_grace_period") is not None:
        spec["StopGracePeriod"] = convert(o["stop_grace_period"], "--stop-grace-period", parse_duration)
    return spec


def build_spec(image: str, args: tuple[str, ...], o: Options) -> Spec:
    """The POST /services/create body for `service create [flags] IMAGE [ARG...]`."""
    spec: Spec = {}
    if o.get("name"):
        spec["Name"] = convert(o["name"], "--name", validate_name)
    spec["Labels"] = kv_map(o.get("label") or ())
    task: Spec = {"ContainerSpec": container_spec(image, args, o), "Resources": apply_resources(None, o)}
    restart = apply_restart(None, o)
    if restart is not None:
        task["RestartPolicy"] = restart
    task["Placement"] = placement(o)
    networks = [convert(n, "--network", parse_network) for n in o.get("network") or ()]
    if networks:
        task["Networks"] = networks  # Targets as typed: `service create` resolves them to IDs
    task["ForceUpdate"] = 0
    spec["TaskTemplate"] = task
    spec["Mode"] = service_mode(o)
    for prefix, field in (("update", "UpdateConfig"), ("rollback", "RollbackConfig")):
        config = apply_update_config(None, o, prefix)
        if config is not None:
            spec[field] = config
    spec["EndpointSpec"] = endpoint_spec(o)
    return spec


def publish_values(values: Iterable[str], flag: str) -> list[Spec]:
    """Every port of a repeated publish flag (a short-form range gives several)."""
    return [port for value in values for port in convert(value, flag, parse_ports)]


def endpoint_spec(o: Options) -> Spec:
    """EndpointSpec{Mode, Ports} from --endpoint-mode (default vip) and -p/--publish."""
    out: Spec = {"Mode": convert(o.get("endpoint_mode") or "vip", "--endpoint-mode", endpoint_mode)}
    ports = publish_values(o.get("publish") or (), "-p, --publish")
    if ports:
        out["Ports"] = ports
    return out


def image_with_tag(image: str) -> str:
    """Docker's imageWithTagString: a reference without tag or digest gets ":latest", so a spec
    made here equals the one the docker CLI would send (otherwise a later `docker service scale`
    changes the image string and rolls every task)."""
    if "@" in image:
        return image
    last = image.rsplit("/", 1)[-1]
    return image if ":" in last else f"{image}:latest"
