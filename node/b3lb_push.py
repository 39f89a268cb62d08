#!/usr/bin/python3
"""b3lb-push: hands a BigBlueButton node's recordings to b3lb (spec 4.10, 4.11).

    b3lb-push enqueue --meeting-id ID   (the post_publish hook) queue the recording if b3lb tagged the meeting
    b3lb-push run                       (systemd timer/path unit) upload every queued recording
    b3lb-push list [--json]             show the backlog
    b3lb-push drop --meeting-id ID      forget a queued recording (the local files stay)

`enqueue` reads the meeting's metadata from the raw events.xml; when the tag b3lb added on create
(`b3lb-recordset`) is there, it stores (internal meeting ID, nonce) in a local SQLite backlog.
`run` archives the published presentation folder with tar, posts it with curl to
`{base_url}b3lb/b/record/upload?nonce=...`, and only after a 2xx answer deletes the local recording
(`bbb-record --delete ID`) and forgets the entry. An entry is uploaded at most once: the 2xx is written to
the backlog before the delete runs, and uploaded meetings are remembered so a second enqueue is refused.

Python 3 standard library only (it runs on the node, next to BigBlueButton); tar and curl do the work.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_CONFIG = "/etc/b3lb-push.conf"
# BBB's internal meeting ID is `<sha1>-<ms>`; anything that could leave its folder is refused.
MEETING_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# b3lb's nonces are UUIDs; accept what can sit in a query string unescaped.
NONCE = re.compile(r"[A-Za-z0-9._~-]{1,128}")
# Characters that would break out of a curl -F file name or a curl config line.
UNSAFE_PATH = re.compile(r'[";,\\\n\r]')
ERROR_TEXT = 500  # characters of an error kept in the backlog
BODY_EXCERPT = 300  # bytes of an error response kept
FIRST_BACKOFF = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS backlog (
    meeting_id  TEXT PRIMARY KEY,
    nonce       TEXT NOT NULL,
    queued_at   REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_try    REAL,
    last_error  TEXT NOT NULL DEFAULT '',
    uploaded_at REAL
);
CREATE TABLE IF NOT EXISTS done (
    meeting_id  TEXT PRIMARY KEY,
    nonce       TEXT NOT NULL,
    uploaded_at REAL NOT NULL,
    deleted_at  REAL NOT NULL
);
"""


class PushError(Exception):
    """A failure with a message for the operator (exit status 1)."""


class ConfigError(PushError):
    """Bad configuration or options (exit status 2)."""


@dataclass
class Config:
    base_url: str = ""
    nonce_meta_tag: str = "b3lb-recordset"
    raw_dir: str = "/var/bigbluebutton/recording/raw"
    published_dir: str = "/var/bigbluebutton/published/presentation"
    backlog: str = "/var/lib/b3lb-push/backlog.sqlite"
    work_dir: str = "/var/lib/b3lb-push/tmp"
    delete_command: str = "bbb-record --delete"
    host_header: str = ""
    connect_timeout: float = 30.0
    max_time: float = 6 * 3600.0  # a multi-GB archive over a slow link
    delete_timeout: float = 600.0
    max_backoff: float = 3600.0
    curl: str = "curl"
    tar: str = "tar"

    @property
    def trigger_file(self) -> Path:
        """Written after each enqueue; b3lb-push.path starts a run when it changes."""
        return Path(self.backlog).with_name("queued")

    @property
    def lock_file(self) -> Path:
        return Path(self.backlog + ".lock")


# Names B3LB's push configuration uses, lower-cased.
ALIASES = {"b3lbbasedomain": "base_url", "noncemetatag": "nonce_meta_tag"}
FLOAT_KEYS = ("connect_timeout", "max_time", "delete_timeout", "max_backoff")


def read_config_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines (# comments, optional quotes) or one JSON object."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a JSON object is expected")
        return {str(k): str(v) for k, v in data.items()}
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def build_config(settings: dict[str, str]) -> Config:
    """A Config from raw settings (file, then options); unknown keys are errors (typos)."""
    known = {f.name for f in fields(Config)}
    values: dict[str, object] = {}
    for raw_key, value in settings.items():
        key = raw_key.strip().lower().replace("-", "_")
        key = ALIASES.get(key.replace("_", ""), key)
        if key not in known:
            raise ConfigError(f"unknown setting {raw_key!r}")
        if key in FLOAT_KEYS:
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"{raw_key}: not a number: {value!r}") from None
            if not 0 <= number <= 7 * 86400:
                raise ConfigError(f"{raw_key}: out of range: {value!r}")
            values[key] = number
        else:
            values[key] = value
    config = Config(**values)  # type: ignore[arg-type]
    config.base_url = normalise_base_url(config.base_url)
    if not config.nonce_meta_tag or not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", config.nonce_meta_tag):
        raise ConfigError(f"nonce_meta_tag: not a metadata name: {config.nonce_meta_tag!r}")
    for key in ("published_dir", "work_dir"):
        if UNSAFE_PATH.search(getattr(config, key)):
            raise ConfigError(f"{key}: must not contain quotes, commas, semicolons or backslashes")
    return config


def normalise_base_url(url: str) -> str:
    """`https://api.example.org/` (scheme added when missing, one trailing slash)."""
    url = url.strip()
    if not url:
        return ""
    if "://" not in url:
        url = "https://" + url
    if not re.fullmatch(r"https?://[^\s\"'\\?#]+", url):
        raise ConfigError(f"base_url: not an http(s) URL without query: {url!r}")
    return url if url.endswith("/") else url + "/"


def log(message: str) -> None:
    print(f"b3lb-push: {message}", file=sys.stderr, flush=True)


# --- the backlog ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    meeting_id: str
    nonce: str
    attempts: int
    uploaded_at: float | None
    last_try: float | None = None

    def next_try(self, max_backoff: float) -> float:
        """After a failure, wait 1 min, 2, 4, ... up to max_backoff, so that a broken upload of a big
        archive is not resent every minute. Computed on each run: a new max_backoff applies at once."""
        if self.last_try is None or self.attempts == 0:
            return 0.0
        return self.last_try + min(max_backoff, FIRST_BACKOFF * 2 ** min(self.attempts - 1, 20))


@contextlib.contextmanager
def open_backlog(path: str) -> Iterator[sqlite3.Connection]:
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        created = not Path(path).exists()
        db = sqlite3.connect(path, timeout=30)
    except (OSError, sqlite3.Error) as exc:
        raise PushError(f"cannot open backlog {path}: {exc}") from None
    try:
        with db:
            db.executescript(SCHEMA)
        if created and os.geteuid() == 0:
            # The hook runs as BigBlueButton's user, the uploader as root: whoever creates the database,
            # it belongs to the owner of its folder so that both can write it.
            owner = folder.stat()
            os.chown(path, owner.st_uid, owner.st_gid)
        yield db
    except sqlite3.Error as exc:
        raise PushError(f"backlog {path}: {exc}") from None
    finally:
        db.close()


def queue(db: sqlite3.Connection, meeting_id: str, nonce: str) -> str:
    """Insert the entry unless it is queued or was uploaded already; what happened, for the log."""
    done = db.execute("SELECT uploaded_at FROM done WHERE meeting_id = ?", (meeting_id,)).fetchone()
    if done is not None:
        return "already uploaded, not queued again"
    with db:
        inserted = db.execute(
            "INSERT OR IGNORE INTO backlog (meeting_id, nonce, queued_at) VALUES (?, ?, ?)",
            (meeting_id, nonce, time.time()),
        ).rowcount
    return "queued" if inserted else "already queued"


def all_entries(db: sqlite3.Connection) -> list[Entry]:
    rows = db.execute(
        "SELECT meeting_id, nonce, attempts, uploaded_at, last_try FROM backlog ORDER BY queued_at"
    ).fetchall()
    return [Entry(*row) for row in rows]


def record_failure(db: sqlite3.Connection, entry: Entry, error: str) -> None:
    with db:
        db.execute(
            "UPDATE backlog SET attempts = attempts + 1, last_error = ?, last_try = ? WHERE meeting_id = ?",
            (error[:ERROR_TEXT], time.time(), entry.meeting_id),
        )


def mark_uploaded(db: sqlite3.Connection, entry: Entry) -> Entry:
    now = time.time()
    with db:
        db.execute("UPDATE backlog SET uploaded_at = ?, last_error = '' WHERE meeting_id = ?",
                   (now, entry.meeting_id))
    return dataclasses.replace(entry, uploaded_at=now)


def finish(db: sqlite3.Connection, entry: Entry) -> None:
    with db:
        db.execute("INSERT OR REPLACE INTO done (meeting_id, nonce, uploaded_at, deleted_at) VALUES (?, ?, ?, ?)",
                   (entry.meeting_id, entry.nonce, entry.uploaded_at or time.time(), time.time()))
        db.execute("DELETE FROM backlog WHERE meeting_id = ?", (entry.meeting_id,))


# --- enqueue -------------------------------------------------------------------------------------------

def read_metadata(events_xml: Path) -> dict[str, str]:
    """The attributes of `<recording><metadata .../>` in a raw events.xml.

    Reads only up to that element (it comes first; events.xml of a long meeting is large) and stops at
    the first `<event>`. ElementTree resolves no external entities; expat caps entity expansion.
    """
    depth = 0
    try:
        for event, element in ET.iterparse(events_xml, events=("start", "end")):
            if event == "end":
                depth -= 1
                continue
            depth += 1
            if depth == 1 and element.tag != "recording":
                raise PushError(f"{events_xml}: root element is <{element.tag}>, not <recording>")
            if depth == 2 and element.tag == "metadata":
                return dict(element.attrib)
            if depth == 2 and element.tag == "event":
                break
    except FileNotFoundError:
        raise PushError(f"{events_xml} does not exist: is the internal meeting ID right?") from None
    except OSError as exc:
        raise PushError(f"cannot read {events_xml}: {exc.strerror}") from None
    except ET.ParseError as exc:
        raise PushError(f"{events_xml}: not well-formed XML: {exc}") from None
    return {}


def find_nonce(metadata: dict[str, str], tag: str) -> str | None:
    # BigBlueButton lower-cases meta_ names on some versions: compare without case.
    for key, value in metadata.items():
        if key.lower() == tag.lower():
            return value.strip()
    return None


def check_meeting_id(meeting_id: str) -> str:
    if not MEETING_ID.fullmatch(meeting_id):
        raise ConfigError(f"not an internal meeting ID: {meeting_id[:80]!r}")
    return meeting_id


def enqueue(config: Config, meeting_id: str) -> int:
    check_meeting_id(meeting_id)
    metadata = read_metadata(Path(config.raw_dir) / meeting_id / "events.xml")
    nonce = find_nonce(metadata, config.nonce_meta_tag)
    if nonce is None:
        log(f"{meeting_id}: no {config.nonce_meta_tag} metadata, not a b3lb recording: nothing to do")
        return 0
    if not NONCE.fullmatch(nonce):
        raise PushError(f"{meeting_id}: {config.nonce_meta_tag} is not a valid nonce: {nonce[:80]!r}")
    with open_backlog(config.backlog) as db:
        outcome = queue(db, meeting_id, nonce)
    if outcome == "queued":
        try:
            config.trigger_file.write_text(f"{time.time():.3f} {meeting_id}\n", encoding="ascii")
        except OSError as exc:  # the timer still picks it up
            log(f"cannot write {config.trigger_file}: {exc.strerror}")
    log(f"{meeting_id}: {outcome}")
    return 0


# --- run -----------------------------------------------------------------------------------------------

def tail(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:ERROR_TEXT] if lines else ""


def make_archive(config: Config, folder: Path, archive: str) -> str | None:
    """tar of the folder's content (`tar -C folder -cf archive .`); an error message or None."""
    try:
        done = subprocess.run([config.tar, "-C", str(folder), "-cf", archive, "."], capture_output=True,
                              timeout=config.max_time, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"tar could not run: {exc}"
    # GNU tar exits 1 when a file changed while it was read: that archive is not trusted either.
    return None if done.returncode == 0 else f"tar failed (exit {done.returncode}): {tail(done.stderr)}"


def curl_command(config: Config, archive: str, metadata: Path, body_file: str) -> list[str]:
    command = [
        config.curl, "--silent", "--show-error", "--config", "-",  # the URL (with its nonce) comes on stdin
        "--proto", "=http,https", "--user-agent", "b3lb-push/1",
        "--connect-timeout", f"{config.connect_timeout:g}", "--max-time", f"{config.max_time:g}",
        "--form", f'file=@"{archive}";type=application/x-tar;filename=raw.tar',
        "--form", f'meta=@"{metadata}";type=application/xml;filename=metadata.xml',
        "--output", body_file, "--write-out", "%{http_code}",
    ]
    if config.host_header:
        command += ["--header", f"Host: {config.host_header}"]
    return command


def post_archive(config: Config, entry: Entry, archive: str, metadata: Path) -> str | None:
    """POST the archive and metadata.xml; None on a 2xx answer, else what went wrong."""
    url = f"{config.base_url}b3lb/b/record/upload?nonce={entry.nonce}"
    body_file = archive + ".body"
    try:
        done = subprocess.run(curl_command(config, archive, metadata, body_file), input=f'url = "{url}"\n',
                              capture_output=True, text=True, timeout=config.max_time + 60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"curl could not run: {exc}"
    try:
        with open(body_file, "rb") as response:
            body = response.read(BODY_EXCERPT)
    except OSError:
        body = b""
    finally:
        with contextlib.suppress(OSError):
            os.unlink(body_file)
    if done.returncode != 0:
        return f"upload failed (curl exit {done.returncode}): {tail(done.stderr)}"
    status = done.stdout.strip()
    if status.startswith("2") and len(status) == 3:
        return None
    return f"b3lb answered HTTP {status or '?'}: {tail(body)}"


def upload(config: Config, entry: Entry) -> str | None:
    folder = Path(config.published_dir) / entry.meeting_id
    metadata = folder / "metadata.xml"
    if not metadata.is_file():
        return f"no published recording: {metadata} is missing"
    try:
        os.makedirs(config.work_dir, mode=0o700, exist_ok=True)
        fd, archive = tempfile.mkstemp(prefix=f"{entry.meeting_id}.", suffix=".tar", dir=config.work_dir)
        os.close(fd)
    except OSError as exc:
        return f"cannot make a temporary file in {config.work_dir}: {exc.strerror}"
    try:
        return make_archive(config, folder, archive) or post_archive(config, entry, archive, metadata)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(archive)


def delete_local(config: Config, meeting_id: str) -> str | None:
    try:
        command = [*shlex.split(config.delete_command), meeting_id]
    except ValueError as exc:
        return f"delete_command: {exc}"
    if len(command) < 2:
        return "delete_command is empty"
    try:
        done = subprocess.run(command, capture_output=True, timeout=config.delete_timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"delete command could not run: {exc}"
    if done.returncode != 0:
        return f"delete command failed (exit {done.returncode}): {tail(done.stderr) or tail(done.stdout)}"
    return None


def push_entry(config: Config, db: sqlite3.Connection, entry: Entry) -> bool:
    """Upload (unless an earlier run did), then delete the local recording; False when either failed."""
    if not MEETING_ID.fullmatch(entry.meeting_id) or not NONCE.fullmatch(entry.nonce):
        record_failure(db, entry, "invalid entry (meeting ID or nonce)")
        log(f"{entry.meeting_id[:80]!r}: invalid entry, skipped")
        return False
    if entry.uploaded_at is None:
        error = upload(config, entry)
        if error is not None:
            record_failure(db, entry, error)
            log(f"{entry.meeting_id}: upload failed, kept for a later run: {error}")
            return False
        # Written before the delete: a crash from here on never uploads this recording again.
        entry = mark_uploaded(db, entry)
        log(f"{entry.meeting_id}: uploaded")
    error = delete_local(config, entry.meeting_id)
    if error is not None:
        record_failure(db, entry, error)
        log(f"{entry.meeting_id}: uploaded, but deleting the local copy failed (retried later): {error}")
        return False
    finish(db, entry)
    log(f"{entry.meeting_id}: local recording deleted")
    return True


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[bool]:
    """True while this process holds the lock, False when another run holds it."""
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise PushError(f"cannot open lock file {lock_file}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def run(config: Config) -> int:
    if not config.base_url:
        raise ConfigError("base_url is not set (in /etc/b3lb-push.conf or --base-url)")
    with exclusive(config.lock_file) as mine:
        if not mine:
            log("another b3lb-push run is active; leaving the backlog to it")
            return 0
        with open_backlog(config.backlog) as db:
            now = time.time()
            entries = [e for e in all_entries(db) if e.next_try(config.max_backoff) <= now]
            failed = sum(not push_entry(config, db, entry) for entry in entries)
    if entries:
        log(f"{len(entries) - failed} of {len(entries)} recording(s) done")
    return 1 if failed else 0


# --- list, drop and the command line -------------------------------------------------------------------

def stamp(value: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else "-"


def list_backlog(config: Config, as_json: bool) -> int:
    """The backlog without the nonces (they are upload credentials)."""
    with open_backlog(config.backlog) as db:
        found = db.execute("SELECT meeting_id, attempts, uploaded_at, last_try, queued_at, last_error "
                           "FROM backlog ORDER BY queued_at").fetchall()
    rows = []
    for meeting_id, attempts, uploaded_at, last_try, queued_at, last_error in found:
        entry = Entry(meeting_id, "", attempts, uploaded_at, last_try)
        rows.append({"meeting_id": meeting_id, "queued_at": queued_at, "attempts": attempts,
                     "next_try": entry.next_try(config.max_backoff) or None, "uploaded_at": uploaded_at,
                     "last_error": last_error})
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        state = "uploaded, delete pending" if row["uploaded_at"] else f"attempts {row['attempts']}"
        print(f"{row['meeting_id']}  queued {stamp(row['queued_at'])}  {state}  next {stamp(row['next_try'])}  "
              f"{row['last_error']}")
    if not rows:
        print("backlog is empty")
    return 0


def drop(config: Config, meeting_id: str) -> int:
    with open_backlog(config.backlog) as db, db:
        removed = db.execute("DELETE FROM backlog WHERE meeting_id = ?", (meeting_id,)).rowcount
    if not removed:
        raise PushError(f"{meeting_id}: not in the backlog")
    log(f"{meeting_id}: dropped from the backlog; the local recording is untouched")
    return 0


OPTIONS = ("base_url", "nonce_meta_tag", "raw_dir", "published_dir", "backlog", "work_dir", "delete_command",
           "host_header", "connect_timeout", "max_time", "max_backoff")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help=f"configuration file (default {DEFAULT_CONFIG}, if present)")
    for name in OPTIONS:
        common.add_argument("--" + name.replace("_", "-"), dest=name, help="overrides the config file")
    parser = argparse.ArgumentParser(prog="b3lb-push", description="Upload BigBlueButton recordings to b3lb.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", parents=[common], help="upload every due backlog entry")
    for name in ("enqueue", "drop"):
        sub = commands.add_parser(name, parents=[common], help=f"{name} one recording")
        sub.add_argument("--meeting-id", "-m", required=True, help="BigBlueButton's internal meeting ID")
    listing = commands.add_parser("list", parents=[common], help="show the backlog")
    listing.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> Config:
    settings: dict[str, str] = {}
    if args.config is not None:
        settings.update(read_config_file(args.config))
    elif os.path.exists(DEFAULT_CONFIG):
        settings.update(read_config_file(DEFAULT_CONFIG))
    settings.update({name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None})
    return build_config(settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args)
        if args.command == "enqueue":
            return enqueue(config, args.meeting_id)
        if args.command == "run":
            return run(config)
        if args.command == "drop":
            return drop(config, args.meeting_id)
        return list_backlog(config, args.json)
    except ConfigError as exc:
        log(f"error: {exc}")
        return 2
    except PushError as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
