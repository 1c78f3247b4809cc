"""Write the synthetic world (the ``synthetic`` package) as Delta tables, generated on the executors.

Each table is ``spark.range(n, numPartitions=world.partitions).mapInPandas(...)``: a worker
turns a batch of row indices into rows with the pure generator, so nothing is generated on or
collected to the driver, and the tables are identical whatever the number of partitions. The
same code makes the 20k-item demo on one machine and a 200M-item catalogue on a cluster
(``spark-submit jobs/make_demo_data.py --conf conf/production.yaml``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import synthetic as W
from camenn.config import DEFAULT_PROFILE_FIELDS, AppConfig, WorldConfig
from camenn.metrics import auc_from_counts
from pipeline import tables

WORLD_TABLES = ("items", "truth_items", "users", "events", "impressions", "truth_impressions", "candidates")

_SCHEMAS = {
    "items": "item_id string, merchant_id string, category string, title string, description string, "
             "image binary, price double, updated_at timestamp",
    "truth_items": "item_id string, true_category string, defect string, source_item_id string",
    "users": "user_id string, age_band string, household string, zone string",
    "events": "user_id string, item_id string, ts timestamp, event string, price double",
    "impressions": "user_id string, item_id string, ts timestamp, bought int",
    "truth_impressions": "user_id string, item_id string, ts timestamp, p_buy double",
    "candidates": "run_date date, user_id string, item_id string",
}


def _items(world: WorldConfig, idx: np.ndarray) -> pd.DataFrame:
    return W.items_frame(world, idx)


def _impressions(world: WorldConfig, idx: np.ndarray) -> pd.DataFrame:
    return W.impressions_frame(world, idx)[["user_id", "item_id", "ts", "bought"]]


def _truth_impressions(world: WorldConfig, idx: np.ndarray) -> pd.DataFrame:
    return W.impressions_frame(world, idx)[["user_id", "item_id", "ts", "p_buy"]]


# table -> (what its rows are indexed by, the generator of a slice)
_MAKERS: dict[str, tuple[str, Callable[[WorldConfig, np.ndarray], pd.DataFrame]]] = {
    "items": ("n_items", _items),
    "truth_items": ("n_items", W.truth_items_frame),
    "users": ("n_users", W.users_frame),
    "events": ("n_users", W.events_frame),
    "impressions": ("n_users", _impressions),
    "truth_impressions": ("n_users", _truth_impressions),
    "candidates": ("n_users", W.candidates_frame),
}


def _map_fn(world: WorldConfig, make: Callable) -> Callable[[Iterator[pd.DataFrame]], Iterable[pd.DataFrame]]:
    def generate(batches: Iterator[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        for batch in batches:
            if len(batch):
                yield make(world, batch["id"].to_numpy(dtype=np.int64))
    return generate


def world_frame(spark: SparkSession, world: WorldConfig, name: str) -> DataFrame:
    """One world table as a lazy DataFrame (contract columns), generated on the executors."""
    count_key, make = _MAKERS[name]
    ids = spark.range(0, getattr(world, count_key), numPartitions=world.partitions)
    return ids.mapInPandas(_map_fn(world, make), _SCHEMAS[name])


def _rows_written(spark: SparkSession, path: str) -> int | None:
    from delta.tables import DeltaTable

    metrics = DeltaTable.forPath(spark, path).history(1).select("operationMetrics").first()[0] or {}
    value = metrics.get("numOutputRows")
    return int(value) if value is not None else None


@functools.cache
def _generator_digest() -> str:
    code = hashlib.sha256()
    for module in (*sorted(Path(W.__file__).parent.glob("*.py")), __file__):   # every module of the generator
        code.update(Path(module).read_bytes())
    return code.hexdigest()[:16]


def world_key(world: WorldConfig, name: str) -> str:
    """What decides a world table's rows: the world config, the table and the generator's code.

    It tags the table's commit (Delta userMetadata), so a rerun can tell its own identical
    write from anything else that wrote the table since.
    """
    return json.dumps({"table": name, "world": world.model_dump(mode="json"), "generator": _generator_digest()},
                      sort_keys=True)


def write_world(spark: SparkSession, config: AppConfig, names: Iterable[str] = WORLD_TABLES,
                log: Callable[[str], None] | None = print, force: bool = False) -> dict[str, int | None]:
    """Generate and (over)write the world's tables; returns rows written per table (0 = kept).

    Idempotent at the version level: a table whose last commit is this very world's write
    (same config, same generator code) is kept, so a rerun of ``make demo`` leaves the table
    versions that training data and evaluation models were pinned to. ``force`` rewrites
    anyway. Candidates replace only their run date, as the nightly contract says.
    """
    world = config.world
    W._check(world)
    if "users" in names and tuple(config.data.profile_fields) != DEFAULT_PROFILE_FIELDS:
        raise ValueError(f"the synthetic world's users have the profile {list(DEFAULT_PROFILE_FIELDS)}, but "
                         f"data.profile_fields of {config.source or 'the config'} is {list(config.data.profile_fields)}: "
                         "other profiles come from a real export (jobs/ingest_catalog.py --users-path)")
    written: dict[str, int | None] = {}
    for name in names:
        if name not in _MAKERS:
            raise KeyError(f"unknown world table {name!r}; known: {list(WORLD_TABLES)}")
        start = time.perf_counter()
        key = world_key(world, name)
        path = config.table(name)
        latest = tables.latest_commit(spark, path)
        if not force and latest is not None and latest[1] == key:
            written[name] = 0
            if log:
                log(f"world: kept  {name:<17} (version {latest[0]}: already this world) -> {path}")
            continue
        df = world_frame(spark, world, name)
        if name == "candidates":
            path = tables.replace_run_date(spark, config, name, df, world.run_date, tag=key)
        else:
            path = tables.overwrite_table(spark, config, name, df, tag=key)
        written[name] = _rows_written(spark, path)
        if log:
            log(f"world: wrote {name:<17} {written[name] or 0:>12,} rows in {time.perf_counter() - start:6.1f} s -> {path}")
    return written


def bayes_auc(spark: SparkSession, config: AppConfig, bins: int = 100_000) -> float:
    """AUC of the true p_buy against the bought labels: the best any CVR model can do.

    A Spark aggregation (no rows collected): impressions are joined with truth_impressions and
    counted per p_buy bin of width 1/bins; ties inside a bin count one half, so the result is
    exact up to scores closer than 1/bins.
    """
    imp = tables.read_table(spark, config, "impressions")
    truth = tables.read_table(spark, config, "truth_impressions")
    counts = (imp.join(truth, ["user_id", "item_id", "ts"])
              .groupBy(F.floor(F.col("p_buy") * bins).alias("bin"))
              .agg(F.sum("bought").alias("pos"), F.sum(1 - F.col("bought")).alias("neg"))
              .orderBy("bin").collect())
    if not counts:
        return float("nan")
    return auc_from_counts([r["pos"] for r in counts], [r["neg"] for r in counts])


def world_summary(spark: SparkSession, config: AppConfig) -> dict:
    """Rows per table, planted defects, buy rate and the Bayes-optimal CVR AUC (Spark aggregations)."""
    rows = {name: tables.read_table(spark, config, name).count() for name in WORLD_TABLES}
    defects = {r["defect"]: r["count"] for r in
               tables.read_table(spark, config, "truth_items").groupBy("defect").count().collect()}
    impressions = tables.read_table(spark, config, "impressions")
    buy = impressions.agg(F.avg("bought").alias("rate")).first()["rate"]
    return {
        "rows": rows,
        "defects": {d: int(defects.get(d, 0)) for d in W.DEFECTS},
        "buy_rate": float(buy) if buy is not None else float("nan"),
        "bayes_auc": bayes_auc(spark, config),
    }
