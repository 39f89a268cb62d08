"""Recording-ready callbacks to frontends (spec 3.4, 3.5 with its (REC) choices), from a durable outbox.

`add_record` queues one `callback_outbox` row per published record (its set's ready URL). Every b3lb
process runs `run_outbox`: about once a second (or at once after `wake`) it claims due rows with
`FOR UPDATE SKIP LOCKED` and a lease (their next_attempt moves past the time one attempt can take),
sends them, and deletes or reschedules each one. Nothing lives in memory: a restart, or a process
dying mid-send, leaves the rows in the table, due again when their lease runs out; two processes
never hold one row at once. (A process that dies after the frontend answered but before the row was
deleted sends it once more: delivery is at least once, like BBB's own.)

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
import jwt

from b3lb.db import Q
from b3lb.nodeclient import NodeRequestError
from b3lb.outage import describe, is_database_unavailable
from b3lb.recordings.metrics import CALLBACKS, OUTBOX_DEPTH
from b3lb.runtime import Runtime
from b3lb.urlguard import URLRefused, loggable

log = logging.getLogger("b3lb.recordings.callbacks")

FORM = "application/x-www-form-urlencoded"
OUTBOX_BATCH = 20  # rows claimed per round, all sent at once: none waits beyond its lease
POLL_INTERVAL = 1.0  # seconds between rounds when nobody wakes the loop
LEASE_MARGIN = 30.0  # seconds a claim lasts beyond its two requests (database round trips, a slow loop)
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
    token = jwt.encode({"meeting_id": meeting_id, "record_id": record_id}, secret, algorithm="HS256")
    return urlencode({"signed_parameters": token}).encode("ascii")


@dataclass(frozen=True, slots=True)
class Outcome:
    result: str  # SENT, FAILED, RETRY or DROPPED
    reason: str  # short, for logs and last_error; never a URL's query, a token or a secret


def lease_seconds(runtime: Runtime) -> float:
    """How long a claim keeps a row from others: both requests of one attempt, and a margin."""
    return runtime.config.recordings.callback_timeout * 2 + LEASE_MARGIN


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


async def _deliver(runtime: Runtime, row: asyncpg.Record) -> str:
    """Send one claimed row and store what came of it; its CALLBACKS label."""
    shown = loggable(row["url"])
    try:
        outcome = await _send(runtime, row)
    except Exception as exc:  # a bug must not keep a row forever: it counts as an attempt like any failure
        log.exception("recording-ready callback for %s to %s failed unexpectedly", row["record_id"], shown)
        outcome = Outcome(RETRY, f"internal error: {type(exc).__name__}")
    result, reason = outcome.result, outcome.reason[:MAX_ERROR_CHARS]
    attempts = row["attempts"]
    if result == RETRY and attempts >= runtime.config.recordings.callback_attempts:
        log.warning("recording-ready callback for %s to %s given up after %d attempts: %s",
                    row["record_id"], shown, attempts, reason)
        result = FAILED
    elif result == RETRY:
        delay = backoff_seconds(runtime, attempts)
        await runtime.pool.execute(Q.outbox_retry, row["id"], attempts, delay, reason)
        log.info("recording-ready callback for %s to %s failed (attempt %d): %s; next in %.0f s",
                 row["record_id"], shown, attempts, reason, delay)
    elif result == FAILED:
        log.warning("recording-ready callback for %s to %s not delivered: %s", row["record_id"], shown, reason)
    elif result == DROPPED:
        log.info("recording-ready callback for %s dropped: %s", row["record_id"], reason)
    if result != RETRY:
        await runtime.pool.execute(Q.outbox_done, row["id"])
    CALLBACKS.labels(result=result).inc()
    return result


async def deliver_due(runtime: Runtime) -> int:
    """One round: claim the due rows, send them all at once, store the outcomes; how many were claimed.
    Raises the first database error met (after every claimed row was tried)."""
    pool = runtime.pool
    rows = await pool.fetch(Q.outbox_claim, OUTBOX_BATCH, lease_seconds(runtime))
    if rows:
        done = await asyncio.gather(*(_deliver(runtime, row) for row in rows), return_exceptions=True)
        errors = [item for item in done if isinstance(item, BaseException)]
        if errors:
            raise errors[0]  # the rows concerned are due again when their lease runs out
    OUTBOX_DEPTH.set(await pool.fetchval(Q.outbox_depth))
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
