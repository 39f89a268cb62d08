"""The dashboard in a real headless Chromium (issue 13.3): Debian's `chromium` driven by Playwright's
Python package (its own browser downloads are never used).

The page loads with the log-in only; a bad token is refused on the form; a good one shows the fake
fleet; a node that goes down turns to error without a reload; the drain, maintenance and panic buttons
and the cluster maintenance switch of a write token change the database (each "on" after a confirming
second click); a read token has no buttons; a tenant token sees its tenant only.
With B3LB_SCREENSHOT=path the richer fleet of the last test is saved as a PNG (docs/dashboard.png).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from admin_page_support import dashboard_of, make_token, wait_for
from api_helpers import create_ok, owner

from b3lb.testing.harness import Harness

CHROMIUM = Path("/usr/bin/chromium")
INSTALL_TIMEOUT = 900  # seconds for apt-get (chromium and its libraries are ~100 MB)
EXPECT_MS = 20_000  # how long an expectation retries before it fails (a hang guard, not a timing assertion)


def _apt_install_chromium() -> str:
    """Install Debian's chromium when we may (root with apt-get); '' when done, else why not."""
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return "not root, or no apt-get: install Debian's chromium (apt-get install chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", "chromium"]
    try:
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        if done.returncode != 0:  # a fresh machine has no package lists yet
            subprocess.run([apt, "update", "-q"], env=env, capture_output=True, timeout=INSTALL_TIMEOUT)
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"apt-get install chromium took more than {INSTALL_TIMEOUT} s"
    if done.returncode != 0:
        return "apt-get install chromium failed: " + (done.stderr or done.stdout).strip()[-300:]
    return ""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's Chromium, installed on first use; the tests skip (saying why) when it cannot be had."""
    pytest.importorskip("playwright.async_api", reason="playwright is missing: pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        reason = _apt_install_chromium()
        if reason or not CHROMIUM.exists():
            pytest.skip(f"no headless Chromium at {CHROMIUM}: {reason or 'the package did not install it'}")
    return str(CHROMIUM)


class PageProblems:
    """Uncaught script errors and Content-Security-Policy refusals seen by a page: there must be none."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def console(self, message: Any) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            self.found.append(message.text)

    def page_error(self, error: Any) -> None:
        self.found.append(f"uncaught: {error}")


@asynccontextmanager
async def browser_page(chromium: str, problems: PageProblems) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(EXPECT_MS)
            page.on("console", problems.console)
            page.on("pageerror", problems.page_error)
            yield page
        finally:
            await browser.close()


def admin_url(h: Harness) -> str:
    return f"http://127.0.0.1:{h.port}/b3lb/admin/"


async def log_in(page: Any, token: str) -> None:
    await page.fill("#token", token)
    await page.click("#login-button")


def row(page: Any, node: str, cluster: str = "main") -> Any:
    return page.locator(f'#nodes tr[data-node="{cluster}/{node}"]')


async def node_maintenance(h: Harness, slug: str) -> bool:
    assert h.pool is not None
    return bool(await h.pool.fetchval("SELECT maintenance FROM node WHERE slug = $1", slug))


@pytest.mark.gen_test(timeout=120)
async def test_login_fleet_and_a_node_going_down(db_url, chromium):
    from playwright.async_api import expect

    async with Harness(db_url, nodes=3) as h:
        dashboard_of(h).tick = 0.2
        await create_ok(h, "room-1")
        host = owner(h, "room-1")
        await h.poll()
        read = await make_token(h, "viewer", "read")
        problems = PageProblems()
        async with browser_page(chromium, problems) as page:
            await page.goto(admin_url(h))
            await expect(page.locator("#login-form")).to_be_visible()
            await expect(page.locator("#dashboard")).to_be_hidden()
            assert await page.locator("#nodes tbody tr").count() == 0
            html = await page.content()
            assert all(node.name not in html for node in h.fleet.nodes)

            await log_in(page, "b3lb_" + "x" * 43)
            await expect(page.locator("#login-message")).to_contain_text("Token refused")
            await expect(page.locator("#dashboard")).to_be_hidden()
            assert await page.evaluate("sessionStorage.length") == 0

            await log_in(page, read)
            await expect(page.locator("#who-name")).to_have_text("viewer")
            for node in h.fleet.nodes:
                await expect(row(page, node.name)).to_have_attribute("data-state", "ok")
            meetings = row(page, host.name).locator("td").nth(6)
            await expect(meetings).to_have_text("1")
            await expect(page.locator('#tenants tr[data-tenant="ABC"]')).to_contain_text("1 / 999999")
            # A read token gets no buttons (the API would refuse them anyway: write scope).
            await expect(page.locator("#readonly-note")).to_be_visible()
            assert await page.locator("#nodes button").count() == 0

            down = h.fleet.nodes[0]
            down.set_down()
            await h.poll()
            await h.poll()  # poller.error_after = 2
            await expect(row(page, down.name)).to_have_attribute("data-state", "error")
            await expect(row(page, down.name).locator(".state")).to_have_text("error")
            await expect(row(page, h.fleet.nodes[1].name)).to_have_attribute("data-state", "ok")

            # The token lives in this tab's session storage: a reload keeps the log-in, log-out ends it.
            await page.reload()
            await expect(row(page, down.name)).to_have_attribute("data-state", "error")
            await page.click("#logout")
            await expect(page.locator("#login-form")).to_be_visible()
            assert await page.evaluate("sessionStorage.length") == 0
            await expect(page.locator("#nodes tbody tr")).to_have_count(0)
        assert problems.found == []
        await wait_for(lambda: not dashboard_of(h).clients, "the browser's streams end")


@pytest.mark.gen_test(timeout=120)
async def test_drain_and_maintenance_buttons_change_the_database(db_url, chromium):
    from playwright.async_api import expect

    async with Harness(db_url, nodes=2, cache_refresh_interval=0.5) as h:
        dashboard_of(h).tick = 0.2
        await create_ok(h, "room-1")
        node = owner(h, "room-1").name
        await h.poll()
        write = await make_token(h, "operator", "write")
        problems = PageProblems()
        async with browser_page(chromium, problems) as page:
            await page.goto(admin_url(h))
            await log_in(page, write)
            await expect(row(page, node)).to_have_attribute("data-state", "ok")
            await expect(page.locator("#readonly-note")).to_be_hidden()
            drain = row(page, node).locator('button[data-action="drain"]')
            await drain.click()
            await expect(drain).to_have_text("Confirm drain")  # one click alone does nothing
            assert not await node_maintenance(h, node)
            await drain.click()
            await expect(page.locator("#action-log")).to_contain_text("drain done")
            assert await node_maintenance(h, node)
            assert h.pool is not None
            actor = await h.pool.fetchval("SELECT actor FROM admin_audit WHERE action = 'node.drain'")
            assert actor == "token:operator"
            await expect(row(page, node)).to_have_attribute("data-state", "maintenance")
            await expect(drain).to_be_disabled()

            toggle = row(page, node).locator('button[data-action="maintenance"]')
            await expect(toggle).to_have_text("Maintenance off")
            await toggle.click()  # switching maintenance off needs no confirmation
            await expect(page.locator("#action-log")).to_contain_text("maintenance off done")
            assert not await node_maintenance(h, node)
            await expect(row(page, node)).to_have_attribute("data-state", "ok")
        assert problems.found == []


async def cluster_maintenance(h: Harness) -> bool:
    assert h.pool is not None
    return bool(await h.pool.fetchval("SELECT maintenance FROM cluster WHERE name = 'main'"))


@pytest.mark.gen_test(timeout=150)
async def test_panic_and_cluster_maintenance_buttons(db_url, chromium):
    from playwright.async_api import expect

    async with Harness(db_url, nodes=2, cache_refresh_interval=0.2) as h:
        dashboard_of(h).tick = 0.2
        await create_ok(h, "room-1")
        doomed = owner(h, "room-1")
        other = next(n for n in h.fleet.nodes if n is not doomed)
        await h.poll()
        write = await make_token(h, "operator", "write")
        problems = PageProblems()
        async with browser_page(chromium, problems) as page:
            await page.goto(admin_url(h))
            await log_in(page, write)
            await expect(row(page, doomed.name)).to_have_attribute("data-state", "ok")
            panic = row(page, doomed.name).locator('button[data-action="panic"]')
            await panic.click()
            await expect(panic).to_have_text("Confirm panic: end 1 meeting(s)")  # one click alone does nothing
            assert not await node_maintenance(h, doomed.name) and "room-1" in doomed.meetings
            await panic.click()
            await expect(page.locator("#action-log")).to_contain_text(
                f"{doomed.name}: panic finished: 1 meeting(s) ended")
            assert doomed.meetings == {} and await node_maintenance(h, doomed.name)
            assert h.pool is not None
            phases = await h.pool.fetch("SELECT actor, detail->>'phase' AS phase FROM admin_audit "
                                        "WHERE action = 'node.panic' ORDER BY id")
            assert [(r["actor"], r["phase"]) for r in phases] == [("token:operator", "started"),
                                                                  ("token:operator", "finished")]
            # In maintenance with nothing left: shown as drained.
            await expect(row(page, doomed.name)).to_have_attribute("data-drained", "true")
            await expect(row(page, doomed.name).locator(".tag-drained")).to_have_text("drained")

            cluster = page.locator('#clusters li[data-cluster="main"]')
            switch = cluster.locator('button[data-action="cluster-maintenance"]')
            await expect(switch).to_have_text("Cluster maintenance on")
            await switch.click()
            await expect(switch).to_have_text("Confirm cluster maintenance")
            assert not await cluster_maintenance(h)
            await switch.click()
            await expect(page.locator("#action-log")).to_contain_text("cluster main: maintenance on done")
            assert await cluster_maintenance(h)
            await expect(cluster).to_have_attribute("data-maintenance", "true")
            await expect(row(page, other.name)).to_have_attribute("data-state", "maintenance")
            await expect(row(page, other.name).locator(".tag-cluster")).to_be_visible()
            assert not await node_maintenance(h, other.name)  # the node's own switch is untouched
            await expect(switch).to_have_text("Cluster maintenance off")
            await switch.click()  # off needs no confirmation, and leaves each node as it is on its own
            await expect(page.locator("#action-log")).to_contain_text("cluster main: maintenance off done")
            assert not await cluster_maintenance(h)
            await expect(row(page, other.name)).to_have_attribute("data-state", "ok")
            await expect(row(page, doomed.name)).to_have_attribute("data-state", "maintenance")
        assert problems.found == []


@pytest.mark.gen_test(timeout=120)
async def test_tenant_token_sees_only_its_tenant(db_url, chromium):
    from playwright.async_api import expect

    async with Harness(db_url, nodes=2, tenants=("ABC", "DEF")) as h:
        dashboard_of(h).tick = 0.2
        await create_ok(h, "room-1", slug="DEF")
        await h.poll()
        token = await make_token(h, "abc-view", "read", tenant="ABC")
        problems = PageProblems()
        async with browser_page(chromium, problems) as page:
            await page.goto(admin_url(h))
            await log_in(page, token)
            await expect(page.locator("#tenant-note")).to_contain_text("tenant ABC")
            await expect(page.locator('#tenants tr[data-tenant="ABC"]')).to_be_visible()
            await expect(page.locator("#fleet")).to_be_hidden()
            await expect(page.locator("#history")).to_be_hidden()
            text = await page.locator("body").inner_text()
            assert "DEF" not in text and all(node.name not in text for node in h.fleet.nodes)
        assert problems.found == []


async def _rich_fleet(h: Harness) -> None:
    """Two clusters, tenants with meetings and attendees, a node in maintenance, a render queue."""
    assert h.pool is not None and h.runtime is not None
    west = await h.pool.fetchval("INSERT INTO cluster (name) VALUES ('west') RETURNING id")
    await h.pool.execute("INSERT INTO cluster_group_relation (cluster_group_id, cluster_id) "
                         "SELECT id, $1 FROM cluster_group", west)
    await h.pool.execute("UPDATE node SET cluster_id = $1 WHERE slug IN ('fake-0004', 'fake-0005')", west)
    await h.pool.execute("UPDATE node SET maintenance = true WHERE slug = 'fake-0005'")
    await h.pool.execute("UPDATE tenant SET meeting_limit = 10, attendee_limit = 200 WHERE slug = 'ABC'")
    await h.pool.execute("UPDATE tenant SET meeting_limit = 4, attendee_limit = 60 WHERE slug = 'XYZ'")
    await h.reload()
    for number, (slug, people) in enumerate([("ABC", 25), ("ABC", 12), ("ABC", 40), ("XYZ", 9), ("XYZ", 30),
                                             ("XYZ", 18), ("DEMO", 5), ("ABC", 7)]):
        await create_ok(h, f"room-{number}", slug=slug)
        owner(h, f"room-{number}").add_attendees(f"room-{number}", people)
    for node, cpu in zip(h.fleet.nodes, (23, 41, 35, 67, 4), strict=True):
        node.cpu = cpu * 100  # the load endpoint's unit: hundredths of a percent
    for state in ("QUEUED", "QUEUED", "QUEUED", "RUNNING", "FAILED"):
        set_id = str(uuid.uuid4())
        await h.pool.execute("INSERT INTO record_set (id, nonce) VALUES ($1::text, $1::text::uuid)", set_id)
        await h.pool.execute("INSERT INTO render_job (recordset_id, state) VALUES ($1, $2)", set_id, state)


async def _fill_history(h: Harness) -> None:
    """Real polls of a fleet whose attendance changes, each sampled into the history. The samples
    are stamped a minute apart ending now (the test cannot wait an hour), so the chart has a shape."""
    assert h.runtime is not None
    history = dashboard_of(h).history
    history.rings.clear()
    now = time.time()
    rooms = [m for node in h.fleet.nodes for m in node.meetings]
    for step in range(30):
        for number, node in enumerate(h.fleet.nodes):  # CPU drifts as a day's load would
            node.cpu = max(0, int(node.cpu + 400 * math.sin(step / 4 + number)))
        for index, room in enumerate(rooms):
            node = owner(h, room)
            if (step + index) % 3 == 0:
                node.add_attendees(room, 2 + index % 4)
            elif (step + index) % 5 == 0 and len(node.meetings[room].attendees) > 4:
                node.remove_attendee(room)
        await h.poll()
        history.sample(h.runtime.loads.nodes.values(), now=now - (29 - step) * 60)


@pytest.mark.gen_test(timeout=180)
async def test_full_dashboard_with_chart(db_url, chromium):
    """Two clusters with their load lines, tenants against limits, the render queue; the screenshot."""
    from playwright.async_api import expect

    async with Harness(db_url, nodes=5, tenants=("ABC", "XYZ", "DEMO")) as h:
        dashboard_of(h).tick = 0.2
        await _rich_fleet(h)
        await _fill_history(h)
        assert h.pool is not None
        await h.pool.execute("UPDATE node SET maintenance = true WHERE slug = 'fake-0003'")  # drained, then down
        await h.reload()
        h.fleet.nodes[2].set_down()
        await h.poll()
        await h.poll()
        write = await make_token(h, "ops-team", "write")
        problems = PageProblems()
        async with browser_page(chromium, problems) as page:
            await page.goto(admin_url(h))
            await log_in(page, write)
            await expect(page.locator("#chart polyline")).to_have_count(2)
            await expect(page.locator("#legend li")).to_have_text(["main", "west"])
            await expect(row(page, "fake-0003")).to_have_attribute("data-state", "error")  # down before maintenance
            await expect(row(page, "fake-0003").locator(".tag-maintenance")).to_have_text("maintenance")
            await expect(row(page, "fake-0005", "west").locator(".tag-drained")).to_have_text("drained")
            await expect(page.locator("#clusters li")).to_have_count(2)
            await expect(row(page, "fake-0005", "west")).to_have_attribute("data-state", "maintenance")
            await expect(row(page, "fake-0004", "west")).to_have_attribute("data-state", "ok")
            await expect(page.locator('#tenants tr[data-tenant="ABC"] meter')).to_have_count(2)
            await expect(page.locator('#queue dd[data-key="queued"]')).to_have_text("3")
            await expect(page.locator('#queue dd[data-key="failed"]')).to_have_text("1")
            await page.select_option("#metric", "2")  # attendees
            await expect(page.locator("#chart svg")).to_have_attribute("aria-label", "cluster attendees over time")
            await page.select_option("#metric", "1")
            target = os.environ.get("B3LB_SCREENSHOT")
            if target:
                await page.mouse.move(0, 0)
                await page.screenshot(path=target, full_page=True)
        assert problems.found == []
