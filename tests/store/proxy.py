"""A TCP proxy on a loopback port that a test can cut and restore: the gentlest way to make a
shared database unreachable (no server is stopped; only our own connections are cut)."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``. ``cut()`` drops every connection and refuses
    new ones (accepted, then closed at once); ``restore()`` forwards again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cut_off = False
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._pipe(reader, up_writer)),
            loop.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for w in (writer, up_writer):
                w.transport.abort()
                self._writers.discard(w)
            self._pipes.difference_update(tasks)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if self.cut_off:
                    return
                writer.write(data)
                await writer.drain()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        self.cut_off = True
        for w in list(self._writers):
            w.transport.abort()

    def restore(self) -> None:
        self.cut_off = False

    async def close(self) -> None:
        self.cut()
        for t in list(self._pipes):
            t.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
