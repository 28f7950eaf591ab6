"""Errors every layer raises, each mapped to one HTTP status by the API server (as moby maps gRPC codes)."""

from __future__ import annotations


class ShoalError(Exception):
    """Base class. `status` is the HTTP status the Engine API answers with."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ShoalError):
    status = 400


class NotFound(ShoalError):
    status = 404


class Conflict(ShoalError):
    """A duplicate name or a resource in use (AlreadyExists -> 409)."""

    status = 409


class SequenceConflict(ShoalError):
    """A write with a stale Version.Index. Docker answers 500 with exactly this text."""

    status = 500

    def __init__(self, message: str = "rpc error: code = Unknown desc = update out of sequence") -> None:
        super().__init__(message)


class FailedPrecondition(ShoalError):
    status = 400


class Unavailable(ShoalError):
    """Not a manager, not in a swarm (503)."""

    status = 503


class Unimplemented(ShoalError):
    status = 501


NOT_IN_SWARM = (
    'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" '
    "to connect this node to swarm and try again."
)
ALREADY_IN_SWARM = (
    'This node is already part of a swarm. Use "docker swarm leave" to leave this swarm and join another one.'
)
LEAVE_LAST_MANAGER = (
    "You are attempting to leave the swarm on a node that is participating as a manager. "
    "Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message."
)
