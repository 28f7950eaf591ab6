"""Effective defaults, as swarmkit's api/defaults/service.go, and the cluster's initial spec."""

from __future__ import annotations

from shoal.api.types import (
    CAConfig,
    DispatcherConfig,
    OrchestrationConfig,
    RaftConfig,
    RestartPolicy,
    ServiceSpec,
    SwarmSpec,
    UpdateConfig,
)

SECOND_NS = 1_000_000_000

RESTART_CONDITION = "any"
RESTART_DELAY_NS = 5 * SECOND_NS
STOP_GRACE_PERIOD_NS = 10 * SECOND_NS
TASK_HISTORY_LIMIT = 5
HEARTBEAT_PERIOD_NS = 2 * SECOND_NS  # Shoal's default; Swarm's is 5 s
NODE_CERT_EXPIRY_NS = 90 * 24 * 3600 * SECOND_NS
UPDATE_MONITOR_NS = 5 * SECOND_NS

DEFAULT_UPDATE_CONFIG = UpdateConfig(
    parallelism=1, delay=0, failure_action="pause", monitor=UPDATE_MONITOR_NS, max_failure_ratio=0.0,
    order="stop-first",
)
DEFAULT_RESTART_POLICY = RestartPolicy(condition=RESTART_CONDITION, delay=RESTART_DELAY_NS, max_attempts=0)


def initial_swarm_spec() -> SwarmSpec:
    return SwarmSpec(
        name="default",
        orchestration=OrchestrationConfig(task_history_retention_limit=TASK_HISTORY_LIMIT),
        raft=RaftConfig(snapshot_interval=10000, log_entries_for_slow_followers=500, election_tick=10,
                        heartbeat_tick=1),
        dispatcher=DispatcherConfig(heartbeat_period=HEARTBEAT_PERIOD_NS),
        ca_config=CAConfig(node_cert_expiry=NODE_CERT_EXPIRY_NS),
    )


def effective_restart_policy(policy: RestartPolicy | None) -> RestartPolicy:
    """The policy with every unset field filled as Swarm fills it."""
    p = policy or RestartPolicy()
    return RestartPolicy(
        condition=p.condition or RESTART_CONDITION,
        delay=RESTART_DELAY_NS if p.delay is None else p.delay,
        max_attempts=p.max_attempts or 0,
        window=p.window or 0,
    )


def with_inserted_defaults(spec: ServiceSpec) -> ServiceSpec:
    """The spec as `GET /services/X?insertDefaults=true` shows it."""
    import msgspec

    from shoal.api.types import ContainerSpec, Placement, Resources, TaskSpec

    tt = spec.task_template
    cs = tt.container_spec or ContainerSpec()
    if cs.stop_grace_period is None:
        cs = msgspec.structs.replace(cs, stop_grace_period=STOP_GRACE_PERIOD_NS)
    tt = msgspec.structs.replace(
        tt,
        container_spec=cs,
        restart_policy=effective_restart_policy(tt.restart_policy),
        resources=tt.resources or Resources(),
        placement=tt.placement or Placement(),
    )
    assert isinstance(tt, TaskSpec)
    return msgspec.structs.replace(
        spec,
        task_template=tt,
        update_config=spec.update_config or DEFAULT_UPDATE_CONFIG,
        rollback_config=spec.rollback_config or DEFAULT_UPDATE_CONFIG,
    )
