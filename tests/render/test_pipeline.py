"""Real renders (b3lb.render.pipeline) of short synthetic recordings (b3lb.testing.synthetic), checked
with ffmpeg itself: length, size, codecs, audio, and frames at known times (the slide's flat colour in
the slide area, the screen share while it runs, the webcam in its corner, the whiteboard stroke after
it was drawn and not before). Failures: a broken video, ffmpeg failing, stalling or being cancelled
end with a RenderError (or the cancellation) and leave no file behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from b3lb.render import annotate
from b3lb.render import ffmpeg as ff
from b3lb.render.archive import load_presentation
from b3lb.render.bbbformat import DeskshareEvent
from b3lb.render.graph import make_layout, place
from b3lb.render.model import Profile, RenderError
from b3lb.render.pipeline import render_profile
from b3lb.testing import synthetic as syn

TOLERANCE = 45  # per channel after lossy encoding; the synthetic colours differ by >= 127
GREY, BLACK = (128, 128, 128), (0, 0, 0)


def profile(**changes: object) -> Profile:
    values: dict[str, object] = {"id": 1, "name": "small", "width": 640, "height": 360, "webcam_width": 160,
                                 "webcam_height": 90, "webcam_stretch": False, "webcam_crop": False, "format": "MP4",
                                 "annotate": True, "backdrop": True}  # fmt: skip
    values.update(changes)
    return Profile(**values)  # type: ignore[arg-type]


def binary() -> str:
    return ff.find_ffmpeg()


def can_draw() -> bool:
    """An SVG rasteriser exists (librsvg in ffmpeg, resvg-py or cairosvg): drawings can be checked."""
    return annotate.choose_rasteriser(ff.ffmpeg_info(binary()).librsvg) is not None


NO_DRAWING = "no SVG rasteriser (ffmpeg without librsvg, no resvg-py, no cairosvg): drawings were not checked"


def streams(video: Path) -> tuple[float, str, str, tuple[int, int]]:
    """(duration, video codec, audio codec, size) as `ffmpeg -i` reports them."""
    text = subprocess.run([binary(), "-hide_banner", "-i", str(video)], capture_output=True).stderr.decode()
    duration = ff.parse_probe(text).duration or 0.0
    vcodec = re.search(r"Video: (\w+)", text)
    acodec = re.search(r"Audio: (\w+)", text)
    size = ff.parse_probe(text).video or (0, 0)
    return duration, vcodec.group(1) if vcodec else "", acodec.group(1) if acodec else "", size


def mean_volume(video: Path) -> float:
    text = subprocess.run([binary(), "-hide_banner", "-i", str(video), "-map", "0:a", "-af", "volumedetect", "-f",
                           "null", "-"], capture_output=True).stderr.decode()  # fmt: skip
    found = re.search(r"mean_volume: (-?[\d.]+|-inf) dB", text)
    assert found, text[-500:]
    return float(found.group(1)) if found.group(1) != "-inf" else -999.0


class Frames:
    """Decoded RGB frames of a video at chosen times (one ffmpeg run selects them by number)."""

    def __init__(self, video: Path, times: list[float], fps: int = 15) -> None:
        _, _, _, (self.width, self.height) = streams(video)
        numbers = sorted({round(t * fps) for t in times})
        select = "+".join(f"eq(n,{n})" for n in numbers)
        raw = subprocess.run([binary(), "-hide_banner", "-loglevel", "error", "-i", str(video), "-vf",
                              f"select='{select}',format=rgb24", "-fps_mode", "passthrough", "-f", "rawvideo", "-"],
                             capture_output=True, check=True).stdout  # fmt: skip
        size = self.width * self.height * 3
        assert len(raw) == size * len(numbers), "not every frame was found"
        self.frames = {n: raw[i * size : (i + 1) * size] for i, n in enumerate(numbers)}
        self.fps = fps

    def rgb(self, t: float, x: float, y: float) -> tuple[int, int, int]:
        frame, offset = self.frames[round(t * self.fps)], (int(y) * self.width + int(x)) * 3
        return frame[offset], frame[offset + 1], frame[offset + 2]


def near(actual: tuple[int, int, int], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - e) <= TOLERANCE for a, e in zip(actual, expected, strict=True))


def to_frame(rect: tuple[int, int, int, int], size: tuple[int, int], point: tuple[float, float]) -> tuple[float, float]:
    x, y, w, h = rect
    return x + point[0] * w / size[0], y + point[1] * h / size[1]


def check_frames(video: Path, truth: syn.SyntheticTruth, prof: Profile, *, webcam: bool) -> int:
    """Every stable moment of the truth, as the video shows it; returns how many were checked.
    Without a rasteriser the video has no drawings: their check is left out (`can_draw`)."""
    layout = make_layout(prof, webcam_video=webcam)
    slide_rect = place(layout, *truth.size)
    times = truth.sample_times(margin=0.3)
    annotated = [(t, a) for t in times for a in truth.annotations
                 if (s := truth.slide_at(t)) is not None and s.index == a.slide
                 and not truth.sharing_at(t)]  # fmt: skip
    if not can_draw():
        annotated = []
    frames = Frames(video, times)
    for t in times:
        if truth.sharing_at(t):
            assert truth.deskshare is not None
            rect = place(layout, *truth.deskshare.size)
            assert near(frames.rgb(t, rect[0] + rect[2] * 0.3, rect[1] + rect[3] * 0.5), truth.deskshare.rgb), t
        elif (shown := truth.slide_at(t)) is not None:
            probe = to_frame(slide_rect, truth.size, truth.slide_probe)
            assert near(frames.rgb(t, *probe), shown.rgb), (t, shown)
        if webcam and layout.webcam is not None:
            ww, wh = layout.webcam
            assert near(frames.rgb(t, layout.width - ww / 2, layout.height - wh / 2), syn.WEBCAM_RGB), t
    for t, stroke in annotated:
        point = to_frame(slide_rect, truth.size, stroke.point)
        expected = stroke.rgb if t >= stroke.timestamp else truth.slide_colours[stroke.slide]
        assert near(frames.rgb(t, *point), expected), (t, stroke.timestamp, frames.rgb(t, *point))
        x0, y0, x1, y1 = stroke.bbox
        for beside in ((x1 + truth.size[0] * 0.08, stroke.point[1]), (stroke.point[0], y1 + (y1 - y0) * 2)):
            off = to_frame(slide_rect, truth.size, beside)  # just beside the stroke: the slide
            assert near(frames.rgb(t, *off), truth.slide_colours[stroke.slide]), (t, beside)
    assert any(t >= a.timestamp for t, a in annotated) or not annotated
    return len(times)


def leftovers(folder: Path, keep: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p != keep)


def test_mp4_with_everything(tmp_path: Path) -> None:
    truth = syn.make_presentation(tmp_path / "rec", duration_s=8.0, slides=3, size=(640, 480), deskshare=(3.0, 5.0))
    prof = profile()
    seen: list[float] = []
    output = tmp_path / "out" / "video.mp4"
    result = asyncio.run(render_profile(load_presentation(tmp_path / "rec"), prof, output, progress=seen.append))
    assert result.path == output and result.size == output.stat().st_size > 0 and result.extension == "mp4"
    assert result.duration_s == truth.duration_s
    duration, vcodec, acodec, size = streams(output)
    assert abs(duration - truth.duration_s) <= 1.0 and (vcodec, acodec, size) == ("h264", "aac", (640, 360))
    assert mean_volume(output) > -40  # the tone, not silence
    assert check_frames(output, truth, prof, webcam=True) >= 5
    layout = make_layout(prof, webcam_video=True)
    frames = Frames(output, [1.0])
    assert near(frames.rgb(1.0, 560, 100), GREY)  # right of the 4:3 slide, above the webcam: the backdrop
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    assert leftovers(output.parent, output) == []  # no scratch folder, no partial file
    assert layout.webcam == (160, 90)
    with open(output, "rb") as video:  # +faststart: the index (moov) before the media data (mdat)
        head = video.read(64)
    assert 0 <= head.find(b"moov") < 64  # right after the ftyp box
    if not can_draw():
        pytest.skip(NO_DRAWING)


def test_webm_cropped_webcam_black_background(tmp_path: Path) -> None:
    truth = syn.make_presentation(tmp_path / "rec", duration_s=6.0, slides=2, size=(1280, 720), deskshare=None)
    prof = profile(format="WEBM", webcam_crop=True, backdrop=False, width=480, height=270, webcam_width=96,
                   webcam_height=96)  # fmt: skip
    output = tmp_path / "video.webm"
    result = asyncio.run(render_profile(load_presentation(tmp_path / "rec"), prof, output, threads=1))
    duration, vcodec, acodec, size = streams(output)
    assert result.extension == "webm" and abs(duration - truth.duration_s) <= 1.0
    assert (vcodec, acodec, size) == ("vp9", "opus", (480, 270))
    assert mean_volume(output) > -40
    assert check_frames(output, truth, prof, webcam=True) >= 3
    if not can_draw():
        pytest.skip(NO_DRAWING)


def test_audio_only_webcams_and_the_resvg_rasteriser(tmp_path: Path) -> None:
    pytest.importorskip("resvg_py", reason="resvg-py is not installed: the fallback rasteriser cannot be tested")
    truth = syn.make_presentation(tmp_path / "rec", duration_s=5.0, slides=2, size=(800, 600), deskshare=None,
                                  webcams=False)  # fmt: skip
    prof = profile()
    output = tmp_path / "video.mp4"
    asyncio.run(render_profile(load_presentation(tmp_path / "rec"), prof, output, rasteriser="resvg"))
    assert streams(output)[2] == "aac" and mean_volume(output) > -40
    check_frames(output, truth, prof, webcam=False)
    corner = Frames(output, [1.0]).rgb(1.0, 630, 350)
    assert near(corner, GREY)  # no webcam box: the 4:3 slide is centred, the corner is backdrop


def test_no_audio_no_drawings(tmp_path: Path) -> None:
    truth = syn.make_presentation(tmp_path / "rec", duration_s=4.0, slides=1, size=(640, 360), deskshare=None,
                                  webcams=False, audio=False)  # fmt: skip
    presentation = load_presentation(tmp_path / "rec")
    assert presentation.webcams is None
    prof = profile(annotate=False)
    output = tmp_path / "video.mp4"
    asyncio.run(render_profile(presentation, prof, output))
    duration, _, acodec, _ = streams(output)
    assert abs(duration - 4.0) <= 1.0 and acodec == "aac" and mean_volume(output) < -80  # silence, but a track
    stroke = truth.annotations[0]
    layout = make_layout(prof, webcam_video=False)
    point = to_frame(place(layout, *truth.size), truth.size, stroke.point)
    assert near(Frames(output, [3.5]).rgb(3.5, *point), truth.slide_colours[1])  # annotate=False: no stroke


def test_broken_webcams_video(tmp_path: Path) -> None:
    syn.make_presentation(tmp_path / "rec", duration_s=2.0, slides=1, deskshare=None)
    (tmp_path / "rec" / "video" / "webcams.webm").write_bytes(b"\x1aE\xdf\xa3 broken" * 100)
    output = tmp_path / "out" / "video.mp4"
    with pytest.raises(RenderError, match="webcams.webm is not a readable video"):
        asyncio.run(render_profile(load_presentation(tmp_path / "rec"), profile(), output))
    assert not output.exists()


def fake_ffmpeg(tmp_path: Path, behaviour: str) -> str:
    """A stand-in binary: answers -version/-decoders/-i like ffmpeg, then `behaviour` for the render."""
    script = tmp_path / "fake-ffmpeg"
    script.write_text(f"""#!/bin/sh
case "$*" in
  *-version*) echo "ffmpeg version 7.1 Copyright"; exit 0;;
  *-decoders*) exit 0;;
  *-progress*) ;;
  *) echo "  Duration: 00:00:02.00, start: 0" >&2
     echo "  Stream #0:0: Video: vp9, yuv420p, 320x240, 15 fps" >&2
     echo "  Stream #0:1: Audio: opus, 48000 Hz" >&2; exit 1;;
esac
echo $$ > "{tmp_path}/pid"
{behaviour}
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_ffmpeg_failure_reports_its_last_lines(tmp_path: Path) -> None:
    syn.make_presentation(tmp_path / "rec", duration_s=2.0, slides=1, deskshare=None)
    lines = "; ".join(f"echo 'line {i}' >&2" for i in range(30))
    binary_path = fake_ffmpeg(tmp_path, f"echo out_time_us=500000; {lines}; echo 'Conversion failed!' >&2; exit 3")
    output = tmp_path / "out" / "video.mp4"
    with pytest.raises(RenderError) as caught:
        asyncio.run(render_profile(load_presentation(tmp_path / "rec"), profile(), output, ffmpeg=binary_path))
    assert caught.value.reason == "ffmpeg failed (3): Conversion failed!"
    tail = caught.value.tail.splitlines()
    assert len(tail) == ff.TAIL_LINES and tail[-1] == "Conversion failed!" and tail[0] == "line 11"
    assert leftovers(output.parent, output) == [] and not output.exists()


def test_cancel_kills_ffmpeg(tmp_path: Path) -> None:
    syn.make_presentation(tmp_path / "rec", duration_s=2.0, slides=1, deskshare=None)
    binary_path = fake_ffmpeg(tmp_path, "echo out_time_us=100000; exec sleep 60")
    output = tmp_path / "out" / "video.mp4"

    async def scenario() -> None:
        task = asyncio.create_task(render_profile(load_presentation(tmp_path / "rec"), profile(), output,
                                                  ffmpeg=binary_path))  # fmt: skip
        for _ in range(200):
            if (tmp_path / "pid").exists():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert leftovers(output.parent, output) == []


def test_stalled_ffmpeg_is_stopped(tmp_path: Path) -> None:
    binary_path = fake_ffmpeg(tmp_path, "echo 'stuck' >&2; exec sleep 60")
    with pytest.raises(RenderError, match="no progress for 1 s") as caught:
        asyncio.run(ff.run(binary_path, ["-progress", "pipe:1"], cwd=tmp_path, duration=2.0, stall_s=1.0))
    assert caught.value.tail == "stuck"


def lavfi(source: str) -> list[str]:
    """ffmpeg's arguments for a paced synthetic input written nowhere, with progress on stdout."""
    return ["-hide_banner", "-nostdin", "-re", "-f", "lavfi", "-i", source, "-progress", "pipe:1", "-nostats",
            "-f", "null", "-"]  # fmt: skip


def test_ffmpeg_printing_progress_without_advancing_is_stopped(tmp_path: Path) -> None:
    # one frame per 5 s, paced: ffmpeg prints a progress block every 0.5 s, but its output time stands still
    args = lavfi("color=red:size=32x32:rate=0.2")
    with pytest.raises(RenderError, match=r"no progress for 2 s \(stuck at 5.0 s of 60.0 s\): stopped"):
        asyncio.run(ff.run(binary(), args, cwd=tmp_path, duration=60.0, stall_s=2.0))


def test_ffmpeg_running_too_long_is_stopped(tmp_path: Path) -> None:
    seen: list[float] = []
    with pytest.raises(RenderError, match=r"ffmpeg ran longer than 2 s \(at [0-9.]+ s of 600.0 s\): stopped"):
        asyncio.run(ff.run(binary(), lavfi("color=red:size=32x32:rate=25"), cwd=tmp_path, duration=600.0,
                           progress=seen.append, stall_s=30.0, max_s=2.0))  # fmt: skip
    assert seen and 0 < seen[-1] < 0.1  # it advanced all along: the wall-clock cap stopped it
    assert ff.wall_cap(3600.0) == 2 * 3600.0 + ff.WALL_BASE_S


ORPHAN_SCRIPT = """
import asyncio, resource, sys
from pathlib import Path
from b3lb.render import ffmpeg as ff
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))
asyncio.run(ff.run(sys.argv[1], ["-progress", "pipe:1"], cwd=Path(sys.argv[2]), duration=60.0))
"""


def test_ffmpeg_dies_with_its_parent_and_drops_its_address_space_limit(tmp_path: Path) -> None:
    """The render process (which lowers its own RLIMIT_AS) is SIGKILLed: its ffmpeg goes too, though it
    runs in its own session; and ffmpeg ran without the lowered limit."""
    binary_path = fake_ffmpeg(tmp_path, f'ulimit -v > "{tmp_path}/limit"; exec sleep 60')
    parent = subprocess.Popen([".venv/bin/python", "-c", ORPHAN_SCRIPT, binary_path, str(tmp_path)],
                              cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    try:
        for _ in range(200):
            if (tmp_path / "pid").exists() and (tmp_path / "limit").exists():
                break
            time.sleep(0.05)
        pid = int((tmp_path / "pid").read_text())
        assert (tmp_path / "limit").read_text().strip() == "unlimited"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        for _ in range(100):
            if not alive(pid):
                break
            time.sleep(0.05)
        assert not alive(pid), "ffmpeg outlived its killed parent"
    finally:
        parent.kill()
        parent.wait()
        with contextlib.suppress(Exception):
            os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)


def alive(pid: int) -> bool:
    """The process runs (a zombie waiting for init to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


MPD = """<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011" type="static"
 mediaPresentationDuration="PT2S" minBufferTime="PT1S"><Period><AdaptationSet mimeType="video/webm">
<Representation id="1" bandwidth="1000" width="320" height="240"><BaseURL>{url}</BaseURL></Representation>
</AdaptationSet></Period></MPD>
"""


@pytest.mark.parametrize("target", ["file", "http"])
def test_hostile_webcams_cannot_choose_a_demuxer(tmp_path: Path, target: str) -> None:
    """A DASH manifest saved as webcams.webm would make ffmpeg read any local file or URL it names: the
    file is read as Matroska, only from the file protocol, and so it is just a broken video."""
    truth = syn.make_presentation(tmp_path / "rec", duration_s=2.0, slides=1, deskshare=None)
    secret = tmp_path / "secret" / "other.webm"
    secret.parent.mkdir()
    syn.colour_video(secret, [(2.0, (255, 0, 255))], (320, 240), 5, ffmpeg=binary())
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.0)
    url = str(secret) if target == "file" else f"http://127.0.0.1:{listener.getsockname()[1]}/other.webm"
    (tmp_path / "rec" / "video" / "webcams.webm").write_text(MPD.format(url=url))
    output = tmp_path / "out" / "video.mp4"
    try:
        with pytest.raises(RenderError, match="webcams.webm is not a readable video"):
            asyncio.run(render_profile(load_presentation(tmp_path / "rec"), profile(), output))
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()
    assert truth.duration_s == 2.0 and not output.parent.exists()  # failed before anything was written


def test_too_many_share_spans_are_reported(tmp_path: Path) -> None:
    syn.make_presentation(tmp_path / "rec", duration_s=2.0, slides=1, deskshare=(0.5, 1.5))
    source = load_presentation(tmp_path / "rec")
    # 4,100 separate flickers of the share: the graph keeps the 4,000 longest, and says so
    source.deskshare = [DeskshareEvent(0.1 + i * 0.0004, 0.1 + i * 0.0004 + 0.0001 * (1 + i % 3), 640, 480)
                        for i in range(4100)]  # fmt: skip
    output = tmp_path / "out" / "video.mp4"
    asyncio.run(render_profile(source, profile(annotate=False), output))
    assert output.stat().st_size > 0
    assert [w for w in source.warnings if w.startswith("screen share")] == [
        "screen share: 4100 on/off spans, only the 4000 longest are shown"]  # fmt: skip
