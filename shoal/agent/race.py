"""`race`: run coroutines until the first one ends (the agent's session parts: receive,
heartbeat, statuses, stop)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def race(*coros: Coroutine[Any, Any, object]) -> None:
    """Run `coros` until the first ends; cancel the others; re-raise the first one's error."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        error = None if t.cancelled() else t.exception()
        if error is not None:
            raise error
