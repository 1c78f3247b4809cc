"""Scoring throughput on one world and one machine: the Spark path against a plain PyTorch loop.

    python benchmarks/bench_scoring.py --conf tests/conf/tiny.yaml            # seconds to minutes
    python benchmarks/bench_scoring.py --conf conf/demo.yaml --root runs/bench/demo

Measures, on the world of --conf (generated under --root when it is not there yet):

1. a full nightly run (``pipeline.nightly.run``: every item encoded, aligned, every candidate
   scored) and a rerun after 1% of the items changed (their titles), and the ratio;
2. the alignment path: items/s of (a) the Spark path (valid items joined to their features,
   the mapInPandas UDF, results to Spark's no-op sink) and (b) a plain single-process PyTorch
   loop (``camenn.predictor.Predictor.score_items``) over the same items, with the same model
   and batch size; both warm (the second of two passes), and their ratio;
3. model FLOPs per item (``camenn.model.count_flops_per_item`` at the items' mean text
   length) and the achieved FLOP/s of both paths as a share of a dense fp32 matmul peak
   measured here (torch.matmul of two 2048 x 2048 matrices).

The model is the artifact at the config's model_dir when there is one, else a real but
untrained CameNN of the configured size (same FLOPs; the scores mean nothing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("SPARK_CONF_DIR", str(_ROOT / "conf" / "spark"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from camenn.config import load_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "tests" / "conf" / "tiny.yaml"))
    p.add_argument("--root", default=None, help="scratch folder for the world, the outputs and the model "
                                                "(default runs/bench/<config name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--changed", type=float, default=0.01, help="share of items changed for the incremental rerun")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--throughput-only", action="store_true",
                   help="skip the full and incremental runs (2. and 3. only; needs a scored world under --root)")
    return p.parse_args(argv)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """Dense fp32 matmul FLOP/s on this process's torch threads (best of reps)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def ensure_model(config, root: Path):
    """The config's artifact, or an untrained CameNN of the configured size saved under root."""
    import torch

    from camenn.checkpoint import save_artifact
    from camenn.inputs import USER_FEATURES, FeatureVocab
    from camenn.model import create_model
    from pipeline import feature_cache, tables
    from pipeline.session import get_spark
    from udfs.encode import get_featurizer

    if (Path(config.model_dir) / "manifest.json").is_file():
        return config, "trained artifact"
    spark = get_spark(config)
    items = tables.read_table(spark, config, "items")
    users = tables.read_table(spark, config, "users")
    cats = [r[0] for r in items.select("category").distinct().collect()]
    edges = items.approxQuantile("price", [i / 10 for i in range(1, 10)], 0.01)
    vocab = FeatureVocab(categories=sorted(c for c in cats if c), price_edges=sorted(set(edges)),
                         user_values={f: sorted(r[0] for r in users.select(f).distinct().collect() if r[0] is not None)
                                      for f in USER_FEATURES})
    fcfg = feature_cache.featurizer_config(config)
    featurizer = get_featurizer(fcfg, "cpu")
    m = config.model
    torch.manual_seed(0)
    model = create_model(m.frame, text_dim=featurizer.text_dim, image_dim=featurizer.image_dim,
                         n_patches=featurizer.n_patches, max_text_tokens=featurizer.max_text_tokens, d_model=m.d_model,
                         n_heads=m.n_heads, n_experts=m.n_experts, max_behaviour=m.max_behaviour, top_k=m.top_k,
                         item_feature_sizes=vocab.item_feature_sizes, user_feature_sizes=vocab.user_feature_sizes)
    path = root / "artifacts" / "untrained-model"
    save_artifact(path, model, {"featurizer": {k: getattr(fcfg, k) for k in fcfg.__dataclass_fields__},
                                "encoder_fingerprint": featurizer.fingerprint, "vocab": vocab.to_dict(),
                                "table_versions": {}, "metrics": {}}, overwrite=True)
    config = config.model_copy(update={"scoring": config.scoring.model_copy(update={"model_dir": str(path)})})
    return config, "untrained CameNN of the configured size"


def main(argv=None) -> int:
    args = parse_args(argv)
    base = load_config(args.conf, args.set)
    root = Path(args.root or _ROOT / "runs" / "bench" / base.name).resolve()
    config = load_config(args.conf, [f"data.root={root / 'tables'}", f"training.artifact_dir={root / 'artifacts' / 'model'}",
                                     *args.set])
    import torch
    from pyspark.sql import functions as F

    from camenn.model import count_flops_per_item
    from camenn.predictor import Predictor
    from pipeline import feature_cache, nightly, tables
    from pipeline.session import get_spark
    from udfs.predict import ALIGN_INPUT, ALIGN_SCHEMA, align_fn

    spark = get_spark(config)
    figures: dict = {"config": str(args.conf), "root": str(root), "spark_master": spark.sparkContext.master,
                     "torch_threads": torch.get_num_threads(), "batch_size": config.scoring.batch_size,
                     "max_records_per_batch": config.scoring.max_records_per_batch}
    if not tables._is_delta(spark, config.table("items")):
        from pipeline.world import write_world

        _, figures["world_seconds"] = timed(lambda: write_world(spark, config))
    config, figures["model"] = ensure_model(config, root)
    run_date = config.world.run_date

    # 1. a full run from an empty feature cache, then a rerun after `changed` of the items changed
    if not args.throughput_only:
        for name in ("item_features", "item_alignment", "cvr_scores"):
            path = config.table(name)
            if tables._is_delta(spark, path):
                spark.sql(f"DELETE FROM delta.`{path}`")
        full, figures["full_run_s"] = timed(lambda: nightly.run(spark, config, run_date))
        print(full.summary())
        items = tables.read_table(spark, config, "items")
        bucket = F.pmod(F.xxhash64("item_id"), F.lit(10_000)) < int(args.changed * 10_000)
        changed = items.withColumn("title", F.when(bucket, F.concat("title", F.lit(" (new pack)"))).otherwise(F.col("title")))
        changed = changed.localCheckpoint()   # the overwrite reads the table it replaces
        tables.overwrite_table(spark, config, "items", changed)
        incr, figures["incremental_run_s"] = timed(lambda: nightly.run(spark, config, run_date))
        print(incr.summary())
        figures.update(items=full.counts["items_in"], candidates=full.counts.get("candidates_in", 0),
                       full_encoded=full.counts["items_encoded"], incremental_encoded=incr.counts["items_encoded"],
                       full_timings=full.timings, incremental_timings=incr.timings,
                       incremental_over_full=figures["incremental_run_s"] / figures["full_run_s"])


    # 2a. the Spark alignment path, warm
    model = Predictor.load(config.model_dir)
    fingerprint = model.encoder_fingerprint
    spark.conf.set(nightly.ARROW_BATCH, str(config.scoring.max_records_per_batch))
    valid = feature_cache.valid_items(spark, config, fingerprint)
    keys = valid.select(*ALIGN_INPUT).localCheckpoint()        # hashes and joins out of the timed part
    n = keys.count()
    udf = align_fn(config.model_dir, model.version, config.scoring.batch_size, "none")
    spark_s = []
    for _ in range(2):
        _, s = timed(lambda: keys.mapInPandas(udf, ALIGN_SCHEMA).write.format("noop").mode("overwrite").save())
        spark_s.append(s)

    # 2b. a plain PyTorch loop over the same items (collected: fine for a benchmark world), with one
    # thread and with all cores: on a shared machine OpenMP threads that spin-wait for a descheduled
    # sibling can make the multi-threaded loop many times slower, so both are measured
    rows = keys.collect()
    cols = [[r[c] for r in rows] for c in ("text_emb", "n_text_tokens", "image_emb", "category", "price")]
    mean_tokens = sum(cols[1]) / max(1, len(cols[1]))
    flops = count_flops_per_item(model.config, n_behaviour=0, n_text_tokens=round(mean_tokens))
    default_threads = torch.get_num_threads()
    loops = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        seconds = [timed(lambda: model.score_items(*cols, batch_size=config.scoring.batch_size))[1] for _ in range(2)]
        loops[threads] = {"seconds": seconds, "items_per_s": n / seconds[-1], "matmul_peak_flops": matmul_peak()}
    torch.set_num_threads(default_threads)
    best_threads = max(loops, key=lambda k: loops[k]["items_per_s"])
    peak = max(v["matmul_peak_flops"] for v in loops.values())
    loop_rate = loops[best_threads]["items_per_s"]
    figures.update(alignment_items=n, spark_items_per_s=n / spark_s[-1], spark_seconds=spark_s, loops=loops,
                   loop_threads=best_threads, loop_items_per_s=loop_rate, spark_over_loop=(n / spark_s[-1]) / loop_rate)

    # 3. FLOPs
    figures.update(mean_text_tokens=mean_tokens, flops_per_item=flops, matmul_peak_flops=peak,
                   loop_flops=flops * loop_rate, spark_flops=flops * figures["spark_items_per_s"])
    figures["loop_share_of_peak"] = figures["loop_flops"] / peak
    figures["spark_share_of_peak"] = figures["spark_flops"] / peak

    print(f"\nbenchmark on {n} items, {figures.get('candidates', '?')} candidates ({figures['model']}), "
          f"master {figures['spark_master']}, batch_size {config.scoring.batch_size}")
    if not args.throughput_only:
        print(f"  full run            {figures['full_run_s']:8.1f} s  ({figures['full_encoded']} items encoded)")
        print(f"  rerun, {args.changed:.0%} changed  {figures['incremental_run_s']:8.1f} s  "
              f"({figures['incremental_encoded']} items encoded)  ratio {figures['incremental_over_full']:.2f}")
    print(f"  alignment, Spark    {figures['spark_items_per_s']:8.1f} items/s")
    for threads, v in loops.items():
        print(f"  alignment, PyTorch  {v['items_per_s']:8.1f} items/s  (single process, {threads} thread(s); "
              f"matmul peak {v['matmul_peak_flops'] / 1e9:.1f} GFLOP/s)")
    print(f"  Spark / best PyTorch loop ({best_threads} thread(s)): {figures['spark_over_loop']:.2f}")
    print(f"  model FLOPs/item    {flops / 1e6:8.2f} MFLOP  (item-only, {mean_tokens:.1f} text tokens)")
    print(f"  matmul peak         {peak / 1e9:8.1f} GFLOP/s (fp32, 2048^3, best thread count)")
    print(f"  achieved            PyTorch {figures['loop_flops'] / 1e9:.2f} GFLOP/s = {figures['loop_share_of_peak']:.1%}"
          f" of peak; Spark {figures['spark_flops'] / 1e9:.2f} GFLOP/s = {figures['spark_share_of_peak']:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
