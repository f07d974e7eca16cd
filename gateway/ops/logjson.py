"""JSON log lines (``OMS_LOG_FORMAT=json``): one object per line, every string field redacted.

Fields: ``time`` (RFC 3339 UTC, milliseconds), ``level``, ``logger``, ``message``, the request
id of the request being handled (``REQUEST_ID``, set by gateway/web/edge.py), every field a
caller passed in ``extra`` (the access lines' ``route``, ``method``, ``status``, ``duration``),
``exc`` (the traceback, one string) and ``stack``. The SecretFilter that ``install`` finds on
each handler has cleaned the message, the traceback and the stack before the formatter runs
(handler filters come first); the formatter redacts, with the same patterns, what no filter
sees: the request id and every ``extra`` value. Redacting the message twice would double the
cost of a line: the patterns take about 0.1 us per character.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType

import orjson

from gateway.ops.logsafe import SecretFilter

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# what every LogRecord has; anything else on a record came from ``extra``
STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
PLAIN = (int, float, bool, type(None))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line whatever the message holds (orjson escapes control
    characters and newlines)."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.redact = redact
        self._second: tuple[int, str] = (-1, "")

    def rfc3339(self, record: logging.LogRecord) -> str:
        """``2026-11-11T00:00:00.123Z``; the seconds part is built once a second, not per record."""
        second = int(record.created)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        redact = self.redact
        line: dict[str, object] = {"time": self.rfc3339(record), "level": record.levelname,
                                   "logger": record.name, "message": record.getMessage()}
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = redact(request_id)
        for key, value in record.__dict__.items():  # in the order the caller gave them
            if key not in STANDARD and key not in line:
                line[key] = value if isinstance(value, PLAIN) else redact(str(value))
        if record.exc_info and not record.exc_text:  # no SecretFilter formatted it
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        try:
            return orjson.dumps(line).decode()
        except (TypeError, orjson.JSONEncodeError):  # a lone surrogate (a path from the OS), an int over 64 bits
            # escaped as the text \udcff: a lone surrogate escaped as JSON would fail strict parsers
            return json.dumps({k: v.encode("utf-8", "backslashreplace").decode() if isinstance(v, str) else v
                               for k, v in line.items()}, default=str)


def install(secret_filter: SecretFilter) -> None:
    """JSON lines on every root handler that ``secret_filter`` guards (``logsafe.install``); warnings
    and uncaught exceptions become records too, so nothing but JSON reaches stderr through Python."""
    formatter = JsonFormatter(secret_filter.redact)
    for handler in logging.getLogger().handlers:
        if secret_filter in handler.filters:
            handler.setFormatter(formatter)
    logging.captureWarnings(True)
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread


def _uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):  # Ctrl-C on a terminal: Python's own two lines
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("gateway").critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None and not issubclass(args.exc_type, SystemExit):  # as threading's own hook
        logging.getLogger("gateway").critical("uncaught exception in thread %s", getattr(args.thread, "name", "?"),
                                              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
