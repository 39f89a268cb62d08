"""BBB's published presentation files, parsed into plain dataclasses.

What BBB's presentation publish script (record-and-playback/presentation/scripts/publish/presentation.rb)
writes, with times in seconds of the published recording:

- metadata.xml: <recording><id/><start_time/><end_time/><meeting name=/><playback><duration>ms</duration>;
- shapes.svg: one <image id="imageN" class="slide" in= out= xlink:href="presentation/<id>/slide-N.png"
  width= height=/> per interval on screen (presentation/deskshare.png while the screen is shared,
  presentation/logo.png without a presentation), and per image a <g class="canvas" image="imageN">
  of <g class="shape" id= shape= timestamp= undo= style=> drawings in the image's width x height
  coordinates; each update of a drawing is a new <g> with the same `shape` name, undo="-1" = never;
- deskshare.xml: <event start_timestamp= stop_timestamp= video_width= video_height=/>;
- panzooms.xml: <event timestamp=><viewBox>x y w h</viewBox></event>;
- cursor.xml: <event timestamp=><cursor>x y</cursor></event> (-1 -1 = hidden).

Everything here is hostile input: sizes, counts and numbers are capped, XML is parsed without
entities, DTDs or network, and file references are resolved strictly inside the archive folder.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lxml import etree

from b3lb.render.model import RenderError

MAX_XML_BYTES = 128 * 1024 * 1024  # shapes.svg of a long meeting with much drawing
MAX_SMALL_XML_BYTES = 32 * 1024 * 1024
MAX_IMAGES = 50_000
MAX_SHAPES = 250_000
MAX_EVENTS = 500_000
MAX_DURATION_S = 7 * 24 * 3600.0
MAX_PIXELS = 50_000_000  # a slide image larger than this is not decoded
MAX_ELEMENT_BYTES = 4 * 1024 * 1024  # one drawing's markup
SVG_NS = "http://www.w3.org/2000/svg"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SVG_SLIDE = re.compile(r"^(presentation/[^/]+)/svgs/slide(\d+)\.svg$")

Sanitiser = Callable[[etree._Element], "str | None"]


@dataclass(frozen=True)
class Metadata:
    record_id: str
    meeting_name: str
    start_ms: int | None
    end_ms: int | None
    duration_s: float | None  # <playback><duration>, the length of the published recording


@dataclass(frozen=True)
class SlideImage:
    """One interval during which an image fills the presentation area."""

    id: str  # imageN; its canvas refers to it
    href: str
    start: float
    end: float
    width: float  # the coordinate space of its drawings (shapes.svg's width/height attributes)
    height: float
    file: Path | None  # the image to show; None: nothing (screen share, missing or unusable file)
    pixels: tuple[int, int] | None  # the file's own size
    deskshare: bool = False


@dataclass(frozen=True)
class Shape:
    """One version of one whiteboard drawing: visible from `timestamp` until `undo` (< 0: never undone)."""

    image_id: str
    key: str  # versions of one drawing share it; the newest visible version is drawn
    timestamp: float
    undo: float
    svg: str  # sanitised SVG markup in the image's coordinates


@dataclass(frozen=True)
class DeskshareEvent:
    start: float
    stop: float
    width: int
    height: int


@dataclass(frozen=True)
class PanZoom:
    timestamp: float
    view_box: tuple[float, float, float, float]


@dataclass(frozen=True)
class CursorEvent:
    timestamp: float
    x: float
    y: float


# XML ------------------------------------------------------------------------------------------


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
                           dtd_validation=False, remove_comments=True, remove_pis=True)  # fmt: skip


def read_xml(path: Path, name: str, limit: int = MAX_SMALL_XML_BYTES) -> etree._Element:
    """Parse `path` (shown as `name` in errors) with every dangerous feature off."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise RenderError(f"{name} is {size} bytes, more than the {limit} allowed")
        data = path.read_bytes()
    except OSError as exc:
        raise RenderError(f"{name} cannot be read: {exc.strerror or exc}") from None
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise RenderError(f"{name} is not well-formed XML: {exc.msg or exc}") from None
    if root is None:
        raise RenderError(f"{name} is empty")
    return root


def local(element: etree._Element) -> str:
    tag = element.tag
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def number(text: str | None, name: str, *, low: float = 0.0, high: float = MAX_DURATION_S) -> float:
    """A finite number within [low, high]; RenderError naming `name` otherwise."""
    try:
        value = float((text or "").strip())
    except ValueError:
        raise RenderError(f"{name}: {str(text)[:40]!r} is not a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise RenderError(f"{name}: {value} is out of range ({low} .. {high})")
    return value


def _optional_int(text: str | None, high: float) -> int | None:
    try:
        value = int((text or "").strip())
    except ValueError:
        return None
    return value if 0 <= value <= high else None


# metadata.xml ---------------------------------------------------------------------------------


def parse_metadata(path: Path) -> Metadata:
    root = read_xml(path, "metadata.xml")
    if local(root) != "recording":
        raise RenderError(f"metadata.xml: the root element is <{local(root)[:40]}>, not <recording>")
    duration = _optional_int(root.findtext("playback/duration"), MAX_DURATION_S * 1000)
    meeting = root.find("meeting")
    return Metadata(
        record_id=(root.findtext("id") or "").strip()[:200],
        meeting_name=(meeting.get("name", "") if meeting is not None else "")[:256],
        start_ms=_optional_int(root.findtext("start_time"), 2**62),
        end_ms=_optional_int(root.findtext("end_time"), 2**62),
        duration_s=duration / 1000 if duration else None,
    )


# shapes.svg -----------------------------------------------------------------------------------


def member(root: Path, href: str) -> Path | None:
    """The regular file `href` names inside `root`, or None: never outside it, never through a link."""
    if not href or len(href) > 1024 or "\x00" in href or "\\" in href or ":" in href:
        return None
    parts = PurePosixPath(href).parts
    if not parts or href.startswith("/") or any(p in ("..", ".") for p in parts):
        return None
    path = root.joinpath(*parts)
    try:
        resolved = path.resolve(strict=True)
        if not resolved.is_relative_to(root.resolve()) or path.is_symlink() or not resolved.is_file():
            return None
    except (OSError, RuntimeError):
        return None
    return resolved


def image_size(path: Path) -> tuple[int, int] | None:
    """Width and height from a PNG or JPEG header, None for anything else or a broken header."""
    try:
        with path.open("rb") as stream:
            head = stream.read(26)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                width, height = struct.unpack(">II", head[16:24])
                return (width, height) if width and height else None
            if head[:2] == b"\xff\xd8":
                stream.seek(2)
                return _jpeg_size(stream)
    except OSError:
        return None
    return None


def _jpeg_size(stream: object) -> tuple[int, int] | None:
    read = stream.read  # type: ignore[attr-defined]
    for _ in range(10_000):  # markers before the frame header; a broken file ends the loop
        marker = read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        kind = marker[1]
        if kind in (0xD8, 0x01) or 0xD0 <= kind <= 0xD7:
            continue
        length_bytes = read(2)
        if len(length_bytes) < 2:
            return None
        length = struct.unpack(">H", length_bytes)[0]
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
            frame = read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return (width, height) if width and height else None
        stream.seek(length - 2, 1)  # type: ignore[attr-defined]
    return None


def _slide_file(root: Path, href: str, warn: Callable[[str], None]) -> tuple[Path | None, tuple[int, int] | None]:
    """The raster image for `href`: BBB's tldraw-era SVG slides are replaced by their PNG sibling."""
    svg = _SVG_SLIDE.match(href)
    candidate = f"{svg.group(1)}/slide-{svg.group(2)}.png" if svg else href
    if not candidate.lower().endswith(IMAGE_SUFFIXES):
        warn(f"slide {href[:120]!r} is not a PNG or JPEG image: shown as background")
        return None, None
    path = member(root, candidate)
    if path is None:
        warn(f"slide {href[:120]!r} is missing from the archive: shown as background")
        return None, None
    size = image_size(path)
    if size is None or size[0] * size[1] > MAX_PIXELS:
        warn(f"slide {href[:120]!r} is not a readable image of at most {MAX_PIXELS} pixels: shown as background")
        return None, None
    return path, size


def _spans(element: etree._Element, name: str) -> list[tuple[float, float]]:
    """An image's in/out times; old recordings list several, separated by spaces."""
    ins, outs = (element.get("in") or "").split(), (element.get("out") or "").split()
    if not ins or len(ins) != len(outs) or len(ins) > 1000:
        raise RenderError(f"shapes.svg: {name} has unusable in/out times")
    spans = []
    for start_text, end_text in zip(ins, outs, strict=True):
        start, end = number(start_text, f"shapes.svg {name} in"), number(end_text, f"shapes.svg {name} out")
        if end > start:
            spans.append((start, end))
    return spans


def parse_shapes(root: Path, path: Path, sanitise: Sanitiser,
                 warn: Callable[[str], None]) -> tuple[list[SlideImage], dict[str, list[Shape]]]:  # fmt: skip
    """shapes.svg's slide intervals (in time order) and each image's drawings (in document order)."""
    svg = read_xml(path, "shapes.svg", MAX_XML_BYTES)
    if local(svg) != "svg":
        raise RenderError(f"shapes.svg: the root element is <{local(svg)[:40]}>, not <svg>")
    slides: list[SlideImage] = []
    shapes: dict[str, list[Shape]] = {}
    files: dict[str, tuple[Path | None, tuple[int, int] | None]] = {}
    count = skipped = 0
    reason = ""
    for element in svg:
        kind = local(element)
        if kind == "image":
            slides.extend(_slide_images(root, element, files, warn))
            if len(slides) > MAX_IMAGES:
                raise RenderError(f"shapes.svg has more than {MAX_IMAGES} slide intervals")
        elif kind == "g" and "canvas" in (element.get("class") or "").split():
            image_id = (element.get("image") or "")[:100]
            for shape in element.iter(f"{{{SVG_NS}}}g", "g"):
                if "shape" not in (shape.get("class") or "").split():
                    continue
                count += 1
                if count > MAX_SHAPES:
                    raise RenderError(f"shapes.svg has more than {MAX_SHAPES} drawings")
                try:
                    parsed = _shape(image_id, shape, sanitise, count)
                except RenderError as exc:  # one unusable drawing does not spoil the recording
                    skipped, reason = skipped + 1, reason or exc.reason
                    continue
                if parsed is not None:
                    shapes.setdefault(image_id, []).append(parsed)
    if skipped:
        warn(f"{skipped} drawings skipped, e.g. {reason}")
    slides.sort(key=lambda s: (s.start, s.end))
    return slides, shapes


def _slide_images(root: Path, element: etree._Element, files: dict[str, tuple[Path | None, tuple[int, int] | None]],
                  warn: Callable[[str], None]) -> list[SlideImage]:  # fmt: skip
    image_id = (element.get("id") or "")[:100]
    href = (element.get(XLINK_HREF) or element.get("href") or "").strip()
    name = f"image {image_id[:40]!r}"
    width = number(element.get("width"), f"shapes.svg {name} width", low=1, high=1e6)
    height = number(element.get("height"), f"shapes.svg {name} height", low=1, high=1e6)
    deskshare = href.endswith("deskshare.png")
    if deskshare:
        file, pixels = None, None
    else:
        if href not in files:
            files[href] = _slide_file(root, href, warn)
        file, pixels = files[href]
    return [SlideImage(image_id, href[:300], start, end, width, height, file, pixels, deskshare)
            for start, end in _spans(element, name)]  # fmt: skip


def _shape(image_id: str, element: etree._Element, sanitise: Sanitiser, count: int) -> Shape | None:
    name = f"drawing {(element.get('id') or '')[:40]!r}"
    timestamp = number(element.get("timestamp"), f"shapes.svg {name} timestamp")
    undo = number(element.get("undo") or "-1", f"shapes.svg {name} undo", low=-1)
    markup = sanitise(element)
    if not markup or len(markup) > MAX_ELEMENT_BYTES:
        return None
    key = (element.get("shape") or element.get("id") or f"#{count}")[:200]
    return Shape(image_id, key, timestamp, undo if undo >= 0 else -1.0, markup)


# deskshare.xml, panzooms.xml, cursor.xml --------------------------------------------------------


def _events(path: Path, name: str) -> list[etree._Element]:
    root = read_xml(path, name)
    events = [e for e in root.iter("event")]
    if len(events) > MAX_EVENTS:
        raise RenderError(f"{name} has more than {MAX_EVENTS} events")
    return events


def parse_deskshare(path: Path) -> list[DeskshareEvent]:
    found = []
    for event in _events(path, "deskshare.xml"):
        start = number(event.get("start_timestamp"), "deskshare.xml start_timestamp")
        stop = number(event.get("stop_timestamp"), "deskshare.xml stop_timestamp")
        width = _optional_int(event.get("video_width"), 100_000) or 0
        height = _optional_int(event.get("video_height"), 100_000) or 0
        if stop > start:
            found.append(DeskshareEvent(start, stop, width, height))
    return sorted(found, key=lambda e: e.start)


def parse_panzooms(path: Path) -> list[PanZoom]:
    found = []
    for event in _events(path, "panzooms.xml"):
        values = (event.findtext("viewBox") or "").split()
        if len(values) != 4:
            continue
        box = tuple(number(v, "panzooms.xml viewBox", low=-1e7, high=1e7) for v in values)
        found.append(PanZoom(number(event.get("timestamp"), "panzooms.xml timestamp"), box))  # type: ignore[arg-type]
    return found


def parse_cursor(path: Path) -> list[CursorEvent]:
    found = []
    for event in _events(path, "cursor.xml"):
        values = (event.findtext("cursor") or "").split()
        if len(values) != 2:
            continue
        x, y = (number(v, "cursor.xml cursor", low=-1e7, high=1e7) for v in values)
        found.append(CursorEvent(number(event.get("timestamp"), "cursor.xml timestamp"), x, y))
    return found
