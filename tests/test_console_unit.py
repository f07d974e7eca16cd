"""The console's own unit tests (Vitest: the API client, formatting, role -> nav and actions), run by the suite."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CONSOLE = Path(__file__).resolve().parent.parent / "console"


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is missing (the console needs Node 20 and npm)")
@pytest.mark.timeout(300)
def test_console_unit_tests_pass():
    if not (CONSOLE / "node_modules" / ".bin" / "vitest").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=CONSOLE, check=True, capture_output=True, timeout=240)
    result = subprocess.run(["npm", "test", "--", "--reporter=dot"], cwd=CONSOLE, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
