"""Recording-ready callbacks from the outbox (issue 10.6, spec 3.4, 3.5 (REC)) to a real receiver on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import asyncpg
import jwt
import pytest
from prometheus_client import REGISTRY
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from b3lb.db import Q
from b3lb.recordings import callbacks
from b3lb.recordings.callbacks import backoff_seconds, deliver_due, run_outbox, wake
from b3lb.runtime import Runtime
from b3lb.testing.harness import LOOPBACK_CALLBACKS, Harness

SAFETY = 20.0  # seconds a waiting test gives up after (never asserted on)


# ---------------------------------------------------------------- a frontend that receives callbacks


@dataclass
class Received:
    path: str  # with its query
    content_type: str
    fields: dict[str, list[str]]
    verified_with: str | None  # the accepted key the JWT verified with, None when none did
    payload: dict[str, Any] | None
    header: dict[str, Any] | None


@dataclass
class Receiver:
    """Accepts a callback only when its JWT verifies with one of `keys` (else 401, as BBB's frontends do);
    answers verified ones with the next code of `script[path]` (200 when none is left)."""

    keys: list[str] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)
    delay: float = 0.0
    hold: int = 0  # this many requests wait for `gate` before being answered (a process stalled mid-round)
    held: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    server: HTTPServer | None = None

    def url(self, path: str = "/ready", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def handle(self, request: Any) -> int:
        fields = parse_qs(request.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        token = fields.get("signed_parameters", [""])[0]
        verified, payload, header = None, None, None
        for key in self.keys:
            try:
                payload = jwt.decode(token, key, algorithms=["HS256"])
            except jwt.InvalidTokenError:
                continue
            verified, header = key, jwt.get_unverified_header(token)
            break
        self.requests.append(Received(request.uri, request.headers.get("Content-Type", ""), fields, verified,
                                      payload, header))
        self.arrived.set()
        if verified is None:
            return 401
        codes = self.script.get(request.path, [])
        return codes.pop(0) if codes else 200

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(SAFETY):
            while len(self.requests) < count:
                self.arrived.clear()
                await self.arrived.wait()

    async def wait_held(self, count: int) -> None:
        async with asyncio.timeout(SAFETY):
            while self.held < count:
                self.arrived.clear()
                await self.arrived.wait()

    def record_ids(self) -> list[str]:
        return [r.payload["record_id"] for r in self.requests if r.payload is not None]


class ReceiverHandler(RequestHandler):
    def initialize(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def post(self, _: str) -> None:
        receiver = self.receiver
        if receiver.held < receiver.hold:
            receiver.held += 1
            receiver.arrived.set()
            await receiver.gate.wait()
        elif receiver.delay:
            await asyncio.sleep(receiver.delay)
        self.set_status(self.receiver.handle(self.request))
        self.finish()


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    """A Receiver listening on 127.0.0.1 (a free port) for the block."""
    r = Receiver()
    sock = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)[0]
    r.port = sock.getsockname()[1]
    r.server = HTTPServer(Application([(r"/(.*)", ReceiverHandler, {"receiver": r})]))
    r.server.add_sockets([sock])
    try:
        yield r
    finally:
        r.server.stop()
        await r.server.close_all_connections()


# ---------------------------------------------------------------- rows as add_record queues them


async def queue_callback(pool: asyncpg.Pool, secret_id: int | None, url: str, *, meeting_id: str = "room-42",
                         record_meeting_id: str = "") -> str:
    """A rendered set with one record and its outbox row; the record's recordID."""
    profile_id = await pool.fetchval(
        "INSERT INTO record_profile (name) VALUES ('video') ON CONFLICT (name) DO UPDATE SET name = excluded.name "
        "RETURNING id")
    nonce = uuid.uuid4()
    await pool.execute(
        "INSERT INTO record_set (id, nonce, secret_id, meeting_id, tenant_slug, status) "
        "VALUES ($1::uuid::text, $1, $2, $3, 'ABC', 'RENDERED')", nonce, secret_id, meeting_id)
    record_id = str(uuid.uuid4())
    row_id = await pool.fetchval(
        "INSERT INTO record (recordset_id, record_id, profile_id, meeting_id, tenant_slug) "
        "VALUES ($1, $2, $3, $4, 'ABC') RETURNING id", str(nonce), record_id, profile_id, record_meeting_id)
    await pool.execute("INSERT INTO callback_outbox (record_id, url) VALUES ($1, $2)", row_id, url)
    return record_id


async def outbox(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT o.*, r.record_id AS api_record_id, extract(epoch FROM o.next_attempt - now()) AS due_in "
        "FROM callback_outbox o JOIN record r ON r.id = o.record_id ORDER BY o.id")
    return [dict(row) for row in rows]


async def make_due(pool: asyncpg.Pool) -> None:
    """As if the back-off (or a lease) had run out."""
    await pool.execute("UPDATE callback_outbox SET next_attempt = now()")


def counted(result: str) -> float:
    return REGISTRY.get_sample_value("b3lb_recording_callbacks_total", {"result": result}) or 0.0


def counts() -> dict[str, float]:
    return {result: counted(result) for result in ("sent", "failed", "retry", "dropped")}


def grown(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before[k] for k, v in counts().items() if v != before[k]}


def b3lb_log(caplog: pytest.LogCaptureFixture) -> str:
    """What b3lb logged (the receiver's own access log shows the query, as any frontend's would)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("b3lb"))


def harness(db_url: str, *, guarded: bool = False, **recordings: object) -> Harness:
    return Harness(db_url, nodes=1, callbacks=None if guarded else LOOPBACK_CALLBACKS, recordings=recordings)


def key_of(h: Harness) -> tuple[int, str]:
    return h.tenants["ABC"].secrets[0]


# ---------------------------------------------------------------- delivery


@pytest.mark.gen_test(timeout=60)
async def test_delivered_once_as_a_form_with_a_jwt_of_the_tenant_secret(db_url, caplog):
    async with receiving() as receiver:
        async with harness(db_url) as h:
            secret_id, secret = key_of(h)
            receiver.keys = [secret]
            before = counts()
            url = receiver.url("/recording_ready?token=frontend-secret&x=1")
            first = await queue_callback(h.pool, secret_id, url, meeting_id="room 42&x=ü")
            second = await queue_callback(h.pool, secret_id, url, meeting_id="set-id", record_meeting_id="record-id")
            with caplog.at_level(logging.DEBUG, logger="b3lb"):
                assert await deliver_due(h.runtime) == 2
                assert await deliver_due(h.runtime) == 0  # nothing is sent twice
            assert len(receiver.requests) == 2 and await outbox(h.pool) == []
            by_id = {r.payload["record_id"]: r for r in receiver.requests}
            for record_id, meeting_id in ((first, "room 42&x=ü"), (second, "record-id")):
                got = by_id[record_id]
                assert got.path == "/recording_ready?token=frontend-secret&x=1"  # the frontend's query unchanged
                assert got.content_type == "application/x-www-form-urlencoded"
                assert list(got.fields) == ["signed_parameters"] and len(got.fields["signed_parameters"]) == 1
                assert got.verified_with == secret and got.header == {"alg": "HS256", "typ": "JWT"}
                assert got.payload == {"meeting_id": meeting_id, "record_id": record_id}
            assert grown(before) == {"sent": 2}
            assert REGISTRY.get_sample_value("b3lb_recording_callback_outbox") == 0
            text = b3lb_log(caplog)
            assert "frontend-secret" not in text and secret not in text and "signed_parameters" not in text


@pytest.mark.gen_test(timeout=60)
async def test_transient_failures_are_retried_with_growing_backoff(db_url, caplog):
    async with receiving() as receiver:
        async with harness(db_url, callback_backoff=100.0) as h:
            secret_id, secret = key_of(h)
            receiver.keys = [secret]
            receiver.script["/ready"] = [500, 503]
            before = counts()
            record_id = await queue_callback(h.pool, secret_id, receiver.url("/ready?token=abc"))
            with caplog.at_level(logging.INFO, logger="b3lb"):
                assert await deliver_due(h.runtime) == 1
            (row,) = await outbox(h.pool)
            assert (row["attempts"], row["last_error"]) == (1, "HTTP 500")
            assert 90 < row["due_in"] <= 100  # callback_backoff
            assert await deliver_due(h.runtime) == 0  # not due yet: nothing sent
            assert len(receiver.requests) == 1
            await make_due(h.pool)
            assert await deliver_due(h.runtime) == 1
            (row,) = await outbox(h.pool)
            assert (row["attempts"], row["last_error"]) == (2, "HTTP 503")
            assert 190 < row["due_in"] <= 200  # doubled
            await make_due(h.pool)
            assert await deliver_due(h.runtime) == 1
            assert await outbox(h.pool) == []
            assert receiver.record_ids() == [record_id] * 3
            assert grown(before) == {"retry": 2, "sent": 1}
            assert "/ready" in b3lb_log(caplog) and "token=abc" not in b3lb_log(caplog)
            # The back-off is capped at an hour.
            assert backoff_seconds(h.runtime, 1) == 100 and backoff_seconds(h.runtime, 6) == 3200
            assert backoff_seconds(h.runtime, 7) == 3600 and backoff_seconds(h.runtime, 60) == 3600


@pytest.mark.gen_test(timeout=60)
async def test_an_unreachable_frontend_is_retried(db_url):
    async with receiving() as receiver:
        async with harness(db_url) as h:
            secret_id, _ = key_of(h)
            await queue_callback(h.pool, secret_id, f"http://127.0.0.1:{receiver.port}/nothing-listens")
            receiver.server.stop()  # connection refused: no answer at all
            await receiver.server.close_all_connections()
            assert await deliver_due(h.runtime) == 1
            (row,) = await outbox(h.pool)
            assert row["attempts"] == 1 and row["last_error"].startswith("cannot connect")


@pytest.mark.gen_test(timeout=60)
async def test_the_loop_retries_until_delivered_and_wakes_early(db_url):
    async with receiving() as receiver:
        async with harness(db_url, callback_backoff=0.05) as h:
            secret_id, secret = key_of(h)
            receiver.keys = [secret]
            receiver.script["/ready"] = [500]
            first = await queue_callback(h.pool, secret_id, receiver.url())
            task = asyncio.ensure_future(run_outbox(h.runtime))
            try:
                await receiver.wait_for(2)  # a 500, then (after the back-off) the 200
                second = await queue_callback(h.pool, secret_id, receiver.url())
                wake(h.runtime)
                await receiver.wait_for(3)
                async with asyncio.timeout(SAFETY):
                    while await outbox(h.pool):
                        await asyncio.sleep(0.02)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert receiver.record_ids() == [first, first, second]


@pytest.mark.gen_test(timeout=60)
async def test_404_and_410_are_final(db_url, caplog):
    async with receiving() as receiver:
        async with harness(db_url) as h:
            secret_id, secret = key_of(h)
            receiver.keys = [secret]
            receiver.script = {"/gone": [404], "/deleted": [410]}
            before = counts()
            await queue_callback(h.pool, secret_id, receiver.url("/gone"))
            await queue_callback(h.pool, secret_id, receiver.url("/deleted"))
            with caplog.at_level(logging.INFO, logger="b3lb"):
                assert await deliver_due(h.runtime) == 2
            assert await outbox(h.pool) == [] and len(receiver.requests) == 2
            assert grown(before) == {"failed": 2}
            assert "HTTP 404" in b3lb_log(caplog) and "HTTP 410" in b3lb_log(caplog)


@pytest.mark.gen_test(timeout=60)
async def test_secret2_after_the_secret_was_refused(db_url):
    async with receiving() as receiver:
        async with harness(db_url) as h:
            secret_id, secret = key_of(h)
            rollover = "b" * 64
            await h.pool.execute("UPDATE secret SET secret2 = $1 WHERE id = $2", rollover, secret_id)
            receiver.keys = [rollover]  # the frontend knows only the new secret
            record_id = await queue_callback(h.pool, secret_id, receiver.url())
            assert await deliver_due(h.runtime) == 1
            assert await outbox(h.pool) == []
            assert [r.verified_with for r in receiver.requests] == [None, rollover]
            assert jwt.decode(receiver.requests[0].fields["signed_parameters"][0], secret,
                              algorithms=["HS256"])["record_id"] == record_id  # the first was signed with secret

            # Neither verifies: both are tried in one attempt, then the row waits.
            receiver.keys = ["c" * 64]
            receiver.requests.clear()
            await queue_callback(h.pool, secret_id, receiver.url())
            assert await deliver_due(h.runtime) == 1
            assert len(receiver.requests) == 2
            (row,) = await outbox(h.pool)
            assert (row["attempts"], row["last_error"]) == (1, "HTTP 401")


@pytest.mark.gen_test(timeout=60)
async def test_an_empty_secret2_is_skipped(db_url):
    async with receiving() as receiver:
        async with harness(db_url) as h:
            secret_id, _ = key_of(h)
            receiver.keys = ["d" * 64]  # refuses the tenant's secret
            await queue_callback(h.pool, secret_id, receiver.url())
            assert await deliver_due(h.runtime) == 1
            assert len(receiver.requests) == 1  # no second request with an empty key
            (row,) = await outbox(h.pool)
            assert row["last_error"] == "HTTP 401"


@pytest.mark.gen_test(timeout=60)
async def test_the_guard_refuses_loopback_and_bad_urls_without_sending(db_url, caplog):
    async with receiving() as receiver:
        async with harness(db_url, guarded=True) as h:  # no [callbacks] allowed_networks
            secret_id, secret = key_of(h)
            receiver.keys = [secret]
            before = counts()
            for url in (receiver.url("/ready?token=abc"), receiver.url("/ready", host="localhost"),
                        receiver.url("/ready", host="[::ffff:127.0.0.1]"), f"ftp://127.0.0.1:{receiver.port}/",
                        "http://user:pw@example.org/", "not a url", "http://[broken/"):
                await queue_callback(h.pool, secret_id, url)
            with caplog.at_level(logging.INFO, logger="b3lb"):
                assert await deliver_due(h.runtime) == 7
            assert receiver.requests == [] and await outbox(h.pool) == []
            assert grown(before) == {"failed": 7}
            logged = b3lb_log(caplog)
            assert "refused" in logged and "token=abc" not in logged and "pw" not in logged


@pytest.mark.gen_test(timeout=60)
async def test_gives_up_after_callback_attempts(db_url, caplog):
    async with receiving() as receiver:
        async with harness(db_url, callback_attempts=3) as h:
            secret_id, secret = key_of(h)
            receiver.keys = [secret]
            receiver.script["/ready"] = [500] * 10
            before = counts()
            await queue_callback(h.pool, secret_id, receiver.url())
            with caplog.at_level(logging.INFO, logger="b3lb"):
                for attempt in range(1, 4):
                    assert await deliver_due(h.runtime) == 1
                    rows = await outbox(h.pool)
                    assert [r["attempts"] for r in rows] == ([attempt] if attempt < 3 else [])
                    await make_due(h.pool)
            assert await deliver_due(h.runtime) == 0
            assert len(receiver.requests) == 3
            assert grown(before) == {"retry": 2, "failed": 1}
            assert "given up after 3 attempts" in b3lb_log(caplog)


@pytest.mark.gen_test(timeout=60)
async def test_rows_of_deleted_secrets_and_records_are_dropped(db_url):
    async with receiving() as receiver:
        async with harness(db_url) as h:
            secret_id, secret = key_of(h)
            receiver.keys = [secret]
            before = counts()
            kept = await queue_callback(h.pool, secret_id, receiver.url())
            deleting = await queue_callback(h.pool, secret_id, receiver.url())
            await h.pool.execute("UPDATE record SET deleting = true WHERE record_id = $1", deleting)
            orphan = await queue_callback(h.pool, secret_id, receiver.url())
            await h.pool.execute("UPDATE record_set SET secret_id = NULL FROM record r "
                                 "WHERE r.recordset_id = record_set.id AND r.record_id = $1", orphan)
            assert await deliver_due(h.runtime) == 3
            assert receiver.record_ids() == [kept] and await outbox(h.pool) == []
            assert grown(before) == {"sent": 1, "dropped": 2}
            # The secret itself deleted (its sets keep secret_id NULL): dropped too.
            await queue_callback(h.pool, secret_id, receiver.url())
            await h.pool.execute("DELETE FROM secret WHERE id = $1", secret_id)
            assert await deliver_due(h.runtime) == 1
            assert len(receiver.requests) == 1 and await outbox(h.pool) == []


# ---------------------------------------------------------------- several processes, restarts, outages


@pytest.mark.gen_test(timeout=90)
async def test_two_processes_send_each_callback_exactly_once(db_url):
    async with receiving() as receiver, harness(db_url) as h:
        secret_id, secret = key_of(h)
        receiver.keys = [secret]
        receiver.delay = 0.05  # requests overlap: one process claims while the other's are in flight
        queued = [await queue_callback(h.pool, secret_id, receiver.url()) for _ in range(50)]
        other_pool = await asyncpg.create_pool(db_url, min_size=1, max_size=5)
        other = Runtime(h.config, other_pool)

        async def drain(runtime: Runtime, rounds: list[int]) -> None:
            """Rounds one after the other, as run_outbox does, until nothing is due."""
            while claimed := await deliver_due(runtime):
                rounds.append(claimed)

        mine: list[int] = []
        theirs: list[int] = []
        try:
            # Staggered: the second process starts while the first one's callbacks are in flight.
            first = asyncio.ensure_future(drain(h.runtime, mine))
            await receiver.wait_for(1)
            await asyncio.gather(drain(other, theirs), first)
        finally:
            await other.nodes.aclose()
            await other_pool.close()
        assert sorted(receiver.record_ids()) == sorted(queued)  # each once
        assert sum(mine) + sum(theirs) == 50 and mine and theirs  # both took a share
        assert await outbox(h.pool) == []


@pytest.mark.gen_test(timeout=60)
async def test_rows_of_a_process_that_dies_mid_round_are_due_again_at_once(db_url):
    async with receiving() as receiver:
        async with harness(db_url) as h:
            secret_id, secret = key_of(h)
            receiver.keys = [secret]
            taken = await queue_callback(h.pool, secret_id, receiver.url())
            # A process takes the row in its round's transaction, then dies before sending.
            dying = await asyncpg.connect(db_url)
            await dying.execute("BEGIN")
            (row,) = await dying.fetch(Q.outbox_claim, 10)
            assert row["record_id"] == taken
            pending = await queue_callback(h.pool, secret_id, receiver.url())  # queued meanwhile
            restarted_pool = await asyncpg.create_pool(db_url, min_size=1, max_size=5)
            restarted = Runtime(h.config, restarted_pool)
            try:
                assert await deliver_due(restarted) == 1  # the held row is skipped, not waited for
                assert receiver.record_ids() == [pending]
                dying.terminate()  # its transaction ends with it: no lease to wait for
                assert await deliver_due(restarted) == 1
            finally:
                await restarted.nodes.aclose()
                await restarted_pool.close()
            assert receiver.record_ids() == [pending, taken] and await outbox(h.pool) == []


async def lease_runs_out(pool: asyncpg.Pool) -> None:
    """Whatever lease a claim once set runs out: every row is due by the clock. Rows a round holds are
    left alone (they need nothing: a round does not move them)."""
    await pool.execute("UPDATE callback_outbox SET next_attempt = now() - interval '1 hour' "
                       "WHERE id IN (SELECT id FROM callback_outbox FOR UPDATE SKIP LOCKED)")


@pytest.mark.gen_test(timeout=60)
async def test_a_stalled_round_keeps_its_rows_from_other_processes(db_url):
    async with receiving() as receiver, harness(db_url, callback_timeout=30.0) as h:
        secret_id, secret = key_of(h)
        receiver.keys = [secret]
        queued = [await queue_callback(h.pool, secret_id, receiver.url()) for _ in range(3)]
        receiver.hold = 3  # the first process's requests stall (a slow frontend, a blocked loop)
        other_pool = await asyncpg.create_pool(db_url, min_size=1, max_size=5)
        other = Runtime(h.config, other_pool)
        first = asyncio.ensure_future(deliver_due(h.runtime))
        try:
            await receiver.wait_held(3)
            await lease_runs_out(h.pool)
            assert all(row["due_in"] <= 0 for row in await outbox(h.pool))  # due by the clock...
            async with asyncio.timeout(SAFETY):
                assert await deliver_due(other) == 0  # ...yet held by the stalled round: not sent again
            # Only the outbox rows are locked: records and sets stay writable during a round.
            async with other_pool.acquire() as conn, conn.transaction():
                assert len(await conn.fetch("SELECT 1 FROM record FOR UPDATE NOWAIT")) == 3
                assert len(await conn.fetch("SELECT 1 FROM record_set FOR UPDATE NOWAIT")) == 3
                with pytest.raises(asyncpg.LockNotAvailableError):
                    await conn.fetch("SELECT 1 FROM callback_outbox FOR UPDATE NOWAIT")
            receiver.gate.set()
            assert await first == 3
            assert await deliver_due(other) == 0
        finally:
            receiver.gate.set()
            await asyncio.gather(first, return_exceptions=True)
            await other.nodes.aclose()
            await other_pool.close()
        assert sorted(receiver.record_ids()) == sorted(queued)  # each exactly once
        assert await outbox(h.pool) == []


@pytest.mark.gen_test(timeout=60)
async def test_the_server_ends_a_round_that_hangs_and_its_rows_go_to_another_process(db_url, monkeypatch):
    async with receiving() as receiver, harness(db_url, callback_timeout=30.0) as h:
        secret_id, secret = key_of(h)
        receiver.keys = [secret]
        queued = await queue_callback(h.pool, secret_id, receiver.url())
        receiver.hold = 1
        expected = (30.0 * 2 + callbacks.SEND_SLACK + callbacks.ROUND_MARGIN) * 1000  # both requests, a margin
        assert callbacks.round_timeout_ms(h.runtime) == expected
        monkeypatch.setattr(callbacks, "round_timeout_ms", lambda runtime: 200)  # a hang outlasts it at once
        other_pool = await asyncpg.create_pool(db_url, min_size=1, max_size=5)
        other = Runtime(h.config, other_pool)
        hung = asyncio.ensure_future(deliver_due(h.runtime))
        try:
            await receiver.wait_held(1)
            async with asyncio.timeout(SAFETY):
                while not await deliver_due(other):  # until the server has ended the hung round
                    await asyncio.sleep(0.05)
            receiver.gate.set()
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
                await hung  # its outcome cannot be stored: that round is gone
        finally:
            receiver.gate.set()
            await asyncio.gather(hung, return_exceptions=True)
            await other.nodes.aclose()
            await other_pool.close()
        # Sent by both (the hung one's request was already on its way): at least once, never lost.
        assert receiver.record_ids() == [queued, queued]
        assert await outbox(h.pool) == []


@pytest.mark.gen_test(timeout=60)
async def test_the_loop_survives_a_database_outage(db_url, caplog):
    async with receiving() as receiver:
        async with harness(db_url) as h:
            secret_id, secret = key_of(h)
            receiver.keys = [secret]
            record_id = await queue_callback(h.pool, secret_id, receiver.url())
            unused = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
            dead_port = unused.sockets[0].getsockname()[1]
            unused.close()
            await unused.wait_closed()
            dead_pool = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{dead_port}/postgres", min_size=0)
            runtime = Runtime(h.config, dead_pool)
            task = asyncio.ensure_future(run_outbox(runtime))
            try:
                with caplog.at_level(logging.WARNING):
                    async with asyncio.timeout(SAFETY):
                        while runtime.database.failures < 3:
                            await asyncio.sleep(0.05)
                            wake(runtime)
                    assert not task.done()
                    runtime.pool = h.pool  # the database is back
                    await receiver.wait_for(1)
                    async with asyncio.timeout(SAFETY):
                        while runtime.database.down:
                            await asyncio.sleep(0.02)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await runtime.nodes.aclose()
                await dead_pool.close()
            assert receiver.record_ids() == [record_id]
            outage_lines = [r for r in caplog.records if "unavailable" in r.getMessage()]
            assert len(outage_lines) == 1 and "callback outbox" in outage_lines[0].getMessage()
            assert not any(r.exc_info for r in caplog.records)  # no traceback per round


def test_the_form_body_is_what_bbb_sends():
    body = callbacks.signed_body("room-42", "0c5e3f4c-2a7e-4b1d-9a55-6f3d2c1b0a99", "s" * 64)
    fields = parse_qs(body.decode("ascii"), strict_parsing=True)
    assert list(fields) == ["signed_parameters"]
    token = fields["signed_parameters"][0]
    assert jwt.decode(token, "s" * 64, algorithms=["HS256"]) == {
        "meeting_id": "room-42", "record_id": "0c5e3f4c-2a7e-4b1d-9a55-6f3d2c1b0a99"}
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "t" * 64, algorithms=["HS256"])
