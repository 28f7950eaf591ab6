"""`/services` list, create, inspect, update (incl. rollback) and delete; registered by app.py.

The handlers only write `Service` objects; the orchestrator (manager) reacts to them, e.g. it
removes the tasks of a deleted service. Checks and messages follow swarmkit's
manager/controlapi/service.go, since clients in the wild match its text.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import msgspec
from aiohttp import web

from shoal.api.defaults import with_inserted_defaults
from shoal.api.errors import Conflict, FailedPrecondition, Unimplemented
from shoal.api.ids import new_id
from shoal.api.states import TaskState
from shoal.api.types import (
    Node,
    ReplicatedService,
    Service,
    ServiceMode,
    ServiceSpec,
    ServiceStatus,
    Task,
    UpdateStatus,
    Version,
)
from shoal.api.validation import validate_service_spec
from shoal.apiserver.docker.context import ctx, require_manager
from shoal.apiserver.docker.endpoint import allocate_endpoint, with_network_ids
from shoal.apiserver.docker.lookup import resolve_service
from shoal.apiserver.http import (
    add_route,
    api_version_at_least,
    empty_response,
    json_response,
    labels_match,
    parse_filters,
    query_bool,
    query_version,
    read_json,
)
from shoal.store.protocol import ReadTx, WriteTx

_FILTERS = {"id", "name", "label", "mode", "runtime"}


def _mode_kind(mode: ServiceMode) -> str:
    if mode.global_ is not None:
        return "global"
    if mode.replicated_job is not None:
        return "replicated-job"
    if mode.global_job is not None:
        return "global-job"
    return "replicated"


def normalized(spec: ServiceSpec) -> ServiceSpec:
    """Fill what moby's converter fills: no mode means Replicated, no replica count means 1."""
    mode = spec.mode
    if _mode_kind(mode) == "replicated":
        replicas = mode.replicated.replicas if mode.replicated is not None else None
        mode = ServiceMode(replicated=ReplicatedService(replicas=1 if replicas is None else replicas))
    return msgspec.structs.replace(spec, mode=mode)


def down_nodes(tx: ReadTx) -> set[str]:
    return {n.id for n in tx.list(Node) if n.status.state == "down"}


def service_status(tx: ReadTx, svc: Service, down: set[str]) -> ServiceStatus:
    """Running = tasks running that are meant to and whose node is not down (a down node's last
    report is not a container anyone can see; the docker CLI skips such tasks too); Desired =
    replicas, or (global) tasks meant to run."""
    tasks: list[Task] = list(tx.tasks_of_service(svc.id))
    running = sum(t.status.state == TaskState.RUNNING and t.desired_state == TaskState.RUNNING
                  and t.node_id not in down for t in tasks)
    completed = sum(t.status.state == TaskState.COMPLETE for t in tasks)
    mode = svc.spec.mode
    if mode.replicated is not None:
        desired = mode.replicated.replicas or 0
    else:
        desired = sum(t.desired_state == TaskState.RUNNING for t in tasks)
    return ServiceStatus(running_tasks=running, desired_tasks=desired, completed_tasks=completed)


def _matches(svc: Service, filters: dict[str, list[str]]) -> bool:
    checks: dict[str, Callable[[str], bool]] = {
        "id": lambda v: svc.id.startswith(v),
        "name": lambda v: svc.spec.name.startswith(v),
        "mode": lambda v: _mode_kind(svc.spec.mode) == v,
        "runtime": lambda v: v == "container",
    }
    for key, values in filters.items():
        if key == "label":
            if not labels_match(svc.spec.labels, values):
                return False
        elif values and not any(checks[key](v) for v in values):
            return False
    return True


async def list_services(request: web.Request) -> web.Response:
    tx = require_manager(request)
    filters = parse_filters(request, _FILTERS)
    with_status = query_bool(request, "status") and api_version_at_least(request, "1.41")
    down = down_nodes(tx) if with_status else set()
    out = []
    for svc in sorted(tx.list(Service), key=lambda s: s.created_at):
        if _matches(svc, filters):
            out.append(msgspec.structs.replace(svc, service_status=service_status(tx, svc, down))
                       if with_status else svc)
    return json_response(out)


async def inspect(request: web.Request) -> web.Response:
    tx = require_manager(request)
    svc = resolve_service(tx, request.match_info["id"])
    if query_bool(request, "insertDefaults"):
        svc = msgspec.structs.replace(svc, spec=with_inserted_defaults(svc.spec))
        if svc.previous_spec is not None:
            svc = msgspec.structs.replace(svc, previous_spec=with_inserted_defaults(svc.previous_spec))
    return json_response(svc)


async def create(request: web.Request) -> web.Response:
    c = ctx(request)
    require_manager(request)
    spec = normalized(await read_json(request, ServiceSpec))
    validate_service_spec(spec)

    def apply(tx: WriteTx) -> Service:
        if tx.find_by_name(Service, spec.name) is not None:
            raise Conflict("rpc error: code = AlreadyExists desc = name conflicts with an existing object: "
                           f"service {spec.name} already exists")
        service_id = new_id()
        resolved = with_network_ids(tx, spec)
        endpoint = allocate_endpoint(tx, service_id, resolved, None)
        return tx.create(Service(id=service_id, spec=resolved, endpoint=endpoint))

    svc = await c.store.update(apply)
    return json_response({"ID": svc.id, "Warnings": None}, status=201)


def _check_update(old: ServiceSpec, new: ServiceSpec) -> None:
    if old.name != new.name:
        raise Unimplemented("rpc error: code = Unimplemented desc = renaming services is not supported")
    if _mode_kind(old.mode) != _mode_kind(new.mode):
        raise Unimplemented("rpc error: code = Unimplemented desc = service mode change is not allowed")


def _rolled_back(svc: Service, ref: str, now: dt.datetime) -> Service:
    if svc.previous_spec is None:
        raise FailedPrecondition(f"service {ref} does not have a previous spec")
    status = UpdateStatus(state="rollback_started", message="manually requested rollback",
                          started_at=now)
    return msgspec.structs.replace(svc, spec=svc.previous_spec, previous_spec=svc.spec, update_status=status)


async def update(request: web.Request) -> web.Response:
    c = ctx(request)
    require_manager(request)
    ref = request.match_info["id"]
    version = query_version(request)
    rollback = request.query.get("rollback", "") == "previous"
    spec = normalized(await read_json(request, ServiceSpec))
    if not rollback:
        validate_service_spec(spec)
    now = c.clock.now()

    def apply(tx: WriteTx) -> None:
        svc = resolve_service(tx, ref)
        if rollback:
            new = _rolled_back(svc, ref, now)
        else:
            _check_update(svc.spec, spec)
            new = msgspec.structs.replace(svc, spec=with_network_ids(tx, spec), previous_spec=svc.spec,
                                          update_status=None)
        endpoint = allocate_endpoint(tx, svc.id, new.spec, svc.endpoint)
        # The stored version is compared by the store: a stale `version` raises SequenceConflict.
        tx.update(msgspec.structs.replace(new, endpoint=endpoint, version=Version(index=version)))

    await c.store.update(apply)
    return json_response({"Warnings": None})


async def delete(request: web.Request) -> web.Response:
    c = ctx(request)
    require_manager(request)
    ref = request.match_info["id"]

    def apply(tx: WriteTx) -> None:
        tx.delete(Service, resolve_service(tx, ref).id)

    await c.store.update(apply)
    return empty_response()


def register(app: web.Application) -> None:
    add_route(app, "GET", "/services", list_services)
    add_route(app, "POST", "/services/create", create)
    add_route(app, "GET", "/services/{id}", inspect)
    add_route(app, "POST", "/services/{id}/update", update)
    add_route(app, "DELETE", "/services/{id}", delete)
