"""The per-item model cache: what the model in service computes from an item alone, once per change.

    stats = refresh(spark, config, model, valid, blobs, run_date, encoded)   # score new or changed items, MERGE
    tokens = token_source(spark, config, model)               # the version the CVR stage reads tokens from
    outputs = current(spark, config, model, valid, tokens)    # every valid item's cached scores and bucket

An item's projected tokens (``CameNN.project_items``: its text and image mapped to d_model)
and its alignment scores depend only on its content (content_hash), its category and price,
and the model version. ``item_model_outputs`` holds one row per item with that key; a night
runs the model's item pass only over the valid items whose key is not cached (new or changed
items, or all of them when the model version changed), MERGEs them in one commit, and then
reads every valid item's outputs from the cache. The blobs of new or changed items come from
the night's own encoded rows when those cover them all (the usual night: nothing but what was
encoded tonight is stale), so ``item_features`` is scanned only for a new model or a cache that
missed an item. An item whose category or price changed but not its content is scored again
from its cached projections (they depend on content alone), so no encoder blob is read for it:

- alignment for the date = the cached p_ita / p_tia of every valid item, so ``item_alignment``
  is complete while only changed items were scored, and per-category quantiles see them all;
- CVR reads the cached projected tokens: ``(n_text_tokens + n_patches) * d_model * 4`` bytes per
  item instead of the encoder outputs (docs/architecture.md has the figures). The table is
  partitioned by a bucket of item_id, and the CVR stage reads each bucket's tokens from its
  files in the task that holds that bucket's candidates (``udfs.cached_tokens``), so the tokens
  move once, to their user, instead of being shuffled to item_id partitions first.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from camenn.config import AppConfig
from pipeline import tables
from udfs.predict import (
    ITEM_OUTPUTS_INPUT,
    ITEM_OUTPUTS_SCHEMA,
    ITEM_RESCORE_INPUT,
    ITEM_VIEWS_INPUT,
    item_outputs_fn,
    item_rescore_fn,
)

TABLE = "item_model_outputs"
KEY = ("content_hash", "category", "price")
FRESH = "cache_fresh"   # current()'s column: the cached row's key is the item's
# A set of stale items at most this large is broadcast to the item_features scan, so the blobs
# of unchanged items are not shuffled; a larger one (a new model) needs every blob anyway.
BROADCAST_STALE_ROWS = 2_000_000


@dataclass
class CacheStats:
    valid: int
    scored: int          # items that went through the model's item pass this run (from encoder blobs)
    reused: int          # items whose cached outputs were current
    seconds: float
    rescored: int = 0    # items whose category or price changed: scored again from their cached projections
    feature_scans: int = 0   # 1 when the item pass read its blobs from all of item_features, not tonight's rows

    def check(self) -> CacheStats:
        if self.valid != self.scored + self.rescored + self.reused:
            raise AssertionError(f"model cache counts do not add up: {self}")
        return self


def _fresh(cached: DataFrame, keys: DataFrame) -> DataFrame:
    """keys (item_id + KEY columns) whose cached row has the same key: null-safe on category and price."""
    cond = [keys["item_id"] == cached["_item_id"]] + [keys[k].eqNullSafe(cached[f"_{k}"]) for k in KEY]
    return keys.join(cached, cond, "left_semi")


def _of_model(spark: SparkSession, config: AppConfig, version: str, table_version: int | None = None) -> DataFrame:
    """The cache's rows of model ``version`` scored over the config's test-time views: a row of other
    views (null = none) holds other p_ita / p_tia, so for this night it is not cached."""
    views = F.coalesce(F.col("n_views"), F.lit(0)) == config.scoring.test_time_views
    return tables.read_table(spark, config, TABLE, table_version).where((F.col("model_version") == version) & views)


def _cached(spark: SparkSession, config: AppConfig, version: str) -> DataFrame:
    tables.ensure_table(spark, config, TABLE)
    return (_of_model(spark, config, version)
            .select(F.col("item_id").alias("_item_id"), *[F.col(k).alias(f"_{k}") for k in KEY]))


def refresh(spark: SparkSession, config: AppConfig, model, valid: DataFrame, blobs: DataFrame,
            run_date: dt.date, encoded: DataFrame | None = None) -> CacheStats:
    """Run the item pass over the valid items whose outputs are not cached for ``model``; MERGE them.

    ``valid``: item_id, content_hash, category, price of every valid item (no blobs).
    ``blobs``: item_features rows (item_id, content_hash, text_emb, n_text_tokens, image_emb).
    ``encoded``: the same columns for the items encoded this run (``FeatureUpdate.encoded_features``);
    when every new or changed item is among them, ``blobs`` is not read.
    With ``scoring.test_time_views`` both carry the views' columns too, and an item whose category or
    price changed goes through the item pass from its blobs: the views' projections are not cached.
    """
    t0 = time.perf_counter()
    sc = config.scoring
    views = sc.test_time_views
    keys = valid.select("item_id", *KEY)
    cached = _cached(spark, config, model.version)
    # the stale keys, each marked whether its cached row has the item's content: then only its
    # category or price changed, its cached projections (content alone) still hold, and no
    # encoder blob needs reading. Persisted: the counts and both passes below read it.
    stale = (keys.join(_fresh(cached, keys).select("item_id"), "item_id", "left_anti")
             .join(cached.select("_item_id", "_content_hash"), F.col("item_id") == F.col("_item_id"), "left")
             .select("item_id", *KEY,
                     (F.coalesce(F.col("_content_hash") == F.col("content_hash"), F.lit(False))
                      & F.lit(not views)).alias("_same_content"))
             .persist(StorageLevel.MEMORY_AND_DISK))
    try:
        n_valid = keys.count()
        by_kind = {r["_same_content"]: r["count"] for r in stale.groupBy("_same_content").count().collect()}
        n_scored, n_rescored = by_kind.get(False, 0), by_kind.get(True, 0)
        parts, scans = [], 0
        if n_scored:
            new = stale.where(~F.col("_same_content")).drop("_same_content")
            source = blobs
            if encoded is not None and new.join(encoded.select("item_id", "content_hash"),
                                                ["item_id", "content_hash"], "left_semi").count() == n_scored:
                source = encoded
            else:
                scans = 1
            todo = (source.join(_small(new, n_scored), ["item_id", "content_hash"], "inner")
                    .select(*ITEM_OUTPUTS_INPUT, *(ITEM_VIEWS_INPUT if views else ())))
            parts.append(todo.mapInArrow(item_outputs_fn(config.model_dir, model.version, sc.batch_size, sc.autocast, views),
                                         ITEM_OUTPUTS_SCHEMA))
        if n_rescored:
            same = stale.where(F.col("_same_content")).drop("_same_content")   # with the new category and price
            projections = (_of_model(spark, config, model.version)
                           .select("item_id", "text_proj", "n_text_tokens", "image_proj"))
            todo = projections.join(_small(same, n_rescored), "item_id").select(*ITEM_RESCORE_INPUT)
            parts.append(todo.mapInArrow(item_rescore_fn(config.model_dir, model.version, sc.batch_size, sc.autocast),
                                         ITEM_OUTPUTS_SCHEMA))
        if parts:
            spark.sparkContext.setJobDescription(f"model cache: item pass over {n_scored} new or changed items, "
                                                 f"{n_rescored} rescored from their projections ({run_date})")
            outputs = (functools.reduce(DataFrame.unionByName, parts)
                       .withColumn("model_version", F.lit(model.version)).withColumn("updated_at", F.current_timestamp())
                       .withColumn("n_views", F.lit(views)))
            _merge(spark, config, outputs)
    finally:
        stale.unpersist()
    return CacheStats(valid=n_valid, scored=n_scored, rescored=n_rescored, reused=n_valid - n_scored - n_rescored,
                      seconds=time.perf_counter() - t0, feature_scans=scans).check()


def _small(stale: DataFrame, n: int) -> DataFrame:
    """``stale`` broadcast to the scan it filters when it is small, so unchanged rows are not shuffled."""
    return F.broadcast(stale) if n <= BROADCAST_STALE_ROWS else stale


def _merge(spark: SparkSession, config: AppConfig, outputs: DataFrame) -> None:
    from delta.tables import DeltaTable

    path = tables.ensure_table(spark, config, TABLE)
    changed = " OR ".join([f"NOT (t.{k} <=> s.{k})" for k in (*KEY, "model_version", "n_views")])
    (DeltaTable.forPath(spark, path).alias("t")
        .merge(tables.conform(outputs, spark, TABLE, config).alias("s"), "t.item_id = s.item_id")
        .whenMatchedUpdateAll(condition=changed)
        .whenNotMatchedInsertAll()
        .execute())


def current(spark: SparkSession, config: AppConfig, model, valid: DataFrame, tokens: TokenSource | None = None,
            with_tokens: bool = False) -> DataFrame:
    """Every valid item (valid's columns) + its cached p_ita, p_tia, bucket and FRESH.

    After ``refresh`` each valid item has exactly one cached row, and its key is the item's;
    ``check_current`` asserts both. ``tokens``: read the version the CVR stage reads its tokens
    from (``token_source``), so the two agree. ``with_tokens`` adds text_proj, n_text_tokens and
    image_proj, which the join then shuffles to item_id partitions: the nightly run leaves them
    in the table and the CVR stage reads them by bucket; the Spark-join design of
    ``nightly.user_rows`` (a test reference and the harness's comparison) needs them here.
    The key comparison is a column (FRESH), not a join condition, which Spark would turn into
    more partitioning keys.
    """
    projected = ["text_proj", "n_text_tokens", "image_proj"] if with_tokens else []
    cached = (_of_model(spark, config, model.version, tokens.version if tokens else None)
              .select(F.col("item_id").alias("_item_id"), *[F.col(k).alias(f"_{k}") for k in KEY],
                      *projected, "p_ita", "p_tia", "bucket"))
    fresh = functools.reduce(lambda a, b: a & b, [valid[k].eqNullSafe(cached[f"_{k}"]) for k in KEY])
    return (valid.join(cached, valid["item_id"] == cached["_item_id"], "inner").withColumn(FRESH, fresh)
            .drop("_item_id", *[f"_{k}" for k in KEY]))


@dataclass(frozen=True)
class TokenSource:
    """Where the CVR stage reads projected tokens: one version of the cache, one model's rows."""

    path: str
    version: int
    model_version: str


def token_source(spark: SparkSession, config: AppConfig, model) -> TokenSource:
    """The cache's latest version, pinned: the night's outputs (``current``) and its token reads use the same."""
    version, _ = tables.latest_commit(spark, tables.ensure_table(spark, config, TABLE))
    return TokenSource(config.table(TABLE), version, model.version)


def check_current(outputs: DataFrame, n_valid: int) -> None:
    """One cached row per valid item, every one with the item's key: else the cache lost or kept something."""
    row = outputs.agg(F.count(F.lit(1)).alias("n"), F.sum(F.when(F.col(FRESH), 0).otherwise(1)).alias("stale")).first()
    if row["n"] != n_valid or (row["stale"] or 0):
        raise AssertionError(f"model cache: {n_valid} valid items but {row['n']} cached outputs, {row['stale'] or 0} of them "
                             "for other content than the item's")


__all__ = ["refresh", "current", "token_source", "check_current", "CacheStats", "TokenSource", "TABLE", "KEY", "FRESH"]
