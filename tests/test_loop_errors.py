"""The suite's own guard: an error the event loop reports and nobody handles fails the test."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.conftest import loop_errors_recorded

ROOT = Path(__file__).resolve().parent.parent


async def die() -> None:
    raise RuntimeError("nobody awaits me")


async def test_the_recorder_catches_a_task_that_died_unobserved():
    loop = asyncio.get_running_loop()
    with loop_errors_recorded(loop) as errors:
        task = loop.create_task(die())
        await asyncio.wait([task])  # done; its exception is never retrieved
        del task
    assert [c["message"] for c in errors.contexts] == ["Task exception was never retrieved"]
    assert "RuntimeError: nobody awaits me" in errors.report()


async def test_the_recorder_catches_an_error_in_a_callback_and_puts_the_previous_handler_back():
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()  # the suite's own, for this test
    with loop_errors_recorded(loop) as errors:
        done = asyncio.Event()
        loop.call_soon(lambda: 1 / 0)
        loop.call_soon(done.set)
        await done.wait()
    assert loop.get_exception_handler() is before
    assert len(errors.contexts) == 1 and errors.contexts[0]["message"].startswith("Exception in callback")
    assert isinstance(errors.contexts[0]["exception"], ZeroDivisionError)


INNER_TESTS = '''
import asyncio


async def test_leaves_a_task_to_die_unobserved():
    async def die():
        raise RuntimeError("nobody awaits me")

    asyncio.get_running_loop().create_task(die())
    await asyncio.sleep(0)


async def test_clean():
    await asyncio.sleep(0)


def test_sync():
    pass
'''
INNER_INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
"""


async def test_a_test_that_lets_a_task_die_unobserved_fails_at_teardown(tmp_path):
    (tmp_path / "conftest.py").write_text("from tests.conftest import loop_errors  # noqa: F401\n")
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    (tmp_path / "pytest.ini").write_text(INNER_INI)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 120))[0].decode()
    assert proc.returncode == 1, out
    assert "3 passed, 1 error" in out, out
    assert "ERROR at teardown of test_leaves_a_task_to_die_unobserved" in out, out
    assert "Task exception was never retrieved" in out and "RuntimeError: nobody awaits me" in out, out
