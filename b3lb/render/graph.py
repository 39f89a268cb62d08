"""The ffmpeg command of one profile: its inputs, its filter graph and its encoder settings.

One ffmpeg process, one filter graph, built for speed (a 2-core machine renders a 10-minute 720p
recording at several times real time):

- the slides are ONE track: a concat list of the slide images with their durations, read by a
  `movie` source inside the graph (frames are decoded when the graph needs them, one image per
  slide change; -i inputs would be decoded ahead and buffered). Each image is scaled to fit and
  padded onto the background once; `fps` then repeats it, which costs a reference, not a copy;
- the whiteboard states are a second such track of frame-sized transparent images (blank between
  states), overlaid only while a state is shown (`enable`);
- the screen share (deskshare.webm spans the whole recording, as BBB publishes it) is scaled and
  overlaid while it runs; frames outside the share are dropped before scaling, except one per
  second so that the overlay never waits long for its next frame (which would make ffmpeg buffer
  the main track);
- the webcams are scaled to the profile's box and overlaid in the bottom-right corner;
- the audio is the webcams file's, or silence.

Nothing from the archive chooses how it is read: the -i inputs get their demuxer from their file
name (`ffmpeg.input_args`), and the `movie` sources open their concat list with only the file
protocol, the concat demuxer in safe mode, and only image demuxers for the listed files (`MOVIE_OPTIONS`;
the concat demuxer passes these whitelists on to every file it opens). A slide file that looks
like a playlist (a DASH manifest named slide-1.png) is refused instead of followed.

Slides and the share are placed by the same expressions as `place()` computes here, so that the
drawings (rendered in Python at the slide's place) line up with the slide ffmpeg draws.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from b3lb.render.ffmpeg import input_args
from b3lb.render.model import Profile
from b3lb.render.timeline import Span

FPS = 15
GREY = "0x808080"
BLACK = "0x000000"
COLOUR_TAGS = "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709:range=tv"
TO_BT709 = "out_color_matrix=bt709:out_range=tv"
HEARTBEAT_S = 1.0  # a share frame at least this often, even outside the share
MAX_EXPRESSION_TERMS = 4000
IMAGE_DEMUXERS = "png_pipe,jpeg_pipe,jpegls_pipe,svg_pipe"
# Escaped for the graph text: quoted for the graph parser, `\:` separates the dictionary's entries.
MOVIE_OPTIONS = (f"f=concat:format_opts='protocol_whitelist=file\\:safe=1\\:"
                 f"format_whitelist=concat,{IMAGE_DEMUXERS}'")  # fmt: skip
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class Layout:
    """The frame and where things go in it."""

    width: int
    height: int
    webcam: tuple[int, int] | None  # the webcam box in the bottom-right corner; None: no webcam video
    background: str  # ffmpeg colour
    fps: int = FPS

    @property
    def slide_area(self) -> int:
        """The width left of the webcam column: slides narrow enough are centred there."""
        return self.width - self.webcam[0] if self.webcam else self.width


def even(value: float, low: int = 2) -> int:
    return max(low, int(value) // 2 * 2)


def make_layout(profile: Profile, *, webcam_video: bool, fps: int = FPS) -> Layout:
    width, height = even(min(profile.width, 7680)), even(min(profile.height, 4320))
    webcam = None
    if webcam_video:
        webcam = (min(even(profile.webcam_width), width), min(even(profile.webcam_height), height))
    return Layout(width, height, webcam, GREY if profile.backdrop else BLACK, fps)


def fitted(layout: Layout, width: float, height: float) -> tuple[int, int]:
    """An image's size once scaled to fit the frame; the same arithmetic as `_fit_expressions`."""
    scale = min(layout.width / width, layout.height / height)
    return max(2, 2 * math.floor(scale * width / 2 + 0.0001)), max(2, 2 * math.floor(scale * height / 2 + 0.0001))


def place(layout: Layout, width: float, height: float) -> tuple[int, int, int, int]:
    """Where an image of that size lands: x, y, width, height (`_pad_expressions` in Python)."""
    w, h = fitted(layout, width, height)
    area = layout.slide_area
    x = 2 * math.floor((area - w) / 4) if w <= area else 2 * math.floor((layout.width - w) / 4)
    return x, 2 * math.floor((layout.height - h) / 4), w, h


def _fit_expressions(layout: Layout) -> str:
    w, h = layout.width, layout.height
    return (f"w='max(2,2*floor(min({w}/iw,{h}/ih)*iw/2+0.0001))':"
            f"h='max(2,2*floor(min({w}/iw,{h}/ih)*ih/2+0.0001))'")  # fmt: skip


def _pad_expressions(layout: Layout) -> str:
    area, w, h = layout.slide_area, layout.width, layout.height
    return f"x='2*floor(if(lte(iw,{area}),({area}-iw)/4,({w}-iw)/4))':y='2*floor(({h}-ih)/4)'"


def fit_chain(layout: Layout) -> str:
    """Scale any image to fit (re-evaluated when the size changes) and pad it onto the background."""
    return (f"scale={_fit_expressions(layout)}:eval=frame:{TO_BT709}:flags=bicubic,format=yuv420p,"
            f"pad={layout.width}:{layout.height}:{_pad_expressions(layout)}:color={layout.background}:eval=frame,"
            f"setsar=1,{COLOUR_TAGS}")  # fmt: skip


def enable_expression(spans: Sequence[Span]) -> str:
    """An expression of t, 1 inside the spans and 0 outside: a binary search over the (joined) spans,
    `if(lt(t,start),LEFT,RIGHT)`, so a frame costs log2(n) comparisons and the nesting stays shallow
    (ffmpeg refuses a flat `a+b+...` of more than 100 terms). At most MAX_EXPRESSION_TERMS spans, the
    longest kept; the caller says when some were left out."""
    chosen = sorted(spans, key=lambda s: s.end - s.start, reverse=True)[:MAX_EXPRESSION_TERMS]
    joined: list[Span] = []
    for span in sorted(chosen, key=lambda s: s.start):
        if joined and span.start <= joined[-1].end:
            joined[-1] = Span(joined[-1].start, max(joined[-1].end, span.end))
        else:
            joined.append(span)
    if not joined:
        return "0"

    def search(low: int, high: int) -> str:
        if high - low == 1:
            return f"between(t,{joined[low].start:.3f},{joined[low].end:.3f})"
        middle = (low + high) // 2
        return f"if(lt(t,{joined[middle].start:.3f}),{search(low, middle)},{search(middle, high)})"

    return search(0, len(joined))


def concat_list(entries: Sequence[tuple[str, float]]) -> str:
    """An ffconcat file of (name, seconds): consecutive repeats joined, the last file listed twice
    (the concat demuxer ignores the last entry's duration). Names must be plain file names in
    ffmpeg's working folder (generated ones): ValueError for anything else."""
    joined: list[list[object]] = []
    for name, seconds in entries:
        if not _PLAIN_NAME.fullmatch(name):
            raise ValueError(f"not a plain file name for a concat list: {name[:100]!r}")
        if seconds <= 0:
            continue
        if joined and joined[-1][0] == name:
            joined[-1][1] = float(joined[-1][1]) + seconds  # type: ignore[arg-type]
        else:
            joined.append([name, seconds])
    lines = ["ffconcat version 1.0"]
    for name, seconds in joined:
        lines += [f"file '{name}'", f"duration {float(seconds):.6f}"]  # type: ignore[arg-type]
    if joined:
        lines.append(f"file '{joined[-1][0]}'")
    return "\n".join(lines) + "\n"


@dataclass
class GraphPlan:
    """Everything the command depends on; file names are relative to ffmpeg's working folder."""

    layout: Layout
    duration: float
    slides_list: str  # concat list of the slide track
    annotations_list: str | None = None
    annotation_spans: list[Span] = field(default_factory=list)
    webcams: str | None = None  # path of webcams.webm
    webcam_video: bool = False
    webcam_audio: bool = False
    webcam_mode: str = "fit"  # 'fit' | 'crop' | 'stretch'
    deskshare: str | None = None  # path of deskshare.webm
    deskshare_spans: list[Span] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return max(1, round(self.duration * self.layout.fps))


def webcam_mode(profile: Profile) -> str:
    """webcam_crop wins over webcam_stretch when both are set."""
    return "crop" if profile.webcam_crop else "stretch" if profile.webcam_stretch else "fit"


def _webcam_chain(plan: GraphPlan) -> str:
    assert plan.layout.webcam is not None
    ww, wh = plan.layout.webcam
    base = f"fps={plan.layout.fps},"
    if plan.webcam_mode == "stretch":
        base += f"scale={ww}:{wh}:{TO_BT709}"
    elif plan.webcam_mode == "crop":
        base += f"scale={ww}:{wh}:force_original_aspect_ratio=increase:{TO_BT709},crop={ww}:{wh}"
    else:
        base += (f"scale={ww}:{wh}:force_original_aspect_ratio=decrease:{TO_BT709},"
                 f"pad={ww}:{wh}:(ow-iw)/2:(oh-ih)/2:color=black")  # fmt: skip
    return f"{base},setsar=1,format=yuv420p,{COLOUR_TAGS}"


def filter_graph(plan: GraphPlan) -> tuple[str, list[str], str]:
    """The graph text, the -i inputs (in order) and the audio to map ('N:a:0' or '[aout]')."""
    layout = plan.layout
    inputs: list[str] = []
    chains = [f"movie={plan.slides_list}:{MOVIE_OPTIONS},{fit_chain(layout)},fps={layout.fps},"
              f"tpad=stop=-1:stop_mode=clone,trim=end_frame={plan.frames}[slides]"]  # fmt: skip
    current = "slides"
    if plan.annotations_list and plan.annotation_spans:
        chains.append(f"movie={plan.annotations_list}:{MOVIE_OPTIONS},scale={TO_BT709},format=yuva420p,"
                      f"fps={layout.fps}[ann]")  # fmt: skip
        chains.append(f"[{current}][ann]overlay=0:0:enable='{enable_expression(plan.annotation_spans)}':"
                      "eof_action=pass:format=yuv420[drawn]")  # fmt: skip
        current = "drawn"
    webcams_index = -1
    if plan.webcams and (plan.webcam_video or plan.webcam_audio):
        webcams_index = len(inputs)
        inputs.append(plan.webcams)
    if plan.deskshare and plan.deskshare_spans:
        index = len(inputs)
        inputs.append(plan.deskshare)
        during = enable_expression(plan.deskshare_spans)
        keep = f"{during}+isnan(prev_selected_t)+gte(t-prev_selected_t,{HEARTBEAT_S})"
        chains.append(f"[{index}:v]select='{keep}',{fit_chain(layout)}[share]")
        chains.append(f"[{current}][share]overlay=0:0:enable='{during}':eof_action=pass:format=yuv420[shared]")
        current = "shared"
    if webcams_index >= 0 and plan.webcam_video and layout.webcam is not None:
        ww, wh = layout.webcam
        chains.append(f"[{webcams_index}:v]{_webcam_chain(plan)}[cam]")
        chains.append(f"[{current}][cam]overlay=x={layout.width - ww}:y={layout.height - wh}:"
                      "eof_action=pass:format=yuv420[withcam]")  # fmt: skip
        current = "withcam"
    chains.append(f"[{current}]format=yuv420p,{COLOUR_TAGS}[vout]")
    if webcams_index >= 0 and plan.webcam_audio:
        audio = f"{webcams_index}:a:0"
    else:
        chains.append(f"anullsrc=r=48000:cl=mono,atrim=duration={plan.duration:.3f}[aout]")
        audio = "[aout]"
    return ";\n".join(chains) + "\n", inputs, audio


def encoder_args(profile: Profile, *, fps: int = FPS, threads: int = 0) -> list[str]:
    """Fast settings: x264 veryfast / VP9 realtime; the index at the front of an MP4."""
    gop = str(fps * 10)
    thread_args = ["-threads", str(threads)] if threads > 0 else []
    if profile.format == "WEBM":
        return ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1",
                "-lag-in-frames", "0", "-crf", "40", "-b:v", "0", "-g", gop, *thread_args,
                "-c:a", "libopus", "-b:a", "64k", "-f", "webm"]  # fmt: skip
    # A shorter look-ahead than veryfast's 10 frames: ~30 MB less memory at 720p, same speed and size
    # for slides (sync-lookahead=0: no look-ahead thread holding more frames).
    return ["-c:v", "libx264", "-preset", "veryfast", "-crf", "28", "-x264-params", "rc-lookahead=5:sync-lookahead=0",
            "-pix_fmt", "yuv420p", "-g", gop, *thread_args, "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart",
            "-f", "mp4"]  # fmt: skip


def command(plan: GraphPlan, profile: Profile, graph_file: str, output: str, *, threads: int = 0,
            script_option: str = "-/filter_complex") -> tuple[list[str], str]:  # fmt: skip
    """ffmpeg's arguments (without the binary) and the graph text to write to `graph_file`."""
    graph, inputs, audio = filter_graph(plan)
    args = ["-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-progress", "pipe:1", "-nostats"]
    for path in inputs:
        args += input_args(path)
    if script_option == "-/filter_complex":
        args += ["-/filter_complex", graph_file]
    else:
        args += [script_option, graph_file]
    args += ["-map", "[vout]", "-map", audio, "-t", f"{plan.duration:.3f}"]
    args += encoder_args(profile, fps=plan.layout.fps, threads=threads)
    args.append(f"file:{output}")
    return args, graph
