"""Logs hold no secret: hostile requests to ``serve`` leave no key, secret or fragment of one in
its log, and a malformed request is one warning line without a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_parser import HttpRequestParser

from gateway.config import DEV_ADMIN_KEY, DEV_JWT_SECRET, Settings
from gateway.ops.logsafe import SecretFilter
from gateway.web.app import create_app
from tests.test_maintenance_beside_serve import private_tmp
from tests.test_make_run import free_port
from tests.test_supervisor import children, start_serve

ADMIN_KEY = "adm-" + secrets.token_urlsafe(24)
OPS_KEY = "ops-" + secrets.token_urlsafe(24)
WEB_KEY = "web-" + secrets.token_urlsafe(24)
JWT_SECRET = "jwt-" + secrets.token_urlsafe(36)
SECRETS = (ADMIN_KEY, OPS_KEY, WEB_KEY, JWT_SECRET)


def fragments(secret: str, size: int = 6) -> Iterator[str]:
    return (secret[i:i + size] for i in range(len(secret) - size + 1))


async def stopped(proc: subprocess.Popen[bytes], log: Path) -> str:
    """Stop serve with SIGTERM (any child it left is killed) and return its log; it must exit 0."""
    kids = set(children(proc.pid))  # found first: a dead supervisor's children belong to init
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 60)
    for pid in kids | set(children(proc.pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    return text


def leaked(text: str, *values: str) -> list[str]:
    """Every run of 6 characters of a value that the text holds (random values: no chance match)."""
    return [part for value in values for part in fragments(value) if part in text]


@contextlib.contextmanager
def logger_with(name: str, handler: logging.Handler) -> Iterator[logging.Logger]:
    """Logger ``name`` at INFO with ``handler`` as its only output, put back as it was afterwards."""
    logger = logging.getLogger(name)
    propagate, logger.propagate = logger.propagate, False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = propagate


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose one handler carries the filter, as ``logsafe.install`` sets up the root's."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter(SECRETS))
    with logger_with("tests.logsafe", handler) as logger:
        yield logger, out


def test_filter_redacts_secrets_tokens_and_url_passwords_in_messages_and_tracebacks(captured):
    logger, out = captured
    other_token = secrets.token_urlsafe(20)
    user_jwt = jwt.encode({"sub": "u-1", "exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS256")
    logger.info("keys %s and %r, secret %s", ADMIN_KEY, OPS_KEY, JWT_SECRET)
    logger.warning("header %r", {"Authorization": f"Bearer {other_token}"})
    logger.warning("token in the body: %s", user_jwt)
    logger.info("connecting to redis://:%s@cache:6379/0", other_token)
    try:
        raise ValueError(f"no such key {WEB_KEY}")
    except ValueError:
        logger.exception("lookup failed for Bearer\\x01%s", WEB_KEY)
    text = out.getvalue()
    assert leaked(text, *SECRETS, other_token, user_jwt) == [], text
    assert "keys [redacted] and '[redacted]', secret [redacted]" in text
    assert "{'Authorization': 'Bearer [redacted]'}" in text
    assert "token in the body: [redacted]" in text and "redis://:[redacted]@cache:6379/0" in text
    assert "Traceback" in text and "ValueError: no such key [redacted]" in text  # other errors keep theirs


def parse_error(*chunks: bytes) -> BadHttpMessage:
    """The exception aiohttp's own parser raises for a request arriving in these reads."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(None, loop, 2**16, max_line_size=8190, max_field_size=8190)
        with pytest.raises(BadHttpMessage) as caught:
            for chunk in chunks:
                parser.feed_data(chunk)
    finally:
        loop.close()
    return caught.value


@pytest.mark.parametrize(("chunks", "says"), [
    pytest.param([b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN_KEY[:10].encode(),
                  ADMIN_KEY[10:].encode() + b"\x01\r\n\r\n"],
                 "BadHttpMessage: Invalid header value char", id="key-split-across-two-reads"),
    pytest.param([b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 90 + ADMIN_KEY.encode() + b"a" * 9000 + b"\r\n"],
                 "LineTooLong: Got more than 8190 bytes when reading", id="key-cut-at-100-bytes"),
    pytest.param([b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN_KEY.encode() + b"\x01\r\n\r\n"],
                 "Invalid header value char (header Authorization)", id="control-char-after-key"),
])
def test_malformed_request_is_one_warning_line_without_its_bytes(captured, chunks, says):
    logger, out = captured
    exc = parse_error(*chunks)
    assert leaked(str(exc), ADMIN_KEY)  # what aiohttp would log: a fragment of the key at least
    logger.exception("Error handling request from %s", "127.0.0.1", exc_info=exc)  # as aiohttp logs it
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("WARNING tests.logsafe: Error handling request from 127.0.0.1: "
                                                   "malformed request, answered 400: "), lines
    assert says in lines[0] and leaked(lines[0], ADMIN_KEY) == [], lines


def test_malformed_request_keeps_the_standard_header_aiohttp_names(captured):
    logger, out = captured
    exc = parse_error(b"GET / HTTP/1.1\r\nAuthorization: Bearer " + ADMIN_KEY.encode() + b"\r\n\r\n")
    logger.exception("Error handling request from %s", "127.0.0.1", exc_info=exc)
    assert "BadHttpMessage: Missing 'Host' header in request (request bytes not logged)" in out.getvalue()


def test_development_credentials_warning_names_the_variables_not_the_values(caplog):
    caplog.set_level(logging.WARNING, logger="gateway.web.app")
    create_app(Settings.from_env({}))  # opens nothing
    warning = next(r.getMessage() for r in caplog.records if "development credentials" in r.getMessage())
    assert "OMS_API_KEYS" in warning and "OMS_JWT_SECRET" in warning and "README" in warning
    assert DEV_ADMIN_KEY not in warning and DEV_JWT_SECRET not in warning


async def exchange(port: int, *sends: bytes) -> bytes:
    """Send raw bytes on one connection, each after the answer to the one before; read until the
    server closes (it closes after every 400). Every send but the last must ask for one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        replies = b""
        for n, data in enumerate(sends, 1):
            writer.write(data)
            await writer.drain()
            if n < len(sends):  # read exactly one response: the next bytes start a new parse
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
                length = int(re.search(rb"(?i)content-length: (\d+)", head)[1])
                replies += head + await asyncio.wait_for(reader.readexactly(length), timeout=10)
        return replies + await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()


def statuses(reply: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", reply)]


def request(path: str = "/healthz", *headers: bytes, close: bool = True) -> bytes:
    lines = [b"GET " + path.encode() + b" HTTP/1.1", b"Host: 127.0.0.1", *headers]
    return b"\r\n".join(lines + ([b"Connection: close"] if close else []) + [b"", b""])


def bearer(token: str | bytes) -> bytes:
    return b"Authorization: Bearer " + (token.encode() if isinstance(token, str) else token)


KEY = ADMIN_KEY.encode()
LONG = b"a" * 9000  # over aiohttp's 8190-byte line limit
GARBAGE = b"G\x02ET /?key=" + KEY + b" HTTP/1.1\r\n\r\n"
HOSTILE = [  # (what, request bytes sent one after the other, statuses answered, logged as a malformed request)
    ("control char after key", [request("/healthz", bearer(KEY + b"\x01"))], [400], True),
    ("control char before key", [request("/healthz", bearer(b"\x01" + KEY))], [400], True),
    ("NUL after key", [request("/healthz", bearer(KEY + b"\x00"))], [400], True),
    ("long header holding the key", [request("/healthz", b"X-Pad: " + KEY + LONG)], [400], True),
    ("long Authorization", [request("/healthz", bearer(KEY + LONG))], [400], True),
    ("key across aiohttp's 100-byte cut", [request("/healthz", b"X-Pad: " + b"a" * 92 + KEY + LONG)], [400], True),
    # a garbled first request line is logged at DEBUG only (aiohttp: common on the internet)
    ("garbage request line", [GARBAGE], [400], False),
    ("garbage after a request", [request("/healthz", close=False), GARBAGE], [200, 400], True),
]


@pytest.fixture
def own_tmp() -> Iterator[Path]:
    yield from private_tmp()


@pytest.mark.slow
async def test_hostile_requests_leave_no_secret_and_no_traceback_in_the_log(own_tmp: Path):
    """serve on its own embedded servers, in production mode with configured keys and secret."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")} | {
        "OMS_PORT": str(port), "OMS_DATA_DIR": str(own_tmp / "data"), "OMS_ENV": "production",
        "OMS_JWT_SECRET": JWT_SECRET, "OMS_API_KEYS": f"admin={ADMIN_KEY},ops={OPS_KEY},storefront:web={WEB_KEY}",
    }
    log = own_tmp / "serve.log"
    proc, _ = await start_serve(env, log)
    forged = jwt.encode({"sub": "u-1", "exp": int(time.time()) + 600}, "not-" + JWT_SECRET, algorithm="HS256")
    nul_claim = jwt.encode({"sub": "u-\x001", "exp": int(time.time()) + 600}, JWT_SECRET, algorithm="HS256")
    try:
        expect_logged = 0
        for what, sends, answered, logged in HOSTILE:
            assert statuses(await exchange(port, *sends)) == answered, what
            expect_logged += logged
        assert statuses(await exchange(port, request("/v1/orders/o-1", bearer(forged)))) == [401]
        assert statuses(await exchange(port, request("/v1/orders/o-1", bearer(nul_claim))))[0] in (401, 404, 422)
        assert statuses(await exchange(port, request("/v1/orders/o-1", bearer(forged.encode() + b"\x00")))) == [400]
        expect_logged += 1
        # the keys are live: their absence from the log means something
        assert statuses(await exchange(port, request("/v1/inventory/LOG-1", bearer(ADMIN_KEY)))) == [200]
        assert statuses(await exchange(port, request("/v1/inventory/LOG-1", bearer(OPS_KEY)))) == [200]
    finally:
        text = await stopped(proc, log)
    assert leaked(text, *SECRETS, forged, nul_claim) == [], text[-3000:]
    assert "Traceback" not in text and " ERROR " not in text, text[-3000:]
    malformed = [line for line in text.splitlines() if " WARNING aiohttp.server: " in line and "malformed request" in line]
    assert len(malformed) == expect_logged, text[-3000:]
    assert any("Invalid header value char (header Authorization)" in line for line in malformed), malformed
    assert any("LineTooLong: Got more than 8190 bytes" in line for line in malformed), malformed
