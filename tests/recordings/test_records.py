"""Rendered records (b3lb/recordings/records.py): what a record copies from its set, the ready callback it
queues in the same statement, and store_video on both storage backends."""

from __future__ import annotations

import uuid

import asyncpg
import orjson
import pytest
from recording_rows import NODE_META, profile, record_set

from b3lb.recordings.localstore import LocalStorage
from b3lb.recordings.records import RecordSetGone, add_record, store_video
from b3lb.recordings.s3store import S3Storage
from b3lb.recordings.storage import video_key
from b3lb.testing.harness import Harness

READY = "https://gl.example/recording_ready?token=abc"


async def secret_row(h: Harness) -> int:
    return h.tenants["ABC"].secrets[0][0]


@pytest.mark.gen_test(timeout=30)
async def test_add_record_copies_the_set_and_queues_the_ready_callback(db_url):
    async with Harness(db_url, nodes=1) as h:
        hd = await profile(h.pool, "Full HD")
        set_id = await record_set(h.pool, await secret_row(h), ready_url=READY, metadata={"gl-listed": "true"})
        nonce = str(uuid.uuid4())
        key = video_key(set_id, nonce, "mp4")
        rec = await add_record(h.pool, recordset_id=set_id, profile_id=hd, key=key, size=1234, nonce=nonce,
                               processing_ms=99)  # fmt: skip
        assert (rec.key, rec.size, rec.nonce, rec.published) == (key, 1234, nonce, True)
        assert uuid.UUID(rec.record_id) and rec.record_id != nonce
        row = await h.pool.fetchrow("SELECT * FROM record WHERE id = $1", rec.id)
        rs = await h.pool.fetchrow("SELECT * FROM record_set WHERE id = $1", set_id)
        assert row["meta_name"] == "Weekly Sync (Full HD)" and row["file"] == key and row["processing_ms"] == 99
        for column in ("meeting_id", "tenant_slug", "start_time", "end_time", "participants", "format_type"):
            assert row[column] == rs[column], column
        assert row["listed"] is True and row["deleting"] is False
        metadata = orjson.loads(row["metadata"])
        assert metadata["bbb-origin"] == NODE_META["bbb-origin"] and metadata["gl-listed"] == "true"
        assert "b3lb-recordset" not in metadata and "endcallbackurl" not in metadata
        outbox = await h.pool.fetch("SELECT id, record_id, url, attempts FROM callback_outbox")
        assert [tuple(o) for o in outbox] == [(rec.outbox_id, rec.id, READY, 0)]


@pytest.mark.gen_test(timeout=30)
async def test_no_callback_without_a_ready_url_or_for_an_unpublished_record(db_url):
    async with Harness(db_url, nodes=1) as h:
        hd, sd = await profile(h.pool, "HD"), await profile(h.pool, "SD", "WEBM")
        plain = await record_set(h.pool, await secret_row(h), "plain")
        with_url = await record_set(h.pool, await secret_row(h), "with-url", ready_url=READY)
        a = await add_record(h.pool, recordset_id=plain, profile_id=hd, key="a.mp4", size=1)
        b = await add_record(h.pool, recordset_id=with_url, profile_id=hd, key="b.mp4", size=1, published=False)
        c = await add_record(h.pool, recordset_id=with_url, profile_id=sd, key="c.webm", size=1)
        assert (a.outbox_id, b.outbox_id) == (None, None) and c.outbox_id is not None
        assert await h.pool.fetchval("SELECT array_agg(record_id) FROM callback_outbox") == [c.id]
        assert await h.pool.fetchval("SELECT listed FROM record WHERE id = $1", a.id) is False  # gl-listed false


@pytest.mark.gen_test(timeout=30)
async def test_add_record_refuses_missing_or_deleting_sets_and_a_second_video_of_a_profile(db_url):
    async with Harness(db_url, nodes=1) as h:
        hd = await profile(h.pool)
        set_id = await record_set(h.pool, await secret_row(h), name="")
        with pytest.raises(RecordSetGone):
            await add_record(h.pool, recordset_id="no-such-set", profile_id=hd, key="k.mp4", size=1)
        with pytest.raises(RecordSetGone):
            await add_record(h.pool, recordset_id=set_id, profile_id=hd + 100, key="k.mp4", size=1)
        first = await add_record(h.pool, recordset_id=set_id, profile_id=hd, key="k.mp4", size=1)
        assert await h.pool.fetchval("SELECT meta_name FROM record WHERE id = $1", first.id) == "Full HD"
        with pytest.raises(asyncpg.UniqueViolationError):
            await add_record(h.pool, recordset_id=set_id, profile_id=hd, key="k2.mp4", size=1)
        await h.pool.execute("UPDATE record_set SET status = 'DELETING'")
        with pytest.raises(RecordSetGone):
            await add_record(h.pool, recordset_id=set_id, profile_id=await profile(h.pool, "SD"), key="k.mp4", size=1)
        assert await h.pool.fetchval("SELECT count(*) FROM record") == 1


@pytest.mark.gen_test(timeout=30)
async def test_a_long_name_is_cut_to_the_column(db_url):
    async with Harness(db_url, nodes=1) as h:
        hd = await profile(h.pool, "P" * 200)
        set_id = await record_set(h.pool, await secret_row(h), name="N" * 256)
        rec = await add_record(h.pool, recordset_id=set_id, profile_id=hd, key="k.mp4", size=1)
        name = await h.pool.fetchval("SELECT meta_name FROM record WHERE id = $1", rec.id)
        assert name == ("N" * 256 + " (")[:256]


@pytest.mark.gen_test(timeout=60)
async def test_store_video_writes_the_file_then_the_row(db_url, recordings_config):
    async with Harness(db_url, nodes=1, recordings=recordings_config) as h:
        storage = h.runtime.storage
        hd, sd = await profile(h.pool, "HD"), await profile(h.pool, "SD", "WEBM")
        set_id = await record_set(h.pool, await secret_row(h))
        mp4 = await store_video(h.pool, storage, set_id, hd, b"mp4 bytes")
        webm = await store_video(h.pool, storage, set_id, sd, b"webm bytes!")
        assert mp4.key == video_key(set_id, mp4.nonce, "mp4") and webm.key == video_key(set_id, webm.nonce, "webm")
        assert (mp4.size, webm.size) == (9, 11)
        assert b"".join([c async for c in storage.read(webm.key)]) == b"webm bytes!"
        # A row that cannot be added takes its file with it.
        with pytest.raises(asyncpg.UniqueViolationError):
            await store_video(h.pool, storage, set_id, hd, b"again")
        await h.pool.execute("UPDATE record_set SET status = 'DELETING'")
        with pytest.raises(RecordSetGone):
            await store_video(h.pool, storage, set_id, await profile(h.pool, "Other"), b"late")
        with pytest.raises(RecordSetGone):
            await store_video(h.pool, storage, "no-such-set", hd, b"x")
        keys = [r["file"] for r in await h.pool.fetch("SELECT file FROM record ORDER BY id")]
        assert keys == [mp4.key, webm.key]
        assert await listed_keys(h, recordings_config) == sorted(keys)


async def listed_keys(h: Harness, config: dict[str, object]) -> list[str]:
    """Every committed object in the storage, looked at behind the backend's back."""
    storage = h.runtime.storage
    if isinstance(storage, LocalStorage):
        return sorted(str(p.relative_to(storage.root)) for p in storage.root.rglob("*")
                      if p.is_file() and storage.incomplete not in p.parents)  # fmt: skip
    assert isinstance(storage, S3Storage)
    import boto3

    client = boto3.session.Session().client(
        "s3", endpoint_url=str(config["s3_endpoint"]), aws_access_key_id=str(config["s3_access_key"]),
        aws_secret_access_key=str(config["s3_secret_key"]), region_name=str(config["s3_region"]),
    )  # fmt: skip
    try:
        answer = client.list_objects_v2(Bucket=storage.bucket)
        return sorted(o["Key"] for o in answer.get("Contents", []))
    finally:
        client.close()
