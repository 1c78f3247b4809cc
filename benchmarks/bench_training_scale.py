"""Training at N catalogue items, the same examples and steps: peak RSS and time per step of a training process.

    flock /tmp/camenn-heavy.lock .venv/bin/python benchmarks/bench_training_scale.py --sizes 10000 100000 \
        --json benchmarks/results/bench_training_scale.json

The catalogue (``items`` and ``item_features``: random fp16 blobs of the configured encoder
shapes, no encoders) is benchmarks/bench_scale.py's synthetic world of N items, reused from
its --root when it is there. Training reads it through ``data.tables`` overrides, with users
and purchases of its own: a fixed --users x 10 purchases, examples sampled from the catalogue
(4 negatives per purchase), so every N trains on the same number of examples for the same
number of steps and only the catalogue grows. Each size's training runs ``train_fn`` in a
fresh process (spawn), which reports its own peak RSS (``ru_maxrss``) and the mean time of a
step (chunk reads of the stream included, validation not), so nothing of the Spark driver
counts. The training runs its steps only (``spec["steps_only"]``): no validation and no
held-out metrics, which walk every chunk and measure the model, not the streaming. Figures:
per N, the training data's preparation seconds, the chunks, the items the process held at
most, peak RSS, seconds per step, and the ratios to the smallest N.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from camenn.config import load_config  # noqa: E402

PURCHASES_PER_USER = 10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "conf" / "demo.yaml"), help="model, featurizer and Spark settings")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--root", default=str(_ROOT / "runs" / "bench" / "scale"), help="bench_scale.py's worlds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=int, default=400, help="buyers of the training world (x 10 purchases x 5 examples)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--examples-per-chunk", type=int, default=500)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def say(message: str, t0: float) -> None:
    print(f"[bench_training_scale {time.perf_counter() - t0:8.1f}s] {message}", flush=True)


def _train_child(spec: dict, out) -> None:
    """train_fn in a process of its own; its peak RSS is all of training's and nothing of Spark's."""
    import torch

    torch.set_num_threads(2)
    from camenn.training import train_fn

    result = train_fn(spec)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.put({"metrics": result["metrics"], "peak_rss_mib": peak_kib / 1024})


def training_world(spark, config, n_items: int, users: int, seed: int) -> None:
    """users and purchases of the training world: ``users`` buyers x 10 purchases spread over the N items."""
    from pyspark.sql import functions as F

    from pipeline import tables

    run_s = int(dt.datetime.combine(config.world.run_date, dt.time()).replace(tzinfo=dt.UTC).timestamp())
    h = lambda salt: F.xxhash64("id", F.lit(seed), F.lit(salt))  # noqa: E731 - a per-column salted hash
    tables.overwrite_table(spark, config, "users", spark.range(users, numPartitions=2).select(
        F.format_string("t%08d", "id").alias("user_id"), F.lit("25-34").alias("age_band"),
        F.lit("family").alias("household"), F.format_string("z%d", F.pmod(h("zone"), F.lit(10))).alias("zone")))
    tables.overwrite_table(spark, config, "events", spark.range(users * PURCHASES_PER_USER, numPartitions=2).select(
        F.format_string("t%08d", F.expr(f"id div {PURCHASES_PER_USER}")).alias("user_id"),
        F.format_string("i%09d", F.pmod(h("item"), F.lit(n_items))).alias("item_id"),
        F.timestamp_seconds(F.lit(run_s - 1) - F.pmod(h("ts"), F.lit(60 * 86400))).alias("ts"),
        F.lit("purchase").alias("event"), F.lit(2.0).alias("price")))


def one_size(spark, args, n: int, t0: float) -> dict:
    from pipeline import feature_cache
    from pipeline.train import make_spec
    from pipeline.training_data import prepare_training_data

    world = Path(args.root).resolve() / f"n{n}-s{args.seed}"
    if not (world / "world.json").is_file():
        raise SystemExit(f"no synthetic world of {n} items at {world}: make it first with "
                         f"`benchmarks/bench_scale.py --sizes {n} --root {args.root} --seed {args.seed}`")
    own = world / "training"
    config = load_config(args.conf, [
        f"data.root={own / 'tables'}", f"training.artifact_dir={own / 'model'}",
        f"data.tables={{items: '{world / 'tables' / 'items'}', item_features: '{world / 'tables' / 'item_features'}'}}",
        "training.num_processes=1", "training.epochs=1", f"training.steps_per_epoch={args.steps}",
        "training.examples_from=sampled", f"training.examples_per_chunk={args.examples_per_chunk}", *args.set])
    training_world(spark, config, n, args.users, args.seed)
    t = time.perf_counter()
    data = prepare_training_data(spark, config, config.world.run_date)
    prep_s = time.perf_counter() - t
    spec = make_spec(config, data, artifact_dir="")
    # steps only: validation and the held-out metrics walk every chunk (182 at 1M items, ~20
    # minutes) and measure the model, not the streaming; the training tests cover them
    spec["steps_only"] = True
    fp = feature_cache.featurizer_fingerprint(feature_cache.featurizer_config(config))
    assert data.fingerprint == fp
    items_per_chunk = _items_per_chunk(spark, config, data)
    say(f"N={n}: {sum(sum(c.values()) for c in data.chunks.values())} examples in {len(data.chunks)} chunks "
        f"(at most {max(items_per_chunk.values())} items each), prepared in {prep_s:.0f}s; training {args.steps} steps", t0)
    queue = mp.get_context("spawn").Queue()
    child = mp.get_context("spawn").Process(target=_train_child, args=(spec, queue))
    t = time.perf_counter()
    child.start()
    out = queue.get()
    child.join()
    m = out["metrics"]
    say(f"N={n}: peak RSS {out['peak_rss_mib']:.0f} MiB, {m['step_seconds']:.3f} s/step, "
        f"{m['chunk_loads']} chunk loads, train_fn {time.perf_counter() - t:.0f}s", t0)
    return {"n_items": n, "examples": sum(sum(c.values()) for c in data.chunks.values()), "n_chunks": len(data.chunks),
            "max_items_per_chunk": max(items_per_chunk.values()), "prepare_seconds": prep_s,
            "peak_rss_mib": out["peak_rss_mib"], "step_seconds": m["step_seconds"], "chunk_loads": m["chunk_loads"],
            "steps": args.steps, "drops": data.drops}


def _items_per_chunk(spark, config, data) -> dict[int, int]:
    from pyspark.sql import functions as F

    from pipeline import tables

    rows = (tables.read_table(spark, config, "training_items", version=data.versions["training_items"])
            .groupBy("chunk").agg(F.count(F.lit(1)).alias("n")).collect())
    return {int(r["chunk"]): int(r["n"]) for r in rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    base = load_config(args.conf, args.set)
    from pipeline.session import get_spark

    spark = get_spark(base)
    figures = {"date": dt.datetime.now().isoformat(timespec="seconds"),
               "machine": {"processor": platform.processor(), "platform": platform.platform(), "cores": os.cpu_count()},
               "config": {"source": str(args.conf), "set": args.set, "model": base.model.model_dump(mode="json")},
               "users": args.users, "steps": args.steps, "examples_per_chunk": args.examples_per_chunk, "results": {}}
    for n in args.sizes:
        figures["results"][str(n)] = one_size(spark, args, n, t0)
        first = figures["results"][str(args.sizes[0])]
        for r in figures["results"].values():
            r["rss_ratio"] = r["peak_rss_mib"] / first["peak_rss_mib"]
            r["step_ratio"] = r["step_seconds"] / first["step_seconds"]
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    print("\nN items   examples  chunks  items/chunk  peak RSS MiB (ratio)  s/step (ratio)")
    for r in figures["results"].values():
        print(f"{r['n_items']:>9,} {r['examples']:>9,} {r['n_chunks']:>7} {r['max_items_per_chunk']:>12,} "
              f"{r['peak_rss_mib']:>12.0f} ({r['rss_ratio']:.2f}) {r['step_seconds']:>9.3f} ({r['step_ratio']:.2f})")
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
