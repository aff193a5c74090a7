"""The two ASGI chores of the benchmarks' stand-in upstreams: answering the lifespan protocol and
reading a request body."""

from __future__ import annotations


async def lifespan(receive, send) -> None:
    """Acknowledge startup and shutdown until the server shuts down."""
    while True:
        msg = await receive()
        await send({"type": msg["type"] + ".complete"})
        if msg["type"] == "lifespan.shutdown":
            return


async def read_body(receive) -> bytes:
    parts = []
    while True:
        msg = await receive()
        parts.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(parts)
