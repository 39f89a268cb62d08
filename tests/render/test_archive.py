"""Extraction and parsing of the uploaded presentation archive (b3lb.render.archive, bbbformat,
annotate.Sanitiser): a good archive parses into what it holds; hostile archives (traversal, links,
devices, too many members or bytes, broken XML, entities, bad numbers, foreign references) are refused
with a clear reason or neutralised; optional parts may be missing."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from lxml import etree

from b3lb.render.annotate import Sanitiser
from b3lb.render.archive import extract_archive, load_presentation
from b3lb.render.bbbformat import image_size
from b3lb.render.model import RenderError
from b3lb.testing import synthetic as syn

LIMITS = {"max_bytes": 50_000_000, "max_files": 1000}
SVG_HEAD = ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            'viewBox="0 0 800 600">')  # fmt: skip
METADATA = (b"<recording><id>rec-1</id><start_time>1000</start_time><end_time>9000</end_time>"
            b"<meeting name='Room'/><playback><duration>8000</duration></playback></recording>")  # fmt: skip


def tar_of(files: dict[str, bytes], *, prefix: str = "./", extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra or []:
            archive.addfile(info)
    return buffer.getvalue()


def extract(tmp_path: Path, data: bytes, **limits: int) -> object:
    source = tmp_path / "upload.tar"
    source.write_bytes(data)
    return extract_archive(source, tmp_path / "out", **{**LIMITS, **limits})


def refused(tmp_path: Path, data: bytes, **limits: int) -> str:
    with pytest.raises(RenderError) as caught:
        extract(tmp_path, data, **limits)
    return caught.value.reason


def minimal(**more: bytes) -> dict[str, bytes]:
    return {"metadata.xml": METADATA, **more}


@pytest.fixture(scope="module")
def synthetic_tar(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, syn.SyntheticTruth]:
    folder = tmp_path_factory.mktemp("syn") / "rec"
    truth = syn.make_presentation(folder, duration_s=6.0, slides=3, size=(640, 480), deskshare=(2.0, 3.0))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(folder, arcname=".")
    return buffer.getvalue(), truth


def test_synthetic_archive_parses_into_what_it_holds(tmp_path: Path, synthetic_tar: tuple[bytes, object]) -> None:
    data, truth = synthetic_tar
    presentation = extract(tmp_path, data)
    assert presentation.metadata.duration_s == truth.duration_s
    assert presentation.metadata.meeting_name == "Synthetic recording"
    shown = [s for s in presentation.slides if not s.deskshare]
    assert [(s.start, s.end) for s in shown] == [(t.start, t.end) for t in truth.timeline]
    assert all(s.file is not None and s.pixels == (640, 480) for s in shown)
    assert [s for s in presentation.slides if s.deskshare][0].start == 2.0
    assert sum(len(v) for v in presentation.shapes.values()) == len(truth.annotations)
    assert [(e.start, e.stop, e.width) for e in presentation.deskshare] == [(2.0, 3.0, 640)]
    assert presentation.webcams is not None and presentation.webcams.name == "webcams.webm"
    assert presentation.deskshare_video is not None
    assert presentation.panzooms and presentation.cursor
    root = presentation.root
    assert not list((root / "presentation" / truth.presentation_id).glob("thumbnails/*"))  # not needed: not written
    assert not (root / "captions.json").exists()


def test_archive_inside_one_folder(tmp_path: Path) -> None:
    presentation = extract(tmp_path, tar_of(minimal(), prefix="rec-1/"))
    assert presentation.root.name == "rec-1" and presentation.metadata.record_id == "rec-1"
    assert presentation.slides == [] and presentation.webcams is None  # optional parts may be missing


@pytest.mark.parametrize(("name", "reason"), [
    ("../evil.xml", "leaving its folder"), ("a/../../evil.xml", "leaving its folder"),
    ("/etc/evil.xml", "absolute path"), ("C:/evil.xml", "absolute path"), ("a\\..\\b.xml", "leaving its folder"),
])  # fmt: skip
def test_traversal_is_refused(tmp_path: Path, name: str, reason: str) -> None:
    assert reason in refused(tmp_path, tar_of({**minimal(), name: b"x"}, prefix=""))
    assert not (tmp_path / "evil.xml").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_are_refused(tmp_path: Path, kind: bytes) -> None:
    link = tarfile.TarInfo("./shapes.svg")
    link.type, link.linkname = kind, "/etc/passwd"
    assert "link" in refused(tmp_path, tar_of(minimal(), extra=[link]))


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_devices_are_refused(tmp_path: Path, kind: bytes) -> None:
    device = tarfile.TarInfo("./dev")
    device.type = kind
    assert "device or special file" in refused(tmp_path, tar_of(minimal(), extra=[device]))


def test_member_count_is_capped(tmp_path: Path) -> None:
    files = {f"notes/n{i}.txt": b"" for i in range(50)}  # not even written: still counted
    assert "more than 20 members" in refused(tmp_path, tar_of({**minimal(), **files}), max_files=20)


def test_bytes_are_capped(tmp_path: Path) -> None:
    big = {"presentation/p/slide-1.png": b"\0" * 5000}
    assert "more than 3000 bytes" in refused(tmp_path, tar_of({**minimal(), **big}), max_bytes=3000)


def test_not_a_tar_and_truncated_tar(tmp_path: Path) -> None:
    assert "not a readable tar file" in refused(tmp_path, b"this is not an archive" * 100)
    whole = tar_of(minimal(**{"shapes.svg": b"<svg/>" * 2000}))
    assert "not a readable tar file" in refused(tmp_path, whole[:3000])  # cut inside shapes.svg's data


def test_compressed_tar_is_read(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("metadata.xml")
        info.size = len(METADATA)
        archive.addfile(info, io.BytesIO(METADATA))
    assert extract(tmp_path, buffer.getvalue()).metadata.duration_s == 8.0


def test_file_and_folder_clash_is_refused(tmp_path: Path) -> None:
    data = tar_of({**minimal(), "presentation/p.png": b"file", "presentation/p.png/slide-1.png": b"x"})
    assert "both a file and a folder" in refused(tmp_path, data)


def test_archive_without_metadata(tmp_path: Path) -> None:
    assert "no metadata.xml" in refused(tmp_path, tar_of({"shapes.svg": SVG_HEAD.encode() + b"</svg>"}))


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("metadata.xml", b"<recording><id>x</id>", "metadata.xml is not well-formed XML"),
    ("metadata.xml", b"<html/>", "not <recording>"),
    ("shapes.svg", b"<svg><image", "shapes.svg is not well-formed XML"),
    ("deskshare.xml", b"<recording><event start_timestamp='x' stop_timestamp='2'/></recording>", "not a number"),
    ("shapes.svg", SVG_HEAD.encode() + b'<image id="i" in="nan" out="3" width="4" height="3"/></svg>',
     "out of range"),
    ("shapes.svg", SVG_HEAD.encode() + b'<image id="i" in="1e300" out="1e301" width="4" height="3"/></svg>',
     "out of range"),
    ("shapes.svg", SVG_HEAD.encode() + b'<image id="i" in="1 2" out="3" width="4" height="3"/></svg>',
     "unusable in/out"),
])  # fmt: skip
def test_broken_documents_fail_with_a_reason(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    files = {**minimal(), name: content}
    assert reason in refused(tmp_path, tar_of(files))


def test_entities_are_never_expanded(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    document = (f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">'
                '<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
                "<recording><id>&x;&b;</id><playback><duration>1000</duration></playback></recording>"
                ).encode()  # fmt: skip
    presentation = extract(tmp_path, tar_of({"metadata.xml": document}))
    assert "TOPSECRET" not in presentation.metadata.record_id
    assert "aaaa" not in presentation.metadata.record_id


def test_slide_references_stay_inside_the_archive(tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(syn.png(8, 8, (255, 0, 0)))
    images = "".join(
        f'<image id="image{i}" class="slide" in="{i}" out="{i + 1}" xlink:href="{href}" width="8" height="8"/>'
        for i, href in enumerate([f"../../{outside.name}", str(outside), "http://example.org/x.png",
                                  "presentation/p/missing.png", "presentation/p/notes.txt",
                                  "presentation/p/slide-1.png"]))  # fmt: skip
    files = minimal(**{"shapes.svg": (SVG_HEAD + images + "</svg>").encode(),
                       "presentation/p/slide-1.png": syn.png(8, 6, (0, 255, 0))})  # fmt: skip
    presentation = extract(tmp_path, tar_of(files))
    assert [s.file is not None for s in presentation.slides] == [False] * 5 + [True]
    assert presentation.slides[-1].pixels == (8, 6)
    assert len(presentation.warnings) == 5


def test_unusable_drawings_are_skipped_with_a_warning(tmp_path: Path) -> None:
    canvas = ('<image id="image1" class="slide" in="0" out="5" xlink:href="presentation/p/slide-1.png" width="8" '
              'height="6"/><g class="canvas" image="image1"><g class="shape" shape="a" timestamp="x" undo="-1">'
              '<path d="M1 1L2 2"/></g><g class="shape" shape="b" timestamp="1.5" undo="3"><path d="M1 1L2 2"/></g>'
              '<g class="shape" shape="c" timestamp="2" undo="-1"><script>alert(1)</script></g></g>')  # fmt: skip
    files = minimal(**{"shapes.svg": (SVG_HEAD + canvas + "</svg>").encode(),
                       "presentation/p/slide-1.png": syn.png(8, 6, (0, 255, 0))})  # fmt: skip
    presentation = extract(tmp_path, tar_of(files))
    assert [(s.key, s.timestamp, s.undo) for s in presentation.shapes["image1"]] == [("b", 1.5, 3.0)]
    assert presentation.warnings == ["1 drawings skipped, e.g. shapes.svg drawing '' timestamp: 'x' is not a number"]


def test_tldraw_svg_slides_use_their_png(tmp_path: Path) -> None:
    image = ('<image id="image1" class="slide" in="0" out="2" xlink:href="presentation/p/svgs/slide1.svg" '
             'width="8" height="6"/>')  # fmt: skip
    files = minimal(**{"shapes.svg": (SVG_HEAD + image + "</svg>").encode(),
                       "presentation/p/slide-1.png": syn.png(8, 6, (0, 255, 0))})  # fmt: skip
    assert extract(tmp_path, tar_of(files)).slides[0].file is not None


def test_image_size_reads_png_and_jpeg_headers(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(syn.png(33, 17, (1, 2, 3)))
    jpeg = tmp_path / "a.jpg"  # SOI, an APP0 segment, then a baseline frame header (SOF0)
    app0 = b"\xff\xe0\x00\x10" + b"JFIF\0" + b"\0" * 9
    jpeg.write_bytes(b"\xff\xd8" + app0 + b"\xff\xc0\x00\x11\x08\x00\x2a\x00\x40")
    junk = tmp_path / "a.bin"
    junk.write_bytes(b"\xff\xd8\xff")
    assert image_size(png) == (33, 17) and image_size(jpeg) == (64, 42) and image_size(junk) is None


def shape_markup(tmp_path: Path, inner: str, style: str = "stroke:#ff0000;visibility:hidden") -> str | None:
    element = etree.fromstring(f'<g xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                               f'class="shape" style="{style}">{inner}</g>')  # fmt: skip
    return Sanitiser(tmp_path).shape_markup(element)


def test_sanitiser_keeps_drawings_and_drops_everything_else(tmp_path: Path) -> None:
    markup = shape_markup(tmp_path, '<path d="M1 2L3 4" onclick="alert(1)" style="fill:url(#x);stroke-width:3"/>'
                                    '<script>alert(1)</script><a xlink:href="http://x"><circle r="3"/></a>'
                                    '<use xlink:href="#p"/><rect x="1" y="2" width="3e1" height="4" '
                                    'transform="rotate(3)" fill="#00ff00"/>'
                                    '<line x1="javascript:1" x2="5"/>')  # fmt: skip
    assert markup is not None
    assert '<path d="M1 2L3 4" style="stroke-width:3"/>' in markup
    assert '<rect x="1" y="2" width="3e1" height="4" transform="rotate(3)" fill="#00ff00"/>' in markup
    assert '<line x2="5"/>' in markup
    for banned in ("script", "onclick", "url(", "use", "http", "circle", "visibility", "javascript"):
        assert banned not in markup
    assert markup.startswith('<g style="stroke:#ff0000">')
    assert shape_markup(tmp_path, "<script>x</script>") is None


def test_sanitiser_turns_html_text_into_svg_text(tmp_path: Path) -> None:
    inner = ('<switch><foreignObject x="10" y="20" width="100" height="50"><p xmlns="http://www.w3.org/1999/xhtml">'
             "first<br/>second &amp; <b>bold</b></p></foreignObject></switch>")  # fmt: skip
    markup = shape_markup(tmp_path, inner, "color:#0000ff;font-family:Arial;font-size:16px;visibility:hidden")
    assert markup is not None
    text = etree.fromstring(markup).find(".//text")
    assert text is not None and text.get("fill") == "#0000ff" and text.get("font-size") == "16"
    assert [t.text for t in text] == ["first", "second & bold"]
    assert [t.get("y") for t in text] == ["34.4", "53.6"]


def test_sanitiser_inlines_images_from_the_archive_only(tmp_path: Path) -> None:
    (tmp_path / "presentation").mkdir()
    (tmp_path / "presentation" / "poll.svg").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    inner = (
        '<image xlink:href="presentation/poll.svg" width="10" height="10"/>'
        '<image xlink:href="/etc/passwd" width="10" height="10"/><image xlink:href="file:///etc/passwd"/>'
    )
    markup = shape_markup(tmp_path, inner)
    assert markup is not None and markup.count("<image") == 1 and "data:image/svg+xml;base64," in markup


def test_load_presentation_of_a_folder(tmp_path: Path) -> None:
    truth = syn.make_presentation(tmp_path / "rec", duration_s=3.0, slides=2, deskshare=None, webcams=False)
    presentation = load_presentation(tmp_path / "rec")
    assert presentation.webcams is not None  # the audio alone
    assert presentation.deskshare_video is None and presentation.deskshare == []
    assert len(presentation.slides) == len(truth.timeline)


def raw_header(name: str, size: int, kind: bytes) -> bytes:
    """A header block that tarfile would never write itself (a declared size without its data)."""
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info._create_header(info.get_info(), tarfile.GNU_FORMAT, "utf-8", "surrogateescape")  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                                  tarfile.XGLTYPE])  # fmt: skip
def test_oversized_extended_headers_are_refused_before_they_are_read(tmp_path: Path, kind: bytes) -> None:
    # declares 1 GiB, holds 1 KB: tarfile would read all of it into memory (or fail at its end)
    data = raw_header("././@LongLink", 1 << 30, kind) + b"a" * 1024 + b"\0" * 1024
    with pytest.raises(RenderError, match=f"extended tar header of {1 << 30} bytes") as caught:
        extract(tmp_path, data)
    assert caught.value.permanent


def test_small_extended_headers_still_work(tmp_path: Path) -> None:
    long_name = "presentation/" + "p" * 150 + "/slide-1.png"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        (tmp_path / str(fmt)).mkdir()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
            for name, data in minimal(**{long_name: b"png"}).items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        extract(tmp_path / str(fmt), buffer.getvalue())
        assert (tmp_path / str(fmt) / "out" / long_name).read_bytes() == b"png"


def test_chained_and_global_extended_headers_are_capped(tmp_path: Path) -> None:
    record = b"20 comment=xxxxxxxx\n"  # a pax record: its length, a key, a value
    chain = b"".join(raw_header("x", len(record), tarfile.XHDTYPE) + record.ljust(512, b"\0") for _ in range(6))
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    assert "chains more than 4 extended tar headers" in refused(tmp_path / "a", chain + tar_of(minimal()))
    big = b"%d comment=%s\n" % (60_006, b"x" * 59_991)
    assert len(big) == 60_006
    globals_ = b"".join(raw_header("g", len(big), tarfile.XGLTYPE) + big + b"\0" * ((-len(big)) % 512)
                        + tar_of({f"f{i}.txt": b""})[:512] for i in range(3))  # fmt: skip
    assert "global tar headers exceed" in refused(tmp_path / "b", globals_ + tar_of(minimal()))


def test_sparse_members_are_refused(tmp_path: Path) -> None:
    data = raw_header("sparse.png", 0, tarfile.GNUTYPE_SPARSE) + b"\0" * 1024
    assert "sparse file" in refused(tmp_path, data)


def test_skipped_members_count_against_the_byte_cap(tmp_path: Path) -> None:
    # thumbnails are never written, but reading through them costs as much
    files = minimal(**{f"presentation/p/thumbnails/thumb-{i}.png": b"x" * 4000 for i in range(10)})
    with pytest.raises(RenderError, match="more than 20000 bytes") as caught:
        extract(tmp_path, tar_of(files), max_bytes=20_000)
    assert caught.value.permanent
    assert not (tmp_path / "out" / "presentation" / "p" / "thumbnails").exists()


def test_parse_errors_are_permanent(tmp_path: Path) -> None:
    with pytest.raises(RenderError) as caught:
        extract(tmp_path, tar_of({"metadata.xml": b"<recording><id>"}))
    assert caught.value.permanent
