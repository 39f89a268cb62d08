"""Record sets as create makes them and the end callback drops them (issue 10.1, spec 3.5, 3.2)."""

from __future__ import annotations

import uuid

import pytest
from api_helpers import all_sent, create, create_ok, meeting_rows, pairs, q, sent

from b3lb.testing.harness import Harness

READY = "https://gl.example/recording_ready?token=abc"
END = "https://gl.example/meeting_ended"


async def record_sets(h: Harness) -> list[dict[str, object]]:
    assert h.pool is not None
    return [dict(r) for r in await h.pool.fetch("SELECT * FROM record_set ORDER BY created_at")]


@pytest.mark.gen_test(timeout=30)
async def test_create_of_a_recording_tenant_makes_its_record_set(db_url):
    async with Harness(db_url, nodes=1) as h:
        await h.pool.execute("UPDATE tenant SET record_by_default = true")
        await h.reload()
        extra = q(record="true", **{"meta_bbb-recording-ready-url": READY, "meta_endCallbackUrl": END})
        await create_ok(h, "rec-1", name="Weekly Sync", extra=extra)
        (meeting,) = await meeting_rows(h, "rec-1")
        (rs,) = await record_sets(h)
        assert rs["id"] == str(meeting["nonce"]) and rs["nonce"] == meeting["nonce"]
        assert rs["status"] == "UNKNOWN" and rs["secret_id"] == h.tenants["ABC"].secrets[0][0]
        assert (rs["meeting_id"], rs["tenant_slug"], rs["meta_name"]) == ("rec-1", "ABC", "Weekly Sync")
        assert rs["ready_url"] == READY and rs["end_callback_url"] == END
        sent = dict(pairs(all_sent(h, "create")[0]))
        assert sent["meta_b3lb-recordset"] == rs["id"] and "meta_bbb-recording-ready-url" not in sent

        # A duplicate create moves nothing and makes no second set.
        await create_ok(h, "rec-1", name="Weekly Sync", extra=q(**{"meta_bbb-recording-ready-url": "https://x.example/"}))
        (again,) = await record_sets(h)
        assert again["ready_url"] == READY


@pytest.mark.gen_test(timeout=30)
async def test_no_record_set_without_recording(db_url):
    async with Harness(db_url, nodes=1) as h:
        await create_ok(h, "plain", extra=q(record="true", **{"meta_bbb-recording-ready-url": READY}))
        assert await record_sets(h) == []
        sent = dict(pairs(all_sent(h, "create")[0]))
        assert sent["record"] == "false" and "meta_b3lb-recordset" not in sent


@pytest.mark.gen_test(timeout=30)
async def test_a_create_the_node_refuses_leaves_no_record_set(db_url):
    async with Harness(db_url, nodes=1) as h:
        await h.pool.execute("UPDATE tenant SET record_by_default = true")
        await h.reload()
        h.fleet.nodes[0].mode = "failed"  # the node answers FAILED: nothing runs anywhere
        r = await create(h, "refused", "Room", "record=true")
        assert r.code == 200 and b"FAILED" in r.body
        assert await meeting_rows(h, "refused") == []
        assert await record_sets(h) == []  # nothing will ever be uploaded for a meeting that never ran


@pytest.mark.gen_test(timeout=30)
async def test_end_callback_without_recording_marks_drops_the_set(db_url):
    async with Harness(db_url, nodes=1) as h:
        await h.pool.execute("UPDATE tenant SET record_by_default = true")
        await h.reload()
        await create_ok(h, "kept", extra="record=true")
        await create_ok(h, "dropped", extra="record=true")
        by_meeting = {rs["meeting_id"]: rs for rs in await record_sets(h)}
        for meeting_id, marks in (("kept", "true"), ("dropped", "false")):
            nonce = by_meeting[meeting_id]["id"]
            r = await h.request(f"/b3lb/b/meeting/end?nonce={nonce}&meetingID={meeting_id}&recordingmarks={marks}")
            assert r.code == 204
        # A wrong meeting ID with a real nonce drops nothing.
        r = await h.request(f"/b3lb/b/meeting/end?nonce={by_meeting['kept']['id']}&meetingID=other"
                            "&recordingmarks=false")
        assert r.code == 204
        assert [rs["meeting_id"] for rs in await record_sets(h)] == ["kept"]
        # An unknown nonce changes nothing either.
        r = await h.request(f"/b3lb/b/meeting/end?nonce={uuid.uuid4()}&meetingID=kept&recordingmarks=false")
        assert r.code == 204 and len(await record_sets(h)) == 1


@pytest.mark.gen_test(timeout=30)
async def test_a_create_moved_to_another_node_keeps_one_record_set(db_url):
    async with Harness(db_url, nodes=2) as h:
        await h.pool.execute("UPDATE tenant SET record_by_default = true")
        await h.reload()
        bad = h.fleet.nodes[0]
        bad.call_modes = {"create": "error"}  # fails every create with HTTP 500: the create moves on
        created = 0
        while not sent(bad, "create") and created < 20:  # until a create was placed on the bad node first
            await create_ok(h, f"moved-{created}", extra="record=true")
            created += 1
        assert sent(bad, "create")
        rows = await meeting_rows(h)
        sets = await record_sets(h)
        assert len(rows) == created and sorted(str(r["nonce"]) for r in rows) == sorted(rs["id"] for rs in sets)


@pytest.mark.gen_test(timeout=30)
async def test_the_ready_url_is_taken_out_in_any_spelling(db_url):
    async with Harness(db_url, nodes=1) as h:
        await h.pool.execute("UPDATE tenant SET record_by_default = true")
        await h.reload()
        await create_ok(h, "spelt", extra=q(record="true", **{"meta_BBB-Recording-Ready-URL": READY}))
        sent = [k.lower() for k, _ in pairs(all_sent(h, "create")[0])]
        assert "meta_bbb-recording-ready-url" not in sent
        (rs,) = await record_sets(h)
        assert rs["ready_url"] == READY
