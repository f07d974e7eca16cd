"""Logs hold no secret: one filter on the root logger's handlers for every record, ours and aiohttp's.

It replaces with ``[redacted]``, in the formatted message, the exception text and the stack:

- every configured service key and the JWT secret (``Settings.api_keys``, ``Settings.jwt_secret``);
- the credential after ``Bearer`` (whatever it is), anything shaped like a JWT, and the
  password in a ``scheme://user:password@host`` URL.

aiohttp logs a request it cannot parse (``BadHttpMessage`` and its subclasses: a control
character in a header, a line over 8190 bytes, a garbled request line) at ERROR with a
traceback, and the exception quotes the raw request bytes. Redacting whole secrets is not
enough there: aiohttp cuts a long line at 100 bytes, and a request that arrived in two reads
is quoted from the start of the second, so a quote can hold a fragment of a key that no
pattern recognises. Such a record becomes one WARNING line saying what was wrong, the header
when it is a standard one, and none of the request's bytes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from aiohttp import hdrs
from aiohttp.http_exceptions import BadHttpMessage
from multidict import istr

from gateway.config import Settings

REDACTED = "[redacted]"
PATTERNS = (  # configured secrets match exactly; these are for credentials we do not know
    r"(?P<bearer>(?i:\bbearer\b)[\s:=]*)[^\s'\"<>,;]+",  # "\x01" after Bearer shows as text in a repr: taken too
    r"\beyJ[\w-]*\.[\w-]*\.[\w-]*",  # a JWT: base64url of '{"' . payload . signature
    r"(?P<userinfo>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s/@]+@",
)
# a Python repr of request bytes or text, as aiohttp's parsers quote them
QUOTED = re.compile(r"""(?:bytearray\()?(?P<b>b?)(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\)?(?:\.\.\.)?""", re.S)
STANDARD_HEADERS = frozenset(v.lower() for v in vars(hdrs).values() if isinstance(v, istr))
HEADER_LINE = re.compile(r"""^(?:bytearray\()?b?['"]([A-Za-z0-9-]{1,64}):""")


class SecretFilter(logging.Filter):
    """Redacts secrets from each record; never drops one."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        literals = sorted({s for s in secrets if s}, key=len, reverse=True)  # longest first: a key inside another
        self.literals = tuple(literals)
        self.pattern = re.compile("|".join([*map(re.escape, literals), *PATTERNS]))
        self.formatter = logging.Formatter()

    def redact(self, text: str) -> str:
        """``text`` with every match replaced. The regex costs about 0.1 us a character (no
        literal prefix for the engine to search for), so a text holding nothing any pattern
        needs (a configured secret, ``eyJ``, ``://``, ``bearer`` in any case) skips it: most
        log lines, among them every access line."""
        if not (any(secret in text for secret in self.literals) or "eyJ" in text or "://" in text
                or "bearer" in text.lower()):
            return text
        return self.pattern.sub(self._replace, text)

    @staticmethod
    def _replace(match: re.Match[str]) -> str:
        if match["bearer"] is not None:
            return match["bearer"] + REDACTED
        if match["userinfo"] is not None:
            return match["userinfo"] + REDACTED + "@"
        return REDACTED

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._clean(record)
        except Exception:  # a record that cannot be formatted must not break the caller, nor leak
            record.msg, record.args = f"log record from {record.pathname}:{record.lineno} withheld: unformattable", ()
            record.exc_info = record.exc_text = record.stack_info = None
        return True

    def _clean(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        if isinstance(exc, BadHttpMessage):
            record.msg = self.redact(f"{message}: malformed request, answered {exc.code}: "
                                     f"{type(exc).__name__}: {describe(exc)}")
            record.args = ()
            record.exc_info = record.exc_text = record.stack_info = None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
            return
        record.msg, record.args = self.redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatter.formatException(record.exc_info)  # the formatter uses this text
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)


def describe(exc: BadHttpMessage) -> str:
    """What was wrong, in aiohttp's words, without the request bytes it quotes."""
    text = str(exc.message)
    quoted = QUOTED.search(text)
    header = HEADER_LINE.match(quoted[0]) if quoted else None
    words = " ".join(line for line in QUOTED.sub(_header_name_or_nothing, text).splitlines() if line.strip(" ^"))
    words = " ".join(words.split()).rstrip(" :.") or "unparsable request"
    if header and header[1].lower() in STANDARD_HEADERS:
        words += f" (header {header[1]})"
    return words + " (request bytes not logged)"


def _header_name_or_nothing(quoted: re.Match[str]) -> str:
    """Keep aiohttp's own quote of a standard header's name ("Missing 'Host' header"), drop request bytes."""
    if not quoted["b"] and quoted[0][1:-1].lower() in STANDARD_HEADERS:
        return quoted[0]
    return ""


def install(settings: Settings) -> SecretFilter:
    """Put the filter on every handler of the root logger (``logging.basicConfig``'s), replacing
    one installed before; records of every logger that propagates pass through them."""
    secret_filter = SecretFilter([*settings.api_keys, settings.jwt_secret])
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, SecretFilter)]:
            handler.removeFilter(old)
        handler.addFilter(secret_filter)
    return secret_filter
