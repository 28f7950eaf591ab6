"""keep_session: hold a session with the manager up, reconnecting with backoff when it drops.

Used by Agent.run. The backoff doubles from 0.1 s to 5 s, with jitter so that many agents do not
stampede a restarted manager, and starts again from 0.1 s once a session got registered.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from shoal.agent.runner import first_of
from shoal.api.clock import Clock

log = logging.getLogger("shoal.agent")

RECONNECT_INITIAL_S = 0.1
RECONNECT_MAX_S = 5.0

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def keep_session(connect: Callable[[], Awaitable[Streams]],
                       session: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                       *, stopping: asyncio.Event, clock: Clock, registered: Callable[[], int],
                       expected: tuple[type[BaseException], ...]) -> None:
    """Run `session` over `connect()` again and again until `stopping` is set. `registered()`
    counts sessions that got through; `expected` errors end a session with a warning."""
    delay_s = RECONNECT_INITIAL_S
    while not stopping.is_set():
        before = registered()
        try:
            reader, writer = await connect()
            await session(reader, writer)
        except expected as e:
            log.warning("session with the manager ended: %s", e or type(e).__name__)
        except Exception:  # a bug must not end the node's only link to its manager
            log.exception("session with the manager failed")
        if registered() > before:
            delay_s = RECONNECT_INITIAL_S  # it had got through: the next try may as well
        if stopping.is_set():
            break
        await first_of(stopping.wait(), clock.sleep(delay_s * random.uniform(0.5, 1.0)))
        delay_s = min(delay_s * 2, RECONNECT_MAX_S)
