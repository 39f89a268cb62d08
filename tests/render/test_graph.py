"""The ffmpeg command (b3lb.render.graph) and the ffmpeg helpers (b3lb.render.ffmpeg): the graph's
structure for each combination of parts, the placement arithmetic against what ffmpeg really draws,
concat lists, encoder settings, probing output and progress lines."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest

from b3lb.render import ffmpeg as ff
from b3lb.render.graph import (
    MOVIE_OPTIONS,
    GraphPlan,
    Layout,
    command,
    concat_list,
    enable_expression,
    filter_graph,
    fit_chain,
    make_layout,
    place,
    webcam_mode,
)
from b3lb.render.model import Profile, RenderError
from b3lb.render.timeline import Span
from b3lb.testing import synthetic as syn


def profile(**changes: object) -> Profile:
    values: dict[str, object] = {"id": 1, "name": "hd", "width": 1280, "height": 720, "webcam_width": 320,
                                 "webcam_height": 180, "webcam_stretch": False, "webcam_crop": False, "format": "MP4",
                                 "annotate": True, "backdrop": True}  # fmt: skip
    values.update(changes)
    return Profile(**values)  # type: ignore[arg-type]


def plan(**changes: object) -> GraphPlan:
    layout = changes.pop("layout", make_layout(profile(), webcam_video=True))
    values: dict[str, object] = {"layout": layout, "duration": 10.0, "slides_list": "slides.ffconcat",
                                 "webcams": "/r/video/webcams.webm", "webcam_video": True,
                                 "webcam_audio": True}  # fmt: skip
    values.update(changes)
    return GraphPlan(**values)  # type: ignore[arg-type]


def test_profile_from_row_and_layout() -> None:
    row = {"id": 3, "name": "odd", "width": 1281, "height": 721, "webcam_width": 321, "webcam_height": 2000,
           "webcam_stretch": 0, "webcam_crop": 1, "format": "webm", "annotate": 1, "backdrop": 0}  # fmt: skip
    odd = Profile.from_row(row)
    assert odd.format == "WEBM" and odd.extension == "webm" and odd.webcam_crop and not odd.backdrop
    layout = make_layout(odd, webcam_video=True)
    assert (layout.width, layout.height, layout.webcam, layout.background) == (1280, 720, (320, 720), "0x000000")
    assert make_layout(odd, webcam_video=False).webcam is None
    assert webcam_mode(odd) == "crop" and webcam_mode(profile(webcam_stretch=True)) == "stretch"
    assert webcam_mode(profile()) == "fit"


def test_full_graph_structure() -> None:
    graph, inputs, audio = filter_graph(plan(
        annotations_list="annotations.ffconcat", annotation_spans=[Span(1, 2), Span(4, 5.5)],
        deskshare="/r/deskshare/deskshare.webm", deskshare_spans=[Span(3, 6)],
    ))  # fmt: skip
    assert inputs == ["/r/video/webcams.webm", "/r/deskshare/deskshare.webm"] and audio == "0:a:0"
    chains = graph.strip().split(";\n")
    assert chains[0].startswith(f"movie=slides.ffconcat:{MOVIE_OPTIONS},scale=") and chains[0].endswith(
        "fps=15,tpad=stop=-1:stop_mode=clone,trim=end_frame=150[slides]"
    )
    assert chains[1].startswith(f"movie=annotations.ffconcat:{MOVIE_OPTIONS},") and chains[1].endswith("fps=15[ann]")
    assert chains[2] == ("[slides][ann]overlay=0:0:enable='if(lt(t,4.000),between(t,1.000,2.000),"
                         "between(t,4.000,5.500))':"
                         "eof_action=pass:format=yuv420[drawn]")  # fmt: skip
    assert chains[3].startswith(
        "[1:v]select='between(t,3.000,6.000)+isnan(prev_selected_t)+gte(t-prev_selected_t,1.0)'"
    )
    assert chains[4] == (
        "[drawn][share]overlay=0:0:enable='between(t,3.000,6.000)':eof_action=pass:format=yuv420[shared]"
    )
    assert chains[5].startswith("[0:v]fps=15,scale=320:180:force_original_aspect_ratio=decrease")
    assert chains[6] == "[shared][cam]overlay=x=960:y=540:eof_action=pass:format=yuv420[withcam]"
    assert chains[7].startswith("[withcam]format=yuv420p,") and chains[7].endswith("[vout]")
    assert len(chains) == 8


def test_graph_without_optional_parts() -> None:
    layout = make_layout(profile(), webcam_video=False)
    graph, inputs, audio = filter_graph(plan(layout=layout, webcams=None, webcam_video=False, webcam_audio=False))
    assert inputs == [] and audio == "[aout]"
    assert "anullsrc=r=48000:cl=mono,atrim=duration=10.000[aout]" in graph
    assert "overlay" not in graph and "[slides]format=yuv420p" in graph
    # audio only (a meeting without cameras): the file is an input, but nothing is overlaid
    graph, inputs, audio = filter_graph(plan(layout=layout, webcam_video=False))
    assert inputs == ["/r/video/webcams.webm"] and audio == "0:a:0" and "[cam]" not in graph
    # annotations without any state, deskshare without spans: left out
    graph, inputs, _ = filter_graph(plan(annotations_list="a.ffconcat", deskshare="/r/d.webm"))
    assert "[ann]" not in graph and "[share]" not in graph and inputs == ["/r/video/webcams.webm"]


@pytest.mark.parametrize(("mode", "expected"), [
    ("stretch", "scale=320:180:out_color_matrix"), ("crop", "force_original_aspect_ratio=increase:"),
    ("fit", "pad=320:180:(ow-iw)/2:(oh-ih)/2:color=black"),
])  # fmt: skip
def test_webcam_modes(mode: str, expected: str) -> None:
    graph, _, _ = filter_graph(plan(webcam_mode=mode))
    cam = next(line for line in graph.splitlines() if line.startswith("[0:v]"))
    assert expected in cam
    if mode == "crop":
        assert "crop=320:180" in cam


def test_command_and_encoders() -> None:
    args, graph = command(plan(), profile(), "graph.txt", "/out/v.mp4.part", threads=2)
    assert args[args.index("-/filter_complex") + 1] == "graph.txt" and "[vout]" in graph
    assert args[-1] == "file:/out/v.mp4.part" and args[args.index("-t") + 1] == "10.000"
    for pair in (
        ["-c:v", "libx264"],
        ["-preset", "veryfast"],
        ["-movflags", "+faststart"],
        ["-c:a", "aac"],
        ["-threads", "2"],
        ["-f", "mp4"],
        ["-progress", "pipe:1"],
    ):
        assert any(args[i : i + 2] == pair for i in range(len(args))), pair
    # the demuxer is chosen by the name and only local files are read, never what the content asks for
    where = args.index("file:/r/video/webcams.webm")
    assert args[where - 5 : where] == ["-f", "matroska", "-protocol_whitelist", "file", "-i"]
    mp4, _ = command(plan(webcams="/r/video/webcams.mp4"), profile(), "graph.txt", "/out/v.mp4.part")
    assert mp4[mp4.index("file:/r/video/webcams.mp4") - 5 : mp4.index("file:/r/video/webcams.mp4") - 3] == [
        "-f", "mov"]  # fmt: skip
    with pytest.raises(RenderError, match="no known demuxer"):
        command(plan(webcams="/r/video/webcams.m3u8"), profile(), "graph.txt", "/out/v.mp4.part")
    webm, _ = command(
        plan(), profile(format="WEBM"), "graph.txt", "/out/v.webm.part", script_option="-filter_complex_script"
    )
    assert webm[webm.index("-filter_complex_script") + 1] == "graph.txt" and "-threads" not in webm
    for pair in (
        ["-c:v", "libvpx-vp9"],
        ["-deadline", "realtime"],
        ["-cpu-used", "8"],
        ["-row-mt", "1"],
        ["-c:a", "libopus"],
        ["-f", "webm"],
        ["-b:v", "0"],
    ):
        assert any(webm[i : i + 2] == pair for i in range(len(webm))), pair


def test_concat_list_and_enable_expression() -> None:
    text = concat_list([("a.png", 1.0), ("a.png", 2.5), ("b.png", 0.0), ("c.png", 1.25)])
    assert text == ("ffconcat version 1.0\nfile 'a.png'\nduration 3.500000\nfile 'c.png'\nduration 1.250000\n"
                    "file 'c.png'\n")  # fmt: skip
    for bad in ("../x.png", "/etc/passwd", "a'b.png", ".hidden", "sub/a.png", "a\nfile 'b'", ""):
        with pytest.raises(ValueError, match="plain file name"):
            concat_list([(bad, 1.0)])
    assert enable_expression([]) == "0"
    assert enable_expression([Span(5, 6), Span(1, 2)]) == (
        "if(lt(t,5.000),between(t,1.000,2.000),between(t,5.000,6.000))")  # fmt: skip
    assert enable_expression([Span(1, 3), Span(2, 4)]) == "between(t,1.000,4.000)"  # overlaps joined


@pytest.mark.parametrize("count", [3, 150, 4000])
def test_enable_expression_as_ffmpeg_evaluates_it(tmp_path: Path, count: int) -> None:
    """ffmpeg keeps exactly the frames inside the spans, also for thousands of spans (a flat sum of more
    than 100 terms is refused by ffmpeg's expression parser)."""
    # frames every 2 ms, span ends on odd milliseconds: no frame on a boundary (floating-point ties)
    spans = [Span(round(i * 0.02 + 0.001 + (i % 3) * 0.004, 3), round(i * 0.02 + 0.007 + (i % 5) * 0.004, 3))
             for i in range(count)]  # fmt: skip
    duration = count * 0.02 + 0.1
    graph = tmp_path / "graph.txt"
    graph.write_text(f"color=red:size=16x16:rate=500:d={duration:.3f},select='{enable_expression(spans)}',"
                     "showinfo[out]")  # fmt: skip
    done = subprocess.run([ff.find_ffmpeg(), "-hide_banner", "-nostdin", "-/filter_complex", str(graph), "-map",
                           "[out]", "-f", "null", "-"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    shown = [int(n) for n in re.findall(r"\bpts:\s*(\d+)", done.stderr)]
    expected = sorted({n for s in spans for n in range(math.ceil(s.start * 500), math.floor(s.end * 500) + 1)})
    assert shown == expected


@pytest.mark.parametrize(("frame", "webcam", "image"), [
    ((1280, 720), (320, 180), (1600, 1200)), ((1280, 720), (320, 180), (1601, 899)),
    ((1280, 720), (320, 180), (33, 1000)), ((640, 360), None, (640, 480)), ((1920, 1080), (320, 180), (1280, 720)),
    ((854, 480), (160, 90), (999, 7)),
])  # fmt: skip
def test_place_matches_what_ffmpeg_draws(tmp_path: Path, frame: tuple[int, int], webcam: tuple[int, int] | None,
                                         image: tuple[int, int]) -> None:  # fmt: skip
    """The drawings are placed by place(); the slide by ffmpeg's expressions: they must agree."""
    binary = ff.find_ffmpeg()
    layout = Layout(frame[0], frame[1], webcam, "0x000000")
    source = tmp_path / "slide.png"
    source.write_bytes(syn.png(*image, (255, 255, 255)))
    raw = subprocess.run([binary, "-hide_banner", "-loglevel", "error", "-i", str(source), "-vf",
                          f"{fit_chain(layout)},format=rgb24", "-frames:v", "1", "-f", "rawvideo", "-"],
                         capture_output=True, check=True).stdout  # fmt: skip
    assert len(raw) == frame[0] * frame[1] * 3
    lit = [(i // 3 % frame[0], i // 3 // frame[0]) for i in range(0, len(raw), 3) if raw[i] > 128]
    xs, ys = [p[0] for p in lit], [p[1] for p in lit]
    x, y, w, h = place(layout, *image)
    assert (min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1) == (x, y, w, h)
    if webcam is not None and w <= frame[0] - webcam[0]:
        assert x + w <= frame[0] - webcam[0]  # narrow slides stay clear of the webcam column


def test_parse_probe() -> None:
    text = """Input #0, matroska,webm, from 'webcams.webm':
  Duration: 00:10:00.04, start: 0.000000, bitrate: 104 kb/s
  Stream #0:0: Video: vp9 (Profile 0), yuv420p(tv, progressive), 320x240, SAR 1:1 DAR 4:3, 15 fps, 15 tbr, 1k tbn
  Stream #0:1: Audio: opus, 48000 Hz, mono, fltp"""
    info = ff.parse_probe(text)
    assert info == ff.MediaInfo(600.04, (320, 240), True)
    audio_only = ff.parse_probe(
        "  Duration: 01:00:01.50, start\n  Stream #0:0(eng): Audio: aac (LC) (mp4a / 0x6134706D)"
    )
    assert audio_only == ff.MediaInfo(3601.5, None, True)
    codec_tag = ff.parse_probe(
        "  Stream #0:0(und): Video: h264 (High) (avc1 / 0x31637661), yuv420p, 1280x720 [SAR 1:1]"
    )
    assert codec_tag.video == (1280, 720) and codec_tag.duration is None and not codec_tag.audio


def test_progress_lines() -> None:
    assert ff._progress_value("out_time_us=1500000") == 1.5
    assert ff._progress_value("out_time_ms=2000000") == 2.0  # microseconds despite the name
    assert ff._progress_value("out_time_us=N/A") is None and ff._progress_value("frame=10") is None


def test_ffmpeg_lookup_and_info(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="not an executable"):
        ff.find_ffmpeg(str(tmp_path / "nope"))
    binary = ff.find_ffmpeg()
    info = ff.ffmpeg_info(binary)
    assert info.version >= (4, 0) and info.script_option in ("-/filter_complex", "-filter_complex_script")
    assert ff.FfmpegInfo("x", (6, 1), False).script_option == "-filter_complex_script"
    assert ff.FfmpegInfo("x", (0, 0), False).script_option == "-/filter_complex"
