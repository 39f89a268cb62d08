"""Each render job step in a child process (b3lb/render/child.py), so the worker's process stays light.

The embedded worker lives in `b3lb serve`, on the BBB API's event loop. Extracting and parsing a
hostile archive, building the timeline of thousands of drawings and rasterising them hold the
GIL for seconds and can take hundreds of MB; in a child they cost that child only (capped by
RLIMIT_AS, MEMORY_LIMIT), and the parent only reads JSON lines from a pipe with asyncio.

`extract()` returns an `IsolatedPresentation`: the folder and what the logs want, no parsed
documents (the render child parses the folder again). `render()` raises RenderError like
pipeline.render_profile; a cancelled render kills the child's process group, ffmpeg included.
The database and the storage stay the worker's (parent's) business.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import b3lb
from b3lb.render.child import MEMORY_LIMIT, PARENT_ENV
from b3lb.render.model import Profile, RenderError, RenderOutput

log = logging.getLogger(__name__)

EXTRACT_TIMEOUT = 3600.0  # seconds for one archive (a 10 GiB upload on a slow disk)
SILENCE_S = 1800.0  # a render child that says nothing this long is stuck (ffmpeg stalls end at 300 s)
LINE_LIMIT = 1 << 20  # bytes of one protocol line
STDERR_LINES = 20


@dataclass(frozen=True)
class IsolatedPresentation:
    """An extracted, validated presentation folder; render() parses it again in its child."""

    root: Path
    record_id: str = ""
    warnings: tuple[str, ...] = ()
    slides: int = 0
    drawings: int = 0


async def extract_async(archive: Path, dest: Path, *, max_bytes: int, max_files: int,
                        memory_limit: int = MEMORY_LIMIT) -> IsolatedPresentation:  # fmt: skip
    """Extract and parse `archive` into `dest` in a child; RenderError (permanent for a broken archive)."""
    spec = {"archive": str(archive), "dest": str(dest), "max_bytes": max_bytes, "max_files": max_files,
            "memory_limit": memory_limit}  # fmt: skip
    return _presentation(await asyncio.wait_for(_run_child("extract", spec, None, EXTRACT_TIMEOUT), EXTRACT_TIMEOUT))


def extract(archive: Path, dest: Path, *, max_bytes: int, max_files: int,
            memory_limit: int = MEMORY_LIMIT) -> IsolatedPresentation:  # fmt: skip
    """extract_async for a caller in a thread (the worker runs its extractor with asyncio.to_thread):
    blocking waits, no event loop; the child is killed after EXTRACT_TIMEOUT."""
    spec = {"archive": str(archive), "dest": str(dest), "max_bytes": max_bytes, "max_files": max_files,
            "memory_limit": memory_limit}  # fmt: skip
    child = subprocess.Popen([sys.executable, "-m", "b3lb.render.child", "extract"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                             env=_child_env())  # fmt: skip
    try:
        out, err = child.communicate(json.dumps(spec).encode(), timeout=EXTRACT_TIMEOUT)
    except BaseException:
        _kill_group(child.pid)
        child.wait()
        raise
    final = None
    for line in out.splitlines():
        final = _handle(line, None) or final
    if child.returncode != 0:
        _kill_group(child.pid)
    tail = deque(err.decode(errors="replace").splitlines(), maxlen=STDERR_LINES)
    return _presentation(_outcome(final, child.returncode, tail))


def _presentation(result: dict[str, Any]) -> IsolatedPresentation:
    return IsolatedPresentation(root=Path(result["root"]), record_id=str(result.get("record_id", "")),
                                warnings=tuple(result.get("warnings", ())), slides=int(result.get("slides", 0)),
                                drawings=int(result.get("drawings", 0)))  # fmt: skip


async def render(presentation: IsolatedPresentation | Any, profile: Profile, output: Path, *, threads: int = 0,
                 progress: Callable[[float], None] | None = None, ffmpeg: str = "", rasteriser: str = "",
                 memory_limit: int = MEMORY_LIMIT) -> RenderOutput:  # fmt: skip
    """Render one profile in a child: pipeline.render_profile's contract (the video at `output`,
    progress 0..1, RenderError with ffmpeg's tail); nothing left behind on failure or cancel."""
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".isolated-", dir=output.parent))
    try:
        target = scratch / output.name
        spec = {"root": str(presentation.root), "profile": asdict(profile), "output": str(target),
                "threads": threads, "ffmpeg": ffmpeg, "rasteriser": rasteriser,
                "memory_limit": memory_limit}  # fmt: skip
        result = await _run_child("render", spec, progress, SILENCE_S)
        try:
            size = int(result["size"])
            duration = float(result["duration_s"])
            extension = str(result["extension"])
            await asyncio.to_thread(os.replace, target, output)
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise RenderError(f"the render process reported no usable video: {exc}") from None
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    return RenderOutput(output, size, duration, extension)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    package_root = str(Path(b3lb.__file__).resolve().parent.parent)  # b3lb importable even if not installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env[PARENT_ENV] = str(os.getpid())
    return env


async def _run_child(mode: str, spec: dict[str, Any], progress: Callable[[float], None] | None,
                     silence: float) -> dict[str, Any]:  # fmt: skip
    """Start the child, feed it `spec`, follow its lines; its result, else RenderError."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "b3lb.render.child", mode, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
        env=_child_env(), limit=LINE_LIMIT)  # fmt: skip
    stderr: deque[str] = deque(maxlen=STDERR_LINES)
    stderr_task = asyncio.ensure_future(_collect(process.stderr, stderr))
    try:
        assert process.stdin is not None
        process.stdin.write(json.dumps(spec).encode())
        with contextlib.suppress(ConnectionError):  # a child that died at once: its exit code tells
            await process.stdin.drain()
        process.stdin.close()
        final = await _follow(process, progress, silence)
        code = await process.wait()
        await stderr_task
    except BaseException:
        stderr_task.cancel()
        await _kill(process)
        raise
    if code != 0:  # whatever it started (ffmpeg) goes with it; the group outlives a reaped leader
        _kill_group(process.pid)
    return _outcome(final, code, stderr)


def _outcome(final: dict[str, Any] | None, code: int, stderr: deque[str]) -> dict[str, Any]:
    """The child's result, else its error as a RenderError."""
    if final is not None and "result" in final and code == 0:
        return dict(final["result"])
    if final is not None and "error" in final:
        raise RenderError(str(final["error"]), str(final.get("tail", "")), permanent=bool(final.get("permanent")))
    how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
    raise RenderError(f"the render process {how} without a result (out of memory?)", "\n".join(stderr))


async def _follow(process: asyncio.subprocess.Process, progress: Callable[[float], None] | None,
                  silence: float) -> dict[str, Any] | None:  # fmt: skip
    """Read the child's lines to its end: progress to `progress`, logs to our logs; its last word."""
    assert process.stdout is not None
    final: dict[str, Any] | None = None
    while True:
        try:
            line = await asyncio.wait_for(process.stdout.readline(), silence)
        except TimeoutError:
            raise RenderError(f"the render process said nothing for {silence:.0f} s: stopped") from None
        except ValueError:  # a line beyond LINE_LIMIT
            raise RenderError("the render process wrote an overlong line: stopped") from None
        if not line:
            return final
        final = _handle(line, progress) or final


def _handle(line: bytes, progress: Callable[[float], None] | None) -> dict[str, Any] | None:
    """One protocol line: progress and logs are passed on; a result or error is returned."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    if "progress" in message and progress is not None:
        with contextlib.suppress(Exception):  # a broken callback must not break the render
            progress(min(max(float(message["progress"]), 0.0), 1.0))
    elif "log" in message:
        _relog(message["log"])
    elif "result" in message or "error" in message:
        return message
    return None


def _relog(entry: Any) -> None:
    with contextlib.suppress(Exception):
        level, name, text = entry
        logging.getLogger(str(name)).log(int(level), "%s", str(text))


async def _collect(stream: asyncio.StreamReader | None, tail: deque[str]) -> None:
    assert stream is not None
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # overlong: keep reading
            continue
        if not line:
            return
        if text := line.decode(errors="replace").rstrip():
            tail.append(text[:1000])


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _kill(process: asyncio.subprocess.Process) -> None:
    _kill_group(process.pid)
    with contextlib.suppress(Exception):
        await asyncio.shield(process.wait())


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
