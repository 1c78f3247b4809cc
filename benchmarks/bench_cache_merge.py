"""What the nightly MERGE into item_model_outputs costs by itself: seconds and Spark's shuffle bytes.

    python benchmarks/bench_cache_merge.py --table runs/bench/scale-price/n100000-s0/tables/item_model_outputs \
        --rows 1000 --json benchmarks/results/bench_cache_merge.json

Copies the table (a bench_scale world's model cache) to a scratch folder, takes --rows of its
rows with a new price as the source (checkpointed, as the item pass's output is materialised
by Delta before a MERGE), and runs ``pipeline.model_cache``'s MERGE (update where the key
changed, insert new items) on a fresh copy each time, --repeat times; for comparison, the same
rows as a matched-only MERGE followed by an insert-only one. Reports per run: seconds, shuffle
bytes read and written (the status REST API) and the rows updated.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)

from _common import write_json  # noqa: E402
from bench_scale import StageLog  # noqa: E402

from camenn.config import load_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "conf" / "demo.yaml"), help="Spark settings")
    p.add_argument("--table", required=True, help="an item_model_outputs Delta table (it is copied, never written)")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    base = load_config(args.conf)
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from pipeline.model_cache import KEY
    from pipeline.session import get_spark

    conf = {**base.spark.conf, "spark.ui.enabled": "true", "spark.ui.showConsoleProgress": "false",
            "spark.ui.retainedStages": "100000"}
    spark = get_spark(base.model_copy(update={"spark": base.spark.model_copy(update={"conf": conf})}))
    log = StageLog(spark)
    scratch = Path(tempfile.mkdtemp(prefix="bench-cache-merge-"))
    target = str(scratch / "t")
    changed = " OR ".join(f"NOT (t.{k} <=> s.{k})" for k in (*KEY, "model_version"))

    def fresh_copy():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(args.table, target)

    fresh_copy()
    source = (spark.read.format("delta").load(target).orderBy(F.xxhash64("item_id")).limit(args.rows)
              .withColumn("price", F.col("price") + 1.0).withColumn("updated_at", F.current_timestamp())
              .localCheckpoint())
    n_source = source.count()

    def merge(matched: bool, inserts: bool) -> None:
        m = DeltaTable.forPath(spark, target).alias("t").merge(source.alias("s"), "t.item_id = s.item_id")
        if matched:
            m = m.whenMatchedUpdateAll(condition=changed)
        if inserts:
            m = m.whenNotMatchedInsertAll()
        m.execute()

    ways = {"one MERGE (model_cache._merge)": lambda: merge(True, True),
            "matched-only + insert-only MERGEs": lambda: (merge(True, False), merge(False, True))}
    runs = []
    for r in range(args.repeat):
        for name, way in ways.items():
            fresh_copy()
            w0 = time.time()
            way()
            w1 = time.time()
            moved = log.totals(w0 - 0.5, w1 + 0.5)
            updated = (spark.read.format("delta").load(target)
                       .join(source.select("item_id", "price"), ["item_id", "price"]).count())
            runs.append({"round": r, "way": name, "seconds": w1 - w0, "shuffle_read": moved["shuffle_read"],
                         "shuffle_write": moved["shuffle_write"], "rows_updated": updated})
            print(f"round {r} {name:36s} {w1 - w0:6.1f} s, shuffle read {moved['shuffle_read'] / 1e6:7.1f} MB, "
                  f"written {moved['shuffle_write'] / 1e6:7.1f} MB, {updated} of {n_source} rows updated", flush=True)
    n_target = spark.read.format("delta").load(target).count()
    shutil.rmtree(scratch, ignore_errors=True)
    write_json(args.json, {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
                           "cores": os.cpu_count(), "table": args.table, "target_rows": n_target, "source_rows": n_source,
                           "runs": runs})
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
