"""CVR scores carried over from the last night when nothing the model reads has changed.

    keyed = inputs_hash(good, outputs, seqs, profile_fields)  # + inputs_hash per candidate
    reused, todo = split(keyed, last_night(spark, config, run_date, model.version))

A candidate's CVR is a function of the model version and of what it reads: the user's profile,
the user's behaviour items in order, and the target item, each item through its projected
tokens, which depend only on (content_hash, category, price) (pipeline/model_cache.py). The
hash of those inputs is written with every score (``cvr_scores.inputs_hash``). The next night
a candidate whose (user_id, item_id, inputs_hash) is in the last scored date's partition, from
the same model version, takes that score; only the others go through the model. On a quiet
day most users bought nothing and most items did not change, so the night's CVR cost follows
the users who bought, the items that changed and the pairs the matching stage newly proposed.

What moves per candidate to decide: user_id, item_id and a 64-char hash (~90 bytes), plus
one ~64-byte key per behaviour item per user; the previous partition is read with the same
three columns and the score.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from camenn.config import AppConfig
from pipeline import run_record, tables

TABLE = "cvr_scores"
KEY = ["user_id", "item_id", "inputs_hash"]


def _hash(*cols) -> F.Column:
    # to_json keeps null apart from "" and field order fixed: two different inputs never share a text
    return F.sha2(F.to_json(F.struct(*cols)), 256)


def item_keys(outputs: DataFrame) -> DataFrame:
    """item_id, item_key: what the model reads of an item (its projected tokens' key)."""
    return outputs.select("item_id", _hash("content_hash", "category", "price").alias("item_key"))


def inputs_hash(good: DataFrame, outputs: DataFrame, seqs: DataFrame, profile_fields: tuple[str, ...]) -> DataFrame:
    """``good`` (scorable candidates with the model's ``profile_fields``) + inputs_hash.

    ``outputs``: every valid item's cached outputs (model_cache.current); ``seqs``: user_id,
    behaviour (history.behaviour_at, item ids oldest first) for the users of ``good``.
    """
    keys = item_keys(outputs)
    behaviour = (seqs.select("user_id", F.posexplode("behaviour").alias("pos", "item_id"))
                 .join(keys, "item_id")
                 .groupBy("user_id")
                 .agg(F.array_sort(F.collect_list(F.struct("pos", "item_key"))).alias("b"))
                 .select("user_id", F.col("b.item_key").alias("behaviour_keys")))
    return (good.join(keys, "item_id")
            .join(behaviour, "user_id", "left")
            .withColumn("inputs_hash", _hash(*profile_fields, F.coalesce("behaviour_keys", F.array().cast("array<string>")),
                                             "item_key"))
            .drop("item_key", "behaviour_keys"))


def last_night(spark: SparkSession, config: AppConfig, run_date: dt.date, version: str) -> DataFrame | None:
    """user_id, item_id, inputs_hash, cvr of the latest date before ``run_date``, as published, scored by ``version``; None if none."""
    tables.ensure_table(spark, config, TABLE)
    last = tables.read_table(spark, config, TABLE).where(F.col("run_date") < F.lit(run_date)).agg(F.max("run_date")).first()[0]
    if last is None:
        return None
    # only the published run's rows: a killed run's scores for that date would repeat each key
    return (run_record.published(spark, config, TABLE, last, job=run_record.SCORING_JOB).where(F.col("model_version") == version)
            .where(F.col("inputs_hash").isNotNull()).select(*KEY, "cvr"))


def split(keyed: DataFrame, previous: DataFrame | None) -> tuple[DataFrame | None, DataFrame]:
    """(reused: user_id, item_id, inputs_hash, cvr; todo: the keyed rows to score), a partition of ``keyed``."""
    if previous is None:
        return None, keyed
    return keyed.join(previous, KEY).select(*KEY, "cvr"), keyed.join(previous, KEY, "left_anti")


__all__ = ["TABLE", "KEY", "item_keys", "inputs_hash", "last_night", "split"]
