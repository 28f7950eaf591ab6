"""Benchmark (issue 3a): the scheduler, 1,000 services x 100 replicas onto 1,000 (and 10,000) nodes.

Every service has the constraint `node.labels.tier==a` (half of the nodes) and spreads over
`node.labels.zone` (10 zones); nodes are ready and active with capacity, tasks reserve a little
CPU and memory so the resource filter works too. Two timings per size:

- decisions only: the pure `schedule(tasks, build_node_infos(nodes, []))`, nothing written;
- with the commit: the tasks are pre-loaded PENDING into a SqliteStore (a file under a temp dir),
  a `Scheduler(store, clock)` is started on it (snapshot + NodeInfos, not timed) and one `tick()`
  is timed: the same `schedule()` plus the store transaction that moves every task to ASSIGNED
  (SQLite write with synchronous=FULL, then memory and watchers).

Reference: swarmkit's Go scheduler placed 100k tasks on 1k nodes in 6.1 s (moby/swarmkit#1550,
in-memory store; swarm-internals.md §2).
Run: .venv/bin/python -m bench.bench_scheduler [--nodes 1000,10000] [--services 1000] [--replicas 100]
     [--repeat 1] [--profile FILE.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import table
from shoal.api.clock import SystemClock
from shoal.api.ids import new_id
from shoal.api.states import TaskState
from shoal.api.types import (
    ContainerSpec,
    Node,
    NodeDescription,
    NodeResources,
    NodeSpec,
    NodeStatus,
    Placement,
    PlacementPreference,
    Platform,
    Reservations,
    Resources,
    SpreadOver,
    Task,
    TaskSpec,
    TaskStatus,
)
from shoal.manager.scheduler.nodeinfo import build_node_infos
from shoal.manager.scheduler.pipeline import schedule
from shoal.manager.scheduler.scheduler import Scheduler
from shoal.store.protocol import WriteTx
from shoal.store.sqlite import SqliteStore

SWARMKIT_S = 6.1  # 100k tasks on 1k nodes (moby/swarmkit#1550)
TARGET_S = 3.0
ZONES = 10
CONSTRAINT = "node.labels.tier==a"


def make_nodes(count: int) -> list[Node]:
    nodes = []
    for i in range(count):
        labels = {"zone": f"z{i % ZONES}", "tier": "a" if (i // ZONES) % 2 == 0 else "b"}
        nodes.append(Node(
            id=new_id(),
            spec=NodeSpec(role="worker", availability="active", labels=labels),
            description=NodeDescription(
                hostname=f"node{i:05d}", platform=Platform(architecture="x86_64", os="linux"),
                resources=NodeResources(nano_cpus=64 * 10**9, memory_bytes=256 * 2**30)),
            status=NodeStatus(state="ready", addr=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"),
        ))
    return nodes


def make_tasks(services: int, replicas: int) -> list[Task]:
    tasks = []
    status = TaskStatus(state=TaskState.PENDING, message="pending task scheduling")
    for s in range(services):
        service_id = new_id()
        spec = TaskSpec(
            container_spec=ContainerSpec(image="busybox:latest", args=["sleep", "100000"]),
            resources=Resources(reservations=Reservations(nano_cpus=10**7, memory_bytes=16 * 2**20)),
            placement=Placement(
                constraints=[CONSTRAINT],
                preferences=[PlacementPreference(spread=SpreadOver(spread_descriptor="node.labels.zone"))]),
        )
        for slot in range(1, replicas + 1):
            tid = new_id()
            tasks.append(Task(id=tid, name=f"svc{s}.{slot}.{tid}", spec=spec, service_id=service_id,
                              slot=slot, status=status, desired_state=TaskState.RUNNING))
    return tasks


def check(nodes: list[Node], tasks: list[Task], assigned: dict[str, str]) -> str:
    """Sanity: every task placed on a tier=a node, zones balanced. Returns a short summary."""
    by_id = {n.id: n for n in nodes}
    assert len(assigned) == len(tasks), f"only {len(assigned)} of {len(tasks)} placed"
    assert all((by_id[nid].spec.labels or {}).get("tier") == "a" for nid in assigned.values())
    per_zone: dict[str, int] = {}
    for nid in assigned.values():
        zone = (by_id[nid].spec.labels or {})["zone"]
        per_zone[zone] = per_zone.get(zone, 0) + 1
    per_node: dict[str, int] = {}
    for nid in assigned.values():
        per_node[nid] = per_node.get(nid, 0) + 1
    return (f"zones {min(per_zone.values())}..{max(per_zone.values())} tasks, "
            f"nodes used {len(per_node)}, {min(per_node.values())}..{max(per_node.values())} tasks/node")


def decisions_only(nodes: list[Node], tasks: list[Task], profile: str | None) -> tuple[float, dict[str, str]]:
    infos = build_node_infos(nodes, [])
    gc.collect()
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    decisions = schedule(tasks, infos)
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - start
    if profiler and profile:
        profiler.dump_stats(profile)
    assert not decisions.unplaceable, next(iter(decisions.unplaceable.values()))
    return elapsed, decisions.assigned


async def with_commit(nodes: list[Node], tasks: list[Task],
                      work: Path) -> tuple[float, float, dict[str, str]]:
    """(seconds to pre-load the store, seconds of one Scheduler.tick(), decisions)."""
    store = SqliteStore(work / "store.db")
    await store.open()
    try:
        start = time.perf_counter()

        def load(tx: WriteTx) -> None:
            for obj in (*nodes, *tasks):
                tx.create(obj)

        await store.update(load)
        preload = time.perf_counter() - start
        # A debounce of an hour: the background loop never ticks; only the timed tick() below does.
        scheduler = Scheduler(store, SystemClock(), debounce_s=3600)
        await scheduler.start()
        try:
            gc.collect()
            start = time.perf_counter()
            decisions = await scheduler.tick()
            elapsed = time.perf_counter() - start
        finally:
            await scheduler.stop()
        view = store.view()
        assigned = sum(1 for t in view.list(Task) if t.status.state == TaskState.ASSIGNED)
        assert assigned == len(tasks), f"{assigned} of {len(tasks)} ASSIGNED in the store"
        return preload, elapsed, decisions.assigned
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", default="1000,10000")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-commit", action="store_true", help="decisions only")
    parser.add_argument("--profile", default=None, help="write a cProfile of the first decisions-only run")
    args = parser.parse_args()
    rows: list[list[object]] = []
    for n in (int(x) for x in args.nodes.split(",")):
        nodes = make_nodes(n)
        decide, commit, preload = [], [], []
        summary = ""
        for r in range(args.repeat):
            tasks = make_tasks(args.services, args.replicas)
            profile = args.profile if (args.profile and r == 0) else None
            if profile and n != int(args.nodes.split(",")[0]):
                profile = profile.replace(".prof", f"-{n}.prof")
            seconds, assigned = decisions_only(nodes, tasks, profile)
            decide.append(seconds)
            summary = check(nodes, tasks, assigned)
            print(f"nodes={n} run {r}: decisions {seconds:.2f} s ({summary})", flush=True)
            if not args.no_commit:
                with tempfile.TemporaryDirectory(prefix="shoal-bench-sched-") as tmp:
                    pre, seconds, assigned = asyncio.run(with_commit(nodes, tasks, Path(tmp)))
                check(nodes, tasks, assigned)
                commit.append(seconds)
                preload.append(pre)
                print(f"nodes={n} run {r}: tick with commit {seconds:.2f} s (store pre-load {pre:.2f} s)",
                      flush=True)
            del tasks
            gc.collect()
        tasks_n = args.services * args.replicas
        d = statistics.median(decide)
        c = statistics.median(commit) if commit else None
        rows.append([f"{n:,}", f"{tasks_n:,}", f"{d:.2f}", f"{c:.2f}" if c else "-",
                     f"{tasks_n / d:,.0f}", f"{tasks_n / c:,.0f}" if c else "-",
                     f"{SWARMKIT_S / d:.1f}x" if n == 1000 and tasks_n == 100_000 else "-"])
    table(f"(3a) scheduler: {args.services:,} services x {args.replicas} replicas, constraint on half the "
          f"nodes, spread over {ZONES} zones (s, median of {args.repeat})",
          ["nodes", "tasks", "decisions only", "with commit", "tasks/s (decisions)", "tasks/s (with commit)",
           "swarmkit 6.1 s / decisions"], rows)
    print(f"Target: decisions <= {TARGET_S:.0f} s for 100k tasks on 1k nodes; swarmkit (Go, in-memory store) "
          f"{SWARMKIT_S} s for 100k tasks on 1k nodes.")


if __name__ == "__main__":
    main()
