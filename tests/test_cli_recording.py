"""`b3lb recording list|show|delete|rerender` against a real PostgreSQL and real storage.

Rows are made with SQL, files with the storage the CLI itself uses (local, under the test's
B3LB_SERVER_DATA_DIR), so a delete is checked on both sides.
"""

from __future__ import annotations

import socket
import uuid
from typing import Any

import pytest
from db_support import execute_sql, run
from test_cli import Cli, b3lb, count, fetch

from b3lb.config import load_config
from b3lb.recordings.storage import Storage, archive_key, make_storage, video_key

OLD, NEW, NEWEST = (
    "11111111-1111-4111-8111-111111111111",
    "22222222-2222-4222-8222-222222222222",
    "33333333-3333-4333-8333-333333333333",
)
RECORD_NONCE = "44444444-4444-4444-8444-444444444444"
MISSING = "55555555-5555-4555-8555-555555555555"
# The commands name a set by its public ID; the nonces above are the sets' row keys (upload credentials).
P_OLD, P_NEW, P_NEWEST = ("a" + n[1:] for n in (OLD, NEW, NEWEST))


@pytest.fixture
def cli(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Cli:
    cli = Cli(cli_env, monkeypatch, capsys)
    cli.ok("clustergroup", "add", "prod")
    for slug in ("abc", "xyz"):
        cli.ok("tenant", "add", slug, "--clustergroup", "prod")
    cli.ok("secret", "add", "ABC", "--sub-id", "0-1")
    cli.ok("secret", "add", "XYZ")
    cli.ok("recordprofile", "add", "hd")
    return cli


def storage() -> Storage:
    return make_storage(load_config())  # the environment Cli set: the CLI's own storage


def put(key: str, data: bytes) -> None:
    async def go() -> None:
        store = storage()
        try:
            await store.put_bytes(key, data)
        finally:
            await store.close()

    run(go())


def exists(key: str) -> bool:
    async def go() -> bool:
        store = storage()
        try:
            return await store.exists(key)
        finally:
            await store.close()

    return run(go())


def add_set(cli: Cli, nonce: str, *, tenant: str = "ABC", sub_id: int = 0, status: str = "UNKNOWN",
            name: str = "Weekly Sync", age_days: int = 0, archive: bytes | None = None) -> None:
    key = archive_key(nonce) if archive is not None else ""
    execute_sql(cli.env["DATABASE_URL"], f"""
        INSERT INTO record_set (id, nonce, public_id, secret_id, meeting_id, tenant_slug, meta_name, status, raw_size,
                                archive_key, archive_sha256, ready_url, metadata, created_at, uploaded_at,
                                internal_id)
        SELECT '{nonce}', '{nonce}', '{"a" + nonce[1:]}', s.id, 'room-{nonce[:4]}', '{tenant}', $name${name}$name$,
               '{status}',
               {len(archive or b'')}, '{key}', '{'ab' * 32 if archive else ''}',
               'https://gl.example/ready?token=SECRET', '{{"bbb-origin": "Greenlight"}}',
               now() - interval '{age_days} days', {'now()' if archive else 'NULL'}, 'internal-{nonce[:4]}'
        FROM secret s JOIN tenant t ON t.id = s.tenant_id
        WHERE t.slug = '{tenant}' AND s.sub_id = {sub_id}
    """)
    if archive is not None:
        put(key, archive)


def add_record(cli: Cli, set_nonce: str, data: bytes) -> str:
    key = video_key(set_nonce, RECORD_NONCE, "mp4")
    put(key, data)
    execute_sql(cli.env["DATABASE_URL"], f"""
        INSERT INTO record (recordset_id, record_id, profile_id, file, nonce, size, meeting_id, tenant_slug)
        SELECT '{set_nonce}', 'rec-{set_nonce[:4]}', p.id, '{key}', '{RECORD_NONCE}', {len(data)}, 'room', 'ABC'
        FROM record_profile p WHERE p.name = 'hd';
        INSERT INTO callback_outbox (record_id, url, attempts, last_error)
        SELECT r.id, 'https://gl.example/ready?token=SECRET', 2, 'HTTP 503' FROM record r
        WHERE r.recordset_id = '{set_nonce}';
        INSERT INTO render_job (recordset_id, state, attempts, last_error)
        VALUES ('{set_nonce}', 'FAILED', 5, 'ffmpeg exploded');
    """)
    return key


@pytest.fixture
def sets(cli: Cli) -> Cli:
    """OLD: XYZ, UNKNOWN; NEW: ABC-001, UPLOADED with an archive; NEWEST: ABC, RENDERED with a video."""
    add_set(cli, OLD, tenant="XYZ", age_days=3)
    add_set(cli, NEW, sub_id=1, status="UPLOADED", age_days=2, archive=b"tar" * 100, name="Evil \x1b[31mName")
    add_set(cli, NEWEST, status="RENDERED", age_days=1, archive=b"t" * 50)
    add_record(cli, NEWEST, b"video" * 20)
    return cli


# list -----------------------------------------------------------------------------------------


def test_list_without_sets(cli: Cli) -> None:
    assert cli.json("recording", "list") == []
    assert cli.ok("recording", "list").strip() == "(none)"


def test_list_filters_and_columns(sets: Cli) -> None:
    cli = sets
    rows = cli.json("recording", "list")
    assert [r["id"] for r in rows] == [P_NEWEST, P_NEW, P_OLD]  # newest first
    newest, new, old = rows
    assert (newest["tenant"], newest["status"], newest["records"], newest["size"]) == ("ABC", "RENDERED", 1, 150)
    assert (new["records"], new["size"], new["name"]) == (0, 300, "Evil ?[31mName")  # no terminal escapes
    assert (old["size"], old["uploaded"], old["meeting_id"]) == (0, None, "room-1111")
    assert set(newest) == {"id", "tenant", "meeting_id", "name", "status", "records", "size", "created", "uploaded",
                           "render", "progress"}
    assert [r["id"] for r in cli.json("recording", "list", "--tenant", "abc")] == [P_NEWEST, P_NEW]
    assert [r["id"] for r in cli.json("recording", "list", "--status", "uploaded")] == [P_NEW]
    assert [r["id"] for r in cli.json("recording", "list", "--tenant", "XYZ", "--status", "RENDERED")] == []
    assert [r["id"] for r in cli.json("recording", "list", "--limit", "2")] == [P_NEWEST, P_NEW]
    table = cli.ok("recording", "list")
    assert table.splitlines()[0].split() == ["ID", "TENANT", "MEETING_ID", "NAME", "STATUS", "RECORDS", "SIZE",
                                             "CREATED", "UPLOADED", "RENDER"]
    assert P_NEWEST in table and NEWEST not in table and "\x1b" not in table


def test_list_rejects_bad_options(sets: Cli) -> None:
    cli = sets
    assert "invalid choice" in cli.fails(2, "recording", "list", "--status", "BOGUS")
    for bad in ("0", "10001", "abc", "-1", "1" * 30):
        assert "--limit" in cli.fails(2, "recording", "list", "--limit", bad)
    assert "invalid tenant slug" in cli.fails(2, "recording", "list", "--tenant", "A1")
    assert "no tenant" in cli.fails(1, "recording", "list", "--tenant", "QQQ")


# show -----------------------------------------------------------------------------------------


def test_show_a_set_with_records_job_and_callbacks(sets: Cli) -> None:
    cli = sets
    base = load_config().public_base_url
    shown = cli.json("recording", "show", P_NEWEST)
    assert (shown["id"], shown["tenant"], shown["secret"], shown["status"]) == (P_NEWEST, "ABC", "ABC", "RENDERED")
    assert shown["archive"] == "33/33/33333333.../raw.tar" and shown["archive_size"] == 50  # the nonce cut
    assert shown["ready_callback"] == "https://gl.example/ready"  # no query string: it carries tokens
    assert shown["metadata"] == {"bbb-origin": "Greenlight"}
    assert shown["render_job"]["state"] == "FAILED" and shown["render_job"]["last_error"] == "ffmpeg exploded"
    (record,) = shown["records"]
    assert record["record_id"] == f"rec-{NEWEST[:4]}" and record["profile"] == "hd" and record["size"] == 100
    assert record["url"] == f"{base}/b3lb/r/{RECORD_NONCE}" and record["published"] is True
    assert record["file"] == f"33/33/33333333.../{RECORD_NONCE}.mp4"  # the video's own nonce is its URL
    (callback,) = shown["callbacks_pending"]
    assert callback["url"] == "https://gl.example/ready" and callback["attempts"] == 2
    assert "SECRET" not in cli.ok("recording", "show", P_NEWEST, "--json")
    assert NEWEST not in cli.ok("recording", "show", P_NEWEST, "--json")
    # an upper-case or braced UUID names the same set; its nonce names none
    assert cli.json("recording", "show", "{" + P_NEWEST.upper() + "}")["id"] == P_NEWEST
    assert "no record set" in cli.fails(1, "recording", "show", NEWEST)
    table = cli.ok("recording", "show", P_NEWEST)
    assert "records:" in table and f"/b3lb/r/{RECORD_NONCE}" in table and "SECRET" not in table
    assert "bbb-origin=Greenlight" in table
    bare = cli.json("recording", "show", P_OLD)
    assert (bare["render_job"], bare["records"], bare["archive"], bare["secret"]) == (None, [], None, "XYZ")
    assert "render job: none" in cli.ok("recording", "show", P_OLD)
    assert cli.json("recording", "show", P_NEW)["secret"] == "ABC-001"


def test_show_refuses_unknown_and_malformed_ids(sets: Cli) -> None:
    cli = sets
    assert "no record set" in cli.fails(1, "recording", "show", MISSING)
    for bad in ("not-a-uuid", "x" * 5000, "", "'; DROP TABLE record_set; --"):
        assert "record set ID is a UUID" in cli.fails(2, "recording", "show", bad)
    assert "arguments are required" in cli.fails(2, "recording", "show")
    assert count(cli.env, "record_set") == 3


# rerender -------------------------------------------------------------------------------------


def test_rerender_requeues_jobs_of_sets_with_an_archive(sets: Cli) -> None:
    cli = sets
    (row,) = cli.json("recording", "rerender", P_NEWEST)
    assert (row["id"], row["job"], row["attempts"]) == (P_NEWEST, "QUEUED", 0)
    (job,) = fetch(cli.env, "SELECT * FROM render_job WHERE recordset_id = $1", NEWEST)
    assert (job["state"], job["attempts"], job["last_error"], job["locked_until"]) == ("QUEUED", 0, "", None)
    assert cli.json("recording", "rerender", P_NEW)[0]["job"] == "QUEUED"  # no job yet: one is made
    assert count(cli.env, "render_job") == 2
    assert "no archive yet (status UNKNOWN)" in cli.fails(1, "recording", "rerender", P_OLD)
    assert "no record set" in cli.fails(1, "recording", "rerender", MISSING)
    execute_sql(cli.env["DATABASE_URL"], f"UPDATE record_set SET status = 'DELETING' WHERE id = '{NEW}'")
    assert "being deleted" in cli.fails(1, "recording", "rerender", P_NEW)
    assert count(cli.env, "render_job") == 2


# delete ---------------------------------------------------------------------------------------


def test_delete_removes_files_then_rows(sets: Cli) -> None:
    cli = sets
    video = video_key(NEWEST, RECORD_NONCE, "mp4")
    assert exists(video) and exists(archive_key(NEWEST)) and exists(archive_key(NEW))
    (row,) = cli.json("recording", "delete", P_NEWEST)
    assert (row["id"], row["previous_status"], row["status"]) == (P_NEWEST, "RENDERED", "deleted")
    assert row["files_deleted"] >= 2
    assert not exists(video) and not exists(archive_key(NEWEST))
    assert [r["id"] for r in fetch(cli.env, "SELECT id FROM record_set ORDER BY id")] == [OLD, NEW]
    for table in ("record", "render_job", "callback_outbox"):
        assert count(cli.env, table) == 0, table
    assert exists(archive_key(NEW))  # other sets keep their files
    audit = fetch(cli.env, "SELECT target, tenant, detail::text AS detail FROM admin_audit WHERE action = $1",
                  "recording.delete")
    assert [(a["target"], a["tenant"]) for a in audit] == [(P_NEWEST, "ABC")]  # the public ID, never the nonce
    assert NEWEST not in audit[0]["detail"]
    assert "deleted" in cli.ok("recording", "delete", P_OLD)  # a set without files
    assert "no record set" in cli.fails(1, "recording", "delete", P_NEWEST)  # already gone
    assert "record set ID is a UUID" in cli.fails(2, "recording", "delete", "nope")
    assert count(cli.env, "record_set") == 1 and exists(archive_key(NEW))


def test_delete_with_storage_down_leaves_the_set_for_housekeeping(
    sets: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = sets
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: every S3 request fails
    s3: dict[str, Any] = {"STORAGE": "s3", "S3_ENDPOINT": f"http://127.0.0.1:{port}", "S3_BUCKET": "b3lb",
                          "S3_ACCESS_KEY": "k", "S3_SECRET_KEY": "s"}
    for key, value in s3.items():
        monkeypatch.setenv(f"B3LB_RECORDINGS_{key}", value)
    err = cli.fails(1, "recording", "delete", P_NEW)
    assert "marked DELETING" in err and "housekeeping will delete it" in err
    (row,) = fetch(cli.env, "SELECT status FROM record_set WHERE id = $1", NEW)
    assert row["status"] == "DELETING"  # committed before any file was touched
    for key in s3:
        monkeypatch.delenv(f"B3LB_RECORDINGS_{key}")
    assert "deleted" in cli.ok("recording", "delete", P_NEW)  # storage back: the CLI finishes it
    assert not exists(archive_key(NEW))


# help and the console script ------------------------------------------------------------------


def test_recording_commands_have_help(cli: Cli) -> None:
    for command in ("list", "show", "delete", "rerender"):
        status, out, _ = cli("recording", command, "--help")
        assert status == 0 and out.startswith("usage: b3lb recording"), command
    assert cli("recording", "--help")[0] == 0
    assert "required" in cli.fails(2, "recording")


def test_console_script(cli: Cli) -> None:
    result = b3lb(cli.env, "recording", "list", "--json")
    assert result.returncode == 0 and result.stdout.strip() == "[]"
    result = b3lb(cli.env, "recording", "show", str(uuid.uuid4()))
    assert result.returncode == 1 and result.stderr.startswith("error: no record set")
