"""/b3lb/metrics served from a render per poll cycle: freshness, correctness, gzip, slicing."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import secrets

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPRequest

from b3lb import metrics
from b3lb.metrics_http import accepts_gzip
from b3lb.testing.harness import BASE_DOMAIN, Harness, add_secret

ADMIN_TOKEN = "admin-" + "3c" * 16


def with_admin_token(h: Harness) -> None:
    h.runtime.config = dataclasses.replace(
        h.runtime.config, metrics=dataclasses.replace(h.runtime.config.metrics, admin_token=ADMIN_TOKEN))


async def scrape(h: Harness, path: str = "/b3lb/metrics", token: str = ADMIN_TOKEN, **headers: str):
    request = HTTPRequest(f"http://127.0.0.1:{h.port}{path}", headers={"Host": BASE_DOMAIN, "Authorization": token,
                                                                        **headers}, decompress_response=False)
    return await h.client.fetch(request, raise_error=False)


def value(text: str, sample: str, **labels: str) -> float | None:
    """The value of the one line for this sample and labels (None if there is none)."""
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    prefix = f"{sample}{{{label_text}}} " if labels else f"{sample} "
    found = [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]
    assert len(found) <= 1, found
    return float(found[0]) if found else None


async def create(h: Harness, meeting_id: str, sub_id: int = 0) -> None:
    r = await h.call("create", f"name=Room&meetingID={meeting_id}", sub_id=sub_id)
    assert b"SUCCESS" in r.body, r.body


async def wait_for_render(h: Harness, renders: int) -> None:
    cache = h.runtime_app_cache
    for _ in range(100):  # bounded: at most 5 s
        if cache.renders >= renders:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no render #{renders} (have {cache.renders})")


class CacheHarness(Harness):
    """The harness plus a handle on its app's metrics cache."""

    async def __aenter__(self):  # noqa: ANN204
        await super().__aenter__()
        app = self.server.request_callback  # type: ignore[union-attr]
        self.runtime_app_cache = app.metrics_cache
        return self


@pytest.mark.gen_test(timeout=30)
async def test_a_change_shows_after_the_next_poll_cycle(db_url):
    async with CacheHarness(db_url, nodes=1, tenants=("ABC", "XYZ")) as h:
        with_admin_token(h)
        await add_secret(h.pool, h.tenants["ABC"], 1)
        await h.reload()
        token = await h.pool.fetchval("SELECT stats_token FROM tenant WHERE slug = 'ABC'")
        first = (await scrape(h)).body.decode()
        assert value(first, "b3lb_meetings", secret="ABC") == 0
        assert h.runtime_app_cache.renders == 1
        await create(h, "room-1")
        r = await h.call("join", "meetingID=room-1&fullName=Ann&role=VIEWER")
        assert r.code == 302
        # no poll cycle yet: the same render answers, for every view
        again = (await scrape(h)).body.decode()
        assert value(again, "b3lb_meetings", secret="ABC") == 0
        assert value(again, "b3lb_attendees_total", secret="ABC") == 0
        tenant_text = (await scrape(h, "/b3lb/t/abc/metrics", token)).body.decode()
        assert value(tenant_text, "b3lb_meetings_total", secret="ABC") == 0
        assert h.runtime_app_cache.renders == 1
        await h.poll()
        # the first scrape after the cycle still gets the previous text and starts the render
        assert value((await scrape(h)).body.decode(), "b3lb_meetings", secret="ABC") == 0
        await wait_for_render(h, 2)
        fresh = (await scrape(h)).body.decode()
        assert value(fresh, "b3lb_meetings", secret="ABC") == 1
        assert value(fresh, "b3lb_meetings_total", secret="ABC") == 1
        # the join is counted although no flush wrote it to the database yet (pending counts)
        assert await h.pool.fetchval("SELECT count(*) FROM secret_counter") == 0
        assert value(fresh, "b3lb_attendees_total", secret="ABC") == 1
        sub_text = (await scrape(h, "/b3lb/t/abc-001/metrics", token)).body.decode()
        assert value(sub_text, "b3lb_meetings", secret="ABC-001") == 0
        assert 'secret="ABC"}' not in sub_text and "b3lb_tenant_meeting_limit" not in sub_text
        tenant_text = (await scrape(h, "/b3lb/t/abc/metrics", token)).body.decode()
        assert value(tenant_text, "b3lb_meetings_total", secret="ABC") == 1
        assert "XYZ" not in tenant_text


@pytest.mark.gen_test(timeout=30)
async def test_rendered_ahead_right_after_a_poll_cycle(db_url):
    """As in `b3lb serve`: MetricsCache.run re-renders after each cycle, before anyone asks."""
    async with CacheHarness(db_url, nodes=1) as h:
        with_admin_token(h)
        cache = h.runtime_app_cache
        h.runtime.add_task("metrics render-ahead", cache.run())
        await scrape(h)
        await create(h, "room-1")
        await h.poll()
        await wait_for_render(h, 2)  # nobody scraped in between
        assert value((await scrape(h)).body.decode(), "b3lb_meetings", secret="ABC") == 1
        assert cache.renders == 2


@pytest.mark.gen_test(timeout=30)
async def test_counters_never_go_down_while_a_flush_is_under_way(db_url):
    async with CacheHarness(db_url, nodes=1) as h:
        with_admin_token(h)
        cache = h.runtime_app_cache
        await create(h, "room-1")
        await h.call("join", "meetingID=room-1&fullName=Ann&role=VIEWER")
        await cache.refresh()
        assert value((await scrape(h)).body.decode(), "b3lb_attendees_total", secret="ABC") == 1
        # a flush has taken the pending counts but not committed them: they are in neither place
        batch, h.runtime.counters.pending = h.runtime.counters.pending, {}
        await cache.refresh()
        assert value((await scrape(h)).body.decode(), "b3lb_attendees_total", secret="ABC") == 1
        assert batch  # (it really held the join)


@pytest.mark.gen_test(timeout=30)
async def test_gzip_when_asked_and_identical_text(db_url):
    async with CacheHarness(db_url, nodes=2, tenants=("ABC", "XYZ")) as h:
        with_admin_token(h)
        await create(h, "room-1")
        await h.poll()
        plain = await scrape(h)
        assert plain.headers.get("Content-Encoding") is None and plain.headers["Vary"] == "Accept-Encoding"
        packed = await scrape(h, **{"Accept-Encoding": "gzip"})
        assert packed.code == 200 and packed.headers["Content-Encoding"] == "gzip"
        assert len(packed.body) < len(plain.body) / 3
        text = gzip.decompress(packed.body).decode()
        assert "process_cpu_seconds_total" in text and text.endswith("\n")
        # the process part is the same for a second; the fleet part is the same render
        assert text.split("# HELP process_")[0] == plain.body.decode().split("# HELP process_")[0]
        refused = await scrape(h, **{"Accept-Encoding": "gzip;q=0, identity"})
        assert refused.headers.get("Content-Encoding") is None
        token = await h.pool.fetchval("SELECT stats_token FROM tenant WHERE slug = 'ABC'")
        tenant = await scrape(h, "/b3lb/t/abc/metrics", token, **{"Accept-Encoding": "br, gzip"})
        assert tenant.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(tenant.body) == (await scrape(h, "/b3lb/t/abc/metrics", token)).body


def test_accept_encoding():
    assert accepts_gzip("gzip") and accepts_gzip("deflate, GZIP") and accepts_gzip("gzip;q=0.5")
    assert accepts_gzip("x-gzip") and accepts_gzip("br, gzip ; q=1")
    assert not accepts_gzip("") and not accepts_gzip("identity") and not accepts_gzip("br")
    assert not accepts_gzip("gzip;q=0") and not accepts_gzip("gzip; q=0.000, identity")


@pytest.mark.gen_test(timeout=30)
async def test_methods_and_database_outage(db_url):
    async with CacheHarness(db_url, nodes=1) as h:
        with_admin_token(h)
        r = await h.client.fetch(HTTPRequest(f"http://127.0.0.1:{h.port}/b3lb/metrics", method="POST", body=b"",
                                             headers={"Host": BASE_DOMAIN, "Authorization": ADMIN_TOKEN}),
                                 raise_error=False)
        assert r.code == 405 and r.headers["Allow"] == "GET"
        await h.pool.close()  # the database is unreachable from now on
        r = await scrape(h)
        assert r.code == 503 and r.headers["Retry-After"] == "5"  # nothing rendered yet: nothing to serve


@pytest.mark.gen_test(timeout=30)
async def test_a_stale_text_is_served_while_the_database_is_down(db_url):
    async with CacheHarness(db_url, nodes=1) as h:
        with_admin_token(h)
        cache = h.runtime_app_cache
        await create(h, "room-1")
        await h.poll()
        before = (await scrape(h)).body
        await h.pool.close()
        await h.poll()  # a cycle: the text is stale, and its render fails
        for _ in range(3):
            r = await scrape(h)
            assert r.code == 200 and value(r.body.decode(), "b3lb_meetings", secret="ABC") == 1
            await asyncio.sleep(0.05)
        assert r.body.split(b"# HELP process_")[0] == before.split(b"# HELP process_")[0]
        assert cache.renders == 1


async def seed_many(h: Harness, tenants: int, per_tenant: int) -> None:
    group = await h.pool.fetchval("SELECT id FROM cluster_group LIMIT 1")
    for t in range(tenants):
        slug = "T" + "".join(chr(65 + int(d)) for d in f"{t:03d}")
        tenant_id = await h.pool.fetchval("INSERT INTO tenant (slug, cluster_group_id) VALUES ($1, $2) RETURNING id",
                                          slug, group)
        await h.pool.executemany("INSERT INTO secret (tenant_id, sub_id, secret) VALUES ($1, $2, $3)",
                                 [(tenant_id, sub, secrets.token_hex(32)) for sub in range(per_tenant)])
    await h.reload()


@pytest.mark.gen_test(timeout=60)
async def test_a_thousand_secrets_render_in_slices(db_url):
    """100 tenants x 10 secrets: every series is there, and the render let other tasks run."""
    async with CacheHarness(db_url, nodes=1) as h:
        await seed_many(h, 100, 10)
        ran = 0
        rendering = True

        async def other_task() -> None:
            nonlocal ran
            while rendering:
                ran += 1
                await asyncio.sleep(0)

        ticker = asyncio.get_running_loop().create_task(other_task())
        await asyncio.sleep(0)
        ran = 0
        generation = await metrics.build_generation(h.runtime)
        body = generation.body(metrics.GLOBAL)
        rendering = False
        await ticker
        assert ran >= 1  # without slices the render would run start to end in one go
        text = body.decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert len(families["b3lb_listeners"].samples) == 1 + 100 + 900  # ABC, 100 tenant sums, 900 sub-secrets
        assert len(families["b3lb_secret_meeting_limit"].samples) == 1001
        assert len(families["b3lb_tenant_meeting_limit"].samples) == 101
        labels = [s.labels["secret"] for s in families["b3lb_listeners"].samples]
        assert labels[:3] == ["ABC", "TAAA", "TAAA-001"] and labels[-1] == "TAJJ-009"


def test_own_formatter_writes_what_prometheus_client_writes():
    """The process part is formatted a slice at a time by metrics.format_family: byte for byte
    what generate_latest writes, for every kind of metric."""
    from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Info, Summary, generate_latest
    from prometheus_client import Histogram as PromHistogram

    registry = CollectorRegistry()
    Counter("t_calls", "Calls\nwith a \\ newline", ["call"], registry=registry).labels('a"b').inc(3)
    Gauge("t_level", "Level", registry=registry).set(1234567.5)
    histogram = PromHistogram("t_seconds", "Seconds", ["call"], buckets=(0.001, 0.1, 1.0), registry=registry)
    for call, seconds in (("join", 0.0005), ("create", 0.2), ("join", 3.0)):
        histogram.labels(call).observe(seconds)
    Summary("t_sizes", "Sizes", registry=registry).observe(10)
    Info("t_build", "Build", registry=registry).info({"version": "1.2"})
    Enum("t_state", "State", states=["up", "down"], registry=registry).state("down")
    assert asyncio.run(metrics.render_process(registry)) == generate_latest(registry)


@pytest.mark.gen_test(timeout=30)
async def test_workers_serve_worker_zeros_render(db_url, tmp_path):
    """With several workers, worker 0 publishes each render and the others serve it (their counters
    then agree, whichever worker a scrape reaches); without a fresh file they render themselves."""
    from b3lb.metrics_cache import MetricsCache
    from b3lb.metrics_shared import SharedRenders

    async with CacheHarness(db_url, nodes=1) as h:
        path = tmp_path / "metrics.bin"
        publisher, follower = MetricsCache(h.runtime), MetricsCache(h.runtime)
        publisher.shared = SharedRenders(path, publisher=True, max_age=30)
        follower.shared = SharedRenders(path, publisher=False, max_age=30)
        await create(h, "room-1")
        await h.call("join", "meetingID=room-1&fullName=Ann&role=VIEWER")
        mine = await publisher.refresh()
        assert path.exists()
        theirs = await follower.refresh()
        assert theirs.source is not None and mine.source is None
        assert theirs.body(metrics.GLOBAL) == mine.body(metrics.GLOBAL)
        view = ("tenant", h.tenants["ABC"].tenant_id)
        assert theirs.body(view) == mine.body(view) and b'b3lb_attendees_total{secret="ABC"} 1.0' in theirs.body(view)
        assert not follower.stale(theirs)
        await h.call("join", "meetingID=room-1&fullName=Bob&role=VIEWER")
        await h.poll()
        await publisher.refresh()
        follower.shared._checked = float("-inf")  # (it looks at the file every 0.25 s)
        assert follower.stale(theirs)
        newer = await follower.refresh()
        assert b'b3lb_attendees_total{secret="ABC"} 2.0' in newer.body(view)
        path.unlink()  # worker 0 gone: the follower renders itself
        follower.shared._checked = float("-inf")
        own = await follower.refresh()
        assert own.source is None and b'b3lb_attendees_total{secret="ABC"} 2.0' in own.body(view)
