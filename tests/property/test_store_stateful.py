"""Stateful property test: SqliteStore against a dict model, across random writes, failures and reopens.

Each step runs on one long-lived event loop owned by the machine (the store binds to it); reopen
closes the store and opens a new one on the same file, which must restore the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from shoal.api.errors import Conflict, NotFound, SequenceConflict
from shoal.api.types import Task, Version
from shoal.store.protocol import WriteTx
from shoal.store.sqlite import SqliteStore

IDS = st.sampled_from([f"t{i}" for i in range(8)])
SERVICES = st.sampled_from(["s1", "s2", "s3"])
NODES = st.sampled_from(["", "n1", "n2"])


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "store.db"
        self.loop = asyncio.new_event_loop()
        self.store = self._open()
        self.model: dict[str, tuple[str, str, int]] = {}  # id -> (service, node, version)
        self.revision = 0
        self.watch = self.store.watch()
        self.seen: dict[str, tuple[str, str, int] | None] = {}

    def _open(self) -> SqliteStore:
        store = SqliteStore(self.path)
        self.loop.run_until_complete(store.open())
        return store

    def _update(self, fn: Any) -> Any:
        return self.loop.run_until_complete(self.store.update(fn))

    @rule(id=IDS, service=SERVICES, node=NODES)
    def create(self, id: str, service: str, node: str) -> None:
        try:
            self._update(lambda tx: tx.create(Task(id=id, service_id=service, node_id=node)))
        except Conflict:
            assert id in self.model
            return
        assert id not in self.model
        self.revision += 1
        self.model[id] = (service, node, self.revision)

    @rule(id=IDS, service=SERVICES, node=NODES, stale=st.booleans())
    def update(self, id: str, service: str, node: str, stale: bool) -> None:
        version = self.model[id][2] if id in self.model else 0
        sent = version - 1 if stale else version
        new = Task(id=id, service_id=service, node_id=node, version=Version(index=sent))
        try:
            self._update(lambda tx: tx.update(new))
        except NotFound:
            assert id not in self.model
            return
        except SequenceConflict:
            assert stale and id in self.model
            return
        assert id in self.model and not stale
        self.revision += 1
        self.model[id] = (service, node, self.revision)

    @rule(id=IDS)
    def delete(self, id: str) -> None:
        try:
            self._update(lambda tx: tx.delete(Task, id))
        except NotFound:
            assert id not in self.model
            return
        self.revision += 1
        del self.model[id]

    @rule(ids=st.lists(IDS, min_size=1, max_size=4, unique=True))
    def failing_batch(self, ids: list[str]) -> None:
        def fn(tx: WriteTx) -> None:
            for id in ids:
                if tx.get(Task, id) is None:
                    tx.create(Task(id=id, service_id="s1"))
                else:
                    tx.delete(Task, id)
            raise ValueError("abandon")
        with contextlib.suppress(ValueError):
            self._update(fn)

    @rule()
    def reopen(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.store = self._open()
        # A fresh store has no ring: resubscribe with a snapshot, as a restarted component would.
        self.seen, self.watch = self.store.view_and_watch(
            lambda v: {t.id: (t.service_id, t.node_id, t.version.index) for t in v.list(Task)})

    @rule()
    def drain_watch(self) -> None:
        """The last snapshot plus every change watched since, applied in order, is the model."""
        async def drain() -> None:
            while self.watch._pending:  # only what is queued; never blocks
                for c in await self.watch.__anext__():
                    t = c.obj
                    assert isinstance(t, Task)
                    self.seen[t.id] = None if c.action == "delete" else (
                        t.service_id, t.node_id, t.version.index)
        self.loop.run_until_complete(drain())
        assert {k: v for k, v in self.seen.items() if v is not None} == self.model

    @invariant()
    def store_matches_model(self) -> None:
        view = self.store.view()
        assert view.revision == self.revision
        got = {t.id: (t.service_id, t.node_id, t.version.index) for t in view.list(Task)}
        assert got == self.model
        for sid in ("s1", "s2", "s3"):
            assert {t.id for t in view.tasks_of_service(sid)} == {
                i for i, v in self.model.items() if v[0] == sid}
        for nid in ("", "n1", "n2"):
            assert {t.id for t in view.tasks_of_node(nid)} == {
                i for i, v in self.model.items() if v[1] == nid}

    def teardown(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()
        self.dir.cleanup()


StoreMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestStore = StoreMachine.TestCase
