"""`/networks` list, inspect, create and delete (swarm-scoped overlay networks); registered by app.py.

A network's subnet, gateway and VXLAN ID are allocated here, inside the create transaction
(shoal/api/ipam.py), so `docker network create` answers overlaps and exhaustion at once and
`inspect` shows them right away. Only overlay networks exist; the host's local networks
(bridge/host/none) are not listed. The wire shape is moby's network.Inspect (note `Id`).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import msgspec
from aiohttp import web
from msgspec import field

from shoal.api.errors import Conflict, FailedPrecondition, InvalidArgument
from shoal.api.ipam import (
    IPv4Net,
    PoolExhausted,
    carve_subnet,
    free_vni,
    ingress_ports,
    make_network,
    parse_subnet,
    subnet_of,
    vni_of,
)
from shoal.api.states import TaskState
from shoal.api.types import Cluster, Driver, IPAMConfig, IPAMOptions, Network, NetworkSpec, Service, Task
from shoal.api.validation import validate_network_name
from shoal.apiserver.docker.context import ctx, require_manager
from shoal.apiserver.docker.endpoint import resolve_network
from shoal.apiserver.http import (
    add_route,
    empty_response,
    json_response,
    labels_match,
    parse_filters,
    read_json,
)
from shoal.hostnet.cmd import HostnetError
from shoal.hostnet.routes import routed_networks
from shoal.store.protocol import ReadTx, WriteTx

log = logging.getLogger(__name__)

_INVALID = "rpc error: code = InvalidArgument desc = "
_FILTERS = {"id", "name", "label", "driver", "scope", "type"}


class IPAMConfigRequest(msgspec.Struct, rename="pascal", kw_only=True):
    subnet: str = ""
    ip_range: str = field(name="IPRange", default="")
    gateway: str = ""
    auxiliary_addresses: dict[str, str] | None = None


class IPAMRequest(msgspec.Struct, rename="pascal", kw_only=True):
    driver: str = ""
    options: dict[str, str] | None = None
    config: list[IPAMConfigRequest] | None = None


class NetworkCreateRequest(msgspec.Struct, rename="pascal", kw_only=True):
    name: str = ""
    driver: str = ""
    scope: str = ""
    enable_ipv6: bool | None = field(name="EnableIPv6", default=None)
    ipam: IPAMRequest | None = field(name="IPAM", default=None)
    internal: bool = False
    attachable: bool = False
    ingress: bool = False
    config_only: bool = False
    config_from: dict[str, Any] | None = None
    options: dict[str, str] | None = None
    labels: dict[str, str] | None = None


def host_routes() -> list[ipaddress.IPv4Network]:
    """The manager host's routes (in a lab, its namespace's): subnets must clash with none."""
    try:
        return routed_networks()
    except (HostnetError, ValueError) as e:
        log.warning("cannot read the host's routes (%s); subnets are checked against networks only", e)
        return []


def network_json(net: Network) -> dict[str, Any]:
    """moby's network.Inspect for a swarm network."""
    configs = net.ipam_options.configs if net.ipam_options is not None else None
    driver = net.spec.driver_configuration
    return {
        "Name": net.spec.name, "Id": net.id,
        "Created": msgspec.to_builtins(net.created_at), "Scope": "swarm",
        "Driver": driver.name if driver is not None and driver.name else "overlay",
        "EnableIPv4": True, "EnableIPv6": net.spec.ipv6_enabled,
        "IPAM": {"Driver": "default", "Options": None,
                 "Config": [{"Subnet": c.subnet, "Gateway": c.gateway} for c in configs or ()]},
        "Internal": net.spec.internal, "Attachable": net.spec.attachable, "Ingress": net.spec.ingress,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": {},
        "Options": dict(net.driver_state.options or {}) if net.driver_state is not None else {},
        "Labels": net.spec.labels or {},
    }


def _matches(net: Network, filters: dict[str, list[str]]) -> bool:
    for key, values in filters.items():
        if key == "label":
            if not labels_match(net.spec.labels, values):
                return False
            continue
        have = {"id": net.id, "name": net.spec.name, "driver": "overlay", "scope": "swarm",
                "type": "custom"}[key]
        prefix = key in ("id", "name")
        if values and not any(have.startswith(v) if prefix else have == v for v in values):
            return False
    return True


async def list_networks(request: web.Request) -> web.Response:
    tx = require_manager(request)
    filters = parse_filters(request, _FILTERS)
    nets = sorted(tx.list(Network), key=lambda n: n.created_at)
    return json_response([network_json(n) for n in nets if _matches(n, filters)])


async def inspect(request: web.Request) -> web.Response:
    tx = require_manager(request)
    return json_response(network_json(resolve_network(tx, request.match_info["id"])))


def _check_request(body: NetworkCreateRequest) -> None:
    validate_network_name(body.name)
    driver = body.driver or "bridge"
    if driver != "overlay":
        raise InvalidArgument(f"network driver {driver!r} is not supported: Shoal has swarm-scoped "
                              "overlay networks only (docker network create --driver overlay)")
    if body.scope not in ("", "swarm"):
        raise InvalidArgument(f"invalid scope {body.scope!r} for an overlay network: must be swarm")
    if body.enable_ipv6:
        raise InvalidArgument("IPv6 overlay networks are not supported")
    if body.config_only or body.config_from:
        raise InvalidArgument("config-only networks (--config-only, --config-from) are not supported")
    if body.ingress:
        raise InvalidArgument("creating an ingress network is not supported: `swarm init` creates it")
    ipam = body.ipam
    if ipam is not None and ipam.driver not in ("", "default"):
        raise InvalidArgument(f"IPAM driver {ipam.driver!r} is not supported: only default")
    if ipam is not None and len(ipam.config or ()) > 1:
        raise InvalidArgument("only one subnet per network is supported")


def _requested(body: NetworkCreateRequest) -> tuple[IPv4Net | None, ipaddress.IPv4Address | None]:
    configs = body.ipam.config if body.ipam is not None else None
    config = configs[0] if configs else None
    if config is None or not config.subnet:
        if config is not None and (config.gateway or config.ip_range):
            raise InvalidArgument(_INVALID + "a gateway or IP range needs a subnet (--subnet)")
        return None, None
    subnet = parse_subnet(config.subnet)
    if config.ip_range and parse_subnet(config.ip_range) != subnet:
        raise InvalidArgument("--ip-range narrower than the subnet is not supported")
    if not config.gateway:
        return subnet, None
    try:
        gateway = ipaddress.IPv4Address(config.gateway)
    except ValueError:
        raise InvalidArgument(_INVALID + f"invalid gateway {config.gateway!r}") from None
    if gateway not in subnet or gateway in (subnet.network_address, subnet.broadcast_address):
        raise InvalidArgument(_INVALID + f"gateway {gateway} is not a host address of subnet {subnet}")
    return subnet, gateway


def _subnet(tx: ReadTx, wanted: ipaddress.IPv4Network | None,
            routes: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    others = [s for s in (subnet_of(n) for n in tx.list(Network)) if s is not None]
    if wanted is None:
        cluster = next(iter(tx.list(Cluster)), None)
        pools = (cluster.default_addr_pool if cluster is not None else None) or ["10.0.0.0/8"]
        size = (cluster.subnet_size if cluster is not None else 0) or 24
        try:
            return carve_subnet(pools, size, [*others, *routes])
        except PoolExhausted as e:
            raise InvalidArgument(_INVALID + str(e)) from None
    clash = next((s for s in others if s.overlaps(wanted)), None)
    if clash is not None:
        raise InvalidArgument(_INVALID + f"invalid pool request: Pool overlaps with other one on this "
                              f"address space ({wanted} overlaps the network subnet {clash})")
    route = next((r for r in routes if r.overlaps(wanted)), None)
    if route is not None:
        raise InvalidArgument(_INVALID + f"subnet {wanted} overlaps the route to {route} "
                              "of the manager's host")
    return wanted


async def create(request: web.Request) -> web.Response:
    c = ctx(request)
    require_manager(request)
    body = await read_json(request, NetworkCreateRequest)
    _check_request(body)
    wanted, gateway = _requested(body)
    routes = host_routes()
    spec = NetworkSpec(
        name=body.name, labels=body.labels or None, scope="swarm",
        driver_configuration=Driver(name="overlay", options=body.options or None),
        internal=body.internal, attachable=body.attachable,
        ipam_options=IPAMOptions(driver=Driver(name="default"), configs=[
            IPAMConfig(subnet=str(wanted), gateway=str(gateway or ""))]) if wanted else None,
    )

    def apply(tx: WriteTx) -> Network:
        if any(n.spec.name == body.name for n in tx.list(Network)):
            raise Conflict("rpc error: code = AlreadyExists desc = network with name "
                           f"{body.name} already exists")
        subnet = _subnet(tx, wanted, routes)
        vni = free_vni(vni_of(n) for n in tx.list(Network))
        return tx.create(make_network(spec, subnet=subnet, gateway=gateway, vni=vni, options=body.options))

    net = await c.store.update(apply)
    return json_response({"Id": net.id, "Warning": ""}, status=201)


def _user_of(tx: ReadTx, net: Network) -> str | None:
    """What keeps `net` in use: a service naming it (or publishing through ingress), or a live task."""
    for svc in tx.list(Service):
        targets = {n.target for n in svc.spec.task_template.networks or ()}
        uses_ingress = net.spec.ingress and svc.endpoint is not None and ingress_ports(svc.endpoint.ports)
        if net.id in targets or uses_ingress:
            return f"service {svc.spec.name}"
    for task in tx.list(Task):
        running = TaskState.RUNNING.rank
        live = task.desired_state.rank <= running and task.status.state.rank <= running
        if live and any(a.network.id == net.id for a in task.networks_attachments or ()):
            return f"task {task.id}"
    return None


async def delete(request: web.Request) -> web.Response:
    c = ctx(request)
    require_manager(request)
    ref = request.match_info["id"]

    def apply(tx: WriteTx) -> None:
        net = resolve_network(tx, ref)
        user = _user_of(tx, net)
        if user is not None:
            raise FailedPrecondition("rpc error: code = FailedPrecondition desc = network "
                                     f"{net.spec.name} is in use by {user}")
        tx.delete(Network, net.id)

    await c.store.update(apply)
    return empty_response(204)


def register(app: web.Application) -> None:
    add_route(app, "GET", "/networks", list_networks)
    add_route(app, "POST", "/networks/create", create)
    add_route(app, "GET", "/networks/{id}", inspect)
    add_route(app, "DELETE", "/networks/{id}", delete)
