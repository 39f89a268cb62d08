"""The fake fleet's recordings (b3lb.testing.fakerecording): the published folder, its tar, the end
callback's recordingmarks, and the upload over real HTTP on loopback (a small Tornado receiver that
parses the multipart body, and b3lb itself through the harness)."""

from __future__ import annotations

import asyncio
import io
import struct
import tarfile
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from lxml import etree
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from b3lb.recordings.storage import set_prefix
from b3lb.testing import fakerecording as rec
from b3lb.testing.fakebbb import FakeAttendee, FakeFleet, FakeMeeting, FakeNode
from b3lb.testing.harness import Harness

PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
XLINK = "{http://www.w3.org/1999/xlink}href"


def parse(data: bytes) -> etree._Element:
    return etree.fromstring(data, PARSER)


def sample_meeting(**metadata: str) -> FakeMeeting:
    meeting = FakeMeeting(meeting_id="room-42", name="Weekly <Sync> & \x01more", create_time=1_731_234_567_890,
                          record=True)
    meeting.metadata = {"endcallbackurl": "https://lb.test/b3lb/b/meeting/end?nonce=n", "b3lb-recordset": "n",
                        "bbb-origin": "Greenlight", "gl-listed": "false", "bad key!": "dropped", **metadata}
    meeting.attendees = [FakeAttendee("u1", "Ann"), FakeAttendee("u2", "Bob"), FakeAttendee("u1", "Ann again")]
    return meeting


def check_png(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG whose chunks, CRCs and pixel data are all consistent."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks[kind] = body
        position += 12 + length
    assert list(chunks)[-1] == b"IEND"
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 3 * width)
    return width, height


# The published folder and its archive ------------------------------------------------------


def test_published_folder_is_well_formed(tmp_path: Path) -> None:
    meeting = sample_meeting()
    end_ms = meeting.create_time + 65_000
    folder = tmp_path / "pub"
    webcams = rec.FIXTURE_WEBM.read_bytes()
    document = rec.build_presentation(folder, meeting, "127.0.1.1", end_ms, webcams)
    assert (folder / "metadata.xml").read_bytes() == document
    root = parse(document)
    assert root.tag == "recording"
    assert [child.tag for child in root] == [
        "id", "state", "published", "start_time", "end_time", "participants", "meeting", "meta", "playback",
        "raw_size",
    ]
    internal = meeting.internal_meeting_id
    assert root.findtext("id") == internal
    assert (root.findtext("state"), root.findtext("published")) == ("published", "true")
    assert (root.findtext("start_time"), root.findtext("end_time")) == (str(meeting.create_time), str(end_ms))
    assert root.findtext("participants") == "2"  # distinct users
    assert dict(root.find("meeting").attrib) == {
        "id": internal, "externalId": "room-42", "name": "Weekly <Sync> & more", "breakout": "false"
    }
    meta = {child.tag: child.text for child in root.find("meta")}
    assert meta == {
        "isBreakout": "false", "meetingName": "Weekly <Sync> & more", "meetingId": "room-42",
        "endcallbackurl": "https://lb.test/b3lb/b/meeting/end?nonce=n", "b3lb-recordset": "n",
        "bbb-origin": "Greenlight", "gl-listed": "false",
    }
    playback = root.find("playback")
    assert playback.findtext("format") == "presentation"
    assert playback.findtext("link") == f"https://127.0.1.1/playback/presentation/2.3/{internal}"
    assert playback.findtext("processing_time") == str(rec.PROCESSING_MS)
    assert playback.findtext("duration") == "65000"
    images = playback.findall("extensions/preview/images/image")
    assert len(images) == rec.SLIDES and images[0].get("width") == "176"
    others = [p for p in folder.rglob("*") if p.is_file() and p.name != "metadata.xml"]
    assert playback.findtext("size") == str(sum(p.stat().st_size for p in others))
    assert int(root.findtext("raw_size")) > int(playback.findtext("size"))
    # shapes.svg names slides that exist, one canvas each
    svg = parse((folder / "shapes.svg").read_bytes())
    slides = svg.findall("{http://www.w3.org/2000/svg}image")
    assert len(slides) == rec.SLIDES
    for slide in slides:
        assert check_png((folder / slide.get(XLINK)).read_bytes()) == rec.SLIDE_SIZE
        assert float(slide.get("in")) < float(slide.get("out"))
    thumbs = sorted((folder / "presentation").rglob("thumb-*.png"))
    assert [check_png(t.read_bytes()) for t in thumbs] == [rec.THUMB_SIZE] * rec.SLIDES
    for name in ("panzooms.xml", "cursor.xml", "deskshare.xml"):
        assert parse((folder / name).read_bytes()).tag == "recording"
    assert (folder / "video" / "webcams.webm").read_bytes()[:4] == EBML_MAGIC
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 20_000  # small


def test_folder_without_video_and_breakout_meeting(tmp_path: Path) -> None:
    meeting = sample_meeting()
    meeting.is_breakout = True
    rec.build_presentation(tmp_path, meeting, "127.0.1.1", meeting.create_time, None)
    assert not (tmp_path / "video").exists()
    root = parse((tmp_path / "metadata.xml").read_bytes())
    assert root.find("meeting").get("breakout") == "true"
    assert root.findtext("meta/isBreakout") == "true"
    assert root.findtext("playback/duration") == "0"


def test_tar_holds_the_folder_like_tar_c_dot(tmp_path: Path) -> None:
    meeting = sample_meeting()
    folder = tmp_path / "pub"
    rec.build_presentation(folder, meeting, "127.0.1.1", meeting.create_time + 1000, rec.FIXTURE_WEBM.read_bytes())
    size = rec.tar_folder(folder, tmp_path / "a.tar", 1_700_000_000)
    assert size == (tmp_path / "a.tar").stat().st_size
    with tarfile.open(tmp_path / "a.tar") as archive:
        names = archive.getnames()
        assert all(name == "." or name.startswith("./") for name in names)
        files = {m.name for m in archive.getmembers() if m.isfile()}
        expected = {"./" + str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
        assert files == expected
        assert {"./metadata.xml", "./shapes.svg", "./video/webcams.webm"} <= files
        member = archive.extractfile("./metadata.xml")
        assert member is not None and member.read() == (folder / "metadata.xml").read_bytes()
        assert {m.uid for m in archive.getmembers()} == {0}
    rec.tar_folder(folder, tmp_path / "b.tar", 1_700_000_000)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()  # deterministic


@pytest.mark.gen_test
async def test_webcams_video_from_ffmpeg_or_fixture() -> None:
    fixture = await rec.webcams_webm(use_ffmpeg=False)
    assert fixture == rec.FIXTURE_WEBM.read_bytes() and len(fixture) < 10_000
    pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg (dev extra) is not installed")
    made = await rec.webcams_webm(use_ffmpeg=True)
    assert made is not None and made[:4] == EBML_MAGIC and b"V_VP9" in made and b"A_OPUS" in made
    assert len(made) < 20_000  # 6 s
    assert await rec.webcams_webm(use_ffmpeg=True) is made  # once per process and length


def test_upload_url_and_reach() -> None:
    recorder = rec.FakeRecorder(True)
    meeting = sample_meeting(**{"b3lb-recordset": "a b&c"})
    assert recorder.upload_url(meeting) == "https://lb.test/b3lb/b/record/upload?nonce=a%20b%26c"
    recorder.upload_base = "http://127.0.0.1:8080"
    assert recorder.upload_url(meeting) == "http://127.0.0.1:8080/b3lb/b/record/upload?nonce=a%20b%26c"
    assert recorder.reach("https://lb.test/b3lb/b/meeting/end?nonce=1") == "http://127.0.0.1:8080/b3lb/b/meeting/end?nonce=1"
    assert recorder.reach("https://gl.example.org/ended?x=1") == "https://gl.example.org/ended?x=1"  # not b3lb's
    assert recorder.reach("") == ""
    assert rec.FakeRecorder().upload_url(FakeMeeting("m1", "M1", metadata={"b3lb-recordset": "n"})) == ""
    meeting.record = False
    assert not recorder.records(meeting)
    meeting.record = True
    assert recorder.records(meeting) and not rec.FakeRecorder(False).records(meeting)


# Over HTTP: a receiver standing in for b3lb ----------------------------------------------------


class Receiver:
    """Loopback stand-in for b3lb: end callbacks (GET) and uploads (multipart POST)."""

    def __init__(self) -> None:
        self.callbacks: list[str] = []
        self.uploads: list[tuple[str, dict[str, list[tuple[str, str, bytes]]]]] = []
        self.statuses: list[int] = []  # answers of the next uploads; 204 once used up
        self.held: asyncio.Event | None = None  # set: uploads wait until it is set (never, in tests)
        self.arrived = asyncio.Event()
        self.server: HTTPServer | None = None
        self.port = 0

    def start(self) -> None:
        receiver = self

        class Callback(RequestHandler):
            def get(self, *args: str) -> None:
                receiver.callbacks.append(self.request.uri or "")
                self.set_status(204)

        class Upload(RequestHandler):
            async def post(self) -> None:
                parts = {name: [(f.filename, f.content_type, f.body) for f in files]
                         for name, files in self.request.files.items()}
                receiver.uploads.append((self.get_query_argument("nonce"), parts))
                receiver.arrived.set()
                if receiver.held is not None:
                    await receiver.held.wait()
                self.set_status(receiver.statuses.pop(0) if receiver.statuses else 204)

        sockets = bind_sockets(0, address="127.0.0.1")
        self.server = HTTPServer(Application([(r"/(ended|b3lb/b/meeting/end)", Callback),
                                              (r"/b3lb/b/record/upload", Upload)]))
        self.server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]

    def stop(self) -> None:
        assert self.server is not None
        self.server.stop()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def marks(self) -> dict[str, str]:
        """meetingID -> recordingmarks of the end callbacks received."""
        params = [dict(parse_qsl(urlsplit(uri).query)) for uri in self.callbacks]
        return {p["meetingID"]: p["recordingmarks"] for p in params}


async def create(node: FakeNode, meeting_id: str, **params: str) -> None:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in {"meetingID": meeting_id, "name": meeting_id,
                                                               **params}.items())
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(node.api_url("create", query))
    finally:
        client.close()
    assert b"<returncode>SUCCESS</returncode>" in response.body


async def end(node: FakeNode, meeting_id: str) -> None:
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(node.api_url("end", f"meetingID={meeting_id}"))
    finally:
        client.close()
    assert b"<returncode>SUCCESS</returncode>" in response.body


def fast(fleet: FakeFleet) -> FakeFleet:
    fleet.recorder.retry_delay = 0.01
    fleet.recorder.use_ffmpeg = False  # the fixture video: no subprocess per test
    return fleet


@pytest.mark.gen_test
async def test_recorded_meeting_ends_with_marks_and_uploads() -> None:
    receiver = Receiver()
    receiver.start()
    nonce = str(uuid.uuid4())
    async with FakeFleet(2, recordings=True) as fleet:
        fast(fleet)
        node = fleet.nodes[0]
        callback = f"{receiver.base}/ended?room=1"
        await create(node, "rec", record="true", **{"meta_endCallbackUrl": callback, "meta_b3lb-recordset": nonce,
                                                   "meta_bbb-origin": "Greenlight"})
        await create(node, "plain", record="false", **{"meta_endCallbackUrl": callback,
                                                      "meta_b3lb-recordset": str(uuid.uuid4())})
        await create(fleet.nodes[1], "direct", record="true", **{"meta_endCallbackUrl": callback})
        node.add_attendees("rec", 3)
        await end(node, "rec")  # the API end: callbacks and upload in the background
        await end(node, "plain")
        await fleet.end_meeting(fleet.nodes[1], "direct")  # no b3lb-recordset tag: nothing to upload
        await fleet.settle()
        assert receiver.marks() == {"rec": "true", "plain": "false", "direct": "true"}
        assert [(u.nonce, u.status, u.attempts, u.meeting_id) for u in fleet.recorder.uploads] == [
            (nonce, 204, 1, "rec")
        ]
        assert len(receiver.uploads) == 1
        got_nonce, parts = receiver.uploads[0]
        assert got_nonce == nonce and set(parts) == {"file", "meta"}
        (file_name, file_type, archive), (meta_name, _, meta) = parts["file"][0], parts["meta"][0]
        upload = fleet.recorder.uploads[0]
        assert (file_name, file_type, meta_name) == (f"{upload.record_id}.tar", "application/x-tar", "metadata.xml")
        assert len(archive) == upload.archive_bytes
        root = parse(meta)
        assert root.findtext("id") == upload.record_id and root.findtext("meta/b3lb-recordset") == nonce
        assert root.findtext("meta/bbb-origin") == "Greenlight" and root.findtext("participants") == "3"
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            member = tar.extractfile("./metadata.xml")
            assert member is not None and member.read() == meta
            assert "./video/webcams.webm" in tar.getnames()
        started = int(root.findtext("start_time"))
        assert started <= int(root.findtext("end_time")) <= int(time.time() * 1000)
    receiver.stop()


@pytest.mark.gen_test
async def test_fleet_without_recordings_never_marks_or_uploads() -> None:
    receiver = Receiver()
    receiver.start()
    async with FakeFleet(1) as fleet:
        node = fleet.nodes[0]
        await create(node, "rec", record="true", **{"meta_endCallbackUrl": f"{receiver.base}/ended",
                                                   "meta_b3lb-recordset": "n1"})
        await end(node, "rec")
        await fleet.settle()
        assert receiver.marks() == {"rec": "false"}
        assert fleet.recorder.uploads == [] and receiver.uploads == []
        await create(node, "forced", **{"meta_endCallbackUrl": f"{receiver.base}/ended"})
        await fleet.end_meeting(node, "forced", recordingmarks=True)  # an explicit value still wins
        assert receiver.marks()["forced"] == "true"
    receiver.stop()


@pytest.mark.gen_test
async def test_upload_is_retried_until_a_2xx_or_the_last_attempt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the nodes' published folders go
    receiver = Receiver()
    receiver.start()
    async with FakeFleet(1, recordings=True) as fleet:
        fast(fleet)
        node = fleet.nodes[0]
        receiver.statuses = [503, 500, 204]
        await create(node, "r1", record="true", **{"meta_endCallbackUrl": f"{receiver.base}/ended",
                                                  "meta_b3lb-recordset": "n1"})
        await fleet.end_meeting(node, "r1")
        await fleet.settle()
        assert [(u.status, u.attempts) for u in fleet.recorder.uploads] == [(204, 3)]
        assert len(receiver.uploads) == 3
        # a set b3lb does not know: every attempt fails, the last answer is kept
        fleet.recorder.attempts = 2
        receiver.statuses = [404, 404]
        await create(node, "r2", record="true", **{"meta_endCallbackUrl": f"{receiver.base}/ended",
                                                  "meta_b3lb-recordset": "n2"})
        await fleet.end_meeting(node, "r2")
        await fleet.settle()
        last = fleet.recorder.uploads[-1]
        assert (last.nonce, last.status, last.attempts, last.ok) == ("n2", 404, 2, False)
        assert len(receiver.uploads) == 5
    receiver.stop()
    assert list(tmp_path.iterdir()) == []  # the published folders are gone after the last attempt


@pytest.mark.gen_test
async def test_stopping_the_fleet_mid_upload_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    receiver = Receiver()
    receiver.start()
    receiver.held = asyncio.Event()
    fleet = fast(FakeFleet(1, recordings=True))
    await fleet.start()
    node = fleet.nodes[0]
    await create(node, "r1", record="true", **{"meta_endCallbackUrl": f"{receiver.base}/ended",
                                              "meta_b3lb-recordset": "n1"})
    await end(node, "r1")
    await receiver.arrived.wait()  # the upload is under way and will not be answered
    assert [p.name.startswith("b3lb-fake-recording-") for p in tmp_path.iterdir()] == [True]
    await fleet.stop()
    assert list(tmp_path.iterdir()) == []
    assert fleet.recorder.uploads[0].status == 0
    receiver.held.set()
    receiver.stop()


@pytest.mark.gen_test
async def test_upload_base_override_and_unreachable_b3lb() -> None:
    receiver = Receiver()
    receiver.start()
    async with FakeFleet(1, recordings=True) as fleet:
        fast(fleet)
        node = fleet.nodes[0]
        lb_callback = "https://lb.test/b3lb/b/meeting/end?nonce=n1"
        # b3lb's public name does not resolve: without an override nothing is sent anywhere
        await create(node, "r1", record="true", **{"meta_endCallbackUrl": lb_callback, "meta_b3lb-recordset": "n1"})
        await fleet.end_meeting(node, "r1")
        await fleet.settle()
        upload = fleet.recorder.uploads[-1]
        assert (upload.status, upload.attempts) == (0, 0) and "lb.test" in upload.error and "nonce" not in upload.error
        assert receiver.callbacks == [] and receiver.uploads == []
        # with it, the end callback and the upload both reach "b3lb" on loopback
        fleet.recorder.upload_base = receiver.base + "/"
        await create(node, "r2", record="true", **{"meta_endCallbackUrl": lb_callback, "meta_b3lb-recordset": "n2"})
        await fleet.end_meeting(node, "r2")
        await fleet.settle()
        assert [urlsplit(uri).path for uri in receiver.callbacks] == ["/b3lb/b/meeting/end"]
        assert receiver.marks() == {"r2": "true"}
        assert fleet.recorder.uploads[-1].status == 204 and receiver.uploads[0][0] == "n2"
        # b3lb down: connection refused on every attempt
        closed = bind_sockets(0, address="127.0.0.1")[0]
        fleet.recorder.upload_base = f"http://127.0.0.1:{closed.getsockname()[1]}/"
        closed.close()
        fleet.recorder.attempts = 2
        await create(node, "r3", record="true", **{"meta_endCallbackUrl": lb_callback, "meta_b3lb-recordset": "n3"})
        await fleet.end_meeting(node, "r3")
        await fleet.settle()
        upload = fleet.recorder.uploads[-1]
        assert (upload.status, upload.attempts, upload.ok) == (0, 2, False) and upload.error
    receiver.stop()


# Through b3lb -----------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_recorded_meeting_travels_to_b3lb(db_url: str) -> None:
    """create record=true -> end -> the fake node uploads -> the set is UPLOADED, archive stored, job queued."""
    async with Harness(db_url, nodes=1) as h:
        assert h.pool is not None and h.runtime is not None
        fast(h.fleet).recorder.enabled = True
        h.fleet.recorder.upload_base = f"http://127.0.0.1:{h.port}/"
        await h.pool.execute("UPDATE tenant SET record_by_default = true")
        await h.reload()
        query = "meetingID=rec-1&name=Weekly+Sync&record=true&meta_bbb-origin=Greenlight"
        assert b"SUCCESS" in (await h.call("create", query)).body
        nonce = await h.pool.fetchval("SELECT id FROM record_set")
        h.fleet.nodes[0].add_attendees("rec-1", 2)
        assert b"SUCCESS" in (await h.call("end", "meetingID=rec-1")).body
        await h.fleet.settle()
        assert [(u.nonce, u.status, u.attempts) for u in h.fleet.recorder.uploads] == [(nonce, 204, 1)]
        row = await h.pool.fetchrow("SELECT * FROM record_set WHERE id = $1", nonce)
        assert row["status"] == "UPLOADED" and row["archive_key"].startswith(set_prefix(nonce) + "/raw-")
        assert (row["meta_name"], row["participants"]) == ("Weekly Sync", 2)
        assert row["internal_id"] == h.fleet.recorder.uploads[0].record_id
        assert await h.runtime.storage.stat(row["archive_key"]) is not None
        assert await h.pool.fetchval("SELECT state FROM render_job WHERE recordset_id = $1", nonce) == "QUEUED"
        # the end callback reached b3lb too: the meeting is gone, the set was kept (recordingmarks=true)
        assert await h.pool.fetchval("SELECT count(*) FROM meeting") == 0
        # a meeting created with record=false: marks false, no upload, its set dropped by the end callback
        assert b"SUCCESS" in (await h.call("create", "meetingID=plain&name=Plain&record=false")).body
        assert b"SUCCESS" in (await h.call("end", "meetingID=plain")).body
        await h.fleet.settle()
        assert len(h.fleet.recorder.uploads) == 1
        assert await h.pool.fetchval("SELECT count(*) FROM record_set") == 1
