"""`/tasks` (with filters) and `/tasks/{id}`; registered by app.py.

Filters follow moby daemon/cluster/filters.go and swarmkit controlapi/task.go: `service` and
`node` take names or IDs (and `node=self`), `label` matches the *owning service's* labels (what
`docker stack ps` needs), `_up-to-date=true` keeps tasks made from the service's current spec.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from shoal.api.errors import InvalidArgument, NotFound
from shoal.api.states import TaskState
from shoal.api.types import Meta, Service, Task
from shoal.apiserver.docker.context import ctx, require_manager
from shoal.apiserver.docker.lookup import resolve_node, resolve_service, resolve_task
from shoal.apiserver.http import add_route, json_response, labels_match, parse_filters
from shoal.store.protocol import ReadTx

_FILTERS = {"id", "name", "label", "service", "node", "desired-state", "_up-to-date", "runtime"}


def display_name(task: Task, service: Service | None) -> str:
    if task.name:
        return task.name
    svc_name = service.spec.name if service is not None else task.service_id
    return f"{svc_name}.{task.slot or task.node_id}.{task.id}"


def up_to_date(task: Task, service: Service | None) -> bool:
    """Made from the current spec: the same TaskSpec, or tagged with the service's current version."""
    if service is None:
        return False
    return task.spec == service.spec.task_template or task.service_version == service.version.index


def _resolve_ids(refs: list[str], resolver: Callable[[str], Meta]) -> set[str]:
    out: set[str] = set()
    for ref in refs:
        try:
            out.add(resolver(ref).id)
        except (NotFound, InvalidArgument):
            # An unknown service/node simply matches nothing, as in moby.
            continue
    return out


def _desired_states(values: list[str]) -> set[TaskState]:
    states: set[TaskState] = set()
    for v in values:
        if v in ("running", "shutdown", "accepted"):
            states.add(TaskState(v))
        else:
            raise InvalidArgument(f"Invalid desired-state filter value: {v!r}; must be running, "
                                  "shutdown or accepted")
    return states


def _select(tx: ReadTx, filters: dict[str, list[str]], self_id: str | None) -> list[Task]:
    services = {s.id: s for s in tx.list(Service)}
    if "service" in filters:
        ids = _resolve_ids(filters["service"], lambda r: resolve_service(tx, r))
        candidates: list[Task] = [t for sid in ids for t in tx.tasks_of_service(sid)]
    else:
        candidates = list(tx.list(Task))
    node_ids = _resolve_ids(filters["node"], lambda r: resolve_node(tx, r, self_id)) \
        if "node" in filters else None
    desired = _desired_states(filters["desired-state"]) if "desired-state" in filters else None
    fresh = filters.get("_up-to-date")
    out = []
    for t in candidates:
        svc = services.get(t.service_id)
        if node_ids is not None and t.node_id not in node_ids:
            continue
        if desired is not None and t.desired_state not in desired:
            continue
        if "id" in filters and not any(t.id.startswith(v) for v in filters["id"]):
            continue
        if "name" in filters and not any(display_name(t, svc).startswith(v) for v in filters["name"]):
            continue
        if "label" in filters and not labels_match(svc.spec.labels if svc else None, filters["label"]):
            continue
        if fresh and any(v == "true" for v in fresh) and not up_to_date(t, svc):
            continue
        out.append(t)
    return sorted(out, key=lambda t: (t.service_id, t.slot, t.created_at))


async def list_tasks(request: web.Request) -> web.Response:
    tx = require_manager(request)
    filters = parse_filters(request, _FILTERS)
    return json_response(_select(tx, filters, ctx(request).swarm.local_node_id()))


async def inspect(request: web.Request) -> web.Response:
    tx = require_manager(request)
    return json_response(resolve_task(tx, request.match_info["id"]))


def register(app: web.Application) -> None:
    add_route(app, "GET", "/tasks", list_tasks)
    add_route(app, "GET", "/tasks/{id}", inspect)
