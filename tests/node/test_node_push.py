"""b3lb-push (node/b3lb_push.py) without a load balancer: events.xml, the backlog, config, failures.

The uploads themselves, against a running b3lb, are in test_node_push_e2e.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from node_support import NODE, Node, load_node_module
from tests_support import free_port

push = load_node_module("b3lb_push")

MEETING = "183f0bf3a0982a127bdb8161e0c44eb696b3e75c-1700000000000"
NONCE = "0c5e3f4c-2a7e-4b1d-9a55-6f3d2c1b0a99"


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- events.xml ----------------------------------------------------------------------------------------

def test_read_metadata_returns_the_attributes(node: Node) -> None:
    events = node.events(MEETING, {"b3lb-recordset": NONCE, "meetingName": "Café <1> & \"2\""})
    assert push.read_metadata(events) == {"b3lb-recordset": NONCE, "meetingName": "Café <1> & \"2\""}


def test_read_metadata_stops_at_the_metadata(tmp_path: Path) -> None:
    # Everything after <metadata> is never read: a broken tail (a recording still being written) is fine.
    events = write(tmp_path / "events.xml", f'<recording><metadata b3lb-recordset="{NONCE}"/><event><<<broken')
    assert push.read_metadata(events) == {"b3lb-recordset": NONCE}


def test_read_metadata_without_metadata_before_the_events(tmp_path: Path) -> None:
    # A <metadata> inside an event is not the meeting's; the scan ends at the first event.
    events = write(tmp_path / "events.xml",
                   f'<recording><event><metadata b3lb-recordset="{NONCE}"/></event><<<broken')
    assert push.read_metadata(events) == {}
    assert push.read_metadata(write(tmp_path / "empty.xml", "<recording/>")) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<events><metadata/></events>", "not <recording>"),
        ("<recording><metadata a='1'", "not well-formed"),
        ("", "not well-formed"),
        # An external entity is not fetched: the document is refused instead.
        ('<!DOCTYPE recording [<!ENTITY x SYSTEM "file:///etc/hostname">]>'
         '<recording><metadata b3lb-recordset="&x;"/></recording>', "not well-formed"),
    ],
)
def test_read_metadata_refuses_bad_documents(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(push.PushError, match=message):
        push.read_metadata(write(tmp_path / "events.xml", text))


def test_read_metadata_missing_file(tmp_path: Path) -> None:
    with pytest.raises(push.PushError, match="does not exist: is the internal meeting ID right"):
        push.read_metadata(tmp_path / "nope" / "events.xml")


# --- enqueue -------------------------------------------------------------------------------------------

def test_enqueue_queues_a_tagged_recording_once(node: Node) -> None:
    node.recording(MEETING, NONCE)
    first = node.push("enqueue", "--meeting-id", MEETING)
    assert first.returncode == 0, first.stderr
    assert f"{MEETING}: queued" in first.stderr
    assert (node.backlog.parent / "queued").read_text().split()[1] == MEETING  # wakes b3lb-push.path
    second = node.push("enqueue", "--meeting-id", MEETING)
    assert second.returncode == 0, second.stderr
    assert "already queued" in second.stderr
    entries = node.entries()
    assert [(e["meeting_id"], e["nonce"], e["attempts"], e["uploaded_at"]) for e in entries] == [
        (MEETING, NONCE, 0, None)
    ]


def test_enqueue_ignores_an_untagged_recording(node: Node) -> None:
    node.events(MEETING, {"meetingName": "no b3lb here", "b3lb-recordsetx": NONCE})
    done = node.push("enqueue", "--meeting-id", MEETING)
    assert done.returncode == 0, done.stderr
    assert "no b3lb-recordset metadata" in done.stderr
    assert node.entries() == []
    assert not (node.backlog.parent / "queued").exists()


def test_enqueue_with_another_tag_name_and_case(node: Node) -> None:
    node.recording(MEETING, NONCE, tag="My-RecordSet")
    done = node.push("enqueue", "--meeting-id", MEETING, "--nonce-meta-tag", "my-recordset")
    assert done.returncode == 0, done.stderr
    assert [e["nonce"] for e in node.entries()] == [NONCE]


def test_enqueue_missing_events_xml_is_a_clear_error(node: Node) -> None:
    done = node.push("enqueue", "--meeting-id", MEETING)
    assert done.returncode == 1
    assert f"{node.raw / MEETING / 'events.xml'} does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    assert node.entries() == []


@pytest.mark.parametrize("meeting_id", ["../etc", "a/b", "", ".hidden", "x" * 201, "a b"])
def test_enqueue_refuses_odd_meeting_ids(node: Node, meeting_id: str) -> None:
    done = node.push("enqueue", "--meeting-id", meeting_id)
    assert done.returncode == 2
    assert "not an internal meeting ID" in done.stderr


@pytest.mark.parametrize("nonce", ["a&b", "a b", "", "x" * 129, "ü"])
def test_enqueue_refuses_an_invalid_nonce(node: Node, nonce: str) -> None:
    node.events(MEETING, {"b3lb-recordset": nonce})
    done = node.push("enqueue", "--meeting-id", MEETING)
    assert done.returncode == 1
    assert "is not a valid nonce" in done.stderr
    assert node.entries() == []


def test_enqueue_refuses_a_recording_uploaded_before(node: Node) -> None:
    node.recording(MEETING, NONCE)
    node.push("list")  # creates the backlog
    with sqlite3.connect(node.backlog) as db:
        db.execute("INSERT INTO done VALUES (?, ?, 1, 2)", (MEETING, NONCE))
    done = node.push("enqueue", "--meeting-id", MEETING)
    assert done.returncode == 0, done.stderr
    assert "already uploaded, not queued again" in done.stderr
    assert node.entries() == []


def test_enqueue_reports_an_unusable_backlog(node: Node) -> None:
    node.recording(MEETING, NONCE)
    node.backlog.mkdir(parents=True)  # a directory where the database should be
    done = node.push("enqueue", "--meeting-id", MEETING)
    assert done.returncode == 1
    assert "backlog" in done.stderr and "Traceback" not in done.stderr


# --- configuration -------------------------------------------------------------------------------------

def test_config_file_key_value(tmp_path: Path) -> None:
    path = write(tmp_path / "push.conf", "\n".join([
        "# comment",
        "b3lbBaseDomain = api.example.org",
        "nonceMetaTag='tag-x'",
        'DELETE_COMMAND="bbb-record --delete"',
        "max-time = 60",
        "",
    ]))
    config = push.build_config(push.read_config_file(str(path)))
    assert config.base_url == "https://api.example.org/"
    assert config.nonce_meta_tag == "tag-x"
    assert config.delete_command == "bbb-record --delete"
    assert config.max_time == 60.0


def test_config_file_json(tmp_path: Path) -> None:
    path = write(tmp_path / "push.json", json.dumps({"base_url": "http://lb.test:8000", "connect_timeout": 5}))
    config = push.build_config(push.read_config_file(str(path)))
    assert (config.base_url, config.connect_timeout) == ("http://lb.test:8000/", 5.0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"base_urll": "x"}, "unknown setting"),
        ({"max_time": "soon"}, "not a number"),
        ({"max_time": "-1"}, "out of range"),
        ({"base_url": "ftp://x/"}, "not an http"),
        ({"base_url": "https://x/?a=b"}, "not an http"),
        ({"base_url": 'https://x/"'}, "not an http"),
        ({"nonce_meta_tag": "a b"}, "not a metadata name"),
        ({"published_dir": "/var/a;b"}, "must not contain"),
    ],
)
def test_bad_settings(settings: dict[str, str], message: str) -> None:
    with pytest.raises(push.ConfigError, match=message):
        push.build_config(settings)


@pytest.mark.parametrize(("text", "message"), [("novalue\n", "expected KEY=VALUE"), ("{bad", "not valid JSON"),
                                               ("[1]", "expected KEY=VALUE")])
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(push.ConfigError, match=message):
        push.read_config_file(str(write(tmp_path / "push.conf", text)))


def test_options_override_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path / "push.conf", "base_url=https://file.example/\nmax_backoff=10\n")
    args = push.parse_args(["run", "--config", str(path), "--base-url", "http://cli.example:81"])
    config = push.load_config(args)
    assert (config.base_url, config.max_backoff) == ("http://cli.example:81/", 10.0)


def test_missing_config_file_and_base_url_exit_2(node: Node, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(NODE / "b3lb-push"), "list", "--config", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "cannot read config" in done.stderr
    done = node.push("run")
    assert done.returncode == 2
    assert "base_url is not set" in done.stderr


# --- run: failures that need no load balancer ----------------------------------------------------------

def test_missing_published_folder_keeps_the_entry(node: Node) -> None:
    node.recording(MEETING, NONCE)
    node.push("enqueue", "--meeting-id", MEETING)
    shutil.rmtree(node.published / MEETING)
    done = node.push("run", "--base-url", f"http://127.0.0.1:{free_port()}/")
    assert done.returncode == 1
    [entry] = node.entries()
    assert entry["attempts"] == 1 and entry["uploaded_at"] is None
    assert "metadata.xml is missing" in str(entry["last_error"])
    assert node.deletions() == []


def test_unreachable_load_balancer_keeps_the_recording(node: Node) -> None:
    folder = node.recording(MEETING, NONCE)
    node.push("enqueue", "--meeting-id", MEETING)
    base = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    done = node.push("run", "--base-url", base)
    assert done.returncode == 1
    assert "upload failed, kept for a later run" in done.stderr
    assert NONCE not in done.stderr  # the nonce is the upload credential: not in logs
    [entry] = node.entries()
    assert entry["attempts"] == 1 and "curl exit 7" in str(entry["last_error"])
    assert entry["last_try"] >= entry["queued_at"]
    assert (folder / "metadata.xml").exists() and node.deletions() == []
    assert list((node.root / "state" / "tmp").iterdir()) == []  # no archive left behind
    # Not due yet: the next run leaves it alone; without back-off it is tried again.
    assert node.push("run", "--base-url", base).returncode == 0
    assert node.entries()[0]["attempts"] == 1
    assert node.push("run", "--base-url", base, "--max-backoff", "0").returncode == 1
    assert node.entries()[0]["attempts"] == 2


def test_failing_tar_keeps_the_entry(node: Node) -> None:
    node.recording(MEETING, NONCE)
    node.push("enqueue", "--meeting-id", MEETING)
    (node.root / "b3lb-push.conf").write_text(f"tar = {shutil.which('false') or '/bin/false'}\n")
    done = node.push("run", "--base-url", f"http://127.0.0.1:{free_port()}/")
    assert done.returncode == 1
    [entry] = node.entries()
    assert "tar failed (exit 1)" in str(entry["last_error"])
    assert node.deletions() == []


def test_a_second_run_leaves_the_backlog_to_the_first(node: Node) -> None:
    node.recording(MEETING, NONCE)
    node.push("enqueue", "--meeting-id", MEETING)
    lock_file = Path(str(node.backlog) + ".lock")
    with open(lock_file, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = node.push("run", "--base-url", f"http://127.0.0.1:{free_port()}/")
    assert done.returncode == 0
    assert "another b3lb-push run is active" in done.stderr
    assert node.entries()[0]["attempts"] == 0


# --- list and drop -------------------------------------------------------------------------------------

def test_list_and_drop(node: Node) -> None:
    assert "backlog is empty" in node.push("list").stdout
    folder = node.recording(MEETING, NONCE)
    node.push("enqueue", "--meeting-id", MEETING)
    listed = node.push("list", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["meeting_id"] == MEETING and row["attempts"] == 0 and "nonce" not in row
    assert MEETING in node.push("list").stdout
    dropped = node.push("drop", "--meeting-id", MEETING)
    assert dropped.returncode == 0, dropped.stderr
    assert node.entries() == [] and (folder / "metadata.xml").exists() and node.deletions() == []
    again = node.push("drop", "--meeting-id", MEETING)
    assert again.returncode == 1 and "not in the backlog" in again.stderr


def test_wrappers_are_executable() -> None:
    assert os.access(NODE / "b3lb-push", os.X_OK)


# --- the post_publish hook -----------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed (BigBlueButton nodes have it)")
@pytest.mark.parametrize(
    ("args", "status", "called"),
    [
        (["-m", MEETING, "-f", "presentation"], 0, f"enqueue --meeting-id {MEETING}"),
        (["-m", MEETING], 0, f"enqueue --meeting-id {MEETING}"),
        (["-m", MEETING, "-f", "video"], 0, ""),  # only the presentation format is uploaded
        (["-f", "presentation"], 1, ""),
        (["-m", MEETING, "--bogus"], 1, ""),
    ],
)
def test_post_publish_hook(tmp_path: Path, args: list[str], status: int, called: str) -> None:
    calls = tmp_path / "calls"
    fake = write(tmp_path / "fake-b3lb-push", f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    done = subprocess.run(["ruby", str(NODE / "post_publish" / "b3lb_push.rb"), *args],
                          env={**os.environ, "B3LB_PUSH": str(fake)}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == status, done.stderr
    assert (calls.read_text().strip() if calls.exists() else "") == called
