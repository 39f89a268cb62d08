"""Driving `wrk` (when installed): a Lua script cycles through the pre-signed request paths,
checks every answer, and prints one JSON line with the latency distribution in done()."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

from benchmarks.common import pinned
from benchmarks.loadgen import LoadResult, LoadSpec

SCRIPT = r"""
-- b3lb benchmark script: args = paths file, Host, status, contains, excludes, count tag, count, sample,
-- then more request headers, one "Name: value" per argument
local paths = {}
local count = 0
local index = 0
local threads = {}
local expect_status, contains, excludes, count_tag, expect_count, sample
unexpected = 0
completed = 0
examples = ""

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then
      count = count + 1
      paths[count] = line
    end
  end
  wrk.headers["Host"] = args[2]
  wrk.headers["User-Agent"] = "b3lb-bench"
  expect_status = tonumber(args[3])
  contains = args[4] or ""
  excludes = args[5] or ""
  count_tag = args[6] or ""
  expect_count = tonumber(args[7] or "0")
  sample = tonumber(args[8] or "50")
  for i = 9, #args do
    local name, value = string.match(args[i], "^([^:]+):%s*(.*)$")
    if name then wrk.headers[name] = value end
  end
end

function request()
  index = index + 1
  if index > count then index = 1 end
  return wrk.format("GET", paths[index])
end

local function bad(status, body, why)
  unexpected = unexpected + 1
  if unexpected <= 5 then
    examples = examples .. why .. ": HTTP " .. status .. " " .. string.sub(body or "", 1, 160) .. "\n"
  end
end

function response(status, headers, body)
  completed = completed + 1
  if status ~= expect_status then
    bad(status, body, "status (expected " .. expect_status .. ")")
  elseif contains ~= "" and not string.find(body, contains, 1, true) then
    bad(status, body, "body without " .. contains)
  elseif excludes ~= "" and string.find(body, excludes, 1, true) then
    bad(status, body, "body with " .. excludes)
  elseif count_tag ~= "" and completed % sample == 1 then
    local found, start = 0, 1
    while true do
      local at = string.find(body, count_tag, start, true)
      if not at then break end
      found = found + 1
      start = at + #count_tag
    end
    if found ~= expect_count then
      bad(status, body, found .. " x " .. count_tag .. ", expected " .. expect_count)
    end
  end
end

local function quote(text)
  text = string.gsub(text, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end)
  return '"' .. text .. '"'
end

function done(summary, latency, requests)
  local total_unexpected, text = 0, ""
  for _, thread in ipairs(threads) do
    total_unexpected = total_unexpected + thread:get("unexpected")
    text = text .. thread:get("examples")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "p50_us": %.1f, "p99_us": %.1f, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, "unexpected": %d, "examples": %s}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout, total_unexpected, quote(text)))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def version() -> str:
    try:
        done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0].split(" Copyright")[0] if text else ""


def write_script(folder: Path) -> Path:
    path = folder / "bench.lua"
    path.write_text(SCRIPT, encoding="utf-8")
    return path


def run_wrk(spec: LoadSpec, script: Path, cpus: frozenset[int] | None) -> LoadResult:
    """One wrk run (1 thread: the generator has one core). Durations are whole seconds for wrk."""
    seconds = max(1, math.ceil(spec.duration))
    paths = sum(1 for line in open(spec.paths_file, encoding="ascii") if line.strip())
    command = [
        "wrk", "-t1", f"-c{spec.connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
        "-s", str(script), f"http://{spec.address}:{spec.port}/", "--",
        spec.paths_file, spec.host, str(spec.expect_status), spec.contains, spec.excludes,
        spec.count_tag, str(spec.count), str(spec.sample),
        *(f"{name}: {value}" for name, value in spec.headers.items()),
    ]  # fmt: skip
    done = subprocess.run(pinned(command, cpus), capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(line[len("BENCHJSON ") :])
    duration = data["duration_us"] / 1e6 or float(seconds)
    # "status" counts non-2xx/3xx answers, which the script counts as unexpected already.
    transport = data["connect"] + data["read"] + data["write"] + data["timeout"]
    return LoadResult(
        tool="wrk",
        requests=data["requests"],
        seconds=duration,
        rps=data["requests"] / duration,
        p50_ms=data["p50_us"] / 1000.0,
        p99_ms=data["p99_us"] / 1000.0,
        transport_errors=transport,
        unexpected=data["unexpected"],
        paths=paths,
        examples=[x for x in data["examples"].splitlines() if x][:5],
    )
