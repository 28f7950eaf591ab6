"""`shoal service update [flags] SERVICE`: GET the spec, change what the flags say, POST it back.

Registered on the `service` group by `shoal.cli.service`. As docker does, the whole ServiceSpec is
sent with `?version=<Version.Index>`; `--force` bumps TaskTemplate.ForceUpdate; `--rollback`
asks for the server-side rollback. `apply_update` is pure, for tests (network names reach it
through a resolver: `network_resolver` asks the daemon, as docker does, for the ID).
"""

from __future__ import annotations

import copy
import shlex
from typing import Any

import click

from shoal.cli.client import App, CliError
from shoal.cli.endpoint import Resolver, endpoint_mode, parse_network, update_networks, update_ports
from shoal.cli.network import network_resolver
from shoal.cli.service_create import (
    finish,
    opt,
    resource_flags,
    timeout_ns,
    update_flags,
    watch_flags,
    with_flags,
)
from shoal.cli.service_spec import (
    Options,
    Spec,
    apply_resources,
    apply_restart,
    apply_update_config,
    convert,
    env_entry,
    image_with_tag,
    kv_map,
    parse_constraint,
    parse_uint,
    publish_values,
)

UPDATE_FLAGS = [
    opt("--image", help="Service image tag"),
    opt("--replicas", help="Number of tasks"),
    opt("--args", help="Service command args"),
    opt("--env-add", multiple=True, help="Add or update an environment variable"),
    opt("--env-rm", multiple=True, help="Remove an environment variable"),
    opt("--label-add", multiple=True, help="Add or update a service label"),
    opt("--label-rm", multiple=True, help="Remove a label by its key"),
    opt("--container-label-add", multiple=True, help="Add or update a container label"),
    opt("--container-label-rm", multiple=True, help="Remove a container label by its key"),
    opt("--constraint-add", multiple=True, help="Add or update a placement constraint"),
    opt("--constraint-rm", multiple=True, help="Remove a constraint"),
    opt("--publish-add", multiple=True, help="Add or update a published port"),
    opt("--publish-rm", multiple=True, help="Remove a published port by its target port"),
    opt("--network-add", multiple=True, help="Add a network"),
    opt("--network-rm", multiple=True, help="Remove a network"),
    opt("--endpoint-mode", help='Endpoint mode ("vip" or "dnsrr")'),
    opt("--force", flag=True, help="Force update even if no changes require it"),
    opt("--rollback", flag=True, help="Rollback to previous specification"),
    *resource_flags(), *update_flags("update"), *update_flags("rollback"), *watch_flags(),
]


def _update_env(env: list[str], add: tuple[str, ...], remove: tuple[str, ...]) -> list[str]:
    """docker's updateEnvironment: keyed by the name before `=`; removal by name."""
    entries = {e.partition("=")[0]: e for e in env}
    for item in add:
        value = convert(item, "--env-add", env_entry)
        entries[value.partition("=")[0]] = value
    for key in remove:
        entries.pop(key.partition("=")[0], None)
    return list(entries.values())


def _update_map(current: dict[str, str] | None, add: tuple[str, ...],
                remove: tuple[str, ...]) -> dict[str, str]:
    out = dict(current or {})
    out.update(kv_map(add))
    for key in remove:
        out.pop(key, None)
    return out


def _apply_container(container: Spec, o: Options) -> None:
    if o.get("image"):
        container["Image"] = image_with_tag(o["image"])
    if o.get("args") is not None:
        container["Args"] = shlex.split(o["args"])
    if o.get("env_add") or o.get("env_rm"):
        container["Env"] = _update_env(container.get("Env") or [], o["env_add"], o["env_rm"])
    if o.get("container_label_add") or o.get("container_label_rm"):
        container["Labels"] = _update_map(container.get("Labels"), o["container_label_add"],
                                          o["container_label_rm"])


def _apply_placement(task: Spec, o: Options) -> None:
    if not (o.get("constraint_add") or o.get("constraint_rm")):
        return
    placement = task.setdefault("Placement", {})
    constraints = [c for c in placement.get("Constraints") or [] if c not in o["constraint_rm"]]
    for item in o["constraint_add"]:
        constraint = convert(item, "--constraint-add", parse_constraint)
        if constraint not in constraints:
            constraints.append(constraint)
    placement["Constraints"] = constraints


def _unresolved(ref: str) -> tuple[str, str]:
    return ref, ref


def _apply_endpoint(spec: Spec, o: Options, resolve: Resolver) -> None:
    """--network-add/-rm (TaskTemplate.Networks), --publish-add/-rm and --endpoint-mode (EndpointSpec)."""
    if o.get("network_add") or o.get("network_rm"):
        add = [convert(n, "--network-add", parse_network) for n in o["network_add"]]
        update_networks(spec, add, o["network_rm"], resolve)
    if o.get("publish_add") or o.get("publish_rm"):
        endpoint = spec.setdefault("EndpointSpec", {})
        update_ports(endpoint, publish_values(o["publish_add"], "--publish-add"),
                     publish_values(o["publish_rm"], "--publish-rm"))
    if o.get("endpoint_mode") is not None:
        spec.setdefault("EndpointSpec", {})["Mode"] = convert(o["endpoint_mode"], "--endpoint-mode",
                                                              endpoint_mode)


def apply_update(spec: Spec, o: Options, resolve: Resolver = _unresolved) -> Spec:
    """The changed copy of a ServiceSpec; `resolve` turns network refs into (ID, name)."""
    out = copy.deepcopy(spec)
    task = out.setdefault("TaskTemplate", {})
    _apply_container(task.setdefault("ContainerSpec", {}), o)
    if o.get("label_add") or o.get("label_rm"):
        out["Labels"] = _update_map(out.get("Labels"), o["label_add"], o["label_rm"])
    if any(o.get(k) is not None for k in ("limit_cpu", "limit_memory", "limit_pids", "reserve_cpu",
                                         "reserve_memory")):
        task["Resources"] = apply_resources(task.get("Resources"), o)
    restart = apply_restart(task.get("RestartPolicy"), o)
    if restart is not None:
        task["RestartPolicy"] = restart
    _apply_placement(task, o)
    _apply_endpoint(out, o, resolve)
    for prefix, field in (("update", "UpdateConfig"), ("rollback", "RollbackConfig")):
        config = apply_update_config(out.get(field), o, prefix)
        if config is not None:
            out[field] = config
    if o.get("replicas") is not None:
        mode = out.setdefault("Mode", {})
        if "Replicated" not in mode:
            raise CliError("replicas can only be used with replicated or replicated-job mode")
        mode["Replicated"]["Replicas"] = convert(o["replicas"], "--replicas", parse_uint)
    if o.get("force"):
        task["ForceUpdate"] = int(task.get("ForceUpdate") or 0) + 1
    return out


@click.command("update")
@with_flags(UPDATE_FLAGS)
@click.argument("name")
@click.pass_obj
def update(app: App, /, name: str, **options: Any) -> None:
    """Update a service."""
    timeout_ns(options)
    # Validate every flag on an empty spec first: bad values fail before any request.
    apply_update({"Mode": {"Replicated": {}}}, options)
    svc = app.client.get(f"/services/{name}", {"insertDefaults": "false"})
    params: dict[str, str | int] = {"version": svc["Version"]["Index"]}
    if options.get("rollback"):
        params["rollback"] = "previous"
        spec = svc["Spec"]
    else:
        spec = apply_update(svc["Spec"], options, network_resolver(app))
    response = app.client.post(f"/services/{svc['ID']}/update", params, spec) or {}
    for warning in (response.get("Warnings") if isinstance(response, dict) else None) or []:
        click.echo(warning, err=True)
    click.echo(name)
    finish(app, svc["ID"], options)
