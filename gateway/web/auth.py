"""Who is calling: service keys with roles, and end users with HS256 tokens.

Verifying a token costs about 26 µs, three times the whole per-order budget, so a
verified token is remembered until its ``exp``: a buyer's repeated tries cost a lookup.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Mapping

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from gateway.config import MIN_JWT_SECRET, ApiKey
from gateway.errors import Forbidden, Unauthorized
from gateway.models import LATEST, UserId, valid
from gateway.ratelimits import key_id

log = logging.getLogger(__name__)
CACHE_LIMIT = 200_000
MAX_EXP = LATEST.timestamp()


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    role: str  # admin, ops, payments, storefront or user
    channel: str | None = None
    user_id: str | None = None
    key_id: str = ""  # a service key's name in its rate-limit buckets (gateway/ratelimits.py); "" for a user

    def require(self, *roles: str) -> None:
        """403 unless the caller has one of ``roles``; admin may do what any service may."""
        if self.role in roles or self.role == "admin":
            return
        raise Forbidden(f"role {self.role!r} may not do this")


class Authenticator:
    def __init__(self, api_keys: Mapping[str, ApiKey], jwt_secret: str) -> None:
        self.services = {key: Principal(k.role, k.channel, key_id=key_id(key)) for key, k in api_keys.items()}
        self.secret = jwt_secret
        self._users: dict[str, tuple[Principal, float]] = {}
        if len(jwt_secret.encode()) < MIN_JWT_SECRET:
            log.warning("OMS_JWT_SECRET is shorter than %d bytes; fine for development only",
                        MIN_JWT_SECRET)

    def authenticate(self, header: str | None) -> Principal:
        if not header:
            raise Unauthorized("Missing Authorization: Bearer <key or token>")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Authorization must be 'Bearer <key or token>'")
        service = self.services.get(token)
        if service is not None:
            return service
        hit = self._users.get(token)
        if hit is not None and hit[1] > time.time():
            return hit[0]
        return self._verify(token)

    def _verify(self, token: str) -> Principal:
        try:
            with warnings.catch_warnings():  # a short secret was reported once, at start
                warnings.simplefilter("ignore", InsecureKeyLengthWarning)
                claims = jwt.decode(
                    token, self.secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
                )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token expired", code="token_expired") from None
        except (jwt.InvalidTokenError, ValueError, TypeError, OverflowError, RecursionError):
            # besides PyJWT's own: a claims object nested past the recursion limit, numbers
            # too large for a float
            raise Unauthorized("Invalid key or token", code="invalid_token") from None
        sub, exp = claims["sub"], claims["exp"]
        if not isinstance(sub, str) or not valid(sub, UserId):
            raise Unauthorized("Token 'sub' must be a user id", code="invalid_token")
        if isinstance(exp, bool) or not isinstance(exp, int | float) or not exp < MAX_EXP:
            raise Unauthorized("Token 'exp' must be a time before year 2200", code="invalid_token")
        principal = Principal("user", user_id=sub)
        if len(self._users) >= CACHE_LIMIT:
            self._users.clear()
        self._users[token] = (principal, float(exp))
        return principal


def may_read(who: Principal, user_id: str, channel: str) -> bool:
    if who.role == "user":
        return user_id == who.user_id
    if who.role == "storefront":
        return channel == who.channel
    return who.role in ("admin", "ops", "payments")
