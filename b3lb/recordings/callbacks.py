"""Recording-ready callbacks to frontends (spec 3.4, 3.5 with its (REC) choices), from a durable outbox.

`add_record` queues one `callback_outbox` row per published record (its set's ready URL). Every b3lb
process runs `run_outbox`: about once a second (or at once after `wake`) it runs one round in one
transaction on one connection: `SELECT ... FOR UPDATE SKIP LOCKED` of the due rows, send them all at
once, delete or reschedule each one, commit. The row locks are held for the whole round, so no other
process can take a row while it is being sent, however slow this one gets (the old lease, a time after
which others took the row again, let a stalled process and its successor both send). Another process's
round skips the locked rows and never waits for them.

Nothing lives in memory: a restart, a process dying mid-round or a database error before the commit
rolls the round back and leaves its rows due again at once. A frontend that already answered may then
get that callback once more: across a crash, delivery is at least once (inherent: a request cannot be
part of a database transaction). A round that stops talking to the database (a hung process) cannot
keep its rows forever: its transaction's idle_in_transaction_session_timeout, a margin more than both
requests of an attempt, makes the server end it.

The request is BBB's: `POST`, form-encoded `signed_parameters=<JWT>`, HS256 over
`{"meeting_id": <external meetingID>, "record_id": <recordID>}` signed with the secret of the set's
API endpoint, then once more with its `secret2` (when set) if the answer was neither a success nor
final. 2xx: delivered; 404/410: the frontend does not want it (final); a URL the guard refuses:
final; anything else: retried `callback_backoff * 2**(attempts-1)` seconds later (at most an hour),
`callback_attempts` times in all. Logs show the URL without its query; never a token or secret.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass
from urllib.parse import urlencode

import asyncpg

from b3lb.db import Q
from b3lb.nodeclient import NodeRequestError
from b3lb.outage import describe, is_database_unavailable
from b3lb.recordings.metrics import CALLBACKS, OUTBOX_DEPTH
from b3lb.runtime import Runtime
from b3lb.urlguard import URLRefused, loggable

log = logging.getLogger("b3lb.recordings.callbacks")

FORM = "application/x-www-form-urlencoded"
OUTBOX_BATCH = 20  # rows taken per round, all sent at once: the round lasts as long as its slowest
POLL_INTERVAL = 1.0  # seconds between rounds when nobody wakes the loop
SEND_SLACK = 1.0  # seconds an attempt may take beyond its two requests (URL checks, scheduling)
ROUND_MARGIN = 30.0  # seconds a round's transaction may idle beyond its attempts (a slow loop, GC)
MAX_BACKOFF = 3600.0
FINAL_CODES = frozenset({404, 410})
MAX_ERROR_CHARS = 200

# Result labels of CALLBACKS.
SENT = "sent"  # a 2xx answer
FAILED = "failed"  # a final answer (404/410), a refused URL, or given up after callback_attempts
RETRY = "retry"  # rescheduled
DROPPED = "dropped"  # nothing to send: the secret or the record is gone

_wakers: weakref.WeakKeyDictionary[Runtime, asyncio.Event] = weakref.WeakKeyDictionary()


def wake(runtime: Runtime) -> None:
    """Ask this process's outbox loop for a round now (after queuing a callback), not within a second."""
    _event(runtime).set()


def _event(runtime: Runtime) -> asyncio.Event:
    event = _wakers.get(runtime)
    if event is None:
        event = _wakers[runtime] = asyncio.Event()
    return event


def signed_body(meeting_id: str, record_id: str, secret: str) -> bytes:
    """The form body BBB sends: `signed_parameters=<JWT HS256>`."""
    import jwt  # here: PyJWT loads `cryptography` (some 10 MB) into processes that never send one

    token = jwt.encode({"meeting_id": meeting_id, "record_id": record_id}, secret, algorithm="HS256")
    return urlencode({"signed_parameters": token}).encode("ascii")


@dataclass(frozen=True, slots=True)
class Outcome:
    result: str  # SENT, FAILED, RETRY or DROPPED
    reason: str  # short, for logs and last_error; never a URL's query, a token or a secret


def attempt_seconds(runtime: Runtime) -> float:
    """The most one attempt takes: its two requests (secret, then secret2), each bounded by callback_timeout."""
    return runtime.config.recordings.callback_timeout * 2 + SEND_SLACK


def round_timeout_ms(runtime: Runtime) -> int:
    """idle_in_transaction_session_timeout of a round: the server ends a round idle longer than its
    attempts and a margin (a hung process), which gives its rows back."""
    return int((attempt_seconds(runtime) + ROUND_MARGIN) * 1000)


def backoff_seconds(runtime: Runtime, attempts: int) -> float:
    return min(runtime.config.recordings.callback_backoff * 2 ** max(attempts - 1, 0), MAX_BACKOFF)


async def _send(runtime: Runtime, row: asyncpg.Record) -> Outcome:
    """One attempt: with the secret, then with secret2 when the first answer allows another try."""
    if row["gone"]:
        return Outcome(DROPPED, "record deleted")
    if not row["secret"]:
        return Outcome(DROPPED, "secret deleted")
    keys = [row["secret"]]
    if row["secret2"] and row["secret2"] != row["secret"]:
        keys.append(row["secret2"])
    timeout = runtime.config.recordings.callback_timeout
    reason = ""
    for key in keys:
        body = signed_body(row["meeting_id"], row["record_id"], key)
        try:
            code = await runtime.nodes.post_callback(row["url"], body, FORM, timeout=timeout)
        except URLRefused as exc:
            return Outcome(FAILED, f"refused: {exc}")
        except NodeRequestError as exc:
            return Outcome(RETRY, str(exc))  # no answer at all: the other secret would not change that
        if 200 <= code < 300:
            return Outcome(SENT, f"HTTP {code}")
        if code in FINAL_CODES:
            return Outcome(FAILED, f"HTTP {code}")
        reason = f"HTTP {code}"
    return Outcome(RETRY, reason)


async def _attempt(runtime: Runtime, row: asyncpg.Record) -> Outcome:
    """_send, bounded in time, a bug counting as a failed attempt (it must not keep a row forever)."""
    try:
        async with asyncio.timeout(attempt_seconds(runtime)):
            return await _send(runtime, row)
    except TimeoutError:
        return Outcome(RETRY, "attempt timed out")
    except Exception as exc:
        log.exception("recording-ready callback for %s to %s failed unexpectedly", row["record_id"],
                      loggable(row["url"]))
        return Outcome(RETRY, f"internal error: {type(exc).__name__}")


@dataclass(frozen=True, slots=True)
class Settled:
    """What becomes of a row after its attempt: deleted (every result but RETRY) or tried again in `delay` s."""

    row: asyncpg.Record
    result: str
    reason: str
    attempts: int  # counting this one
    delay: float = 0.0


def _settle(runtime: Runtime, row: asyncpg.Record, outcome: Outcome) -> Settled:
    attempts = row["attempts"] + 1
    reason = outcome.reason[:MAX_ERROR_CHARS]
    if outcome.result != RETRY:
        return Settled(row, outcome.result, reason, attempts)
    if attempts >= runtime.config.recordings.callback_attempts:
        return Settled(row, FAILED, f"given up after {attempts} attempts: {reason}"[:MAX_ERROR_CHARS], attempts)
    return Settled(row, RETRY, reason, attempts, backoff_seconds(runtime, attempts))


async def _store(conn: asyncpg.Connection, settled: list[Settled]) -> None:
    """Every outcome of the round in two statements, inside the round's transaction."""
    done = [item.row["id"] for item in settled if item.result != RETRY]
    retry = [item for item in settled if item.result == RETRY]
    if done:
        await conn.execute(Q.outbox_done, done)
    if retry:
        await conn.execute(Q.outbox_retry, [item.row["id"] for item in retry], [item.attempts for item in retry],
                           [item.delay for item in retry], [item.reason for item in retry])


def _report(item: Settled) -> None:
    """Log and count one outcome (once the round is committed)."""
    record_id, shown = item.row["record_id"], loggable(item.row["url"])
    if item.result == RETRY:
        log.info("recording-ready callback for %s to %s failed (attempt %d): %s; next in %.0f s",
                 record_id, shown, item.attempts, item.reason, item.delay)
    elif item.result == FAILED:
        log.warning("recording-ready callback for %s to %s not delivered: %s", record_id, shown, item.reason)
    elif item.result == DROPPED:
        log.info("recording-ready callback for %s dropped: %s", record_id, item.reason)
    CALLBACKS.labels(result=item.result).inc()


async def deliver_due(runtime: Runtime) -> int:
    """One round (see the module's docstring): take the due rows, send them all at once, store the
    outcomes, commit; how many rows were taken. Database errors are raised (the round is rolled back)."""
    settled: list[Settled] = []
    async with runtime.pool.acquire() as conn:
        async with conn.transaction():
            rows = await conn.fetch(Q.outbox_claim, OUTBOX_BATCH)
            if rows:
                await conn.execute(Q.outbox_round_timeout, str(round_timeout_ms(runtime)))
                outcomes = await asyncio.gather(*(_attempt(runtime, row) for row in rows))
                settled = [_settle(runtime, row, outcome) for row, outcome in zip(rows, outcomes, strict=True)]
                await _store(conn, settled)
        depth = await conn.fetchval(Q.outbox_depth)
    for item in settled:
        _report(item)
    OUTBOX_DEPTH.set(depth)
    return len(rows)


async def run_outbox(runtime: Runtime) -> None:
    """Deliver callbacks until cancelled; survives database outages (counted, logged once)."""
    event = _event(runtime)
    while True:
        event.clear()  # a wake during the round below asks for another one
        claimed = 0
        try:
            claimed = await deliver_due(runtime)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the loop must outlive any bad round
            if is_database_unavailable(exc):
                runtime.database.failed(f"callback outbox: {describe(exc)}")
            else:
                log.exception("callback outbox round failed")
        else:
            runtime.database.succeeded()
        if claimed >= OUTBOX_BATCH:
            continue  # more may be due now
        try:
            async with asyncio.timeout(POLL_INTERVAL):
                await event.wait()
        except TimeoutError:
            pass
