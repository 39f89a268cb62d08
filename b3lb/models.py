"""Rows as they leave the data layer: plain dataclasses, one per table that code outside SQL reads.

`from_row` takes an asyncpg Record (or any mapping) and ignores columns the dataclass does not
declare, so a query may select more than a caller needs.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self


class _FromRow:
    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        names = cls._field_names()  # type: ignore[attr-defined]
        return cls(**{k: row[k] for k in row.keys() if k in names})

    @classmethod
    def _field_names(cls) -> frozenset[str]:
        cached = cls.__dict__.get("_names_cache")
        if cached is None:
            cached = frozenset(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
            cls._names_cache = cached  # type: ignore[attr-defined]
        return cached


@dataclass(slots=True)
class Cluster(_FromRow):
    id: int
    name: str
    load_a_factor: float = 1.0
    load_m_factor: float = 10.0
    load_cpu_series_iteratations: int = 6
    load_cpu_maximum: int = 5000
    sha_algorithm: str = "SHA256"
    maintenance: bool = False  # cluster-wide maintenance (sql/0011), apart from each node's own flag


@dataclass(slots=True)
class Node(_FromRow):
    id: int
    cluster_id: int
    slug: str
    domain: str
    secret: str
    protocol: str = "https"
    port: int = 443
    bbb_endpoint: str = "bigbluebutton/api/"
    load_endpoint: str = "b3lb/load"
    cpu_load: float = 0.0
    attendees: int = 0
    meetings: int = 0
    has_errors: bool = False
    maintenance: bool = False

    @property
    def base_url(self) -> str:
        return f"{self.protocol}://{self.domain}:{self.port}/"

    @property
    def api_url(self) -> str:
        return self.base_url + self.bbb_endpoint.lstrip("/")

    @property
    def load_url(self) -> str:
        return self.base_url + self.load_endpoint.lstrip("/")


@dataclass(slots=True)
class ClusterGroup(_FromRow):
    id: int
    name: str


@dataclass(slots=True)
class Tenant(_FromRow):
    id: int
    slug: str
    cluster_group_id: int
    attendee_limit: int = 999999
    meeting_limit: int = 999999
    record_by_default: bool = False
    stats_token: str = ""


@dataclass(slots=True)
class Secret(_FromRow):
    id: int
    tenant_id: int
    sub_id: int
    secret: str
    secret2: str = ""
    attendee_limit: int | None = None
    meeting_limit: int | None = None
    slide_id: int | None = None
    record_by_default: bool | None = None


@dataclass(slots=True)
class Parameter(_FromRow):
    id: int
    tenant_id: int | None
    secret_id: int | None
    create_join: str
    mode: str
    name: str
    value: str = ""


@dataclass(slots=True)
class Meeting(_FromRow):
    id: int
    secret_id: int
    meeting_id: str
    node_id: int
    nonce: uuid.UUID
    meeting_name: str = ""
    create_time: datetime | None = None
    end_callback_url: str = ""
    attendees: int = 0
    listeners: int = 0
    voice: int = 0
    videos: int = 0
    moderators: int = 0
    origin: str = ""
    origin_server_name: str = ""


@dataclass(slots=True)
class RecordProfile(_FromRow):
    id: int
    name: str
    width: int = 1920
    height: int = 1080
    webcam_width: int = 320
    webcam_height: int = 180
    webcam_stretch: bool = False
    webcam_crop: bool = False
    format: str = "MP4"
    annotate: bool = True
    backdrop: bool = True


def secret_label(tenant_slug: str, sub_id: int) -> str:
    """`ABC` for a tenant's main secret, `ABC-001` for the others (CLI and metrics labels)."""
    return tenant_slug if sub_id == 0 else f"{tenant_slug}-{sub_id:03d}"
