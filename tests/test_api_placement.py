"""Node choice for new meetings, tenant isolation and limits (spec 2.1, 4.13, 6, 7.12, 7.20, 7.21)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from api_helpers import (
    LIMIT_REACHED,
    NO_NODE,
    NOT_FOUND,
    NOT_RUNNING,
    children,
    create,
    create_ok,
    hosting,
    meeting_rows,
    node_id,
    owner,
    set_node,
    xml,
)

from b3lb.testing.harness import Harness, add_secret


def spread(h: Harness) -> Counter[str]:
    return Counter({n.name: len(n.meetings) for n in h.fleet.nodes})


@pytest.mark.gen_test(timeout=30)
async def test_sequential_creates_use_every_node(db_url):
    async with Harness(db_url, nodes=4) as h:
        for i in range(40):
            await create_ok(h, f"seq-{i}")
            await h.poll()
        counts = spread(h)
        assert sum(counts.values()) == 40
        assert all(counts[n.name] >= 1 for n in h.fleet.nodes), counts
        assert max(counts.values()) <= 24, counts


@pytest.mark.gen_test(timeout=30)
async def test_ties_are_broken_at_random(db_url):
    async with Harness(db_url, nodes=4) as h:
        group = next(iter(h.runtime.loads.group_nodes))
        picks = Counter(h.runtime.loads.choose(group).node.slug for _ in range(400))
        assert set(picks) == {n.name for n in h.fleet.nodes}, picks
        assert max(picks.values()) < 200, picks
        # The first creates of an idle fleet land on distinct nodes, in random order.
        firsts = []
        for i in range(4):
            await create_ok(h, f"first-{i}")
            firsts.append(owner(h, f"first-{i}").name)
        assert sorted(firsts) == sorted(n.name for n in h.fleet.nodes)


@pytest.mark.gen_test(timeout=30)
async def test_a_burst_of_concurrent_creates_spreads(db_url):
    async with Harness(db_url, nodes=4) as h:
        results = await asyncio.gather(*(create(h, f"burst-{i}") for i in range(20)))
        assert all(xml(r).findtext("returncode") == "SUCCESS" for r in results)
        counts = spread(h)
        assert sum(counts.values()) == 20
        assert max(counts.values()) <= 8 and min(counts.values()) >= 2, counts
        assert sum(e.pending_meetings for e in h.runtime.loads.nodes.values()) == 20


@pytest.mark.gen_test(timeout=30)
async def test_concurrent_creates_of_one_meeting_make_one_meeting(db_url):
    async with Harness(db_url, nodes=4) as h:
        results = await asyncio.gather(*(create(h, "same") for _ in range(8)))
        assert all(xml(r).findtext("returncode") == "SUCCESS" for r in results), [r.body for r in results]
        assert len(hosting(h, "same")) == 1
        assert len(await meeting_rows(h, "same")) == 1
        assert sum(e.pending_meetings for e in h.runtime.loads.nodes.values()) == 1


@pytest.mark.gen_test(timeout=30)
async def test_maintenance_and_error_nodes_are_never_chosen(db_url):
    async with Harness(db_url, nodes=3, add_message_keys=False) as h:
        a, b, c = h.fleet.nodes
        await set_node(h, a, maintenance=True)
        await set_node(h, b, has_errors=True)
        for i in range(10):
            await create_ok(h, f"m-{i}")
        assert len(c.meetings) == 10 and not a.meetings and not b.meetings
        # Maintenance keeps serving existing meetings.
        await set_node(h, c, maintenance=True)
        r = await h.call("join", "meetingID=m-0&fullName=Ann&role=VIEWER")
        assert r.code == 302 and c.domain in r.headers["Location"]
        assert xml(await create(h, "m-0")).findtext("messageKey") == "duplicateWarning"
        r = await create(h, "new")
        assert r.code == 200 and children(r) == NO_NODE
        assert await meeting_rows(h, "new") == []


@pytest.mark.gen_test(timeout=30)
async def test_no_node_message_key_behind_the_flag(db_url):
    async with Harness(db_url, nodes=1, add_message_keys=True) as h:
        await set_node(h, h.fleet.nodes[0], maintenance=True)
        r = await create(h, "x1")
        assert children(r) == [
            ("returncode", "FAILED"),
            ("messageKey", "noNodeAvailable"),
            ("message", "No Node available."),
        ]


@pytest.mark.gen_test(timeout=30)
async def test_same_meeting_id_under_two_tenants_is_two_meetings(db_url):
    async with Harness(db_url, nodes=2, tenants=("ABC", "XYZ")) as h:
        await create_ok(h, "shared", extra="attendeePW=a1&moderatorPW=m1")
        await create_ok(h, "shared", extra="attendeePW=a2&moderatorPW=m2", slug="XYZ")
        nodes = hosting(h, "shared")
        assert len(nodes) == 2
        abc_node = next(n for n in nodes if n.meetings["shared"].attendee_pw == "a1")
        xyz_node = next(n for n in nodes if n.meetings["shared"].attendee_pw == "a2")
        r = await h.call("join", "meetingID=shared&fullName=A&role=VIEWER")
        assert abc_node.domain in r.headers["Location"]
        r = await h.call("join", "meetingID=shared&fullName=X&role=VIEWER", slug="XYZ")
        assert xyz_node.domain in r.headers["Location"]
        # Only ABC's meeting exists on a node: XYZ cannot see, join or end it.
        await create_ok(h, "abc-only")
        r = await h.call("join", "meetingID=abc-only&fullName=X&redirect=false", slug="XYZ")
        assert xml(r).findtext("messageKey") == "invalidMeetingIdentifier"
        assert children(await h.call("getMeetingInfo", "meetingID=abc-only", slug="XYZ")) == NOT_FOUND
        assert children(await h.call("isMeetingRunning", "meetingID=abc-only", slug="XYZ")) == NOT_RUNNING
        assert children(await h.call("end", "meetingID=abc-only", slug="XYZ")) == NOT_FOUND
        await h.poll()
        listed = [m.findtext("meetingID") for m in xml(await h.call("getMeetings", "", slug="XYZ")).iter("meeting")]
        assert listed == ["shared"]
        doc = xml(await h.call("getMeetings", "", slug="XYZ"))
        assert doc.findtext("meetings/meeting/attendeePW") == "a2"
        # Ending XYZ's copy leaves ABC's running.
        r = await h.call("end", "meetingID=shared", slug="XYZ")
        assert xml(r).findtext("messageKey") == "sentEndMeetingRequest"
        assert "shared" in abc_node.meetings and "shared" not in xyz_node.meetings
        assert "abc-only" in owner(h, "abc-only").meetings


@pytest.mark.gen_test(timeout=30)
async def test_same_meeting_id_under_two_secrets_of_one_tenant(db_url):
    async with Harness(db_url, nodes=2) as h:
        await add_secret(h.pool, h.tenants["ABC"], 1)
        await h.reload()
        await create_ok(h, "room")
        await create_ok(h, "room", sub_id=1)
        assert len(hosting(h, "room")) == 2
        assert len(await meeting_rows(h, "room")) == 2
        # With only the first node left, a third secret cannot be placed beside them.
        await add_secret(h.pool, h.tenants["ABC"], 2)
        await h.reload()
        r = await create(h, "room", sub_id=2)
        assert children(r) == NO_NODE


# -- limits (spec 6) -----------------------------------------------------------------------------


async def set_attendees(h: Harness, meeting_id: str, count: int, sub_id: int = 0) -> None:
    """Attendees as the poller would see them: on the fake node and in meeting.attendees."""
    node = next(n for n in h.fleet.nodes if meeting_id in n.meetings)
    node.add_attendees(meeting_id, count - len(node.meetings[meeting_id].attendees))
    secret_id = h.tenants["ABC"].secrets[sub_id][0]
    await h.pool.execute(
        "UPDATE meeting SET attendees = $1 WHERE meeting_id = $2 AND secret_id = $3", count, meeting_id, secret_id
    )
    await h.reload()
    await h.poll()


def hits(h: Harness, sub_id: int = 0) -> tuple[int, int]:
    delta = h.runtime.counters.totals.get(h.tenants["ABC"].secrets[sub_id][0])
    return (0, 0) if delta is None else (delta.meeting_limit_hits, delta.attendee_limit_hits)


@pytest.mark.gen_test(timeout=30)
async def test_tenant_meeting_limit(db_url):
    async with Harness(db_url, nodes=2) as h:
        await add_secret(h.pool, h.tenants["ABC"], 1)
        await h.pool.execute("UPDATE tenant SET meeting_limit = 2")
        await h.reload()
        await create_ok(h, "ma")
        await create_ok(h, "mb", sub_id=1)
        r = await create(h, "mc", sub_id=1)
        assert r.code == 200 and children(r) == LIMIT_REACHED
        assert r.headers["Content-Type"].startswith("text/xml")
        assert hits(h, 0) == (1, 0) and hits(h, 1) == (0, 0)  # tenant trips count on sub_id 0
        assert await meeting_rows(h, "mc") == [] and not hosting(h, "mc")
        assert xml(await create(h, "ma")).findtext("messageKey") == "duplicateWarning"  # duplicates are exempt
        assert xml(await h.call("end", "meetingID=ma")).findtext("returncode") == "SUCCESS"
        await create_ok(h, "mc", sub_id=1)


@pytest.mark.gen_test(timeout=30)
async def test_secret_meeting_limit(db_url):
    async with Harness(db_url, nodes=2, add_message_keys=True) as h:
        await add_secret(h.pool, h.tenants["ABC"], 1, meeting_limit=1)
        await h.reload()
        await create_ok(h, "s1", sub_id=1)
        r = await create(h, "s2", sub_id=1)
        assert children(r) == [
            ("returncode", "FAILED"),
            ("messageKey", "limitReached"),
            ("message", "Meeting/Attendee limit reached."),
        ]
        assert hits(h, 1) == (1, 0) and hits(h, 0) == (0, 0)
        await create_ok(h, "s1", sub_id=1)
        await create_ok(h, "other")  # secret 0 has no secret limit
        await create_ok(h, "other2")


@pytest.mark.gen_test(timeout=30)
async def test_tenant_attendee_limit_trips_at_exactly_the_limit(db_url):
    async with Harness(db_url, nodes=2) as h:
        await add_secret(h.pool, h.tenants["ABC"], 1)
        await h.pool.execute("UPDATE tenant SET attendee_limit = 10")
        await h.reload()
        await create_ok(h, "ma")
        await create_ok(h, "mb", sub_id=1)
        await set_attendees(h, "ma", 4)
        await set_attendees(h, "mb", 5, sub_id=1)
        await create_ok(h, "mc")  # 9 < 10
        await set_attendees(h, "mb", 6, sub_id=1)  # 10 >= 10
        r = await create(h, "md", sub_id=1)
        assert children(r) == LIMIT_REACHED
        assert hits(h, 0) == (0, 1) and hits(h, 1) == (0, 0)
        assert xml(await create(h, "mb", sub_id=1)).findtext("messageKey") == "duplicateWarning"
        # Joins are never limited.
        assert (await h.call("join", "meetingID=ma&fullName=X&role=VIEWER")).code == 302


@pytest.mark.gen_test(timeout=30)
async def test_secret_attendee_limit(db_url):
    async with Harness(db_url, nodes=2) as h:
        await add_secret(h.pool, h.tenants["ABC"], 1, attendee_limit=5)
        await h.reload()
        await create_ok(h, "mx", sub_id=1)
        await set_attendees(h, "mx", 4, sub_id=1)
        await create_ok(h, "my", sub_id=1)
        await set_attendees(h, "my", 1, sub_id=1)
        r = await create(h, "mz", sub_id=1)
        assert children(r) == LIMIT_REACHED
        assert hits(h, 1) == (0, 1)
        await create_ok(h, "mz")  # secret 0 is not limited by secret 1's limit
        await set_attendees(h, "mz", 50)
        await create_ok(h, "zz")


@pytest.mark.gen_test(timeout=30)
async def test_zero_means_unlimited(db_url):
    async with Harness(db_url, nodes=2) as h:
        await add_secret(h.pool, h.tenants["ABC"], 1, meeting_limit=0, attendee_limit=0)
        await h.pool.execute("UPDATE tenant SET meeting_limit = 0, attendee_limit = 0")
        await h.reload()
        await create_ok(h, "first", sub_id=1)
        await set_attendees(h, "first", 30, sub_id=1)
        for i in range(5):
            await create_ok(h, f"more-{i}", sub_id=1)
        assert hits(h, 0) == (0, 0) and hits(h, 1) == (0, 0)


@pytest.mark.gen_test(timeout=30)
async def test_no_node_is_checked_before_limits(db_url):
    async with Harness(db_url, nodes=1) as h:
        await h.pool.execute("UPDATE tenant SET meeting_limit = 1")
        await h.reload()
        await create_ok(h, "ma")
        await set_node(h, h.fleet.nodes[0], maintenance=True)
        assert children(await create(h, "mb")) == NO_NODE
        await set_node(h, h.fleet.nodes[0], maintenance=False)
        assert children(await create(h, "mb")) == LIMIT_REACHED
        assert node_id(h, h.fleet.nodes[0]) in h.runtime.loads.nodes


@pytest.mark.gen_test(timeout=30)
async def test_meeting_limits_hold_for_a_burst_of_concurrent_creates(db_url):
    async with Harness(db_url, nodes=4) as h:
        await add_secret(h.pool, h.tenants["ABC"], 1, meeting_limit=2)
        await h.pool.execute("UPDATE tenant SET meeting_limit = 5")
        await h.reload()
        results = await asyncio.gather(*(create(h, f"s1-{i}", sub_id=1) for i in range(6)))
        codes = Counter(xml(r).findtext("returncode") for r in results)
        assert codes == {"SUCCESS": 2, "FAILED": 4}, [r.body for r in results]
        results = await asyncio.gather(*(create(h, f"s0-{i}") for i in range(6)))
        codes = Counter(xml(r).findtext("returncode") for r in results)
        assert codes == {"SUCCESS": 3, "FAILED": 3}, [r.body for r in results]
        assert len(await meeting_rows(h)) == 5
        assert hits(h, 1) == (4, 0) and hits(h, 0) == (3, 0)


def test_choose_is_the_least_loaded_available_node_random_among_equals() -> None:
    """LoadTable.choose (which passes over a node more loaded than the best so far before any
    other test) against the rule written out: least load among the available, not excluded, not
    avoided nodes (random among equals); only avoided ones left: the least loaded of those."""
    import random
    import time

    from b3lb.balancer import LoadTable, NodeEntry
    from b3lb.models import Cluster, Node

    def reference(table: LoadTable, group: int, exclude: set[int] | None) -> list[NodeEntry]:
        now = time.monotonic()
        usable = [table.nodes[i] for i in table.group_nodes.get(group, ())
                  if table.nodes[i].load >= 0 and not (exclude and i in exclude)]
        fresh = [e for e in usable if not e.avoid_until or e.avoid_until <= now]
        if not fresh:
            avoided = [e for e in usable if e not in fresh]
            return [min(avoided, key=lambda e: e.load)] if avoided else []
        least = min(e.load for e in fresh)
        return [e for e in fresh if e.load == least]

    rng = random.Random(4)
    cluster = Cluster(id=1, name="c", load_a_factor=1.0, load_m_factor=30.0, load_cpu_series_iteratations=6,
                      load_cpu_maximum=5000, sha_algorithm="SHA256")
    for _ in range(3000):
        nodes = [Node(id=i, cluster_id=1, slug=f"n{i}", domain="n.test", secret="s", protocol="http", port=80,
                      bbb_endpoint="/bigbluebutton/api/", load_endpoint="/b3lb/load", cpu_load=0,
                      attendees=rng.randint(0, 3), meetings=rng.randint(0, 2), has_errors=rng.random() < 0.2,
                      maintenance=rng.random() < 0.1) for i in range(1, rng.randint(0, 12) + 1)]
        table = LoadTable()
        table.rebuild([cluster], nodes, [(7, 1)])
        for entry in table.nodes.values():
            if rng.random() < 0.3:
                entry.avoid_until = time.monotonic() + rng.choice([-5, 100])
        exclude = {n.id for n in nodes if rng.random() < 0.2} if rng.random() < 0.5 else None
        expected = reference(table, 7, exclude)
        chosen = table.choose(7, exclude)
        if not expected:
            assert chosen is None
        else:
            assert chosen in expected
