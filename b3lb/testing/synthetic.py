"""Synthetic BigBlueButton recordings: a published presentation folder whose content is known exactly.

`make_presentation(folder, duration_s=..., slides=..., deskshare=(start, stop))` writes the folder that
BBB's presentation publish script leaves behind (record-and-playback/presentation/scripts/publish/
presentation.rb), and returns a `SyntheticTruth` that says what a correct rendering shows at any time:

- ``metadata.xml``: BBB's element names and order; ``<playback><duration>`` in ms;
- ``presentation/<id>/slide-N.png`` (+ ``thumbnails/thumb-N.png``, ``textfiles/slide-N.txt``): each slide
  ONE FLAT COLOUR from `SLIDE_COLOURS`, whose channels are 0, 128 or 255, so any two colours used here
  differ by at least 127 in some channel and a frame check tells them apart after lossy encoding;
- ``presentation/deskshare.png``: BBB's transparent placeholder shown while the screen is shared;
- ``shapes.svg``: as BBB 2.x writes it (DOCTYPE, ``viewBox="0 0 800 600"``): one ``<image class="slide">``
  per interval on screen (``in``/``out`` in seconds, 0.1 s steps); the deskshare interval shows
  ``presentation/deskshare.png``, which splits the slide it interrupts into two images; with
  annotations, one ``<g class="canvas">`` per image whose ``<g class="shape">`` holds a thick pencil
  stroke (a ``<path>``) of `ANNOTATION_RGB`, in slide pixel coordinates, from its ``timestamp`` on,
  never undone (``undo="-1"``);
- ``panzooms.xml`` (full view at each slide change), ``cursor.xml`` (hidden), ``deskshare.xml``
  (``<event start_timestamp= stop_timestamp= video_width= video_height=/>``), ``captions.json``;
- ``deskshare/deskshare.webm`` (VP9): as long as the recording, black outside the share and
  `DESKSHARE_RGB` during it;
- ``video/webcams.webm`` (VP9 + Opus): `WEBCAM_RGB` for the whole recording (a small black box moves
  along the top edge, so the video is not a still: probe the centre) and a sine tone of `AUDIO_HZ`.
  Without webcams the file holds the audio alone, as BBB publishes a meeting without cameras.

Videos are made by ffmpeg (imageio-ffmpeg's binary, else ffmpeg on PATH) from one short encoded
segment per colour, repeated with the concat demuxer and stream copy: a 10-minute recording's videos
take about 3 s instead of a minute of encoding. Same arguments, same bytes (bit-exact flags).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

RGB = tuple[int, int, int]
Interval = tuple[float, float]

ANNOTATION_RGB: RGB = (255, 0, 255)
WEBCAM_RGB: RGB = (255, 128, 0)
DESKSHARE_RGB: RGB = (0, 128, 255)
DESKSHARE_OFF_RGB: RGB = (0, 0, 0)  # deskshare.webm outside the share
_RESERVED = {ANNOTATION_RGB, WEBCAM_RGB, DESKSHARE_RGB}
_GREYS = {(0, 0, 0), (128, 128, 128), (255, 255, 255)}  # left to backdrops and borders
# 21 colours; slide N has SLIDE_COLOURS[(N - 1) % 21], so neighbours always differ.
SLIDE_COLOURS: tuple[RGB, ...] = tuple(
    (r, g, b) for r in (0, 128, 255) for g in (0, 128, 255) for b in (0, 128, 255)
    if (r, g, b) not in _GREYS | _RESERVED
)  # fmt: skip
AUDIO_HZ = 440.0
THUMB_SIZE = (176, 136)  # named in metadata.xml's preview
DEFAULT_PRESENTATION_ID = "d2d9a672040fbde2a47a10bf6c37b6a4b5ae187f-1700000001000"
DEFAULT_START_MS = 1_700_000_000_000
SEGMENT_S = 10.0  # length of the encoded segment that is repeated
FFMPEG_TIMEOUT = 300.0
SVG_NS, XLINK_NS = "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"
SVG_DOCTYPE = '<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">'
_MEMORY_LIMIT = 2 * 1024 * 1024  # videos up to this size are kept in memory for the next call
_memory: dict[str, bytes] = {}
_memory_lock = threading.Lock()
_INVALID_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class SyntheticError(RuntimeError):
    """ffmpeg is missing or failed."""


# The truth ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """Slide `index` (slide-N.png) is on screen from `start` to `end` (recording seconds)."""

    index: int
    start: float
    end: float
    rgb: RGB


@dataclass(frozen=True)
class DeskshareTruth:
    start: float
    stop: float
    rgb: RGB
    size: tuple[int, int]  # video_width, video_height of deskshare.xml and of deskshare.webm


@dataclass(frozen=True)
class AnnotationTruth:
    """A pencil stroke on `slide`, visible whenever that slide is shown at or after `timestamp`."""

    slide: int
    timestamp: float
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in slide pixels, stroke width included
    point: tuple[float, float]  # a slide pixel in the middle of the stroke
    rgb: RGB
    stroke_width: float


@dataclass(frozen=True)
class SyntheticTruth:
    duration_s: float
    size: tuple[int, int]  # slide PNG size
    presentation_id: str
    timeline: tuple[Shown, ...]  # in time order; gaps are the deskshare
    deskshare: DeskshareTruth | None
    annotations: tuple[AnnotationTruth, ...]
    webcam_rgb: RGB | None  # None: no webcam video
    webcam_size: tuple[int, int] | None
    audio_hz: float | None  # None: no audio
    start_ms: int
    end_ms: int
    slide_colours: dict[int, RGB] = field(default_factory=dict)  # every slide file, shown or not

    @property
    def slide_probe(self) -> tuple[float, float]:
        """A slide pixel far from the annotation and the corners: sample slide colours here."""
        return self.size[0] * 0.5, self.size[1] * 0.55

    def slide_at(self, t: float) -> Shown | None:
        """The slide image on screen at `t` (None during the deskshare and after the end)."""
        return next((s for s in self.timeline if s.start <= t < s.end), None)

    def sharing_at(self, t: float) -> bool:
        return self.deskshare is not None and self.deskshare.start <= t < self.deskshare.stop

    def main_rgb_at(self, t: float) -> RGB | None:
        """The flat colour of the presentation area at `t`, away from annotations."""
        if self.deskshare is not None and self.sharing_at(t):
            return self.deskshare.rgb
        shown = self.slide_at(t)
        return shown.rgb if shown is not None else None

    def annotations_at(self, t: float) -> list[AnnotationTruth]:
        shown = self.slide_at(t)
        if shown is None or self.sharing_at(t):
            return []
        return [a for a in self.annotations if a.slide == shown.index and a.timestamp <= t]

    def boundaries(self) -> list[float]:
        marks = {0.0, self.duration_s}
        for shown in self.timeline:
            marks.update((shown.start, shown.end))
        if self.deskshare is not None:
            marks.update((self.deskshare.start, self.deskshare.stop))
        marks.update(a.timestamp for a in self.annotations)
        return sorted(marks)

    def stable(self, t: float, margin: float = 0.5) -> bool:
        """No change of picture within `margin` seconds of `t`: a safe time for a frame check."""
        return 0 <= t <= self.duration_s and all(abs(t - mark) >= margin for mark in self.boundaries())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["slide_colours"] = {str(k): list(v) for k, v in self.slide_colours.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyntheticTruth:
        """The inverse of `to_dict`, also after a trip through JSON (which makes tuples lists)."""

        def tup(value: Any) -> Any:
            return tuple(tup(v) for v in value) if isinstance(value, list) else value

        def make(kind: Any, item: dict[str, Any]) -> Any:
            return kind(**{k: tup(v) for k, v in item.items()})

        desk = data["deskshare"]
        return cls(**{
            **{k: tup(v) for k, v in data.items()}, "timeline": tuple(make(Shown, s) for s in data["timeline"]),
            "deskshare": None if desk is None else make(DeskshareTruth, desk),
            "annotations": tuple(make(AnnotationTruth, a) for a in data["annotations"]),
            "slide_colours": {int(k): tup(v) for k, v in data["slide_colours"].items()},
        })  # fmt: skip

    def sample_times(self, margin: float = 0.5) -> list[float]:
        """One time in the middle of each stretch without a change of picture (`stable` at `margin`)."""
        marks = self.boundaries()
        middles = [round((a + b) / 2, 3) for a, b in zip(marks, marks[1:], strict=False)]
        return [t for t in middles if self.stable(t, margin)]


def slide_colour(index: int) -> RGB:
    return SLIDE_COLOURS[(index - 1) % len(SLIDE_COLOURS)]


def _t(value: float) -> float:
    """BBB's 0.1 s steps."""
    return round(value + 0.0, 1)


def plan(
    *, duration_s: float, slides: int, size: tuple[int, int] = (1280, 720),
    deskshare: Interval | None = None, annotations: bool = True, webcams: bool = True, audio: bool = True,
    presentation_id: str = DEFAULT_PRESENTATION_ID, webcam_size: tuple[int, int] = (320, 240),
    deskshare_size: tuple[int, int] | None = None, start_ms: int = DEFAULT_START_MS,
) -> SyntheticTruth:
    """What the recording shows when: the slides in turn, equally long, around the deskshare; a stroke each."""
    if duration_s < 0.2 or slides < 1 or min(size) < 8:
        raise ValueError("a recording needs >= 0.2 s, >= 1 slide and slides of at least 8x8 pixels")
    duration = _t(duration_s)
    share = None
    if deskshare is not None:
        start, stop = _t(max(0.0, deskshare[0])), _t(min(duration, deskshare[1]))
        if stop <= start:
            raise ValueError(f"deskshare {deskshare} is empty within 0..{duration} s")
        share = DeskshareTruth(start, stop, DESKSHARE_RGB, deskshare_size or size)
    # The slides share the time the screen is not shared; a slide the share interrupts resumes after it.
    gap = 0.0 if share is None else share.stop - share.start
    step = (duration - gap) / slides
    timeline: list[Shown] = []
    for index in range(1, slides + 1):
        start, end = step * (index - 1), step * index
        if share is not None:
            start, end = start + (gap if start >= share.start else 0.0), end + (gap if end > share.start else 0.0)
        start, end = _t(start), duration if index == slides else _t(end)
        pieces = [(start, end)] if share is None else [
            (start, min(end, share.start)), (max(start, share.stop), end)]  # fmt: skip
        timeline += [Shown(index, a, b, slide_colour(index)) for a, b in pieces if b > a]
    return SyntheticTruth(
        duration_s=duration, size=size, presentation_id=presentation_id, timeline=tuple(timeline),
        deskshare=share, annotations=tuple(_annotations(timeline, size)) if annotations else (),
        webcam_rgb=WEBCAM_RGB if webcams else None, webcam_size=webcam_size if webcams else None,
        audio_hz=AUDIO_HZ if audio else None, start_ms=start_ms, end_ms=start_ms + round(duration * 1000),
        slide_colours={index: slide_colour(index) for index in range(1, slides + 1)},
    )


def _annotations(timeline: list[Shown], size: tuple[int, int]) -> list[AnnotationTruth]:
    """One horizontal stroke per slide, drawn halfway through the slide's first interval."""
    width, height = size
    stroke = max(2.0, round(height * 0.04, 1))
    y, x0, x1 = round(height * 0.25, 1), round(width * 0.15, 1), round(width * 0.45, 1)
    found: list[AnnotationTruth] = []
    for shown in timeline:
        if any(a.slide == shown.index for a in found) or shown.end - shown.start < 0.4:
            continue
        found.append(AnnotationTruth(
            shown.index, _t((shown.start + shown.end) / 2), (x0 - stroke / 2, y - stroke / 2, x1 + stroke / 2,
                                                             y + stroke / 2),
            (round((x0 + x1) / 2, 1), y), ANNOTATION_RGB, stroke,
        ))  # fmt: skip
    return found


# PNG -------------------------------------------------------------------------------------------


def png(width: int, height: int, rgb: RGB) -> bytes:
    """A valid 8-bit RGB PNG of one flat colour."""
    return _png(width, height, 2, (b"\x00" + bytes(rgb) * width) * height)  # filter byte 0, then a row's pixels


def transparent_png(width: int, height: int) -> bytes:
    """An RGBA PNG with every pixel transparent (BBB's presentation/deskshare.png)."""
    return _png(width, height, 6, (b"\x00" + b"\x00\x00\x00\x00" * width) * height)


def _png(width: int, height: int, colour_type: int, raw: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        (b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", header), chunk(b"IDAT", zlib.compress(raw, 6)), chunk(b"IEND", b""))
    )


# XML documents ------------------------------------------------------------------------------------


def _num(value: float) -> str:
    """Numbers as Ruby prints BBB's floats: always with a decimal point."""
    return repr(float(value))


def shapes_svg(truth: SyntheticTruth) -> bytes:
    root = etree.Element(f"{{{SVG_NS}}}svg", nsmap={None: SVG_NS, "xlink": XLINK_NS}, id="svgfile",
                         style="position:absolute;height:600px;width:800px", version="1.1", viewBox="0 0 800 600")
    desk = [(truth.deskshare.start, None)] if truth.deskshare is not None else []
    images: list[tuple[float, Shown | None]] = sorted([(s.start, s) for s in truth.timeline] + desk, key=lambda i: i[0])
    shape_id = 1
    for image_id, (_, shown) in enumerate(images, start=1):
        if shown is None:
            assert truth.deskshare is not None
            start, end, href, (width, height) = (truth.deskshare.start, truth.deskshare.stop,
                                                 "presentation/deskshare.png", truth.deskshare.size)  # fmt: skip
        else:
            start, end, (width, height) = shown.start, shown.end, truth.size
            href = f"presentation/{truth.presentation_id}/slide-{shown.index}.png"
        image = etree.SubElement(root, f"{{{SVG_NS}}}image", {
            "id": f"image{image_id}", "class": "slide", "in": _num(start), "out": _num(end),
            f"{{{XLINK_NS}}}href": href, "width": str(width), "height": str(height), "x": "0", "y": "0",
            "style": "visibility:hidden",
        })  # fmt: skip
        if shown is None:
            continue
        image.set("text", f"presentation/{truth.presentation_id}/textfiles/slide-{shown.index}.txt")
        strokes = [a for a in truth.annotations if a.slide == shown.index and a.timestamp < end]
        if not strokes:
            continue
        canvas = etree.SubElement(root, f"{{{SVG_NS}}}g", {"class": "canvas", "id": f"canvas{image_id}",
                                                          "image": f"image{image_id}", "display": "none"})
        for stroke in strokes:
            _pencil(canvas, image_id, shape_id, stroke)
            shape_id += 1
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", doctype=SVG_DOCTYPE)


def _pencil(canvas: etree._Element, image_id: int, shape_id: int, stroke: AnnotationTruth) -> None:
    hex_colour = "".join(f"{c:02x}" for c in stroke.rgb)
    x0, y = stroke.bbox[0] + stroke.stroke_width / 2, stroke.point[1]
    x1 = stroke.bbox[2] - stroke.stroke_width / 2
    shape = etree.SubElement(canvas, f"{{{SVG_NS}}}g", {
        "id": f"image{image_id}-draw{shape_id}", "class": "shape", "timestamp": _num(stroke.timestamp),
        "undo": "-1", "shape": f"image{image_id}-pencil{stroke.slide}",
        "style": f"stroke:#{hex_colour};stroke-linecap:round;stroke-linejoin:round;"
                 f"stroke-width:{stroke.stroke_width};visibility:hidden;fill:none",
    })  # fmt: skip
    middle = round((x0 + x1) / 2, 1)
    etree.SubElement(shape, f"{{{SVG_NS}}}path", d=f"M{x0} {y}L{middle} {y}L{x1} {y}")


def _recording(name: str) -> etree._Element:
    return etree.Element("recording", id=name, tldraw="false")


def panzooms_xml(truth: SyntheticTruth) -> bytes:
    root = _recording("panzoom_events")
    changes = sorted({s.start for s in truth.timeline} | ({truth.deskshare.start} if truth.deskshare else set()))
    for start in changes:
        size = truth.deskshare.size if truth.deskshare and start == truth.deskshare.start else truth.size
        event = etree.SubElement(root, "event", timestamp=_num(start))
        etree.SubElement(event, "viewBox").text = f"0.0 0.0 {_num(size[0])} {_num(size[1])}"
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def cursor_xml(truth: SyntheticTruth) -> bytes:
    root = _recording("cursor_events")
    etree.SubElement(etree.SubElement(root, "event", timestamp="0.0"), "cursor").text = "-1.0 -1.0"
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def deskshare_xml(truth: SyntheticTruth) -> bytes:
    root = etree.Element("recording", id="deskshare_events")
    if truth.deskshare is not None:
        share = truth.deskshare
        etree.SubElement(root, "event", start_timestamp=_num(share.start), stop_timestamp=_num(share.stop),
                         video_width=str(share.size[0]), video_height=str(share.size[1]))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def meeting_values(truth: SyntheticTruth, meeting: dict[str, Any] | None = None) -> dict[str, Any]:
    """metadata.xml's values: `meeting` overrides these defaults (keys as below)."""
    values: dict[str, Any] = {
        "id": hashlib.sha1(b"synthetic").hexdigest() + f"-{truth.start_ms}", "external_id": "synthetic-room",
        "name": "Synthetic recording", "breakout": False, "start_ms": truth.start_ms, "end_ms": truth.end_ms,
        "participants": 2, "meta": {}, "domain": "bbb.example.org", "processing_ms": 1234,
        "duration_ms": round(truth.duration_s * 1000), "slides": len(truth.slide_colours),
        "presentation_id": truth.presentation_id,
    }  # fmt: skip
    values.update(meeting or {})
    return values


def xml_text(value: object) -> str:
    """`value` as XML text: characters XML cannot hold are dropped."""
    return _INVALID_XML_CHARS.sub("", str(value))


def metadata_xml(values: dict[str, Any], size: int, raw_size: int) -> bytes:
    """The published metadata.xml, in BBB's element order (values: see `meeting_values`)."""

    def sub(parent: etree._Element, tag: str, text: object = None, **attributes: str) -> etree._Element:
        child = etree.SubElement(parent, tag, {k: xml_text(v) for k, v in attributes.items()})
        if text is not None:
            child.text = xml_text(text)
        return child

    internal, breakout = str(values["id"]), "true" if values["breakout"] else "false"
    root = etree.Element("recording")
    for tag, value in (("id", internal), ("state", "published"), ("published", "true"),
                       ("start_time", values["start_ms"]), ("end_time", values["end_ms"]),
                       ("participants", values["participants"])):  # fmt: skip
        sub(root, tag, value)
    sub(root, "meeting", id=internal, externalId=str(values["external_id"]), name=str(values["name"]),
        breakout=breakout)
    meta = sub(root, "meta")
    own = {"isBreakout": breakout, "meetingName": values["name"], "meetingId": values["external_id"]}
    for key, value in {**own, **{k: v for k, v in values["meta"].items() if k not in own}}.items():
        if _XML_NAME.fullmatch(key):  # anything else cannot be an element name
            sub(meta, key, value)
    playback = sub(root, "playback")
    domain = values["domain"]
    sub(playback, "format", "presentation")
    sub(playback, "link", f"https://{domain}/playback/presentation/2.3/{internal}")
    sub(playback, "processing_time", values["processing_ms"])
    sub(playback, "duration", values["duration_ms"])
    images = sub(sub(sub(playback, "extensions"), "preview"), "images")
    base = f"https://{domain}/presentation/{internal}/presentation/{values['presentation_id']}"
    for number in range(1, min(3, values["slides"]) + 1):  # BBB previews the first three slides
        sub(images, "image", f"{base}/thumbnails/thumb-{number}.png", width=str(THUMB_SIZE[0]),
            height=str(THUMB_SIZE[1]), alt=f"Slide {number}")
    sub(playback, "size", size)
    sub(root, "raw_size", raw_size)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def write_documents(folder: Path, truth: SyntheticTruth) -> None:
    """Everything but the videos and metadata.xml: slides, thumbnails, texts, shapes, events."""
    pres = folder / "presentation" / truth.presentation_id
    (pres / "thumbnails").mkdir(parents=True, exist_ok=True)
    (pres / "textfiles").mkdir(exist_ok=True)
    for index, rgb in truth.slide_colours.items():
        (pres / f"slide-{index}.png").write_bytes(png(*truth.size, rgb))
        (pres / "thumbnails" / f"thumb-{index}.png").write_bytes(png(*THUMB_SIZE, rgb))
        (pres / "textfiles" / f"slide-{index}.txt").write_text(f"Slide {index}\n", encoding="utf-8")
    if truth.deskshare is not None:
        (folder / "presentation" / "deskshare.png").write_bytes(transparent_png(*truth.deskshare.size))
    (folder / "shapes.svg").write_bytes(shapes_svg(truth))
    (folder / "panzooms.xml").write_bytes(panzooms_xml(truth))
    (folder / "cursor.xml").write_bytes(cursor_xml(truth))
    (folder / "deskshare.xml").write_bytes(deskshare_xml(truth))
    (folder / "captions.json").write_bytes(b"[]\n")


def write_metadata(folder: Path, truth: SyntheticTruth, meeting: dict[str, Any] | None = None) -> bytes:
    """metadata.xml, written last: its <size> counts every other file of the folder."""
    target = folder / "metadata.xml"
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p != target)
    # raw_size is the node's raw recording (events, audio, video): several times the published size.
    document = metadata_xml(meeting_values(truth, meeting), size, 4 * size)
    target.write_bytes(document)
    return document


# Videos --------------------------------------------------------------------------------------------


def ffmpeg_exe() -> str | None:
    """imageio-ffmpeg's binary, else ffmpeg on PATH, else None."""
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform
        return shutil.which("ffmpeg")


def _hex(rgb: RGB) -> str:
    return "0x" + "".join(f"{c:02x}" for c in rgb)


def _run(ffmpeg: str, args: list[str]) -> None:
    command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args]
    try:
        done = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SyntheticError(f"ffmpeg did not run: {error}") from error
    if done.returncode != 0:
        raise SyntheticError(f"ffmpeg failed ({done.returncode}): {done.stderr[-500:].decode(errors='replace')}")


BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1"]


def _segment(ffmpeg: str, target: Path, rgb: RGB, size: tuple[int, int], fps: int, moving_box: bool) -> None:
    """SEGMENT_S seconds of one colour, a single keyframe first, so that copies can be chained."""
    source = f"color=c={_hex(rgb)}:s={size[0]}x{size[1]}:r={fps}:d={SEGMENT_S}"
    if moving_box:
        source += ",drawbox=x='mod(t*60,iw-iw/8)':y=0:w=iw/8:h=ih/8:color=black:t=fill"
    _run(ffmpeg, [
        "-f", "lavfi", "-i", source, "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
        "-row-mt", "1", "-threads", "2", "-b:v", "100k", "-g", str(int(SEGMENT_S * fps)), "-pix_fmt", "yuv420p",
        *BITEXACT, str(target),
    ])  # fmt: skip


def colour_video(
    target: Path, pieces: list[tuple[float, RGB]], size: tuple[int, int], fps: int, *,
    audio_hz: float | None = None, audio_kbps: int = 24, video: bool = True, moving_box: bool = False,
    ffmpeg: str | None = None,
) -> None:
    """A WebM of consecutive (seconds, colour) pieces (VP9), optionally with a sine tone (Opus)."""
    exe = ffmpeg or ffmpeg_exe()
    if exe is None:
        raise SyntheticError("no ffmpeg: install imageio-ffmpeg or put ffmpeg on PATH")
    total = round(sum(seconds for seconds, _ in pieces), 3)
    with tempfile.TemporaryDirectory(prefix="b3lb-synthetic-") as scratch_name:
        scratch = Path(scratch_name)
        inputs: list[str] = []
        if video:
            lines = ["ffconcat version 1.0"]
            for rgb in dict.fromkeys(rgb for _, rgb in pieces):
                _segment(exe, scratch / f"{_hex(rgb)}.webm", rgb, size, fps, moving_box)
            for seconds, rgb in pieces:
                full, rest = divmod(round(seconds, 3), SEGMENT_S)
                lines += [f"file '{_hex(rgb)}.webm'"] * int(full)
                if rest > 1e-6:
                    lines += [f"file '{_hex(rgb)}.webm'", f"outpoint {round(rest, 3)}"]
            (scratch / "list.ffconcat").write_text("\n".join(lines) + "\n", encoding="ascii")
            inputs += ["-f", "concat", "-safe", "0", "-i", str(scratch / "list.ffconcat")]
        if audio_hz is not None:
            inputs += ["-f", "lavfi", "-i", f"sine=frequency={audio_hz}:sample_rate=48000:duration={total}"
                       ":samples_per_frame=48000"]  # big frames: the source is slow with small ones
        if not inputs:
            raise ValueError("a video needs video or audio")
        maps = ["-map", "0:v", "-c:v", "copy"] if video else []
        if audio_hz is not None:  # the fastest Opus settings: a tone needs no more
            maps += ["-map", f"{1 if video else 0}:a", "-c:a", "libopus", "-b:a", f"{audio_kbps}k", "-ac", "1",
                     "-compression_level", "0", "-frame_duration", "60"]
        _run(exe, [*inputs, *maps, "-t", str(total), *BITEXACT, str(target)])


def _cached(key: str, target: Path, cache_dir: Path | None, make: Any) -> None:
    """`make(target)` once per key: kept in memory when small, or in `cache_dir` when given."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    with _memory_lock:
        data = _memory.get(digest)
    if data is not None:
        target.write_bytes(data)
        return
    stored = cache_dir / f"{digest}.webm" if cache_dir is not None else None
    if stored is not None and stored.is_file():
        shutil.copyfile(stored, target)
        return
    make(target)
    if stored is not None:
        stored.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, stored)
    if target.stat().st_size <= _MEMORY_LIMIT:
        with _memory_lock:
            _memory[digest] = target.read_bytes()


def webcams_video(
    target: Path, truth: SyntheticTruth, *, fps: int = 15, audio_kbps: int = 24, cache_dir: Path | None = None,
    ffmpeg: str | None = None,
) -> None:
    """video/webcams.webm: the webcam colour (if any) and the tone (if any) for the whole recording."""
    duration, size, rgb = truth.duration_s, truth.webcam_size or (320, 240), truth.webcam_rgb or WEBCAM_RGB
    video = truth.webcam_rgb is not None
    key = f"webcams/{duration}/{size}/{rgb}/{fps}/{truth.audio_hz}/{audio_kbps}/{video}/v1"
    _cached(key, target, cache_dir, lambda out: colour_video(
        out, [(duration, rgb)], size, fps, audio_hz=truth.audio_hz, audio_kbps=audio_kbps, video=video,
        moving_box=True, ffmpeg=ffmpeg))  # fmt: skip


def deskshare_video(
    target: Path, truth: SyntheticTruth, *, fps: int = 5, cache_dir: Path | None = None, ffmpeg: str | None = None
) -> None:
    """deskshare/deskshare.webm: as long as the recording, black but for the share."""
    share = truth.deskshare
    if share is None:
        raise ValueError("this recording has no deskshare")
    pieces = [(share.start, DESKSHARE_OFF_RGB), (share.stop - share.start, share.rgb),
              (truth.duration_s - share.stop, DESKSHARE_OFF_RGB)]  # fmt: skip
    pieces = [(round(seconds, 3), rgb) for seconds, rgb in pieces if seconds > 1e-6]
    key = f"deskshare/{pieces}/{share.size}/{fps}/v1"
    _cached(key, target, cache_dir, lambda out: colour_video(out, pieces, share.size, fps, ffmpeg=ffmpeg))


def write_videos(
    folder: Path, truth: SyntheticTruth, *, webcam_fps: int = 15, deskshare_fps: int = 5,
    cache_dir: Path | None = None, ffmpeg: str | None = None,
) -> None:
    """video/webcams.webm and deskshare/deskshare.webm as the truth says (nothing when neither applies)."""
    if truth.webcam_rgb is not None or truth.audio_hz is not None:
        (folder / "video").mkdir(exist_ok=True)
        webcams_video(folder / "video" / "webcams.webm", truth, fps=webcam_fps, cache_dir=cache_dir, ffmpeg=ffmpeg)
    if truth.deskshare is not None:
        (folder / "deskshare").mkdir(exist_ok=True)
        deskshare_video(folder / "deskshare" / "deskshare.webm", truth, fps=deskshare_fps, cache_dir=cache_dir,
                        ffmpeg=ffmpeg)


def make_presentation(
    folder: Path, *, duration_s: float, slides: int, size: tuple[int, int] = (1280, 720),
    deskshare: Interval | None, annotations: bool = True, webcams: bool = True, audio: bool = True,
    presentation_id: str = DEFAULT_PRESENTATION_ID, meeting: dict[str, Any] | None = None,
    webcam_size: tuple[int, int] = (320, 240), webcam_fps: int = 15, deskshare_size: tuple[int, int] | None = None,
    deskshare_fps: int = 5, cache_dir: Path | None = None,
) -> SyntheticTruth:
    """Write a published presentation folder into `folder` (created) and return what it shows.

    `meeting` overrides metadata.xml's values (see `meeting_values`); `cache_dir` keeps the videos
    for the next call with the same parameters (small ones are kept in memory anyway)."""
    truth = plan(duration_s=duration_s, slides=slides, size=size, deskshare=deskshare, annotations=annotations,
                 webcams=webcams, audio=audio, presentation_id=presentation_id, webcam_size=webcam_size,
                 deskshare_size=deskshare_size, start_ms=int((meeting or {}).get("start_ms", DEFAULT_START_MS)))
    folder.mkdir(parents=True, exist_ok=True)
    write_documents(folder, truth)
    write_videos(folder, truth, webcam_fps=webcam_fps, deskshare_fps=deskshare_fps, cache_dir=cache_dir)
    write_metadata(folder, truth, meeting)
    return truth
