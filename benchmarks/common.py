"""Small process helpers shared by the benchmark modules: ports, CPU pinning, RSS, child processes."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Cores:
    """Which CPUs the system under test and the load generator run on (None: not pinned)."""

    server: frozenset[int] | None
    generator: frozenset[int] | None

    @classmethod
    def detect(cls) -> Cores:
        try:
            available = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            return cls(None, None)
        if len(available) < 2:
            return cls(None, None)
        return cls(frozenset({available[0]}), frozenset({available[1]}))

    def describe(self) -> str:
        if self.server is None or self.generator is None:
            return "not pinned (fewer than 2 cores)"
        return f"server on CPU {sorted(self.server)}, generator on CPU {sorted(self.generator)}"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(command: Sequence[str], cpus: frozenset[int] | None) -> list[str]:
    """The command prefixed with `taskset -c` (taskset execs, so the PID stays the command's)."""
    if cpus is None or shutil.which("taskset") is None:
        return list(command)
    return ["taskset", "-c", ",".join(str(c) for c in sorted(cpus)), *command]


def pin_preexec(cpus: frozenset[int] | None) -> object:
    """preexec_fn fallback when taskset is missing (affinity survives exec)."""
    if cpus is None or shutil.which("taskset") is not None:
        return None

    def apply() -> None:
        os.sched_setaffinity(0, cpus)

    return apply


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of a process in MB (VmRSS from /proc), 0.0 when unknown."""
    return _status_kb(pid, "VmRSS:") / 1024.0


def peak_rss_mb(pid: int | None = None) -> float:
    return _status_kb(pid, "VmHWM:") / 1024.0


def _status_kb(pid: int | None, field: str) -> float:
    path = f"/proc/{pid if pid is not None else 'self'}/status"
    try:
        with open(path, encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith(field):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    """Every live descendant of a process (children, their children, ...), from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                children = [int(x) for x in task.read_text(encoding="ascii").split()]
            except (OSError, ValueError):
                continue
            found += children
            todo += children
    return found


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads) in seconds, 0.0 when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return 0.0
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) ": fields from 3 (state) on
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def with_search_path(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote('-csearch_path=' + schema, safe='')}"


class Child:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path,
        *,
        cpus: frozenset[int] | None = None,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            pinned(command, cpus),
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log,
            env=env,
            cwd=REPO,
            preexec_fn=pin_preexec(cpus),  # type: ignore[arg-type]
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def read_lines(self, count: int, timeout: float) -> list[str]:
        """`count` lines of the child's stdout (needs stdout_pipe), or RuntimeError after `timeout`."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        buffer = b""
        while buffer.count(b"\n") < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no {count} lines within {timeout:.0f}s\n{self.log_tail()}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"{self.name} exited early\n{self.log_tail()}")
            buffer += chunk
        return buffer.decode("utf-8", errors="replace").splitlines()[:count]

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()
