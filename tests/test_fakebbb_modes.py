"""The fake fleet's modes (TLS, gzip, chunked, churn, end-all) over real HTTP, read by b3lb's own NodeClient.

Every mode is checked on both answer paths: a fleet that records requests answers through its
RequestHandlers, one that records nothing takes the fast path (b3lb.testing.fakebbb_fast) for the load
file, getMeetings and create. Raw socket reads show what went over the wire.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from lxml import etree

from b3lb.config import ApiConfig
from b3lb.nodeclient import CONNECT, NodeClient, NodeRequestError, NodeResponse
from b3lb.testing.fakebbb import FakeFleet, FakeNode
from b3lb.testing.fakebbb_modes import accepts_gzip

SECRET = "fleet-modes-secret-0123456789"
PATHS = pytest.mark.parametrize("handlers", [True, False], ids=["handlers", "fast-path"])
FleetTest = Callable[[FakeFleet, NodeClient], Awaitable[None]]


def run(test: FleetTest, *, nodes: int = 1, handlers: bool = True, ca_in_config: bool = True, **modes: object) -> None:
    """`test(fleet, client)` against a started fleet; `client` trusts the fleet's CA through api.node_ca_file."""

    async def main() -> None:
        async with FakeFleet(nodes, secret=SECRET, record_requests=handlers, **modes) as fleet:  # type: ignore[arg-type]
            ca_file = str(fleet.ca_file) if fleet.ca_file is not None and ca_in_config else ""
            client = NodeClient(ApiConfig(node_ca_file=ca_file, node_request_timeout=5.0))
            try:
                await test(fleet, client)
            finally:
                await client.aclose()

    asyncio.run(main())


async def call(client: NodeClient, node: FakeNode, api_call: str, query: str = "") -> NodeResponse:
    response = await client.fetch(node.api_url(api_call, query), purpose="poll")
    assert response.code == 200, response.body[:200]
    return response


def meetings_of(body: bytes) -> dict[str, bytes]:
    """meetingID -> that <meeting> element's XML, from a getMeetings answer."""
    root = etree.fromstring(body)
    assert root.findtext("returncode") == "SUCCESS"
    return {m.findtext("meetingID"): etree.tostring(m) for m in root.iter("meeting")}


async def raw_get(node: FakeNode, url_path: str, headers: dict[str, str], tls: ssl.SSLContext | None = None
                  ) -> tuple[dict[str, str], bytes, int]:
    """One HTTP/1.1 GET on a fresh connection: (lower-cased headers, body as sent, number of chunks)."""
    reader, writer = await asyncio.open_connection(node.domain, node.port, ssl=tls)
    lines = [f"GET {url_path} HTTP/1.1", f"Host: {node.domain}:{node.port}", "Connection: close",
             *(f"{name}: {value}" for name, value in headers.items()), "", ""]
    writer.write("\r\n".join(lines).encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *header_lines = head.decode("latin-1").split("\r\n")
    assert " 200 " in status, status
    found = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    if found.get("transfer-encoding") != "chunked":
        return found, body, 0
    content, chunks = b"", 0
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return found, content, chunks
        content, body, chunks = content + body[:size], body[size + 2 :], chunks + 1


def path_of(url: str) -> str:
    return url.split("/", 3)[3].join(("/", ""))


# --- TLS ------------------------------------------------------------------------------------


@PATHS
def test_tls_nodes_verified_through_node_ca_file(tmp_path: Path, handlers: bool) -> None:
    async def check(fleet: FakeFleet, client: NodeClient) -> None:
        assert fleet.ca_file == tmp_path / "tls" / "ca.pem" and fleet.ca_file.is_file()
        for node in fleet.nodes:
            assert node.api_base.startswith(f"https://{node.domain}:")
            node.populate(2, 3)
            node.cpu = 1234
            assert len(meetings_of((await call(client, node, "getMeetings")).body)) == 2
            load = await client.fetch(node.load_url, purpose="poll")
            assert (load.code, load.body) == (200, b"1234\n")
            assert b"<running>false</running>" in (await call(client, node, "isMeetingRunning", "meetingID=x")).body
        # Each node has its own certificate, for its own address only.
        certificates = set()
        for node in fleet.nodes:
            _, writer = await asyncio.open_connection(node.domain, node.port, ssl=fleet.client_ssl_context())
            certificates.add(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
            writer.close()
        assert len(certificates) == len(fleet.nodes)

    run(check, nodes=3, handlers=handlers, tls_dir=tmp_path / "tls")


def test_tls_node_refused_without_the_ca(tmp_path: Path) -> None:
    async def check(fleet: FakeFleet, client: NodeClient) -> None:
        with pytest.raises(NodeRequestError) as failure:
            await client.fetch(fleet.nodes[0].api_url("getMeetings"), purpose="poll")
        assert failure.value.kind == CONNECT and "certificate" in str(failure.value)

    run(check, tls_dir=tmp_path, ca_in_config=False)


# --- gzip and chunked -----------------------------------------------------------------------


@PATHS
@pytest.mark.parametrize(("use_gzip", "chunked"), [(True, False), (False, True), (True, True)])
def test_encoded_answers_read_by_the_node_client(tmp_path: Path, handlers: bool, use_gzip: bool, chunked: bool
                                                 ) -> None:
    async def check(fleet: FakeFleet, client: NodeClient) -> None:
        node = fleet.nodes[0]
        node.populate(20, 5)  # about 50 kB: several chunks
        document = node.meetings_document()
        assert len(document) > 40_000
        tls = fleet.client_ssl_context()
        url = path_of(node.api_url("getMeetings"))
        sent, wire, chunks = await raw_get(node, url, {"Accept-Encoding": "gzip"}, tls)
        assert (sent.get("content-encoding") == "gzip") is use_gzip
        assert ("content-length" in sent) is not chunked
        assert (sent.get("transfer-encoding") == "chunked") is chunked
        assert (gzip.decompress(wire) if use_gzip else wire) == document
        if chunked and not use_gzip and not handlers:
            assert chunks >= 3  # the fast path writes 16 kB pieces
        plain, wire, _ = await raw_get(node, url, {}, tls)  # no Accept-Encoding: never gzip
        assert "content-encoding" not in plain and wire == document
        # b3lb's client (Accept-Encoding: gzip, deflate) decodes and de-chunks every answer.
        assert (await call(client, node, "getMeetings")).body == document
        assert (await client.fetch(node.load_url, purpose="poll")).body == b"0\n"
        created = await call(client, node, "create", "meetingID=api-1&name=Api+room")
        assert b"<meetingID>api-1</meetingID>" in created.body
        info = await call(client, node, "getMeetingInfo", "meetingID=api-1")  # always through the handlers
        assert b"<meetingName>Api room</meetingName>" in info.body
        if use_gzip:  # a small answer is encoded too
            small, wire, _ = await raw_get(node, path_of(node.api_url("isMeetingRunning", "meetingID=api-1")),
                                           {"Accept-Encoding": "deflate, gzip;q=0.5"}, tls)
            assert small.get("content-encoding") == "gzip" and b"<running>false" in gzip.decompress(wire)

    run(check, handlers=handlers, gzip=use_gzip, chunked=chunked, tls_dir=tmp_path if chunked else None)


def test_accepts_gzip() -> None:
    assert accepts_gzip("gzip, deflate") and accepts_gzip("deflate, GZIP;q=0.3") and accepts_gzip("x-gzip")
    assert not accepts_gzip("") and not accepts_gzip("deflate") and not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("gzip; q=0.000") and not accepts_gzip("br, identity")


# --- churn ----------------------------------------------------------------------------------


@PATHS
def test_churn_changes_the_documents_between_polls(handlers: bool) -> None:
    async def check(fleet: FakeFleet, client: NodeClient) -> None:
        for node in fleet.nodes:
            node.populate(20, 5)
        node = fleet.nodes[0]
        before = meetings_of((await call(client, node, "getMeetings")).body)
        after = meetings_of((await call(client, node, "getMeetings")).body)
        assert len(before) == len(after) == 20
        changed = [key for key in before if key in after and before[key] != after[key]]
        assert len(changed) == 2 and set(before) == set(after)  # 10 % of 20 meetings; no end yet
        for _ in range(50):  # ends 1 % of the fleet's own meetings per poll: 0.2 per node and poll
            for other in fleet.nodes:
                assert len(meetings_of((await call(client, other, "getMeetings")).body)) == 20
        assert fleet.churn is not None
        assert fleet.churn.changed == 2 * 102 and 19 <= fleet.churn.ended <= 21
        assert len(set(node.meetings) - set(before)) == len(set(before) - set(node.meetings)) >= 5

    run(check, nodes=2, handlers=handlers, churn=0.1)


@PATHS
def test_churn_never_ends_a_meeting_created_through_the_api(handlers: bool) -> None:
    async def check(fleet: FakeFleet, client: NodeClient) -> None:
        node = fleet.nodes[0]
        node.populate(9, 2)
        await call(client, node, "create", "meetingID=b3lb-room&name=Routed+room")
        await client.fetch(node.api_url("join", "meetingID=b3lb-room&fullName=Ann&redirect=false"))
        first = set(node.meetings)
        counts = set()
        for _ in range(100):  # churn 1.0: every meeting changes, one of ten ends, every poll
            listed = meetings_of((await call(client, node, "getMeetings")).body)
            assert "b3lb-room" in listed and len(listed) == 10
            counts.add(etree.fromstring(listed["b3lb-room"]).findtext("participantCount"))
        assert len(counts) >= 2  # its attendees came and went
        assert first & set(node.meetings) == {"b3lb-room"}  # every meeting the fleet made was replaced
        assert node.meetings["b3lb-room"].attendees  # never emptied by churn

    run(check, handlers=handlers, churn=1.0)


# --- end-all ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_end_all_empties_the_fleet(tmp_path: Path, tls: bool) -> None:
    async def check(fleet: FakeFleet, client: NodeClient) -> None:
        for node in fleet.nodes:
            node.populate(4, 2)
        await call(client, fleet.nodes[1], "create", "meetingID=b3lb-room&name=Routed+room")
        control = fleet.nodes[2].base_url + "/fleet/end-all"
        assert (await client.fetch(control, purpose="poll")).code == 405  # a POST only
        ended = await client.fetch(control, method="POST", body=b"", purpose="poll")
        assert (ended.code, ended.body) == (200, b"13\n")
        for node in fleet.nodes:
            assert b"<messageKey>noMeetings</messageKey>" in (await call(client, node, "getMeetings")).body
        again = await client.fetch(fleet.nodes[0].base_url + "/fleet/end-all", method="POST", body=b"")
        assert again.body == b"0\n"

    run(check, nodes=3, handlers=False, churn=0.1, gzip=True, tls_dir=tmp_path if tls else None)


# --- the command line ---------------------------------------------------------------------------


def test_cli_prints_https_hints_and_serves_the_modes(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "b3lb.testing.fakebbb", "--nodes", "2", "--secret", SECRET, "--meetings", "3",
               "--attendees", "2", "--tls", str(tmp_path), "--gzip", "--chunked", "--churn", "0.5"]
    repo = Path(__file__).parent.parent
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=repo,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().decode().strip() for _ in range(4)]
        name, address, port, secret = lines[0].split()
        assert (name, address, secret) == ("fake-0001", "127.0.1.1", SECRET)
        assert lines[2].endswith(f"--domain 127.0.1.1 --port {port} --protocol https --secret {SECRET}")
        assert (tmp_path / "ca.pem").is_file()

        async def poll() -> list[bytes]:
            stub = FakeFleet(1, secret=SECRET)  # never started: builds signed URLs
            stub.nodes[0].port = int(port)
            client = NodeClient(ApiConfig(node_ca_file=str(tmp_path / "ca.pem")))
            try:
                url = stub.nodes[0].api_url("getMeetings").replace("http://", "https://")
                return [(await client.fetch(url, purpose="poll")).body for _ in range(2)]
            finally:
                await client.aclose()

        first, second = asyncio.run(poll())
        assert len(meetings_of(first)) == len(meetings_of(second)) == 3 and first != second
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
