"""Checks as tests: the code passes ruff, and every Redis key is built in gateway/keys.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A string literal opening with the key prefix: a key built by hand. Spelt in pieces so
# this file does not hold one itself.
KEY_LITERALS = tuple(quote + "oms" + ":" for quote in "\"'")
KEYS_TESTS = {"test_keys.py"}  # they check the format itself, so they spell keys out


def hand_built_keys(paths):
    return sorted(str(p.relative_to(ROOT)) for p in paths if any(n in p.read_text() for n in KEY_LITERALS))


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "gateway", "allocator", "tests"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_redis_keys_are_built_only_in_keys_module():
    assert hand_built_keys(p for p in (ROOT / "gateway").rglob("*.py") if p.name != "keys.py") == []


def test_tests_build_redis_keys_through_the_keys_module():
    assert hand_built_keys(p for p in (ROOT / "tests").rglob("*.py") if p.name not in KEYS_TESTS) == []


def test_workers_and_domain_never_import_the_web_side():
    """Web apart from workers: only gateway/web (and the CLI that serves it) import aiohttp.web."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "gateway").rglob("*.py")
                 if ROOT / "gateway" / "web" not in p.parents and p.name != "cli.py"
                 and re.search(r"^(from aiohttp import web|from gateway\.web|import aiohttp\.web)", p.read_text(), re.M)]
    assert offenders == []


def test_every_route_is_in_the_one_url_table():
    from gateway.web import urls

    registered = {(r.method, r.path) for r in urls.ROUTES}
    text = "".join(p.read_text() for p in (ROOT / "gateway").rglob("*.py") if p.name != "urls.py")
    assert "add_route(" not in text and "add_get(" not in text and "add_post(" not in text
    assert len(registered) == len(urls.ROUTES)
