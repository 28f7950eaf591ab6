"""Docker's swarm types as typed, frozen msgspec structs with Docker's JSON names.

Python attributes are snake_case; `rename="pascal"` gives Docker's PascalCase on the wire, and
`field(name=...)` covers Docker's acronyms (ID, NodeID, NanoCPUs). Unknown JSON fields are ignored,
as Go ignores them. Durations are integers of nanoseconds; times are timezone-aware datetimes
(RFC 3339 on the wire). Objects are frozen: make a changed copy with `msgspec.structs.replace`.

As in Go's `omitempty`, every struct default is the zero value, so whatever is set is encoded;
the effective defaults (restart delay 5 s, grace period 10 s, ...) live in `shoal.api.defaults`.

Field owners (DESIGN.md §3): `spec` is written by users only, `desired_state` by the manager,
`status` by the agent.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from msgspec import field

from shoal.api.meta import EPOCH as EPOCH
from shoal.api.meta import Base as Base
from shoal.api.meta import Meta as Meta
from shoal.api.meta import Version as Version
from shoal.api.states import TaskState


# ------------------------------------------------------------------------------------------- service
class Limits(Base, frozen=True):
    nano_cpus: int = field(name="NanoCPUs", default=0)
    memory_bytes: int = 0
    pids: int = 0


class Reservations(Base, frozen=True):
    nano_cpus: int = field(name="NanoCPUs", default=0)
    memory_bytes: int = 0
    generic_resources: list[Any] | None = None


class Resources(Base, frozen=True):
    limits: Limits | None = None
    reservations: Reservations | None = None


class RestartPolicy(Base, frozen=True):
    condition: str = ""  # none | on-failure | any ("" means any)
    delay: int | None = None  # ns; default 5 s
    max_attempts: int | None = None  # 0 or None: unlimited
    window: int | None = None  # ns; 0 or None: unbounded


class SpreadOver(Base, frozen=True):
    spread_descriptor: str = ""


class PlacementPreference(Base, frozen=True):
    spread: SpreadOver | None = None


class Platform(Base, frozen=True):
    architecture: str = ""
    os: str = field(name="OS", default="")


class Placement(Base, frozen=True):
    constraints: list[str] | None = None
    preferences: list[PlacementPreference] | None = None
    max_replicas: int = 0
    platforms: list[Platform] | None = None


class ContainerSpec(Base, frozen=True):
    image: str = ""
    labels: dict[str, str] | None = None
    command: list[str] | None = None  # --entrypoint
    args: list[str] | None = None
    hostname: str = ""
    env: list[str] | None = None  # "K=V"
    dir: str = ""
    user: str = ""
    groups: list[str] | None = None
    init: bool | None = None
    tty: bool = field(name="TTY", default=False)
    open_stdin: bool = False
    read_only: bool = False
    stop_signal: str = ""
    stop_grace_period: int | None = None  # ns; default 10 s
    mounts: list[Any] | None = None  # later issue (volumes); kept so inspect round-trips
    healthcheck: Any | None = None  # later issue (health checks)
    secrets: list[Any] | None = None  # later issue
    configs: list[Any] | None = None  # later issue
    dns_config: Any | None = field(name="DNSConfig", default=None)
    hosts: list[str] | None = None
    sysctls: dict[str, str] | None = None
    capability_add: list[str] | None = None
    capability_drop: list[str] | None = None
    privileges: Any | None = None
    ulimits: list[Any] | None = None


class NetworkAttachmentConfig(Base, frozen=True):
    target: str = ""
    aliases: list[str] | None = None
    driver_opts: dict[str, str] | None = None


class Driver(Base, frozen=True):
    name: str = ""
    options: dict[str, str] | None = None


class TaskSpec(Base, frozen=True):
    container_spec: ContainerSpec | None = None
    resources: Resources | None = None
    restart_policy: RestartPolicy | None = None
    placement: Placement | None = None
    networks: list[NetworkAttachmentConfig] | None = None
    log_driver: Driver | None = None
    force_update: int = 0
    runtime: str = ""


class ReplicatedService(Base, frozen=True):
    replicas: int | None = None


class GlobalService(Base, frozen=True):
    pass


class ServiceMode(Base, frozen=True):
    replicated: ReplicatedService | None = None
    global_: GlobalService | None = field(name="Global", default=None)
    replicated_job: Any | None = None
    global_job: Any | None = None


class UpdateConfig(Base, frozen=True):
    parallelism: int = 0
    delay: int = 0
    failure_action: str = ""
    monitor: int = 0
    max_failure_ratio: float = 0.0
    order: str = ""


class PortConfig(Base, frozen=True):
    name: str = ""
    protocol: str = ""
    target_port: int = 0
    published_port: int = 0
    publish_mode: str = ""


class EndpointSpec(Base, frozen=True):
    mode: str = ""
    ports: list[PortConfig] | None = None


class ServiceSpec(Base, frozen=True):
    name: str = ""
    labels: dict[str, str] | None = None
    task_template: TaskSpec = TaskSpec()
    mode: ServiceMode = ServiceMode()
    update_config: UpdateConfig | None = None
    rollback_config: UpdateConfig | None = None
    endpoint_spec: EndpointSpec | None = None


class VirtualIP(Base, frozen=True):
    network_id: str = field(name="NetworkID", default="")
    addr: str = ""


class Endpoint(Base, frozen=True):
    spec: EndpointSpec | None = None
    ports: list[PortConfig] | None = None
    virtual_ips: list[VirtualIP] | None = field(name="VirtualIPs", default=None)


class UpdateStatus(Base, frozen=True):
    state: str = ""
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    message: str = ""


class ServiceStatus(Base, frozen=True):
    running_tasks: int = 0
    desired_tasks: int = 0
    completed_tasks: int = 0


class Service(Meta, frozen=True):
    spec: ServiceSpec = ServiceSpec()
    previous_spec: ServiceSpec | None = None
    endpoint: Endpoint | None = None
    update_status: UpdateStatus | None = None
    service_status: ServiceStatus | None = None  # computed for GET /services?status=true, never stored


# ---------------------------------------------------------------------------------------------- task
class ContainerStatus(Base, frozen=True):
    container_id: str = field(name="ContainerID", default="")
    pid: int = field(name="PID", default=0)
    exit_code: int = 0


class TaskStatus(Base, frozen=True, omit_defaults=False):
    """Always encoded whole: Docker clients read Status.State even when it is "new"."""

    timestamp: dt.datetime = EPOCH
    state: TaskState = TaskState.NEW
    message: str = ""
    err: str = ""
    container_status: ContainerStatus | None = None
    port_status: Any | None = None


class Task(Meta, frozen=True):
    name: str = ""  # "<service>.<slot>.<id>" (swarmkit's naming); the API derives display names
    labels: dict[str, str] | None = None
    spec: TaskSpec = TaskSpec()
    service_id: str = field(name="ServiceID", default="")
    slot: int = 0
    node_id: str = field(name="NodeID", default="")
    status: TaskStatus = TaskStatus()
    desired_state: TaskState = TaskState.NEW
    networks_attachments: list[NetworkAttachment] | None = None
    # Which spec of the service this task was made from (the service's Version.Index when the spec
    # last changed). Shoal-specific: lets the orchestrator see a dirty task without comparing specs.
    service_version: int = 0
    # Shoal-specific: how many restarts of this same spec in this slot preceded this task (the restart
    # supervisor's MaxAttempts count; swarmkit keeps it in memory and loses it on leader change).
    restart_count: int = 0


# ------------------------------------------------------------------------------------------- network
class IPAMConfig(Base, frozen=True):
    subnet: str = ""
    range: str = ""
    gateway: str = ""


class IPAMOptions(Base, frozen=True):
    driver: Driver = Driver()
    configs: list[IPAMConfig] | None = None


class NetworkSpec(Base, frozen=True):
    """What `POST /networks/create` asked for (swarm's NetworkSpec); `ipam_options` holds what was
    given, the allocated subnet and gateway live in `Network.ipam_options`."""

    name: str = ""
    labels: dict[str, str] | None = None
    driver_configuration: Driver | None = None
    ipv6_enabled: bool = field(name="IPv6Enabled", default=False)
    internal: bool = False
    attachable: bool = False
    ingress: bool = False
    ipam_options: IPAMOptions | None = field(name="IPAMOptions", default=None)
    scope: str = ""


class Network(Meta, frozen=True):
    """An overlay network (swarm's Network). `driver_state.options` carries the VXLAN ID under
    "com.docker.network.driver.overlay.vxlanid_list"; `ipam_options.configs[0]` the subnet and
    gateway allocated at create (shoal/api/ipam.py). Written by the API server and at `swarm init`."""

    spec: NetworkSpec = NetworkSpec()
    driver_state: Driver | None = None
    ipam_options: IPAMOptions | None = field(name="IPAMOptions", default=None)


class NetworkAttachment(Base, frozen=True):
    """One network of a task: the network as it was when the address was allocated, the task's
    addresses on it ("10.0.1.5/24") and its DNS aliases. Written by the manager's allocator."""

    network: Network = Network()
    addresses: list[str] | None = None
    aliases: list[str] | None = None


# ---------------------------------------------------------------------------------------------- node
class NodeSpec(Base, frozen=True):
    name: str = ""
    labels: dict[str, str] | None = None
    role: str = ""  # worker | manager
    availability: str = ""  # active | pause | drain


class NodeResources(Base, frozen=True):
    nano_cpus: int = field(name="NanoCPUs", default=0)
    memory_bytes: int = 0


class EngineDescription(Base, frozen=True):
    engine_version: str = ""
    labels: dict[str, str] | None = None
    plugins: list[Any] | None = None


class NodeDescription(Base, frozen=True):
    hostname: str = ""
    platform: Platform = Platform()
    resources: NodeResources = NodeResources()
    engine: EngineDescription = EngineDescription()
    tls_info: Any | None = field(name="TLSInfo", default=None)


class NodeStatus(Base, frozen=True):
    state: str = ""  # unknown | down | ready | disconnected
    message: str = ""
    addr: str = ""


class ManagerStatus(Base, frozen=True):
    leader: bool = False
    reachability: str = ""
    addr: str = ""


class Node(Meta, frozen=True):
    spec: NodeSpec = NodeSpec()
    description: NodeDescription = NodeDescription()
    status: NodeStatus = NodeStatus()
    manager_status: ManagerStatus | None = None
    # The node's own addresses on overlay networks (swarmkit's Node.Attachments): its address on
    # the ingress network, for the routing mesh. Written by the manager's allocator.
    attachments: list[NetworkAttachment] | None = None


# ------------------------------------------------------------------------------------------- cluster
class OrchestrationConfig(Base, frozen=True):
    task_history_retention_limit: int | None = None


class RaftConfig(Base, frozen=True):
    snapshot_interval: int = 0
    keep_old_snapshots: int = 0
    log_entries_for_slow_followers: int = 0
    election_tick: int = 0
    heartbeat_tick: int = 0


class DispatcherConfig(Base, frozen=True):
    heartbeat_period: int = 0  # ns


class CAConfig(Base, frozen=True):
    node_cert_expiry: int = 0  # ns


class EncryptionConfig(Base, frozen=True):
    auto_lock_managers: bool = False


class SwarmSpec(Base, frozen=True):
    name: str = ""
    labels: dict[str, str] | None = None
    orchestration: OrchestrationConfig = OrchestrationConfig()
    raft: RaftConfig = RaftConfig()
    dispatcher: DispatcherConfig = DispatcherConfig()
    ca_config: CAConfig = field(name="CAConfig", default=CAConfig())
    task_defaults: dict[str, Any] | None = None
    encryption_config: EncryptionConfig = EncryptionConfig()


class JoinTokens(Base, frozen=True):
    worker: str = ""
    manager: str = ""


class Cluster(Meta, frozen=True):
    """The swarm itself (GET /swarm). There is one, with ID = the cluster ID."""

    spec: SwarmSpec = SwarmSpec()
    tls_info: Any | None = field(name="TLSInfo", default=None)
    root_rotation_in_progress: bool = False
    default_addr_pool: list[str] | None = None
    subnet_size: int = 0
    data_path_port: int = 0
    join_tokens: JoinTokens = JoinTokens()


# Every kind of object the store holds. The store keys its tables by these classes.
STORED_KINDS: tuple[type[Meta], ...] = (Cluster, Node, Network, Service, Task)
