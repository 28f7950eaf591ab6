"""The lifecycle every manager component follows (DESIGN.md §5.7).

A component is built with the store and a clock, owns its asyncio tasks, and `stop()` waits for
them. manager/manager.py starts them in order and stops them in reverse.
"""

from __future__ import annotations

from typing import Protocol


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...
