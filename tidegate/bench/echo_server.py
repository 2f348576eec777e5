"""A bare ``websockets`` echo server: the baseline the control scenario compares against.

Run as ``python -m tidegate.bench.echo_server PORT``. Same event loop as tidegate's server
(uvloop when installed), compression off, like tidegate's control channel.
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import ServerConnection, serve


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def main(port: int) -> None:
    async with serve(
        _echo,
        "127.0.0.1",
        port,
        compression=None,
        max_size=2**21,
        ping_interval=None,
        subprotocols=["tidegate.v1.cbor", "tidegate.v1.msgpack", "tidegate.v1.json"],  # type: ignore[list-item]
    ):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
