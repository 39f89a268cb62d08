"""Recordings of the fake BBB fleet (b3lb.testing.fakebbb), so tests and benchmarks run the whole path.

A fleet made with ``FakeFleet(..., recordings=True)`` (or ``fleet.recorder.enabled = True``) "records"
every meeting created with ``record=true``: its end callback carries ``recordingmarks=true``, and
afterwards, in the background like a real node after processing, the node builds a small synthetic
published presentation folder (spec 4.10, 4.11) and uploads it like the node's push hook:
``POST {b3lb}/b3lb/b/record/upload?nonce={b3lb-recordset}``, multipart parts ``file`` (the folder as
``tar -C folder .``) and ``meta`` (its metadata.xml), retried a few times on anything but a 2xx.

The folder mirrors what BBB's presentation format publishes: ``metadata.xml`` (BBB's element names and
order), ``shapes.svg``, ``panzooms.xml``, ``cursor.xml``, ``deskshare.xml``, slide PNGs with thumbnails
and ``video/webcams.webm``: 2 s of a test pattern with a tone, made by ffmpeg (imageio-ffmpeg) once per
process, else the committed fixture ``fixtures/webcams.webm`` (5 KB). Everything else is derived from
the meeting and its end time, so a recording is small (a 30 KB tar, made in ~20 ms) and reproducible.

b3lb's address is taken from the meeting's ``endcallbackurl`` (b3lb's own end callback). When that
name does not resolve (the harness uses https://lb.test), set ``fleet.recorder.upload_base`` to where
b3lb listens (``http://127.0.0.1:PORT/``): uploads and end callbacks to b3lb's ``/b3lb/`` paths then go
there. Like every fake callback, nothing but loopback is ever contacted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import shutil
import struct
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from lxml import etree

from b3lb.testing.fakebbb_xml import FakeMeeting, is_loopback_url, is_xml_name
from b3lb.urlguard import loggable

if TYPE_CHECKING:
    from b3lb.testing.fakebbb import FakeNode

log = logging.getLogger(__name__)

RECORDSET_META = "b3lb-recordset"
UPLOAD_PATH = "b3lb/b/record/upload"
FIXTURE_WEBM = Path(__file__).resolve().parent / "fixtures" / "webcams.webm"
SLIDES = 3
SLIDE_SIZE = (320, 240)
THUMB_SIZE = (176, 136)  # BBB's thumbnail size, also named in metadata.xml's preview
PROCESSING_MS = 1234  # a fixed "processing time": the same meeting gives the same metadata.xml
FFMPEG_SECONDS = 30.0
_INVALID_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_webm_cache: dict[bool, bytes | None] = {}  # use_ffmpeg -> the video (None: none available)


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

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


# Files of the published folder ---------------------------------------------------------------


def png(width: int, height: int, background: tuple[int, int, int], band: tuple[int, int, int]) -> bytes:
    """A valid RGB PNG: a plain background with a horizontal band (so slides differ)."""
    plain = b"\x00" + bytes(background) * width  # filter byte 0, then the pixels of one row
    striped = b"\x00" + bytes(band) * width
    rows = [striped if height // 3 <= y < height // 2 else plain for y in range(height)]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    return b"".join(
        (b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", header), chunk(b"IDAT", zlib.compress(b"".join(rows), 9)),
         chunk(b"IEND", b""))
    )


def _slide_colour(number: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    shade = (40 * number) % 256
    return (255, 255, 255 - shade), (shade, 80, 160)


def _text(value: object) -> str:
    return _INVALID_XML_CHARS.sub("", str(value))


def _sub(parent: etree._Element, tag: str, text: object = None, **attributes: str) -> etree._Element:
    child = etree.SubElement(parent, tag, {k: _text(v) for k, v in attributes.items()})
    if text is not None:
        child.text = _text(text)
    return child


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


def metadata_xml(meeting: FakeMeeting, node_domain: str, end_ms: int, size: int, raw_size: int) -> bytes:
    """The published metadata.xml, as BBB's presentation publish script leaves it."""
    internal = meeting.internal_meeting_id
    root = etree.Element("recording")
    _sub(root, "id", internal)
    _sub(root, "state", "published")
    _sub(root, "published", "true")
    _sub(root, "start_time", meeting.create_time)
    _sub(root, "end_time", end_ms)
    _sub(root, "participants", len({a.user_id for a in meeting.attendees}))
    _sub(root, "meeting", id=internal, externalId=meeting.meeting_id, name=meeting.name,
         breakout="true" if meeting.is_breakout else "false")
    meta = _sub(root, "meta")
    for key, value in meta_values(meeting).items():
        _sub(meta, key, value)
    playback = _sub(root, "playback")
    _sub(playback, "format", "presentation")
    _sub(playback, "link", f"https://{node_domain}/playback/presentation/2.3/{internal}")
    _sub(playback, "processing_time", PROCESSING_MS)
    _sub(playback, "duration", max(0, end_ms - meeting.create_time))
    images = _sub(_sub(_sub(playback, "extensions"), "preview"), "images")
    base = f"https://{node_domain}/presentation/{internal}/presentation/{presentation_id(meeting)}"
    for number in range(1, SLIDES + 1):
        _sub(images, "image", f"{base}/thumbnails/thumb-{number}.png", width=str(THUMB_SIZE[0]),
             height=str(THUMB_SIZE[1]), alt=f"Slide {number}")
    _sub(playback, "size", size)
    _sub(root, "raw_size", raw_size)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def shapes_svg(meeting: FakeMeeting, duration_s: float) -> bytes:
    """The slides with their display intervals and one pencil stroke, in BBB's shapes.svg layout."""
    svg_ns, xlink = "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"
    width, height = SLIDE_SIZE
    root = etree.Element(f"{{{svg_ns}}}svg", nsmap={None: svg_ns, "xlink": xlink},
                         id="svgfile", version="1.1", viewBox=f"0 0 {width} {height}")
    step = round(max(duration_s, 0.3) / SLIDES, 1)
    for number in range(1, SLIDES + 1):
        start, out = round(step * (number - 1), 1), round(step * number, 1)
        etree.SubElement(root, f"{{{svg_ns}}}image", {
            "id": f"image{number}", "class": "slide", "in": str(start), "out": str(out),
            f"{{{xlink}}}href": f"presentation/{presentation_id(meeting)}/slide-{number}.png",
            "width": str(width), "height": str(height), "x": "0", "y": "0", "style": "visibility:hidden",
        })
        canvas = etree.SubElement(root, f"{{{svg_ns}}}g", {"class": "canvas", "id": f"canvas{number}",
                                                          "image": f"image{number}", "display": "none"})
        shape = etree.SubElement(canvas, f"{{{svg_ns}}}g", {
            "class": "shape", "id": f"draw{number}", "timestamp": str(start), "undo": "-1",
            "style": "stroke:#ff0000;stroke-linecap:round;stroke-linejoin:round;stroke-width:4;"
                     "visibility:hidden;fill:none",
        })
        etree.SubElement(shape, f"{{{svg_ns}}}path", d=f"M {20 * number} 40 L {60 * number} 120 L 280 200")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _event_document(name: str, events: list[tuple[str, str, str]]) -> bytes:
    root = etree.Element("recording", id=name)
    for timestamp, tag, text in events:
        _sub(_sub(root, "event", timestamp=timestamp), tag, text)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def build_presentation(folder: Path, meeting: FakeMeeting, node_domain: str, end_ms: int,
                       webcams: bytes | None) -> bytes:
    """Write the published presentation folder of `meeting` into `folder` (created); returns metadata.xml."""
    pres = folder / "presentation" / presentation_id(meeting)
    (pres / "thumbnails").mkdir(parents=True, exist_ok=True)
    for number in range(1, SLIDES + 1):
        colours = _slide_colour(number)
        (pres / f"slide-{number}.png").write_bytes(png(*SLIDE_SIZE, *colours))
        (pres / "thumbnails" / f"thumb-{number}.png").write_bytes(png(*THUMB_SIZE, *colours))
    duration_s = max(0, end_ms - meeting.create_time) / 1000
    (folder / "shapes.svg").write_bytes(shapes_svg(meeting, duration_s))
    width, height = SLIDE_SIZE
    (folder / "panzooms.xml").write_bytes(
        _event_document("panzoom_events", [("0.0", "viewBox", f"0.0 0.0 {width}.0 {height}.0")]))
    (folder / "cursor.xml").write_bytes(_event_document("cursor_events", [("0.0", "cursor", "-1.0 -1.0")]))
    (folder / "deskshare.xml").write_bytes(_event_document("deskshare_events", []))
    (folder / "captions.json").write_bytes(b"[]\n")
    if webcams is not None:
        (folder / "video").mkdir(exist_ok=True)
        (folder / "video" / "webcams.webm").write_bytes(webcams)
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    # raw_size is the node's raw recording (events, audio, video): several times the published size.
    document = metadata_xml(meeting, node_domain, end_ms, size, 4 * size)
    (folder / "metadata.xml").write_bytes(document)
    return document


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


def publish_files(scratch: Path, meeting: FakeMeeting, node_domain: str, end_ms: int,
                  webcams: bytes | None) -> tuple[bytes, bytes]:
    """The published folder under `scratch` and its tar: (metadata.xml, archive)."""
    folder, archive = scratch / meeting.internal_meeting_id, scratch / "archive.tar"
    metadata = build_presentation(folder, meeting, node_domain, end_ms, webcams)
    tar_folder(folder, archive, end_ms // 1000)
    return metadata, archive.read_bytes()


async def webcams_webm(use_ffmpeg: bool = True) -> bytes | None:
    """2 s of VP8 video with Opus audio: made by ffmpeg once per process, else the fixture, else None."""
    if use_ffmpeg not in _webm_cache:
        data = await _ffmpeg_webm() if use_ffmpeg else None
        if data is None and FIXTURE_WEBM.is_file():
            data = FIXTURE_WEBM.read_bytes()
        _webm_cache[use_ffmpeg] = data
    return _webm_cache[use_ffmpeg]


async def _ffmpeg_webm() -> bytes | None:
    try:
        import imageio_ffmpeg

        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as error:  # noqa: BLE001 - not installed, or no binary for this platform
        log.debug("fake BBB: no ffmpeg (%s), using the fixture webcams.webm", error)
        return None
    with tempfile.TemporaryDirectory(prefix="b3lb-fake-webm-") as scratch:
        target = Path(scratch) / "webcams.webm"
        args = [
            "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", "testsrc=duration=2:size=160x120:rate=5",
            "-f", "lavfi", "-i", "sine=frequency=440:duration=2:sample_rate=48000",
            "-c:v", "libvpx", "-b:v", "8k", "-deadline", "realtime", "-cpu-used", "8",
            "-c:a", "libopus", "-b:a", "8k", "-ac", "1",
            "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
            "-shortest", str(target),
        ]
        try:
            process = await asyncio.create_subprocess_exec(
                ffmpeg, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, stderr = await asyncio.wait_for(process.communicate(), FFMPEG_SECONDS)
        except (OSError, TimeoutError) as error:
            log.debug("fake BBB: ffmpeg failed to run: %s", error)
            return None
        if process.returncode != 0 or not target.is_file():
            log.debug("fake BBB: ffmpeg failed: %s", stderr[-300:].decode(errors="replace"))
            return None
        return target.read_bytes()


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
        webcams = await webcams_webm(self.use_ffmpeg)
        scratch = Path(tempfile.mkdtemp(prefix="b3lb-fake-recording-"))
        # Files are written in a thread, so a benchmark's event loop keeps serving meanwhile.
        files = asyncio.ensure_future(asyncio.to_thread(publish_files, scratch, meeting, node.domain, end_ms, webcams))
        try:
            metadata, archive = await asyncio.shield(files)
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
