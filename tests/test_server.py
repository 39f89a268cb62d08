"""`b3lb serve` as operators run it, and /b3lb/ping with the database up and down."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from tests_support import free_port

from b3lb.testing.harness import Harness

SERVE = [sys.executable, "-m", "b3lb.admin.cli", "serve"]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_serve_answers_ping_and_stops_on_sigterm(db_url, tmp_path):
    port = free_port()
    env = dict(os.environ, DATABASE_URL=db_url, B3LB_SERVER_PORT=str(port), B3LB_SERVER_DATA_DIR=str(tmp_path),
               B3LB_CONFIG=os.devnull, B3LB_SERVER_LOG_LEVEL="INFO")
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(SERVE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        status, body = 0, b""
        while time.monotonic() < deadline:
            try:
                status, body = get(f"http://127.0.0.1:{port}/b3lb/ping")
                break
            except OSError:
                time.sleep(0.1)
        assert (status, body) == (200, b"OK!")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        log = proc.stdout.read().decode()
        assert '"message":"listening"' in log and '"message":"stopped"' in log  # structured JSON lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send raw bytes, read until the server closes; the answer and the seconds it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def test_serve_answers_oversized_requests_and_drops_slow_clients(db_url, tmp_path):
    """server.py serves with the limits of b3lb/httplimits.py, configured from [server]."""
    port = free_port()
    env = dict(os.environ, DATABASE_URL=db_url, B3LB_SERVER_PORT=str(port), B3LB_SERVER_DATA_DIR=str(tmp_path),
               B3LB_CONFIG=os.devnull, B3LB_SERVER_LOG_LEVEL="INFO", B3LB_SERVER_HEADER_TIMEOUT="0.5",
               B3LB_SERVER_MAX_BODY_SIZE="100000")
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(SERVE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if get(f"http://127.0.0.1:{port}/b3lb/ping")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        answer, _ = exchange(port, b"GET /b3lb/ping?q=" + b"q" * 1024 * 1024 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 414 URI Too Long\r\n") and b"\r\nConnection: close\r\n" in answer
        answer, _ = exchange(port, b"POST /b3lb/ping HTTP/1.1\r\nHost: x\r\nContent-Length: 100001\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
        answer, seconds = exchange(port, b"GET /b3lb/ping HTTP/1.1\r\nHost: x\r\n")  # never completed
        assert answer == b"" and 0.3 < seconds < 3
        assert get(f"http://127.0.0.1:{port}/b3lb/ping") == (200, b"OK!")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        log = proc.stdout.read().decode()
        assert log.count('"message":"414 URI Too Long') == 1 and log.count('"message":"413 Content Too Large') == 1
        assert log.count("request head not complete within 0.5s") == 1
        assert "Traceback" not in log and "qqqq" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_with_an_unreachable_database_exits_with_a_message(tmp_path):
    env = dict(os.environ, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", B3LB_CONFIG=os.devnull,
               B3LB_SERVER_DATA_DIR=str(tmp_path), B3LB_DATABASE_CONNECT_TIMEOUT="2")
    done = subprocess.run(SERVE, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "cannot start" in done.stdout and "Traceback" not in done.stdout + done.stderr


@pytest.mark.gen_test(timeout=30)
async def test_ping_says_doh_when_the_database_is_gone(db_url):
    async with Harness(db_url, nodes=1) as h:
        r = await h.request("/b3lb/ping")
        assert (r.code, r.body) == (200, b"OK!")
        await h.pool.close()  # the database is unreachable from now on
        r = await h.request("/b3lb/ping")
        assert (r.code, r.body) == (503, b"Doh!")
        r = await h.request("/b3lb/ping", method="POST", body=b"")
        assert r.code == 405
