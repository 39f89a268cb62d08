"""The ffmpeg binary: finding it, asking what it can do, probing media, running it.

Which binary: `render.ffmpeg` when configured, else `ffmpeg` on PATH, else the one the
imageio-ffmpeg wheel ships (so a pip install is enough on a fresh machine). There is no ffprobe:
media are probed by `ffmpeg -i FILE`, whose stream lines are stable enough for what is needed
(duration, video size, whether there is audio). A run reports progress through `-progress pipe:1`
(out_time_us against the known duration), keeps ffmpeg's last stderr lines for the error report,
is killed (its whole process group) when its task is cancelled, when its output time has not
advanced for `stall_s` seconds (ffmpeg prints a progress block every 0.5 s even when stuck, so a
quiet pipe is not the test), and when it runs longer than `wall_cap()` in all.

Every media input is opened with its demuxer forced by its file name (`input_args`) and only the
file protocol allowed: a hostile webcams.webm must not pick a playlist demuxer (DASH, HLS, concat)
that would read other local files or the network.

On Linux ffmpeg dies with its parent (PR_SET_PDEATHSIG) and does not inherit a lowered address
space limit of the render process (RLIMIT_AS soft limit raised back to the hard limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from b3lb.render.model import RenderError

log = logging.getLogger(__name__)

TAIL_LINES = 20
STALL_S = 300.0
PROBE_TIMEOUT = 60.0
WALL_BASE_S = 600.0  # the wall-clock cap of a run: 2x the recording's length plus this
DEMUXERS = {".webm": "matroska", ".mkv": "matroska", ".mp4": "mov", ".m4v": "mov"}
_VERSION = re.compile(r"ffmpeg version \S*?(\d+)\.(\d+)")
_DURATION = re.compile(r"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\d+:\d+.*?: Video: .*?(?<![0-9])(\d{2,5})x(\d{2,5})(?![0-9])")
_AUDIO = re.compile(r"Stream #\d+:\d+.*?: Audio: ")


@dataclass(frozen=True)
class FfmpegInfo:
    path: str
    version: tuple[int, int]  # (0, 0): unknown (a git build): treated as new
    librsvg: bool  # can decode SVG (whiteboard drawings rasterised inside ffmpeg)

    @property
    def script_option(self) -> str:
        """How a filter graph is read from a file: ffmpeg 7 has `-/filter_complex FILE` (and 8
        dropped -filter_complex_script)."""
        return "-filter_complex_script" if (0, 0) < self.version < (7, 0) else "-/filter_complex"


@dataclass(frozen=True)
class MediaInfo:
    duration: float | None
    video: tuple[int, int] | None  # width, height of the first video stream
    audio: bool


def find_ffmpeg(configured: str = "") -> str:
    """The configured binary, else ffmpeg on PATH, else imageio-ffmpeg's; RenderError when none."""
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise RenderError(f"render.ffmpeg {configured!r} is not an executable file")
        return found
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError, OSError) as exc:
        raise RenderError(f"no ffmpeg: install it, or pip install imageio-ffmpeg ({exc})") from None


_infos: dict[str, FfmpegInfo] = {}


def ffmpeg_info(path: str) -> FfmpegInfo:
    """Version and SVG support of the binary at `path` (asked once per process)."""
    if path in _infos:
        return _infos[path]
    try:
        version = subprocess.run([path, "-hide_banner", "-version"], capture_output=True, timeout=PROBE_TIMEOUT,
                                 check=False).stdout.decode(errors="replace")  # fmt: skip
        decoders = subprocess.run([path, "-hide_banner", "-decoders"], capture_output=True, timeout=PROBE_TIMEOUT,
                                  check=False).stdout.decode(errors="replace")  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RenderError(f"ffmpeg {path!r} does not run: {exc}") from None
    found = _VERSION.search(version)
    info = FfmpegInfo(path, (int(found.group(1)), int(found.group(2))) if found else (0, 0),
                      bool(re.search(r"^\s*V\S*\s+librsvg\s", decoders, re.MULTILINE)))  # fmt: skip
    _infos[path] = info
    return info


def parse_probe(text: str) -> MediaInfo:
    """What `ffmpeg -i FILE` printed about its first input."""
    duration = None
    if found := _DURATION.search(text):
        duration = int(found.group(1)) * 3600 + int(found.group(2)) * 60 + float(found.group(3))
    video = None
    for line in text.splitlines():
        if (match := _VIDEO.search(line)) and "attached pic" not in line:
            video = (int(match.group(1)), int(match.group(2)))
            break
    return MediaInfo(duration, video, any(_AUDIO.search(line) for line in text.splitlines()))


def input_args(path: Path | str) -> list[str]:
    """`-f DEMUXER -protocol_whitelist file -i file:PATH`: the demuxer chosen by the suffix, never by
    the content; RenderError for a suffix without a known demuxer."""
    demuxer = DEMUXERS.get(Path(path).suffix.lower())
    if demuxer is None:
        raise RenderError(f"{Path(path).name[:100]}: no known demuxer for this kind of file")
    return ["-f", demuxer, "-protocol_whitelist", "file", "-i", f"file:{path}"]


async def probe(ffmpeg: str, path: Path) -> MediaInfo:
    """Streams and duration of a media file; RenderError when ffmpeg cannot read it at all."""
    process = await asyncio.create_subprocess_exec(
        ffmpeg, "-hide_banner", "-nostdin", *input_args(path), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, preexec_fn=child_setup)  # fmt: skip
    try:
        _, err = await asyncio.wait_for(process.communicate(), PROBE_TIMEOUT)
    except (TimeoutError, asyncio.CancelledError):
        await _kill(process)
        raise
    text = err.decode(errors="replace")[-200_000:]
    info = parse_probe(text)
    if info.video is None and not info.audio:
        last = text.strip().splitlines()[-1:] or [""]
        raise RenderError(f"{path.name} is not a readable video: {last[0][:200]}")
    return info


async def _kill(process: asyncio.subprocess.Process, *, group: bool = False) -> None:
    """SIGKILL the process (with `group`: its whole process group, as it leads one) and reap it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
    with contextlib.suppress(Exception):
        await process.wait()


def _progress_value(line: str) -> float | None:
    """Seconds of output from a -progress line (out_time_us, or out_time_ms, which is µs too)."""
    key, _, value = line.partition("=")
    if key in ("out_time_us", "out_time_ms"):
        try:
            return max(0.0, int(value) / 1_000_000)
        except ValueError:
            return None
    return None


def wall_cap(duration: float) -> float:
    """The longest a run may take in all: twice the recording's length plus ten minutes."""
    return 2 * max(0.0, duration) + WALL_BASE_S


class _Stopped(Exception):
    """ffmpeg is stuck or too slow: the reason to report."""


# PR_SET_PDEATHSIG: the child gets SIGKILL when the thread that forked it dies. Looked up before any
# fork, so that the code run between fork and exec imports and allocates nothing.
_PR_SET_PDEATHSIG = 1
_prctl = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError, AttributeError, TypeError):
        _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl


def child_setup() -> None:
    """Run in ffmpeg's process before exec (best effort): die with the parent, and no inherited soft
    address-space limit (the render process may lower its own; ffmpeg's frame pools need more)."""
    parent = os.getppid()
    if _prctl is not None:
        with contextlib.suppress(Exception):
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl: nobody would ever kill us
                os._exit(1)
    with contextlib.suppress(Exception):
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


async def run(ffmpeg: str, args: Sequence[str], *, cwd: Path, duration: float,
              progress: Callable[[float], None] | None = None, stall_s: float = STALL_S,
              max_s: float | None = None) -> None:  # fmt: skip
    """Run ffmpeg to the end; RenderError with its last lines when it fails, stalls (output time not
    advancing for `stall_s`) or outlasts `max_s` (default `wall_cap(duration)`). Killed on cancel."""
    process = await asyncio.create_subprocess_exec(
        ffmpeg, *args, cwd=str(cwd), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True, preexec_fn=child_setup)  # fmt: skip
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    stderr_task = asyncio.ensure_future(_collect(process.stderr, tail))
    limit = wall_cap(duration) if max_s is None else max_s
    try:
        await _follow(process.stdout, duration, progress, stall_s, limit)
        code = await process.wait()
        await stderr_task
    except _Stopped as stopped:
        await _kill(process, group=True)
        await _finish(stderr_task)
        raise RenderError(f"{stopped}: stopped", "\n".join(tail)) from None
    except BaseException:
        await _kill(process, group=True)
        await _finish(stderr_task)
        raise
    if code != 0:
        last = tail[-1] if tail else f"exit code {code}"
        raise RenderError(f"ffmpeg failed ({code}): {last[:300]}", "\n".join(tail))


async def _follow(stream: asyncio.StreamReader | None, duration: float, progress: Callable[[float], None] | None,
                  stall_s: float, max_s: float) -> None:  # fmt: skip
    """Read the progress blocks until ffmpeg closes its stdout; _Stopped when the output time has not
    advanced for `stall_s` or `max_s` have passed since the start."""
    assert stream is not None
    loop = asyncio.get_running_loop()
    started = advanced = loop.time()
    reached = -1.0
    while True:
        now = loop.time()
        if now - started >= max_s:
            raise _Stopped(f"ffmpeg ran longer than {max_s:.0f} s (at {max(reached, 0.0):.1f} s of "
                           f"{duration:.1f} s)")  # fmt: skip
        if now - advanced >= stall_s:
            raise _Stopped(f"ffmpeg made no progress for {stall_s:.0f} s (stuck at {max(reached, 0.0):.1f} s of "
                           f"{duration:.1f} s)")  # fmt: skip
        try:
            line = await asyncio.wait_for(stream.readline(), min(started + max_s, advanced + stall_s) - now)
        except (TimeoutError, ValueError):  # ValueError: a line over the limit, dropped: not progress
            continue
        if not line:
            return
        seconds = _progress_value(line.decode(errors="replace").strip())
        if seconds is None or seconds <= reached:
            continue
        reached, advanced = seconds, loop.time()
        if progress is not None and duration > 0:
            with contextlib.suppress(Exception):  # a broken callback must not break the render
                progress(min(1.0, seconds / duration))


async def _collect(stream: asyncio.StreamReader | None, tail: deque[str]) -> None:
    assert stream is not None
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line over the stream's limit (it is dropped): keep reading
            tail.append("[a line too long to keep]")
            continue
        if not line:
            return
        text = line.decode(errors="replace").rstrip()
        if text:
            tail.append(text[:1000])


async def _finish(task: asyncio.Future[None]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
