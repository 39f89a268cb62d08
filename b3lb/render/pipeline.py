"""Render one profile of a parsed presentation into one video, with one ffmpeg process.

`render_profile()` probes the two videos, works out the recording's length (metadata.xml's
playback duration, else the longest part), builds the timeline, writes the slide and whiteboard
tracks (concat lists, links to the slide images, one overlay per whiteboard state) into a scratch
folder next to the output, runs ffmpeg on the graph of `graph.py`, and renames the finished video
into place: a failed or cancelled render leaves no partial file behind.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from b3lb.render import annotate
from b3lb.render.annotate import Placement, Rasteriser
from b3lb.render.archive import Presentation, extract_archive, load_presentation
from b3lb.render.bbbformat import MAX_PIXELS
from b3lb.render.ffmpeg import MediaInfo, ffmpeg_info, find_ffmpeg, probe, run
from b3lb.render.graph import (
    MAX_EXPRESSION_TERMS,
    GraphPlan,
    Layout,
    command,
    concat_list,
    make_layout,
    place,
    webcam_mode,
)
from b3lb.render.model import Profile, RenderError, RenderOutput
from b3lb.render.timeline import Timeline, build_timeline, merge_spans

__all__ = ["Presentation", "Profile", "RenderError", "RenderOutput", "extract_archive", "load_presentation",
           "recording_duration", "render_profile"]  # fmt: skip

log = logging.getLogger(__name__)

MAX_RENDER_S = 24 * 3600.0
GRAPH_FILE = "graph.txt"


async def render_profile(presentation: Presentation, profile: Profile, output: Path, *, threads: int = 0,
                         progress: Callable[[float], None] | None = None, ffmpeg: str = "",
                         rasteriser: str = "") -> RenderOutput:  # fmt: skip
    """Render `presentation` as `profile` into `output`; RenderError with the reason when it cannot.

    `ffmpeg`: the binary (render.ffmpeg; '' = find one); `threads`: encoder threads (0 = auto);
    `rasteriser`: force one ('resvg', 'cairosvg', 'ffmpeg-librsvg', 'none'; '' = the best available)."""
    if profile.format not in ("MP4", "WEBM"):
        raise RenderError(f"profile {profile.name!r} has an unknown format {profile.format!r}")
    started = time.monotonic()
    binary = await asyncio.to_thread(find_ffmpeg, ffmpeg)
    info = await asyncio.to_thread(ffmpeg_info, binary)
    webcams = await _media(binary, presentation.webcams, presentation)
    share = await _media(binary, presentation.deskshare_video, presentation)
    duration = recording_duration(presentation, webcams, share)
    drawer = None
    if profile.annotate and presentation.shapes and rasteriser != "none":
        drawer = annotate.choose_rasteriser(info.librsvg, rasteriser)
    layout = make_layout(profile, webcam_video=webcams is not None and webcams.video is not None)
    timeline = await asyncio.to_thread(  # a long recording with many drawings: not on the event loop
        build_timeline, presentation, duration, deskshare=share is not None and share.video is not None,
        annotate=drawer is not None, max_states=drawer.max_states if drawer is not None else 0)  # fmt: skip
    if len(timeline.deskshare) > MAX_EXPRESSION_TERMS:
        presentation.warnings.append(f"screen share: {len(timeline.deskshare)} on/off spans, only the "
                                     f"{MAX_EXPRESSION_TERMS} longest are shown")  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".render-", dir=output.parent))
    partial = output.with_name(output.name + ".part")
    try:
        plan = await asyncio.to_thread(_prepare, work, presentation, timeline, layout, drawer, webcams, share,
                                       webcam_mode(profile))  # fmt: skip
        args, graph = command(plan, profile, GRAPH_FILE, str(partial.resolve()), threads=threads,
                              script_option=info.script_option)  # fmt: skip
        await asyncio.to_thread((work / GRAPH_FILE).write_text, graph, "utf-8")
        await run(binary, args, cwd=work, duration=duration, progress=progress)
        size = partial.stat().st_size
        if size <= 0:
            raise RenderError("ffmpeg wrote an empty video")
        partial.replace(output)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
        partial.unlink(missing_ok=True)
    if progress is not None:
        progress(1.0)
    elapsed = time.monotonic() - started
    log.info("rendered %s as %r: %.1f s of video in %.1f s (%.1fx real time), %d bytes, %d drawing states",
             presentation.record_id[:80] or presentation.root.name, profile.name, duration, elapsed,
             duration / elapsed if elapsed else 0.0, size, len(timeline.annotations))  # fmt: skip
    return RenderOutput(output, size, duration, profile.extension)


async def _media(binary: str, path: Path | None, presentation: Presentation) -> MediaInfo | None:
    """The probed file, without a video stream too large to decode safely; None when absent."""
    if path is None:
        return None
    info = await probe(binary, path)
    if info.video is not None and info.video[0] * info.video[1] > MAX_PIXELS:
        presentation.warnings.append(f"{path.name}: {info.video[0]}x{info.video[1]} is too large, video ignored")
        info = MediaInfo(info.duration, None, info.audio)
    if info.video is None and not info.audio:
        return None
    return info


def recording_duration(presentation: Presentation, webcams: MediaInfo | None, share: MediaInfo | None) -> float:
    """metadata.xml's playback duration, else the end of the longest part; RenderError if none or absurd."""
    duration = presentation.metadata.duration_s
    if not duration:
        ends = [m.duration or 0.0 for m in (webcams, share) if m is not None]
        ends += [s.end for s in presentation.slides] + [e.stop for e in presentation.deskshare]
        duration = max(ends, default=0.0)
    if duration <= 0:
        raise RenderError("the recording has no length: metadata.xml has no playback duration and nothing "
                          "else tells it")  # fmt: skip
    if duration > MAX_RENDER_S:
        raise RenderError(f"the recording claims {duration:.0f} s, more than the {MAX_RENDER_S:.0f} s rendered")
    return duration


def flat_png(width: int, height: int, rgba: tuple[int, int, int, int]) -> bytes:
    """A PNG of one colour (RGBA), for the background."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgba) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"".join((b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", header),
                     chunk(b"IDAT", zlib.compress(row * height, 6)), chunk(b"IEND", b"")))  # fmt: skip


def _colour(hex_colour: str) -> tuple[int, int, int, int]:
    value = int(hex_colour, 16)
    return (value >> 16) & 255, (value >> 8) & 255, value & 255, 255


def _prepare(work: Path, presentation: Presentation, timeline: Timeline, layout: Layout, drawer: Rasteriser | None,
             webcams: MediaInfo | None, share: MediaInfo | None, mode: str) -> GraphPlan:  # fmt: skip
    """Write the tracks into `work` (ffmpeg's working folder) and return the plan of the graph."""
    (work / "bg.png").write_bytes(flat_png(layout.width, layout.height, _colour(layout.background)))
    names: dict[Path, str] = {}
    entries: list[tuple[str, float]] = []
    for span in timeline.slides:
        name = "bg.png"
        if span.slide is not None and span.slide.file is not None:
            if span.slide.file not in names:
                names[span.slide.file] = f"s{len(names) + 1:05d}{span.slide.file.suffix.lower()}"
                (work / names[span.slide.file]).symlink_to(span.slide.file)
            name = names[span.slide.file]
        entries.append((name, span.end - span.start))
    (work / "slides.ffconcat").write_text(concat_list(entries), "utf-8")
    plan = GraphPlan(layout=layout, duration=timeline.duration, slides_list="slides.ffconcat", webcam_mode=mode)
    if drawer is not None and timeline.annotations:
        plan.annotations_list = _annotation_track(work, timeline, layout, drawer)
        plan.annotation_spans = merge_spans([(s.start, s.end) for s in timeline.annotations], timeline.duration)
    if webcams is not None and presentation.webcams is not None:
        plan.webcams = str(presentation.webcams)
        plan.webcam_video, plan.webcam_audio = webcams.video is not None, webcams.audio
    if share is not None and share.video is not None and presentation.deskshare_video is not None:
        plan.deskshare, plan.deskshare_spans = str(presentation.deskshare_video), timeline.deskshare
    return plan


def _annotation_track(work: Path, timeline: Timeline, layout: Layout, drawer: Rasteriser) -> str:
    """One frame-sized overlay per whiteboard state, blank between states; returns the concat list."""
    frame = (layout.width, layout.height)
    blank = drawer.write(annotate.blank_document(frame), work / "blank").name
    entries: list[tuple[str, float]] = []
    cursor = 0.0
    for index, state in enumerate(timeline.annotations):
        if state.start > cursor:
            entries.append((blank, state.start - cursor))
        pixels = state.slide.pixels or (int(state.slide.width), int(state.slide.height))
        x, y, w, h = place(layout, *pixels)
        document = annotate.state_document(state.shapes, Placement(x, y, w, h, state.slide.width, state.slide.height),
                                           frame)  # fmt: skip
        entries.append((drawer.write(document, work / f"a{index + 1:05d}").name, state.end - state.start))
        cursor = state.end
    if timeline.duration > cursor:
        entries.append((blank, timeline.duration - cursor))
    (work / "annotations.ffconcat").write_text(concat_list(entries), "utf-8")
    return "annotations.ffconcat"
