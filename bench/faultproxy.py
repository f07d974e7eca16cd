"""An asyncio TCP proxy between the gateway and a store, so the soak can break the network.

The gateway connects to a loopback port; each connection is forwarded to the store's unix
socket (or host and port), looked up at connect time, so a store restarted elsewhere is
found again. Faults act on every connection at once: ``cut`` closes them (FIN), ``reset``
aborts them (RST, SO_LINGER 0), ``stall`` stops forwarding for a while (the connections
stay open and silent, as a partitioned link does), ``slow`` delays each chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from pathlib import Path

CHUNK = 65536

Target = Path | tuple[str, int]


class FaultProxy:
    def __init__(self, name: str, target: Callable[[], Target]) -> None:
        self.name = name
        self.target = target  # called per connection: the store may have moved its socket
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.delay = 0.0  # seconds added before each forwarded chunk while ``slow``
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._flowing.set()
        self.reset()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = self.target()
        try:
            if isinstance(target, Path):
                up_reader, up_writer = await asyncio.open_unix_connection(str(target))
            else:
                up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            _abort(writer)  # the store is down: the client sees a refused (reset) connection
            return
        pair = (writer, up_writer)
        self._conns.add(pair)
        pumps = [asyncio.create_task(self._pump(reader, up_writer)), asyncio.create_task(self._pump(up_reader, writer))]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            self._conns.discard(pair)
            for w in pair:
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(CHUNK):
                await self._flowing.wait()  # a stall holds the bytes already read, as a dead link would
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()

    def cut(self) -> int:
        """Close every connection cleanly (FIN both ways); returns how many."""
        conns = list(self._conns)
        for pair in conns:
            for w in pair:
                w.close()
        return len(conns)

    def reset(self) -> int:
        """Abort every connection with an RST; returns how many."""
        conns = list(self._conns)
        for pair in conns:
            for w in pair:
                _abort(w)
        return len(conns)

    async def stall(self, seconds: float) -> None:
        """Forward nothing for ``seconds``; connections stay open and new ones are accepted."""
        self._flowing.clear()
        try:
            await asyncio.sleep(seconds)
        finally:
            self._flowing.set()

    async def slow(self, seconds: float, delay: float) -> None:
        """Delay every chunk by ``delay`` for ``seconds``."""
        self.delay = delay
        try:
            await asyncio.sleep(seconds)
        finally:
            self.delay = 0.0


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
