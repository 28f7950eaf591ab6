"""`service inspect --pretty`: a human summary of one service, in docker's layout.

Called by `shoal.cli.service.inspect`; takes the service JSON as the daemon sent it.
"""

from __future__ import annotations

from typing import Any

from shoal.api.units import format_duration


def _update_lines(title: str, config: dict[str, Any]) -> list[str]:
    return [
        f"{title}:",
        f" Parallelism:\t{config.get('Parallelism', 0)}",
        *([f" Delay:\t\t{format_duration(config['Delay'])}"] if config.get("Delay") else []),
        f" On failure:\t{config.get('FailureAction', '')}",
        f" Monitoring Period: {format_duration(config.get('Monitor', 0))}",
        f" Max failure ratio: {config.get('MaxFailureRatio', 0)}",
        f" Update order:      {config.get('Order', '')}",
    ]


def _container_lines(container: dict[str, Any]) -> list[str]:
    lines = ["ContainerSpec:", f" Image:\t\t{container.get('Image', '')}"]
    if container.get("Command"):
        lines.append(f" Command:\t{' '.join(container['Command'])}")
    if container.get("Args"):
        lines.append(f" Args:\t\t{' '.join(container['Args'])}")
    if container.get("Env"):
        lines.append(f" Env:\t\t{' '.join(container['Env'])}")
    for key, label in (("Dir", "Dir"), ("User", "User"), ("Hostname", "Hostname")):
        if container.get(key):
            lines.append(f" {label}:\t\t{container[key]}")
    if container.get("Init") is not None:
        lines.append(f" Init:\t\t{str(container['Init']).lower()}")
    return lines


def _resource_lines(resources: dict[str, Any]) -> list[str]:
    lines = ["Resources:"]
    for title, key in (("Reservations", "Reservations"), ("Limits", "Limits")):
        values = resources.get(key) or {}
        if not values:
            continue
        lines.append(f" {title}:")
        if values.get("NanoCPUs"):
            lines.append(f"  CPU:\t\t{values['NanoCPUs'] / 1e9:g}")
        if values.get("MemoryBytes"):
            lines.append(f"  Memory:\t{values['MemoryBytes'] / (1 << 20):g}MiB")
        if values.get("Pids"):
            lines.append(f"  Pids:\t\t{values['Pids']}")
    return lines


def pretty(svc: dict[str, Any]) -> str:
    spec = svc.get("Spec") or {}
    task = spec.get("TaskTemplate") or {}
    mode = spec.get("Mode") or {}
    lines = [f"\nID:\t\t{svc.get('ID', '')}", f"Name:\t\t{spec.get('Name', '')}"]
    if spec.get("Labels"):
        lines.append("Labels:")
        lines += [f" {k}={v}" for k, v in spec["Labels"].items()]
    if "Global" in mode:
        lines.append("Service Mode:\tGlobal")
    else:
        replicas = (mode.get("Replicated") or {}).get("Replicas", 1)
        lines += ["Service Mode:\tReplicated", f" Replicas:\t{replicas}"]
    if svc.get("UpdateStatus"):
        status = svc["UpdateStatus"]
        lines += ["UpdateStatus:", f" State:\t\t{status.get('State', '')}",
                  f" Message:\t{status.get('Message', '')}"]
    placement = task.get("Placement") or {}
    lines.append("Placement:")
    if placement.get("Constraints"):
        lines.append(f" Constraints:\t{placement['Constraints']}")
    if spec.get("UpdateConfig"):
        lines += _update_lines("UpdateConfig", spec["UpdateConfig"])
    if spec.get("RollbackConfig"):
        lines += _update_lines("RollbackConfig", spec["RollbackConfig"])
    lines += _container_lines(task.get("ContainerSpec") or {})
    lines += _resource_lines(task.get("Resources") or {})
    lines.append(f"Endpoint Mode:\t{(spec.get('EndpointSpec') or {}).get('Mode', 'vip')}")
    ports = (svc.get("Endpoint") or {}).get("Ports") or []
    if ports:
        lines.append("Ports:")
        for p in ports:
            lines += [f" PublishedPort = {p.get('PublishedPort')}", f"  Protocol = {p.get('Protocol')}",
                      f"  TargetPort = {p.get('TargetPort')}", f"  PublishMode = {p.get('PublishMode')}"]
    return "\n".join(lines)
