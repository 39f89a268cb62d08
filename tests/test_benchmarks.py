"""The benchmark harness, so it cannot rot and its checks cannot pass by accident.

- `python -m benchmarks.run --quick` end to end: every stack (plain HTTP, TLS, TLS with chunked gzip
  answers, metrics, scale, workers) and the poll, getRecordings and render parts ran, served
  requests and saw no errors; every join answer's Location was checked.
- The load generator's checks against a small real HTTP server that answers right or wrong: a join
  whose Location points at the wrong node or carries the wrong checksum counts as an error, chunked
  and FAILED answers are handled.
Not a performance test: figures come from a full run (see benchmarks/README.md).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

REPO = Path(__file__).resolve().parent.parent
QUICK_ROWS = [
    "yardstick-a", "yardstick-b", "handler-hello", "join", "create", "create-tls", "getMeetingInfo-tls-chunked-gzip",
    "metrics", "scale", "scale-end-all", "workers-1", "workers-2",
]  # fmt: skip
LOADED = [r for r in QUICK_ROWS if r != "scale-end-all"]
SERVED_BY_B3LB = ["join", "create", "create-tls", "getMeetingInfo-tls-chunked-gzip", "metrics", "scale"]


def run_bench(tmp_path: Path, *options: str) -> dict:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out), *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text(encoding="utf-8"))


def test_quick_benchmark_runs_every_stack(tmp_path):
    result = run_bench(tmp_path)
    rows = {r["scenario"]: r for r in result["rows"]}
    assert list(rows) == QUICK_ROWS
    for name in LOADED:
        row = rows[name]
        assert not row.get("status"), row  # ran: nothing is n/a or failed
        assert row["requests"] > 0 and row["rps"] > 0 and row["errors"] == 0, row
        assert row["answers"] >= row["requests"], row
    for name in SERVED_BY_B3LB:  # measured right after both yardsticks, lag read from the server
        row = rows[name]
        if name != "scale":
            assert row["a_rps"] > 0 and row["b_rps"] > 0 and row["pct_a"] > 0 and row["pct_b"] > 0, row
        assert row["lag_samples"] > 0 and row["lag_p99_ms"] <= row["lag_max_ms"], row
    join = rows["join"]
    assert join["checked_locations"] == join["answers"] > 0  # every join Location checked, warm-up included
    scale, after = rows["scale"], rows["scale-end-all"]
    assert scale["owned_meetings"] >= 200 and scale["join_rps"] > 0 and scale["create_rps"] > 0, scale
    assert after["errors"] == 0 and after["rss_mb"] > 0 and isinstance(after["meetings_left"], int), after
    assert [rows[n]["processes"] for n in ("workers-1", "workers-2")] == [1, 3]
    assert rows["workers-2"]["efficiency_vs_1"] > 0
    assert {"poll", "poll-10k"} <= {r["scenario"] for r in result["poll"]}  # benchmarks/poll.py's variants
    for row in result["poll"]:
        assert row["errors"] == 0 and row["wall_max_s"] > 0 and row["rss_mb"] > 0, row
    assert result["recordings"] and result["render"] and not result["render"].get("failed")
    verdicts = {t["name"]: t["verdict"] for t in result["targets"]}
    assert verdicts["errors in all scenarios (warm-up included)"] == "PASS"
    assert set(verdicts.values()) <= {"PASS", "MISS", "n/a"}


# -- the load generator's checks, against a small HTTP server ----------------------------------------

NODES = {"m1": ("http://10.0.0.1:8080", "secret-one", "sha256"), "m2": ("https://node2.test:443", "secret-two", "sha1")}


def signed_location(base: str, query: str, secret: str, algorithm: str) -> str:
    checksum = hashlib.new(algorithm, f"join{query}{secret}".encode()).hexdigest()
    return f"{base}/bigbluebutton/api/join?{query}&checksum={checksum}"


def join_answers(mode: str) -> Callable[[str], tuple[int, dict[str, str], bytes]]:
    """How the server answers a join `mode`ly: right, or wrong in one way."""

    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        query = path.partition("?")[2].replace("&checksum=x", "")  # b3lb signs the query without the client's
        meeting = dict(parse_qsl(query))["meetingID"]
        base, secret, algorithm = NODES[meeting]
        other = NODES["m2" if meeting == "m1" else "m1"]
        if mode == "wrong-secret":
            secret = other[1]
        elif mode == "wrong-node":
            base = other[0]
        elif mode == "wrong-port":
            base = base.rsplit(":", 1)[0] + ":9999"
        elif mode == "default-port":  # https://node2.test:443 spelled without its port: still right
            base = base.removesuffix(":443")
        return 302, {"Location": signed_location(base, query, secret, algorithm)}, b""

    return answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answer: Callable[[str], tuple[int, dict[str, str], bytes]]
    chunked = False

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, headers, body = type(self).answer(self.path)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if self.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(body) // 2
            for part in (body[:half], body[half:]):
                if part:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Callable[..., int]]:
    started: list[ThreadingHTTPServer] = []

    def start(answer: Callable[[str], tuple[int, dict[str, str], bytes]], chunked: bool = False) -> int:
        handler = type("Handler", (_Handler,), {"answer": staticmethod(answer), "chunked": chunked})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return httpd.server_address[1]

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def run_loadgen(tmp_path: Path, port: int, paths: list[str], **spec: object) -> dict:
    (tmp_path / "paths.txt").write_text("\n".join(paths) + "\n", encoding="ascii")
    fields = {"port": port, "host": "t.bench.test", "paths_file": str(tmp_path / "paths.txt"), "connections": 2,
              "duration": 0.3, "warmup": 0.1, **spec}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(fields), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "benchmarks.loadgen", "--spec", str(tmp_path / "spec.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.split("BENCHJSON ", 1)[1])


JOIN_PATHS = [f"/bigbluebutton/api/join?fullName=U{n}&meetingID=m{1 + n % 2}&userID=u{n}&checksum=x" for n in range(50)]


@pytest.mark.parametrize("mode", ["right", "default-port"])
def test_loadgen_accepts_a_join_at_the_owning_node(tmp_path, server, mode):
    (tmp_path / "targets.json").write_text(json.dumps(NODES), encoding="utf-8")
    result = run_loadgen(tmp_path, server(join_answers(mode)), JOIN_PATHS, expect_status=302,
                         join_targets=str(tmp_path / "targets.json"))  # fmt: skip
    assert result["answers"] > 0 and result["unexpected"] == 0 and result["transport_errors"] == 0, result["examples"]
    assert result["checked_locations"] == result["answers"]


@pytest.mark.parametrize("mode", ["wrong-secret", "wrong-node", "wrong-port"])
def test_loadgen_counts_a_wrong_join_location_as_an_error(tmp_path, server, mode):
    (tmp_path / "targets.json").write_text(json.dumps(NODES), encoding="utf-8")
    result = run_loadgen(tmp_path, server(join_answers(mode)), JOIN_PATHS, expect_status=302,
                         join_targets=str(tmp_path / "targets.json"))  # fmt: skip
    assert result["answers"] > 0 and result["checked_locations"] == 0, result
    assert result["unexpected"] == result["answers"], result
    assert result["warmup_errors"] > 0, result  # warm-up answers are checked and counted too
    assert any("join Location" in e for e in result["examples"]), result


@pytest.mark.parametrize("chunked", [False, True])
def test_loadgen_reads_chunked_answers_and_counts_failed_ones(tmp_path, server, chunked):
    good = b"<response><returncode>SUCCESS</returncode><running>true</running></response>"
    bad = b"<response><returncode>FAILED</returncode><messageKey>x</messageKey></response>"
    port = server(lambda path: (200, {"Content-Type": "text/xml"}, good if "ok" in path else bad), chunked=chunked)
    fine = run_loadgen(tmp_path, port, ["/ok"], contains="SUCCESS")
    assert fine["answers"] > 0 and fine["unexpected"] == 0 and fine["transport_errors"] == 0, fine
    failing = run_loadgen(tmp_path, port, ["/ok", "/no"])  # FAILED is an error even without `excludes`
    assert 0 < failing["unexpected"] < failing["answers"], failing


def test_loadgen_checks_every_byte_of_a_long_answer(tmp_path, server):
    """A 750 KB answer (getMeetings with 500 meetings) is received in place and searched whole: a
    marker at its very end, a FAILED at its very end, and the sampled tag count all count."""
    filler = b"<meeting><meetingID>m</meetingID></meeting>" * 17_000  # some 750 KB
    ending = {"ok": b"<end/>", "bad": b"<returncode>FAILED</returncode>", "short": b""}
    answers = {name: b"<response>" + filler + tail + b"</response>" for name, tail in ending.items()}
    port = server(lambda path: (200, {"Content-Type": "text/xml"}, answers[path.strip("/")]))
    fine = run_loadgen(tmp_path, port, ["/ok"], contains="<end/>", count_tag="<meeting>", count=17_000, sample=2)
    assert fine["answers"] > 0 and fine["unexpected"] == 0 and fine["transport_errors"] == 0, fine
    failing = run_loadgen(tmp_path, port, ["/ok", "/bad"])
    assert 0 < failing["unexpected"] < failing["answers"] and "FAILED" in failing["examples"][0], failing
    missing = run_loadgen(tmp_path, port, ["/short"], contains="<end/>")
    assert missing["unexpected"] == missing["answers"] > 0, missing
    miscounted = run_loadgen(tmp_path, port, ["/ok"], count_tag="<meeting>", count=16_999, sample=2)
    assert 0 < miscounted["answers"] // 2 <= miscounted["unexpected"] <= miscounted["answers"] // 2 + 1, miscounted
