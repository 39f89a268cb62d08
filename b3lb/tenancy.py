"""Tenants and their secrets: who is calling, with which limits, rules and assets.

Everything here is an in-memory snapshot of the database, rebuilt every few seconds by
`Runtime.refresh_directory`, so resolving and authenticating a request costs no SQL.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from b3lb.models import Parameter, Secret, Tenant, secret_label


@dataclass(frozen=True, slots=True)
class AssetFlags:
    logo: bool = False
    slide: bool = False
    css: bool = False
    slide_filename: str = ""
    slide_size: int = 0


@dataclass(frozen=True, slots=True)
class Rule:
    mode: str  # BLOCK, SET or OVERRIDE
    name: str
    value: str


@dataclass(slots=True)
class SecretContext:
    """All a request authenticated with one secret needs to know, resolved once per refresh."""

    secret: Secret
    tenant: Tenant
    label: str
    create_rules: tuple[Rule, ...] = ()
    join_rules: tuple[Rule, ...] = ()
    assets: AssetFlags = field(default_factory=AssetFlags)

    @property
    def secrets(self) -> tuple[str, str]:
        return (self.secret.secret, self.secret.secret2)

    @property
    def recording_enabled(self) -> bool:
        own = self.secret.record_by_default
        return self.tenant.record_by_default if own is None else own

    @property
    def secret_meeting_limit(self) -> int:
        own = self.secret.meeting_limit
        return 0 if own is None else own

    @property
    def secret_attendee_limit(self) -> int:
        own = self.secret.attendee_limit
        return 0 if own is None else own


def _effective_rules(tenant_rules: list[Parameter], secret_rules: list[Parameter], kind: str) -> tuple[Rule, ...]:
    """Rules for CREATE or JOIN; a secret's rule replaces the tenant's rule of the same name."""
    chosen: dict[str, Rule] = {}
    for source in (tenant_rules, secret_rules):
        for p in source:
            if p.create_join in (kind, "BOTH"):
                chosen[p.name] = Rule(p.mode, p.name, p.value)
    return tuple(chosen.values())


class TenantDirectory:
    """Lookup of SecretContext by (tenant slug, sub_id) and by secret id."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, int], SecretContext] = {}
        self.by_secret_id: dict[int, SecretContext] = {}
        self.tenants_by_id: dict[int, Tenant] = {}
        self.tenants_by_slug: dict[str, Tenant] = {}
        self.secrets_by_tenant: dict[int, list[SecretContext]] = {}

    def rebuild(
        self,
        tenants: Iterable[Tenant],
        secrets: Iterable[Secret],
        parameters: Iterable[Parameter],
        assets: Mapping[int, AssetFlags],
    ) -> None:
        tenants_by_id = {t.id: t for t in tenants}
        tenant_rules: dict[int, list[Parameter]] = defaultdict(list)
        secret_rules: dict[int, list[Parameter]] = defaultdict(list)
        for p in parameters:
            if p.secret_id is not None:
                secret_rules[p.secret_id].append(p)
            elif p.tenant_id is not None:
                tenant_rules[p.tenant_id].append(p)
        by_key: dict[tuple[str, int], SecretContext] = {}
        by_secret_id: dict[int, SecretContext] = {}
        per_tenant: dict[int, list[SecretContext]] = defaultdict(list)
        for s in secrets:
            tenant = tenants_by_id.get(s.tenant_id)
            if tenant is None:
                continue
            ctx = SecretContext(
                secret=s,
                tenant=tenant,
                label=secret_label(tenant.slug, s.sub_id),
                create_rules=_effective_rules(tenant_rules[tenant.id], secret_rules[s.id], "CREATE"),
                join_rules=_effective_rules(tenant_rules[tenant.id], secret_rules[s.id], "JOIN"),
                assets=assets.get(tenant.id, AssetFlags()),
            )
            by_key[(tenant.slug, s.sub_id)] = ctx
            by_secret_id[s.id] = ctx
            per_tenant[tenant.id].append(ctx)
        # Swap whole maps at once: readers never see a half-built directory.
        self.tenants_by_id = tenants_by_id
        self.tenants_by_slug = {t.slug: t for t in tenants_by_id.values()}
        self.by_key = by_key
        self.by_secret_id = by_secret_id
        self.secrets_by_tenant = dict(per_tenant)

    def lookup(self, slug: str, sub_id: int) -> SecretContext | None:
        return self.by_key.get((slug.upper(), sub_id))


class HostResolver:
    """Maps a Host header to (tenant slug, sub_id) under the configured base domain."""

    def __init__(self, base_domain: str) -> None:
        self.base_domain = base_domain.lower()
        self._pattern = re.compile(r"^([a-z]{2,10})(?:-(\d{3}))?\." + re.escape(self.base_domain) + r"$")
        # Host header -> result; a fleet of frontends uses few distinct hosts.
        self._cache: dict[str, tuple[str, int] | None] = {}

    def resolve(self, host: str) -> tuple[str, int] | None:
        try:
            return self._cache[host]
        except KeyError:
            pass
        name = strip_port(host).lower()
        match = self._pattern.match(name)
        found = None if match is None else (match.group(1).upper(), int(match.group(2) or 0))
        if len(self._cache) >= 10_000:  # bounded: Host headers are client input
            self._cache.clear()
        self._cache[host] = found
        return found

    def is_base(self, host: str) -> bool:
        return strip_port(host).lower() == self.base_domain


def strip_port(host: str) -> str:
    host = host.strip()
    if host.startswith("["):  # IPv6 literal
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
