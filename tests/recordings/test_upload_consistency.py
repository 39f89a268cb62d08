"""The upload endpoint keeps the set's row and the stored archive in agreement (issue 10.2, review of
issue 10): each upload writes its own object, committed outside the database transaction; the row is
pointed at it in one short transaction; what the row no longer names is deleted after the COMMIT, and
what a failure leaves lies under the set's folder for retention. On both storage backends."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from test_upload import (
    CONTENT_TYPE,
    archive,
    form,
    head,
    jobs,
    leftovers,
    metadata_xml,
    new_set,
    no_tracebacks,
    nonce_free,
    read_answer,
    serving,
    set_row,
    stored_bytes,
    upload,
)

from b3lb.recordings import retention
from b3lb.recordings.storage import StorageError, loggable_key, set_prefix
from b3lb.recordings.upload import UPLOAD_PATH

DIE = """
    CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$;
"""


@pytest.mark.gen_test(timeout=60)
async def test_the_database_failing_after_the_archive_commit_changes_nothing(db_url, recordings_config, request,
                                                                              caplog):
    async with serving(db_url, recordings_config) as h:
        nonce = await new_set(h)
        a, b = archive(), archive(300 * 1024)
        assert (await upload(h, f"?nonce={nonce}", form(("file", a), ("meta", metadata_xml())))).code == 204
        before, queued = await set_row(h, nonce), await jobs(h)
        # The connection dies in the upload's transaction, after the archive was committed to storage.
        await h.pool.execute(DIE + "CREATE TRIGGER die BEFORE UPDATE ON record_set FOR EACH ROW EXECUTE FUNCTION die()")
        response = await upload(h, f"?nonce={nonce}", form(("file", b), ("meta", metadata_xml())))
        assert response.code == 503 and response.headers["Retry-After"]
        assert await set_row(h, nonce) == before and await jobs(h) == queued
        assert await stored_bytes(h, nonce) == a  # the row and the stored archive still agree
        assert leftovers(h, request) == [before["archive_key"]]  # the new object deleted
        nonce_free(caplog, nonce)
        # The database is back: the node's retry replaces the archive.
        await h.pool.execute("DROP TRIGGER die ON record_set")
        assert (await upload(h, f"?nonce={nonce}", form(("file", b), ("meta", metadata_xml())))).code == 204
        row = await set_row(h, nonce)
        assert row["archive_sha256"] == hashlib.sha256(b).hexdigest() and await stored_bytes(h, nonce) == b
        assert leftovers(h, request) == [row["archive_key"]]


@pytest.mark.gen_test(timeout=60)
async def test_a_commit_of_unknown_outcome_keeps_the_object_for_retention(db_url, recordings_config, request,
                                                                          caplog):
    """The connection dies during COMMIT: the row may or may not point at the new object, so it is not
    deleted; the set's folder goes whole when the set goes."""
    async with serving(db_url, recordings_config) as h:
        nonce = await new_set(h)
        a, b = archive(), archive(300 * 1024)
        assert (await upload(h, f"?nonce={nonce}", form(("file", a), ("meta", metadata_xml())))).code == 204
        before = await set_row(h, nonce)
        await h.pool.execute(DIE + "CREATE CONSTRAINT TRIGGER die AFTER UPDATE ON record_set DEFERRABLE INITIALLY "
                             "DEFERRED FOR EACH ROW EXECUTE FUNCTION die()")
        response = await upload(h, f"?nonce={nonce}", form(("file", b), ("meta", metadata_xml())))
        assert response.code == 503
        assert await set_row(h, nonce) == before and await stored_bytes(h, nonce) == a
        (kept,) = [k for k in leftovers(h, request) if k != before["archive_key"]]
        assert kept.startswith(set_prefix(nonce) + "/raw-")
        (line,) = [r.getMessage() for r in caplog.records if "outcome unknown" in r.getMessage()]
        assert str(before["public_id"]) in line
        nonce_free(caplog, nonce)
        await h.pool.execute("DROP TRIGGER die ON record_set")
        await h.pool.execute("UPDATE record_set SET status = 'DELETING' WHERE id = $1", nonce)
        assert h.runtime is not None
        result = await retention.purge_deleting(h.pool, h.runtime.storage)
        assert result.sets == 1 and leftovers(h, request) == []


@pytest.mark.gen_test(timeout=60)
async def test_a_repeat_whose_recorded_archive_is_lost_stores_it_again(db_url, recordings_config, request):
    async with serving(db_url, recordings_config) as h:
        assert h.runtime is not None
        nonce = await new_set(h)
        data = archive()
        body = form(("file", data), ("meta", metadata_xml()))
        assert (await upload(h, f"?nonce={nonce}", body)).code == 204
        lost = (await set_row(h, nonce))["archive_key"]
        await h.runtime.storage.delete(lost)
        assert (await upload(h, f"?nonce={nonce}", body)).code == 204
        row = await set_row(h, nonce)
        assert row["archive_key"] != lost and await stored_bytes(h, nonce) == data
        assert leftovers(h, request) == [row["archive_key"]]
        # a row naming a key no storage accepts is no archive either
        await h.pool.execute("UPDATE record_set SET archive_key = '../x' WHERE id = $1", nonce)
        assert (await upload(h, f"?nonce={nonce}", body)).code == 204
        assert (await set_row(h, nonce))["archive_key"].startswith(set_prefix(nonce) + "/raw-")


@pytest.mark.gen_test(timeout=60)
async def test_a_set_deleted_while_its_archive_arrives_is_404_and_leaves_nothing(db_url, recordings_config, request,
                                                                                 caplog):
    async with serving(db_url, recordings_config) as h:
        nonce = await new_set(h)
        body = form(("file", archive()), ("meta", metadata_xml()))
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        try:
            writer.write(head(f"{UPLOAD_PATH}?nonce={nonce}", f"Content-Type: {CONTENT_TYPE}",
                              f"Content-Length: {len(body)}", "Expect: 100-continue"))
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 100")
            await h.pool.execute("UPDATE record_set SET status = 'DELETING' WHERE id = $1", nonce)
            writer.write(body)
            status, _, answer = await read_answer(reader)
            assert status == 404 and answer.startswith(b"Not Found")
        finally:
            writer.close()
        assert leftovers(h, request) == [] and await jobs(h) == []
        no_tracebacks(caplog)


@pytest.mark.gen_test(timeout=60)
async def test_an_old_archive_that_cannot_be_deleted_is_left_for_retention(db_url, recordings_config, request,
                                                                           monkeypatch, caplog):
    """The upload is stored (204) even when the archive it replaces cannot be deleted now."""
    async with serving(db_url, recordings_config) as h:
        assert h.runtime is not None
        storage = h.runtime.storage
        nonce = await new_set(h)
        assert (await upload(h, f"?nonce={nonce}", form(("file", archive()), ("meta", metadata_xml())))).code == 204
        old = (await set_row(h, nonce))["archive_key"]

        async def failing_delete(key: str) -> None:
            raise StorageError(f"test storage: cannot delete {loggable_key(key)}")

        monkeypatch.setattr(storage, "delete", failing_delete)
        data = archive(300 * 1024)
        assert (await upload(h, f"?nonce={nonce}", form(("file", data), ("meta", metadata_xml())))).code == 204
        row = await set_row(h, nonce)
        assert await stored_bytes(h, nonce) == data
        assert sorted(leftovers(h, request)) == sorted([old, row["archive_key"]])
        (line,) = [r.getMessage() for r in caplog.records if "retention will" in r.getMessage()]
        assert str(row["public_id"]) in line
        nonce_free(caplog, nonce)
        monkeypatch.undo()
        await h.pool.execute("UPDATE record_set SET status = 'DELETING' WHERE id = $1", nonce)
        assert (await retention.purge_deleting(h.pool, storage)).sets == 1
        assert leftovers(h, request) == []
