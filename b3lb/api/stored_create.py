"""What a create leaves in its meeting's row for a failover (sql/0009_failover.sql, b3lb/api/failover.py).

Kept, as the client sent it: every parameter in its order (meetingID, name, settings, URLs, `meta_*`
metadata, b3lb's private keys included: a re-create goes through the same rewriting as a create, so
the node gets b3lb's end callback, record flags and record-set tag for the new nonce), and a client's
own POST body with its URL documents and its other modules (clientSettingsOverride, ...).
Not kept: the checksum; `attendeePW`/`moderatorPW` (any spelling), of which only an HMAC-SHA256 under
a random per-meeting salt is kept, enough to tell which role a password stood for; slides embedded in
the body (base64 documents); anything beyond MAX_STORED bytes: first the body, then the longest
parameters (never meetingID or name), whose names are listed under "dropped". The tenant's secret is
never part of it (the checksum is the only thing derived from it, and it is left out).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from lxml import etree

from b3lb.api.params import Params
from b3lb.db import Q

if TYPE_CHECKING:
    from b3lb.meetings import MeetingRef
    from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.api")

MAX_STORED = 65_536  # bytes of JSON per meeting
ATTENDEE_PW, MODERATOR_PW = "attendeePW", "moderatorPW"
_SECRET_KEYS = frozenset({ATTENDEE_PW.lower(), MODERATOR_PW.lower(), "checksum"})
_ALWAYS_KEPT = frozenset({"meetingID", "name"})
MODERATOR, VIEWER = "MODERATOR", "VIEWER"
# A body is the client's XML: no entities, no DTD, nothing fetched while reading it.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True)


def keyed_hash(salt: bytes, password: str) -> bytes:
    return hmac.new(salt, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


@dataclass(slots=True, frozen=True)
class PasswordHashes:
    """The original create's passwords as keyed hashes (None: that password was not sent)."""

    salt: bytes = b""
    attendee: bytes | None = None
    moderator: bytes | None = None

    def matches(self, which: bytes | None, password: str) -> bool:
        return which is not None and hmac.compare_digest(keyed_hash(self.salt, password), which)

    def role_for(self, password: str) -> str | None:
        """The role a join's password stood for on the old node (BBB checks the moderator's first).

        None: a wrong password (both were sent, it is neither). When the create sent only one or
        none, the node made the others up and b3lb never saw them: such a password gets the least
        rights, VIEWER (joins are signed by the frontend, so it is the frontend's own value)."""
        if self.matches(self.moderator, password):
            return MODERATOR
        if self.matches(self.attendee, password):
            return VIEWER
        return None if self.moderator is not None and self.attendee is not None else VIEWER


NO_PASSWORDS = PasswordHashes()


def encode(params: Params, body: bytes | None, content_type: str | None) -> str:
    """The JSON stored with a new meeting's routing row (one pass over the parameters; the body is
    parsed only when the client posted one)."""
    kept: list[tuple[str, str]] = []
    passwords: dict[str, str] = {}
    for key, value in params:
        lowered = key.lower()
        if lowered in _SECRET_KEYS:
            if key in (ATTENDEE_PW, MODERATOR_PW) and value and key not in passwords:
                passwords[key] = value  # the first one counts, as on the node
            continue
        kept.append((key, value))
    document: dict[str, object] = {"v": 1, "params": kept}
    if passwords:
        salt = os.urandom(16)
        document["salt"] = salt.hex()
        for key, value in passwords.items():
            document[key] = keyed_hash(salt, value).hex()
    if body is not None:
        document["posted"] = True
        reduced = reduced_body(body)
        if reduced is not None:
            document["body"], document["content_type"] = reduced, content_type or "application/xml"
    text = orjson.dumps(document)
    return (text if len(text) <= MAX_STORED else _shrunk(document)).decode()


def _shrunk(document: dict[str, object]) -> bytes:
    """The document cut to MAX_STORED: the body first, then the longest parameters."""
    dropped: list[str] = []
    if document.pop("body", None) is not None:
        document.pop("content_type", None)
        dropped.append("body")
    params: list[tuple[str, str]] = document["params"]  # type: ignore[assignment]
    document["dropped"] = dropped
    text = orjson.dumps(document)
    by_size = sorted((i for i, (k, _) in enumerate(params) if k not in _ALWAYS_KEPT),
                     key=lambda i: len(params[i][1]), reverse=True)
    gone: set[int] = set()
    for index in by_size:
        if len(text) <= MAX_STORED:
            break
        gone.add(index)
        dropped.append(params[index][0])
        document["params"] = [pair for i, pair in enumerate(params) if i not in gone]
        text = orjson.dumps(document)
    log.info("a create's stored parameters were cut to %d bytes, dropped: %s", MAX_STORED, ", ".join(dropped))
    return text


def reduced_body(body: bytes) -> str | None:
    """A create body without its embedded slides: documents given by URL and the other modules stay.
    None when nothing is left or it is not BBB's <modules> document."""
    try:
        root = etree.fromstring(body, _PARSER)
    except (etree.XMLSyntaxError, ValueError):
        return None
    if root.tag != "modules":
        return None
    for module in list(root):
        if module.tag != "module":
            root.remove(module)
        elif module.get("name") == "presentation":
            for document in list(module):
                if document.tag != "document" or not document.get("url"):
                    module.remove(document)  # an embedded slide (or anything else): megabytes of base64
            if len(module) == 0:
                root.remove(module)
    if len(root) == 0:
        return None
    return etree.tostring(root, encoding="unicode")


@dataclass(slots=True)
class StoredCreate:
    """A stored create, read back for a re-create."""

    params: Params
    passwords: PasswordHashes
    body: bytes | None = None  # to POST as it is; None: no body of the client's
    content_type: str | None = None
    posted: bool = False  # the client posted its own body: the tenant's slide is not added

    @classmethod
    def decode(cls, text: str | None, meeting_id: str, name: str) -> StoredCreate:
        """From the row's JSON; a meeting created before it was stored (or a row edited by hand)
        is re-created with its ID and name only."""
        try:
            document = orjson.loads(text) if text else None
            params = [(str(k), str(v)) for k, v in document["params"]] if document else None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("meeting %s: unreadable stored create, re-created with its name only", meeting_id)
            document = params = None
        if document is None or params is None:
            return cls([("meetingID", meeting_id), ("name", name)], NO_PASSWORDS)
        body = document.get("body")
        return cls(
            params,
            passwords_of(document),
            body.encode() if isinstance(body, str) else None,
            document.get("content_type") if isinstance(body, str) else None,
            bool(document.get("posted")),
        )


def passwords_of(document: dict[str, object] | None) -> PasswordHashes:
    if not document or not isinstance(document.get("salt"), str):
        return NO_PASSWORDS
    try:
        salt = bytes.fromhex(document["salt"])  # type: ignore[arg-type]
        attendee, moderator = (bytes.fromhex(h) if isinstance(h := document.get(key), str) else None
                               for key in (ATTENDEE_PW, MODERATOR_PW))
    except ValueError:
        return NO_PASSWORDS
    return PasswordHashes(salt, attendee, moderator)


async def load_passwords(runtime: Runtime, ref: MeetingRef) -> PasswordHashes:
    """The hashes of a re-created meeting, read once per process and kept with its record."""
    if ref.passwords is None:
        text = await runtime.pool.fetchval(Q.meeting_create_params, ref.id)
        try:
            document = orjson.loads(text) if text else None
        except orjson.JSONDecodeError:
            document = None
        ref.passwords = passwords_of(document if isinstance(document, dict) else None)
    return ref.passwords


def without_known_passwords(params: Params, hashes: PasswordHashes) -> Params:
    """A repeated create of a meeting a failover re-created, where the node made up its own passwords.

    A password that is the original create's (or one b3lb cannot check) is left out, which BBB
    answers as a duplicate; a different one goes on, and the node answers idNotUnique as the old
    node would have."""
    out: Params = []
    for key, value in params:
        if key == ATTENDEE_PW or key == MODERATOR_PW:
            stored = hashes.attendee if key == ATTENDEE_PW else hashes.moderator
            if stored is None or not value or hashes.matches(stored, value):
                continue
        out.append((key, value))
    return out


def without_moderator_password(params: Params, hashes: PasswordHashes) -> Params:
    """An `end` of a meeting a failover re-created: its `password` (the moderator's, deprecated) is
    left out when it is the original create's moderator password or one b3lb cannot check."""
    password = next((v for k, v in params if k == "password"), None)
    if password and hashes.moderator is not None and not hashes.matches(hashes.moderator, password):
        return params
    return [(k, v) for k, v in params if k != "password"]
