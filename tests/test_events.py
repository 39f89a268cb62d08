"""Meeting events through a real Redis: another instance routes a new meeting at once and stops
routing an ended one at once, without waiting for its table refresh."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
import redis.asyncio as redis
from db_support import _migrate, fresh_schema, run
from lxml import etree
from prometheus_client import REGISTRY
from tests_support import free_port

from b3lb import events as events_module
from b3lb.events import MeetingEvents, derive_channel
from b3lb.meetings import MeetingRef
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
            await other.nodes.aclose()
            await pool.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_failed_call_on_another_instance_asks_the_poller_for_an_extra_poll(db_url):
    """Issue 9.3 across instances: only the polling instance judges nodes; another instance whose
    call to a node failed asks it (through Redis) to poll that node at once, once per gap."""
    if not await redis_available():
        pytest.skip(f"no Redis at {REDIS_URL}")
    channel = "b3lb:test:" + secrets.token_hex(4)
    async with Harness(db_url, nodes=1) as h:
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
        other = Runtime(h.config, pool)  # does not poll
        await other.refresh_directory()
        h.runtime.events = MeetingEvents(h.runtime, REDIS_URL, channel)
        other.events = MeetingEvents(other, REDIS_URL, channel)
        ready = asyncio.Event()
        listener = asyncio.ensure_future(h.runtime.events.listen(ready))
        node = h.fleet.nodes[0]
        node_id = next(iter(h.runtime.loads.nodes))
        try:
            await asyncio.wait_for(ready.wait(), 5)
            polls = len([r for r in node.requests if r.call.endswith("getMeetings")])
            for _ in range(5):
                other.suspect_node(node_id, "test")
            assert await eventually(
                lambda: len([r for r in node.requests if r.call.endswith("getMeetings")]) == polls + 1
            )
            await asyncio.sleep(0.3)
            assert len([r for r in node.requests if r.call.endswith("getMeetings")]) == polls + 1
            assert h.runtime.loads.nodes[node_id].failures == 0  # the extra poll went well
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await other.stop()
            await h.runtime.events.close()
            h.runtime.events = None
            await pool.close()


# -- one channel per deployment (issue 9, item 7) ------------------------------------------------


def redis_db(number: int) -> str:
    """REDIS_URL with another DB number: pub/sub ignores it, which is what these tests are about."""
    base, _, last = REDIS_URL.rpartition("/")
    return f"{base}/{number}" if last.isdigit() else f"{REDIS_URL.rstrip('/')}/{number}"


@pytest.fixture
def second_db_url(pg_url: str) -> Iterator[str]:
    """Another deployment's database: a second migrated schema."""
    with fresh_schema(pg_url) as url:
        run(_migrate(url))
        yield url


@pytest.mark.gen_test(timeout=60)
async def test_two_deployments_on_one_redis_do_not_apply_each_others_events(db_url, second_db_url):
    if not await redis_available():
        pytest.skip(f"no Redis at {REDIS_URL}")
    # Two deployments (own schemas, so the same secret and node ids) on one Redis, DB 1 and DB 2.
    async with Harness(db_url, nodes=1) as one, Harness(second_db_url, nodes=1) as two:
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
        sibling = Runtime(one.config, pool)  # a second instance of deployment one: it must hear
        await sibling.refresh_directory()
        one.runtime.events = MeetingEvents(one.runtime, redis_db(1))
        sibling.events = MeetingEvents(sibling, redis_db(1))
        two.runtime.events = MeetingEvents(two.runtime, redis_db(2))
        ready = [asyncio.Event(), asyncio.Event()]
        listeners = [asyncio.ensure_future(sibling.events.listen(ready[0])),
                     asyncio.ensure_future(two.runtime.events.listen(ready[1]))]
        try:
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 5)
            secret_id = one.tenants["ABC"].secrets[0][0]
            assert two.tenants["ABC"].secrets[0][0] == secret_id  # ids collide across deployments
            r = await one.call("create", "name=Room&meetingID=room-1")
            assert etree.fromstring(r.body).findtext("returncode") == "SUCCESS"
            assert await eventually(lambda: sibling.meetings.get(secret_id, "room-1") is not None)
            heard = sibling.meetings.get(secret_id, "room-1")
            assert heard.via_event  # routing hint only: the database stays authoritative
            await asyncio.sleep(0.3)  # the other deployment had as long as the sibling, and more
            assert two.runtime.events.received == 0
            assert two.runtime.meetings.get(secret_id, "room-1") is None
            r = await two.call("join", "fullName=Ann&meetingID=room-1&role=VIEWER")
            assert r.code != 302
            assert sibling.events.channel == await one.runtime.events.channel_name()
            assert two.runtime.events.channel != sibling.events.channel
        finally:
            for listener in listeners:
                listener.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)
            for events in (sibling.events, one.runtime.events, two.runtime.events):
                await events.close()
            one.runtime.events = two.runtime.events = None
            await sibling.nodes.aclose()
            await pool.close()


@pytest.mark.gen_test(timeout=30)
async def test_derived_channel_is_stable_and_a_configured_one_wins(db_url):
    channels = []
    for _ in range(2):  # two starts of the same deployment
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
        try:
            channels.append(await derive_channel(pool))
        finally:
            await pool.close()
    assert channels[0] == channels[1] and channels[0].startswith("b3lb:meetings:")
    async with Harness(db_url, nodes=1) as h:
        derived = MeetingEvents(h.runtime, REDIS_URL)
        assert await derived.channel_name() == channels[0]
        config = dataclasses.replace(h.config, redis=dataclasses.replace(h.config.redis, channel="site-a:events"))
        h.runtime.config = config
        configured = MeetingEvents(h.runtime, REDIS_URL)
        assert await configured.channel_name() == "site-a:events"
        for events in (derived, configured):
            await events.close()


def redis_errors() -> float:
    return REGISTRY.get_sample_value("b3lb_redis_errors_total") or 0.0


@pytest.mark.gen_test(timeout=30)
async def test_unreachable_redis_is_logged_once_not_per_event(db_url, caplog, monkeypatch):
    monkeypatch.setattr(events_module, "RECONNECT_PAUSE", 0.02)
    caplog.set_level(logging.INFO, logger="b3lb")
    async with Harness(db_url, nodes=1) as h:
        events = MeetingEvents(h.runtime, f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
        errors = redis_errors()
        listener = asyncio.ensure_future(events.listen())
        try:
            ref = MeetingRef(id=1, secret_id=1, meeting_id="m", node_id=1, nonce=uuid.uuid4())
            for _ in range(50):
                await events.publish("created", ref)
            await asyncio.sleep(0.3)  # a dozen subscription attempts fail meanwhile
            assert len([r for r in caplog.records if "cannot publish meeting events" in r.getMessage()]) == 1
            assert len([r for r in caplog.records if "meeting events from Redis interrupted" in r.getMessage()]) == 1
            assert redis_errors() - errors >= 50 + 2
            assert events.publishing.down and events.subscription.down
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await events.close()


@pytest.mark.gen_test(timeout=60)
async def test_redis_outage_is_logged_when_it_starts_and_when_it_ends(db_url, caplog, monkeypatch, tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary to run a private Redis that the test can stop")
    monkeypatch.setattr(events_module, "RECONNECT_PAUSE", 0.05)
    caplog.set_level(logging.INFO, logger="b3lb")
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(tmp_path)]

    def lines(text: str) -> int:
        return len([r for r in caplog.records if text in r.getMessage()])

    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    async with Harness(db_url, nodes=1) as h:
        events = MeetingEvents(h.runtime, f"redis://127.0.0.1:{port}/0")
        ready = asyncio.Event()
        listener = asyncio.ensure_future(events.listen(ready))
        ref = MeetingRef(id=1, secret_id=1, meeting_id="m", node_id=1, nonce=uuid.uuid4())
        try:
            assert await eventually(ready.is_set, 10)
            server.terminate()
            server.wait(10)
            for _ in range(30):
                await events.publish("created", ref)
            assert await eventually(lambda: events.subscription.down, 5)
            await asyncio.sleep(0.3)
            assert (lines("cannot publish meeting events"), lines("meeting events from Redis interrupted")) == (1, 1)
            server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            assert await eventually(lambda: not events.subscription.down, 10)
            for _ in range(100):  # bounded: until the restarted server accepts
                await events.publish("created", ref)
                if not events.publishing.down:
                    break
                await asyncio.sleep(0.05)
            assert lines("Redis (publishing meeting events) available again") == 1
            assert lines("Redis (meeting events subscription) available again") == 1
            assert (lines("cannot publish meeting events"), lines("meeting events from Redis interrupted")) == (1, 1)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await events.close()
            server.terminate()
            server.wait(10)
