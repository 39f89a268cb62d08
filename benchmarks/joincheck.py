"""Is a join's redirect right? Its Location must point at the node that hosts the meeting and carry a
checksum that node accepts.

The map meetingID -> (node base URL, node secret, SHA algorithm) is read from the database after the
meetings were created (benchmarks/stack.py `join_targets`), so it says where b3lb placed each meeting.
The check is written independently of b3lb's own code (plain hashlib, BBB's rules), so a b3lb bug in
signing or in building the URL cannot hide here.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote_plus, urlsplit

JOIN_PATH = "/bigbluebutton/api/join"
DEFAULT_PORTS = {"http": 80, "https": 443}


class JoinTargets:
    """Checks Location values of join answers against the owning node of each meeting."""

    def __init__(self, targets: dict[str, tuple[str, str, str]]) -> None:
        # meetingID -> (base URL "scheme://host:port", node secret, algorithm "sha256", ...)
        self.targets = targets
        self._prefix = {m: f"{base}{JOIN_PATH}?" for m, (base, _, _) in targets.items()}
        self._needle = {m: f"&meetingID={quote(m, safe='')}&" for m in targets}

    @classmethod
    def load(cls, path: str | Path) -> JoinTargets:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls({m: (str(v[0]), str(v[1]), str(v[2]).lower()) for m, v in data.items()})

    def check(self, meeting_id: str, location: str) -> str:
        """"" when the Location is right, else why not."""
        target = self.targets.get(meeting_id)
        if target is None:
            return f"no node known for meeting {meeting_id!r}"
        base, secret, algorithm = target
        prefix = self._prefix[meeting_id]
        if location.startswith(prefix):
            query = location[len(prefix) :]
        else:
            why = self._other_spelling(base, location)
            if why:
                return why
            query = location.partition("?")[2]
        pairs = query.split("&")
        supplied = next((p[9:] for p in pairs if p.startswith("checksum=")), "")
        if not supplied:
            return "Location without checksum"
        # BBB removes the checksum pair by three string replacements and hashes the rest.
        payload = (
            query.replace("&checksum=" + supplied, "")
            .replace("checksum=" + supplied + "&", "")
            .replace("checksum=" + supplied, "")
        )
        if self._needle[meeting_id] not in f"&{payload}&":
            found = [v for k, v in parse_qsl(payload, keep_blank_values=True) if k == "meetingID"]
            if found != [meeting_id]:
                return f"Location asks for meetingID {found!r}, not {meeting_id!r}"
        expected = hashlib.new(algorithm, f"join{payload}{secret}".encode()).hexdigest()
        if supplied != expected:
            return f"checksum {supplied[:16]}... is not the node's ({algorithm})"
        return ""

    @staticmethod
    def _other_spelling(base: str, location: str) -> str:
        """The slow path: the same scheme, host, port and path, spelled differently (default port)."""
        want, got = urlsplit(base), urlsplit(location)
        try:
            got_port = got.port or DEFAULT_PORTS.get(got.scheme)
        except ValueError:
            return f"Location with a bad port: {location[:120]!r}"
        want_port = want.port or DEFAULT_PORTS.get(want.scheme)
        if (got.scheme, got.hostname, got_port) != (want.scheme, want.hostname, want_port):
            return f"Location on {got.scheme}://{got.hostname}:{got_port}, meeting is on {base}"
        if got.path != JOIN_PATH:
            return f"Location path {got.path!r}, expected {JOIN_PATH}"
        return ""


def meeting_of(path: str) -> str:
    """The meetingID parameter of a request path ("" when none)."""
    found = _MEETING_ID.search(path)
    if found is None:
        return ""
    value = found.group(1)
    return unquote_plus(value) if "%" in value or "+" in value else value


_MEETING_ID = re.compile(r"[?&]meetingID=([^&]*)")
