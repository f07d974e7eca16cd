"""A store connection the peer reset before the first write is a backend fault (503), not a 500.

Found by the fault soak (seed 7): a proxy in front of Valkey accepts, then resets while Valkey
is down; under uvloop redis-py's first command then raises ``RuntimeError: unable to perform
operation on <TCPTransport closed=True …>; the handler is closed`` (MagicStack/uvloop#506)
where asyncio would report a lost connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading

import pytest
import uvloop

from gateway.errors import BackendDown
from gateway.faults import unavailable
from gateway.scripts import Scripts


def resetting_listener(connected: threading.Event) -> socket.socket:
    """A listener that resets each connection it accepts, from its own thread, once the client
    says it is connected (a reset racing the handshake failed 100 tries in a row under load)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connected.wait(10)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener


async def write_after_reset(port: int, connected: threading.Event) -> BaseException:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    connected.set()
    with contextlib.suppress(ConnectionError):
        await reader.read()  # the reset arrives: uvloop closes the transport
    try:
        writer.write(b"PING\r\n")
    except BaseException as exc:  # noqa: B036 - the very exception uvloop raises is the subject
        return exc
    finally:
        writer.close()
    pytest.fail("writing on a reset uvloop transport raised nothing")


@pytest.fixture
def closed_transport_error() -> BaseException:
    connected = threading.Event()
    listener = resetting_listener(connected)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(write_after_reset(listener.getsockname()[1], connected))
    finally:
        listener.close()


def test_uvloop_closed_transport_is_a_backend_fault(closed_transport_error):
    assert isinstance(closed_transport_error, RuntimeError), closed_transport_error
    fault = unavailable(closed_transport_error)
    assert isinstance(fault, BackendDown) and fault.status == 503


def test_other_runtime_errors_stay_bugs():
    assert unavailable(RuntimeError("something else went wrong")) is None


async def test_a_script_call_on_a_closed_transport_raises_backend_down(closed_transport_error):
    async def call() -> None:
        raise closed_transport_error

    with pytest.raises(BackendDown):
        await Scripts._redis_call(call())
