"""The uploaded archive: safe extraction and the parsed presentation folder.

A node uploads `tar -C <published folder> .`. The archive is hostile input: extraction refuses
absolute names, `..`, links, devices and other special files, counts every member against
`max_files` and every extracted byte against `max_bytes`, and writes only the files rendering uses
(BBB's XML files, the two videos and the presentation images), so thumbnails, text files and
anything else never touch the disk. Each refusal is a RenderError whose reason names the problem,
marked `permanent` (the same archive fails the same way again) unless the disk here failed.

tarfile reads an extended header (pax 'x'/'g', GNU longname 'L'/'K') into memory in one piece:
`_GuardedInfo` refuses one that declares more than MAX_EXTENDED bytes before it is read (a few KB
of gzip can declare gigabytes), and chains of them, and GNU sparse members, which BBB never writes.
The declared size of every member, skipped ones too, counts against `max_bytes`.
"""

from __future__ import annotations

import logging
import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from b3lb.render import annotate
from b3lb.render.bbbformat import (
    CursorEvent,
    DeskshareEvent,
    Metadata,
    PanZoom,
    Shape,
    SlideImage,
    member,
    parse_cursor,
    parse_deskshare,
    parse_metadata,
    parse_panzooms,
    parse_shapes,
)
from b3lb.render.model import RenderError

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
MAX_NAME = 1024
MAX_DEPTH = 32
WANTED_NAMES = frozenset({"metadata.xml", "shapes.svg", "panzooms.xml", "cursor.xml", "deskshare.xml",
                          "webcams.webm", "webcams.mp4", "deskshare.webm", "deskshare.mp4"})  # fmt: skip
WANTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")
SKIPPED_FOLDERS = frozenset({"thumbnails", "textfiles", "notes", "captions"})
MAX_EXTENDED = 64 * 1024  # bytes of one extended header; real ones hold a long name or a few pax keys
MAX_EXTENDED_CHAIN = 4  # extended headers before one member (real archives: at most 'g' + 'x' + 'L')
EXTENDED_TYPES = frozenset({tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                            tarfile.SOLARIS_XHDTYPE})  # fmt: skip
WEBCAMS = ("video/webcams.webm", "video/webcams.mp4")
DESKSHARE = ("deskshare/deskshare.webm", "deskshare/deskshare.mp4")


@dataclass
class Presentation:
    """A parsed published presentation folder (times in seconds of the recording)."""

    root: Path
    metadata: Metadata
    slides: list[SlideImage] = field(default_factory=list)  # in time order
    shapes: dict[str, list[Shape]] = field(default_factory=dict)  # image id -> its drawings
    deskshare: list[DeskshareEvent] = field(default_factory=list)
    panzooms: list[PanZoom] = field(default_factory=list)
    cursor: list[CursorEvent] = field(default_factory=list)
    webcams: Path | None = None  # video/webcams.webm: the webcams and the meeting's audio
    deskshare_video: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def record_id(self) -> str:
        return self.metadata.record_id


def extract_archive(tar_path: Path, dest: Path, *, max_bytes: int, max_files: int) -> Presentation:
    """Unpack `tar_path` (plain or compressed tar) into `dest` and parse it; RenderError if refused."""
    dest.mkdir(parents=True, exist_ok=True)
    _extract(tar_path, dest, max_bytes, max_files)
    return load_presentation(dest)


class _GuardedFile(tarfile.TarFile):
    """Counts what `_GuardedInfo` saw: bytes of extended headers, and the current chain of them."""

    extended_bytes = 0
    global_bytes = 0
    chain = 0


class _GuardedInfo(tarfile.TarInfo):
    """Refuses oversized or chained extended headers before tarfile reads them into memory."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        assert isinstance(archive, _GuardedFile)
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise RenderError(f"the archive holds a sparse file ({_shown(self.name)}): refused", permanent=True)
        if self.type not in EXTENDED_TYPES:
            archive.chain = 0
            return super()._proc_member(archive)  # type: ignore[misc,no-any-return]
        archive.chain += 1
        if not 0 <= self.size <= MAX_EXTENDED:
            raise RenderError(f"the archive holds an extended tar header of {self.size} bytes (at most "
                              f"{MAX_EXTENDED}): refused", permanent=True)  # fmt: skip
        if archive.chain > MAX_EXTENDED_CHAIN:
            raise RenderError(f"the archive chains more than {MAX_EXTENDED_CHAIN} extended tar headers: refused",
                              permanent=True)  # fmt: skip
        if self.type == tarfile.XGLTYPE:  # global keys stay in memory for the whole archive
            archive.global_bytes += self.size
            if archive.global_bytes > MAX_EXTENDED:
                raise RenderError(f"the archive's global tar headers exceed {MAX_EXTENDED} bytes: refused",
                                  permanent=True)  # fmt: skip
        archive.extended_bytes += self.size
        return super()._proc_member(archive)  # type: ignore[misc,no-any-return]


def _extract(tar_path: Path, dest: Path, max_bytes: int, max_files: int) -> None:
    files = declared = written = 0
    try:
        with _GuardedFile.open(tar_path, mode="r|*", tarinfo=_GuardedInfo) as archive:  # a stream: one pass
            assert isinstance(archive, _GuardedFile)
            for info in archive:
                files += 1
                if files > max_files:
                    raise RenderError(f"the archive has more than {max_files} members", permanent=True)
                declared += max(info.size, 0)  # skipped members are read through too
                if declared + archive.extended_bytes > max_bytes:
                    raise RenderError(f"the archive unpacks to more than {max_bytes} bytes", permanent=True)
                parts = _safe_parts(info.name)
                if info.isdir():
                    if parts:
                        _mkdir(dest, parts)
                    continue
                if info.issym() or info.islnk():
                    raise RenderError(f"the archive holds a link ({_shown(info.name)}): refused", permanent=True)
                if not info.isreg():
                    raise RenderError(f"the archive holds a device or special file ({_shown(info.name)}): refused",
                                      permanent=True)  # fmt: skip
                if not parts or not _wanted(parts):
                    continue  # tarfile skips its data when the next member is read
                written += _write(archive, info, dest, parts, max_bytes - written)
    except RenderError:
        raise
    except _DiskError as exc:
        raise RenderError(f"cannot write the extracted archive: {_describe(exc.__cause__ or exc)}") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, RecursionError) as exc:
        raise RenderError(f"the archive is not a readable tar file: {_describe(exc)}", permanent=True) from None


class _DiskError(Exception):
    """Writing here failed (disk full, permissions): not the archive's fault, so worth a retry."""


def _safe_parts(name: str) -> tuple[str, ...]:
    """The member's path components below the archive root; RenderError for anything unsafe."""
    if "\x00" in name or len(name) > MAX_NAME:
        raise RenderError(f"the archive holds an unusable name ({_shown(name)}): refused", permanent=True)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise RenderError(f"the archive holds an absolute path ({_shown(name)}): refused", permanent=True)
    parts = tuple(p for p in PurePosixPath(name).parts if p not in (".", ""))
    if ".." in parts or "\\" in name:
        raise RenderError(f"the archive holds a path leaving its folder ({_shown(name)}): refused", permanent=True)
    if len(parts) > MAX_DEPTH:
        raise RenderError(f"the archive nests deeper than {MAX_DEPTH} folders: refused", permanent=True)
    return parts


def _wanted(parts: tuple[str, ...]) -> bool:
    name = parts[-1].lower()
    if name in WANTED_NAMES:
        return True
    return name.endswith(WANTED_SUFFIXES) and not SKIPPED_FOLDERS.intersection(parts[:-1])


def _mkdir(dest: Path, parts: tuple[str, ...]) -> Path:
    folder = dest.joinpath(*parts)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RenderError(f"the archive uses {_shown('/'.join(parts))} as both a file and a folder",
                          permanent=True) from None  # fmt: skip
    except OSError as exc:
        raise _DiskError() from exc
    return folder


def _write(archive: tarfile.TarFile, info: tarfile.TarInfo, dest: Path, parts: tuple[str, ...], room: int) -> int:
    """Copy one member; returns its bytes. O_NOFOLLOW: a link can never be written through."""
    if len(parts) > 1:
        _mkdir(dest, parts[:-1])
    target = dest.joinpath(*parts)
    source = archive.extractfile(info)
    if source is None:
        return 0
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except IsADirectoryError:
        raise RenderError(f"the archive uses {_shown(info.name)} as both a file and a folder",
                          permanent=True) from None  # fmt: skip
    except OSError as exc:
        raise _DiskError() from exc
    copied = 0
    with os.fdopen(fd, "wb") as sink:
        while chunk := source.read(CHUNK):  # a read error is the archive's (caught by _extract)
            copied += len(chunk)
            if copied > room:
                raise RenderError("the archive unpacks to more bytes than allowed", permanent=True)
            try:
                sink.write(chunk)
            except OSError as exc:
                raise _DiskError() from exc
    return copied


def _find_root(dest: Path) -> Path:
    """The folder holding metadata.xml: the archive's top, or its only folder (`tar -C parent id`)."""
    if (dest / "metadata.xml").is_file():
        return dest
    folders = [p for p in dest.iterdir() if p.is_dir() and not p.is_symlink()]
    if len(folders) == 1 and (folders[0] / "metadata.xml").is_file():
        return folders[0]
    raise RenderError("the archive has no metadata.xml: it is not a published BBB presentation", permanent=True)


def _shown(name: str) -> str:
    return repr(name[:120])


def _describe(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]


def load_presentation(root: Path) -> Presentation:
    """Parse an extracted published presentation folder (the archive's top, or its only folder).
    Missing optional parts are fine; RenderError(permanent=True) when its documents are broken."""
    if not root.is_dir():
        raise RenderError(f"no extracted presentation at {str(root)[:200]}")
    try:
        return _load(_find_root(root))
    except RenderError as exc:
        exc.permanent = True  # the documents are the archive's: the same ones fail the same way
        raise


def _load(root: Path) -> Presentation:
    metadata_path = member(root, "metadata.xml")
    if metadata_path is None:
        raise RenderError("the archive has no metadata.xml: it is not a published BBB presentation", permanent=True)
    presentation = Presentation(root=root.resolve(), metadata=parse_metadata(metadata_path))
    warn = presentation.warnings.append
    sanitise = annotate.Sanitiser(root.resolve()).shape_markup
    if (path := member(root, "shapes.svg")) is not None:
        presentation.slides, presentation.shapes = parse_shapes(root.resolve(), path, sanitise, warn)
    if (path := member(root, "deskshare.xml")) is not None:
        presentation.deskshare = parse_deskshare(path)
    if (path := member(root, "panzooms.xml")) is not None:
        presentation.panzooms = parse_panzooms(path)
    if (path := member(root, "cursor.xml")) is not None:
        presentation.cursor = parse_cursor(path)
    presentation.webcams = next((p for name in WEBCAMS if (p := member(root, name)) is not None), None)
    presentation.deskshare_video = next((p for name in DESKSHARE if (p := member(root, name)) is not None), None)
    for warning in presentation.warnings[:20]:
        log.warning("recording %s: %s", presentation.record_id[:80], warning)
    return presentation
