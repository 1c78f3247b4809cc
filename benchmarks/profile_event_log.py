"""Where a Spark application's time went, from its event log: jobs by description, stages by task count.

    .venv/bin/python benchmarks/bench_scoring.py ... --event-log runs/bench/events     # writes the log
    .venv/bin/python benchmarks/profile_event_log.py runs/bench/events [--after "2/5 model cache"] [--json out.json]

Reads the newest application under the folder (Spark's rolling ``eventlog_v2_*`` folder or a
single file; plain JSON lines, or zstd when the ``zstd`` command is there) and prints:

- the jobs grouped by their description (``setJobDescription``, which the nightly job sets per
  step), with their count and summed wall time;
- the completed stages grouped by task count, with their summed wall time: a fixed cost that
  repeats (Delta rebuilding a snapshot in ``spark.databricks.delta.snapshotPartitions`` tasks,
  50 by default) shows as one large group;
- the time inside jobs and the span from the first job to the last.

``--from-job-matching TEXT`` starts at the first job whose description contains TEXT (for
example ``item features`` for a night inside a longer script). Stages of concurrent jobs overlap,
so the sums can exceed the span.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path


def event_lines(root: Path):
    """The event log's JSON records, oldest file first."""
    app = max(root.iterdir(), key=lambda p: p.stat().st_mtime) if root.is_dir() else root
    # one file per index; a plain copy beside a .zstd one (decompressed by hand) is read instead of it
    by_index: dict[int, Path] = {}
    for f in sorted(app.glob("events_*"), key=lambda p: p.suffix == ".json") if app.is_dir() else []:
        by_index[int(f.name.split("_")[1])] = f
    files = [by_index[k] for k in sorted(by_index)] if app.is_dir() else [app]
    for f in files:
        if f.suffix == ".zstd":
            text = subprocess.run(["zstd", "-dc", str(f)], check=True, capture_output=True, text=True).stdout
        else:
            text = f.read_text()
        for line in text.splitlines():
            if line.strip():
                yield json.loads(line)


def profile(root: Path, from_job_matching: str | None = None) -> dict:
    jobs: dict[int, dict] = {}
    stage_job: dict[int, int] = {}
    stages: list[dict] = []
    for e in event_lines(root):
        kind = e["Event"]
        if kind == "SparkListenerJobStart":
            desc = (e.get("Properties") or {}).get("spark.job.description") or ""
            jobs[e["Job ID"]] = {"start": e["Submission Time"], "end": None, "desc": desc}
            for s in e["Stage Infos"]:
                stage_job[s["Stage ID"]] = e["Job ID"]
        elif kind == "SparkListenerJobEnd" and e["Job ID"] in jobs:
            jobs[e["Job ID"]]["end"] = e["Completion Time"]
        elif kind == "SparkListenerStageCompleted":
            s = e["Stage Info"]
            if "Submission Time" in s and "Completion Time" in s:
                stages.append({"job": stage_job.get(s["Stage ID"]), "tasks": s["Number of Tasks"],
                               "seconds": (s["Completion Time"] - s["Submission Time"]) / 1000})
    first = 0
    if from_job_matching:
        first = min((j for j, v in jobs.items() if from_job_matching in v["desc"]), default=None)
        if first is None:
            raise SystemExit(f"error: no job description contains {from_job_matching!r}")
    kept = {j: v for j, v in jobs.items() if j >= first and v["end"] is not None}
    by_desc: dict[str, list] = {}
    for v in kept.values():
        entry = by_desc.setdefault(v["desc"][:100], [0, 0.0])
        entry[0] += 1
        entry[1] += (v["end"] - v["start"]) / 1000
    by_tasks: dict[int, list] = {}
    for s in stages:
        if s["job"] is not None and s["job"] in kept:
            entry = by_tasks.setdefault(s["tasks"], [0, 0.0])
            entry[0] += 1
            entry[1] += s["seconds"]
    starts, ends = [v["start"] for v in kept.values()], [v["end"] for v in kept.values()]
    return {"jobs": len(kept),
            "seconds_inside_jobs": sum((v["end"] - v["start"]) / 1000 for v in kept.values()),
            "span_seconds": (max(ends) - min(starts)) / 1000 if kept else 0.0,
            "by_description": {k: {"jobs": n, "seconds": s} for k, (n, s) in sorted(by_desc.items(), key=lambda x: -x[1][1])},
            "stages_by_task_count": {str(k): {"stages": n, "seconds": s}
                                     for k, (n, s) in sorted(by_tasks.items(), key=lambda x: -x[1][1])}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("event_log", help="spark.eventLog.dir, or one application's log")
    p.add_argument("--from-job-matching", default=None, metavar="TEXT")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    out = profile(Path(args.event_log), args.from_job_matching)
    print(f"{out['jobs']} jobs, {out['seconds_inside_jobs']:.1f} s inside jobs, span {out['span_seconds']:.1f} s")
    print("by description:")
    for desc, v in list(out["by_description"].items())[:args.top]:
        print(f"  {v['seconds']:7.1f} s {v['jobs']:4d} job(s)  {desc or '(none)'}")
    print("stages by task count:")
    for tasks, v in list(out["stages_by_task_count"].items())[:8]:
        print(f"  {tasks:>5s} tasks: {v['stages']:4d} stage(s), {v['seconds']:7.1f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
