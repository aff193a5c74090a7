"""The upstream read timeout counts only the waits for upstream bytes: silence ends a read with
TimeoutError, but time the relay spends elsewhere (a slow client) between reads does not."""

import asyncio
import time

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol

from ctxgate.service._upstream import _Waits

TIMEOUT = 0.4


def _reader(loop: asyncio.AbstractEventLoop) -> aiohttp.StreamReader:
    """aiohttp's own reader over a protocol that counts as connected (the data here is small, so
    flow control never calls the bare transport)."""
    protocol = BaseProtocol(loop)
    protocol.transport = asyncio.Transport()
    return aiohttp.StreamReader(protocol, 2**16, loop=loop)


def test_bytes_that_arrive_within_the_timeout_are_read():
    async def main():
        waits, reader = _Waits(TIMEOUT), _reader(asyncio.get_running_loop())
        asyncio.get_running_loop().call_later(TIMEOUT / 2, reader.feed_data, b"data: 1\n\n")
        try:
            return await waits.read(reader)
        finally:
            waits.close()

    assert asyncio.run(main()) == b"data: 1\n\n"


def test_silence_ends_the_read_with_a_timeout_within_a_quarter_of_it():
    async def main():
        waits, reader = _Waits(TIMEOUT), _reader(asyncio.get_running_loop())
        t0 = time.monotonic()
        try:
            with pytest.raises(TimeoutError):
                await waits.read(reader)
        finally:
            waits.close()
        return time.monotonic() - t0

    took = asyncio.run(main())
    assert TIMEOUT <= took < TIMEOUT * 1.25 + 0.2, took


def test_time_between_reads_is_not_upstream_silence():
    async def main():
        waits, reader = _Waits(TIMEOUT), _reader(asyncio.get_running_loop())
        reader.feed_data(b"one")
        got = [await waits.read(reader)]
        await asyncio.sleep(TIMEOUT * 3)  # the client is slow; the next bytes are buffered
        reader.feed_data(b"two")
        got.append(await waits.read(reader))
        reader.feed_eof()
        got.append(await waits.read(reader))
        waits.close()
        return got

    assert asyncio.run(main()) == [b"one", b"two", b""]
