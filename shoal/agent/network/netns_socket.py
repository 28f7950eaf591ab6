"""Sockets bound inside another network namespace, made without moving the daemon.

A socket belongs to the network namespace it was created in, for its whole life, whichever
namespace the process later lives in. So the embedded DNS resolver can serve 127.0.0.11:53 inside
every container while shoald itself stays in the host's namespace: a thread enters the
container's namespace with `setns(fd, CLONE_NEWNET)` (through ctypes: Python 3.11 has no
`os.setns`), creates and binds the sockets, and goes back.

`setns` with CLONE_NEWNET moves only the calling thread. Each call therefore gets a thread of its
own that ends right after: no pooled thread can ever be handed back in a container's namespace,
even when going back fails, and concurrent calls cannot see each other's namespace (which is
what a lock around a shared thread would otherwise have to guarantee). A thread costs ~0.1 ms,
nothing next to starting a container.

The namespace's loopback must be up for anything to reach 127.0.0.11 (the executor brings `lo`
up; the tests do too). The bind itself succeeds with `lo` down on this kernel, so it is no check.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class SocketSpec:
    """One socket to make: UDP (`socket.SOCK_DGRAM`) or a listening TCP (`SOCK_STREAM`)."""

    kind: socket.SocketKind
    host: str
    port: int
    backlog: int = 64


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def _bind_all(specs: Sequence[SocketSpec]) -> list[socket.socket]:
    made: list[socket.socket] = []
    try:
        for spec in specs:
            family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
            sock = socket.socket(family, spec.kind | socket.SOCK_CLOEXEC)
            made.append(sock)
            if spec.kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((spec.host, spec.port))
            if spec.kind == socket.SOCK_STREAM:
                sock.listen(spec.backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return made


def _make_in_netns(netns_path: str, specs: Sequence[SocketSpec]) -> list[socket.socket]:
    """Enter `netns_path`, make the sockets, come back. Runs in a thread that ends afterwards."""
    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            made: list[socket.socket] = []
            try:
                made = _bind_all(specs)
            finally:
                try:
                    _setns(own)
                except OSError:
                    for sock in made:
                        sock.close()
                    raise
            return made
        finally:
            os.close(own)
    finally:
        os.close(target)


def sockets_in_netns(netns_path: str, specs: Sequence[SocketSpec]) -> list[socket.socket]:
    """Blocking form: the sockets of `specs`, in order, created inside `netns_path`."""
    box: list[list[socket.socket] | BaseException] = []

    def work() -> None:
        try:
            box.append(_make_in_netns(netns_path, specs))
        except BaseException as exc:  # handed to the caller
            box.append(exc)

    thread = threading.Thread(target=work, name="netns-socket", daemon=True)
    thread.start()
    thread.join()
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


async def open_sockets_in_netns(netns_path: str, specs: Sequence[SocketSpec]) -> list[socket.socket]:
    """Async form for the running loop; sockets made after a cancellation are closed."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[list[socket.socket]] = loop.create_future()

    def deliver(result: list[socket.socket] | BaseException) -> None:
        if future.cancelled():
            if not isinstance(result, BaseException):
                for sock in result:
                    sock.close()
        elif isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    def work() -> None:
        result: list[socket.socket] | BaseException
        try:
            result = _make_in_netns(netns_path, specs)
        except BaseException as exc:  # handed to the loop
            result = exc
        try:
            loop.call_soon_threadsafe(deliver, result)
        except RuntimeError:  # the loop is closed: nobody will take the sockets
            if not isinstance(result, BaseException):
                for sock in result:
                    sock.close()

    threading.Thread(target=work, name="netns-socket", daemon=True).start()
    return await future
