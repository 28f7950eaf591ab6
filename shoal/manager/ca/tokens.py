"""Join tokens bound to the root CA: making, rotating and checking them.

Called by shoal/manager/ca/__init__.py (tokens at init, `join-token --rotate`) and
shoal/manager/clusterport.py (which role a joining node's token grants).

A token is `SWMTKN-1-<digest>-<secret>` (swarmkit's format): the digest is the root CA's, so a
joining node can pin the CA; the secret is 128 random bits, one per role. Rotating a role gives it a
new secret, and the old token stops working at once.
"""

from __future__ import annotations

import hmac
import secrets

from shoal.api.errors import InvalidArgument
from shoal.api.tls import SECRET_LEN, base36, ca_digest, format_join_token, parse_join_token
from shoal.api.types import JoinTokens

INVALID_TOKEN = "invalid join token"
OTHER_CLUSTER = "join token was issued by another cluster"
NOT_VALID = "A valid join token is necessary to join this cluster"
_SECRET_BITS = 128


def new_secret() -> str:
    return base36(secrets.randbits(_SECRET_BITS), SECRET_LEN)


def new_token(root_pem: str) -> str:
    return format_join_token(ca_digest(root_pem), new_secret())


def new_tokens(root_pem: str) -> JoinTokens:
    return JoinTokens(worker=new_token(root_pem), manager=new_token(root_pem))


def rotate(tokens: JoinTokens, root_pem: str, *, worker: bool, manager: bool) -> JoinTokens:
    """`tokens` with a new secret for each role asked for."""
    return JoinTokens(
        worker=new_token(root_pem) if worker else tokens.worker,
        manager=new_token(root_pem) if manager else tokens.manager,
    )


def bound_to(tokens: JoinTokens, root_pem: str) -> bool:
    """Whether both tokens are well formed and carry this root's digest (placeholder tokens from
    bootstrap, or tokens of a replaced CA, are not)."""
    digest = ca_digest(root_pem)
    try:
        return all(parse_join_token(t).digest == digest for t in (tokens.worker, tokens.manager))
    except ValueError:
        return False


def role_for_token(token: str, tokens: JoinTokens) -> str:
    """The role ("worker" or "manager") `token` grants, or InvalidArgument saying why none."""
    try:
        given = parse_join_token(token)
    except ValueError:
        raise InvalidArgument(INVALID_TOKEN) from None
    # Both roles are always compared, with compare_digest, so timing tells nothing about secrets.
    matches: dict[str, bool] = {}
    digests: set[str] = set()
    for role, current in (("worker", tokens.worker), ("manager", tokens.manager)):
        try:
            parsed = parse_join_token(current)
        except ValueError:
            matches[role] = False  # an unset or placeholder token grants nothing
            continue
        digests.add(parsed.digest)
        same_secret = hmac.compare_digest(given.secret.encode(), parsed.secret.encode())
        matches[role] = same_secret & hmac.compare_digest(given.digest.encode(), parsed.digest.encode())
    if digests and given.digest not in digests:
        raise InvalidArgument(OTHER_CLUSTER)
    for role, matched in matches.items():
        if matched:
            return role
    raise InvalidArgument(NOT_VALID)
