"""The one guard for outbound URLs that tenants supply (end callback now, recording-ready callback next).

A tenant puts any URL into its create (`meta_endCallbackUrl`), and b3lb fetches it later from inside
the operator's network. Without a guard a tenant could make b3lb probe that network: loopback
services, private ranges, the cloud metadata address. A URL passes only when it is http(s), carries no
credentials, names a host, and every address b3lb connects to is public, or inside a network the
operator allows (`[callbacks] allowed_networks`).

The check happens where the connection is made: `GuardedResolver` is the resolver of the callback
session, so the addresses that were checked are the ones connected to (a name that resolves to a
public address for the check and to 127.0.0.1 for the connection cannot slip through), while the
Host header and TLS server name stay the URL's name. IP literals never reach a resolver (aiohttp
connects to them directly), so `check_url` checks them before the request.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits are an IPv4 address
LOGGED_URL_CHARS = 200


class URLRefused(Exception):
    """A tenant-supplied URL that b3lb will not fetch. The message says why and holds no query string."""


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) as networks; ValueError names the bad entry."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not a network: {cidr!r}") from None
    return tuple(networks)


def loggable(url: str) -> str:
    """The URL as it may appear in logs: scheme, host, port and path; no credentials, query or fragment
    (a callback's query string often carries a frontend's token)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    shown = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else f"{netloc}{parts.path}"
    return shown if len(shown) <= LOGGED_URL_CHARS else shown[:LOGGED_URL_CHARS] + "..."


def _embedded_ipv4(address: Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address stands for (mapped, 6to4, Teredo client, NAT64)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    embedded = [address.ipv4_mapped, address.sixtofour, address.teredo[1] if address.teredo else None]
    if address in NAT64:
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [a for a in embedded if a is not None]


def _category(address: Address) -> str | None:
    """Why an address is not a public one, or None when it is."""
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local"
    if not address.is_global:
        return "not globally routable"
    return None


def _ip_literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _legacy_ipv4(host: str) -> bool:
    """Forms like 2130706433, 127.1 or 0x7f.1 that the C library reads as an IPv4 address."""
    try:
        socket.inet_aton(host)
    except (OSError, ValueError):
        return False
    return True


class URLGuard:
    """Decides which tenant-supplied URLs and addresses b3lb may connect to."""

    def __init__(self, allowed_networks: Iterable[str] = ()) -> None:
        self.allowed = parse_networks(allowed_networks)

    def refusal(self, address: Address) -> str | None:
        """Why b3lb must not connect to `address`, or None when it may."""
        candidates: list[Address] = [address, *_embedded_ipv4(address)]
        if any(candidate in network for candidate in candidates for network in self.allowed):
            return None
        for candidate in candidates:
            category = _category(candidate)
            if category is not None:
                shown = str(address) if candidate == address else f"{address} (IPv4 {candidate})"
                return f"address {shown} is {category}"
        return None

    def check_url(self, url: URL) -> None:
        """Everything that needs no name lookup: scheme, credentials, host, and IP literals.
        Raises URLRefused."""
        if url.scheme not in ALLOWED_SCHEMES:
            raise URLRefused(f"scheme {url.scheme[:20]!r} is not http or https")
        if "@" in (url.raw_authority or ""):
            raise URLRefused("URL carries credentials")
        host = url.raw_host
        if not host:
            raise URLRefused("URL has no host")
        literal = _ip_literal(host)
        if literal is not None:
            reason = self.refusal(literal)
            if reason is not None:
                raise URLRefused(reason)
        elif _legacy_ipv4(host):
            raise URLRefused("host is a non-canonical IPv4 address")

    async def check(self, url: str) -> URL:
        """The whole check, name lookup included, for a URL as a tenant gave it. Raises URLRefused.
        (A request must still go through a session with GuardedResolver: names can change.)"""
        try:
            parsed = URL(url, encoded=True)
        except (ValueError, TypeError):
            raise URLRefused("unparsable URL") from None
        self.check_url(parsed)
        host = parsed.raw_host or ""
        if _ip_literal(host) is None:
            await GuardedResolver(self).resolve(host, parsed.port or 0, family=socket.AF_UNSPEC)
        return parsed


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that hands the connector only the addresses the guard allows."""

    def __init__(self, guard: URLGuard, inner: AbstractResolver | None = None) -> None:
        """`inner` does the lookups; by default getaddrinfo in a thread (never blocks the loop)."""
        self.guard = guard
        self.inner = inner if inner is not None else ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family=family)
        allowed: list[ResolveResult] = []
        reasons: list[str] = []
        for result in results:
            address = _ip_literal(result["host"])
            reason = self.guard.refusal(address) if address is not None else f"unusable address {result['host']!r}"
            if reason is None:
                allowed.append(result)
            else:
                reasons.append(reason)
        if not allowed:
            raise URLRefused(f"{host[:100]} resolves only to refused addresses ({reasons[0] if reasons else 'none'})")
        return allowed

    async def close(self) -> None:
        await self.inner.close()
