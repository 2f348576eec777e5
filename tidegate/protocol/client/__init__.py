"""A thin asyncio client for the tidegate control channel (``websockets`` underneath).

Used by the tests, by ``bench/`` and by edge devices that stream over the control channel
alone. It adds to the sans-I/O :class:`~tidegate.protocol.Connection` only what needs I/O: the
socket, a clock, a reader task, waiting for replies and for upload credit::

    async with await Client.connect(url, token) as client:
        created = await client.create_session({"mode": "loopback"})
        rtt = await client.sync_clock()
        await client.send(InputText(text="hello"))
        async for event in client:
            ...
"""

from .client import (
    Client,
    ClientError,
    ClockSample,
    ConnectionClosedError,
    RefusedError,
    now_ms,
)

__all__ = [
    "Client",
    "ClientError",
    "ClockSample",
    "ConnectionClosedError",
    "RefusedError",
    "now_ms",
]
