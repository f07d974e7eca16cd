"""The README's quick start: ``make run`` in a fresh clone installs, starts, and stops cleanly."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_make_run_from_fresh_clone_serves_ready_and_stops_cleanly(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMS_", "VIRTUAL_ENV"))}
    env["OMS_PORT"] = str(port)
    with (tmp_path / "run.log").open("wb") as log:
        proc = subprocess.Popen(["make", "run"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 480
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body = get(f"http://127.0.0.1:{port}/readyz")
            except OSError:
                status = None
            if status == 200:
                break
            time.sleep(0.5)  # an external process: readiness can only be polled
        assert status == 200, (tmp_path / "run.log").read_text()[-3000:]
        assert b'"ready":true' in body
        assert (clone / ".data" / "valkey").is_dir() and (clone / ".data" / "pg").is_dir()
        status, page = get(f"http://127.0.0.1:{port}/console")
        assert status == 200
        if shutil.which("npm"):  # make run built the console first; without npm /console says how to build
            assert b'<div id="app">' in page and (clone / "console" / "dist" / "index.html").is_file()
        else:
            assert b"make console" in page
    finally:
        with contextlib.suppress(ProcessLookupError):  # make already exited: let the assertion above show why
            os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
    output = (tmp_path / "run.log").read_text()
    assert code in (0, 2, -signal.SIGINT), output[-3000:]  # make may die of the SIGINT itself
    assert "gateway listening on" in output and "development credentials active" in output
    assert "dev-admin-key" not in output and "dev-secret" not in output  # named, never printed
    assert "stopping embedded Valkey" in output and "stopping embedded Postgres" in output
    assert "Traceback" not in output
