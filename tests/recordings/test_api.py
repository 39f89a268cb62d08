"""The recordings API (spec 2.11-2.15 with the REC choices): scope, filters, XML, and the calls that change
recordings. Calls go to b3lb.recordings.api with a real runtime and database; one test goes through the
HTTP front door as well."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
from api_helpers import q
from recording_rows import call, profile, public_id, record_ids, record_set, root, video

from b3lb.api import handler
from b3lb.outage import is_database_unavailable
from b3lb.recordings import api
from b3lb.recordings.storage import StorageError
from b3lb.testing.harness import Harness, add_secret

NO_RECORDINGS = [
    ("returncode", "SUCCESS"),
    ("recordings", None),
    ("messageKey", "noRecordings"),
    ("message", "There are no recordings for the meeting(s)."),
]
NOT_FOUND = [("returncode", "FAILED"), ("messageKey", "notFound"), ("message", "We could not find recordings")]
MISSING_RECORD_ID = [
    ("returncode", "FAILED"),
    ("messageKey", "missingParamRecordID"),
    ("message", "You must specify a recordID."),
]
MISSING_PUBLISH = [
    ("returncode", "FAILED"),
    ("messageKey", "missingParamPublish"),
    ("message", "You must specify a publish value true or false."),
]


def top(result: object) -> list[tuple[str, str | None]]:
    return [(c.tag, c.text) for c in root(result)]  # type: ignore[arg-type]


def success(result: object, tag: str, value: str) -> bool:
    return top(result) == [("returncode", "SUCCESS"), (tag, value)]


async def recording_harness(db_url: str, tenants: tuple[str, ...] = ("ABC",), **kw: object) -> Harness:
    h = Harness(db_url, nodes=1, tenants=tenants, **kw)  # type: ignore[arg-type]
    await h.__aenter__()
    await h.pool.execute("UPDATE tenant SET record_by_default = true")
    await h.reload()
    return h


def secret_id(h: Harness, slug: str = "ABC", sub_id: int = 0) -> int:
    return h.tenants[slug].secrets[sub_id][0]


# getRecordings: the document ------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_a_recording_has_b3lbs_elements_in_order(db_url):
    h = await recording_harness(db_url)
    try:
        hd = await profile(h.pool, "Full HD")
        set_id = await record_set(h.pool, secret_id(h), end_callback_url="https://gl.example.org/meeting_ended",
                                  minutes=60)  # fmt: skip
        rec = await video(h, set_id, hd, b"x" * 98765, processing_ms=7177)
        result = await call(h, "getRecordings")
        assert result.status == 200 and result.content_type.startswith("text/xml")
        document = root(result)
        assert [c.tag for c in document] == ["returncode", "recordings"]
        (recording,) = document.iterfind("recordings/recording")
        assert [(c.tag, c.text) for c in recording if c.tag not in ("metadata", "playback")] == [
            ("recordID", rec.record_id),
            ("meetingID", "room-42"),
            ("internalMeetingID", "internal-room-42"),
            ("name", "Weekly Sync (Full HD)"),
            ("isBreakout", "false"),
            ("published", "true"),
            ("state", "published"),
            ("startTime", "1731234567890"),
            ("endTime", str(1731234567890 + 3630 * 1000)),
            ("participants", "7"),
            ("rawSize", "123456789"),
            ("size", "98765"),
            ("data", None),
        ]
        assert [c.tag for c in recording] == [
            "recordID", "meetingID", "internalMeetingID", "name", "isBreakout", "published", "state", "startTime",
            "endTime", "participants", "rawSize", "metadata", "size", "playback", "data",
        ]  # fmt: skip
        # Metadata sorted by key; the LB's nonces and the node's end callback never shown, the frontend's is.
        assert [(c.tag, c.text) for c in recording.find("metadata")] == [
            ("bbb-origin", "Greenlight"),
            ("bbb-origin-server-name", "gl.example.org"),
            ("bbb-origin-version", "v3"),
            ("endcallbackurl", "https://gl.example.org/meeting_ended"),
            ("gl-listed", "false"),
            ("isBreakout", "false"),
            ("meetingId", "room-42"),
            ("meetingName", "Weekly Sync"),
        ]
        (fmt,) = recording.find("playback")
        assert [(c.tag, c.text) for c in fmt] == [
            ("type", "presentation"),
            ("url", f"https://lb.test/b3lb/r/{rec.nonce}"),
            ("processingTime", "7177"),
            ("length", "60"),  # whole minutes of 60:30
            ("size", "98765"),
        ]
        assert b"<breakout>" not in result.body and b"<data></data>" in result.body
    finally:
        await h.__aexit__()


@pytest.mark.gen_test(timeout=30)
async def test_no_endcallbackurl_without_one_and_special_characters_survive(db_url):
    h = await recording_harness(db_url)
    try:
        hd = await profile(h.pool)
        set_id = await record_set(h.pool, secret_id(h), "a&b<c>", name='Süß & "Co" <x>',
                                  metadata={"bbb-recording-ready-url": "https://gl/ready?token=t"})  # fmt: skip
        await video(h, set_id, hd)
        result = await call(h, "getRecordings")
        (recording,) = root(result).iterfind("recordings/recording")
        assert recording.findtext("meetingID") == "a&b<c>"
        assert recording.findtext("name") == 'Süß & "Co" <x> (Full HD)'
        tags = [c.tag for c in recording.find("metadata")]
        assert "endcallbackurl" not in tags and "bbb-recording-ready-url" not in tags and "b3lb-recordset" not in tags
        assert b"token=t" not in result.body and b"nonce=secret" not in result.body
    finally:
        await h.__aexit__()


@pytest.mark.gen_test(timeout=30)
async def test_stored_names_and_values_xml_cannot_carry_are_left_out(db_url):
    h = await recording_harness(db_url)
    try:
        rec = await video(h, await record_set(h.pool, secret_id(h)), await profile(h.pool))
        await h.pool.execute(
            """UPDATE record SET meta_name = 'bell' || chr(7) || 'name',
                   metadata = metadata || '{"bad key": "x", "ctl": "a\\u0001b", "fine": "ok"}'::jsonb""")
        result = await call(h, "getRecordings")
        (recording,) = root(result).iterfind("recordings/recording")
        assert recording.findtext("recordID") == rec.record_id and recording.findtext("name") == "bellname"
        meta = {c.tag: c.text for c in recording.find("metadata")}
        assert meta["ctl"] == "ab" and meta["fine"] == "ok" and "bad key" not in meta
    finally:
        await h.__aexit__()


@pytest.mark.gen_test(timeout=30)
async def test_nothing_to_list_and_recording_disabled_answer_no_recordings(db_url):
    h = await recording_harness(db_url)
    try:
        assert top(await call(h, "getRecordings")) == NO_RECORDINGS
        await video(h, await record_set(h.pool, secret_id(h)), await profile(h.pool))
        assert len(record_ids(await call(h, "getRecordings"))) == 1
        await h.pool.execute("UPDATE tenant SET record_by_default = false")
        await h.reload()
        result = await call(h, "getRecordings")
        assert top(result) == NO_RECORDINGS
        assert b"<recordings></recordings>" in result.body
        # A secret's own switch wins over its tenant's.
        await h.pool.execute("UPDATE secret SET record_by_default = true")
        await h.reload()
        assert len(record_ids(await call(h, "getRecordings"))) == 1
    finally:
        await h.__aexit__()


@pytest.mark.gen_test(timeout=30)
async def test_incomplete_hidden_and_deleted_records_are_not_listed(db_url):
    h = await recording_harness(db_url)
    try:
        hd = await profile(h.pool)
        shown = await video(h, await record_set(h.pool, secret_id(h), "shown"), hd)
        empty = await video(h, await record_set(h.pool, secret_id(h), "empty"), hd)
        hiding = await video(h, await record_set(h.pool, secret_id(h), "hiding"), hd)
        dropped_set = await record_set(h.pool, secret_id(h), "dropped")
        await video(h, dropped_set, hd)
        await h.pool.execute("UPDATE record SET size = 0 WHERE id = $1", empty.id)
        await h.pool.execute("UPDATE record SET deleting = true WHERE id = $1", hiding.id)
        await h.pool.execute("UPDATE record_set SET status = 'DELETING' WHERE id = $1", dropped_set)
        assert record_ids(await call(h, "getRecordings")) == [shown.record_id]
        # (the sets of the hidden records are "processing": none of their videos is visible)
        assert dropped_set not in record_ids(await call(h, "getRecordings", q(state="any")))
    finally:
        await h.__aexit__()


# getRecordings: scope --------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_scope_secret_tenant_and_never_another_tenant(db_url):
    h = await recording_harness(db_url, tenants=("ABC", "XYZ"))
    try:
        await add_secret(h.pool, h.tenants["ABC"], 1)
        await h.reload()
        hd = await profile(h.pool)
        main = await video(h, await record_set(h.pool, secret_id(h, "ABC", 0), "same-id"), hd)
        sub = await video(h, await record_set(h.pool, secret_id(h, "ABC", 1), "same-id"), hd)
        other = await video(h, await record_set(h.pool, secret_id(h, "XYZ", 0), "same-id", slug="XYZ"), hd)
        assert sorted(record_ids(await call(h, "getRecordings"))) == sorted([main.record_id, sub.record_id])
        assert record_ids(await call(h, "getRecordings", sub_id=1)) == [sub.record_id]
        assert record_ids(await call(h, "getRecordings", slug="XYZ")) == [other.record_id]
        # By ID or meeting ID, another secret's or tenant's recordings stay invisible.
        assert record_ids(await call(h, "getRecordings", q(recordID=main.record_id), sub_id=1)) == []
        assert record_ids(await call(h, "getRecordings", q(recordID=other.record_id))) == []
        assert record_ids(await call(h, "getRecordings", q(meetingID="same-id"), slug="XYZ")) == [other.record_id]
        for name, extra in (("publishRecordings", {"publish": "false"}), ("updateRecordings", {"meta_x": "y"}),
                            ("deleteRecordings", {})):  # fmt: skip
            assert top(await call(h, name, q(recordID=other.record_id, **extra))) == NOT_FOUND
            assert top(await call(h, name, q(recordID=main.record_id, **extra), sub_id=1)) == NOT_FOUND
        assert sorted(record_ids(await call(h, "getRecordings", q(state="any")))) == sorted(
            [main.record_id, sub.record_id]
        )
        assert await h.pool.fetchval("SELECT count(*) FROM record WHERE published AND NOT deleting") == 3
    finally:
        await h.__aexit__()


# getRecordings: filters ------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_meeting_and_record_id_lists(db_url):
    h = await recording_harness(db_url)
    try:
        hd, sd = await profile(h.pool, "HD"), await profile(h.pool, "SD", "WEBM")
        a_set = await record_set(h.pool, secret_id(h), "room-a")
        a_hd, a_sd = await video(h, a_set, hd), await video(h, a_set, sd)
        b = await video(h, await record_set(h.pool, secret_id(h), "room-b"), hd)
        c = await video(h, await record_set(h.pool, secret_id(h), "room,c"), hd)

        async def ids(**params: str) -> list[str]:
            return sorted(record_ids(await call(h, "getRecordings", q(**params))))

        assert await ids(meetingID="room-a") == sorted([a_hd.record_id, a_sd.record_id])
        assert await ids(meetingID="room-b, room-a ,unknown") == sorted([a_hd.record_id, a_sd.record_id, b.record_id])
        assert await ids(meetingID="room") == []  # meeting IDs are whole
        assert await ids(meetingID="x" * 201) == []
        assert c.record_id not in await ids(meetingID="room,c")  # a comma separates entries
        assert await ids(recordID=b.record_id) == [b.record_id]
        assert await ids(recordID=f"{b.record_id.upper()},{a_sd.record_id}") == sorted([b.record_id, a_sd.record_id])
        # Entries are prefixes (BBB's wildcard); recordID wins over meetingID.
        assert await ids(recordID=b.record_id[:8]) == [b.record_id]
        assert await ids(recordID=b.record_id[:13], meetingID="room-a") == [b.record_id]
        # Anything but hex digits and dashes matches nothing, even next to a prefix of everything.
        assert await ids(recordID="%") == [] and await ids(recordID="_") == []
        assert await ids(recordID="zz-not-hex") == []
        assert await ids(recordID=f"{b.record_id}' OR '1'='1") == []
        assert len(await ids(recordID=",".join("0123456789abcdef"))) == 4
    finally:
        await h.__aexit__()


@pytest.mark.gen_test(timeout=30)
async def test_states_and_processing_sets(db_url):
    h = await recording_harness(db_url)
    try:
        hd = await profile(h.pool)
        published = await video(h, await record_set(h.pool, secret_id(h), "pub"), hd)
        unpublished = await video(h, await record_set(h.pool, secret_id(h), "unpub"), hd, published=False)
        waiting_set = await record_set(h.pool, secret_id(h), "waiting")  # uploaded, not rendered
        waiting = await public_id(h.pool, waiting_set)  # its recordID: not its id, the upload nonce
        assert waiting != waiting_set
        await record_set(h.pool, secret_id(h), "running", status="UNKNOWN")  # still recording
        await record_set(h.pool, secret_id(h), "gone", status="DELETING")

        async def ids(state: str | None) -> list[str]:
            return sorted(record_ids(await call(h, "getRecordings", q(state=state) if state is not None else "")))

        both = sorted([published.record_id, unpublished.record_id])
        assert await ids(None) == both and await ids("") == both and await ids("published,unpublished") == both
        assert await ids("published") == [published.record_id]
        assert await ids("UNPUBLISHED") == [unpublished.record_id]
        assert await ids("processing") == [waiting]
        assert await ids("any") == sorted([*both, waiting])
        assert await ids("processed") == [] and await ids("deleted") == [] and await ids("bogus") == []
        assert await ids("deleted,published") == [published.record_id]
        (recording,) = root(await call(h, "getRecordings", q(state="processing"))).iterfind("recordings/recording")
        assert recording.findtext("recordID") == waiting and recording.findtext("state") == "processing"
        assert recording.findtext("published") == "false" and recording.findtext("name") == "Weekly Sync"
        assert recording.find("playback") is not None and len(recording.find("playback")) == 0
        assert [c.tag for c in recording] == [c.tag for c in root(await call(h, "getRecordings")).find(
            "recordings/recording")]  # the same elements, in the same order
        assert recording.findtext("size") == "0" and recording.findtext("rawSize") == "123456789"
        # Once a video of the set exists, the set is no longer "processing": its record is listed.
        rendered = await video(h, waiting_set, hd)
        assert await ids("processing") == []
        assert rendered.record_id in await ids(None)
        # recordID wildcards find a waiting set by its public id too, never by its nonce.
        other_set = await record_set(h.pool, secret_id(h), "waiting-2")
        other = await public_id(h.pool, other_set)
        assert record_ids(await call(h, "getRecordings", q(state="processing", recordID=other[:10]))) == [other]
        for nonce in (other_set, other_set[:10]):
            assert record_ids(await call(h, "getRecordings", q(state="any", recordID=nonce))) == []
    finally:
        await h.__aexit__()


@pytest.mark.gen_test(timeout=60)
async def test_offset_and_limit_page_in_creation_order(db_url):
    h = await recording_harness(db_url)
    try:
        hd = await profile(h.pool)
        base = datetime(2024, 1, 1, tzinfo=UTC)
        made = [
            (await video(h, await record_set(h.pool, secret_id(h), f"m{n}", created_at=base + timedelta(hours=n)),
                         hd)).record_id  # fmt: skip
            for n in range(105)
        ]

        async def ids(**params: str) -> list[str]:
            return record_ids(await call(h, "getRecordings", q(**params)))

        assert await ids() == made
        assert await ids(limit="10") == made[:10]
        assert await ids(offset="10", limit="5") == made[10:15]
        assert await ids(offset="100") == made[100:]
        assert await ids(offset="200") == []
        assert await ids(limit="500") == made[:100]  # limit 1-100
        # Out-of-range or malformed values are ignored.
        assert await ids(limit="0") == made and await ids(limit="-5") == made and await ids(limit="x") == made
        assert await ids(offset="-1", limit="3") == made[:3] and await ids(offset="²", limit="3") == made[:3]
        assert await ids(offset="99999999999999999999", limit="3") == []
    finally:
        await h.__aexit__()


@pytest.mark.gen_test(timeout=30)
async def test_meta_filters(db_url):
    h = await recording_harness(db_url)
    try:
        hd = await profile(h.pool)
        green = await video(h, await record_set(h.pool, secret_id(h), "g", metadata={"course": "42"}), hd)
        other = await video(h, await record_set(h.pool, secret_id(h), "o", metadata={"course": "7"}), hd)

        async def ids(**params: str) -> list[str]:
            return sorted(record_ids(await call(h, "getRecordings", q(**params))))

        assert await ids(**{"meta_bbb-origin": "Greenlight"}) == sorted([green.record_id, other.record_id])
        assert await ids(meta_course="42") == [green.record_id]
        assert await ids(meta_course="42", **{"meta_bbb-origin": "Moodle"}) == []
        assert await ids(meta_course="4") == []
        assert await ids(meta_missing="x") == []
        assert await ids(**{"meta_b3lb-recordset": "the upload nonce"}) == []  # hidden keys are not copied
    finally:
        await h.__aexit__()


# publishRecordings --------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_publish_and_unpublish(db_url):
    h = await recording_harness(db_url)
    try:
        hd = await profile(h.pool)
        rec = await video(h, await record_set(h.pool, secret_id(h)), hd)
        assert top(await call(h, "publishRecordings", q(publish="false"))) == MISSING_RECORD_ID
        assert top(await call(h, "publishRecordings", q(recordID=rec.record_id))) == MISSING_PUBLISH
        assert top(await call(h, "publishRecordings", q(recordID=rec.record_id, publish="yes"))) == MISSING_PUBLISH
        assert top(await call(h, "publishRecordings", q(recordID="00000000-0000-0000-0000-000000000000",
                                                        publish="false"))) == NOT_FOUND  # fmt: skip
        assert top(await call(h, "publishRecordings", q(recordID=rec.record_id[:8], publish="false"))) == NOT_FOUND
        assert top(await call(h, "publishRecordings", q(recordID="x", publish="false"))) == NOT_FOUND
        result = await call(h, "publishRecordings", q(recordID=f"unknown,{rec.record_id}", publish="FALSE"))
        assert success(result, "published", "false")
        (recording,) = root(await call(h, "getRecordings")).iterfind("recordings/recording")
        assert (recording.findtext("published"), recording.findtext("state")) == ("false", "unpublished")
        assert success(await call(h, "publishRecordings", q(recordID=rec.record_id, publish=" True ")), "published",
                       "true")  # fmt: skip
        assert record_ids(await call(h, "getRecordings", q(state="published"))) == [rec.record_id]
    finally:
        await h.__aexit__()


# deleteRecordings --------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_delete_removes_files_and_rows(db_url, recordings_config):
    h = await recording_harness(db_url, recordings=recordings_config)
    try:
        hd, sd = await profile(h.pool, "HD"), await profile(h.pool, "SD", "WEBM")
        set_id = await record_set(h.pool, secret_id(h), ready_url="https://gl.example/ready")
        first, second = await video(h, set_id, hd), await video(h, set_id, sd)
        kept = await video(h, await record_set(h.pool, secret_id(h), "kept"), hd)
        storage = h.runtime.storage
        assert await storage.exists(first.key) and await storage.exists(second.key)
        assert await h.pool.fetchval("SELECT count(*) FROM callback_outbox") == 2

        assert top(await call(h, "deleteRecordings")) == MISSING_RECORD_ID
        assert top(await call(h, "deleteRecordings", q(recordID="not-hex!"))) == NOT_FOUND
        assert top(await call(h, "deleteRecordings", q(recordID=first.record_id[:8]))) == NOT_FOUND  # no wildcard
        result = await call(h, "deleteRecordings", q(recordID=f"{first.record_id},unknown"))
        assert success(result, "deleted", "true")
        assert not await storage.exists(first.key) and await storage.exists(second.key)
        assert await h.pool.fetchval("SELECT status FROM record_set WHERE id = $1", set_id) == "UPLOADED"
        result = await call(h, "deleteRecordings", q(recordID=f"{first.record_id},{second.record_id.upper()}"))
        assert success(result, "deleted", "true")
        assert not await storage.exists(second.key)
        assert await storage.exists(kept.key)
        rows = await h.pool.fetch("SELECT record_id FROM record")
        assert [r["record_id"] for r in rows] == [kept.record_id]
        assert await h.pool.fetchval("SELECT count(*) FROM callback_outbox") == 0
        assert record_ids(await call(h, "getRecordings", q(state="any"))) == [kept.record_id]
        # Deleted once; a second delete finds nothing.
        assert top(await call(h, "deleteRecordings", q(recordID=first.record_id))) == NOT_FOUND
        # A set whose last video went is handed to housekeeping (archive included); the other stays.
        statuses = dict(await h.pool.fetch("SELECT meeting_id, status FROM record_set"))
        assert statuses == {"room-42": "DELETING", "kept": "UPLOADED"}
    finally:
        await h.__aexit__()


@pytest.mark.gen_test(timeout=30)
async def test_a_file_the_storage_cannot_delete_leaves_its_record_hidden_for_housekeeping(db_url):
    h = await recording_harness(db_url)
    try:
        rec = await video(h, await record_set(h.pool, secret_id(h)), await profile(h.pool))
        real = h.runtime.storage

        async def refuse(key: str) -> None:
            raise StorageError("disk on fire")

        real.delete = refuse  # type: ignore[method-assign]  # this storage instance only
        assert success(await call(h, "deleteRecordings", q(recordID=rec.record_id)), "deleted", "true")
        row = await h.pool.fetchrow("SELECT deleting FROM record WHERE id = $1", rec.id)
        assert row is not None and row["deleting"] is True  # kept, hidden: housekeeping deletes file, then row
        assert await real.exists(rec.key)
        assert top(await call(h, "getRecordings", q(state="any"))) == NO_RECORDINGS
        assert top(await call(h, "deleteRecordings", q(recordID=rec.record_id))) == NOT_FOUND
    finally:
        await h.__aexit__()


@pytest.mark.gen_test(timeout=30)
async def test_delete_of_a_set_not_rendered_yet_hands_it_to_housekeeping(db_url):
    h = await recording_harness(db_url)
    try:
        waiting = await record_set(h.pool, secret_id(h), "waiting")
        running = await record_set(h.pool, secret_id(h), "running", status="UNKNOWN")
        assert top(await call(h, "deleteRecordings", q(recordID=await public_id(h.pool, running)))) == NOT_FOUND
        assert top(await call(h, "deleteRecordings", q(recordID=waiting))) == NOT_FOUND  # the nonce is no recordID
        assert success(await call(h, "deleteRecordings", q(recordID=await public_id(h.pool, waiting))),
                       "deleted", "true")  # fmt: skip
        statuses = dict(await h.pool.fetch("SELECT id, status FROM record_set"))
        assert statuses == {waiting: "DELETING", running: "UNKNOWN"}
        assert record_ids(await call(h, "getRecordings", q(state="any"))) == []
        assert top(await call(h, "deleteRecordings", q(recordID=await public_id(h.pool, waiting)))) == NOT_FOUND
    finally:
        await h.__aexit__()


# updateRecordings ----------------------------------------------------------------------------------------------


def metadata_of(result: object) -> dict[str, str]:
    (recording,) = root(result).iterfind("recordings/recording")  # type: ignore[arg-type]
    return {c.tag: c.text or "" for c in recording.find("metadata")}


@pytest.mark.gen_test(timeout=30)
async def test_update_sets_and_removes_metadata(db_url):
    h = await recording_harness(db_url)
    try:
        hd = await profile(h.pool)
        rec = await video(h, await record_set(h.pool, secret_id(h)), hd)
        assert top(await call(h, "updateRecordings", q(meta_x="1"))) == MISSING_RECORD_ID
        assert top(await call(h, "updateRecordings", q(recordID="abc", meta_x="1"))) == NOT_FOUND
        changed = q(recordID=rec.record_id, meta_course="Physics & <Maths>", **{"meta_bbb-origin": ""})
        assert success(await call(h, "updateRecordings", changed), "updated", "true")
        meta = metadata_of(await call(h, "getRecordings"))
        assert meta["course"] == "Physics & <Maths>" and "bbb-origin" not in meta
        # The same again changes nothing; so does a call without meta_ parameters.
        assert success(await call(h, "updateRecordings", changed), "updated", "false")
        assert success(await call(h, "updateRecordings", q(recordID=rec.record_id)), "updated", "false")
        # Renaming: trimmed, cut to 256 characters, shown as <name>; gl-listed true/false only.
        name = "  " + "N" * 300 + "  "
        renamed = q(recordID=rec.record_id, meta_name=name, **{"meta_gl-listed": "TRUE"})
        assert success(await call(h, "updateRecordings", renamed), "updated", "true")
        result = await call(h, "getRecordings")
        (recording,) = root(result).iterfind("recordings/recording")
        assert recording.findtext("name") == "N" * 256
        assert metadata_of(result)["gl-listed"] == "true"
        assert await h.pool.fetchval("SELECT listed FROM record") is True
        assert success(await call(h, "updateRecordings", q(recordID=rec.record_id, **{"meta_gl-listed": "maybe"})),
                       "updated", "false")  # fmt: skip
        # Keys that are no XML names, too long, or that would show the LB's nonces are ignored.
        bad = q(("recordID", rec.record_id), ("meta_1abc", "x"), ("meta_a b", "x"), ("meta_a:b", "x"),
                ("meta_" + "k" * 101, "x"), ("meta_endCallbackUrl", "https://evil"), ("meta_b3lb-recordset", "x"),
                ("meta_", "x"))  # fmt: skip
        assert success(await call(h, "updateRecordings", bad), "updated", "false")
        # Long values are cut; control characters dropped; the document stays well-formed.
        long_value = q(recordID=rec.record_id, meta_note="v" * 3000 + "\x01")
        assert success(await call(h, "updateRecordings", long_value), "updated", "true")
        assert metadata_of(await call(h, "getRecordings"))["note"] == "v" * 2000
        # At most 50 meta_ parameters of a call count.
        many = q(("recordID", rec.record_id), *((f"meta_k{n}", "v") for n in range(80)))
        assert success(await call(h, "updateRecordings", many), "updated", "true")
        keys = metadata_of(await call(h, "getRecordings"))
        assert "k49" in keys and "k50" not in keys
    finally:
        await h.__aexit__()


@pytest.mark.gen_test(timeout=30)
async def test_update_of_a_set_not_rendered_yet_carries_over_to_its_videos(db_url):
    h = await recording_harness(db_url)
    try:
        hd = await profile(h.pool)
        waiting = await record_set(h.pool, secret_id(h))
        assert top(await call(h, "updateRecordings", q(recordID=waiting, meta_tag="x"))) == NOT_FOUND  # the nonce
        recording_id = await public_id(h.pool, waiting)
        assert success(await call(h, "updateRecordings", q(recordID=recording_id, meta_name="Renamed", meta_tag="x")),
                       "updated", "true")  # fmt: skip
        rec = await video(h, waiting, hd)
        result = await call(h, "getRecordings")
        assert record_ids(result) == [rec.record_id]
        assert root(result).findtext("recordings/recording/name") == "Renamed (Full HD)"
        assert metadata_of(result)["tag"] == "x"
    finally:
        await h.__aexit__()


# Text tracks ---------------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_text_tracks_answer_json(db_url):
    h = await recording_harness(db_url)
    try:
        rec = await video(h, await record_set(h.pool, secret_id(h)), await profile(h.pool))

        async def answer(name: str, query: str = "") -> dict[str, object]:
            result = await call(h, name, query)
            assert result.status == 200 and result.content_type == "application/json"
            return orjson.loads(result.body)

        assert await answer("getRecordingTextTracks", q(recordID=rec.record_id)) == {
            "response": {"returncode": "SUCCESS", "tracks": []}
        }
        not_found = {
            "response": {"returncode": "FAILED", "messageKey": "noRecordings", "message": "No recording found"}
        }
        assert await answer("getRecordingTextTracks", q(recordID="00000000-0000-0000-0000-000000000000")) == not_found
        assert await answer("getRecordingTextTracks", q(recordID="nope")) == not_found
        assert await answer("getRecordingTextTracks") == {"response": {
            "returncode": "FAILED", "messageKey": "missingParamRecordID", "message": "You must specify a recordID."}}
        assert await answer("putRecordingTextTrack", q(recordID=rec.record_id, kind="subtitles", lang="en")) == {
            "response": {"returncode": "FAILED", "messageKey": "unsupportedRequest",
                         "message": "This request is not supported."}}  # fmt: skip
    finally:
        await h.__aexit__()


# Through the front door, and a database outage ---------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_calls_through_the_api_front_door(db_url, monkeypatch):
    # The calls as b3lb/api/handler.py routes them (set here too, so this test does not depend on the wiring).
    for name, function in (("getRecordings", api.get_recordings), ("publishRecordings", api.publish_recordings),
                           ("deleteRecordings", api.delete_recordings), ("updateRecordings", api.update_recordings)):
        monkeypatch.setitem(handler.CALLS, name, (handler.GET_POST, function))  # fmt: skip
    h = await recording_harness(db_url)
    try:
        rec = await video(h, await record_set(h.pool, secret_id(h)), await profile(h.pool))
        r = await h.call("getRecordings", q(meetingID="room-42"))
        assert r.code == 200 and record_ids(r) == [rec.record_id]
        r = await h.call("publishRecordings", q(recordID=rec.record_id, publish="false"), method="POST")
        assert success(r, "published", "false")
        r = await h.call("updateRecordings", q(recordID=rec.record_id, meta_x="y"))
        assert success(r, "updated", "true")
        r = await h.call("getRecordings", q(state="unpublished", meta_x="y"), path_style=True)
        assert record_ids(r) == [rec.record_id]
        r = await h.call("deleteRecordings", q(recordID=rec.record_id))
        assert success(r, "deleted", "true")
        r = await h.call("getRecordings", "", secret="0" * 64)
        assert top(r)[1] == ("messageKey", "checksumError")
    finally:
        await h.__aexit__()


@pytest.mark.gen_test(timeout=30)
async def test_a_database_outage_raises_for_the_front_door(db_url):
    h = await recording_harness(db_url)
    try:
        good_pool = h.runtime.pool
        dead = await asyncpg.create_pool(db_url, min_size=0, max_size=1)
        await dead.close()
        h.runtime.pool = dead
        for name, query in (("getRecordings", ""), ("publishRecordings", q(recordID="ab", publish="true")),
                            ("deleteRecordings", q(recordID="ab")), ("updateRecordings", q(recordID="ab"))):
            with pytest.raises(Exception) as raised:  # noqa: PT011 - any asyncpg error; checked below
                await call(h, name, query)
            assert is_database_unavailable(raised.value), repr(raised.value)
        h.runtime.pool = good_pool
    finally:
        await h.__aexit__()
