"""`GET /b3lb/b/meeting/end`: the node tells us a meeting ended; we forget it and relay the
event to the frontend's own end-callback URL in the background, with retries."""

from __future__ import annotations

import asyncio
import logging
import uuid
from urllib.parse import urlencode

import asyncpg
from tornado.web import RequestHandler

from b3lb.db import Q
from b3lb.nodeclient import NodeRequestError
from b3lb.outage import is_database_unavailable
from b3lb.runtime import Runtime
from b3lb.urlguard import URLRefused, loggable

log = logging.getLogger("b3lb.callbacks")

RELAY_ATTEMPTS = 3
RELAY_TIMEOUT = 5.0
RELAY_BACKOFF = 1.0  # seconds before the second attempt; doubled for each further one


def relay_url(original: str, meeting_id: str, recordingmarks: str) -> str:
    """BBB's form: `recordingmarks` then `meetingID`, URL-encoded, after any existing query."""
    separator = "&" if "?" in original else "?"
    return original + separator + urlencode([("recordingmarks", recordingmarks), ("meetingID", meeting_id)])


async def relay(runtime: Runtime, url: str, *, backoff: float = RELAY_BACKOFF) -> bool:
    """GET the frontend's callback through the URL guard; any HTTP answer below 500 ends the attempts.
    A URL the guard refuses is logged once and never retried. Logs show the URL without its query."""
    shown = loggable(url)
    for attempt in range(1, RELAY_ATTEMPTS + 1):
        try:
            code = await runtime.nodes.fetch_callback(url, timeout=RELAY_TIMEOUT)
            if code < 500:
                return True
            reason = f"HTTP {code}"
        except URLRefused as exc:
            log.warning("end callback to %s refused: %s", shown, exc)
            return False
        except NodeRequestError as exc:
            reason = str(exc)
        log.warning("end callback relay attempt %d/%d to %s failed: %s", attempt, RELAY_ATTEMPTS, shown, reason)
        if attempt < RELAY_ATTEMPTS:
            await asyncio.sleep(backoff * 2 ** (attempt - 1))
    return False


class EndCallbackHandler(RequestHandler):
    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def get(self) -> None:
        # Always 204: the answer must not tell a prober whether a nonce exists.
        self.set_status(204)
        nonce_text = self.get_query_argument("nonce", "")
        meeting_id = self.get_query_argument("meetingID", "")
        marks = "true" if self.get_query_argument("recordingmarks", "false").lower() == "true" else "false"
        try:
            nonce = uuid.UUID(nonce_text)
        except ValueError:
            self.finish()
            return
        try:
            rows = await self.runtime.pool.fetch(Q.end_callback_take, nonce, meeting_id)
            if not rows:
                # An `end` through the API may have moved the row to meeting_ended while this
                # statement waited for it; a new statement (a new snapshot) finds it there.
                rows = await self.runtime.pool.fetch(Q.end_callback_take, nonce, meeting_id)
            if marks == "false":  # nobody recorded: no upload will come for its record set
                await self.runtime.pool.execute(Q.record_set_unrecorded, nonce, meeting_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            if is_database_unavailable(exc):  # logged once per outage; the poller ends it later
                self.runtime.database.failed(exc)
            else:
                log.warning("end callback for %s not processed: %s", meeting_id, exc)
            self.finish()
            return
        self.runtime.database.succeeded()
        self.finish()
        for row in rows:
            self._forget(row["id"], row["secret_id"], meeting_id, row["seconds"])
            if row["end_callback_url"]:  # the URL guard in relay() decides what may be fetched
                url = relay_url(row["end_callback_url"], meeting_id, marks)
                self.runtime.add_task("end callback relay", relay(self.runtime, url))

    def _forget(self, row_id: int | None, secret_id: int, meeting_id: str, seconds: float | None) -> None:
        ref = self.runtime.meetings.get(secret_id, meeting_id)
        if ref is not None and ref.id == row_id:
            self.runtime.meetings.remove(ref)
            self.runtime.announce("ended", ref)
        self.runtime.counters.meeting_ended(secret_id, seconds)

    def _not_allowed(self) -> None:
        self.set_status(405)
        self.set_header("Allow", "GET")
        self.finish()

    def post(self) -> None:
        self._not_allowed()

    def put(self) -> None:
        self._not_allowed()

    def delete(self) -> None:
        self._not_allowed()
