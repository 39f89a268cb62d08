"""Database outages and durability (issue 9, items 5 and 6).

These tests run b3lb against a private PostgreSQL cluster of their own, built with the pgserver
binaries, listening on 127.0.0.1 and stopped hard (`pg_ctl stop -m immediate`: what a crash or an
OOM kill does) and started again on the same port.

The cluster's WAL writer only wakes every 10 s (`wal_writer_delay`), so an asynchronously
committed transaction certainly still sits in memory when the hard stop comes: with
`synchronous_commit = off` the durability test loses creates every time, not by luck of timing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from db_support import _migrate, fresh_schema, run
from lxml import etree
from prometheus_client import REGISTRY
from tests_support import free_port

from b3lb.config import load_config
from b3lb.db import Database
from b3lb.testing.harness import Harness

pgserver_commands = pytest.importorskip("pgserver._commands", reason="the pgserver wheel provides PostgreSQL")
BIN = pgserver_commands.POSTGRES_BIN_PATH


class PrivateCluster:
    """A PostgreSQL cluster in a temporary folder, on a fixed loopback port, that tests may crash."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="b3lb-outage-"))
        self.data = self.folder / "pgdata"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: the same user pgserver uses
            from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

            self.user = "pgserver"
            entry = ensure_user_exists(self.user)
            ensure_prefix_permissions(BIN)
            ensure_folder_permissions(BIN, 0o555)
            ensure_folder_permissions(BIN.parent / "lib", 0o444)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--encoding=utf8")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([str(BIN / program), *args], check=True, user=self.user, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c wal_writer_delay=10000 -c max_connections=40"
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-o", options,
                  "-l", str(self.folder / "log"), "start")

    def ensure_running(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "status")
        except subprocess.CalledProcessError:
            self.start()

    def crash(self) -> None:
        """Stop at once, without a checkpoint or a WAL flush (the next start runs crash recovery)."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", "immediate", "stop")

    def remove(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", "fast", "stop")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    pg = PrivateCluster()
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()


@pytest.fixture
def cluster_db(cluster: PrivateCluster) -> Iterator[str]:
    """A fresh, migrated schema on the private cluster (running again if a test left it stopped)."""
    cluster.ensure_running()
    with fresh_schema(cluster.url) as url:
        run(_migrate(url))
        yield url
        cluster.ensure_running()  # the schema is dropped even when a test failed during its outage


def answer(response: object) -> tuple[int, str | None, str | None]:
    root = etree.fromstring(response.body)  # type: ignore[attr-defined]
    return response.code, root.findtext("returncode"), root.findtext("messageKey")  # type: ignore[attr-defined]


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def meeting_ids(url: str) -> set[str]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return {r["meeting_id"] for r in await conn.fetch("SELECT meeting_id FROM meeting")}
    finally:
        await conn.close()


# -- item 5: durable commits ------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_serving_pool_commits_durably_unless_configured_off(db_url):
    base = load_config(env={})  # conf/b3lb.conf, as `b3lb serve` reads it
    assert base.database.synchronous_commit == "on"
    for setting, expected in ((None, "on"), ("off", "off")):
        database = base.database if setting is None else dataclasses.replace(base.database, synchronous_commit=setting)
        config = dataclasses.replace(base, database=dataclasses.replace(database, url=db_url))
        db = Database(config)
        pool = await db.open(min_size=2, max_size=2, serving=True)
        try:
            async with pool.acquire() as first, pool.acquire() as second:  # every session of the pool
                assert [await c.fetchval("SHOW synchronous_commit") for c in (first, second)] == [expected] * 2
        finally:
            await db.close()


@pytest.mark.gen_test(timeout=120)
async def test_creates_answered_success_survive_a_hard_stop(cluster, cluster_db):
    async with Harness(cluster_db, nodes=2) as h:
        created = [f"durable-{i}" for i in range(20)]
        for meeting_id in created:
            r = await h.call("create", f"name=Room&meetingID={meeting_id}")
            assert answer(r)[:2] == (200, "SUCCESS")
        await asyncio.to_thread(cluster.crash)
        await asyncio.to_thread(cluster.start)
        assert await meeting_ids(cluster_db) == set(created)


# -- item 6: an outage answers cleanly, is logged once, counted, and ends by itself -----------


@pytest.mark.gen_test(timeout=120)
async def test_database_outage_answers_failed_logs_once_and_recovers(cluster, cluster_db, caplog):
    caplog.set_level(logging.INFO, logger="b3lb")
    async with Harness(cluster_db, nodes=2, tenants=("ABC", "XYZ"), cache_refresh_interval=0.1,
                       counter_flush_interval=0.1) as h:
        assert answer(await h.call("create", "name=Room&meetingID=before"))[:2] == (200, "SUCCESS")
        assert answer(await h.call("create", "name=Room&meetingID=xyz", slug="XYZ"))[:2] == (200, "SUCCESS")
        await h.poll()
        assert answer(await h.call("getMeetings"))[:2] == (200, "SUCCESS")  # kept in memory from now on
        join = "fullName=Ann&meetingID=before&role=VIEWER"
        stats_token = await h.pool.fetchval("SELECT stats_token FROM tenant WHERE slug = 'ABC'")
        errors_before = sample("b3lb_database_errors_total")
        caplog.clear()

        await asyncio.to_thread(cluster.crash)
        creates = await asyncio.gather(*(h.call("create", f"name=Room&meetingID=during-{i}") for i in range(30)))
        assert {answer(r) for r in creates} == {(200, "FAILED", "databaseUnavailable")}
        for _ in range(5):  # in-memory calls keep working
            r = await h.call("join", join)
            assert r.code == 302 and "/bigbluebutton/api/join?" in r.headers["Location"]
        assert answer(await h.call("getMeetings"))[:2] == (200, "SUCCESS")  # the answer kept before
        # an answer not kept needs the meetings' elements from their rows: a clean failure
        assert answer(await h.call("getMeetings", slug="XYZ")) == (200, "FAILED", "databaseUnavailable")
        for _ in range(3):  # health checks say so, without a log line each
            assert (r := await h.request("/b3lb/ping")).code == 503 and r.body == b"Doh!"
        # b3lb's other endpoints that need the database answer 503, logged once with the rest
        auth = {"Authorization": stats_token}
        for _ in range(2):
            assert (await h.request("/b3lb/t/abc/stats", headers=auth)).code == 503
            assert (await h.request("/b3lb/t/abc/logo")).code == 503
            r = await h.request(f"/b3lb/b/meeting/end?nonce={uuid.uuid4()}&meetingID=before")
            assert r.code == 204
        await h.poll()
        await h.poll()
        await asyncio.sleep(0.6)  # several refresh and flush cycles fail meanwhile (joins left counts to flush)

        assert len(lines(caplog, "database unavailable")) == 1
        assert len(lines(caplog, "cannot store poll results")) == 1
        assert lines(caplog, "available again") == []
        # no tracebacks and no error lines: a 503 is an info line of the access log
        assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
        assert sample("b3lb_database_errors_total") - errors_before >= 30 + 1 + 3 + 2
        assert sample("b3lb_database_up") == 0.0

        await asyncio.to_thread(cluster.start)
        for _ in range(100):  # bounded: the pool reconnects on its next acquire
            r = await h.call("create", "name=Room&meetingID=after")
            if answer(r)[1] == "SUCCESS":
                break
            await asyncio.sleep(0.1)
        assert answer(r)[:2] == (200, "SUCCESS")
        await h.poll()
        assert [r.getMessage().split(" after ")[0] for r in lines(caplog, "available again")] == [
            "database available again", "poll results store available again"]
        assert len(lines(caplog, "database unavailable")) == 1
        assert not h.runtime.database.down and not h.runtime.poll_store.down
        gc.collect()  # trackers of runtimes other tests left behind must not hold the gauge down
        assert sample("b3lb_database_up") == 1.0
        assert {"before", "after"} <= await meeting_ids(cluster_db)
        assert answer(await h.call("isMeetingRunning", "meetingID=after"))[:2] == (200, "SUCCESS")
        assert (await h.request("/b3lb/ping")).code == 200


@pytest.mark.gen_test(timeout=30)
async def test_a_statement_the_database_refuses_is_a_bug_not_an_outage(db_url, caplog):
    async with Harness(db_url, nodes=1) as h:
        await h.pool.execute("ALTER TABLE meeting RENAME TO meeting_elsewhere")  # the insert now fails
        r = await h.call("create", "name=Room&meetingID=bug")
        assert answer(r) == (500, "FAILED", "internalError")
        assert any(record.exc_info for record in caplog.records if "create failed" in record.getMessage())
        assert not h.runtime.database.down and lines(caplog, "database unavailable") == []
        await h.pool.execute("ALTER TABLE meeting_elsewhere RENAME TO meeting")
