"""Whiteboard drawings: sanitised SVG markup, one SVG document per visible state, rasterisers.

BBB's drawings are SVG fragments from a hostile archive. `Sanitiser` keeps only drawing elements
(paths, lines, polygons, circles, ellipses, rectangles, text) with plain geometry and style
attributes: no scripts, no external references (a poll result's image is inlined as a data: URI
from inside the archive), no CSS url(). Text in BBB's <foreignObject> (HTML, which no rasteriser
draws) becomes SVG <text>.

A state (the drawings visible at some time on one slide) becomes a frame-sized transparent SVG
document with the drawings scaled onto the slide's place in the frame. Rasterising it:

- `ffmpeg-librsvg`: the document itself is an ffmpeg input, decoded by the librsvg that ffmpeg
  was built with (imageio-ffmpeg's and Debian's are): ~7 ms per 720p state inside ffmpeg;
- `resvg` (the resvg-py wheel) or `cairosvg`: a PNG written here (60-200 ms per 720p state, so
  fewer states are kept: PNG_MAX_STATES);
- none: the video is rendered without drawings and a warning is logged once.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lxml import etree

from b3lb.render.bbbformat import Shape, local, member

log = logging.getLogger(__name__)

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
MAX_INLINE_IMAGE = 2 * 1024 * 1024
MAX_TEXT_LINES = 200
MAX_LINE = 2000
PNG_MAX_STATES = 300  # a PNG costs ~0.1-0.2 s at 720p with many strokes: bound the time spent here
DRAWING = frozenset({"path", "line", "polyline", "polygon", "rect", "circle", "ellipse"})
GEOMETRY = {
    "d": re.compile(r"[0-9eE.,+\- \t\nMLHVCSQTAZmlhvcsqtaz]{1,4000000}"),
    "points": re.compile(r"[0-9eE.,+\- \t\n]{1,4000000}"),
    "transform": re.compile(r"[a-zA-Z0-9.,()+\- \t]{1,500}"),
}
NUMERIC = frozenset({"x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "rx", "ry", "width", "height",
                     "stroke-width", "stroke-miterlimit", "opacity", "fill-opacity", "stroke-opacity",
                     "font-size"})  # fmt: skip
_NUMBER = re.compile(r"-?[0-9]{0,9}(\.[0-9]{0,9})?([eE][-+]?[0-9]{1,3})?(px|%)?")
STYLE_PROPERTIES = frozenset({
    "stroke", "stroke-width", "stroke-linecap", "stroke-linejoin", "stroke-miterlimit", "stroke-dasharray",
    "stroke-opacity", "fill", "fill-opacity", "fill-rule", "opacity", "color", "font-family", "font-size",
    "font-weight", "font-style", "text-anchor",
})  # fmt: skip
_STYLE_VALUE = re.compile(r"[#a-zA-Z0-9.,%()+\- '\"]{1,200}")
PRESENTATION_ATTRIBUTES = STYLE_PROPERTIES - {"color"}
_PX = re.compile(r"([0-9.]+)")


class Sanitiser:
    """Turns one BBB <g class="shape"> into safe SVG markup (or None when nothing drawable is left)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def shape_markup(self, shape: etree._Element) -> str | None:
        style = _style(shape.get("style") or "")
        group = etree.Element("g")
        if style:
            group.set("style", style)
        for child in shape:
            for clean in self._element(child, shape):
                group.append(clean)
        if len(group) == 0:
            return None
        return etree.tostring(group, encoding="unicode")

    def _element(self, element: etree._Element, shape: etree._Element) -> list[etree._Element]:
        kind = local(element)
        if kind in DRAWING:
            return [_copy(element, kind)]
        if kind in ("g", "switch"):
            group = _copy(element, "g") if kind == "g" else etree.Element("g")
            for child in element:
                for clean in self._element(child, shape):
                    group.append(clean)
            return [group] if len(group) else []
        if kind == "foreignObject":
            text = _text_from_html(element, shape)
            return [text] if text is not None else []
        if kind == "text":
            return [_copy_text(element)]
        if kind == "image":
            image = self._image(element)
            return [image] if image is not None else []
        return []

    def _image(self, element: etree._Element) -> etree._Element | None:
        href = (element.get(f"{{{XLINK_NS}}}href") or element.get("href") or "").strip()
        path = member(self.root, href)
        mime = {".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
        kind = mime.get(path.suffix.lower()) if path is not None else None
        if path is None or kind is None:
            return None
        try:
            if path.stat().st_size > MAX_INLINE_IMAGE:
                return None
            data = path.read_bytes()
        except OSError:
            return None
        image = _copy(element, "image")
        image.set(f"{{{XLINK_NS}}}href", f"data:{kind};base64,{base64.b64encode(data).decode()}")
        return image


def _copy(element: etree._Element, kind: str) -> etree._Element:
    """`kind` with only the safe geometry, transform and style attributes of `element`."""
    clean = etree.Element(kind)
    for name, value in element.attrib.items():
        name = str(name)
        if name == "style":
            if style := _style(value):
                clean.set("style", style)
        elif name in GEOMETRY:
            if GEOMETRY[name].fullmatch(value):
                clean.set(name, value)
        elif name in NUMERIC:
            if _NUMBER.fullmatch(value.strip()) and value.strip():
                clean.set(name, value.strip())
        elif name in PRESENTATION_ATTRIBUTES and _safe_value(value):
            clean.set(name, value)
    return clean


def _copy_text(element: etree._Element) -> etree._Element:
    text = _copy(element, "text")
    content = "".join(element.itertext())[:MAX_LINE]
    text.text = content
    return text


def _safe_value(value: str) -> bool:
    lowered = value.lower()
    return bool(_STYLE_VALUE.fullmatch(value)) and "url" not in lowered and "expression" not in lowered


def _style(style: str) -> str:
    """Only the drawing properties of a CSS declaration list, never url() or escapes; no visibility."""
    kept = []
    for declaration in style[:4000].split(";"):
        name, _, value = declaration.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name in STYLE_PROPERTIES and _safe_value(value):
            kept.append(f"{name}:{value}")
    return ";".join(kept)


def _style_value(style: str, name: str) -> str:
    for declaration in style.split(";"):
        key, _, value = declaration.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return ""


def _text_from_html(element: etree._Element, shape: etree._Element) -> etree._Element | None:
    """BBB's text drawing (<foreignObject><p>line<br/>line</p>) as SVG <text> with one <tspan> per line."""
    lines: list[str] = [""]

    def walk(node: etree._Element, depth: int) -> None:
        if node.text and depth:
            lines[-1] += node.text
        for child in node:
            if local(child) == "br":
                lines.append("")
            elif depth < 20 and len(lines) <= MAX_TEXT_LINES:
                walk(child, depth + 1)
            if child.tail:
                lines[-1] += child.tail

    walk(element, 0)
    lines = [line[:MAX_LINE] for line in lines[:MAX_TEXT_LINES]]
    if not any(line.strip() for line in lines):
        return None
    style = shape.get("style") or ""
    size_match = _PX.match(_style_value(style, "font-size"))
    size = float(size_match.group(1)) if size_match else 12.0
    colour = _style_value(style, "color") or element.get("color") or "#000000"
    x, y = _number_or(element.get("x"), 0.0), _number_or(element.get("y"), 0.0)
    text = etree.Element("text")
    text.set("font-size", f"{size:g}")
    text.set("font-family", "Arial, Helvetica, sans-serif")
    if _safe_value(colour):
        text.set("fill", colour)
    for index, line in enumerate(lines):
        span = etree.SubElement(text, "tspan")
        span.set("x", f"{x:g}")
        span.set("y", f"{y + size * (0.9 + 1.2 * index):g}")
        span.text = line
    return text


def _number_or(value: str | None, default: float) -> float:
    try:
        number = float(value or "")
    except ValueError:
        return default
    return number if abs(number) < 1e7 else default


# State documents ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a slide lands in the frame: its drawing coordinates scaled into this rectangle."""

    x: int
    y: int
    width: int
    height: int
    source_width: float  # the drawings' coordinate space (shapes.svg's image width/height)
    source_height: float


def blank_document(frame: tuple[int, int]) -> bytes:
    return (f'<svg xmlns="{SVG_NS}" width="{frame[0]}" height="{frame[1]}" '
            f'viewBox="0 0 {frame[0]} {frame[1]}"/>').encode()  # fmt: skip


def state_document(shapes: Sequence[Shape], place: Placement, frame: tuple[int, int]) -> bytes:
    """A transparent frame-sized SVG with `shapes` drawn onto the slide's place, clipped to it."""
    sx, sy = place.width / place.source_width, place.height / place.source_height
    body = "".join(shape.svg for shape in shapes)
    return (
        f'<svg xmlns="{SVG_NS}" xmlns:xlink="{XLINK_NS}" width="{frame[0]}" height="{frame[1]}" '
        f'viewBox="0 0 {frame[0]} {frame[1]}"><defs><clipPath id="slide"><rect x="{place.x}" y="{place.y}" '
        f'width="{place.width}" height="{place.height}"/></clipPath></defs><g clip-path="url(#slide)">'
        f'<g transform="translate({place.x} {place.y}) scale({sx:.8g} {sy:.8g})">{body}</g></g></svg>'
    ).encode()


# Rasterisers ----------------------------------------------------------------------------------------


class Rasteriser(Protocol):
    name: str
    max_states: int  # the overlays it can make in reasonable time

    def write(self, document: bytes, stem: Path) -> Path:
        """Store `document` for ffmpeg at `stem` + a suffix; returns the file."""
        ...


class FfmpegSvg:
    """The SVG itself: ffmpeg's librsvg decoder rasterises it while rendering."""

    name = "ffmpeg-librsvg"
    max_states = 2000

    def write(self, document: bytes, stem: Path) -> Path:
        target = stem.with_suffix(".svg")
        target.write_bytes(document)
        return target


class ResvgPng:
    name = "resvg"
    max_states = PNG_MAX_STATES

    def __init__(self) -> None:
        import resvg_py

        self._render = resvg_py.svg_to_bytes

    def write(self, document: bytes, stem: Path) -> Path:
        text = document.decode()
        png = self._render(svg_string=text, skip_system_fonts="<text" not in text)
        target = stem.with_suffix(".png")
        target.write_bytes(bytes(png))
        return target


class CairoPng:
    name = "cairosvg"
    max_states = PNG_MAX_STATES

    def __init__(self) -> None:
        import cairosvg  # needs the system's libcairo

        self._render = cairosvg.svg2png

    def write(self, document: bytes, stem: Path) -> Path:
        def no_fetch(url: str, resource_type: str | None = None) -> None:
            raise ValueError("external resources are not loaded")  # everything needed is inlined

        target = stem.with_suffix(".png")
        target.write_bytes(self._render(bytestring=document, unsafe=False, url_fetcher=no_fetch))
        return target


_warned = False


def choose_rasteriser(ffmpeg_svg: bool, prefer: str = "") -> Rasteriser | None:
    """librsvg inside ffmpeg when it has it, else resvg, else cairosvg, else None (warned once).

    `prefer` ('resvg', 'cairosvg', 'ffmpeg-librsvg', 'none') picks one, for tests and operators."""
    global _warned
    order = [prefer] if prefer else ["ffmpeg-librsvg", "resvg", "cairosvg"]
    for name in order:
        if name == "ffmpeg-librsvg" and ffmpeg_svg:
            return FfmpegSvg()
        try:
            if name == "resvg":
                return ResvgPng()
            if name == "cairosvg":
                return CairoPng()
        except (ImportError, OSError):
            continue
    if not _warned:
        _warned = True
        log.warning("no SVG rasteriser (ffmpeg without librsvg, no resvg-py, no usable cairosvg): "
                    "videos are rendered without whiteboard drawings")  # fmt: skip
    return None
