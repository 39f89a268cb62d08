"""b3lb-push against a running b3lb (the Harness): enqueue, tar, curl, the upload endpoint, the delete.

The node side is real (b3lb-push as a program, tar, curl); only `bbb-record --delete` is a stand-in
script that records its calls and removes the folders.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tarfile
import uuid
from pathlib import Path

import pytest
from node_support import Node

from b3lb.testing.harness import Harness

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("tar") is None,
    reason="b3lb-push uploads with curl and tar: install both to run these tests",
)

MEETING = "183f0bf3a0982a127bdb8161e0c44eb696b3e75c-1700000000000"


async def make_set(h: Harness, nonce: str) -> None:
    """The record set create would have made for a recorded meeting."""
    assert h.pool is not None
    secret_id = h.tenants["ABC"].secrets[0][0]
    await h.pool.execute(
        "INSERT INTO record_set (id, nonce, secret_id, meeting_id, tenant_slug) "
        "VALUES ($1::text, $1::uuid, $2, 'room-1', 'ABC')",
        nonce, secret_id,
    )


async def stored_names(h: Harness, key: str) -> list[str]:
    """The member names of the archive b3lb stored."""
    assert h.runtime is not None
    data = b"".join([chunk async for chunk in h.runtime.storage.read(key)])
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return sorted(member.name for member in archive.getmembers() if member.isfile())


async def push(node: Node, command: str, *args: str) -> tuple[int, str]:
    # In a thread: the load balancer answering the upload runs on this test's event loop.
    done = await asyncio.to_thread(node.push, command, *args)
    return done.returncode, done.stderr


def counting_curl(node: Node) -> Path:
    """A curl that counts its runs (uploads) in a file, configured through the config file."""
    count = node.root / "curl-runs"
    wrapper = node.root / "curl-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho run >> "{count}"\nexec "{shutil.which("curl")}" "$@"\n')
    wrapper.chmod(0o755)
    (node.root / "b3lb-push.conf").write_text(f"curl = {wrapper}\n")
    return count


@pytest.mark.gen_test(timeout=120)
async def test_upload_then_delete_once(db_url: str, tmp_path: Path) -> None:
    node, nonce = Node(tmp_path), str(uuid.uuid4())
    async with Harness(db_url) as h:
        await make_set(h, nonce)
        node.recording(MEETING, nonce)
        base = f"http://127.0.0.1:{h.port}/"
        status, err = await push(node, "enqueue", "--meeting-id", MEETING)
        assert status == 0, err
        status, err = await push(node, "run", "--base-url", base, "--host-header", "lb.test")
        assert status == 0, err
        assert f"{MEETING}: uploaded" in err and nonce not in err

        assert h.pool is not None
        row = await h.pool.fetchrow("SELECT status, archive_key, internal_id, meta_name FROM record_set WHERE id = $1",
                                    nonce)
        assert (row["status"], row["internal_id"], row["meta_name"]) == ("UPLOADED", MEETING, "Room 1")
        # The archive is the presentation folder's content (tar -C <dir> .), as b3lb's renderer expects.
        assert await stored_names(h, row["archive_key"]) == [
            "./cursor.xml", "./metadata.xml", "./presentation/d1/svgs/slide1.svg", "./shapes.svg",
        ]
        assert node.deletions() == [MEETING]  # bbb-record --delete ran, once
        assert node.entries() == []
        assert not (node.published / MEETING).exists()

        # Nothing left to do: a second run uploads nothing and deletes nothing.
        status, err = await push(node, "run", "--base-url", base)
        assert status == 0, err
        assert "uploaded" not in err and node.deletions() == [MEETING]
        # The same recording queued again (a re-run hook) is refused: it was uploaded already.
        node.recording(MEETING, nonce)
        status, err = await push(node, "enqueue", "--meeting-id", MEETING)
        assert status == 0 and "already uploaded, not queued again" in err
        assert node.entries() == []


@pytest.mark.gen_test(timeout=120)
async def test_unknown_nonce_keeps_the_recording(db_url: str, tmp_path: Path) -> None:
    node, nonce = Node(tmp_path), str(uuid.uuid4())
    async with Harness(db_url) as h:
        folder = node.recording(MEETING, nonce)  # no record set with this nonce at b3lb: 404
        base = f"http://127.0.0.1:{h.port}/"
        await push(node, "enqueue", "--meeting-id", MEETING)
        status, err = await push(node, "run", "--base-url", base)
        assert status == 1
        assert "upload failed, kept for a later run" in err and "HTTP 404" in err
        [entry] = node.entries()
        assert entry["attempts"] == 1 and entry["uploaded_at"] is None
        assert "HTTP 404" in str(entry["last_error"])
        assert node.deletions() == []
        assert (folder / "metadata.xml").exists() and (node.raw / MEETING / "events.xml").exists()

        # Once b3lb knows the set (e.g. the operator fixed it), the next run delivers it.
        await make_set(h, nonce)
        status, err = await push(node, "run", "--base-url", base, "--max-backoff", "0")
        assert status == 0, err
        assert node.deletions() == [MEETING] and node.entries() == []
        assert h.pool is not None
        assert await h.pool.fetchval("SELECT status FROM record_set WHERE id = $1", nonce) == "UPLOADED"


@pytest.mark.gen_test(timeout=120)
async def test_failed_delete_is_retried_without_uploading_again(db_url: str, tmp_path: Path) -> None:
    node, nonce = Node(tmp_path), str(uuid.uuid4())
    runs = counting_curl(node)
    async with Harness(db_url) as h:
        await make_set(h, nonce)
        folder = node.recording(MEETING, nonce)
        base = f"http://127.0.0.1:{h.port}/"
        await push(node, "enqueue", "--meeting-id", MEETING)
        failing = f"{shutil.which('false') or '/bin/false'}"
        status, err = await push(node, "run", "--base-url", base, "--delete-command", failing)
        assert status == 1
        assert "deleting the local copy failed" in err
        [entry] = node.entries()
        assert entry["uploaded_at"] is not None and "delete command failed" in str(entry["last_error"])
        assert folder.exists()
        assert h.pool is not None
        assert await h.pool.fetchval("SELECT status FROM record_set WHERE id = $1", nonce) == "UPLOADED"

        status, err = await push(node, "run", "--base-url", base, "--max-backoff", "0")
        assert status == 0, err
        assert node.deletions() == [MEETING] and node.entries() == []
        assert runs.read_text().splitlines() == ["run"]  # curl ran once: the second run only deleted
