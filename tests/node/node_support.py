"""Loads the node-side programs (node/*.py) as modules: they are single files, not part of the b3lb package."""

from __future__ import annotations

import contextlib
import importlib.util
import shlex
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from xml.sax.saxutils import quoteattr

NODE = Path(__file__).resolve().parents[2] / "node"


def load_node_module(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, NODE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# --- a synthetic BigBlueButton recording, and b3lb-push run as a program ---------------------------------

EVENTS_XML = """<?xml version="1.0" encoding="UTF-8"?>
<recording meeting_id="{meeting_id}" bbb_version="3.0.0">
  <metadata {attributes}/>
  <meeting id="{meeting_id}" externalId="room-1" name="Room 1" breakout="false"/>
  <event timestamp="1" module="PARTICIPANT" eventname="ParticipantJoinEvent"><userId>u1</userId></event>
</recording>
"""

METADATA_XML = """<?xml version="1.0" encoding="UTF-8"?>
<recording>
  <id>{meeting_id}</id>
  <state>published</state>
  <published>true</published>
  <start_time>1700000000000</start_time>
  <end_time>1700000600000</end_time>
  <participants>3</participants>
  <meeting id="{meeting_id}" externalId="room-1" name="Room 1" breakout="false"/>
  <meta>
    <isBreakout>false</isBreakout>
    <meetingName>Room 1</meetingName>
    <gl-listed>true</gl-listed>
    <b3lb-recordset>{nonce}</b3lb-recordset>
  </meta>
  <playback><format>presentation</format></playback>
  <raw_size>12345</raw_size>
</recording>
"""


@dataclass
class Node:
    """A node's folders in a temporary directory, with b3lb-push pointed at them."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def published(self) -> Path:
        return self.root / "published"

    @property
    def backlog(self) -> Path:
        return self.root / "state" / "backlog.sqlite"

    @property
    def marker(self) -> Path:
        """One line per run of the delete command: the meeting ID it was given."""
        return self.root / "deleted.txt"

    def events(self, meeting_id: str, metadata: dict[str, str]) -> Path:
        attributes = " ".join(f"{key}={quoteattr(value)}" for key, value in metadata.items())
        folder = self.raw / meeting_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "events.xml").write_text(EVENTS_XML.format(meeting_id=meeting_id, attributes=attributes))
        return folder / "events.xml"

    def recording(self, meeting_id: str, nonce: str, tag: str = "b3lb-recordset") -> Path:
        """events.xml with the tag, and a published presentation folder: metadata.xml and a few files."""
        self.events(meeting_id, {"meetingId": "room-1", "meetingName": "Room 1", tag: nonce, "isBreakout": "false"})
        folder = self.published / meeting_id
        (folder / "presentation" / "d1" / "svgs").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.xml").write_text(METADATA_XML.format(meeting_id=meeting_id, nonce=nonce))
        (folder / "shapes.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>\n')
        (folder / "presentation" / "d1" / "svgs" / "slide1.svg").write_text("<svg/>\n")
        (folder / "cursor.xml").write_bytes(b"<recording/>\n" * 50)
        return folder

    def delete_command(self) -> str:
        """Stands in for `bbb-record --delete`: records the call, removes the folders like it."""
        script = self.root / "fake-bbb-record.py"
        script.write_text(
            "import shutil, sys\n"
            f"open({str(self.marker)!r}, 'a').write(sys.argv[-1] + '\\n')\n"
            f"shutil.rmtree({str(self.published)!r} + '/' + sys.argv[-1], ignore_errors=True)\n"
            f"shutil.rmtree({str(self.raw)!r} + '/' + sys.argv[-1], ignore_errors=True)\n"
        )
        return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} --delete"

    def options(self) -> list[str]:
        return [
            "--config", str(self.root / "b3lb-push.conf"),
            "--raw-dir", str(self.raw), "--published-dir", str(self.published),
            "--backlog", str(self.backlog), "--work-dir", str(self.root / "state" / "tmp"),
            "--delete-command", self.delete_command(),
        ]

    def push(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        config = self.root / "b3lb-push.conf"
        if not config.exists():
            config.write_text("# test configuration\n")
        return subprocess.run(
            [sys.executable, str(NODE / "b3lb-push"), command, *self.options(), *args],
            capture_output=True, text=True, timeout=120, check=False,
        )

    def entries(self) -> list[dict[str, object]]:
        if not self.backlog.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.backlog)) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM backlog ORDER BY queued_at")]

    def deletions(self) -> list[str]:
        return self.marker.read_text().splitlines() if self.marker.exists() else []
