"""The synthetic recording generator (b3lb.testing.synthetic): the published folder is well-formed BBB
format, its content is what the truth says (slide colours, intervals, annotation, deskshare, webcams,
audio, durations, checked by decoding with ffmpeg), and the same arguments give the same bytes."""

from __future__ import annotations

import hashlib
import itertools
import re
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from lxml import etree

from b3lb.testing import synthetic as syn

PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}href"
TOLERANCE = 40  # per channel, after lossy VP9 and YUV 4:2:0: the colours differ by >= 127


def parse(path: Path) -> etree._Element:
    return etree.fromstring(path.read_bytes(), PARSER)


def png_pixels(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, channels, raw rows with filter bytes) of a PNG whose CRCs all check."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        assert struct.unpack(">I", data[position + 8 + length : position + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = body
        position += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and colour in (2, 6)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(chunks[b"IDAT"])
    assert len(raw) == height * (1 + channels * width)
    return width, height, channels, raw


def flat_colour(data: bytes) -> tuple[tuple[int, int], tuple[int, ...]]:
    """Size and colour of a PNG that is one colour throughout (filter 0 on every row)."""
    width, height, channels, raw = png_pixels(data)
    pixel = tuple(raw[1 : 1 + channels])
    assert raw == (b"\x00" + bytes(pixel) * width) * height
    return (width, height), pixel


def ffmpeg() -> str:
    exe = syn.ffmpeg_exe()
    if exe is None:
        pytest.skip("no ffmpeg (imageio-ffmpeg is not installed and there is none on PATH)")
    return exe


def streams(path: Path) -> str:
    done = subprocess.run([ffmpeg(), "-hide_banner", "-i", str(path)], capture_output=True, text=True, timeout=60)
    return "\n".join(line for line in done.stderr.splitlines() if "Stream #" in line)


def decoded_seconds(path: Path, stream: str) -> float:
    """How long the decoded stream (`v` or `a`) lasts: ffmpeg's out_time after decoding all of it."""
    done = subprocess.run(
        [ffmpeg(), "-hide_banner", "-nostats", "-i", str(path), "-map", f"0:{stream}", "-f", "null", "-",
         "-progress", "pipe:1"], capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    times = re.findall(r"^out_time_us=(\d+)$", done.stdout, re.MULTILINE)
    return int(times[-1]) / 1e6


def sample(path: Path, seconds: float, x: float = 0.5, y: float = 0.5) -> tuple[int, int, int]:
    """The mean colour of an 8x8 block at (x, y) (fractions of the frame) of the frame shown at `seconds`."""
    done = subprocess.run(
        [ffmpeg(), "-hide_banner", "-loglevel", "error", "-ss", f"{seconds:.3f}", "-i", str(path), "-frames:v", "1",
         "-vf", f"crop=8:8:(iw-8)*{x}:(ih-8)*{y},scale=1:1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert len(done.stdout) == 3, done.stderr
    return done.stdout[0], done.stdout[1], done.stdout[2]


def near(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return all(abs(a - b) <= TOLERANCE for a, b in zip(got, want, strict=True))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, syn.SyntheticTruth]:
    folder = tmp_path_factory.mktemp("synthetic") / "pub"
    truth = syn.make_presentation(folder, duration_s=24, slides=5, size=(640, 360), deskshare=(10.0, 12.0),
                                  meeting={"external_id": "room-1", "name": "A & <B>", "meta": {"gl-listed": "true"}})
    return folder, truth


# The folder ------------------------------------------------------------------------------------


def test_metadata_and_event_documents(made: tuple[Path, syn.SyntheticTruth]) -> None:
    folder, truth = made
    meta = parse(folder / "metadata.xml")
    assert [child.tag for child in meta] == [
        "id", "state", "published", "start_time", "end_time", "participants", "meeting", "meta", "playback",
        "raw_size",
    ]
    assert meta.findtext("playback/duration") == "24000" and truth.duration_s == 24.0
    assert int(meta.findtext("end_time")) - int(meta.findtext("start_time")) == 24000
    assert meta.find("meeting").get("externalId") == "room-1" and meta.find("meeting").get("name") == "A & <B>"
    assert meta.findtext("meta/meetingName") == "A & <B>" and meta.findtext("meta/gl-listed") == "true"
    others = [p for p in folder.rglob("*") if p.is_file() and p.name != "metadata.xml"]
    assert meta.findtext("playback/size") == str(sum(p.stat().st_size for p in others))
    desk = parse(folder / "deskshare.xml")
    assert (desk.tag, desk.get("id")) == ("recording", "deskshare_events")
    assert [dict(e.attrib) for e in desk] == [
        {"start_timestamp": "10.0", "stop_timestamp": "12.0", "video_width": "640", "video_height": "360"}
    ]
    panzooms = parse(folder / "panzooms.xml")
    assert panzooms.get("id") == "panzoom_events"
    assert {e.findtext("viewBox") for e in panzooms} == {"0.0 0.0 640.0 360.0"}
    assert float(panzooms[0].get("timestamp")) == 0.0
    cursor = parse(folder / "cursor.xml")
    assert cursor.get("id") == "cursor_events" and cursor.findtext("event/cursor") == "-1.0 -1.0"


def test_shapes_svg_shows_what_the_truth_says(made: tuple[Path, syn.SyntheticTruth]) -> None:
    folder, truth = made
    svg = parse(folder / "shapes.svg")
    assert svg.tag == f"{SVG}svg" and svg.get("viewBox") == "0 0 800 600"  # as BBB writes it
    images = svg.findall(f"{SVG}image")
    assert all(image.get("class") == "slide" for image in images)
    intervals = [(float(i.get("in")), float(i.get("out"))) for i in images]
    assert intervals[0][0] == 0.0 and intervals[-1][1] == truth.duration_s
    assert all(a[1] == b[0] for a, b in itertools.pairwise(intervals))  # back to back, in time order
    hrefs = [image.get(XLINK) for image in images]
    pres = f"presentation/{truth.presentation_id}"
    assert hrefs == [f"{pres}/slide-1.png", f"{pres}/slide-2.png", f"{pres}/slide-3.png", "presentation/deskshare.png",
                     f"{pres}/slide-3.png", f"{pres}/slide-4.png", f"{pres}/slide-5.png"]
    for image, (start, end) in zip(images, intervals, strict=True):
        size, colour = flat_colour((folder / image.get(XLINK)).read_bytes())
        assert size == (int(image.get("width")), int(image.get("height"))) == (640, 360)
        middle = (start + end) / 2
        if image.get(XLINK).endswith("deskshare.png"):
            assert colour == (0, 0, 0, 0) and truth.sharing_at(middle) and truth.slide_at(middle) is None
            assert truth.main_rgb_at(middle) == syn.DESKSHARE_RGB
            continue
        shown = truth.slide_at(middle)
        assert shown is not None and image.get(XLINK) == f"{pres}/slide-{shown.index}.png"
        assert colour == shown.rgb == truth.main_rgb_at(middle) == truth.slide_colours[shown.index]
        assert (folder / image.get("text")).read_text(encoding="utf-8") == f"Slide {shown.index}\n"
    assert len(truth.timeline) == 6 and truth.slide_at(truth.duration_s) is None


def test_annotations_are_thick_strokes_at_known_places_and_times(made: tuple[Path, syn.SyntheticTruth]) -> None:
    folder, truth = made
    svg = parse(folder / "shapes.svg")
    by_id = {image.get("id"): image for image in svg.findall(f"{SVG}image")}
    canvases = svg.findall(f"{SVG}g[@class='canvas']")
    assert {a.slide for a in truth.annotations} == set(truth.slide_colours)  # one per slide
    drawn = []
    for canvas in canvases:
        image = by_id[canvas.get("image")]
        assert canvas.get("display") == "none" and not image.get(XLINK).endswith("deskshare.png")
        slide = int(re.search(r"slide-(\d+)\.png$", image.get(XLINK)).group(1))
        for shape in canvas.findall(f"{SVG}g[@class='shape']"):
            annotation = next(a for a in truth.annotations if a.slide == slide)
            assert float(shape.get("timestamp")) == annotation.timestamp < float(image.get("out"))
            assert shape.get("undo") == "-1"
            style = dict(item.split(":", 1) for item in shape.get("style").split(";"))
            assert style["stroke"] == "#ff00ff" and syn.ANNOTATION_RGB == (255, 0, 255)
            assert float(style["stroke-width"]) == annotation.stroke_width >= 10  # thick at 640x360
            numbers = [float(n) for n in re.findall(r"[\d.]+", shape.find(f"{SVG}path").get("d"))]
            xs, ys = numbers[0::2], numbers[1::2]
            x0, y0, x1, y1 = annotation.bbox
            half = annotation.stroke_width / 2
            assert (min(xs) - half, min(ys) - half, max(xs) + half, max(ys) + half) == (x0, y0, x1, y1)
            assert x0 < annotation.point[0] < x1 and y0 < annotation.point[1] < y1
            drawn.append((slide, image.get("id")))
    # slide 3 is interrupted by the deskshare: its stroke is on both of its images
    assert sorted(s for s, _ in drawn) == [1, 2, 3, 3, 4, 5]
    third = next(a for a in truth.annotations if a.slide == 3)
    assert truth.annotations_at(third.timestamp - 0.1) == [] and truth.annotations_at(third.timestamp) == [third]
    assert truth.annotations_at(truth.deskshare.start + 0.1) == []  # covered by the deskshare
    assert truth.annotations_at(truth.deskshare.stop + 0.1) == [third]  # back with its slide
    px, py = truth.slide_probe  # the slide colour is sampled away from every stroke
    assert not any(a.bbox[0] <= px <= a.bbox[2] and a.bbox[1] <= py <= a.bbox[3] for a in truth.annotations)


def test_colours_are_far_apart() -> None:
    colours = [*syn.SLIDE_COLOURS, syn.WEBCAM_RGB, syn.DESKSHARE_RGB, syn.ANNOTATION_RGB, syn.DESKSHARE_OFF_RGB]
    assert len(set(colours)) == len(colours) and len(syn.SLIDE_COLOURS) >= 20
    for a, b in itertools.combinations(colours, 2):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) >= 127, (a, b)
    truth = syn.plan(duration_s=600, slides=50, deskshare=None)
    assert all(a.rgb != b.rgb for a, b in itertools.pairwise(truth.timeline))  # neighbours always differ
    assert len({truth.slide_colours[n] for n in range(1, 21)}) == 20  # the benchmark's 20 slides: all distinct


def test_videos_decode_to_the_right_length_and_colours(made: tuple[Path, syn.SyntheticTruth]) -> None:
    folder, truth = made
    webcams, desk = folder / "video" / "webcams.webm", folder / "deskshare" / "deskshare.webm"
    info = streams(webcams)
    assert "Video: vp9" in info and "320x240" in info and "Audio: opus" in info and "48000 Hz" in info
    assert "Video: vp9" in streams(desk) and "Audio" not in streams(desk)
    for path, kind in ((webcams, "v"), (webcams, "a"), (desk, "v")):
        assert abs(decoded_seconds(path, kind) - truth.duration_s) < 0.25, (path.name, kind)
    assert truth.webcam_rgb == syn.WEBCAM_RGB and truth.audio_hz == syn.AUDIO_HZ
    for t in (0.5, 12.0, 23.0):
        assert near(sample(webcams, t), syn.WEBCAM_RGB)
    share = truth.deskshare
    assert share is not None and (share.start, share.stop) == (10.0, 12.0)
    for t in (1.0, 9.5, 12.5, 23.0):
        assert near(sample(desk, t), syn.DESKSHARE_OFF_RGB), t
    for t in (10.3, 11.0, 11.7):
        assert near(sample(desk, t), syn.DESKSHARE_RGB), t


def test_same_arguments_same_bytes_and_truth(tmp_path: Path) -> None:
    ffmpeg()

    def build(folder: Path) -> tuple[dict[str, str], syn.SyntheticTruth]:
        syn._memory.clear()  # made again by ffmpeg, not copied from the first run
        truth = syn.make_presentation(folder, duration_s=7.3, slides=3, size=(320, 240), deskshare=(2, 4))
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}, truth  # fmt: skip

    (first, truth), (second, again) = build(tmp_path / "a"), build(tmp_path / "b")
    assert first == second and truth == again
    assert "deskshare/deskshare.webm" in first and "video/webcams.webm" in first
    assert syn.SyntheticTruth.from_dict(truth.to_dict()) == truth


def test_without_webcams_audio_or_deskshare(tmp_path: Path) -> None:
    ffmpeg()
    truth = syn.make_presentation(tmp_path / "a", duration_s=3, slides=2, size=(64, 48), deskshare=None,
                                  webcams=False, annotations=False)
    info = streams(tmp_path / "a" / "video" / "webcams.webm")
    assert "Audio: opus" in info and "Video" not in info  # a meeting without cameras: the audio alone
    assert truth.webcam_rgb is None and truth.annotations == () and truth.deskshare is None
    assert not (tmp_path / "a" / "deskshare").exists()
    assert not (tmp_path / "a" / "presentation" / "deskshare.png").exists()
    assert len(parse(tmp_path / "a" / "deskshare.xml")) == 0
    assert parse(tmp_path / "a" / "shapes.svg").findall(f"{SVG}g") == []
    syn.make_presentation(tmp_path / "b", duration_s=3, slides=1, size=(64, 48), deskshare=None, webcams=False,
                          audio=False)
    assert not (tmp_path / "b" / "video").exists()


def test_truth_queries_and_stable_times() -> None:
    truth = syn.plan(duration_s=10, slides=2, deskshare=(4, 6))
    assert [(s.index, s.start, s.end) for s in truth.timeline] == [(1, 0.0, 4.0), (2, 6.0, 10.0)]
    assert truth.main_rgb_at(1) == syn.slide_colour(1) and truth.main_rgb_at(5) == syn.DESKSHARE_RGB
    assert truth.main_rgb_at(10.5) is None
    assert truth.boundaries() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]  # strokes at 2 s and 8 s
    assert truth.stable(3.0) and not truth.stable(4.2) and not truth.stable(-1) and not truth.stable(11)
    clipped = syn.plan(duration_s=10, slides=2, deskshare=(8, 30))
    assert clipped.deskshare is not None and clipped.deskshare.stop == 10.0


@pytest.mark.parametrize(
    "arguments",
    [
        {"duration_s": 0, "slides": 2},
        {"duration_s": 10, "slides": 0},
        {"duration_s": 10, "slides": 2, "size": (4, 4)},
        {"duration_s": 10, "slides": 2, "deskshare": (6, 6)},
        {"duration_s": 10, "slides": 2, "deskshare": (12, 20)},
    ],
)
def test_bad_arguments_are_refused(arguments: dict) -> None:
    with pytest.raises(ValueError):
        syn.plan(**arguments)


def test_missing_ffmpeg_is_a_clear_error(tmp_path: Path) -> None:
    truth = syn.plan(duration_s=2, slides=1, deskshare=None)
    with pytest.raises(syn.SyntheticError, match="ffmpeg"):
        syn.colour_video(tmp_path / "x.webm", [(2.0, (1, 2, 3))], (64, 48), 5, ffmpeg=str(tmp_path / "no-ffmpeg"))
    with pytest.raises(syn.SyntheticError, match="ffmpeg failed"):
        syn.colour_video(tmp_path / "x.webm", [(2.0, (1, 2, 3))], (0, 48), 5, ffmpeg=ffmpeg())
    assert truth.webcam_rgb == syn.WEBCAM_RGB


def test_sample_times_are_stable_and_cover_every_picture() -> None:
    truth = syn.plan(duration_s=6, slides=3, size=(320, 240), deskshare=(2.5, 3.5))  # the fake node's recording
    assert [(s.index, s.start, s.end) for s in truth.timeline] == [(1, 0.0, 1.7), (2, 1.7, 2.5), (2, 3.5, 4.3),
                                                                    (3, 4.3, 6.0)]  # fmt: skip
    times = truth.sample_times(margin=0.3)
    assert times and all(truth.stable(t, 0.3) for t in times)
    pictures = {(truth.main_rgb_at(t), len(truth.annotations_at(t))) for t in times}
    assert (syn.DESKSHARE_RGB, 0) in pictures
    assert (syn.slide_colour(2), 1) in pictures  # slide 2 back after the deskshare, with its stroke
    for index in (1, 3):  # before and after its stroke
        assert {(syn.slide_colour(index), 0), (syn.slide_colour(index), 1)} <= pictures


# The fake node's recordings (b3lb.testing.fakerecording) ---------------------------------------------


@pytest.mark.gen_test
async def test_fake_node_recording_has_slides_deskshare_strokes_and_videos(tmp_path: Path) -> None:
    ffmpeg()
    from b3lb.testing import fakerecording as rec
    from b3lb.testing.fakebbb_xml import FakeMeeting

    media = await rec.recording_media(True, rec.RECORDING_SECONDS, rec.DESKSHARE)
    assert media.duration_s == 6.0 and media.webcams is not None and media.deskshare is not None
    assert await rec.recording_media(True, rec.RECORDING_SECONDS, rec.DESKSHARE) == media  # made once
    meeting = FakeMeeting(meeting_id="room-7", name="Room 7", create_time=1_731_234_567_890, record=True)
    metadata, archive, truth = rec.publish_files(tmp_path, meeting, "127.0.1.1", meeting.create_time + 900, media)
    assert len(archive) < 100_000
    root = etree.fromstring(metadata, PARSER)
    assert root.findtext("playback/duration") == "6000"  # the recorded length, not the meeting's
    folder = tmp_path / meeting.internal_meeting_id
    assert truth.duration_s == 6.0 and truth.deskshare is not None
    assert (truth.deskshare.start, truth.deskshare.stop) == (2.5, 3.5)
    assert len(truth.annotations) == 3 and truth.presentation_id == rec.presentation_id(meeting)
    svg = parse(folder / "shapes.svg")
    assert len(svg.findall(f"{SVG}image")) == 5  # slides 1, 2, the deskshare, slides 2 and 3
    for path, kind in ((folder / "video" / "webcams.webm", "v"), (folder / "video" / "webcams.webm", "a"),
                       (folder / "deskshare" / "deskshare.webm", "v")):  # fmt: skip
        assert abs(decoded_seconds(path, kind) - 6.0) < 0.25
    assert near(sample(folder / "deskshare" / "deskshare.webm", 3.0), syn.DESKSHARE_RGB)
    # without ffmpeg: the committed 2 s fixture, and a recording as long as it
    plain = await rec.recording_media(False, rec.RECORDING_SECONDS, rec.DESKSHARE)
    assert (plain.duration_s, plain.deskshare) == (rec.FIXTURE_SECONDS, None)
    assert plain.webcams == rec.FIXTURE_WEBM.read_bytes()
