"""Plain types shared by the render modules: the profile, the result, the error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("MP4", "WEBM")


class RenderError(Exception):
    """Rendering failed: `reason` says why in one line, `tail` holds ffmpeg's last lines (or '').

    `permanent`: retrying cannot help (a broken or hostile archive): the job fails at once."""

    def __init__(self, reason: str, tail: str = "", *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tail = tail
        self.permanent = permanent

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Profile:
    """A record_profile row: what one rendered video looks like."""

    id: int
    name: str
    width: int
    height: int
    webcam_width: int
    webcam_height: int
    webcam_stretch: bool
    webcam_crop: bool
    format: str  # 'MP4' | 'WEBM'
    annotate: bool
    backdrop: bool

    @classmethod
    def from_row(cls, row: Any) -> Profile:
        """From an asyncpg.Record (or any mapping) of record_profile."""
        return cls(
            id=int(row["id"]), name=str(row["name"]), width=int(row["width"]), height=int(row["height"]),
            webcam_width=int(row["webcam_width"]), webcam_height=int(row["webcam_height"]),
            webcam_stretch=bool(row["webcam_stretch"]), webcam_crop=bool(row["webcam_crop"]),
            format=str(row["format"]).upper(), annotate=bool(row["annotate"]), backdrop=bool(row["backdrop"]),
        )  # fmt: skip

    @property
    def extension(self) -> str:
        return "webm" if self.format == "WEBM" else "mp4"


@dataclass(frozen=True)
class RenderOutput:
    """One rendered video: where it is, its size in bytes, its length in seconds, 'mp4' or 'webm'."""

    path: Path
    size: int
    duration_s: float
    extension: str
