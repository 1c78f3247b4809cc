"""Behaviour history: one rule for training examples and for the nightly job.

    seqs = behaviour_before(rows, bought, max_n)      # rows: row_id, user_id, ts -> row_id, behaviour
    seqs = behaviour_at(events, run_date, max_n, known_items=valid, users=users)   # user_id, behaviour

A row's behaviour is its user's last ``max_n`` purchases of valid items strictly before the
row's cutoff, oldest first, ties at one timestamp broken by item_id. Training asks it once per
example (the cutoff is the example's time), the nightly job once per user (the cutoff is the
run date's midnight); both go through ``behaviour_before``, so a (user, cutoff) gets the same
sequence on both paths (tests/test_training_data.py holds them to it).

It avoids a (user x purchases) range join: purchases are numbered per user in time order, a
running count over the user's purchases and rows (rows sort before purchases at an equal ts)
gives each row the number k of purchases strictly before it, and the row is joined on
(user_id, rank) to ranks k-N+1..k: an equi-join of N rows per row, whatever the history's length.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def purchases(events: DataFrame, known_items: DataFrame | None = None) -> DataFrame:
    """user_id, item_id, ts of purchases (of known items, when given: an invalid item has no features)."""
    p = events.where(F.col("event") == "purchase").select("user_id", "item_id", "ts")
    if known_items is not None:
        p = p.join(known_items.select("item_id"), "item_id", "left_semi")
    return p


def behaviour_before(rows: DataFrame, bought: DataFrame, max_n: int) -> DataFrame:
    """row_id, behaviour (array of item_id, oldest first) for every row of ``rows`` (row_id, user_id, ts)."""
    empty = F.array().cast("array<string>")
    if max_n <= 0:
        return rows.select("row_id", empty.alias("behaviour"))
    ranked = bought.withColumn("prank", F.row_number().over(
        Window.partitionBy("user_id").orderBy(F.col("ts"), F.col("item_id"))))
    timeline = (ranked.select("user_id", "ts", F.lit(1).alias("is_p"), F.lit(None).cast(rows.schema["row_id"].dataType).alias("row_id"))
                .unionByName(rows.select("user_id", "ts", F.lit(0).alias("is_p"), "row_id")))
    # rows sort before purchases of the same ts, so the running count excludes them: strictly before
    running = Window.partitionBy("user_id").orderBy("ts", "is_p").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    counts = (timeline.withColumn("k", F.sum("is_p").over(running))
              .where(F.col("is_p") == 0).select("row_id", "user_id", "k"))
    wanted = (counts.where(F.col("k") > 0)
              .select("row_id", "user_id",
                      F.explode(F.sequence(F.greatest(F.col("k") - F.lit(max_n - 1), F.lit(1)), F.col("k"))).alias("prank")))
    seqs = (wanted.join(ranked.select("user_id", "prank", "item_id"), ["user_id", "prank"])
            .groupBy("row_id")
            .agg(F.array_sort(F.collect_list(F.struct("prank", "item_id"))).alias("seq"))
            .select("row_id", F.col("seq.item_id").alias("behaviour")))
    return (rows.select("row_id").join(seqs, "row_id", "left")
            .select("row_id", F.coalesce(F.col("behaviour"), empty).alias("behaviour")))


def behaviour_at(events: DataFrame, before: dt.date, max_n: int, known_items: DataFrame | None = None,
                 users: DataFrame | None = None) -> DataFrame:
    """user_id, behaviour at the start of ``before``: one row per user of ``users`` (default: every buyer)."""
    cutoff = F.lit(before).cast("timestamp")
    bought = purchases(events, known_items).where(F.col("ts") < cutoff)
    who = (users if users is not None else bought).select("user_id").distinct()
    rows = who.select(F.col("user_id").alias("row_id"), "user_id", cutoff.alias("ts"))
    return behaviour_before(rows, bought, max_n).withColumnRenamed("row_id", "user_id")


__all__ = ["purchases", "behaviour_before", "behaviour_at"]
