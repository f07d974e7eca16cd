"""The README's console screenshots: runs the console's browser tests with ``CONSOLE_SHOTS_DIR`` set, then
copies the shots they take (``console-*.png``) into docs/.

    .venv/bin/python tests/console_shots.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="console-shots-") as tmp:
        env = {**os.environ, "CONSOLE_SHOTS_DIR": tmp}
        run = subprocess.run([sys.executable, "-m", "pytest", "tests/test_console_e2e.py",
                              "tests/test_console_e2e_ops.py", "-q", "-p", "no:cacheprovider",
                              "-p", "no:xdist", "--basetemp", str(Path(tmp) / "pytest")], cwd=ROOT, env=env)
        if run.returncode != 0:
            return run.returncode
        shots = sorted(Path(tmp).glob("console-*.png"))
        for shot in shots:
            shutil.copy(shot, ROOT / "docs" / shot.name)
            print(f"docs/{shot.name}")
        return 0 if shots else 1


if __name__ == "__main__":
    sys.exit(main())
