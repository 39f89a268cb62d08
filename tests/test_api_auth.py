"""The API front door end to end: checksums, tenant resolution, call names, methods, hostile input.

Spec sections 1 (checksum), 2.2 (version), 2.15-2.17 (unsupported calls and methods), 4.1-4.3
(hosts and routes) and 7 items 1-9 and 30. Everything goes over real HTTP to a Harness.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from urllib.parse import parse_qsl, urlsplit

import pytest
from lxml import etree
from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.iostream import StreamClosedError

from b3lb.checksum import digest
from b3lb.testing.fakebbb import FakeNode, checksum_is_valid
from b3lb.testing.harness import BASE_DOMAIN, Harness, add_secret

CHECKSUM_MESSAGE = "You did not pass the checksum security check"
EMPTY_SECRET_SHA1 = "7c77eb87aee52c58f38af3f45bd3913a9d084aaa"
EMPTY_SECRET_SHA256 = "3fa997df9d8382ff20dce34bf95809fe67483d6c06f85659f0d3f397f684bd6c"
QUERY_A = (
    "name=Weekly+Sync&meetingID=room-42&record=true"
    "&meta_endCallbackUrl=https%3A%2F%2Fgl.example.org%2Fended%3Froom%3D42"
)
ALGORITHMS = ("sha1", "sha256", "sha384", "sha512")


# ---------------------------------------------------------------- helpers


def xml(response: HTTPResponse) -> etree._Element:
    assert response.body, f"empty body, HTTP {response.code}"
    return etree.fromstring(response.body)


def assert_success(response: HTTPResponse) -> etree._Element:
    assert response.code == 200, (response.code, response.body)
    doc = xml(response)
    assert doc.tag == "response"
    assert doc.findtext("returncode") == "SUCCESS", response.body
    return doc


def assert_failed(response: HTTPResponse, key: str) -> etree._Element:
    assert response.code == 200, (response.code, response.body)
    doc = xml(response)
    assert doc.findtext("returncode") == "FAILED", response.body
    assert doc.findtext("messageKey") == key, response.body
    return doc


def assert_checksum_error(response: HTTPResponse) -> None:
    doc = assert_failed(response, "checksumError")
    assert doc.findtext("message") == CHECKSUM_MESSAGE
    assert response.headers["Content-Type"].startswith("text/xml")


def assert_authenticated(response: HTTPResponse) -> None:
    """Got past authentication: anything but a checksum failure (and never a server error)."""
    assert response.code < 500, (response.code, response.body)
    if response.code == 200 and response.body.startswith(b"<"):
        assert xml(response).findtext("messageKey") != "checksumError", response.body


def node_hosting(h: Harness, meeting_id: str) -> FakeNode:
    nodes = [n for n in h.fleet.nodes if meeting_id in n.meetings]
    assert len(nodes) == 1, f"{meeting_id!r} hosted on {nodes}"
    return nodes[0]


def node_calls(h: Harness, call: str) -> list[tuple[FakeNode, str]]:
    """(node, raw query) of every request for `call` the fleet received, in order per node."""
    return [(n, r.query) for n in h.fleet.nodes for r in n.requests if r.call == call]


def client_calls(h: Harness) -> list[str]:
    """Calls the nodes received other than the poller's own getMeetings and load requests."""
    return [r.call for n in h.fleet.nodes for r in n.requests if r.call not in ("getMeetings", "/b3lb/load")]


def with_checksum(query: str, checksum: str) -> str:
    return f"{query}&checksum={checksum}" if query else f"checksum={checksum}"


async def follow(h: Harness, location: str) -> HTTPResponse:
    """Open a join redirect on the fake node (which validates the node checksum strictly)."""
    return await h.client.fetch(HTTPRequest(location, follow_redirects=False), raise_error=False)


async def raw_http(h: Harness, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (the HTTP client would fix up what we want to be broken)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(-1), timeout=5)
    finally:
        writer.close()
    if not answer:
        return 0, {}, b""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


# ---------------------------------------------------------------- spec 1.10 worked examples, 7.1


@pytest.mark.gen_test(timeout=30)
async def test_example_a_all_algorithms_and_outbound_resigning(db_url: str) -> None:
    """A: create verifies with each algorithm; J: the node gets the rewritten query, correctly re-signed."""
    async with Harness(db_url, nodes=1) as h:
        tenant_id = h.tenants["ABC"].tenant_id
        await h.pool.execute("UPDATE tenant SET record_by_default = true WHERE id = $1", tenant_id)
        await h.pool.execute(
            "INSERT INTO asset (tenant_id, logo, logo_mime, logo_data) VALUES ($1, 'logo.png', 'image/png', $2)",
            tenant_id, b"\x89PNG",
        )
        await h.reload()
        secret = h.secret()
        for algorithm in ALGORITHMS:
            assert_success(await h.call("create", QUERY_A, algorithm=algorithm))
        checksum = digest("sha1", "create", QUERY_A, secret)
        assert_success(await h.call("create", raw_query=with_checksum(QUERY_A, checksum.upper())))
        # one-character mutations of checksum and query fail
        bad = checksum[:7] + ("0" if checksum[7] != "0" else "1") + checksum[8:]
        assert_checksum_error(await h.call("create", raw_query=with_checksum(QUERY_A, bad)))
        assert_checksum_error(await h.call("create", raw_query=with_checksum(QUERY_A.replace("42", "43"), checksum)))
        assert_checksum_error(await h.call("create", raw_query=with_checksum(QUERY_A.replace("+", "%20"), checksum)))
        node = node_hosting(h, "room-42")
        nonce = await h.pool.fetchval("SELECT nonce::text FROM meeting WHERE meeting_id = 'room-42'")
        expected = (
            "name=Weekly+Sync&meetingID=room-42&record=true"
            f"&meta_endCallbackUrl=https%3A%2F%2F{BASE_DOMAIN}%2Fb3lb%2Fb%2Fmeeting%2Fend%3Fnonce%3D{nonce}"
            f"&logo=https%3A%2F%2F{BASE_DOMAIN}%2Fb3lb%2Ft%2Fabc%2Flogo"
            f"&meta_b3lb-recordset={nonce}"
        )
        forwarded = [q for _, q in node_calls(h, "create")]
        assert len(forwarded) == 5  # the failed ones never reached the node
        for query in forwarded:
            # the cluster algorithm (SHA-256) signs outbound with the node secret, whatever the client used
            assert query == expected + "&checksum=" + digest("sha256", "create", expected, node.secret)
            assert checksum_is_valid("create", query, node.secret)
        assert node.meetings["room-42"].name == "Weekly Sync"


@pytest.mark.gen_test(timeout=30)
async def test_example_b_plus_versus_percent20_in_join(db_url: str) -> None:
    async with Harness(db_url, nodes=2) as h:
        assert_success(await h.call("create", "meetingID=room-42&name=Room"))
        secret = h.secret()
        plus = "meetingID=room-42&fullName=J%C3%BCrgen+M%C3%BCller&role=MODERATOR"
        pct = "meetingID=room-42&fullName=J%C3%BCrgen%20M%C3%BCller&role=MODERATOR"
        lower = "meetingID=room-42&fullName=J%c3%bcrgen%20M%c3%bcller&role=MODERATOR"
        for query in (plus, pct, lower):
            for algorithm in ("sha1", "sha256"):
                r = await h.call("join", query, algorithm=algorithm)
                assert r.code == 302, (query, r.code, r.body)
                # the re-signed redirect is valid on the node and carries the decoded name
                joined = await follow(h, r.headers["Location"])
                assert joined.code == 302, (joined.code, joined.body)
        attendees = node_hosting(h, "room-42").meetings["room-42"].attendees
        assert [a.full_name for a in attendees] == ["Jürgen Müller"] * 6
        # swapping the checksums of the two encodings fails
        for mine, other in ((plus, pct), (pct, plus), (lower, pct)):
            r = await h.call("join", raw_query=with_checksum(mine, digest("sha256", "join", other, secret)))
            assert_checksum_error(r)


@pytest.mark.gen_test(timeout=30)
async def test_checksum_position_first_middle_last(db_url: str) -> None:
    """C and 7.2: the checksum pair may be anywhere in the query."""
    async with Harness(db_url, nodes=1) as h:
        assert_success(await h.call("create", "meetingID=room-42&name=Room"))
        secret = h.secret()
        stripped = "meetingID=room-42&redirect=false&fullName=Ann&role=VIEWER"
        value = digest("sha256", "join", stripped, secret)
        for query in (
            f"checksum={value}&{stripped}",
            f"meetingID=room-42&checksum={value}&redirect=false&fullName=Ann&role=VIEWER",
            f"{stripped}&checksum={value}",
        ):
            r = await h.call("join", raw_query=query)
            assert r.code == 302, (query, r.code, r.body)
            location = urlsplit(r.headers["Location"])
            assert ("redirect", "false") in parse_qsl(location.query)
        info = "meetingID=room-42"
        value = digest("sha1", "getMeetingInfo", info, secret)
        for query in (f"checksum={value}&{info}", f"{info}&checksum={value}"):
            assert_success(await h.call("getMeetingInfo", raw_query=query))
        # B3LB's own outbound form for "no parameters": `?&checksum=` hashes the empty string
        empty = digest("sha256", "getMeetings", "", secret)
        assert_success(await h.call("getMeetings", raw_query=f"&checksum={empty}"))
        # empty pairs are hashed as sent too
        value = digest("sha256", "getMeetingInfo", "&meetingID=room-42&", secret)
        assert_success(await h.call("getMeetingInfo", raw_query=f"&meetingID=room-42&&checksum={value}"))
        assert_checksum_error(await h.call("getMeetingInfo", raw_query=f"meetingID=room-42&checksum={value}"))


@pytest.mark.gen_test(timeout=30)
async def test_bad_checksums_are_rejected(db_url: str) -> None:
    """7.2: missing, empty, and wrong-length checksums; D: upper-case hex passes."""
    async with Harness(db_url, nodes=1, tenants=("ABC", "XYZ")) as h:
        secret = h.secret()
        query = "meetingID=room-42"
        sha512 = digest("sha512", "isMeetingRunning", query, secret)
        for raw in (
            query,
            "",
            f"{query}&checksum=",
            f"checksum=&{query}",
            f"{query}&checksum={sha512[:39]}",
            f"{query}&checksum={sha512[:41]}",
            f"{query}&checksum={sha512[:95]}",
            f"{query}&checksum={sha512[:63]}",
            f"{query}&checksum={sha512[:127]}",
            f"{query}&checksum={'z' * 64}",
            f"{query}&checksum={digest('sha256', 'getMeetingInfo', query, secret)}",  # other call's checksum
            f"{query}&checksum={digest('sha256', 'isMeetingRunning', query, h.secret('XYZ'))}",  # other tenant
        ):
            assert_checksum_error(await h.call("isMeetingRunning", raw_query=raw))
        assert_success(await h.call("isMeetingRunning", raw_query=f"{query}&checksum={sha512}"))
        assert_success(await h.call("isMeetingRunning", raw_query=f"{query}&checksum={sha512.upper()}"))
        r = await h.call("getMeetings", raw_query="checksum=" + digest("sha1", "getMeetings", "", secret).upper())
        assert_success(r)
        assert not node_calls(h, "isMeetingRunning")  # unknown meeting: answered by the LB


# ---------------------------------------------------------------- 7.3 - 7.5 encodings, order, duplicates


@pytest.mark.gen_test(timeout=30)
async def test_encoding_variants_pass_and_forward_decoded_values(db_url: str) -> None:
    """7.3 and H: each spelling passes with its own checksum; the node sees the decoded value."""
    async with Harness(db_url, nodes=1) as h:
        names = {
            "m-plus": "J%C3%BCrgen+M%C3%BCller",
            "m-pct20": "J%C3%BCrgen%20M%C3%BCller",
            "m-lower": "J%c3%bcrgen+M%c3%bcller",
        }
        for meeting_id, name in names.items():
            assert_success(await h.call("create", f"meetingID={meeting_id}&name={name}", algorithm="sha1"))
        node = h.fleet.nodes[0]
        assert {m: node.meetings[m].name for m in names} == dict.fromkeys(names, "Jürgen Müller")
        # * and %2A are the same meeting a*b
        first = assert_success(await h.call("create", "meetingID=a*b&name=Star*Room", algorithm="sha1"))
        second = assert_success(await h.call("create", "meetingID=a%2Ab&name=Star%2ARoom", algorithm="sha1"))
        assert second.findtext("messageKey") == "duplicateWarning"
        assert first.findtext("internalMeetingID") == second.findtext("internalMeetingID")
        assert node.meetings["a*b"].name == "Star*Room"
        # a checksum over the other spelling does not pass
        r = await h.call(
            "create",
            raw_query=with_checksum("meetingID=a%2Ab&name=Star%2ARoom",
                                    digest("sha1", "create", "meetingID=a*b&name=Star*Room", h.secret())),
        )
        assert_checksum_error(r)
        assert_success(await h.call("getMeetingInfo", "meetingID=a%2ab"))
        assert_success(await h.call("getMeetingInfo", "meetingID=a*b"))


@pytest.mark.gen_test(timeout=30)
async def test_parameter_order_and_duplicate_keys(db_url: str) -> None:
    """7.4: order is hashed as sent. 7.5: the first of duplicate keys routes, all are forwarded."""
    async with Harness(db_url, nodes=1) as h:
        secret = h.secret()
        assert_success(await h.call("create", "name=Order&meetingID=ord"))
        value = digest("sha256", "getMeetingInfo", "password=x&meetingID=ord", secret)
        assert_success(await h.call("getMeetingInfo", raw_query=f"password=x&meetingID=ord&checksum={value}"))
        assert_checksum_error(await h.call("getMeetingInfo", raw_query=f"meetingID=ord&password=x&checksum={value}"))

        assert_success(await h.call("create", "meetingID=dup-x&name=Dup&meetingID=dup-y"))
        node = h.fleet.nodes[0]
        assert "dup-x" in node.meetings and "dup-y" not in node.meetings
        forwarded = [q for _, q in node_calls(h, "create") if "dup-x" in q][0]
        assert [v for k, v in parse_qsl(forwarded) if k == "meetingID"] == ["dup-x", "dup-y"]
        assert_success(await h.call("getMeetingInfo", "meetingID=dup-x&meetingID=dup-y"))
        assert_failed(await h.call("getMeetingInfo", "meetingID=dup-y&meetingID=dup-x"), "notFound")
        assert_failed(await h.call("getMeetingInfo", "meetingID=dup-y"), "notFound")


# ---------------------------------------------------------------- 7.6 - 7.8 secrets, algorithms, form POST


@pytest.mark.gen_test(timeout=30)
async def test_rollover_secret2_and_empty_secret2(db_url: str) -> None:
    """E and 7.6: secret and secret2 both pass; an empty secret2 never authenticates."""
    async with Harness(db_url, nodes=1) as h:
        new_secret = hashlib.sha256(b"rollover").hexdigest()
        old_secret = await add_secret(h.pool, h.tenants["ABC"], 1, secret2=new_secret)
        await h.reload()
        query = "meetingID=room-42"
        for secret in (old_secret, new_secret):
            for path_style in (False, True):
                r = await h.call("isMeetingRunning", query, sub_id=1, secret=secret, path_style=path_style)
                assert_success(r)
        # secret2 belongs to sub 1 only
        assert_checksum_error(await h.call("isMeetingRunning", query, secret=new_secret))
        assert_checksum_error(await h.call("isMeetingRunning", query, slug="XYZ", secret=new_secret))
        # tenant ABC sub 0 has an empty secret2: the empty-secret digests of 7.6 are rejected everywhere
        for slug, sub_id in (("ABC", 0), ("XYZ", 0), ("ABC", 1)):
            for value in (EMPTY_SECRET_SHA1, EMPTY_SECRET_SHA256):
                for path_style in (False, True):
                    r = await h.call("getMeetings", slug=slug, sub_id=sub_id, raw_query=f"checksum={value}",
                                     path_style=path_style)
                    assert_checksum_error(r)
        assert digest("sha1", "getMeetings", "", "") == EMPTY_SECRET_SHA1
        assert digest("sha256", "getMeetings", "", "") == EMPTY_SECRET_SHA256


@pytest.mark.gen_test(timeout=30)
async def test_checksum_hash_parameter(db_url: str) -> None:
    """F and 7.7: checksumHash selects the algorithm and is itself hashed."""
    async with Harness(db_url, nodes=1) as h:
        secret = h.secret()
        q1 = "meetingID=room-42&checksumHash=sha1"
        assert_success(await h.call("isMeetingRunning", q1, algorithm="sha1"))
        q512 = "meetingID=room-42&checksumHash=sha512"
        assert_success(await h.call("isMeetingRunning", q512, algorithm="sha512"))
        # sha512 requested, a (valid) 64-char SHA-256 checksum supplied → fail
        assert_checksum_error(await h.call("isMeetingRunning", q512, algorithm="sha256"))
        assert_checksum_error(await h.call("isMeetingRunning", q1, algorithm="sha256"))
        # checksumHash is part of the hashed string: dropping it from the signed text fails
        value = digest("sha1", "isMeetingRunning", "meetingID=room-42", secret)
        assert_checksum_error(await h.call("isMeetingRunning", raw_query=f"{q1}&checksum={value}"))
        # an unknown value falls back to the length rule
        assert_success(await h.call("isMeetingRunning", "meetingID=room-42&checksumHash=md5", algorithm="sha384"))


@pytest.mark.gen_test(timeout=30)
async def test_algorithm_allow_list(db_url: str) -> None:
    async with Harness(db_url, nodes=1, allowed_sha_algorithms=["sha256"]) as h:
        query = "meetingID=room-42"
        assert_success(await h.call("isMeetingRunning", query, algorithm="sha256"))
        for algorithm in ("sha1", "sha384", "sha512"):
            assert_checksum_error(await h.call("isMeetingRunning", query, algorithm=algorithm))
        assert_checksum_error(await h.call("isMeetingRunning", query + "&checksumHash=sha1", algorithm="sha1"))
        assert_success(await h.call("isMeetingRunning", query + "&checksumHash=sha256", algorithm="sha256"))


@pytest.mark.gen_test(timeout=30)
async def test_form_post_with_parameters_only_in_the_body(db_url: str) -> None:
    """G and 7.8: empty URL query + form body: checksum over "" or over the body is accepted."""
    async with Harness(db_url, nodes=1) as h:
        secret = h.secret()
        form = "application/x-www-form-urlencoded"
        body = "meetingID=form-room&name=Form+Room"
        over_empty = digest("sha256", "create", "", secret)
        r = await h.request("/bigbluebutton/api/create", host=f"abc.{BASE_DOMAIN}", method="POST",
                            body=f"{body}&checksum={over_empty}".encode(), content_type=form)
        assert_success(r)
        assert h.fleet.nodes[0].meetings["form-room"].name == "Form Room"
        for info_body in (
            f"meetingID=form-room&checksum={digest('sha256', 'getMeetingInfo', '', secret)}",
            f"checksum={digest('sha1', 'getMeetingInfo', 'meetingID=form-room', secret)}&meetingID=form-room",
            f"meetingID=form-room&checksum={digest('sha256', 'getMeetingInfo', 'meetingID=form-room', secret)}",
        ):
            r = await h.request("/bigbluebutton/api/getMeetingInfo", host=f"abc.{BASE_DOMAIN}", method="POST",
                                body=info_body.encode(), content_type=form + "; charset=UTF-8")
            doc = assert_success(r)
            assert doc.findtext("meetingID") == "form-room"
        path_r = await h.request("/b3lb/t/abc/bbb/api/getMeetingInfo", method="POST", content_type=form,
                                 body=f"meetingID=form-room&checksum={digest('sha1', 'getMeetingInfo', '', secret)}"
                                 .encode())
        assert_success(path_r)
        # wrong checksum, wrong content type, a query plus a body checksum: all fail
        for content_type, url_query, form_body in (
            (form, "", f"meetingID=form-room&checksum={digest('sha256', 'getMeetingInfo', 'x', secret)}"),
            ("text/plain", "", f"meetingID=form-room&checksum={digest('sha256', 'getMeetingInfo', '', secret)}"),
            (form, "?meetingID=form-room", f"checksum={digest('sha256', 'getMeetingInfo', '', secret)}"),
            (form, "", "meetingID=form-room&checksum="),
            (form, "", "meetingID=form-room"),
        ):
            r = await h.request(f"/bigbluebutton/api/getMeetingInfo{url_query}", host=f"abc.{BASE_DOMAIN}",
                                method="POST", body=form_body.encode(), content_type=content_type)
            assert_checksum_error(r)
        # a GET never reads the body
        r = await h.request("/bigbluebutton/api/getMeetings", host=f"abc.{BASE_DOMAIN}")
        assert_checksum_error(r)


# ---------------------------------------------------------------- 7.9, 4.1-4.3 tenant resolution


@pytest.mark.gen_test(timeout=30)
async def test_tenant_resolution_by_host_and_path(db_url: str) -> None:
    async with Harness(db_url, nodes=1, tenants=("ABC", "XYZ")) as h:
        sub_secret = await add_secret(h.pool, h.tenants["ABC"], 1)
        await h.reload()
        query = h.signed("getMeetings", "", h.secret())
        path = f"/bigbluebutton/api/getMeetings?{query}"
        for host in (f"abc.{BASE_DOMAIN}", "ABC.LB.TEST", f"Abc.{BASE_DOMAIN}:8443", f"abc-000.{BASE_DOMAIN}"):
            assert_success(await h.request(path, host=host))
        for host in (
            f"nope.{BASE_DOMAIN}",
            f"abc-01.{BASE_DOMAIN}",
            f"abc-0001.{BASE_DOMAIN}",
            f"abc-002.{BASE_DOMAIN}",  # unknown sub id
            f"abc-001.{BASE_DOMAIN}",  # other secret
            f"xyz.{BASE_DOMAIN}",
            BASE_DOMAIN,
            f"abc.{BASE_DOMAIN}.evil.example",
            f"a.{BASE_DOMAIN}",
            f"abc1.{BASE_DOMAIN}",
            "127.0.0.1",
        ):
            assert_checksum_error(await h.request(path, host=host))
        sub_query = h.signed("getMeetings", "", sub_secret)
        assert_success(await h.request(f"/bigbluebutton/api/getMeetings?{sub_query}", host=f"abc-001.{BASE_DOMAIN}"))
        # path form takes precedence over the host
        for host in (BASE_DOMAIN, f"xyz.{BASE_DOMAIN}", "whatever.example"):
            assert_success(await h.request(f"/b3lb/t/abc/bbb/api/getMeetings?{query}", host=host))
            assert_success(await h.request(f"/b3lb/t/abc-001/bbb/api/getMeetings?{sub_query}", host=host))
        assert_success(await h.request(f"/b3lb/t/abc-000/bbb/api/getMeetings?{query}"))
        assert_checksum_error(await h.request(f"/b3lb/t/abc-001/bbb/api/getMeetings?{query}"))
        assert_checksum_error(await h.request(f"/b3lb/t/xyz/bbb/api/getMeetings?{query}"))
        assert_checksum_error(await h.request(f"/b3lb/t/nope/bbb/api/getMeetings?{query}"))
        assert_checksum_error(await h.request(f"/b3lb/t/abc-002/bbb/api/getMeetings?{query}"))
        # malformed path tenants are not routes at all
        for bad in ("/b3lb/t/ABC/bbb/api/getMeetings", "/b3lb/t/abc-01/bbb/api/getMeetings",
                    "/b3lb/t/a/bbb/api/getMeetings", "/b3lb/t/abc1/bbb/api/getMeetings"):
            r = await h.request(f"{bad}?{query}")
            assert r.code == 404, (bad, r.code)
        # the harness' own path-style helper
        assert_success(await h.call("getMeetings", path_style=True))
        assert_success(await h.call("getMeetings", path_style=True, sub_id=1))


@pytest.mark.gen_test(timeout=30)
async def test_x_forwarded_host_ignored_from_untrusted_peers(db_url: str) -> None:
    async with Harness(db_url, nodes=1) as h:
        path = "/bigbluebutton/api/getMeetings?" + h.signed("getMeetings", "", h.secret())
        r = await h.request(path, host=BASE_DOMAIN, headers={"X-Forwarded-Host": f"abc.{BASE_DOMAIN}"})
        assert_checksum_error(r)
        r = await h.request(path, host=f"abc.{BASE_DOMAIN}", headers={"X-Forwarded-Host": f"nope.{BASE_DOMAIN}"})
        assert_success(r)


@pytest.mark.gen_test(timeout=30)
async def test_x_forwarded_host_honoured_from_trusted_proxy(db_url: str) -> None:
    async with Harness(db_url, nodes=1, tenants=("ABC", "XYZ"), server={"trusted_proxies": ["127.0.0.1"]}) as h:
        path = "/bigbluebutton/api/getMeetings?" + h.signed("getMeetings", "", h.secret())
        r = await h.request(path, host=BASE_DOMAIN, headers={"X-Forwarded-Host": f"abc.{BASE_DOMAIN}"})
        assert_success(r)
        # the first of several comma-separated values, with port and upper case
        r = await h.request(path, host=BASE_DOMAIN,
                            headers={"X-Forwarded-Host": f"ABC.{BASE_DOMAIN}:443, proxy.internal"})
        assert_success(r)
        # the forwarded host wins over Host
        r = await h.request(path, host=f"abc.{BASE_DOMAIN}", headers={"X-Forwarded-Host": f"xyz.{BASE_DOMAIN}"})
        assert_checksum_error(r)
        r = await h.request(path, host=f"abc.{BASE_DOMAIN}", headers={"X-Forwarded-Host": f"nope.{BASE_DOMAIN}"})
        assert_checksum_error(r)
        # without the header Host is used
        assert_success(await h.request(path, host=f"abc.{BASE_DOMAIN}"))


@pytest.mark.gen_test(timeout=30)
async def test_legacy_401_on_auth_failure(db_url: str) -> None:
    async with Harness(db_url, nodes=1, legacy_401_on_auth_failure=True) as h:
        for r in (
            await h.call("getMeetings", raw_query="checksum=" + "0" * 40),
            await h.call("getMeetings", raw_query=""),
            await h.request("/bigbluebutton/api/getMeetings?" + h.signed("getMeetings", "", h.secret()),
                            host=f"nope.{BASE_DOMAIN}"),
        ):
            assert r.code == 401
            assert r.body == b"Unauthorized"
            assert r.headers["Content-Type"].startswith("text/html")
        assert_success(await h.call("getMeetings"))


# ---------------------------------------------------------------- 2.2 version document


@pytest.mark.gen_test(timeout=30)
async def test_root_version_document(db_url: str) -> None:
    async with Harness(db_url, nodes=1) as h:
        secret = h.secret()
        good = digest("sha1", "", "", secret)
        for path in ("/bigbluebutton/api/", "/bigbluebutton/api", "/b3lb/t/abc/bbb/api/", "/b3lb/t/abc/bbb/api"):
            for query in ("", f"?checksum={good}", "?checksum=" + "0" * 40, "?checksum=", "?foo=bar"):
                for method in ("GET", "POST"):
                    r = await h.request(path + query, host=f"abc.{BASE_DOMAIN}", method=method)
                    doc = assert_success(r)
                    assert doc.findtext("version") == "2.0"
                    assert doc.findtext("apiVersion") == "2.0"
                    assert doc.find("bbbVersion") is not None
                    assert r.headers["Content-Type"].startswith("text/xml")
                r = await h.request(path + query, host=f"abc.{BASE_DOMAIN}", method="HEAD")
                assert r.code == 200
                assert r.body == b""
                assert r.headers["Content-Type"].startswith("text/xml")
        # Like BBB, the version document needs no tenant either (health checks use it: issue 9.16)
        for host in (f"nope.{BASE_DOMAIN}", BASE_DOMAIN, f"abc-009.{BASE_DOMAIN}", "127.0.0.1"):
            for path in ("/bigbluebutton/api/", "/bigbluebutton/api"):
                assert assert_success(await h.request(path, host=host)).findtext("version") == "2.0"
                assert assert_success(await h.request(f"{path}?checksum={good}", host=host)).findtext("version")
        assert_success(await h.request("/b3lb/t/nope/bbb/api/"))
        r = await h.request("/bigbluebutton/api/", host=f"nope.{BASE_DOMAIN}", method="HEAD")
        assert r.code == 200 and r.body == b""
        # a call still needs both
        assert_checksum_error(await h.request("/bigbluebutton/api/getMeetings", host=BASE_DOMAIN))
        assert not node_calls(h, "")  # the LB answers the version itself


# ---------------------------------------------------------------- 2.15-2.17, 7.30 unknown calls and methods


@pytest.mark.gen_test(timeout=30)
async def test_unknown_and_unsupported_calls(db_url: str) -> None:
    async with Harness(db_url, nodes=1) as h:
        for call in ("fooBar", "getJoinUrl", "enter", "getSessions", "getmeetings", "setConfigXml", "1.0"):
            # before authentication: a checksum failure, never a hint whether the call exists
            assert_checksum_error(await h.call(call, raw_query="checksum=" + "0" * 64))
            assert_checksum_error(await h.call(call, raw_query=""))
            doc = assert_failed(await h.call(call, "meetingID=x"), "unsupportedRequest")
            assert doc.findtext("message") == "This request is not supported."
            assert_failed(await h.call(call, "meetingID=x", method="POST"), "unsupportedRequest")
            assert_failed(await h.call(call, path_style=True), "unsupportedRequest")
        # text tracks answer JSON
        r = await h.call("putRecordingTextTrack", "recordID=r1&kind=subtitles&lang=en-US", method="POST",
                         body=b"--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nWEBVTT\r\n--x--\r\n",
                         content_type="multipart/form-data; boundary=x")
        assert r.code == 200
        assert r.headers["Content-Type"].startswith("application/json")
        assert json.loads(r.body) == {"response": {"returncode": "FAILED", "messageKey": "unsupportedRequest",
                                                   "message": "This request is not supported."}}
        for method in ("GET", "POST"):
            r = await h.call("getRecordingTextTracks", "recordID=r1", method=method)
            assert r.code == 200
            assert r.headers["Content-Type"].startswith("application/json")
            answer = json.loads(r.body)["response"]
            assert answer["returncode"] == "FAILED" and answer["messageKey"] == "noRecordings"
        # text tracks still need a checksum
        assert_checksum_error(await h.call("getRecordingTextTracks", raw_query="recordID=r1"))
        # names the route does not match at all
        for path in ("/bigbluebutton/api/hooks/create", "/bigbluebutton/api/hooks/list",
                     "/bigbluebutton/api/get-meetings", "/b3lb/t/abc/bbb/api/hooks/create",
                     "/bigbluebutton/api/create/", "/bigbluebutton/apii/create"):
            r = await h.request(path + "?" + h.signed("create", "", h.secret()), host=f"abc.{BASE_DOMAIN}")
            assert r.code == 404, (path, r.code)
        assert client_calls(h) == []  # nothing of this reached a node


@pytest.mark.gen_test(timeout=30)
async def test_wrong_methods_give_405_with_allow(db_url: str) -> None:
    async with Harness(db_url, nodes=1) as h:
        host = f"abc.{BASE_DOMAIN}"
        for method in ("POST", "HEAD"):
            r = await h.call("join", "meetingID=x&fullName=A", method=method)
            assert r.code == 405 and r.headers["Allow"] == "GET", (method, r.code)
        r = await h.call("insertDocument", "meetingID=x")
        assert r.code == 405 and r.headers["Allow"] == "POST"
        assert (await h.call("insertDocument", "meetingID=x", path_style=True)).headers["Allow"] == "POST"
        # the method is checked before authentication
        r = await h.request("/bigbluebutton/api/join?meetingID=x", host=f"nope.{BASE_DOMAIN}", method="POST")
        assert r.code == 405 and r.headers["Allow"] == "GET"
        expectations = {
            "create": {"GET", "POST"},
            "join": {"GET"},
            "insertDocument": {"POST"},
            "getMeetings": {"GET", "POST"},
            "fooBar": {"GET", "POST"},
            "": {"GET", "POST", "HEAD"},
        }
        for call, allowed in expectations.items():
            for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
                r = await h.request(f"/bigbluebutton/api/{call}?" + h.signed(call, "", h.secret()), host=host,
                                    method=method, body=b"x" if method in ("PUT", "PATCH") else None)
                assert r.code == 405, (call, method, r.code)
                assert {m.strip() for m in r.headers["Allow"].split(",")} == allowed, (call, method)
                r = await h.request(f"/b3lb/t/abc/bbb/api/{call}", method=method,
                                    body=b"x" if method in ("PUT", "PATCH") else None)
                assert r.code == 405 and {m.strip() for m in r.headers["Allow"].split(",")} == allowed
        # an unheard-of method never produces a traceback page or a 500
        status, headers, _ = await raw_http(
            h, f"BREW /bigbluebutton/api/create HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        assert status == 405 and headers["allow"] == "GET, POST"
        assert client_calls(h) == []


@pytest.mark.gen_test(timeout=30)
async def test_answer_headers_and_a_failing_call_answers_internal_error(db_url: str, monkeypatch) -> None:
    from b3lb.api import handler

    async with Harness(db_url, nodes=1) as h:
        r = await h.call("isMeetingRunning", "meetingID=nothing-here")
        assert r.code == 200 and r.headers["Content-Type"] == "text/xml;charset=utf-8"
        assert r.headers["Cache-Control"] == "no-cache" and r.headers["Date"].endswith(" GMT")
        assert int(r.headers["Content-Length"]) == len(r.body) > 0

        async def broken(runtime, req):  # noqa: ANN001, ANN202 - a call with a bug in it
            raise RuntimeError("a bug")

        monkeypatch.setitem(handler.CALLS, "isMeetingRunning", (handler.GET_POST, broken))
        r = await h.call("isMeetingRunning", "meetingID=nothing-here")
        assert r.code == 500 and b"Traceback" not in r.body and b"a bug" not in r.body
        assert xml(r).findtext("messageKey") == "internalError"
        # the server keeps serving
        monkeypatch.undo()
        assert (await h.call("isMeetingRunning", "meetingID=nothing-here")).code == 200


# ---------------------------------------------------------------- hostile input


@pytest.mark.gen_test(timeout=30)
async def test_invalid_utf8_control_characters_and_semicolons(db_url: str) -> None:
    async with Harness(db_url, nodes=1) as h:
        node = h.fleet.nodes[0]
        # invalid UTF-8 escapes in a correctly signed request: decoded with replacement characters
        assert_success(await h.call("create", "meetingID=bad-utf8&name=N%ff%feame"))
        assert node.meetings["bad-utf8"].name == "N\ufffd\ufffdame"
        assert_failed(await h.call("getMeetingInfo", "meetingID=%ff%fe"), "notFound")
        r = await h.call("create", "meetingID=%ff%fe%c3&name=Room")
        assert_authenticated(r)
        assert_success(r)
        # control characters are stripped from values, as BBB does
        assert_success(await h.call("create", "meetingID=ctl&name=Ro%00o%0d%0am%1f%09"))
        assert node.meetings["ctl"].name == "Room"
        # ; is data, not a separator
        assert_success(await h.call("create", "meetingID=semi;colon&name=a;b=c"))
        assert node.meetings["semi;colon"].name == "a;b=c"
        assert_success(await h.call("getMeetingInfo", "meetingID=semi%3Bcolon"))
        assert_failed(await h.call("getMeetingInfo", "meetingID=semi"), "notFound")
        # raw (unescaped) UTF-8 and invalid bytes in the request line: hashed as sent
        secret = h.secret()
        for raw_value in ("J\u00fcrgen".encode(), b"\xff\xfeX"):
            query = b"meetingID=raw-" + raw_value + b"&name=Raw"
            value = hashlib.sha256(b"create" + query + secret.encode()).hexdigest().encode()
            request = (b"GET /bigbluebutton/api/create?" + query + b"&checksum=" + value + b" HTTP/1.1\r\n"
                       b"Host: abc." + BASE_DOMAIN.encode() + b"\r\nConnection: close\r\n\r\n")
            status, headers, body = await raw_http(h, request)
            assert status == 200, body
            doc = etree.fromstring(body)
            assert doc.findtext("returncode") == "SUCCESS", body
        # raw control characters in the request line are refused by the HTTP layer (400), not a crash
        for raw_value in (b"c\x01x", b"c\x7fx", b"c\tx", b"c\x00x"):
            query = b"meetingID=" + raw_value + b"&name=Ctl"
            value = hashlib.sha256(b"create" + query + secret.encode()).hexdigest().encode()
            request = (b"GET /bigbluebutton/api/create?" + query + b"&checksum=" + value + b" HTTP/1.1\r\n"
                       b"Host: abc." + BASE_DOMAIN.encode() + b"\r\nConnection: close\r\n\r\n")
            status, _, body = await raw_http(h, request)
            assert status in (200, 400), (raw_value, status, body)
            if status == 200:
                assert etree.fromstring(body).findtext("returncode") == "SUCCESS", body
        assert "raw-J\u00fcrgen" in node.meetings
        assert "raw-\ufffd\ufffdX" in node.meetings
        for n, query in node_calls(h, "create"):
            assert checksum_is_valid("create", query, n.secret)


@pytest.mark.gen_test(timeout=30)
async def test_long_query_and_huge_header(db_url: str) -> None:
    async with Harness(db_url, nodes=1) as h:
        welcome = "W" * (16 * 1024)
        r = await h.call("create", f"meetingID=long&name=Long&welcome={welcome}")
        assert_success(r)
        assert h.fleet.nodes[0].meetings["long"].create_params["welcome"] == welcome
        # a header well within the limit is fine
        r = await h.request("/bigbluebutton/api/getMeetings?" + h.signed("getMeetings", "", h.secret()),
                            host=f"abc.{BASE_DOMAIN}", headers={"X-Big": "b" * 32 * 1024})
        assert_success(r)
        # a header beyond max_header_size (64 KiB) is refused without a server error: Tornado drops
        # the connection (or answers 400/431), it never reaches the handler
        try:
            r = await h.request("/bigbluebutton/api/getMeetings?" + h.signed("getMeetings", "", h.secret()),
                                host=f"abc.{BASE_DOMAIN}", headers={"X-Huge": "h" * 128 * 1024})
        except (ConnectionError, StreamClosedError):
            pass
        else:
            assert r.code in (400, 431, 599), r.code
        # the server keeps serving
        assert_success(await h.call("getMeetings"))


@pytest.mark.gen_test(timeout=30)
async def test_broken_xml_body_to_create(db_url: str) -> None:
    async with Harness(db_url, nodes=1) as h:
        for body in (b"<modules><module name='presentation'><document url=", b"\x00\xff\xfe not xml at all", b""):
            r = await h.call("create", "meetingID=xml-room&name=Xml", method="POST", body=body,
                             content_type="application/xml")
            assert r.code == 200, (r.code, r.body)
            doc = xml(r)
            assert doc.findtext("returncode") in ("SUCCESS", "FAILED")
            assert doc.findtext("messageKey") != "checksumError"
        r = await h.call("create", "meetingID=xml-room&name=Xml", method="POST", body=b"<broken", content_type="")
        assert r.code == 200 and xml(r).findtext("returncode") in ("SUCCESS", "FAILED")


@pytest.mark.gen_test(timeout=30)
async def test_missing_and_garbage_host_headers(db_url: str) -> None:
    async with Harness(db_url, nodes=1) as h:
        query = h.signed("getMeetings", "", h.secret()).encode()
        for host_line in (
            b"",  # no Host at all
            b"Host: \r\n",
            b"Host: :::::\r\n",
            b"Host: [abc.lb.test\r\n",
            b"Host: [::1]:80\r\n",
            b"Host: abc.lb.test:notaport\r\n",  # names tenant abc: may pass, the query is signed for it
            b"Host: " + b"a" * 5000 + b".lb.test\r\n",
            b"Host: abc..lb.test\r\n",
            b"Host: \xff\xfe.lb.test\r\n",
            b"Host: abc.lb.test\r\nHost: xyz.lb.test\r\n",
            b"Host: abc.lb.test\x00.evil\r\n",
            b"Host: abc.lb.test/../x\r\n",
        ):
            for version in (b"HTTP/1.0", b"HTTP/1.1"):
                request = (b"GET /bigbluebutton/api/getMeetings?" + query + b" " + version + b"\r\n" + host_line
                           + b"Connection: close\r\n\r\n")
                status, headers, body = await raw_http(h, request)
                assert status in (200, 400), (host_line, version, status, body)
                if status == 200:
                    doc = etree.fromstring(body)
                    if host_line == b"Host: abc.lb.test:notaport\r\n":
                        assert doc.findtext("returncode") == "SUCCESS", body
                    else:
                        assert doc.findtext("messageKey") == "checksumError", (host_line, body)
        # the version document needs no resolvable host (BBB answers it to anyone)
        status, _, body = await raw_http(h, b"GET /bigbluebutton/api/ HTTP/1.0\r\n\r\n")
        assert status == 200 and etree.fromstring(body).findtext("version") == "2.0"


@pytest.mark.gen_test(timeout=30)
async def test_path_traversal_like_paths(db_url: str) -> None:
    async with Harness(db_url, nodes=1) as h:
        host = f"abc.{BASE_DOMAIN}"
        query = h.signed("getMeetings", "", h.secret())
        for path in (
            "/bigbluebutton/api/../../etc/passwd",
            "/bigbluebutton/api/%2e%2e/%2e%2e/etc/passwd",
            "/bigbluebutton/api/..%2f..%2fetc%2fpasswd",
            "/bigbluebutton/api/getMeetings/../../b3lb/ping",
            "/bigbluebutton/api/getMeetings%00",
            "/bigbluebutton/api/getMeetings%2f",
            "/b3lb/t/abc/bbb/api/../../../../etc/passwd",
            "/b3lb/t/../t/abc/bbb/api/getMeetings",
            "//bigbluebutton/api/getMeetings",
            "/bigbluebutton//api/getMeetings",
        ):
            r = await h.request(f"{path}?{query}", host=host)
            assert r.code == 404, (path, r.code, r.body)
            assert b"Traceback" not in r.body and b"root:" not in r.body
        # dot-only call names match the call pattern; they are simply unknown calls
        for call in ("..", "."):
            r = await h.request(f"/bigbluebutton/api/{call}?" + h.signed(call, "", h.secret()), host=host)
            assert r.code in (200, 404), (call, r.code)
            if r.code == 200:
                assert xml(r).findtext("messageKey") in ("unsupportedRequest", "checksumError")


@pytest.mark.gen_test(timeout=30)
async def test_non_ascii_checksum_values_are_checksum_errors(db_url: str) -> None:
    """A checksum of the right length made of non-hex (even non-ASCII) characters is just wrong."""
    async with Harness(db_url, nodes=1) as h:
        host = f"abc.{BASE_DOMAIN}".encode()
        for value in (b"\xe9" * 40, b"\xc3\xa9" * 20, b"\xff" * 64, b"%C3%A9" * 20, b"g" * 40):
            request = (b"GET /bigbluebutton/api/getMeetings?checksum=" + value + b" HTTP/1.1\r\nHost: " + host
                       + b"\r\nConnection: close\r\n\r\n")
            status, _, body = await raw_http(h, request)
            assert status == 200, (value, status, body)
            assert etree.fromstring(body).findtext("messageKey") == "checksumError", body
        # the same through the form-body fallback
        for value in ("\u00e9" * 40, "\u00ff" * 64):
            r = await h.request("/bigbluebutton/api/getMeetings", host=host.decode(), method="POST",
                                body=f"checksum={value}".encode("latin-1"),
                                content_type="application/x-www-form-urlencoded")
            assert_checksum_error(r)
        assert_success(await h.call("getMeetings"))
