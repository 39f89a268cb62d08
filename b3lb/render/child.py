"""The render child process: one job step (extract, or render one profile) away from the API's loop.

    python -m b3lb.render.child extract|render   < JSON spec on stdin

Started by b3lb/render/isolated.py. Parsing a hostile archive, building the timeline and
rasterising drawings can take seconds of CPU with the GIL held and hundreds of MB; here that
costs this process only. Protocol: one JSON object per stdout line:

- `{"progress": 0.42}` while ffmpeg runs (render);
- `{"log": [level, logger, message]}`: a log record, logged again by the parent;
- last, `{"result": {...}}`, or `{"error": reason, "tail": ffmpeg's last lines, "permanent": bool}`
  with a non-zero exit code.

Memory is capped with RLIMIT_AS (`memory_limit` of the spec) before anything is parsed; ffmpeg
is started with the hard limit instead (its virtual reservations are large) and inside this
process group, so that the parent's kill of the group takes ffmpeg too. The child dies with its
parent: PR_SET_PDEATHSIG delivers SIGTERM, whose handler kills the whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import resource
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from b3lb.render.model import Profile, RenderError

MEMORY_LIMIT = 2 << 30  # bytes of address space for parsing and preparing (isolated.py passes its own)
MAX_SPEC = 1 << 20
MAX_MESSAGE = 2000
MAX_TAIL = 20_000
PARENT_ENV = "B3LB_RENDER_PARENT"
PR_SET_PDEATHSIG = 1

_write_lock = threading.Lock()


def send(message: dict[str, Any]) -> None:
    """One protocol line on stdout (threads log too: one writer at a time)."""
    line = json.dumps(message, separators=(",", ":")) + "\n"
    with _write_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


class _Forward(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            send({"log": [record.levelno, record.name, record.getMessage()[:MAX_MESSAGE]]})


def _kill_group(signum: int, frame: Any) -> None:
    """SIGTERM (the parent died, or was asked to stop us): this process and its ffmpeg go at once."""
    if os.getpgrp() == os.getpid():  # started as a group leader by isolated.py: the group is ours
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(128 + signum)


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG (Linux, best effort), and exit if the parent is already gone."""
    signal.signal(signal.SIGTERM, _kill_group)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    expected = os.environ.get(PARENT_ENV, "")
    if expected.isdigit() and os.getppid() != int(expected):  # died before prctl took effect
        _kill_group(signal.SIGTERM, None)


def limit_memory(limit: int) -> None:
    """Cap this process's address space at `limit` bytes (soft limit; the hard one stays)."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if limit > 0:
        soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def _unlimited() -> Any:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _patch_spawn() -> None:
    """ffmpeg (started by b3lb/render/ffmpeg.py) gets the hard memory limit, and stays in this
    process group (ffmpeg.py asks for a session of its own) so that killing the group takes it."""
    original: Callable[..., Any] = asyncio.create_subprocess_exec

    async def spawn(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        kwargs["start_new_session"] = False
        with _unlimited():  # the fork happens inside this call; the limit is back right after
            process: asyncio.subprocess.Process = await original(*args, **kwargs)
        return process

    asyncio.create_subprocess_exec = spawn  # type: ignore[assignment]


def do_extract(spec: dict[str, Any]) -> dict[str, Any]:
    from b3lb.render.archive import extract_archive

    presentation = extract_archive(Path(spec["archive"]), Path(spec["dest"]), max_bytes=int(spec["max_bytes"]),
                                   max_files=int(spec["max_files"]))  # fmt: skip
    return {"root": str(presentation.root), "record_id": presentation.record_id[:MAX_MESSAGE],
            "warnings": [w[:MAX_MESSAGE] for w in presentation.warnings[:20]],
            "slides": len(presentation.slides),
            "drawings": sum(len(v) for v in presentation.shapes.values())}  # fmt: skip


async def do_render(spec: dict[str, Any]) -> dict[str, Any]:
    from b3lb.render.archive import load_presentation
    from b3lb.render.pipeline import render_profile

    presentation = load_presentation(Path(spec["root"]))
    last = [-1.0]

    def progress(part: float) -> None:
        if part >= 1.0 or part - last[0] >= 0.001:
            last[0] = part
            send({"progress": round(part, 4)})

    _patch_spawn()
    result = await render_profile(presentation, Profile(**spec["profile"]), Path(spec["output"]),
                                  threads=int(spec.get("threads", 0)), progress=progress,
                                  ffmpeg=str(spec.get("ffmpeg", "")),
                                  rasteriser=str(spec.get("rasteriser", "")))  # fmt: skip
    return {"path": str(result.path), "size": result.size, "duration_s": result.duration_s,
            "extension": result.extension}  # fmt: skip


def run(mode: str) -> int:
    """The child's body; its exit code."""
    limit = MEMORY_LIMIT
    try:
        spec = json.loads(sys.stdin.buffer.read(MAX_SPEC))
        limit = int(spec.get("memory_limit", MEMORY_LIMIT))
        limit_memory(limit)
        if mode == "extract":
            result = do_extract(spec)
        elif mode == "render":
            result = asyncio.run(do_render(spec))
        else:
            raise RenderError(f"unknown child mode {mode!r}")
    except RenderError as exc:
        send({"error": exc.reason[:MAX_MESSAGE], "tail": exc.tail[-MAX_TAIL:], "permanent": exc.permanent})
        return 2
    except MemoryError:
        with contextlib.suppress(ValueError, OSError):  # room to report it
            resource.setrlimit(resource.RLIMIT_AS, (resource.getrlimit(resource.RLIMIT_AS)[1],) * 2)
        send({"error": f"preparing the recording needs more than {limit >> 20} MiB of memory: refused",
              "tail": "", "permanent": True})  # fmt: skip
        return 3
    except Exception as exc:
        send({"error": f"unexpected error in the render process: {type(exc).__name__}: {str(exc)[:300]}",
              "tail": traceback.format_exc()[-MAX_TAIL:], "permanent": False})  # fmt: skip
        return 4
    send({"result": result})
    return 0


def main(argv: list[str]) -> int:
    die_with_parent()
    root = logging.getLogger()
    root.handlers[:] = [_Forward()]
    root.setLevel(logging.INFO)
    return run(argv[0] if argv else "")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
