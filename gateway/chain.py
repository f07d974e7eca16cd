"""The tamper-evident hash chain: every order event hashed and chained to the one before.

``hash = sha256(prev_hash | stream_id | order_id | seq | type | at_ms | data)`` with the data
as canonical JSON (sorted keys), in ``order_events.id`` order. Writers append under one
advisory lock, so the chain follows commit order. Changing, deleting or inserting a row by
hand breaks the chain at that row; deleting the newest events of an order leaves it with
fewer events than ``orders.last_seq`` says it had, which is reported too, and so is a line,
allocation or event left without its order row.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

GENESIS = "0" * 64


def canonical(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def event_hash(prev: str, stream_id: str, order_id: str, seq: int, kind: str, at_ms: int, data: Any) -> str:
    return chain_hash(prev, stream_id, order_id, seq, kind, at_ms, canonical(data))


def chain_hash(prev: str, stream_id: str, order_id: str, seq: int, kind: str, at_ms: int, body: bytes) -> str:
    """``event_hash`` over data already in canonical form (the writer prepares it off the lock)."""
    head = f"{prev}|{stream_id}|{order_id}|{seq}|{kind}|{at_ms}|".encode()
    return hashlib.sha256(head + body).hexdigest()
