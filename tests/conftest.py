"""Shared pytest fixtures: `daemon` (a fresh shoald per test) and `swarm` (one per module, inited).

Both need root, crun and build/images/busybox.tar (`make images`); without them the tests that
use these fixtures are skipped with the reason. Run with `-n 2 --dist loadgroup` so that a
module's tests (marked with one xdist_group) share its daemon on one worker.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.daemon import BUSYBOX_TAR, SHOALD, Daemon


def _require_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root")
    if shutil.which("crun") is None and shutil.which("runc") is None:
        pytest.skip("integration tests need crun or runc")
    if not SHOALD.exists():
        pytest.skip(f"{SHOALD} missing: install the package (make venv)")
    if not BUSYBOX_TAR.is_file():
        pytest.skip(f"{BUSYBOX_TAR} missing: run `make images`")


@pytest.fixture
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    _require_host()
    with Daemon(tmp_path_factory.mktemp("shoald")) as d:
        yield d


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    _require_host()
    with Daemon(tmp_path_factory.mktemp("swarm")) as d:
        resp = d.api("POST", "/v1.50/swarm/init", json={"ListenAddr": "0.0.0.0:2377",
                                                        "AdvertiseAddr": "127.0.0.1"})
        assert resp.status_code == 200, resp.text
        yield d
