"""What every handler shares: JSON answers, the caller, checked path ids, and the query
parameters of the lists (page size, time range, cursor)."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import re
from collections.abc import Collection
from typing import Annotated, Any

import msgspec
import orjson
from aiohttp import web
from msgspec import Meta

from gateway.errors import Invalid
from gateway.models import EARLIEST, LATEST, OrderId, sane_time, valid
from gateway.web import appkeys as K
from gateway.web.auth import Principal

DIGITS = re.compile(r"[0-9]{1,19}")  # a non-negative integer as a query gives it: no sign, no _, ASCII only
LIST_LIMIT = 200
RowId = Annotated[str, Meta(pattern=r"^[1-9][0-9]{0,17}\Z")]  # a bigserial id in a cursor: always < 2**63


def json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def principal(request: web.Request) -> Principal:
    return request.app[K.AUTH].authenticate(request.headers.get("Authorization"))


def path_id(request: web.Request, name: str, type_: Any) -> str:
    """A path segment that meets its body field's constraints (models.py), else 422."""
    value = request.match_info[name]
    if not valid(value, type_):
        raise Invalid(f"{name} is malformed", code=f"invalid_{name}")
    return value


@functools.cache
def param_names(query_type: type) -> frozenset[str]:
    return frozenset(f.encode_name for f in msgspec.structs.fields(query_type))


def only_params(q: Any, query_type: type) -> None:
    """``known_params`` with the fields of the route's query type: a misspelt filter must not
    widen a list or an export to everything."""
    known_params(q, param_names(query_type))


def known_params(query: Any, allowed: Collection[str]) -> None:
    """422 ``unknown_parameter`` for a query parameter the route does not take: a typo is not ignored."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise Invalid(f"Unknown query parameter(s): {', '.join(unknown)}", code="unknown_parameter")


def query_limit(q: Any, default: int = 50, most: int = LIST_LIMIT) -> int:
    raw = q.get("limit", str(default))
    limit = int(raw) if DIGITS.fullmatch(raw) else 0
    if not 1 <= limit <= most:
        raise Invalid(f"limit must be 1..{most}", code="invalid_limit")
    return limit


def query_value(q: Any, name: str, type_: Any) -> str | None:
    """An optional filter that must meet ``type_``; 422 ``invalid_<name>`` otherwise."""
    value = q.get(name)
    if value is not None and not valid(value, type_):
        raise Invalid(f"{name} is malformed", code=f"invalid_{name}")
    return value


def time_param(q: Any, name: str) -> dt.datetime | None:
    raw = q.get(name)
    if raw is None:
        return None
    try:
        t = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        return sane_time(t if t.tzinfo else t.replace(tzinfo=dt.UTC), name)
    except (ValueError, OverflowError, Invalid):
        raise Invalid(f"{name} must be an RFC 3339 time in {EARLIEST.year}..{LATEST.year - 1}",
                      code=f"invalid_{name}") from None


def time_range(q: Any) -> dict[str, dt.datetime]:
    """``from`` (inclusive) and ``to`` (exclusive) as SQL operators to the times given."""
    times = {op: time_param(q, name) for name, op in (("from", ">="), ("to", "<"))}
    return {op: t for op, t in times.items() if t is not None}


def cursor(ms: int, key: str | int) -> str:
    """The opaque ``next`` of a list ordered by (a time, a unique key), both descending."""
    return base64.urlsafe_b64encode(f"{ms}|{key}".encode()).decode()


def parse_cursor(raw: str, key: Any = OrderId) -> tuple[dt.datetime, str]:
    """(time, key) from a ``cursor``; 422 ``invalid_cursor`` for anything ``cursor`` did not make."""
    try:
        ms, _, found = base64.urlsafe_b64decode(raw.encode()).decode().partition("|")
        if DIGITS.fullmatch(ms) and valid(found, key):
            return sane_time(dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC), "cursor"), found
    except (ValueError, OverflowError, OSError, Invalid):  # OverflowError, OSError: a time out of range
        pass
    raise Invalid("cursor is malformed; pass back the 'next' value", code="invalid_cursor")


def parse_id_cursor(raw: str) -> tuple[dt.datetime, int]:
    at, row_id = parse_cursor(raw, RowId)
    return at, int(row_id)


def neutral(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting like a formula gets a leading ``'``."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def query_int(query: Any, name: str, default: int, lo: int, hi: int) -> int:
    """One integer parameter within ``lo..hi``; absent or empty (``?after=``) means the default."""
    values = query.getall(name, [])
    if not values or values == [""]:
        return default
    raw = values[0]
    if len(values) > 1 or not DIGITS.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise Invalid(f"{name} must be given once, as an integer in {lo}..{hi}", code=f"invalid_{name}")
    return int(raw)
