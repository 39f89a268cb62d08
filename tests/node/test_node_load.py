"""b3lb-load (node/b3lb_load.py): the load value from fake /proc/stat lines, the atomic write, the CLI."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from node_support import NODE, load_node_module

load = load_node_module("b3lb_load")


def line(user: int, idle: int, *, system: int = 0, iowait: int = 0, steal: int = 0) -> str:
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    return f"cpu  {user} 0 {system} {idle} {iowait} 0 0 {steal} 777 777\n"


def values(lines: list[str], window: int = 6) -> list[int | None]:
    tracker = load.LoadTracker(window)
    return [tracker.add(load.parse_stat_line(text)) for text in lines]


# --- parsing -------------------------------------------------------------------------------------------

def test_parse_sums_the_first_eight_values_and_takes_the_fourth_as_idle() -> None:
    sample = load.parse_stat_line("cpu  10 20 30 40 50 60 70 80 90 100\n")
    assert sample == load.Sample(idle=40, total=360)  # guest and guest_nice (90, 100) are not added


@pytest.mark.parametrize(
    ("text", "idle", "total"),
    [
        ("cpu 1 2 3 4\n", 4, 10),  # kernels before 2.5.41
        ("cpu 1 2 3 4 5 6 7\n", 4, 28),  # before 2.6.11: no steal
        ("cpu 0 0 0 0 0 0 0 0 0 0\n", 0, 0),
        ("cpu 18446744073709551615 0 0 1 0 0 0 0\n", 1, 18446744073709551616),  # 64-bit counters, no overflow
    ],
)
def test_parse_accepts_short_and_large_lines(text: str, idle: int, total: int) -> None:
    assert load.parse_stat_line(text) == load.Sample(idle=idle, total=total)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "cpu0 1 2 3 4 5 6 7 8\n",  # a per-CPU line, not the aggregate
        "intr 1 2 3 4 5 6 7 8\n",
        "cpu 1 2 3\n",  # no idle value
        "cpu 1 2 -3 4 5 6 7 8\n",
        "cpu 1 2 3 4.5 5 6 7 8\n",
        "cpu 1 2 3 x 5 6 7 8\n",
        "cpu 1 2 3 ٤ 5 6 7 8\n",  # a non-ASCII digit
        "CPU 1 2 3 4 5 6 7 8\n",
    ],
)
def test_parse_rejects_malformed_lines(text: str) -> None:
    with pytest.raises(load.MalformedStat):
        load.parse_stat_line(text)


# --- the load value ------------------------------------------------------------------------------------

def test_first_sample_gives_no_value() -> None:
    assert values([line(100, 900)]) == [None]


def test_short_and_long_windows() -> None:
    got = values([
        line(100, 900),  # start
        line(150, 950),  # Δidle 50 / Δtotal 100 -> short 0.5, long 0.5
        line(160, 1040),  # 90 / 100 -> short 0.1, long 1 - 140/200 = 0.3: the long window wins
        line(240, 1060),  # 20 / 100 -> short 0.8 wins over long 1 - 160/300
    ])
    assert got == [None, 5000, 3000, 8000]


def test_all_counted_fields_make_up_total() -> None:
    # 100 ticks: 10 user, 20 system, 30 iowait, 10 steal, 30 idle -> 70 % busy (iowait counts as busy).
    got = values([line(0, 0), line(10, 30, system=20, iowait=30, steal=10)])
    assert got == [None, 7000]


def test_long_window_keeps_only_the_last_intervals() -> None:
    # One fully busy interval, then idle ones: it leaves the window after `window` more intervals.
    lines = [line(0, 0), line(100, 0)]
    lines += [line(100, 100 * i) for i in range(1, 5)]
    got = values(lines, window=3)
    # long over [busy, idle, idle] = 1/3 until the busy interval drops out, then 0.
    assert got == [None, 10000, 5000, 3333, 0, 0]


def test_zero_total_delta_skips_the_interval() -> None:
    # No tick between two reads: the value stays what it was, the interval is not counted.
    got = values([line(0, 0), line(50, 50), line(50, 50), line(50, 50), line(50, 150)])
    assert got == [None, 5000, 5000, 5000, 2500]


def test_zero_total_delta_before_any_interval_gives_nothing() -> None:
    assert values([line(10, 10), line(10, 10)]) == [None, None]


def test_counters_going_backwards_reset_the_history() -> None:
    got = values([
        line(1000, 1000),
        line(2000, 1000),  # fully busy
        line(5, 5),  # counters wrapped/reset: history dropped, nothing to report yet
        line(5, 105),  # only the new, idle interval counts: the busy one is forgotten
    ])
    assert got == [None, 10000, None, 0]


def test_idle_going_back_alone_also_resets() -> None:
    assert values([line(0, 100), line(200, 90), line(250, 140)]) == [None, None, 5000]


def test_value_is_clamped_to_0_and_10000() -> None:
    # Fully busy and fully idle are the bounds; idle growing more than total (other counters went down
    # without a wrap of total) is read as idle, not as a negative load.
    assert values([line(0, 0), line(100, 0)]) == [None, 10000]
    assert values([line(0, 0), line(0, 100)]) == [None, 0]
    assert values([line(100, 0), line(50, 100)]) == [None, 0]


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        load.LoadTracker(0)


# --- reading and writing files -------------------------------------------------------------------------

def test_take_sample_skips_malformed_and_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stat_file = tmp_path / "stat"
    tracker = load.LoadTracker()
    stat_file.write_text(line(0, 0) + "cpu0 1 2 3 4 5 6 7 8\n")
    assert load.take_sample(tracker, str(stat_file)) is None
    stat_file.write_text(line(100, 100))
    assert load.take_sample(tracker, str(stat_file)) == 5000
    stat_file.write_text("garbage\n")
    assert load.take_sample(tracker, str(stat_file)) == 5000  # skipped: the last value stands
    assert "skipping sample" in capsys.readouterr().err
    stat_file.unlink()
    assert load.take_sample(tracker, str(stat_file)) == 5000
    assert "skipping sample" in capsys.readouterr().err
    # The malformed samples did not disturb the history: the next interval is measured from the last good one.
    stat_file.write_text(line(100, 300))
    assert load.take_sample(tracker, str(stat_file)) == 2500  # from (100, 200): short 0, long 1 - 300/400


def test_take_sample_reads_only_the_first_line(tmp_path: Path) -> None:
    stat_file = tmp_path / "stat"
    tracker = load.LoadTracker()
    stat_file.write_text(line(0, 0) + line(999, 0))
    load.take_sample(tracker, str(stat_file))
    stat_file.write_text(line(30, 70) + line(0, 0))
    assert load.take_sample(tracker, str(stat_file)) == 3000


def test_write_atomically(tmp_path: Path) -> None:
    output = tmp_path / "load"
    load.write_atomically(str(output), 5713)
    assert output.read_bytes() == b"5713\n"
    assert stat.S_IMODE(output.stat().st_mode) == 0o644  # nginx reads it as another user
    inode = output.stat().st_ino
    load.write_atomically(str(output), 12)
    assert output.read_bytes() == b"12\n"
    assert output.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["load"]  # no temporary file left


def test_write_atomically_leaves_no_temp_file_when_the_rename_fails(tmp_path: Path) -> None:
    output = tmp_path / "load"
    output.mkdir()  # a directory where the file should go: the rename fails
    (output / "keep").write_text("x")
    with pytest.raises(OSError):
        load.write_atomically(str(output), 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["load"]


def test_publish_reports_a_failed_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load.publish(str(tmp_path / "missing" / "load"), 1) is False
    assert "cannot write" in capsys.readouterr().err
    assert load.publish(str(tmp_path / "load"), None) is True  # nothing to write yet
    assert not (tmp_path / "load").exists()


# --- the program ---------------------------------------------------------------------------------------

def _program(*args: str | Path) -> list[str]:
    return [sys.executable, str(NODE / "b3lb-load"), *map(str, args)]


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs a Linux /proc/stat")
def test_once_writes_a_value_from_the_real_proc_stat(tmp_path: Path) -> None:
    output = tmp_path / "load"
    done = subprocess.run(_program("--once", "--interval", "0.2", "--output", output),
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    body = output.read_text()
    assert body.endswith("\n") and body.count("\n") == 1
    assert 0 <= int(body) <= 10000


def test_once_gives_up_without_a_usable_interval(tmp_path: Path) -> None:
    stat_file, output = tmp_path / "stat", tmp_path / "load"
    stat_file.write_text(line(10, 10))  # never changes: Δtotal is always 0
    done = subprocess.run(_program("--once", "--interval", "0", "--stat", stat_file, "--output", output),
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert "no usable interval" in done.stderr
    assert not output.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "-1"], "--interval"),
        (["--window", "0"], "--window"),
        (["--output", "/nonexistent-b3lb/load"], "does not exist"),
        (["--interval", "soon"], "invalid float"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    done = subprocess.run(_program(*args), capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert message in done.stderr


def test_runs_until_sigterm(tmp_path: Path) -> None:
    stat_file, output = tmp_path / "stat", tmp_path / "load"
    stat_file.write_text(line(0, 0))
    process = subprocess.Popen(_program("--interval", "0.05", "--stat", stat_file, "--output", output),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The counters keep growing 25 busy : 75 idle, so whichever samples the agent takes, it sees 25 %.
        deadline, ticks = time.monotonic() + 20, 0
        while not output.exists() and time.monotonic() < deadline:
            ticks += 1
            (tmp_path / "next").write_text(line(25 * ticks, 75 * ticks))
            os.replace(tmp_path / "next", stat_file)
            time.sleep(0.02)
        assert output.read_text() == "2500\n"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
        assert process.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_wrapper_is_executable() -> None:
    assert os.access(NODE / "b3lb-load", os.X_OK)
