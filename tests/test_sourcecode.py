"""Checks as tests: the code passes ruff, and every Redis key is built in gateway/keys.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "gateway", "allocator", "tests"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_redis_keys_are_built_only_in_keys_module():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "gateway").glob("*.py")
                 if p.name != "keys.py" and '"oms:' in p.read_text()]
    assert offenders == []
