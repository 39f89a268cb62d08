"""End callbacks, /b3lb/stats, /b3lb/metrics, housekeeping and the one-poller-per-database lock."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import uuid
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import orjson
import pytest
from lxml import etree
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from b3lb import callbacks
from b3lb.config import ConfigError, load_config
from b3lb.db import keep_session
from b3lb.leader import Leadership
from b3lb.poller import Poller
from b3lb.runtime import Runtime
from b3lb.testing.harness import BASE_DOMAIN, LOOPBACK_CALLBACKS, Harness


def xml(response):
    return etree.fromstring(response.body)


class Receiver:
    """A frontend's callback endpoint on loopback that records every hit."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.status = 200
        self.arrived = asyncio.Event()
        receiver = self

        class Hit(RequestHandler):
            def get(self) -> None:
                receiver.hits.append(self.request.uri)
                self.set_status(receiver.status)
                receiver.arrived.set()

        sock = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)[0]
        self.port = sock.getsockname()[1]
        self.server = HTTPServer(Application([(r"/.*", Hit)]))
        self.server.add_sockets([sock])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def wait(self, count: int, timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.hits) < count and asyncio.get_running_loop().time() < deadline:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), 0.2)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self.server.stop()


async def create(h: Harness, meeting_id: str, extra: str = "", **kwargs) -> None:
    query = f"name=Room&meetingID={meeting_id}{extra}"
    r = await h.call("create", query, **kwargs)
    assert xml(r).findtext("returncode") == "SUCCESS", r.body


async def nonce_of(h: Harness, meeting_id: str) -> uuid.UUID:
    return await h.pool.fetchval("SELECT nonce FROM meeting WHERE meeting_id = $1", meeting_id)


@pytest.mark.parametrize("callback_path", ["/ended", "/ended?room=42"])
@pytest.mark.gen_test(timeout=30)
async def test_end_callback_relays_to_the_frontend_once(db_url, callback_path):
    receiver = Receiver()
    try:
        async with Harness(db_url, nodes=1, callbacks=LOOPBACK_CALLBACKS) as h:
            meeting_id = "room &42+x"
            target = receiver.url(callback_path)
            await create(h, "room+%2642%2Bx", "&meta_endCallbackUrl=" + target.replace("?", "%3F").replace("=", "%3D"))
            nonce = await nonce_of(h, meeting_id)
            r = await h.request(f"/b3lb/b/meeting/end?nonce={nonce}&recordingmarks=true&meetingID=room+%2642%2Bx")
            assert r.code == 204 and r.body == b""
            await receiver.wait(1)
            assert len(receiver.hits) == 1
            path, _, query = receiver.hits[0].partition("?")
            params = parse_qsl(query)
            assert path == urlsplit(target).path
            assert params[-2:] == [("recordingmarks", "true"), ("meetingID", meeting_id)]
            if "room=42" in callback_path:
                assert params[0] == ("room", "42")
            assert await h.pool.fetchval("SELECT count(*) FROM meeting") == 0
            r = await h.call("isMeetingRunning", "meetingID=room+%2642%2Bx")
            assert xml(r).findtext("running") == "false"
            # A repeated callback relays nothing more.
            r = await h.request(f"/b3lb/b/meeting/end?nonce={nonce}&recordingmarks=true&meetingID=room+%2642%2Bx")
            await asyncio.sleep(0.2)
            assert r.code == 204 and len(receiver.hits) == 1
    finally:
        receiver.stop()


@pytest.mark.gen_test(timeout=30)
async def test_end_callback_with_wrong_nonce_or_meeting_does_nothing(db_url):
    receiver = Receiver()
    try:
        async with Harness(db_url, nodes=1, callbacks=LOOPBACK_CALLBACKS) as h:
            await create(h, "room-1", "&meta_endCallbackUrl=" + receiver.url("/ended"))
            nonce = await nonce_of(h, "room-1")
            for query in (f"nonce={uuid.uuid4()}&meetingID=room-1", f"nonce={nonce}&meetingID=room-2",
                          "nonce=not-a-uuid&meetingID=room-1", "meetingID=room-1", ""):
                r = await h.request(f"/b3lb/b/meeting/end?{query}")
                assert r.code == 204 and r.body == b""
            r = await h.request(f"/b3lb/b/meeting/end?nonce={nonce}&meetingID=room-1", method="POST", body=b"")
            assert r.code == 405 and r.headers["Allow"] == "GET"
            await asyncio.sleep(0.2)
            assert receiver.hits == []
            assert await h.pool.fetchval("SELECT count(*) FROM meeting") == 1
    finally:
        receiver.stop()


@pytest.mark.gen_test(timeout=30)
async def test_end_callback_after_api_end_still_relays(db_url):
    receiver = Receiver()
    try:
        async with Harness(db_url, nodes=1, callbacks=LOOPBACK_CALLBACKS) as h:
            await create(h, "room-1", "&meta_endCallbackUrl=" + receiver.url("/ended"))
            nonce = await nonce_of(h, "room-1")
            r = await h.call("end", "meetingID=room-1")  # the fake node also calls our callback URL...
            assert xml(r).findtext("returncode") == "SUCCESS"
            # ...but at https://lb.test, which it cannot reach; deliver it as the node would.
            r = await h.request(f"/b3lb/b/meeting/end?nonce={nonce}&recordingmarks=false&meetingID=room-1")
            await receiver.wait(1)
            assert [parse_qsl(urlsplit(u).query) for u in receiver.hits] == [
                [("recordingmarks", "false"), ("meetingID", "room-1")]
            ]
    finally:
        receiver.stop()


@pytest.mark.gen_test(timeout=30)
async def test_relay_retries_until_the_frontend_answers(db_url):
    receiver = Receiver()
    receiver.status = 503
    try:
        async with Harness(db_url, nodes=1, callbacks=LOOPBACK_CALLBACKS) as h:
            task = asyncio.ensure_future(callbacks.relay(h.runtime, receiver.url("/ended"), backoff=0.2))
            await receiver.wait(1)
            receiver.status = 200  # comes back before the second attempt
            assert await task is True
            assert len(receiver.hits) == 2
            receiver.stop()  # now down for good (kept-alive connections too): bounded attempts, then give up
            await receiver.server.close_all_connections()
            assert await callbacks.relay(h.runtime, receiver.url("/ended"), backoff=0.05) is False
    finally:
        receiver.stop()


@pytest.mark.gen_test(timeout=30)
async def test_loopback_end_callback_is_not_fetched_by_default(db_url, caplog):
    receiver = Receiver()
    try:
        async with Harness(db_url, nodes=1) as h:  # default [callbacks]: no allowed networks
            target = receiver.url("/ended?token=s3cret")
            await create(h, "room-1", "&meta_endCallbackUrl=" + target.replace("?", "%3F").replace("=", "%3D"))
            nonce = await nonce_of(h, "room-1")
            with caplog.at_level("INFO", logger="b3lb"):
                r = await h.request(f"/b3lb/b/meeting/end?nonce={nonce}&recordingmarks=false&meetingID=room-1")
                assert r.code == 204 and r.body == b""
                await asyncio.sleep(0.5)
            assert receiver.hits == []  # b3lb never connected to the tenant's loopback URL
            assert await h.pool.fetchval("SELECT count(*) FROM meeting") == 0  # but the meeting is forgotten
            r = await h.call("isMeetingRunning", "meetingID=room-1")
            assert xml(r).findtext("running") == "false"
            lines = [rec.getMessage() for rec in caplog.records if rec.name == "b3lb.callbacks"]
            assert len(lines) == 1 and "refused" in lines[0]  # logged once, not retried
            assert f"127.0.0.1:{receiver.port}/ended" in lines[0] and "s3cret" not in lines[0] and "?" not in lines[0]
    finally:
        receiver.stop()


@pytest.mark.gen_test(timeout=30)
async def test_relay_logs_carry_no_query_string(db_url, caplog):
    async with Harness(db_url, nodes=1, callbacks=LOOPBACK_CALLBACKS) as h:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        try:
            url = f"http://frontend:pw@127.0.0.1:{closed.getsockname()[1]}/ended?token=s3cret#x"
            with caplog.at_level("INFO", logger="b3lb"):
                assert await callbacks.relay(h.runtime, url, backoff=0.01) is False  # credentials: refused
                assert await callbacks.relay(h.runtime, url.replace("frontend:pw@", ""), backoff=0.01) is False
        finally:
            closed.close()
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "b3lb.callbacks"]
        assert len(lines) == 1 + callbacks.RELAY_ATTEMPTS  # one refusal, then the attempts of a real failure
        assert "refused" in lines[0] and all("attempt" in line for line in lines[1:])
        for line in lines:
            assert "s3cret" not in line and "pw" not in line and "?" not in line and "#" not in line


ADMIN_TOKEN = "admin-" + "7f" * 16


def with_admin_token(h: Harness, token: str = ADMIN_TOKEN) -> None:
    """Configure metrics.admin_token on the running harness."""
    h.runtime.config = dataclasses.replace(
        h.runtime.config, metrics=dataclasses.replace(h.runtime.config.metrics, admin_token=token))


async def raw_get(h: Harness, path: str, host: str, authorization: bytes) -> tuple[int, bytes]:
    """A GET with the Authorization bytes exactly as given (HTTP clients would re-encode them)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    try:
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
                     + b"\r\nAuthorization: " + authorization + b"\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(-1), timeout=5)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.gen_test(timeout=30)
async def test_stats_need_the_tenant_token(db_url):
    async with Harness(db_url, nodes=1, tenants=("ABC", "XYZ")) as h:
        await create(h, "room-1", "&meta_bbb-origin=greenlight&meta_bbb-origin-server-name=gl.example.org")
        await create(h, "room-2")  # no origin metadata: not counted
        h.fleet.nodes[0].add_attendees("room-1", 4)
        await h.poll()
        token = await h.pool.fetchval("SELECT stats_token FROM tenant WHERE slug = 'ABC'")
        other = await h.pool.fetchval("SELECT stats_token FROM tenant WHERE slug = 'XYZ'")
        r = await h.request("/b3lb/stats", host=f"abc.{BASE_DOMAIN}", headers={"Authorization": token})
        assert r.code == 200 and r.headers["Content-Type"] == "application/json"
        stats = orjson.loads(r.body)
        assert stats["gl.example.org"]["greenlight"]["participantCount"] == 4
        assert stats["gl.example.org"]["greenlight"]["meetingCount"] == 1
        r = await h.request("/b3lb/t/abc/stats", headers={"Authorization": token})
        assert orjson.loads(r.body) == stats
        r = await h.request("/b3lb/stats", host=f"xyz.{BASE_DOMAIN}", headers={"Authorization": other})
        assert orjson.loads(r.body) == {}
        for host, headers in ((f"abc.{BASE_DOMAIN}", {}), (f"abc.{BASE_DOMAIN}", {"Authorization": other}),
                              (f"abc.{BASE_DOMAIN}", {"Authorization": f"Bearer {token}"}),
                              (BASE_DOMAIN, {"Authorization": token})):
            r = await h.request("/b3lb/stats", host=host, headers=headers)
            assert (r.code, r.body) == (401, b"Unauthorized")


# Authorization values as bytes on the wire: UTF-8 (a euro sign), latin-1, and the token with a
# non-ASCII byte appended. Compared as str, hmac.compare_digest raised TypeError: a 500.
ODD_TOKENS = (b"\xe2\x82\xac" * 12, b"\xff\xfe\xe9t\xe9", b"caf\xe9")


@pytest.mark.gen_test(timeout=30)
async def test_non_ascii_authorization_is_401_never_500(db_url):
    async with Harness(db_url, nodes=1) as h:
        with_admin_token(h)
        token = (await h.pool.fetchval("SELECT stats_token FROM tenant WHERE slug = 'ABC'")).encode()
        for value in (*ODD_TOKENS, token + b"\xe9", ADMIN_TOKEN.encode() + b"\xc3\xa9"):
            for path, host in (("/b3lb/stats", f"abc.{BASE_DOMAIN}"), ("/b3lb/t/abc/stats", BASE_DOMAIN),
                               ("/b3lb/metrics", f"abc.{BASE_DOMAIN}"), ("/b3lb/metrics", BASE_DOMAIN),
                               ("/b3lb/t/abc/metrics", "elsewhere.example")):
                assert await raw_get(h, path, host, value) == (401, b"Unauthorized"), (path, host, value)
        # the same bytes, correct: still served
        assert (await raw_get(h, "/b3lb/stats", f"abc.{BASE_DOMAIN}", token))[0] == 200
        assert (await raw_get(h, "/b3lb/metrics", BASE_DOMAIN, ADMIN_TOKEN.encode()))[0] == 200
        # control characters are refused by the HTTP layer itself, also without a 500
        status, _ = await raw_get(h, "/b3lb/metrics", BASE_DOMAIN, ADMIN_TOKEN.encode() + b"\x01")
        assert status in (400, 401)


@pytest.mark.gen_test(timeout=30)
async def test_metrics_views_and_authorisation(db_url):
    async with Harness(db_url, nodes=2, tenants=("ABC", "XYZ")) as h:
        from b3lb.testing.harness import add_secret

        await add_secret(h.pool, h.tenants["ABC"], 1, meeting_limit=10, attendee_limit=100)
        await h.reload()
        await create(h, "room-1")
        await create(h, "room-2", sub_id=1)
        r = await h.call("join", "meetingID=room-1&fullName=Ann&role=VIEWER")
        assert r.code == 302
        await h.poll()
        with_admin_token(h)
        r = await h.request("/b3lb/metrics", headers={"Authorization": ADMIN_TOKEN})  # the global view
        assert r.code == 200
        text = r.body.decode()
        assert 'b3lb_node_load{cluster="main",node="fake-0001"}' in text
        assert 'b3lb_secret_meeting_limit{secret="ABC-001"} 10.0' in text
        assert 'b3lb_meetings{secret="ABC"} 2.0' in text  # the tenant series sums its secrets
        assert 'b3lb_meetings{secret="ABC-001"} 1.0' in text
        assert 'b3lb_attendees_total{secret="ABC"} 1.0' in text
        assert 'b3lb_meetings_total{secret="XYZ"} 0.0' in text
        assert "b3lb_request_duration_seconds_bucket" in text and "process_cpu_seconds_total" in text
        assert "b3lb_node_poll_age_seconds" in text and "b3lb_node_state" in text
        token = await h.pool.fetchval("SELECT stats_token FROM tenant WHERE slug = 'ABC'")
        for path, host in (("/b3lb/metrics", f"abc.{BASE_DOMAIN}"), ("/b3lb/t/abc/metrics", BASE_DOMAIN),
                           ("/b3lb/t/abc/metrics", "elsewhere.example")):
            r = await h.request(path, host=host, headers={"Authorization": token})
            tenant_text = r.body.decode()
            assert r.code == 200 and "b3lb_node_load" not in tenant_text, (path, host)
            assert "XYZ" not in tenant_text and "process_cpu" not in tenant_text  # nothing of others
            assert 'b3lb_tenant_meeting_limit{tenant="ABC"}' in tenant_text
        r = await h.request("/b3lb/t/abc-001/metrics", headers={"Authorization": token})
        sub_text = r.body.decode()
        assert 'b3lb_meetings{secret="ABC-001"} 1.0' in sub_text and 'secret="ABC"}' not in sub_text
        # the admin token opens a tenant's view too (the URL picks the view)
        r = await h.request("/b3lb/t/xyz/metrics", headers={"Authorization": ADMIN_TOKEN})
        assert r.code == 200 and "ABC" not in r.body.decode() and "b3lb_node_load" not in r.body.decode()
        for path, host, headers in (("/b3lb/metrics", BASE_DOMAIN, {}),  # the base domain opens nothing
                                    ("/b3lb/metrics", f"abc.{BASE_DOMAIN}", {}),
                                    ("/b3lb/t/abc/metrics", BASE_DOMAIN, {}),
                                    ("/b3lb/metrics", "elsewhere.example", {}),
                                    ("/b3lb/metrics", BASE_DOMAIN, {"Authorization": "wrong"}),
                                    ("/b3lb/metrics", BASE_DOMAIN, {"Authorization": token}),  # no global view
                                    ("/b3lb/metrics", BASE_DOMAIN, {"Authorization": ADMIN_TOKEN[:-1]}),
                                    ("/b3lb/metrics", BASE_DOMAIN, {"Authorization": f"Bearer {ADMIN_TOKEN}"}),
                                    ("/b3lb/t/xyz/metrics", BASE_DOMAIN, {"Authorization": token}),
                                    ("/b3lb/t/nope/metrics", BASE_DOMAIN, {"Authorization": ADMIN_TOKEN})):
            r = await h.request(path, host=host, headers=headers)
            assert (r.code, r.body) == (401, b"Unauthorized"), (path, host, headers)


@pytest.mark.gen_test(timeout=30)
async def test_without_an_admin_token_the_global_view_is_closed(db_url):
    async with Harness(db_url, nodes=1) as h:
        assert h.runtime.config.metrics.admin_token == ""
        for headers in ({}, {"Authorization": ""}, {"Authorization": "anything"}):
            for host in (BASE_DOMAIN, "elsewhere.example"):
                r = await h.request("/b3lb/metrics", host=host, headers=headers)
                assert (r.code, r.body) == (401, b"Unauthorized"), (host, headers)
        token = await h.pool.fetchval("SELECT stats_token FROM tenant WHERE slug = 'ABC'")
        r = await h.request("/b3lb/metrics", host=f"abc.{BASE_DOMAIN}", headers={"Authorization": token})
        assert r.code == 200 and b"b3lb_node_load" not in r.body


def test_the_admin_token_must_be_a_usable_secret():
    assert load_config(env={}).metrics.admin_token == ""  # default: the global view is closed
    assert load_config(env={"B3LB_METRICS_ADMIN_TOKEN": ADMIN_TOKEN}).metrics.admin_token == ADMIN_TOKEN
    for weak in ("short", "x" * 15, "with space " * 3, "caf\u00e9" * 8, "tab\tbed" * 4):
        with pytest.raises(ConfigError, match="metrics.admin_token"):
            load_config(env={"B3LB_METRICS_ADMIN_TOKEN": weak})


@pytest.mark.gen_test(timeout=30)
async def test_admin_token_opens_the_global_view_anywhere(db_url):
    async with Harness(db_url, nodes=1) as h:
        with_admin_token(h)
        for host in ("elsewhere.example", BASE_DOMAIN, "127.0.0.1"):
            r = await h.request("/b3lb/metrics", host=host, headers={"Authorization": ADMIN_TOKEN})
            assert r.code == 200 and b"b3lb_node_load" in r.body


@pytest.mark.gen_test(timeout=30)
async def test_housekeeping_writes_metric_rows_and_deletes_expired_ones(db_url):
    async with Harness(db_url, nodes=1) as h:
        await create(h, "room-1")
        await h.pool.execute("INSERT INTO metric (tenant_id, time) VALUES ($1, now() - interval '31 days'), "
                             "($1, now() - interval '29 days')", h.tenants["ABC"].tenant_id)
        leadership = Leadership(h.runtime, h.runtime.poller)
        await leadership.step()
        try:
            assert leadership.leading
            rows = await h.pool.fetch("SELECT tenant_id, node_id, meetings, meetings_created_sum FROM metric "
                                      "WHERE time > now() - interval '1 minute'")
            tenant_row = next(r for r in rows if r["tenant_id"] is not None)
            assert (tenant_row["meetings"], tenant_row["meetings_created_sum"]) == (1, 1)
            assert any(r["node_id"] is not None for r in rows)
            assert await h.pool.fetchval("SELECT count(*) FROM metric WHERE time < now() - interval '30 days'") == 0
            assert await h.pool.fetchval("SELECT count(*) FROM metric WHERE time < now() - interval '28 days'") == 1
        finally:
            await leadership._release()


@pytest.mark.gen_test(timeout=30)
async def test_exactly_one_process_polls_and_another_takes_over(db_url):
    async with Harness(db_url, nodes=1) as h:
        # pools as `b3lb serve` makes them: releasing a connection does not reset its session
        pools = [await asyncpg.create_pool(db_url, min_size=1, max_size=3, reset=keep_session) for _ in range(2)]
        try:
            runtimes = [Runtime(h.config, pool) for pool in pools]
            for runtime in runtimes:
                await runtime.refresh_directory()
            leaders = [Leadership(r, Poller(r)) for r in runtimes]
            await leaders[0].step()
            await leaders[1].step()
            assert [lead.leading for lead in leaders] == [True, False]
            assert runtimes[0].polling and not runtimes[1].polling
            await leaders[0]._release()  # the leader dies (its lock connection goes away)
            await leaders[1].step()
            assert leaders[1].leading and runtimes[1].polling
            await leaders[0].step()
            assert not leaders[0].leading
            for leader in leaders:  # hand back the lock connections before closing the pools
                await leader._release()
        finally:
            for pool in pools:
                await pool.close()
