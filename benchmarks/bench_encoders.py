"""Encoder throughput: the Spark featurize path against a plain single-process loop, and encoder FLOPs.

    flock /tmp/camenn-heavy.lock .venv/bin/python benchmarks/bench_encoders.py --conf tests/conf/tiny.yaml \
        --n-items 2000 --images grocery --json benchmarks/results/bench_encoders.json      # about 5 minutes on 2 cores

On N synthetic items, all new (an empty ``item_features``), written as an ``items`` Delta table
under --root (``tables.overwrite_table``: content_hash and image_size as the pipeline stores them)
with real JPEGs: GroceryStore photos (--images grocery, 348 px smartphone photos from
../shared/data/grocery-store, cycled; each item's title differs, so every content hash does) or
small generated JPEGs of shapes (--images shapes, world.image_px, tests/conftest.py's recipe).
It measures, in one run:

1. items/s of the Spark path: ``pipeline.feature_cache.run_feature_update`` over the N items
   (validation, image scan, the encode mapInPandas in tasks of featurizer.rows_per_task items,
   staging write, MERGE into item_features), from an empty item_features, with warm workers (a
   first small job of one task per core loads the encoders in each reused Python worker); its
   encode/merge split (FeatureStats.timings); and the UDF alone (the same rows in the same number
   of tasks through ``udfs.encode.encode_fn`` to Spark's noop sink: no Delta write, no MERGE);
2. items/s of a plain loop in one process: ``camenn.featurizer.ItemFeaturizer`` prepare + encode
   (+ pack_item_features, as the UDF does) over the same items in chunks of featurizer.batch_size,
   one timed pass per --loop-threads value (default 2 then 1; the first, 2 = the machine's cores,
   is the one compared), each after a one-batch warm-up; the UDF overlaps prepare with encode in
   a thread, this loop does not;
3. encoder FLOPs per item (torch.utils.flop_counter.FlopCounterMode): the text encoder on one real
   batch padded to featurizer.max_text_tokens, the image encoder on n_patches patches of patch_size
   per item; also the FLOPs of one real ``encode`` batch (text padded to the batch's longest), which
   is what the achieved rates use; and the achieved FLOP/s of both paths as a share of a dense fp32
   matmul peak measured in the same run (torch.matmul of two 2048 x 2048 matrices, best of a few).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import os
import platform
import random
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(_ROOT / "tests"))

from _common import encoder_flops, grocery_descriptions, matmul_peak, timed, write_json  # noqa: E402
from conftest import jpeg_with_shapes  # noqa: E402  - the tests' small real JPEGs, one recipe

GROCERY = _ROOT.parent / "shared" / "data" / "grocery-store"
WORDS = ("red", "fresh", "large", "organic", "spicy", "frozen", "classic", "mini", "family", "light", "sweet", "crisp")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "tests" / "conf" / "tiny.yaml"))
    p.add_argument("--root", default=None, help="scratch folder (default runs/bench/encoders-<config name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--n-items", type=int, default=2000)
    p.add_argument("--images", choices=("grocery", "shapes"), default="grocery")
    p.add_argument("--loop-threads", type=int, nargs="+", default=[2, 1],
                   help="torch threads of the plain loop, one timed pass each; the first is the one compared")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def say(message: str, t0: float) -> None:
    print(f"[bench_encoders {time.perf_counter() - t0:7.1f}s] {message}", flush=True)


# ------------------------------------------------------------------------ items


def synthetic_items(n: int, images: str, image_px: int, seed: int):
    """A pandas frame of n items (the items contract's input columns) with real JPEG bytes."""
    import pandas as pd

    rng = random.Random(seed)
    rows = []
    if images == "grocery":
        photos = sorted(glob.glob(str(GROCERY / "train" / "**" / "*.jpg"), recursive=True))
        if not photos:
            raise SystemExit(f"no GroceryStore photos under {GROCERY}; use --images shapes")
        descriptions = grocery_descriptions(GROCERY)
        cache: dict[str, bytes] = {}
        for i in range(n):
            path = photos[i % len(photos)]
            data = cache.get(path) or cache.setdefault(path, Path(path).read_bytes())
            cls = Path(path).parent.name
            title = f"{rng.choice(WORDS)} {cls.replace('-', ' ')} {rng.choice(WORDS)} #{i}"
            desc = descriptions.get(cls) or f"{cls.replace('-', ' ')}, {' '.join(rng.choices(WORDS, k=12))}"
            rows.append((f"item-{i:07d}", f"m{i % 17}", Path(path).parent.parent.name, title, desc, data,
                         round(rng.uniform(0.5, 30.0), 2)))
    else:
        for i in range(n):
            data = jpeg_with_shapes(tuple(rng.randrange(256) for _ in range(3)), seed * 1_000_003 + i, px=image_px)
            words = rng.choices(WORDS, k=rng.randrange(3, 20))
            rows.append((f"item-{i:07d}", f"m{i % 17}", f"c{i % 20}", f"{' '.join(words[:3])} #{i}",
                         " ".join(words), data, round(rng.uniform(0.5, 30.0), 2)))
    frame = pd.DataFrame(rows, columns=["item_id", "merchant_id", "category", "title", "description", "image", "price"])
    frame["updated_at"] = pd.Timestamp("2026-11-01")
    return frame


# ------------------------------------------------------------------------ the benchmark


def _empty_item_features(spark, config) -> None:
    from pipeline import tables

    path = config.table("item_features")
    if tables.is_delta(spark, path):
        spark.sql(f"DELETE FROM delta.`{path}`")


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    from camenn.config import load_config

    base = load_config(args.conf, args.set)
    root = Path(args.root or _ROOT / "runs" / "bench" / f"encoders-{base.name}").resolve()
    config = load_config(args.conf, [f"data.root={root / 'tables'}", *args.set])

    import torch

    from camenn.featurizer import ItemFeaturizer, pack_item_features
    from pipeline import feature_cache, tables
    from pipeline.session import get_spark
    from udfs.encode import STAGING_SCHEMA, encode_fn

    spark = get_spark(config)
    fcfg = feature_cache.featurizer_config(config)
    fingerprint = feature_cache.featurizer_fingerprint(fcfg)
    n = args.n_items
    rows_per_task = config.featurizer.rows_per_task
    tasks = max(1, -(-n // rows_per_task))
    figures: dict = {
        "config": str(args.conf), "overrides": args.set, "root": str(root), "images": args.images, "items": n,
        "spark_master": spark.sparkContext.master, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "torch": torch.__version__, "featurizer": {k: getattr(fcfg, k) for k in fcfg.__dataclass_fields__},
        "rows_per_task": rows_per_task, "encode_tasks": tasks,
        "arrow_max_records_per_batch": spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", None),
        "python_worker_reuse": spark.conf.get("spark.python.worker.reuse", None),
        "task_cpus": int(spark.conf.get("spark.task.cpus", "1")),
    }

    # the items: real JPEGs in an items Delta table, hashed as the pipeline hashes them
    say(f"writing {n} items ({args.images} photos) under {root}", t0)
    frame = synthetic_items(n, args.images, config.world.image_px, args.seed)
    figures["mean_image_bytes"] = float(frame["image"].map(len).mean())
    schema = tables.input_schema(spark, "items")
    df = spark.createDataFrame(frame[[f.name for f in schema.fields]], schema=schema)
    tables.overwrite_table(spark, config, "items", df.repartition(max(2, tasks)))
    run_date = config.world.run_date

    # warm-up: one small task per core loads the encoders in each reused Python worker
    items = tables.read_table(spark, config, "items")
    udf = encode_fn(fcfg, fingerprint, autocast=config.scoring.encoder_autocast)
    bs = fcfg.batch_size
    cores = spark.sparkContext.defaultParallelism
    _, figures["spark_warmup_seconds"] = timed(lambda: items.limit(cores * bs).repartition(cores)
                                              .mapInPandas(udf, STAGING_SCHEMA).write.format("noop").mode("overwrite").save())
    say(f"Spark warm-up ({cores} tasks of {bs} items): {figures['spark_warmup_seconds']:.1f} s", t0)

    # 1. the Spark path: run_feature_update over the N items, all new
    _empty_item_features(spark, config)
    update, spark_s = timed(lambda: feature_cache.run_feature_update(spark, config, run_date, job="bench_encoders"))
    update.cleanup(spark)
    stats = update.stats
    if stats.encoded + stats.quarantined_total != n:
        raise AssertionError(f"expected {n} items through the encoders, got {stats}")
    figures.update(spark_seconds=spark_s, spark_encoded=stats.encoded, spark_quarantined=stats.quarantined,
                   spark_timings=dict(stats.timings))
    say(f"Spark run_feature_update: {spark_s:.1f} s, {stats.encoded} encoded "
        f"({', '.join(f'{k} {v:.1f}s' for k, v in stats.timings.items())})", t0)

    # 1b. the UDF alone: the same rows in the same number of tasks to the noop sink (no Delta write, no MERGE)
    todo = items.repartition(tasks)
    spark.sparkContext.setJobDescription(f"bench: encode {n} items to noop")
    _, udf_s = timed(lambda: todo.mapInPandas(udf, STAGING_SCHEMA).write.format("noop").mode("overwrite").save())
    spark.sparkContext.setJobDescription(None)
    say(f"Spark encode UDF -> noop: {udf_s:.1f} s", t0)

    # 2. the plain loop over the same rows (collected once, outside the timing), warm (one batch first)
    local = items.select("title", "description", "image").toPandas()
    titles, descriptions, images = list(local["title"]), list(local["description"]), list(local["image"])
    featurizer = ItemFeaturizer.from_config(fcfg, device="cpu")
    before = torch.get_num_threads()

    def plain_loop(stop):
        done = 0
        for s in range(0, stop, bs):
            prepared = featurizer.prepare(titles[s:s + bs], descriptions[s:s + bs], images[s:s + bs])
            done += sum(b is not None for b in pack_item_features(featurizer.encode(prepared)))
        return done

    loops = {}
    for threads in args.loop_threads:
        torch.set_num_threads(threads)
        plain_loop(bs)
        done, seconds = timed(lambda: plain_loop(n))
        loops[threads] = {"seconds": seconds, "encoded": done, "items_per_s": n / seconds}
        say(f"plain loop, {threads} torch thread(s): {seconds:.1f} s ({done} encoded)", t0)
    torch.set_num_threads(before)
    primary = args.loop_threads[0]

    # 3. FLOPs and the matmul peak
    flops = encoder_flops(featurizer, titles[:bs], descriptions[:bs], images[:bs])
    peaks = {t: matmul_peak(t) for t in sorted({1, *args.loop_threads, os.cpu_count() or 1})}
    peak = peaks[primary]
    per_item = flops["per_item_real_batch"]
    rates = {"spark_run_feature_update": n / spark_s, "spark_encode_udf_noop": n / udf_s,
             **{f"plain_loop_{t}_threads": v["items_per_s"] for t, v in loops.items()}}
    loop_rate = loops[primary]["items_per_s"]
    figures.update(
        spark_udf_noop_seconds=udf_s, loop_threads=primary, loops={str(t): v for t, v in loops.items()},
        items_per_s=rates, spark_over_loop=rates["spark_run_feature_update"] / loop_rate,
        spark_udf_over_loop=rates["spark_encode_udf_noop"] / loop_rate,
        encoder_flops=flops, matmul_peak_flops={str(k): v for k, v in peaks.items()}, peak_threads=primary,
        achieved_flops={k: per_item * v for k, v in rates.items()},
        share_of_peak={k: per_item * v / peak for k, v in rates.items()},
        measured_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    print(f"\nbench_encoders: {n} items ({args.images} JPEGs, mean {figures['mean_image_bytes'] / 1e3:.1f} kB), "
          f"master {figures['spark_master']}, {tasks} encode task(s) of <= {rows_per_task} items, "
          f"featurizer batch {bs}, {fcfg.patch_grid}x{fcfg.patch_grid} patches of {fcfg.patch_size} px, "
          f"max {fcfg.max_text_tokens} text tokens")
    print(f"  Spark run_feature_update  {rates['spark_run_feature_update']:8.1f} items/s  ({spark_s:.1f} s, warm workers; "
          + ", ".join(f"{k} {v:.1f}s" for k, v in stats.timings.items()) + ")")
    print(f"  Spark encode UDF -> noop  {rates['spark_encode_udf_noop']:8.1f} items/s  ({udf_s:.1f} s)")
    for t, v in loops.items():
        print(f"  plain loop, {t} thread(s)  {v['items_per_s']:8.1f} items/s  ({v['seconds']:.1f} s, warm; one process, "
              "prepare+encode+pack)")
    print(f"  Spark / plain loop ({primary} torch threads): run_feature_update {figures['spark_over_loop']:.2f}, "
          f"UDF alone {figures['spark_udf_over_loop']:.2f}")
    print(f"  encoder FLOPs/item: text {flops['text_per_item_at_max_tokens'] / 1e6:.1f} M at {fcfg.max_text_tokens} tokens"
          f" + image {flops['image_per_item'] / 1e6:.1f} M ({flops['n_patches']} patches) = "
          f"{flops['per_item_at_max_tokens'] / 1e6:.1f} MFLOP; real batch (mean {flops['mean_text_tokens']:.1f} tokens) "
          f"{per_item / 1e6:.1f} MFLOP")
    print("  matmul peak (fp32 2048^3): " + ", ".join(f"{k} thread(s) {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))
    print(f"  achieved (share of the {primary}-thread peak): "
          + ", ".join(f"{k} {per_item * v / 1e9:.2f} GFLOP/s = {per_item * v / peak:.1%}" for k, v in rates.items()))
    write_json(args.json, figures)
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
