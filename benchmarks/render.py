"""`python -m benchmarks.render`: rendering speed and memory (issue 11.8), one command.

Builds the issue's synthetic recording once (b3lb.testing.synthetic: 10 minutes, 20 flat-colour slides
of 1280x720 with a whiteboard stroke each, webcams 640x480 at 15 fps with audio, a 2-minute screen
share; `--quick`: 1 minute, same proportions) and keeps its archive in a cache folder for the next
run. Then renders it with b3lb.render.pipeline, each job in its own worker process (like `b3lb
render`: the archive is extracted, then one ffmpeg run renders the profile), and measures:

- per profile (MP4 and WEBM at 1280x720, the schema's other defaults): wall seconds of the job
  (extraction + render), the realtime factor (recording seconds / wall seconds), the peak RSS of the
  worker process and of its ffmpeg child (getrusage), ffmpeg's CPU seconds, the output's size and
  duration;
- two workers vs one: two recordings rendered by two worker processes at once vs by one worker one
  after the other (MP4), wall seconds of each way.

Targets (issue 11.8, on a 2-core machine): >= 5x real time (<= 120 s for 10 minutes) per profile;
worker peak RSS <= 300 MB (judged on worker + ffmpeg, the job's whole footprint); two workers no slower
than one doing both in turn. Prints a table and writes JSON (`--json`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, REPO
from benchmarks.report import Target

TARGET_RTF = 5.0
TARGET_RSS_MB = 300.0
TARGET_PAIR_RATIO = 1.0  # concurrent wall / sequential wall
SIZE = (1280, 720)
MAX_BYTES = 4 * 1024**3
MAX_FILES = 10_000
CHILD_TIMEOUT = 3600.0
PROFILES = (("mp4-720p", "MP4"), ("webm-720p", "WEBM"))


@dataclass(frozen=True)
class RecordingSpec:
    duration_s: float
    slides: int
    deskshare: tuple[float, float]
    webcam_size: tuple[int, int] = (640, 480)
    webcam_fps: int = 15

    @property
    def key(self) -> str:
        """The cache folder's name: the parameters, and the generator's version (its source's digest)."""
        from b3lb.testing import synthetic

        version = hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()[:10]
        start, stop = self.deskshare
        width, height = self.webcam_size
        return (f"rec-{self.duration_s:g}s-{self.slides}sl-{SIZE[0]}x{SIZE[1]}-ds{start:g}-{stop:g}-"
                f"cam{width}x{height}@{self.webcam_fps}-{version}")  # fmt: skip


FULL = RecordingSpec(600.0, 20, (240.0, 360.0))  # 10 minutes, the screen shared from 4:00 to 6:00
QUICK = RecordingSpec(60.0, 20, (24.0, 36.0))  # the same proportions in one minute


def default_cache() -> Path:
    return Path(tempfile.gettempdir()) / "b3lb-bench-render"


def profile_fields(profile_id: int, name: str, fmt: str) -> dict[str, Any]:
    """A record_profile row at 1280x720 with the schema's defaults for everything else."""
    return {"id": profile_id, "name": name, "width": SIZE[0], "height": SIZE[1], "webcam_width": 320,
            "webcam_height": 180, "webcam_stretch": False, "webcam_crop": False, "format": fmt, "annotate": True,
            "backdrop": True}  # fmt: skip


# The recording -------------------------------------------------------------------------------------


def build_recording(spec: RecordingSpec, cache: Path) -> dict[str, Any]:
    """The archive (tar of the published folder) and truth of `spec`, made once per cache folder."""
    from b3lb.testing import synthetic
    from b3lb.testing.fakerecording import tar_folder

    folder = cache / spec.key
    info_path = folder / "recording.json"
    if info_path.is_file() and (folder / "archive.tar").is_file():
        info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
        info["cached"] = True
        return info
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.monotonic()
    truth = synthetic.make_presentation(
        folder / "published", duration_s=spec.duration_s, slides=spec.slides, size=SIZE, deskshare=spec.deskshare,
        webcam_size=spec.webcam_size, webcam_fps=spec.webcam_fps,
    )  # fmt: skip
    built = time.monotonic() - started
    archive_bytes = tar_folder(folder / "published", folder / "archive.tar", truth.end_ms // 1000)
    shutil.rmtree(folder / "published")
    info = {
        "archive": str(folder / "archive.tar"), "archive_bytes": archive_bytes, "build_s": round(built, 2),
        "duration_s": truth.duration_s, "slides": spec.slides, "deskshare": list(spec.deskshare),
        "annotations": len(truth.annotations), "webcam_size": list(spec.webcam_size), "webcam_fps": spec.webcam_fps,
        "size": list(SIZE),
    }  # fmt: skip
    (folder / "truth.json").write_text(json.dumps(truth.to_dict()), encoding="utf-8")
    info_path.write_text(json.dumps(info, indent=2), encoding="utf-8")
    info["cached"] = False
    return info


# The worker process (--child) -----------------------------------------------------------------------


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # kB on Linux


class Progress:
    """A line on stderr per 10 % of a render."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.shown = 0

    def __call__(self, part: float) -> None:
        if part * 10 >= self.shown + 1:
            self.shown = int(part * 10)
            print(f"    {self.name}: {100 * part:.0f} %", file=sys.stderr, flush=True)


async def _child_jobs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Render each job in turn as a worker does: extract the archive, render one profile."""
    from b3lb.render import pipeline

    results = []
    for number, job in enumerate(spec["jobs"]):
        work = Path(spec["work"]) / f"job-{number}"
        work.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        presentation = await asyncio.to_thread(pipeline.extract_archive, Path(spec["archive"]), work / "in",
                                               max_bytes=MAX_BYTES, max_files=MAX_FILES)  # fmt: skip
        extracted = time.monotonic()
        profile = pipeline.Profile(**job["profile"])
        output = await pipeline.render_profile(presentation, profile, work / f"out.{job['format'].lower()}",
                                               threads=spec["threads"], progress=Progress(profile.name))  # fmt: skip
        done = time.monotonic()
        results.append({
            "profile": profile.name, "format": job["format"], "extract_s": round(extracted - started, 3),
            "render_s": round(done - extracted, 3), "wall_s": round(done - started, 3), "output_bytes": output.size,
            "output_duration_s": round(output.duration_s, 3), "extension": output.extension,
        })  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    return results


def child_main(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    try:  # a real worker's imports, so that its memory is counted
        import b3lb.render.worker  # noqa: F401
    except ImportError:
        pass
    results = asyncio.run(_child_jobs(spec))
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print("BENCHJSON " + json.dumps({
        "jobs": results, "worker_peak_mb": round(_peak_mb(resource.RUSAGE_SELF), 1),
        "ffmpeg_peak_mb": round(usage.ru_maxrss / 1024.0, 1), "ffmpeg_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
    }), flush=True)  # fmt: skip
    return 0


# The parent ------------------------------------------------------------------------------------------


class Worker:
    """One worker process rendering `jobs` one after the other."""

    def __init__(self, folder: Path, name: str, archive: str, jobs: list[dict[str, Any]], threads: int) -> None:
        self.name = name
        spec = {"archive": archive, "work": str(folder / name), "jobs": jobs, "threads": threads}
        spec_path = folder / f"{name}.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.render", "--child", str(spec_path)], cwd=REPO, stdout=subprocess.PIPE,
            stderr=None, text=True,
        )  # fmt: skip

    def result(self) -> dict[str, Any]:
        out, _ = self.process.communicate(timeout=CHILD_TIMEOUT)
        wall = time.monotonic() - self.started
        line = next((x for x in out.splitlines() if x.startswith("BENCHJSON ")), None)
        if self.process.returncode != 0 or line is None:
            raise RuntimeError(f"worker {self.name} failed (exit {self.process.returncode}):\n{out[-2000:]}")
        result: dict[str, Any] = json.loads(line[len("BENCHJSON ") :])
        result["process_wall_s"] = round(wall, 3)
        return result


def measure_profiles(folder: Path, recording: dict[str, Any], threads: int) -> list[dict[str, Any]]:
    rows = []
    for number, (name, fmt) in enumerate(PROFILES, start=1):
        print(f"render {name} ({fmt}) of the {recording['duration_s']:g} s recording ...", file=sys.stderr, flush=True)
        job = {"profile": profile_fields(number, name, fmt), "format": fmt}
        result = Worker(folder, f"profile-{name}", recording["archive"], [job], threads).result()
        timing = result["jobs"][0]
        row = {
            **timing, "recording_s": recording["duration_s"], "threads": threads,
            "realtime_factor": round(recording["duration_s"] / timing["wall_s"], 2),
            "worker_peak_mb": result["worker_peak_mb"], "ffmpeg_peak_mb": result["ffmpeg_peak_mb"],
            "ffmpeg_cpu_s": result["ffmpeg_cpu_s"],
        }  # fmt: skip
        row["job_peak_mb"] = round(row["worker_peak_mb"] + row["ffmpeg_peak_mb"], 1)
        print(f"  {name}: {row['wall_s']:.1f} s wall, {row['realtime_factor']:.1f}x real time, worker "
              f"{row['worker_peak_mb']:.0f} MB + ffmpeg {row['ffmpeg_peak_mb']:.0f} MB", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def measure_pair(folder: Path, recording: dict[str, Any], threads: int) -> dict[str, Any]:
    """Two MP4 jobs: one worker after the other vs two workers at once."""
    jobs = [{"profile": profile_fields(10 + n, f"pair-{n}", "MP4"), "format": "MP4"} for n in (1, 2)]
    print("two recordings, one worker, one after the other ...", file=sys.stderr, flush=True)
    sequential = Worker(folder, "pair-sequential", recording["archive"], jobs, threads).result()
    print("two recordings, two workers at once ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    workers = [Worker(folder, f"pair-concurrent-{n}", recording["archive"], [job], threads)
               for n, job in enumerate(jobs, start=1)]  # fmt: skip
    concurrent = [worker.result() for worker in workers]
    concurrent_wall = time.monotonic() - started
    sequential_wall = sequential["process_wall_s"]
    return {
        "threads": threads, "recording_s": recording["duration_s"],
        "sequential_wall_s": round(sequential_wall, 2),
        "sequential_jobs_s": [job["wall_s"] for job in sequential["jobs"]],
        "concurrent_wall_s": round(concurrent_wall, 2),
        "concurrent_jobs_s": [worker["jobs"][0]["wall_s"] for worker in concurrent],
        "ratio": round(concurrent_wall / sequential_wall, 3),
        "concurrent_peak_mb": round(sum(w["worker_peak_mb"] + w["ffmpeg_peak_mb"] for w in concurrent), 1),
    }  # fmt: skip


def targets(rows: list[dict[str, Any]], pair: dict[str, Any] | None, recording_s: float) -> list[Target]:
    found = []
    for row in rows:
        found.append(Target(f"render {row['format']}: x real time ({recording_s:g} s recording)",
                            row["realtime_factor"], TARGET_RTF, "x", True))  # fmt: skip
        found.append(Target(f"render {row['format']}: worker + ffmpeg peak RSS", row["job_peak_mb"], TARGET_RSS_MB,
                            " MB", False))  # fmt: skip
    if pair is not None:
        found.append(Target("render: 2 workers at once / 1 worker in turn", pair["ratio"], TARGET_PAIR_RATIO, "x",
                            False))  # fmt: skip
    return found


def table(document: dict[str, Any], with_targets: bool = True) -> str:
    recording, rows, pair = document["recording"], document["rows"], document.get("pair")
    built = "cached" if recording["cached"] else f"built in {recording['build_s']:.1f} s"
    lines = [
        f"render: {recording['duration_s']:g} s {recording['size'][0]}x{recording['size'][1]} recording, "
        f"{recording['slides']} slides, {recording['annotations']} annotations, webcams "
        f"{recording['webcam_size'][0]}x{recording['webcam_size'][1]}@{recording['webcam_fps']} + audio, deskshare "
        f"{recording['deskshare'][0]:g}-{recording['deskshare'][1]:g} s; archive "
        f"{recording['archive_bytes'] / 1e6:.1f} MB, {built}",
        f"{document['cores']} cores, load average {document['load_before']:.1f} before, "
        f"{document['load_after']:.1f} after (other work on the machine slows every figure down)",
    ]
    headers = ["profile", "format", "wall s", "x realtime", "extract s", "worker MB", "ffmpeg MB", "ffmpeg CPU s",
               "output MB", "duration s"]  # fmt: skip
    cells = [
        [r["profile"], r["format"], f"{r['wall_s']:.1f}", f"{r['realtime_factor']:.1f}", f"{r['extract_s']:.2f}",
         f"{r['worker_peak_mb']:.0f}", f"{r['ffmpeg_peak_mb']:.0f}", f"{r['ffmpeg_cpu_s']:.0f}",
         f"{r['output_bytes'] / 1e6:.1f}", f"{r['output_duration_s']:.1f}"]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    aligns = ["<", "<"] + [">"] * (len(headers) - 2)
    lines.append("  ".join(f"{h:{a}{w}}" for h, a, w in zip(headers, aligns, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, aligns, widths, strict=True)) for row in cells]
    if pair is not None:
        lines.append(
            f"two recordings (MP4): one worker in turn {pair['sequential_wall_s']:.1f} s "
            f"(jobs {' + '.join(f'{s:.1f}' for s in pair['sequential_jobs_s'])}), two workers at once "
            f"{pair['concurrent_wall_s']:.1f} s (jobs {', '.join(f'{s:.1f}' for s in pair['concurrent_jobs_s'])}): "
            f"{pair['ratio']:.2f}x the time, both jobs together {pair['concurrent_peak_mb']:.0f} MB"
        )
    if with_targets:
        lines += ["targets (issue 11.8):", *(Target(**t).line() for t in document["targets"])]
    return "\n".join(lines)


def run(quick: bool = False, pair: bool = True, threads: int = 0, cache: Path | None = None) -> dict[str, Any]:
    spec = QUICK if quick else FULL
    recording = build_recording(spec, cache or default_cache())
    how = "cached" if recording["cached"] else f"built in {recording['build_s']:.1f} s"
    print(f"recording: {recording['archive']} ({how})", file=sys.stderr, flush=True)
    folder = Path(tempfile.mkdtemp(prefix="b3lb-bench-render-"))
    load_before = os.getloadavg()[0]  # other work on the machine skews every figure: shown with them
    try:
        rows = measure_profiles(folder, recording, threads)
        pair_row = measure_pair(folder, recording, threads) if pair else None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    found = targets(rows, pair_row, recording["duration_s"])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cores": os.cpu_count(), "quick": quick,
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "recording": recording, "rows": rows, "pair": pair_row,
        "targets": [{k: v for k, v in asdict(t).items()} for t in found],
        "verdicts": {t.name: t.verdict for t in found},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 1-minute recording instead of 10 minutes")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--no-pair", action="store_true", help="skip two workers vs one")
    parser.add_argument("--threads", type=int, default=0, help="ffmpeg threads per job (0: ffmpeg's choice)")
    parser.add_argument("--cache", type=Path, help=f"where the recording is kept (default {default_cache()})")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: run as a worker process
    args = parser.parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    if args.threads < 0:
        parser.error("--threads must not be negative")
    document = run(args.quick, not args.no_pair, args.threads, args.cache)
    print(table(document))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
