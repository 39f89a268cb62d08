"""Render job steps in a child process (b3lb.render.isolated, b3lb.render.child): extraction and a real
render of a synthetic recording give the pipeline's result; a hostile archive fails with a permanent
error and leaves the parent's memory alone; a cancelled render leaves no process and no file; progress
arrives; the parent's event loop keeps ticking while the child builds a heavy timeline."""

from __future__ import annotations

import asyncio
import gzip
import re
import resource
import subprocess
import tarfile
import time
from pathlib import Path

import psutil
import pytest

from b3lb.render import ffmpeg as ff
from b3lb.render import isolated
from b3lb.render.model import Profile, RenderError
from b3lb.testing import synthetic as syn

LIMITS = {"max_bytes": 1 << 30, "max_files": 1000}
TOLERANCE = 45


def profile(**changes: object) -> Profile:
    values: dict[str, object] = {"id": 1, "name": "small", "width": 640, "height": 360, "webcam_width": 160,
                                 "webcam_height": 90, "webcam_stretch": False, "webcam_crop": False, "format": "MP4",
                                 "annotate": True, "backdrop": True}  # fmt: skip
    values.update(changes)
    return Profile(**values)  # type: ignore[arg-type]


def tar_folder(folder: Path, target: Path) -> Path:
    with tarfile.open(target, "w") as archive:
        archive.add(folder, arcname=".")
    return target


def probe(video: Path) -> tuple[ff.MediaInfo, str]:
    text = subprocess.run([ff.find_ffmpeg(), "-hide_banner", "-i", str(video)], capture_output=True).stderr.decode()
    return ff.parse_probe(text), text


def centre_pixel(video: Path, at: float) -> tuple[int, int, int]:
    raw = subprocess.run([ff.find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-ss", str(at), "-i", str(video),
                          "-frames:v", "1", "-vf", "crop=2:2:iw/2:ih/2,format=rgb24", "-f", "rawvideo", "-"],
                         capture_output=True, check=True).stdout  # fmt: skip
    return raw[0], raw[1], raw[2]


def descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_extract_and_render_in_a_child(tmp_path: Path) -> None:
    truth = syn.make_presentation(tmp_path / "rec", duration_s=6.0, slides=2, size=(640, 360), deskshare=None)
    archive = tar_folder(tmp_path / "rec", tmp_path / "upload.tar")
    handle = isolated.extract(archive, tmp_path / "sync", **LIMITS)  # as the worker calls it, in a thread
    assert handle.root == (tmp_path / "sync").resolve() and handle.slides == 2 and handle.drawings > 0
    seen: list[float] = []
    output = tmp_path / "out" / "video.mp4"

    async def go() -> object:
        presentation = await isolated.extract_async(archive, tmp_path / "async", **LIMITS)
        assert presentation.record_id == handle.record_id
        return await isolated.render(presentation, profile(), output, progress=seen.append)

    result = asyncio.run(go())
    assert result.path == output and result.size == output.stat().st_size > 0  # type: ignore[attr-defined]
    assert result.extension == "mp4" and result.duration_s == 6.0  # type: ignore[attr-defined]
    info, text = probe(output)
    assert info.duration is not None and abs(info.duration - 6.0) <= 1.0
    assert info.video == (640, 360) and info.audio
    assert "Video: h264" in text and "Audio: aac" in text
    first = truth.slide_at(1.0)
    assert first is not None
    assert all(abs(a - b) <= TOLERANCE for a, b in zip(centre_pixel(output, 1.0), first.rgb, strict=True))
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)  # progress lines arrived, in order
    assert sorted(p.name for p in output.parent.iterdir()) == ["video.mp4"]  # no scratch left


def test_webm_in_a_child(tmp_path: Path) -> None:
    syn.make_presentation(tmp_path / "rec", duration_s=3.0, slides=1, size=(320, 180), deskshare=None)
    output = tmp_path / "video.webm"
    result = asyncio.run(isolated.render(isolated.IsolatedPresentation(tmp_path / "rec"),
                                         profile(format="WEBM", width=320, height=180), output))  # fmt: skip
    _, text = probe(output)
    assert result.extension == "webm" and "Video: vp9" in text and "Audio: opus" in text


def longname_bomb(target: Path, declared: int) -> Path:
    """A GNU longname header declaring `declared` bytes (zeros: a few hundred KB of gzip), then a member."""
    head = tarfile.TarInfo("././@LongLink")
    head.size, head.type = declared, tarfile.GNUTYPE_LONGNAME
    with gzip.open(target, "wb", compresslevel=9) as sink:
        sink.write(head._create_header(head.get_info(), tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))  # type: ignore[attr-defined]
        block, left = b"\0" * (1 << 20), declared
        while left > 0:
            sink.write(block[: min(left, len(block))])
            left -= len(block)
        sink.write(b"\0" * ((-declared) % 512))
        sink.write(tarfile.TarInfo("metadata.xml").tobuf() + b"\0" * 1024)
    return target


def test_hostile_archive_fails_permanently_and_the_parent_stays_small(tmp_path: Path) -> None:
    bomb = longname_bomb(tmp_path / "bomb.tar.gz", 300 << 20)
    assert bomb.stat().st_size < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(RenderError) as caught:
        asyncio.run(isolated.extract_async(bomb, tmp_path / "out", **LIMITS))
    assert caught.value.permanent and "extended tar header of 314572800 bytes" in caught.value.reason
    with pytest.raises(RenderError) as again:  # the thread flavour says the same
        isolated.extract(bomb, tmp_path / "out2", **LIMITS)
    assert again.value.permanent and again.value.reason == caught.value.reason
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 50_000, f"the parent grew by {grown_kb} KB"
    assert not [p for p in descendants() if "b3lb.render.child" in " ".join(p.cmdline())]


def test_broken_archive_is_permanent_but_a_missing_folder_is_not(tmp_path: Path) -> None:
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(RenderError, match="not a readable tar file") as caught:
        isolated.extract(tmp_path / "junk.tar", tmp_path / "out", **LIMITS)
    assert caught.value.permanent
    with pytest.raises(RenderError, match="no extracted presentation") as missing:
        asyncio.run(isolated.render(isolated.IsolatedPresentation(tmp_path / "nowhere"), profile(),
                                    tmp_path / "v.mp4"))  # fmt: skip
    assert not missing.value.permanent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.tar", "out"]


def test_memory_limit_makes_a_huge_parse_fail_permanently(tmp_path: Path) -> None:
    syn.make_presentation(tmp_path / "rec", duration_s=3.0, slides=1, size=(320, 180), deskshare=None, webcams=False)
    heavy_drawings(tmp_path / "rec", 60_000, points=60)
    with pytest.raises(RenderError) as caught:
        asyncio.run(isolated.render(isolated.IsolatedPresentation(tmp_path / "rec"), profile(), tmp_path / "v.mp4",
                                    memory_limit=150 << 20))  # fmt: skip
    assert caught.value.permanent, caught.value.reason


def test_cancelled_render_kills_the_child_and_its_ffmpeg(tmp_path: Path) -> None:
    syn.make_presentation(tmp_path / "rec", duration_s=120.0, slides=4, size=(640, 360), deskshare=None)
    output = tmp_path / "out" / "video.mp4"
    seen: list[int] = []

    async def go() -> None:
        task = asyncio.create_task(isolated.render(isolated.IsolatedPresentation(tmp_path / "rec"),
                                                   profile(width=1280, height=720), output, threads=1))  # fmt: skip
        for _ in range(600):  # until ffmpeg renders (its -progress run), at most a minute
            await asyncio.sleep(0.1)
            family = descendants()
            if any("-progress" in p.cmdline() for p in family if not gone(p.pid)):
                seen.extend(p.pid for p in family)
                break
        assert not task.done(), "the render ended before it could be cancelled"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert len(seen) >= 2, "no child with an ffmpeg was seen"
    assert all(gone(pid) for pid in seen), "a render process outlived its cancelled task"
    assert not output.exists() and list(output.parent.iterdir()) == []


def heavy_drawings(folder: Path, count: int, *, points: int = 2) -> None:
    """Replace the synthetic drawings with `count` pencil strokes over the recording's first 3 s."""
    path = folder / "shapes.svg"
    line = "".join(f"L{(p * 37) % 300} {(p * 11) % 170}" for p in range(points))
    shapes = "".join(f'<g id="image1-draw{i}" class="shape" timestamp="{i * 3.0 / count:.4f}" undo="-1" '
                     f'shape="image1-pencil{i}" style="stroke:#ff00ff;stroke-width:3;fill:none">'
                     f'<path d="M{i % 300} 10{line}"/></g>' for i in range(count))  # fmt: skip
    text = re.sub(r'(<g class="canvas"[^>]*>).*?(</g></svg>)', lambda m: m.group(1) + shapes + m.group(2),
                  path.read_text(), count=1, flags=re.S)  # fmt: skip
    path.write_text(text)


def test_event_loop_keeps_ticking_while_the_child_builds_a_heavy_timeline(tmp_path: Path) -> None:
    # 20,000 drawings: ~3 s of timeline in the child (13 s on the loop before it was isolated)
    syn.make_presentation(tmp_path / "rec", duration_s=3.0, slides=1, size=(320, 180), deskshare=None, webcams=False)
    heavy_drawings(tmp_path / "rec", 20_000)
    gaps: list[float] = []

    async def go() -> None:
        async def tick() -> None:
            while True:
                started = time.perf_counter()
                await asyncio.sleep(0.01)
                gaps.append(time.perf_counter() - started)

        ticker = asyncio.create_task(tick())
        try:
            await isolated.render(isolated.IsolatedPresentation(tmp_path / "rec"),
                                  profile(width=320, height=180), tmp_path / "v.mp4")  # fmt: skip
        finally:
            ticker.cancel()

    started = time.perf_counter()
    asyncio.run(go())
    assert time.perf_counter() - started > 1.0, "the render was too light to show anything"
    assert max(gaps) < 0.5, f"the event loop stalled for {max(gaps):.2f} s"
