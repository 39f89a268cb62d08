"""The guard for tenant-supplied URLs (b3lb.urlguard) and the node client's callback session that uses it."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from b3lb.config import ApiConfig, CallbacksConfig, ConfigError, load_config
from b3lb.nodeclient import NodeClient
from b3lb.urlguard import GuardedResolver, URLGuard, URLRefused, loggable

REFUSED = [
    "http://127.0.0.1/ended",
    "http://127.1/ended",  # legacy IPv4 forms the C library accepts
    "http://2130706433/",
    "http://0x7f.1/",
    "http://user:pw@127.0.0.1/",
    "http://user:pw@example.org/",  # credentials: refused whatever the host
    "http://@example.org/",
    "http://[::1]/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # shared address space
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:a00:1]/",
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2002:a9fe:a9fe::1]/",  # 6to4 of 169.254.169.254
    "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "http://localhost:8000/",  # a name: resolved, then refused
    "ftp://example.org/",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "http:///no-host",
    "gopher://127.0.0.1:6379/_INFO",
]


@pytest.mark.parametrize("url", REFUSED)
@pytest.mark.gen_test(timeout=10)
async def test_refused_by_default(url: str):
    with pytest.raises(URLRefused) as refused:
        await URLGuard().check(url)
    assert "?" not in str(refused.value) and "pw" not in str(refused.value)


@pytest.mark.parametrize("url", ["http://8.8.8.8/ended?x=1", "https://[2606:4700:4700::1111]:8443/e", "https://1.1.1.1"])
@pytest.mark.gen_test(timeout=10)
async def test_public_addresses_pass(url: str):
    await URLGuard().check(url)  # IP literals: no lookup, no traffic


@pytest.mark.gen_test(timeout=10)
async def test_allowed_networks_open_only_their_ranges():
    guard = URLGuard(["127.0.0.0/8", "10.0.0.0/8", "::1/128"])
    for url in ("http://127.0.0.1/", "http://localhost:8000/", "http://10.1.2.3/", "http://[::1]/",
                "http://[::ffff:127.0.0.1]/"):
        await guard.check(url)
    for url in ("http://192.168.0.1/", "http://169.254.169.254/", "http://user:pw@127.0.0.1/", "ftp://127.0.0.1/",
                "http://127.1/"):  # still refused: credentials, scheme, and ambiguous numeric forms
        with pytest.raises(URLRefused):
            await guard.check(url)


def test_loggable_drops_credentials_query_and_fragment():
    assert loggable("https://user:pw@Front.Example:8443/b3lb/ended?token=s3cret&x=1#frag") == \
        "https://front.example:8443/b3lb/ended"
    assert loggable("http://[::1]:80/e?k=v") == "http://[::1]:80/e"
    assert loggable("http://host") == "http://host"
    assert loggable("http://[broken/x?secret") == "<unparsable URL>"
    assert len(loggable("http://h/" + "a" * 500)) < 210


def test_allowed_networks_are_validated_at_config_load(tmp_path):
    config = load_config(env={"B3LB_CALLBACKS_ALLOWED_NETWORKS": "10.0.0.0/8, 127.0.0.1"})
    assert config.callbacks.allowed_networks == ["10.0.0.0/8", "127.0.0.1"]
    assert load_config(env={}).callbacks.allowed_networks == []
    path = tmp_path / "b3lb.conf"
    path.write_text('[callbacks]\nallowed_networks = ["10.0.0.0/8", "10.0.0.0/33"]\n')
    with pytest.raises(ConfigError, match=r"callbacks\.allowed_networks: .*10\.0\.0\.0/33"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match=r"callbacks\.allowed_networks"):
        load_config(env={"B3LB_CALLBACKS_ALLOWED_NETWORKS": "intranet"})
    with pytest.raises(ConfigError, match=r"api\.node_ca_file"):
        load_config(env={"B3LB_API_NODE_CA_FILE": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigError, match=r"api\.max_node_answer_bytes"):
        load_config(env={"B3LB_API_MAX_NODE_ANSWER_BYTES": "10"})


# ---------------------------------------------------------------- requests through the guard


class Receiver:
    """A frontend's callback endpoint on one loopback address that records every hit."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0) -> None:
        self.hits: list[tuple[str, str]] = []  # (uri, Host header)
        receiver = self

        class Hit(RequestHandler):
            def get(self) -> None:
                receiver.hits.append((self.request.uri or "", self.request.headers.get("Host", "")))
                if self.request.path == "/redirect":
                    self.redirect("http://10.0.0.1/inside")

        sock = bind_sockets(port, address, family=socket.AF_INET)[0]
        self.port = sock.getsockname()[1]
        self.address = address
        self.server = HTTPServer(Application([(r"/.*", Hit)]))
        self.server.add_sockets([sock])

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.address}:{self.port}{path}"


def client(*allowed: str) -> NodeClient:
    return NodeClient(ApiConfig(node_connect_timeout=1.0), CallbacksConfig(allowed_networks=list(allowed)))


@pytest.mark.gen_test(timeout=20)
async def test_callback_session_refuses_loopback_unless_allowed():
    receiver = Receiver()
    default, allowing = client(), client("127.0.0.0/8")
    try:
        for url in (receiver.url("/ended?token=1"), receiver.url("/ended", host="localhost"),
                    receiver.url("/ended", host="127.1"), receiver.url("/ended", host="user:pw@127.0.0.1")):
            with pytest.raises(URLRefused):
                await default.fetch_callback(url, timeout=2)
        await asyncio.sleep(0.1)
        assert receiver.hits == []  # nothing reached the receiver
        assert await allowing.fetch_callback(receiver.url("/ended?token=1"), timeout=2) == 200
        assert await allowing.fetch_callback(receiver.url("/by-name", host="localhost"), timeout=2) == 200
        assert await allowing.fetch_callback(receiver.url("/redirect"), timeout=2) == 302  # never followed
        assert [uri for uri, _ in receiver.hits] == ["/ended?token=1", "/by-name", "/redirect"]
        assert receiver.hits[1][1] == f"localhost:{receiver.port}"  # Host stays the name
    finally:
        await default.aclose()
        await allowing.aclose()
        receiver.server.stop()


class FixedDNS(AbstractResolver):
    """Name lookups with fixed answers: a name whose addresses change between lookups (DNS rebinding)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        addresses = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
                for a in addresses]

    async def close(self) -> None:
        pass


@pytest.mark.gen_test(timeout=20)
async def test_connections_go_only_to_the_addresses_the_guard_allowed():
    allowed, other = Receiver("127.0.0.2"), None
    try:
        other = Receiver("127.0.0.1", allowed.port)  # the same port on a refused address
        guard = URLGuard(["127.0.0.2/32"])
        # First lookup: a refused and an allowed address; second: only the refused one (rebinding).
        dns = FixedDNS(["127.0.0.1", "127.0.0.2"], ["127.0.0.1"])
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(guard, dns), use_dns_cache=False, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"http://frontend.test:{allowed.port}/ended"
            async with session.get(url) as response:
                assert response.status == 200
            with pytest.raises(URLRefused):
                await session.get(url)
        assert allowed.hits == [("/ended", f"frontend.test:{allowed.port}")] and other.hits == []
    finally:
        allowed.server.stop()
        if other is not None:
            other.server.stop()
