"""Recordings of the fake BBB fleet (b3lb.testing.fakebbb), so tests and benchmarks run the whole path.

A fleet made with ``FakeFleet(..., recordings=True)`` (or ``fleet.recorder.enabled = True``) "records"
every meeting created with ``record=true``: its end callback carries ``recordingmarks=true``, and
afterwards, in the background like a real node after processing, the node builds a small synthetic
published presentation folder (spec 4.10, 4.11) and uploads it like the node's push hook:
``POST {b3lb}/b3lb/b/record/upload?nonce={b3lb-recordset}``, multipart parts ``file`` (the folder as
``tar -C folder .``) and ``meta`` (its metadata.xml), retried a few times on anything but a 2xx.

The folder is a synthetic recording (b3lb.testing.synthetic: BBB's file layout, content known
exactly): a `RECORDING_SECONDS` (6 s) recording of `SLIDES` flat-colour slides, a whiteboard stroke on
each, a deskshare from 2.5 s to 3.5 s, and ``video/webcams.webm`` (a colour and a tone), the videos made by
ffmpeg (imageio-ffmpeg) once per process and length. Without ffmpeg (or with ``use_ffmpeg = False``)
the committed fixture ``fixtures/webcams.webm`` (2 s, 5 KB) is the video, the recording is 2 s long and
has no deskshare. metadata.xml is derived from the meeting and its end time (its <duration> is the
recorded length, as on a node), so a recording is small (a ~40 KB tar) and reproducible; each
upload's `FakeUpload.truth` says what a rendering of it must show when.

b3lb's address is taken from the meeting's ``endcallbackurl`` (b3lb's own end callback). When that
name does not resolve (the harness uses https://lb.test), set ``fleet.recorder.upload_base`` to where
b3lb listens (``http://127.0.0.1:PORT/``): uploads and end callbacks to b3lb's ``/b3lb/`` paths then go
there. Like every fake callback, nothing but loopback is ever contacted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from b3lb.testing import synthetic
from b3lb.testing.fakebbb_xml import FakeMeeting, is_loopback_url, is_xml_name
from b3lb.urlguard import loggable

Interval = tuple[float, float]

if TYPE_CHECKING:
    from b3lb.testing.fakebbb import FakeNode

log = logging.getLogger(__name__)

RECORDSET_META = "b3lb-recordset"
UPLOAD_PATH = "b3lb/b/record/upload"
FIXTURE_WEBM = Path(__file__).resolve().parent / "fixtures" / "webcams.webm"
SLIDES = 3
SLIDE_SIZE = (320, 240)  # 4:3 slides: a 16:9 rendering shows the backdrop beside them
THUMB_SIZE = synthetic.THUMB_SIZE  # BBB's thumbnail size, also named in metadata.xml's preview
WEBCAM_SIZE = (160, 120)
WEBCAM_FPS = 5
DESKSHARE_FPS = 5
RECORDING_SECONDS = 6.0  # the recorded length of every fake recording (with ffmpeg)
DESKSHARE: Interval = (2.5, 3.5)  # interrupts slide 2, which resumes after it
FIXTURE_SECONDS = 2.0  # length of fixtures/webcams.webm
PROCESSING_MS = 1234  # a fixed "processing time": the same meeting gives the same metadata.xml
_webm_cache: dict[tuple[bool, float], bytes | None] = {}  # (use_ffmpeg, seconds) -> webcams.webm
_deskshare_cache: dict[tuple[float, Interval], bytes | None] = {}
_fixture_cache: dict[str, bytes | None] = {}


@dataclass
class FakeUpload:
    """What became of one recording's upload, for assertions."""

    nonce: str  # the b3lb-recordset value
    meeting_id: str
    record_id: str  # BBB's record ID: the internal meeting ID
    status: int = 0  # HTTP status of the last attempt; 0 when there was no answer or nothing was sent
    attempts: int = 0
    archive_bytes: int = 0
    error: str = ""
    truth: synthetic.SyntheticTruth | None = None  # what the uploaded recording shows when

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


# Files of the published folder ---------------------------------------------------------------


def presentation_id(meeting: FakeMeeting) -> str:
    """BBB names an uploaded presentation `sha1-timestamp`; derived from the meeting here."""
    return hashlib.sha1(f"{meeting.meeting_id}/default.pdf".encode()).hexdigest() + "-" + str(meeting.create_time + 1)


def meta_values(meeting: FakeMeeting) -> dict[str, str]:
    """metadata.xml <meta>: BBB's own keys, then every meta_* of the create (keys lower-cased)."""
    values = {
        "isBreakout": "true" if meeting.is_breakout else "false",
        "meetingName": meeting.name,
        "meetingId": meeting.meeting_id,
    }
    for key, value in meeting.metadata.items():
        if is_xml_name(key):  # anything else cannot be an element name
            values.setdefault(key, value)
    return values


def meeting_values(meeting: FakeMeeting, node_domain: str, end_ms: int, duration_ms: int) -> dict[str, object]:
    """metadata.xml's values for b3lb.testing.synthetic.metadata_xml."""
    return {
        "id": meeting.internal_meeting_id, "external_id": meeting.meeting_id, "name": meeting.name,
        "breakout": meeting.is_breakout, "start_ms": meeting.create_time, "end_ms": end_ms,
        "participants": len({a.user_id for a in meeting.attendees}), "meta": meta_values(meeting),
        "domain": node_domain, "processing_ms": PROCESSING_MS, "duration_ms": duration_ms, "slides": SLIDES,
        "presentation_id": presentation_id(meeting),
    }  # fmt: skip


def build_recording(
    folder: Path, meeting: FakeMeeting, node_domain: str, end_ms: int, webcams: bytes | None, *,
    duration_s: float | None = None, deskshare: tuple[Interval, bytes] | None = None,
) -> tuple[bytes, synthetic.SyntheticTruth]:
    """Write the published presentation folder of `meeting` into `folder` (created).

    `duration_s` is the recorded length (<playback><duration>; default: the meeting's, from its
    create to `end_ms`); `webcams` and `deskshare` (its interval and deskshare.webm) are the videos,
    made beforehand for that length (`recording_media`). Returns metadata.xml and the truth."""
    real_ms = max(0, end_ms - meeting.create_time)
    seconds = real_ms / 1000 if duration_s is None else duration_s
    truth = synthetic.plan(
        duration_s=max(seconds, 0.3), slides=SLIDES, size=SLIDE_SIZE, deskshare=deskshare[0] if deskshare else None,
        webcams=webcams is not None, audio=webcams is not None, presentation_id=presentation_id(meeting),
        webcam_size=WEBCAM_SIZE, start_ms=meeting.create_time,
    )
    folder.mkdir(parents=True, exist_ok=True)
    synthetic.write_documents(folder, truth)
    if webcams is not None:
        (folder / "video").mkdir(exist_ok=True)
        (folder / "video" / "webcams.webm").write_bytes(webcams)
    if deskshare is not None:
        (folder / "deskshare").mkdir(exist_ok=True)
        (folder / "deskshare" / "deskshare.webm").write_bytes(deskshare[1])
    duration_ms = real_ms if duration_s is None else round(duration_s * 1000)
    values = meeting_values(meeting, node_domain, end_ms, duration_ms)
    return synthetic.write_metadata(folder, truth, values), truth


def build_presentation(folder: Path, meeting: FakeMeeting, node_domain: str, end_ms: int,
                       webcams: bytes | None) -> bytes:
    """The published folder of a recording as long as the meeting, without deskshare; returns metadata.xml."""
    return build_recording(folder, meeting, node_domain, end_ms, webcams)[0]


def tar_folder(folder: Path, target: Path, mtime: int) -> int:
    """`tar -C folder .` with fixed owners and times (same folder, same bytes); returns the size."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = mtime
        return info

    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(folder, arcname=".", filter=normalise)  # members sorted by name
    return target.stat().st_size


def publish_files(
    scratch: Path, meeting: FakeMeeting, node_domain: str, end_ms: int, media: RecordingMedia
) -> tuple[bytes, bytes, synthetic.SyntheticTruth]:
    """The published folder under `scratch` and its tar: (metadata.xml, archive, truth)."""
    folder, archive = scratch / meeting.internal_meeting_id, scratch / "archive.tar"
    metadata, truth = build_recording(folder, meeting, node_domain, end_ms, media.webcams,
                                      duration_s=media.duration_s, deskshare=media.deskshare)
    tar_folder(folder, archive, end_ms // 1000)
    return metadata, archive.read_bytes(), truth


# Videos: made once per process and length ---------------------------------------------------------


@dataclass(frozen=True)
class RecordingMedia:
    duration_s: float
    webcams: bytes | None
    deskshare: tuple[Interval, bytes] | None


def _media_truth(duration_s: float, deskshare: Interval | None) -> synthetic.SyntheticTruth:
    return synthetic.plan(duration_s=duration_s, slides=SLIDES, size=SLIDE_SIZE, deskshare=deskshare,
                          webcam_size=WEBCAM_SIZE, deskshare_size=SLIDE_SIZE)


def _ffmpeg_video(kind: str, duration_s: float, deskshare: Interval | None) -> bytes | None:
    """webcams.webm or deskshare.webm of a fake recording (runs in a thread); None without ffmpeg."""
    truth = _media_truth(duration_s, deskshare)
    try:
        with tempfile.TemporaryDirectory(prefix="b3lb-fake-webm-") as scratch:
            target = Path(scratch) / f"{kind}.webm"
            if kind == "webcams":
                synthetic.webcams_video(target, truth, fps=WEBCAM_FPS, audio_kbps=8)
            else:
                synthetic.deskshare_video(target, truth, fps=DESKSHARE_FPS)
            return target.read_bytes()
    except synthetic.SyntheticError as error:
        log.debug("fake BBB: no %s video (%s)", kind, error)
        return None


def _fixture() -> bytes | None:
    if "fixture" not in _fixture_cache:
        _fixture_cache["fixture"] = FIXTURE_WEBM.read_bytes() if FIXTURE_WEBM.is_file() else None
    return _fixture_cache["fixture"]


async def webcams_webm(use_ffmpeg: bool = True, duration_s: float = RECORDING_SECONDS) -> bytes | None:
    """VP9 video with an Opus tone of `duration_s`: made by ffmpeg once per process and length, else the
    fixture (2 s), else None."""
    key = (use_ffmpeg, duration_s)
    if key not in _webm_cache:
        data = await asyncio.to_thread(_ffmpeg_video, "webcams", duration_s, None) if use_ffmpeg else None
        _webm_cache[key] = data if data is not None else _fixture()
    return _webm_cache[key]


async def recording_media(use_ffmpeg: bool, duration_s: float, deskshare: Interval | None) -> RecordingMedia:
    """The videos of a fake recording of `duration_s`. Without ffmpeg: the fixture's 2 s, no deskshare."""
    webcams = await webcams_webm(use_ffmpeg, duration_s)
    if webcams is None or webcams == _fixture():
        return RecordingMedia(FIXTURE_SECONDS, webcams, None)
    if deskshare is None:
        return RecordingMedia(duration_s, webcams, None)
    key = (duration_s, deskshare)
    if key not in _deskshare_cache:
        _deskshare_cache[key] = await asyncio.to_thread(_ffmpeg_video, "deskshare", duration_s, deskshare)
    video = _deskshare_cache[key]
    return RecordingMedia(duration_s, webcams, None if video is None else (deskshare, video))


# Upload ----------------------------------------------------------------------------------------


def b3lb_base(end_callback: str) -> str:
    """scheme://host:port/ of b3lb, from its own end callback URL (…/b3lb/b/meeting/end?nonce=…)."""
    parts = urlsplit(end_callback)
    return urlunsplit((parts.scheme, parts.netloc, "/", "", "")) if parts.scheme and parts.netloc else ""


class FakeRecorder:
    """The recording side of a fake fleet: which meetings record, and their uploads."""

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        # Where the nodes reach b3lb ("http://127.0.0.1:PORT/"); empty: the end callback's host.
        self.upload_base = ""
        self.delay = 0.0  # seconds of "processing" between the end and the upload
        self.attempts = 4  # uploads tried at most this often
        self.retry_delay = 0.1  # seconds before the second attempt, doubled for each further one
        self.use_ffmpeg = True  # False: the committed fixture webcams.webm (no subprocess)
        self.duration_s = RECORDING_SECONDS  # recorded length of every recording (with ffmpeg)
        self.deskshare: Interval | None = DESKSHARE  # when the screen is shared (None: never)
        self.uploads: list[FakeUpload] = []
        self._session: aiohttp.ClientSession | None = None

    def records(self, meeting: FakeMeeting) -> bool:
        """Spec 3.1: recordingmarks=true when created with record=true and recorded (recording fleets)."""
        return self.enabled and meeting.record

    def reach(self, url: str) -> str:
        """`url` as the nodes reach it: b3lb's own paths go to upload_base when one is set."""
        if not self.upload_base or not url:
            return url
        parts, base = urlsplit(url), urlsplit(self.upload_base)
        if not parts.path.startswith("/b3lb/"):
            return url
        return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, parts.fragment))

    def upload_url(self, meeting: FakeMeeting) -> str:
        base = self.upload_base or b3lb_base(meeting.metadata.get("endcallbackurl", ""))
        if not base:
            return ""
        base = base if base.endswith("/") else base + "/"
        return f"{base}{UPLOAD_PATH}?nonce={quote(meeting.metadata[RECORDSET_META], safe='')}"

    async def publish(self, node: FakeNode, meeting: FakeMeeting) -> FakeUpload | None:
        """After the end of a recorded meeting: process, publish and upload like a node (run in the
        background). Meetings without the b3lb-recordset tag are not uploaded (the push hook skips them)."""
        end_ms = int(time.time() * 1000)
        nonce = meeting.metadata.get(RECORDSET_META, "")
        if not nonce:
            return None
        upload = FakeUpload(nonce, meeting.meeting_id, meeting.internal_meeting_id)
        self.uploads.append(upload)
        if self.delay:
            await asyncio.sleep(self.delay)
        url = self.upload_url(meeting)
        if not url or not is_loopback_url(url):
            upload.error = f"not uploading to {loggable(url) if url else 'an unknown b3lb'}"
            log.debug("fake BBB: %s", upload.error)
            return upload
        media = await recording_media(self.use_ffmpeg, self.duration_s, self.deskshare)
        scratch = Path(tempfile.mkdtemp(prefix="b3lb-fake-recording-"))
        # Files are written in a thread, so a benchmark's event loop keeps serving meanwhile.
        files = asyncio.ensure_future(asyncio.to_thread(publish_files, scratch, meeting, node.domain, end_ms, media))
        try:
            metadata, archive, upload.truth = await asyncio.shield(files)
            upload.archive_bytes = len(archive)
            await self._send(upload, url, archive, metadata)
        finally:  # gone after the last attempt, whatever its answer: tests and benchmarks leave no files
            await asyncio.wait([files])  # a cancelled publish's thread may still be writing
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        return upload

    async def _send(self, upload: FakeUpload, url: str, archive: bytes, metadata: bytes) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        for attempt in range(1, self.attempts + 1):
            upload.attempts = attempt
            form = aiohttp.FormData()
            form.add_field("file", archive, filename=f"{upload.record_id}.tar", content_type="application/x-tar")
            form.add_field("meta", metadata, filename="metadata.xml", content_type="application/xml")
            try:
                async with self._session.post(url, data=form, allow_redirects=False) as response:
                    await response.read()
                    upload.status, upload.error = response.status, ""
            except (aiohttp.ClientError, TimeoutError) as error:
                upload.status, upload.error = 0, f"{type(error).__name__}: {error}"
            if upload.ok:
                return
            log.debug("fake BBB: upload to %s: attempt %d: %s", loggable(url), attempt, upload.status or upload.error)
            if attempt < self.attempts:
                await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
