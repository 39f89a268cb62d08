"""Two real `b3lb serve` processes on one database: exactly one polls, the other takes over."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import asyncpg
import pytest

from b3lb.testing.fakebbb import FakeFleet
from b3lb.testing.harness import seed

SERVE = "import sys; from b3lb.config import load_config; from b3lb.server import serve; sys.exit(serve(load_config()))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db_url: str, port: int, tmp_path) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=db_url,
        B3LB_CONFIG=os.devnull,
        B3LB_SERVER_PORT=str(port),
        B3LB_SERVER_DATA_DIR=str(tmp_path),
        B3LB_SERVER_LOG_LEVEL="WARNING",
        B3LB_POLLER_INTERVAL="0.3",
        B3LB_POLLER_JITTER="0.05",
        B3LB_POLLER_TIMEOUT="1",
    )
    env.pop("REDIS_URL", None)
    return subprocess.Popen([sys.executable, "-c", SERVE], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def pollers_since(fleet: FakeFleet, since: float) -> set[str]:
    """User agents (one per process) that fetched getMeetings from the fake node since `since`."""
    return {
        r.headers.get("User-Agent", "")
        for r in fleet.nodes[0].requests
        if r.call == "getMeetings" and r.received_at >= since
    }


@pytest.mark.gen_test(timeout=60)
async def test_one_poller_and_take_over(db_url, tmp_path):
    fleet = FakeFleet(1)
    await fleet.start()
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    servers: list[subprocess.Popen] = []
    try:
        await seed(pool, fleet)
        servers = [start_server(db_url, free_port(), tmp_path / str(i)) for i in range(2)]
        await asyncio.sleep(3.0)  # both up, several intervals of 0.3 s
        window = time.time()
        await asyncio.sleep(1.5)
        agents = pollers_since(fleet, window)
        assert len(agents) == 1, agents  # exactly one process polls
        leader_pid = int(next(iter(agents)).rsplit("pid ", 1)[1].rstrip(")"))
        leader = next(p for p in servers if p.pid == leader_pid)
        leader.send_signal(signal.SIGKILL)  # dies without a goodbye: its lock goes with its connection
        leader.wait(5)
        killed_at = time.time()
        await asyncio.sleep(1.5)  # a few intervals
        agents = pollers_since(fleet, killed_at + 0.7)
        assert len(agents) == 1 and f"pid {leader_pid})" not in next(iter(agents)), agents
    finally:
        for proc in servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        await pool.close()
        await fleet.stop()
