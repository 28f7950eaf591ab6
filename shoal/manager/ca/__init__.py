"""The cluster CA's store half: make or load the root CA at init, publish it and the join tokens.

Called by the daemon at `swarm init` and at every manager start (after `bootstrap_cluster`), and by
the API server for `swarm update --rotate-worker-token/--rotate-manager-token`.

The CA lives in `<data_root>/certificates` (ca.crt, ca.key) so a restarted manager keeps its
cluster; the Cluster object carries its public half (TLSInfo) and the tokens bound to it.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from shoal.api.errors import FailedPrecondition
from shoal.api.ids import new_id
from shoal.api.types import Cluster
from shoal.manager.ca import tokens as _tokens
from shoal.manager.ca.authority import RootCA, tls_info
from shoal.store.protocol import Store, WriteTx

CERTIFICATES_DIR = "certificates"

__all__ = ["CERTIFICATES_DIR", "RootCA", "init_cluster_ca", "rotate_join_tokens", "tls_info"]


def _the_cluster(tx: WriteTx) -> Cluster:
    for cluster in tx.list(Cluster):
        return cluster
    raise FailedPrecondition("no cluster object: bootstrap_cluster must run before the CA is set up")


async def init_cluster_ca(store: Store, *, data_root: Path, cluster_id_hint: str | None = None) -> RootCA:
    """Load the root CA from `data_root/certificates`, or create and save one, then write its
    TLSInfo into the Cluster and, unless they are already bound to it, new join tokens (the
    placeholders bootstrap made, or tokens of a CA that is gone). One transaction; idempotent."""
    directory = data_root / CERTIFICATES_DIR
    root = RootCA.load(directory)
    if root is None:
        clusters = list(store.view().list(Cluster))
        cluster_id = clusters[0].id if clusters else (cluster_id_hint or new_id())
        root = RootCA.create(cluster_id)
        root.save(directory)
    info = tls_info(root)

    def publish(tx: WriteTx) -> None:
        cluster = _the_cluster(tx)
        changes: dict[str, object] = {}
        if cluster.tls_info != info:
            changes["tls_info"] = info
        if not _tokens.bound_to(cluster.join_tokens, root.cert_pem):
            changes["join_tokens"] = _tokens.new_tokens(root.cert_pem)
        if changes:  # a restart with nothing new writes nothing (no revision bump)
            tx.update(msgspec.structs.replace(cluster, **changes))

    await store.update(publish)
    return root


async def rotate_join_tokens(store: Store, root: RootCA, *, worker: bool, manager: bool) -> None:
    """New secrets for the roles asked for; the old tokens are refused from the commit on."""
    if not (worker or manager):
        return

    def rotate(tx: WriteTx) -> None:
        cluster = _the_cluster(tx)
        tokens = _tokens.rotate(cluster.join_tokens, root.cert_pem, worker=worker, manager=manager)
        tx.update(msgspec.structs.replace(cluster, join_tokens=tokens))

    await store.update(rotate)
