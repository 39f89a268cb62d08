"""What the recordings API never gives away and never lets grow (review of issue 10): a set's nonce
(the node's upload credential) appears in no answer a tenant gets; a recording's metadata is bounded
after updates; an unpaged getRecordings lists at most api.MAX_UNPAGED recordings."""

from __future__ import annotations

import orjson
import pytest
from api_helpers import q
from recording_rows import call, profile, public_id, record_ids, record_set, root, video
from test_upload import form, metadata_xml, upload

from b3lb.recordings import api
from b3lb.testing.harness import Harness

TOO_BIG = [("returncode", "FAILED"), ("messageKey", "sizeError"),
           ("message", "Recording metadata is limited to 4096 bytes.")]  # fmt: skip
TOO_MANY = [("returncode", "FAILED"), ("messageKey", "sizeError"),
            ("message", "Recording metadata is limited to 100 keys.")]  # fmt: skip


def top(result: object) -> list[tuple[str, str | None]]:
    return [(c.tag, c.text) for c in root(result)]  # type: ignore[arg-type]


async def recording_harness(db_url: str) -> Harness:
    h = Harness(db_url, nodes=1)
    await h.__aenter__()
    await h.pool.execute("UPDATE tenant SET record_by_default = true")
    await h.reload()
    return h


def secret_id(h: Harness) -> int:
    return h.tenants["ABC"].secrets[0][0]


async def metadata(h: Harness, table: str, row_id: object) -> dict[str, str]:
    found: str = await h.pool.fetchval(f"SELECT metadata::text FROM {table} WHERE id = $1", row_id)
    return orjson.loads(found)


# The nonce ---------------------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_no_recordings_answer_shows_a_sets_nonce(db_url):
    h = await recording_harness(db_url)
    try:
        create = q(meetingID="room-42", name="Weekly Sync", record="true",
                   **{"meta_endCallbackUrl": "https://gl.example/end", "meta_bbb-recording-ready-url": "https://gl/r"})
        answers = [(await h.call("create", create)).body]
        nonce = await h.pool.fetchval("SELECT id FROM record_set")
        forms = (nonce, nonce.upper(), nonce.replace("-", ""))
        # The node's metadata.xml carries the nonce (meta_b3lb-recordset and its copy of the end callback).
        node_meta = (f"<b3lb-recordset>{nonce}</b3lb-recordset><B3LB-RecordSet>{nonce}</B3LB-RecordSet>"
                     f"<endcallbackurl>https://lb.test/b3lb/b/meeting/end?nonce={nonce}</endcallbackurl>")
        response = await upload(h, f"?nonce={nonce}", form(("file", b"tar" * 1000), ("meta", metadata_xml(
            extra=node_meta))))  # fmt: skip
        assert response.code == 204
        recording_id = await public_id(h.pool, nonce)
        for state in ("any", "processing", "published,unpublished,processing"):
            answers.append((await h.call("getRecordings", q(state=state))).body)
        answers.append((await h.call("getRecordings", q(state="any", meetingID="room-42"))).body)
        listed = await h.call("getRecordings", q(state="processing", recordID=recording_id[:8]))
        assert record_ids(listed) == [recording_id]
        answers.append(listed.body)
        # The nonce is no recordID, and the recordID is no upload credential.
        assert record_ids(await call(h, "getRecordings", q(state="any", recordID=nonce))) == []
        assert (await upload(h, f"?nonce={recording_id}", form(("file", b"x"), ("meta", metadata_xml())))).code == 404
        answers.append((await h.call("updateRecordings", q(recordID=recording_id, meta_x="y"))).body)
        # Rendered: the record's answer shows none of it either.
        rec = await video(h, nonce, await profile(h.pool))
        answers.append((await h.call("getRecordings", q(state="any"))).body)
        answers.append((await h.call("getRecordingTextTracks", q(recordID=rec.record_id))).body)
        answers.append((await h.call("getRecordings", q(recordID=rec.record_id))).body)
        assert all(b"<returncode>SUCCESS" in a or b'"SUCCESS"' in a for a in answers)
        leaks = [(n, a[:200]) for a in answers for n in forms if n.encode() in a]
        assert leaks == []
    finally:
        await h.__aexit__()


@pytest.mark.gen_test(timeout=60)
async def test_no_meeting_answer_shows_a_sets_nonce(db_url):
    h = await recording_harness(db_url)
    try:
        assert b"SUCCESS" in (await h.call("create", q(meetingID="room-42", name="Weekly Sync", record="true"))).body
        nonce = await h.pool.fetchval("SELECT id FROM record_set")
        for call_name, query in (("getMeetingInfo", q(meetingID="room-42")), ("getMeetings", "")):
            body = (await h.call(call_name, query)).body
            assert b"SUCCESS" in body and nonce.encode() not in body, call_name
    finally:
        await h.__aexit__()


# Metadata size -----------------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_update_refuses_metadata_past_4096_bytes(db_url):
    h = await recording_harness(db_url)
    try:
        hd = await profile(h.pool)
        rec = await video(h, await record_set(h.pool, secret_id(h), "room-1"), hd)
        small = await video(h, await record_set(h.pool, secret_id(h), "room-2"), hd)
        waiting_set = await record_set(h.pool, secret_id(h), "room-3")
        waiting = await public_id(h.pool, waiting_set)
        for target in (rec.record_id, waiting):
            ok = await call(h, "updateRecordings", q(recordID=target, meta_big="v" * 2000))
            assert top(ok)[1] == ("updated", "true")
        before = {r.record_id: await metadata(h, "record", r.id) for r in (rec, small)}
        before_set = await metadata(h, "record_set", waiting_set)
        # One more 2000-character value: past 4096 bytes; refused for all recordIDs of the call, name too.
        for ids in (rec.record_id, f"{small.record_id},{rec.record_id}", waiting):
            refused = await call(h, "updateRecordings", q(recordID=ids, meta_more="w" * 2000, meta_name="New"))
            assert top(refused) == TOO_BIG, ids
        assert {r.record_id: await metadata(h, "record", r.id) for r in (rec, small)} == before
        assert await metadata(h, "record_set", waiting_set) == before_set
        assert await h.pool.fetchval("SELECT count(*) FROM record WHERE meta_name = 'New'") == 0
        # Up to the limit it is taken.
        size = len(orjson.dumps(before[rec.record_id], option=orjson.OPT_NON_STR_KEYS))
        fits = q(recordID=rec.record_id, meta_more="w" * (4096 - size - 200))
        assert top(await call(h, "updateRecordings", fits))[1] == ("updated", "true")
        stored = await h.pool.fetchval("SELECT octet_length(metadata::text) FROM record WHERE id = $1", rec.id)
        assert 3500 < stored <= 4096
    finally:
        await h.__aexit__()


@pytest.mark.gen_test(timeout=60)
async def test_metadata_already_past_the_limit_may_shrink_not_grow(db_url):
    """A node's metadata.xml may bring more than an update may: such a record can still be changed
    as long as the update does not make it bigger."""
    h = await recording_harness(db_url)
    try:
        rec = await video(h, await record_set(h.pool, secret_id(h), metadata={"a": "x" * 3000, "b": "y" * 3000}),
                          await profile(h.pool))  # fmt: skip
        assert top(await call(h, "updateRecordings", q(recordID=rec.record_id, meta_c="z"))) == TOO_BIG
        same_size = q(recordID=rec.record_id, meta_a="q" * 3000)
        assert top(await call(h, "updateRecordings", same_size))[1] == ("updated", "true")
        assert top(await call(h, "updateRecordings", q(recordID=rec.record_id, meta_b="")))[1] == ("updated", "true")
        assert "b" not in await metadata(h, "record", rec.id)
        assert top(await call(h, "updateRecordings", q(recordID=rec.record_id, meta_c="z")))[1] == ("updated", "true")
    finally:
        await h.__aexit__()


@pytest.mark.gen_test(timeout=60)
async def test_update_refuses_more_than_100_keys(db_url):
    h = await recording_harness(db_url)
    try:
        many = {f"k{n}": "v" for n in range(60)}
        rec = await video(h, await record_set(h.pool, secret_id(h), metadata=many), await profile(h.pool))
        keys = len(await metadata(h, "record", rec.id))
        assert keys < 100
        grow = q(("recordID", rec.record_id), *((f"meta_n{n}", "v") for n in range(101 - keys)))
        assert top(await call(h, "updateRecordings", grow)) == TOO_MANY
        assert len(await metadata(h, "record", rec.id)) == keys
        fits = q(("recordID", rec.record_id), *((f"meta_n{n}", "v") for n in range(100 - keys)))
        assert top(await call(h, "updateRecordings", fits))[1] == ("updated", "true")
        assert len(await metadata(h, "record", rec.id)) == 100
    finally:
        await h.__aexit__()


# Unpaged listing ---------------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_an_unpaged_listing_stops_at_10000(db_url):
    assert api.MAX_UNPAGED == 10_000
    h = await recording_harness(db_url)
    try:
        await h.pool.execute(
            """INSERT INTO record_set (id, nonce, secret_id, meeting_id, tenant_slug, status, created_at)
               SELECT n::text, n, $1, 'bulk', 'ABC', 'UPLOADED', now() + make_interval(secs => i)
               FROM (SELECT gen_random_uuid() AS n, i FROM generate_series(1, 10001) i) g""",
            secret_id(h))
        listed = record_ids(await call(h, "getRecordings", q(state="processing")))
        assert len(listed) == 10_000
        last = await h.pool.fetchval("SELECT public_id::text FROM record_set ORDER BY created_at DESC LIMIT 1")
        assert last not in listed  # in creation order: the newest is past the cap
        paged = record_ids(await call(h, "getRecordings", q(state="processing", offset="10000", limit="500")))
        assert paged == [last]
        assert len(record_ids(await call(h, "getRecordings", q(state="processing", limit="500")))) == 100
    finally:
        await h.__aexit__()
