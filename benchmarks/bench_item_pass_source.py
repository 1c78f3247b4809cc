"""Where a quiet night's item pass reads its blobs: all of item_features, or the night's own encoded rows.

    python benchmarks/bench_item_pass_source.py --conf conf/demo-full.yaml --set world.n_items=50000 \
        --set world.n_users=10000 --root runs/bench/demo-50k --json benchmarks/results/bench_item_pass_source.json

On a world whose caches are full (a ``bench_scoring`` root: its items, encoded item_features and
the model cache of its untrained model; one untimed night fills the cache when it is empty),
--changed of the items get a new title and the night's feature update encodes them with the real
encoders. Then ``pipeline.model_cache.refresh`` runs the item pass over exactly those items,
--rounds times each way, alternating, with their cached rows deleted before each (untimed):

- ``item_features``: the blobs found by a scan of the whole item_features table, as every night
  with a content change did until 2026-12-03 (and as a new model or a lost cache row still does);
- ``tonight``: the blobs read from the feature update's staging rows (``FeatureUpdate.encoded_features``).

Per pass: seconds, and the bytes Spark read from files and shuffled (its status REST API), and
the ratio of the medians. The world is left consistent: the changed titles, their features and
their cached outputs are all current.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)

from _common import write_json  # noqa: E402
from bench_scale import StageLog  # noqa: E402
from bench_scoring import cached_outputs_of, ensure_model  # noqa: E402

from camenn.config import load_config  # noqa: E402

SOURCES = ("item_features", "tonight")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "conf" / "demo-full.yaml"))
    p.add_argument("--root", required=True, help="a bench_scoring root: tables/ and artifacts/ of a scored world")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--changed", type=float, default=0.01, help="share of items whose title changes")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def say(message: str, t0: float) -> None:
    print(f"[bench_item_pass_source {time.perf_counter() - t0:7.1f}s] {message}", flush=True)


def change_titles(spark, config, share: float) -> int:
    """A new title for ``share`` of the items (a hash bucket), through tables.conform (a new content hash)."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from pipeline import tables

    salt = uuid.uuid4().hex[:8]
    cols = [f.name for f in tables.input_schema(spark, "items").fields]
    bucket = F.pmod(F.xxhash64(F.concat("item_id", F.lit(salt))), F.lit(10_000)) < int(share * 10_000)
    changed = (tables.read_table(spark, config, "items").where(bucket)
               .withColumn("title", F.concat("title", F.lit(f" (rev {salt})"))).select(*cols)
               .localCheckpoint())   # the MERGE rewrites the files this was read from
    DeltaTable.forPath(spark, config.table("items")).alias("t").merge(
        tables.conform(changed, spark, "items").alias("s"), "t.item_id = s.item_id").whenMatchedUpdateAll().execute()
    return changed.count()


def forget(spark, config, ids) -> None:
    """Delete the cached outputs of ``ids`` (item_id), so the next refresh runs the item pass over them."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from pipeline import model_cache

    DeltaTable.forPath(spark, config.table(model_cache.TABLE)).alias("t").merge(
        F.broadcast(ids).alias("s"), "t.item_id = s.item_id").whenMatchedDelete().execute()


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    root = Path(args.root).resolve()
    base = load_config(args.conf, [f"data.root={root / 'tables'}", f"training.artifact_dir={root / 'artifacts' / 'model'}",
                                   *args.set])
    from pyspark import StorageLevel

    from camenn.predictor import Predictor
    from pipeline import feature_cache, model_cache, nightly, tables
    from pipeline.session import get_spark

    conf = {**base.spark.conf, "spark.ui.enabled": "true", "spark.ui.showConsoleProgress": "false",
            "spark.ui.retainedStages": "100000", "spark.ui.retainedJobs": "100000"}
    spark = get_spark(base.model_copy(update={"spark": base.spark.model_copy(update={"conf": conf})}))
    log = StageLog(spark)
    if not tables.is_delta(spark, base.table("item_features")):
        raise SystemExit(f"no item_features under {root / 'tables'}: run bench_scoring with this --root first")
    config, model_kind = ensure_model(spark, base, root)
    model = Predictor.load(config.model_dir)
    run_date = config.world.run_date
    if not cached_outputs_of(spark, config, model.version):
        say("no cached item outputs of this model: one night first (untimed)", t0)
        print(nightly.run(spark, config, run_date).summary(), flush=True)

    n_changed = change_titles(spark, config, args.changed)
    say(f"{n_changed} titles changed; the feature update encodes them", t0)
    update = feature_cache.run_feature_update(spark, config, run_date, write_quarantine_rows=False)
    try:
        say(f"{update.stats.encoded} encoded, {update.stats.reused} reused", t0)
        blobs = feature_cache.cached_features(spark, config, update.fingerprint)
        valid = (update.valid_keys(spark).join(blobs.select("item_id", "content_hash"), ["item_id", "content_hash"])
                 .persist(StorageLevel.MEMORY_AND_DISK))
        encoded = update.encoded_features(spark)
        ids = encoded.select("item_id").localCheckpoint()
        passes = []
        for r in range(args.rounds):
            for source in SOURCES:
                forget(spark, config, ids)
                w0 = time.time()
                stats = model_cache.refresh(spark, config, model, valid, blobs, run_date,
                                            encoded if source == "tonight" else None)
                w1 = time.time()
                moved = log.totals(w0, w1)
                passes.append({"round": r, "source": source, "seconds": stats.seconds, "scored": stats.scored,
                               "feature_scans": stats.feature_scans, "input_bytes": moved["input"],
                               "shuffle_bytes": moved["shuffle_read"] + moved["shuffle_write"]})
                say(f"round {r} {source:13s} {stats.seconds:6.1f} s, {stats.scored} items, read "
                    f"{moved['input'] / 1e6:8.1f} MB, shuffled {passes[-1]['shuffle_bytes'] / 1e6:6.1f} MB", t0)
                if stats.feature_scans != (source == "item_features"):
                    raise AssertionError(f"the {source} pass scanned item_features {stats.feature_scans} times")
        valid.unpersist()
    finally:
        update.cleanup(spark)

    med = {s: {k: statistics.median(p[k] for p in passes if p["source"] == s) for k in ("seconds", "input_bytes")}
           for s in SOURCES}
    figures = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
               "cores": os.cpu_count(), "config": args.conf, "set": args.set, "root": str(root), "model": model_kind,
               "items": update.stats.valid, "changed": n_changed, "encoded": update.stats.encoded, "passes": passes,
               "median": med, "tonight_over_item_features": {k: med["tonight"][k] / med["item_features"][k]
                                                             for k in ("seconds", "input_bytes")}}
    print(f"\nitem pass over {update.stats.encoded} changed items of {update.stats.valid} (medians of {args.rounds}):")
    for s in SOURCES:
        print(f"  blobs from {s:13s} {med[s]['seconds']:6.1f} s, {med[s]['input_bytes'] / 1e6:8.1f} MB read")
    print(f"  tonight / item_features: time {figures['tonight_over_item_features']['seconds']:.3f}, "
          f"bytes read {figures['tonight_over_item_features']['input_bytes']:.4f}")
    write_json(args.json, figures)
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
