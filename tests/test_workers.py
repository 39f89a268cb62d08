"""`b3lb serve --workers N`: one port, N processes, one poller, shared state, restarts, clean stop."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest
from tests_support import free_port
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from b3lb.checksum import digest
from b3lb.testing.fakebbb import FakeFleet
from b3lb.testing.harness import seed

DOMAIN = "lb.test"
JOINS = 40
ADMIN_TOKEN = "admin-" + "9d" * 16


def log_lines(path: Path) -> list[dict]:
    lines = []
    for raw in path.read_bytes().splitlines():
        try:
            lines.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            continue
    return lines


async def wait_for(path: Path, predicate, what: str, timeout: float = 30.0) -> list[dict]:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in log_lines(path) if predicate(line)]
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"no log line for {what}:\n{path.read_text()[-3000:]}")


def message(line: dict, start: str) -> bool:
    return str(line.get("message", "")).startswith(start)


def serve_env(db_url: str, port: int, tmp_path: Path, **more: str) -> dict[str, str]:
    env = dict(os.environ, DATABASE_URL=db_url, B3LB_CONFIG=os.devnull, B3LB_SERVER_PORT=str(port),
               B3LB_SERVER_DATA_DIR=str(tmp_path / "var"), B3LB_SERVER_API_BASE_DOMAIN=DOMAIN,
               B3LB_SERVER_PUBLIC_SCHEME="http", B3LB_POLLER_INTERVAL="0.3", B3LB_POLLER_JITTER="0.05",
               B3LB_POLLER_TIMEOUT="1", B3LB_API_CACHE_REFRESH_INTERVAL="0.3", B3LB_RENDER_EMBEDDED="false",
               B3LB_API_COUNTER_FLUSH_INTERVAL="60", B3LB_METRICS_ADMIN_TOKEN=ADMIN_TOKEN, **more)
    env.pop("REDIS_URL", None)
    return env


class Api:
    """Signed BBB API calls, each on a new connection (SO_REUSEPORT spreads connections, not requests)."""

    def __init__(self, port: int, secret: str) -> None:
        self.port, self.secret = port, secret
        self.client = AsyncHTTPClient(force_instance=True)  # simple_httpclient: no connection reuse

    async def metrics(self) -> tuple[str, float]:
        """A scrape of the global view: which worker answered (its process part's label), and the
        attendees counter of tenant ABC."""
        request = HTTPRequest(f"http://127.0.0.1:{self.port}/b3lb/metrics", headers={"Authorization": ADMIN_TOKEN})
        text = (await self.client.fetch(request)).body.decode()
        worker = re.search(r'^process_cpu_seconds_total\{worker="(\d+)"\} ', text, re.MULTILINE)
        joined = re.search(r'^b3lb_attendees_total\{secret="ABC"\} (\S+)$', text, re.MULTILINE)
        assert worker is not None and joined is not None, text[-2000:]
        return worker.group(1), float(joined.group(1))

    async def call(self, call: str, query: str):  # noqa: ANN201
        signed = f"{query}&checksum={digest('sha256', call, query, self.secret)}"
        request = HTTPRequest(f"http://127.0.0.1:{self.port}/bigbluebutton/api/{call}?{signed}",
                              headers={"Host": f"abc.{DOMAIN}"}, follow_redirects=False)
        return await self.client.fetch(request, raise_error=False)


async def joins_by_worker(api: Api, log: Path, meeting_id: str, node_host: str, label: str) -> dict[int, int]:
    """JOINS joins on new connections; each must redirect to the meeting's node. Returns the join
    answers per worker index, from the workers' own log lines (at DEBUG, one per API call)."""
    before = len(log_lines(log))
    for n in range(JOINS):
        r = await api.call("join", f"meetingID={meeting_id}&fullName=User+{label}{n}&role=VIEWER")
        assert r.code == 302, (r.code, r.body)
        assert urlsplit(r.headers["Location"]).netloc == node_host
    await asyncio.sleep(0.5)  # the log lines are written
    counts: dict[int, int] = {}
    for line in log_lines(log)[before:]:
        if message(line, "join 302"):
            counts[line["worker"]] = counts.get(line["worker"], 0) + 1
    return counts


def pollers_since(fleet: FakeFleet, since: float) -> set[str]:
    return {r.headers.get("User-Agent", "") for node in fleet.nodes for r in node.requests
            if r.call == "getMeetings" and r.received_at >= since}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.gen_test(timeout=120)
async def test_two_workers_share_the_port_and_the_state(empty_db, tmp_path):
    fleet = FakeFleet(2)
    await fleet.start()
    port = free_port()
    log = tmp_path / "serve.log"
    out = open(log, "wb")  # noqa: SIM115 - closed in finally
    env = serve_env(empty_db, port, tmp_path, B3LB_SERVER_LOG_LEVEL="DEBUG")
    proc = subprocess.Popen([sys.executable, "-m", "b3lb.admin.cli", "serve", "--workers", "2"], env=env,
                            stdout=out, stderr=subprocess.STDOUT)
    pool = None
    try:
        await wait_for(log, lambda x: message(x, "all 2 workers serving"), "both workers serving")
        lines = log_lines(log)
        migrations = [x for x in lines if message(x, "applied migration")]
        assert migrations and {x["worker"] for x in migrations} == {"supervisor"}  # once, by the supervisor
        workers = {x["worker_index"]: x["worker_pid"] for x in lines if message(x, "worker ") and "worker_pid" in x}
        assert sorted(workers) == [0, 1] and proc.pid not in workers.values()
        listening = {(x["worker"], x["pid"]) for x in lines if message(x, "listening")}
        assert listening == {(0, workers[0]), (1, workers[1])}

        pool = await asyncpg.create_pool(empty_db, min_size=1, max_size=2)
        tenants = await seed(pool, fleet)  # the workers pick it up at their next refresh (0.3 s)
        api = Api(port, tenants["ABC"].secrets[0][1])
        for _ in range(100):  # until both workers know the tenant: 10 good answers in a row
            answers = [await api.call("isMeetingRunning", "meetingID=shared") for _ in range(10)]
            if all(b"SUCCESS" in r.body for r in answers):
                break
            await asyncio.sleep(0.1)
        r = await api.call("create", "name=Room&meetingID=shared")
        assert b"SUCCESS" in r.body, r.body
        node = next(n for n in fleet.nodes if "shared" in n.meetings)
        node_host = f"{node.domain}:{node.port}"

        # created through one worker, joined at once through both
        counts = await joins_by_worker(api, log, "shared", node_host, "a")
        assert sum(counts.values()) == JOINS and set(counts) == {0, 1}, counts

        # exactly one of them polls: one process fetches getMeetings, and it is one of the workers
        window = time.time()
        await asyncio.sleep(1.5)
        agents = pollers_since(fleet, window)
        assert len(agents) == 1, agents
        poller_pid = int(next(iter(agents)).rsplit("pid ", 1)[1].rstrip(")"))
        assert poller_pid in workers.values()
        leading = [x for x in log_lines(log) if message(x, "this process now polls the fleet")]
        assert [x["pid"] for x in leading] == [poller_pid]

        # scrapes reach either worker, and both answer the same counters: worker 0's render. Were
        # each to render its own, the one that does not poll would add its unflushed joins (flushed
        # every 60 s here) and the other not: a counter going up and down from scrape to scrape.
        # Worker 0's render holds its own joins, and the poller's (flushed after each cycle).
        expected = JOINS if poller_pid == workers[1] else counts[0]
        answers: list[tuple[str, float]] = []
        for _ in range(200):  # bounded: about 10 s
            answers.append(await api.metrics())
            recent = answers[-20:]
            if {w for w, _ in recent} == {"0", "1"} and [v for _, v in recent] == [expected] * 20:
                break
            await asyncio.sleep(0.05)
        assert {w for w, _ in recent} == {"0", "1"} and [v for _, v in recent] == [expected] * 20, answers

        # a worker that dies is started again; the new one serves as well
        os.kill(workers[1], signal.SIGKILL)
        await wait_for(log, lambda x: message(x, f"worker 1 (pid {workers[1]}) died (killed by SIGKILL)"), "death")
        restarted = await wait_for(log, lambda x: message(x, "worker 1 serving") and str(workers[1]) not in
                                   x["message"], "worker 1 serving again")
        new_pid = int(restarted[-1]["message"].rsplit("pid ", 1)[1].rstrip(")"))
        assert alive(new_pid) and not alive(workers[1])
        counts = await joins_by_worker(api, log, "shared", node_host, "b")
        assert set(counts) == {0, 1}, counts

        # SIGTERM: every worker stops cleanly, then the supervisor, with exit code 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        lines = log_lines(log)
        stopped = {x["pid"] for x in lines if message(x, "stopped") and x.get("worker") in (0, 1)}
        assert stopped == {workers[0], new_pid}
        assert not alive(workers[0]) and not alive(new_pid)
        assert not [x for x in lines if x.get("level") in ("ERROR", "CRITICAL")]
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        if pool is not None:
            await pool.close()
        await fleet.stop()


GIVE_UP = """
import sys
from b3lb.config import load_config
from b3lb.logs import setup_logging
from b3lb.workers import Supervisor

setup_logging("INFO")
supervisor = Supervisor(load_config(), "postgresql://unused", None)
supervisor.command = [sys.executable, "-c", "import sys; sys.exit(3)"]  # a worker that fails at start
supervisor.first_backoff = 0.05
sys.exit(supervisor.run())
"""


def test_the_supervisor_gives_up_when_workers_keep_dying_at_start(tmp_path):
    env = dict(os.environ, B3LB_CONFIG=os.devnull, B3LB_SERVER_WORKERS="2", B3LB_SERVER_PORT=str(free_port()))
    done = subprocess.run([sys.executable, "-c", GIVE_UP], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "keeps dying before it serves (exit code 3, 5 times in a row): giving up" in done.stdout
    assert done.stdout.count("died (exit code 3); starting it again") >= 4
    assert "Traceback" not in done.stdout + done.stderr


def test_serve_workers_refuses_a_busy_port_and_bad_numbers(db_url, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = serve_env(db_url, port, tmp_path)
        done = subprocess.run([sys.executable, "-m", "b3lb.admin.cli", "serve", "--workers", "2"], env=env,
                              capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "cannot start" in done.stdout and "Address already in use" in done.stdout
    for bad in ("0", "65", "two"):
        done = subprocess.run([sys.executable, "-m", "b3lb.admin.cli", "serve", "--workers", bad], env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 2 and "--workers" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "b3lb.admin.cli", "serve"], env=dict(env, B3LB_SERVER_WORKERS="0"),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "server.workers" in done.stderr, done.stderr
