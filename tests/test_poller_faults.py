"""Values and rows from nodes that the database would refuse (issue 9, item 4): they are cut to fit,
one refused row or statement spoils only itself, and the poller's view of node health survives a
reload of the node table when it could not be stored."""

from __future__ import annotations

import pytest
from lxml import etree

from b3lb.testing.harness import Harness


def xml(response):
    return etree.fromstring(response.body)


async def create(h: Harness, meeting_id: str, extra: str = "") -> None:
    r = await h.call("create", f"name=Room+{meeting_id}&meetingID={meeting_id}{extra}")
    assert xml(r).findtext("returncode") == "SUCCESS", r.body


def entry(h: Harness, index: int = 0):
    node = h.fleet.nodes[index]
    return next(e for e in h.runtime.loads.nodes.values() if e.node.domain == node.domain)


async def stored_state(h: Harness, index: int = 0) -> tuple[bool, bool]:
    """(has_errors in the database, has_errors in memory)"""
    node = h.fleet.nodes[index]
    in_db = await h.pool.fetchval("SELECT has_errors FROM node WHERE domain = $1", node.domain)
    return in_db, entry(h, index).node.has_errors


@pytest.mark.gen_test(timeout=60)
async def test_a_tenants_overlong_origin_is_cut_and_the_node_recovers(db_url):
    async with Harness(db_url, nodes=1) as h:
        long_origin = "o" * 300
        await create(h, "long", f"&meta_bbb-origin={long_origin}&meta_bbb-origin-server-name={'s' * 250}")
        await create(h, "plain", "&meta_bbb-origin=Greenlight&meta_bbb-origin-server-name=gl.example")
        node = h.fleet.nodes[0]
        node.set_down()
        await h.poll()
        await h.poll()
        assert await stored_state(h) == (True, True)
        node.set_up()
        await h.poll()
        await h.poll()
        assert await stored_state(h) == (False, False)
        await h.reload()  # the directory refresh keeps the recovery
        assert await stored_state(h) == (False, False)
        row = await h.pool.fetchrow("SELECT origin, origin_server_name FROM meeting WHERE meeting_id = 'long'")
        assert (row["origin"], row["origin_server_name"]) == ("o" * 200, "s" * 200)
        stats = await h.pool.fetch("SELECT origin FROM stats ORDER BY origin")
        assert [r["origin"] for r in stats] == ["Greenlight", "o" * 200]
        r = await h.call("getMeetings", "")
        assert len(xml(r).findall("meetings/meeting")) == 2  # the node's own element is served unchanged


@pytest.mark.gen_test(timeout=60)
async def test_nul_characters_from_a_node_do_not_spoil_the_cycle(db_url):
    async with Harness(db_url, nodes=1) as h:
        await create(h, "nul", "&meta_bbb-origin=ab&meta_bbb-origin-server-name=x")
        # BBB strips control characters from parameters, but a broken node's document may carry a raw NUL
        fake = h.fleet.nodes[0]
        document = fake.meetings_document()
        assert b"<bbb-origin>ab</bbb-origin>" in document
        fake._meetings_document = document.replace(b"<bbb-origin>ab<", b"<bbb-origin>a\x00b<")
        await h.poll()
        assert await stored_state(h) == (False, False)
        row = await h.pool.fetchrow("SELECT origin, xml FROM meeting WHERE meeting_id = 'nul'")
        assert row["origin"] == "ab" and "\x00" not in row["xml"] and "<meetingID>nul</meetingID>" in row["xml"]


@pytest.mark.gen_test(timeout=60)
async def test_one_refused_meeting_row_spoils_only_itself(db_url):
    """A row the database refuses (here: a constraint the test adds) is skipped; the other
    meetings (with their elements), the node's state and the stats are stored all the same."""
    async with Harness(db_url, nodes=1) as h:
        await h.pool.execute("ALTER TABLE meeting ADD CONSTRAINT poison CHECK (origin <> 'poison')")
        await create(h, "bad", "&meta_bbb-origin=poison&meta_bbb-origin-server-name=x")
        await create(h, "good", "&meta_bbb-origin=fine&meta_bbb-origin-server-name=x")
        h.fleet.nodes[0].add_attendees("good", 3)
        await h.poll()
        rows = {r["meeting_id"]: r for r in await h.pool.fetch("SELECT * FROM meeting")}
        assert rows["good"]["origin"] == "fine" and rows["good"]["attendees"] == 3
        assert rows["bad"]["origin"] == ""
        node = await h.pool.fetchrow("SELECT attendees, meetings, last_poll_ok FROM node")
        assert (node["attendees"], node["meetings"]) == (3, 2) and node["last_poll_ok"] is not None
        assert "<meetingID>good</meetingID>" in rows["good"]["xml"] and rows["bad"]["xml"] is None
        assert await h.pool.fetchval("SELECT attendees FROM stats WHERE origin = 'fine'") == 3


@pytest.mark.gen_test(timeout=60)
async def test_a_reload_does_not_undo_a_recovery_the_poller_could_not_store(db_url):
    async with Harness(db_url, nodes=1) as h:
        node = h.fleet.nodes[0]
        node.set_down()
        await h.poll()
        await h.poll()
        assert await stored_state(h) == (True, True)
        # From now on the database refuses every write of node rows
        await h.pool.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused by test'; END $$"
        )
        await h.pool.execute("CREATE TRIGGER refuse BEFORE UPDATE ON node FOR EACH ROW EXECUTE FUNCTION refuse()")
        node.set_up()
        await h.poll()
        await h.poll()
        assert await stored_state(h) == (True, False)  # recovered, not stored
        await h.reload()
        assert await stored_state(h) == (True, False)  # the reload keeps the poller's verdict
        await h.pool.execute("DROP TRIGGER refuse ON node")
        await h.poll()
        assert await stored_state(h) == (False, False)
        await h.reload()
        assert await stored_state(h) == (False, False)


@pytest.mark.gen_test(timeout=60)
async def test_a_change_the_database_refused_is_written_by_the_next_cycle(db_url):
    """A meeting that looks as it did one poll ago is skipped only when its row holds that very element:
    after a refused write the next cycle writes it, although the node reports nothing new."""
    async with Harness(db_url, nodes=1) as h:
        await create(h, "room", "")
        await h.poll()
        await h.pool.execute("ALTER TABLE meeting ADD CONSTRAINT not_four CHECK (attendees <> 4)")
        h.fleet.nodes[0].add_attendees("room", 4)
        await h.poll()  # refused: the row keeps 0 attendees
        assert await h.pool.fetchval("SELECT attendees FROM meeting WHERE meeting_id = 'room'") == 0
        await h.pool.execute("ALTER TABLE meeting DROP CONSTRAINT not_four")
        await h.poll()  # the node's document is unchanged since the last poll
        row = await h.pool.fetchrow("SELECT attendees, xml FROM meeting WHERE meeting_id = 'room'")
        assert row["attendees"] == 4 and "<participantCount>4</participantCount>" in row["xml"]
