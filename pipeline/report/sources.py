"""The report's data, read and reduced in Spark: category centroids, the flagged items' rows, history.

Only aggregates reach the driver: one row per category (centroids, index) and one per merchant
(index). Item rows stay in Spark and go to the per-merchant tasks (pipeline.report.pages).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from camenn.config import AppConfig
from pipeline import feature_cache, tables
from pipeline.report.advice import PROBLEM, SIDE_LABEL, SIDES, Centroids, merchant_slug, pooled_vectors, unit_vectors
from pipeline.report.publish import MERCHANTS_DIR

_PARTIAL_SCHEMA = "category string, n long, text_sum array<double>, image_sum array<double>"


def flag_columns() -> list[str]:
    """quality_flags column names, in contract order (its DDL has no nested types)."""
    return [part.split()[0] for part in " ".join(tables.SPECS["quality_flags"].columns.split()).split(",")]


def _partial_sums_fn(n_patches: int):
    def partial_sums(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        sums: dict[str, list] = {}
        for pdf in batches:
            for category, t, n, im in zip(pdf["category"], pdf["text_emb"], pdf["n_text_tokens"], pdf["image_emb"]):
                tv, iv = pooled_vectors(t, n, im, n_patches)
                acc = sums.get(category)
                if acc is None:
                    sums[category] = [1, tv.astype(np.float64), iv.astype(np.float64)]
                else:
                    acc[0] += 1
                    acc[1] += tv
                    acc[2] += iv
        if sums:   # an empty frame has no element type for the array columns: yield nothing
            yield pd.DataFrame({"category": list(sums), "n": [v[0] for v in sums.values()],
                                "text_sum": [v[1].tolist() for v in sums.values()],
                                "image_sum": [v[2].tolist() for v in sums.values()]})
    return partial_sums


def _total(pdf: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"category": [pdf["category"].iloc[0]], "n": [int(pdf["n"].sum())],
                         "text_sum": [np.sum(np.stack(pdf["text_sum"].to_list()), axis=0).tolist()],
                         "image_sum": [np.sum(np.stack(pdf["image_sum"].to_list()), axis=0).tolist()]})


def centroid_sample(alignment: DataFrame, per_category: int) -> DataFrame:
    """item_id, category of about ``per_category`` unflagged items per category (all of a smaller one).

    A deterministic hash sample: the same items every run while they stay unflagged. One row
    per category reaches the driver (the counts).
    """
    unflagged = alignment.where(~F.col("flag") & F.col("category").isNotNull()).select("item_id", "category")
    counts = {r["category"]: r["n"] for r in unflagged.groupBy("category").agg(F.count(F.lit(1)).alias("n")).collect()}
    partial = {c: per_category / n for c, n in counts.items() if n > per_category}
    if not partial:
        return unflagged
    fraction = F.create_map(*[F.lit(x) for c, f in sorted(partial.items()) for x in (c, f)])
    u = (F.abs(F.xxhash64("item_id")) % 1_000_003) / 1_000_003.0
    return unflagged.where(F.coalesce(fraction[F.col("category")], F.lit(1.0)) > u)


def category_centroids(vectors_in: DataFrame, n_patches: int) -> Centroids:
    """Centroids from rows (category, text_emb, n_text_tokens, image_emb), computed in Spark.

    Each partition sums its items' unit vectors per category; one small shuffle adds the
    partial sums; only one row per category reaches the driver.
    """
    rows = (vectors_in.where(F.col("category").isNotNull())
            .select("category", "text_emb", "n_text_tokens", "image_emb")
            .mapInPandas(_partial_sums_fn(n_patches), _PARTIAL_SCHEMA)
            .groupBy("category").applyInPandas(_total, _PARTIAL_SCHEMA)
            .collect())
    rows = sorted(rows, key=lambda r: r["category"])
    if not rows:
        return Centroids([], np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), [])
    text = unit_vectors(np.stack([np.asarray(r["text_sum"], np.float64) for r in rows]).astype(np.float32))
    image = unit_vectors(np.stack([np.asarray(r["image_sum"], np.float64) for r in rows]).astype(np.float32))
    return Centroids([r["category"] for r in rows], text, image, [int(r["n"]) for r in rows])


def latest_items(spark: SparkSession, config: AppConfig, item_ids: DataFrame) -> DataFrame:
    """One row per item_id of ``item_ids`` with its image: the newest, by feature_cache's one rule."""
    items = feature_cache.item_rows(spark, config, with_image=True).join(item_ids, "item_id", "left_semi")
    return (items.withColumn("_k", F.row_number().over(feature_cache.newest_first()))
            .where(F.col("_k") == 1).drop("_k"))


def flag_history(spark: SparkSession, config: AppConfig, run_date: dt.date) -> DataFrame:
    """(item_id, content_hash) -> first_flagged over quality_flags runs before run_date."""
    tables.ensure_table(spark, config, "quality_flags")
    return (tables.read_table(spark, config, "quality_flags")
            .where(F.col("run_date") < F.lit(run_date))
            .groupBy("item_id", "content_hash").agg(F.min("first_flagged").alias("first_flagged")))


def encoder_fingerprint(config: AppConfig) -> str:
    """The encoder fingerprint item_features rows of the configured featurizer carry."""
    return _fingerprint_of(config.featurizer)


@functools.lru_cache(maxsize=4)
def _fingerprint_of(settings) -> str:   # hashes the encoder weight files: once per process and settings
    from pipeline.feature_cache import featurizer_fingerprint

    return featurizer_fingerprint(settings.to_featurizer_config())


def index_data(spark: SparkSession, config: AppConfig, alignment: DataFrame, run_date: dt.date,
                model_versions: list[str]) -> dict:
    """Aggregates for the index page in two small collects: one row per merchant, one per category."""
    flags = tables.read_table(spark, config, "quality_flags").where(F.col("run_date") == F.lit(run_date))
    per_merchant_flags = flags.groupBy("merchant_id").agg(
        F.count(F.lit(1)).alias("n_flagged"), F.sum(F.col("is_new").cast("long")).alias("n_new"),
        *[F.sum((F.col("side") == s).cast("long")).alias(f"n_{s}") for s in SIDES])
    per_merchant = (alignment.groupBy("merchant_id").agg(F.count(F.lit(1)).alias("n_items"))
                    .join(per_merchant_flags, "merchant_id", "left"))
    merchants, n_clean = [], 0
    for r in per_merchant.collect():
        if not r["n_flagged"]:
            n_clean += 1
            continue
        stem = merchant_slug(r["merchant_id"])
        merchants.append({"merchant_id": r["merchant_id"], "n_items": r["n_items"], "n_flagged": r["n_flagged"],
                          "rate": r["n_flagged"] / r["n_items"], "n_new": r["n_new"],
                          **{f"n_{s}": r[f"n_{s}"] for s in SIDES},
                          "page": f"{MERCHANTS_DIR}/{stem}.html", "csv": f"{MERCHANTS_DIR}/{stem}.csv"})
    merchants.sort(key=lambda m: (-m["rate"], -m["n_flagged"], m["merchant_id"]))

    categories = [{"category": r["category"] if r["category"] is not None else "(none)", "n_items": r["n_items"],
                   "n_flagged": r["n_flagged"], "rate": r["n_flagged"] / r["n_items"]}
                  for r in alignment.groupBy("category").agg(
                      F.count(F.lit(1)).alias("n_items"), F.sum(F.col("flag").cast("long")).alias("n_flagged")).collect()]
    reasons = [{"side": s, "label": f"{SIDE_LABEL[s]}: {PROBLEM[s]}",
                "n": sum(m[f"n_{s}"] for m in merchants)} for s in SIDES]
    n_items = sum(c["n_items"] for c in categories)
    n_flagged = sum(m["n_flagged"] for m in merchants)
    return {"merchants": merchants, "categories": categories, "reasons": reasons,
            "n_clean_merchants": n_clean, "model_versions": model_versions,
            "totals": {"n_items": n_items, "flagged": n_flagged, "rate": n_flagged / n_items if n_items else 0.0,
                       "new": sum(m["n_new"] for m in merchants)}}
