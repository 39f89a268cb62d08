"""Meeting events through a real Redis: another instance routes a new meeting at once and stops
routing an ended one at once, without waiting for its table refresh."""

from __future__ import annotations

import asyncio
import os
import secrets

import asyncpg
import pytest
import redis.asyncio as redis
from lxml import etree

from b3lb.events import MeetingEvents
from b3lb.runtime import Runtime
from b3lb.testing.harness import Harness

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def redis_available() -> bool:
    client = redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        await client.aclose()


async def eventually(check, timeout: float = 3.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


@pytest.mark.gen_test(timeout=30)
async def test_creates_and_ends_reach_the_other_instance(db_url):
    if not await redis_available():
        pytest.skip(f"no Redis at {REDIS_URL}")
    channel = "b3lb:test:" + secrets.token_hex(4)
    async with Harness(db_url, nodes=1) as h:
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
        other = Runtime(h.config, pool)
        await other.refresh_directory()
        h.runtime.events = MeetingEvents(h.runtime, REDIS_URL, channel)
        other.events = MeetingEvents(other, REDIS_URL, channel)
        ready = asyncio.Event()
        listener = asyncio.ensure_future(other.events.listen(ready))
        try:
            await asyncio.wait_for(ready.wait(), 5)
            secret_id = h.tenants["ABC"].secrets[0][0]
            r = await h.call("create", "name=Room&meetingID=room-1")
            assert etree.fromstring(r.body).findtext("returncode") == "SUCCESS"
            assert await eventually(lambda: other.meetings.get(secret_id, "room-1") is not None)
            here, there = h.runtime.meetings.get(secret_id, "room-1"), other.meetings.get(secret_id, "room-1")
            assert (there.id, there.node_id) == (here.id, here.node_id)
            r = await h.call("end", "meetingID=room-1")
            assert etree.fromstring(r.body).findtext("returncode") == "SUCCESS"
            assert await eventually(lambda: other.meetings.get(secret_id, "room-1") is None)
            other.events.apply(b"not json")  # a malformed message is ignored, not fatal
            assert other.events.received == 2
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await other.events.close()
            await h.runtime.events.close()
            h.runtime.events = None
            other.nodes.close()
            await pool.close()
