"""The nightly scoring run: item features, alignment flags and CVR scores for one run date.

    result = run(spark, config, run_date)       # ScoreRun; spark-submit jobs/score_catalog.py

One module (~600 lines): the five stages share one run's state (the valid items, the model
cache, the persisted frames, the counts that must add up) and are read in order; the caches,
the CVR carry-over, the flag rules and the run record live in their own modules.

1. ``update_item_features`` (pipeline.feature_cache): validate items from their stored
   content hashes, quarantine bad rows, encode only new or changed items, MERGE them into
   ``item_features``.
2. The model cache (pipeline.model_cache): the model's item pass (projected tokens, p_ita,
   p_tia) over the valid items whose (content, category, price, model version) is not cached
   yet; a new model version rescores every item by that rule alone.
0. A ``runs`` row with status 'running' (pipeline.run_record), before anything else; runs of
   this job that died without finishing are recorded as failed and their rows deleted.
3. Alignment: every valid item's cached p_ita and p_tia; items under the thresholds (absolute,
   or a per-category quantile computed with Spark's percentile_approx over all of them) are
   flagged "text suspect" (low ITA only), "image suspect" (low TIA only) or "text and image
   suspect" (both).
   The thresholds, their move to the night's new listings (``recentre``) and what the ``runs``
   row records of them are pipeline.flag_rules'.
   With ``scoring.test_time_views`` = K an item's p_ita / p_tia are the mean logit over its photo
   and K random views of it (encoded in stage 1 beside the photo, scored in stage 2).
4. CVR (skipped with one line and its reason in the ``runs`` row's details when the model
   has no cvr head or ``users`` or ``candidates`` is absent or empty: a catalogue without a
   matching stage yet still gets stages 1-3): the date's candidates are grouped by user: one row per user carries its behaviour
   sequence (the last ``max_behaviour`` purchases strictly before the date, oldest first) once,
   its profile, and its candidates, every item as cached projected tokens. A candidate whose
   inputs (profile, behaviour, target, each item by its cache key) hash as on the last
   published date, under the same model, keeps that night's score without going through the
   model (pipeline.cvr_cache). Candidates with an unknown or invalid item, an unknown user, a
   null key or a duplicate go to ``quarantine``.
5. Publish: stages 3 and 4 only compute and check (a share of non-finite scores over
   ``scoring.max_not_finite_share`` fails the run here, before any output commit). Then the
   rows of ``item_alignment``, ``cvr_scores`` and ``quarantine``, each tagged with the run_id,
   are appended, and the ``runs`` row 'succeeded' publishes them all at once: readers take a
   date's rows through ``run_record.published``, which shows one run's rows only. The date's
   rows of earlier runs are then deleted. A failed run writes 'failed' and deletes its rows.

The caches (item_features, item_model_outputs) are MERGEd in stages 1 and 2: they hold what an
item's content gives under an encoder or a model, whichever run wrote it, so they need no
publication. Rows in = rows scored + rows quarantined, for items and for candidates.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from camenn import checkpoint
from camenn.config import AppConfig
from pipeline import cvr_cache, feature_cache, history, model_cache, run_record, tables, tracking
from pipeline.flag_rules import FLAG_REASONS, alignment_flags, night_recentred, recorded_thresholds, run_thresholds, views_warnings
from udfs.cached_tokens import cached_tokens_fn
from udfs.predict import (
    CVR_SCHEMA,
    POOLED_ITEMS_SCHEMA,
    PROJECTED_FIELDS,
    cvr_input,
    cvr_users_fn,
    cvr_users_input,
    pooled_items_fn,
)

log = logging.getLogger(__name__)

JOB = run_record.SCORING_JOB
REQUIRED_INPUTS = ("items",)
# the CVR stage's own inputs: a night without them (or with them empty) scores alignment alone;
# events are optional even then (no purchases = empty behaviour sequences)
CVR_INPUTS = ("users", "candidates")
ARROW_BATCH = "spark.sql.execution.arrow.maxRecordsPerBatch"
# Arrow rows of the grouped CVR input are users with their candidates (tens each): a user batch
# is max_records_per_batch / 16 users, so a batch's bytes stay near those of the per-row path's.
USERS_PER_BATCH_DIVISOR = 16


class NotFiniteScores(RuntimeError):
    """More of a stage's scores are NaN or infinite than scoring.max_not_finite_share allows: nothing was written."""


def check_finite_share(what: str, n_bad: int, n_total: int, limit: float, version: str) -> None:
    """Raise NotFiniteScores when n_bad / n_total exceeds limit; called before the stage's output commit."""
    if n_total and n_bad / n_total > limit:
        raise NotFiniteScores(
            f"{n_bad} of {n_total} {what} scores of model {version} are NaN or infinite ({n_bad / n_total:.1%} > "
            f"scoring.max_not_finite_share {limit:.1%}): nothing written for the date; check the model artifact")


class MissingInput(RuntimeError):
    """An input table or the model artifact is missing; the message says which command makes it."""


@dataclass
class ScoreRun:
    run_id: str
    run_date: dt.date
    model_version: str | None
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, dict[str, int]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)   # stage -> why it did not run
    thresholds: dict = field(default_factory=dict)          # the alignment thresholds the night flagged with

    def summary(self) -> str:
        c = self.counts
        lines = [
            f"score_catalog {self.run_date} — model {self.model_version}, run {self.run_id}: {self.status}",
            f"  items: {c.get('items_in', 0)} in, {c.get('items_valid', 0)} valid "
            f"({c.get('items_encoded', 0)} encoded, {c.get('items_reused', 0)} reused from the cache), "
            f"{c.get('items_quarantined', 0)} quarantined",
            f"  alignment: {c.get('items_scored', 0)} items scored, {c.get('flagged', 0)} flagged"
            + "".join(f"; {reason}: {self.flagged.get(reason, 0)}" for reason in FLAG_REASONS),
            f"  cvr: skipped: {self.skipped['cvr']}" if "cvr" in self.skipped else
            f"  cvr: {c.get('cvr_scored', 0)} scores written for {c.get('candidates_in', 0)} candidates "
            f"({c.get('cvr_model_scored', 0)} by the model, {c.get('cvr_reused', 0)} carried over from the last night), "
            f"{c.get('candidates_quarantined', 0)} quarantined",
        ]
        for source, reasons in self.quarantined.items():
            if reasons:
                lines.append(f"  quarantined {source}: " + ", ".join(f"{k} ({v})" for k, v in sorted(reasons.items())))
        lines.append("  timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        lines.append("  outputs: " + ", ".join(f"{k} -> {v}" for k, v in self.outputs.items()))
        return "\n".join(lines)


def _say(message: str) -> None:
    log.info(message)


# ------------------------------------------------------------------------ preflight


def check_inputs(spark: SparkSession, config: AppConfig) -> None:
    """The items table and the model artifact exist, or MissingInput says which command makes them.

    The CVR stage's inputs are not required: :func:`cvr_skip_reason` decides whether it runs.
    """
    missing = [name for name in REQUIRED_INPUTS if not tables.is_delta(spark, config.table(name))]
    if missing:
        raise MissingInput(
            f"input table(s) {missing} not found under {config.data.root}; make the demo tables with `make demo-data` "
            f"(spark-submit jobs/make_demo_data.py --conf {config.source or '<conf>'}), or load real exports with "
            "jobs/ingest_catalog.py")
    if not checkpoint.artifact_present(config.model_dir):   # local or s3a://, a version or a root
        raise MissingInput(
            f"no model artifact at {config.model_dir}; train one with `make train` "
            f"(spark-submit jobs/train.py --conf {config.source or '<conf>'}) or point scoring.model_dir at one")


def cvr_skip_reason(spark: SparkSession, config: AppConfig, model, candidates: DataFrame | None = None) -> str | None:
    """Why the CVR stage cannot run, in one line, or None when it can.

    ``candidates`` given (a test, a backfill) stands in for the table. A date without candidates
    in a non-empty table is not a reason: the stage runs and writes no scores, as before.
    """
    if "cvr" not in model.tasks:
        return f"model {model.version} has no cvr head (tasks={list(model.tasks)})"
    for name in CVR_INPUTS:
        if name == "candidates" and candidates is not None:
            continue
        if not tables.is_delta(spark, config.table(name)):
            return f"no `{name}` table under {config.data.root} (a catalogue without users or candidates yet)"
        if tables.read_table(spark, config, name).limit(1).count() == 0:
            return f"the `{name}` table is empty"
    return None


def _events(spark: SparkSession, config: AppConfig) -> DataFrame:
    """The events table, or none when there is none yet (users without purchases: empty behaviour)."""
    if tables.is_delta(spark, config.table("events")):
        return tables.read_table(spark, config, "events")
    return spark.createDataFrame([], tables.schema_of(spark, "events"))


def load_model(config: AppConfig):
    """The artifact on the driver: version, tasks, vocabulary, fingerprint (the workers load their own copy)."""
    from camenn.predictor import Predictor

    return Predictor.load(config.model_dir, device="cpu")


# ------------------------------------------------------------------------ alignment


def _not_finite(*cols: str):
    cond = F.lit(False)
    for c in cols:
        cond = cond | F.col(c).isNull() | F.isnan(c)
    return cond


def score_alignment(spark: SparkSession, config: AppConfig, model, outputs: DataFrame, run_date: dt.date,
                    persisted: list[DataFrame]) -> dict:
    """Flag every valid item from its cached scores; returns the item_alignment rows, counts and the quarantine rows.

    ``outputs``: item_id, merchant_id, category, content_hash, p_ita, p_tia of every valid item (model_cache.current).
    """
    sc = config.scoring
    # content_hash: which listings changed since the model's training snapshot (flag_rules.night_recentred)
    scores = outputs.select("item_id", "merchant_id", "category", "content_hash", "p_ita", "p_tia")
    totals = scores.agg(F.count(F.lit(1)).alias("n"), F.sum(F.when(_not_finite("p_ita", "p_tia"), 1).otherwise(0)).alias("bad")).first()
    check_finite_share("item alignment", int(totals["bad"] or 0), int(totals["n"]), sc.max_not_finite_share, model.version)
    thresholds = run_thresholds(sc.thresholds, model)
    finite = scores.where(~_not_finite("p_ita", "p_tia"))
    thresholds, moved = night_recentred(spark, config, finite, thresholds, model.metadata)
    flagged = alignment_flags(finite, thresholds).persist(StorageLevel.MEMORY_AND_DISK)
    persisted.append(flagged)
    rows = flagged.select(F.lit(run_date).alias("run_date"), "item_id", "merchant_id", "category", "p_ita", "p_tia",
                          "flag", "reason", F.lit(model.version).alias("model_version"), "suspect_side")
    spark.sparkContext.setJobDescription(f"alignment: flag items ({run_date})")
    by_reason = {r["reason"]: r["n"] for r in flagged.groupBy("reason").agg(F.count(F.lit(1)).alias("n")).collect()}
    bad = scores.where(_not_finite("p_ita", "p_tia")).withColumn("reason", F.lit("score: not finite"))
    n_bad = int(totals["bad"] or 0)
    quarantine = tables.quarantine_rows(bad, run_date=run_date, job=JOB, source="item_alignment", key_col="item_id",
                                        payload_cols=["merchant_id", "category", "p_ita", "p_tia"])
    used = {**recorded_thresholds(sc.thresholds, thresholds, by_reason,
                                  views_warnings(sc.thresholds, model.metadata.get("metrics") or {}, sc.test_time_views)),
            **moved}
    for line in used.get("warnings", []):
        log.warning(line)
    return {"rows": rows, "scored": sum(by_reason.values()), "not_finite": n_bad, "thresholds": used,
            "flagged": {reason: by_reason.get(reason, 0) for reason in FLAG_REASONS}, "quarantine": quarantine}


# ------------------------------------------------------------------------ CVR


def _item_inputs(valid: DataFrame) -> DataFrame:
    return valid.select("item_id", "category", "price", "text_emb", "n_text_tokens", "image_emb")


def behaviour_inputs(events: DataFrame, valid: DataFrame, users: DataFrame, run_date: dt.date, max_n: int) -> DataFrame:
    """user_id + the BEHAVIOUR_FIELDS arrays (oldest first): the blobs of each user's last max_n purchases.

    The sequences hold item ids; they are exploded with their position, joined to the valid
    items' features in Spark and regrouped per user, so each user's blobs travel once to the
    candidates' join and nothing is collected to the driver.
    """
    seqs = history.behaviour_at(events, run_date, max_n, known_items=valid.select("item_id"), users=users)
    exploded = seqs.select("user_id", F.posexplode("behaviour").alias("pos", "item_id"))
    grouped = (exploded.join(_item_inputs(valid), "item_id")
               .groupBy("user_id")
               .agg(F.array_sort(F.collect_list(F.struct("pos", "text_emb", "n_text_tokens", "image_emb", "category",
                                                          "price"))).alias("seq")))
    return grouped.select(
        "user_id",
        F.col("seq.text_emb").alias("beh_text_emb"), F.col("seq.n_text_tokens").alias("beh_n_text_tokens"),
        F.col("seq.image_emb").alias("beh_image_emb"), F.col("seq.category").alias("beh_category"),
        F.col("seq.price").alias("beh_price"))


def checked_candidates(candidates: DataFrame, valid_ids: DataFrame, users: DataFrame,
                       profile_fields: tuple[str, ...]) -> DataFrame:
    """candidates (user_id, item_id) + ``profile_fields`` (the model's) + ``reason`` (null = scorable)."""
    profiles = (users.where(F.col("user_id").isNotNull()).dropDuplicates(["user_id"])
                .select("user_id", *tables.profile_columns(users, profile_fields), F.lit(True).alias("_user_known")))
    dup = F.row_number().over(Window.partitionBy("user_id", "item_id").orderBy(F.lit(1)))
    joined = (candidates.select("user_id", "item_id").withColumn("_rank", dup)
              .join(valid_ids.select("item_id", F.lit(True).alias("_item_ok")), "item_id", "left")
              .join(profiles, "user_id", "left"))
    null_key = F.col("user_id").isNull() | F.col("item_id").isNull()
    reason = F.concat_ws("; ",
                         F.when(null_key, F.lit("key: null user_id or item_id")),
                         F.when(~null_key & (F.col("_rank") > 1), F.lit("candidate: duplicate")),
                         F.when(F.col("item_id").isNotNull() & F.col("_item_ok").isNull(),
                                F.lit("item: unknown or invalid")),
                         F.when(F.col("user_id").isNotNull() & F.col("_user_known").isNull(), F.lit("user: unknown")))
    return (joined.withColumn("reason", F.when(reason != "", reason))
            .select("user_id", "item_id", *profile_fields, "reason"))


def scorable_pairs(good: DataFrame, valid: DataFrame, events: DataFrame, run_date: dt.date, max_n: int,
                   profile_fields: tuple[str, ...]) -> DataFrame:
    """The reference path's input (cvr_input), one row per candidate: target blobs, behaviour blobs, profile.

    Every candidate carries the encoder outputs of its target and of each behaviour item
    (≈0.5 MB with the demo encoders); kept to hold ``user_rows`` to it (parity test, benchmark).
    """
    behaviour = behaviour_inputs(events, valid, good.select("user_id").distinct(), run_date, max_n)
    return good.join(_item_inputs(valid), "item_id").join(behaviour, "user_id", "left").select(*cvr_input(profile_fields))


def pooled_shape(model) -> tuple[int, int] | None:
    """(d_model, n_patches) of a model that reads behaviour items pooled, else None (user_rows' ``pooled``)."""
    cfg = model.config
    return (int(cfg.d_model), int(cfg.n_patches)) if cfg.behaviour_tokens == "pooled" else None


def user_rows(good: DataFrame, outputs: DataFrame, events: DataFrame, run_date: dt.date, max_n: int,
              profile_fields: tuple[str, ...], seqs: DataFrame | None = None,
              pooled: tuple[int, int] | None = None, tokens: model_cache.TokenSource | None = None) -> DataFrame:
    """The nightly CVR input (cvr_users_input): one row per user with scorable candidates.

    ``good``: scorable candidates (user_id, item_id, ``profile_fields``); ``outputs``: every valid
    item's cached outputs (model_cache.current). The items a user needs, its candidates and its
    behaviour items, are the demand rows; each gets its item's projected tokens, then moves
    once, to its user's partition. A candidate moves its target's tokens once, a behaviour
    item once per user.

    ``tokens`` (the night's way): the demand rows, a few ids each, are shuffled to the bucket of
    their item, where ``udfs.cached_tokens`` reads the bucket's tokens from the cache's files;
    ``outputs`` needs item_id and bucket only. Without it, the tokens come from ``outputs``
    (``current(..., with_tokens=True)``) by a Spark join, which shuffles them to item_id
    partitions first: kept as the reference the bucket read is tested against, and measured
    beside it by benchmarks/bench_scale.py.

    ``pooled`` = (d_model, n_patches) for a model that reads behaviour items pooled
    (``pooled_shape``): a behaviour item then moves as its mean text token and mean patch
    (2 x d_model fp32) instead of its (n + n_patches) tokens, for
    ``cvr_users_fn(..., pooled_behaviour=True)``.
    """
    if seqs is None:
        seqs = history.behaviour_at(events, run_date, max_n, known_items=outputs.select("item_id"),
                                    users=good.select("user_id"))
    nulls = [F.lit(None).cast("string").alias(f) for f in profile_fields]
    candidates = good.select("user_id", "item_id", F.lit(-1).alias("pos"), *profile_fields)
    behaviour = seqs.select("user_id", F.posexplode("behaviour").alias("pos", "item_id"), *nulls)
    if tokens is not None:
        demand = candidates.unionByName(behaviour).join(outputs.select("item_id", "bucket"), "item_id")
        out = StructType([*[f for f in demand.schema.fields if f.name != "bucket"],
                          *[f for f in POOLED_ITEMS_SCHEMA.fields if f.name in PROJECTED_FIELDS]])
        joined = (demand.repartition("bucket").sortWithinPartitions("bucket")
                  .mapInArrow(cached_tokens_fn(tokens.path, tokens.version, tokens.model_version, out, pooled), out))
    elif pooled is None:
        joined = candidates.unionByName(behaviour).join(outputs.select("item_id", *PROJECTED_FIELDS), "item_id")
    else:
        items = outputs.select("item_id", *PROJECTED_FIELDS)
        pooled_items = items.mapInArrow(pooled_items_fn(*pooled), POOLED_ITEMS_SCHEMA)
        joined = candidates.join(items, "item_id").unionByName(behaviour.join(pooled_items, "item_id"))
    fields = [F.col(f) for f in PROJECTED_FIELDS]
    is_candidate = F.col("pos") < 0
    grouped = (joined
               .groupBy("user_id")
               .agg(*[F.first(f, ignorenulls=True).alias(f) for f in profile_fields],
                    # collect_list skips the nulls of the other kind of row
                    F.collect_list(F.when(is_candidate, F.struct(F.col("item_id"), *fields))).alias("c"),
                    F.array_sort(F.collect_list(F.when(~is_candidate, F.struct(F.col("pos"), *fields)))).alias("b")))
    return (grouped.where(F.size("c") > 0)
            .select("user_id", *profile_fields, F.col("c.item_id").alias("cand_item_id"),
                    *[F.col(f"c.{f}").alias(f"cand_{f}") for f in PROJECTED_FIELDS],
                    *[F.col(f"b.{f}").alias(f"beh_{f}") for f in PROJECTED_FIELDS])
            .select(*cvr_users_input(profile_fields)))


def score_cvr(spark: SparkSession, config: AppConfig, model, outputs: DataFrame, run_date: dt.date,
              persisted: list[DataFrame], candidates: DataFrame | None = None, *, staging: str,
              tokens: model_cache.TokenSource) -> dict:
    """Score the date's candidates grouped by user; returns the cvr_scores rows, counts and the quarantine rows.

    ``tokens``: the cache version ``outputs`` was read at, where the projected tokens are read by bucket.

    The scores are written once to ``staging``, a Delta table of this run's own that the caller
    deletes: the plan that makes them reads the last night's ``cvr_scores``, and Delta plans a
    read of the table an append writes to afresh, so a persisted plan was computed a second time
    at publish (20 s of a 194 s night at 50,000 items, 2026-12-03).
    """
    sc = config.scoring
    if candidates is None:
        candidates = tables.read_table(spark, config, "candidates").where(F.col("run_date") == F.lit(run_date))
    users = tables.read_table(spark, config, "users")
    events = _events(spark, config)
    spark.sparkContext.setJobDescription(f"cvr: check candidates ({run_date})")
    profile = model.vocab.profile_fields
    checked = checked_candidates(candidates, outputs.select("item_id"), users, profile).persist(StorageLevel.MEMORY_AND_DISK)
    persisted.append(checked)
    good = checked.where(F.col("reason").isNull()).drop("reason")
    seqs = history.behaviour_at(events, run_date, model.max_behaviour, known_items=outputs.select("item_id"),
                                users=good.select("user_id")).persist(StorageLevel.MEMORY_AND_DISK)
    persisted.append(seqs)
    spark.sparkContext.setJobDescription(f"cvr: inputs of each candidate against the last night's ({run_date})")
    keyed = cvr_cache.inputs_hash(good, outputs, seqs, profile).persist(StorageLevel.MEMORY_AND_DISK)
    persisted.append(keyed)
    reused, todo = cvr_cache.split(keyed, cvr_cache.last_night(spark, config, run_date, model.version))
    pooled = pooled_shape(model)
    rows_in = user_rows(todo.drop("inputs_hash"), outputs, events, run_date, model.max_behaviour, profile,
                        seqs=seqs.join(todo.select("user_id").distinct(), "user_id", "left_semi"), pooled=pooled,
                        tokens=tokens)
    spark.sparkContext.setJobDescription(f"cvr: score candidates grouped by user ({run_date})")
    cvr_udf = cvr_users_fn(config.model_dir, model.version, sc.batch_size, sc.autocast,
                           pooled_behaviour=pooled is not None)
    scored = (rows_in.mapInPandas(cvr_udf, CVR_SCHEMA)
              .join(todo.select(*cvr_cache.KEY), ["user_id", "item_id"]))
    scores = scored.select(*cvr_cache.KEY, "cvr", F.lit(True).alias("by_model"))
    if reused is not None:
        scores = scores.unionByName(reused.select(*cvr_cache.KEY, "cvr", F.lit(False).alias("by_model")))
    # an Arrow batch now holds users, each with its candidates: fewer rows keep it as large as before
    previous = spark.conf.get(ARROW_BATCH, None)
    spark.conf.set(ARROW_BATCH, str(max(8, sc.max_records_per_batch // USERS_PER_BATCH_DIVISOR)))
    try:
        scores.write.format("delta").mode("overwrite").save(staging)
    finally:
        spark.conf.set(ARROW_BATCH, previous) if previous is not None else spark.conf.unset(ARROW_BATCH)
    scores = spark.read.format("delta").load(staging)
    totals = scores.agg(F.count(F.lit(1)).alias("n"), F.sum(F.when(_not_finite("cvr"), 1).otherwise(0)).alias("bad")).first()
    check_finite_share("CVR", int(totals["bad"] or 0), int(totals["n"]), sc.max_not_finite_share, model.version)
    rows = scores.where(~_not_finite("cvr")).select(F.lit(run_date).alias("run_date"), "user_id", "item_id", "cvr",
                                                    F.lit(model.version).alias("model_version"), "inputs_hash")
    spark.sparkContext.setJobDescription(f"cvr: count scores and quarantine ({run_date})")

    rejected = (checked.where(F.col("reason").isNotNull()).select("user_id", "item_id", "reason")
                .unionByName(scores.where(_not_finite("cvr")).select("user_id", "item_id", F.lit("cvr: not finite").alias("reason"))))
    kinds = {r["kind"]: r["n"] for r in (checked.select(feature_cache.reason_kind(F.col("reason")).alias("kind"))
                                         .unionByName(scores.select(F.when(_not_finite("cvr"), F.lit("cvr: not finite"))
                                                                    .otherwise(F.lit("scored")).alias("kind")))
                                         .unionByName(scores.select(F.when(F.col("by_model"), F.lit("by model"))
                                                                    .otherwise(F.lit("reused")).alias("kind")))
                                         .groupBy("kind").agg(F.count(F.lit(1)).alias("n")).collect())}
    # candidates in = the checked rows (a null kind = scorable); a non-finite score is one of them,
    # counted again under "cvr: not finite" and not under "scored"
    scored_kinds = ("scored", "cvr: not finite", "by model", "reused")
    n_in = sum(n for kind, n in kinds.items() if kind not in scored_kinds)
    n_scored, n_by_model, n_reused = kinds.get("scored", 0), kinds.get("by model", 0), kinds.get("reused", 0)
    reasons = {k: n for k, n in kinds.items() if k not in (None, *scored_kinds) or k == "cvr: not finite"}
    n_quarantined = sum(reasons.values())
    if n_in != n_scored + n_quarantined:
        raise AssertionError(f"candidates do not add up: {n_in} in, {n_scored} scored, {n_quarantined} quarantined "
                             "(a scorable candidate was lost between the checks and the scores)")
    quarantine = tables.quarantine_rows(rejected.withColumn("key", F.concat_ws("|", "user_id", "item_id")),
                                        run_date=run_date, job=JOB, source="candidates", key_col="key",
                                        payload_cols=["user_id", "item_id"])
    return {"rows": rows, "in": n_in, "scored": n_scored, "by_model": n_by_model, "reused": n_reused,
            "quarantined": n_quarantined,
            "reasons": reasons, "quarantine": quarantine}


# ------------------------------------------------------------------------ the run


def run(spark: SparkSession, config: AppConfig, run_date: dt.date | None = None, *,
        candidates: DataFrame | None = None, items_df: DataFrame | None = None) -> ScoreRun:
    """One nightly run for ``run_date`` (default: the world's run date)."""
    run_date = run_date or config.world.run_date
    # one version folder for the whole run, on the driver: a models:/ alias or a LATEST moved meanwhile changes nothing
    config = tracking.resolve_model(config)
    result = ScoreRun(run_id=uuid.uuid4().hex, run_date=run_date, model_version=None, status=run_record.RUNNING)
    started = run_record.now()
    t_start = time.perf_counter()
    previous_batch = spark.conf.get(ARROW_BATCH, None)
    update = None
    persisted: list[DataFrame] = []
    # named like the feature update's staging table, so a killed run's is swept the same way
    cvr_staging = feature_cache.staging_path(config, run_date, f"cvr-{result.run_id}")
    # the run is recorded before it does anything else, so even a driver killed in stage 1 leaves a row
    run_record.start(spark, config, run_id=result.run_id, job=JOB, run_date=run_date, started_at=started,
                     details={"config": config.source, "model_dir": config.model_dir,
                              "registered_version": config.scoring.registered_version,
                              "test_time_views": config.scoring.test_time_views})
    try:
        for dead in run_record.best_effort("sweep abandoned runs", run_record.sweep_abandoned, spark, config, JOB,
                                           current_run_id=result.run_id,
                                           timeout_hours=config.scoring.run_timeout_hours) or []:
            _say(f"    run {dead} was abandoned (its driver is gone): recorded as failed, its rows deleted")
        check_inputs(spark, config)
        model = load_model(config)
        result.model_version = model.version
        spark.conf.set(ARROW_BATCH, str(config.scoring.max_records_per_batch))

        fingerprint = feature_cache.featurizer_fingerprint(feature_cache.featurizer_config(config))
        if model.encoder_fingerprint and model.encoder_fingerprint != fingerprint:
            raise RuntimeError(
                f"model {model.version} was trained on features with encoder fingerprint {model.encoder_fingerprint[:12]}, "
                f"but the featurizer section of {config.source} gives {fingerprint[:12]}: score with the featurizer "
                "settings the model was trained with, or retrain it (`make train`)")

        _say(f"1/5 item features for {run_date}: validate items, encode new and changed ones")
        t = time.perf_counter()
        views = config.scoring.test_time_views
        update = feature_cache.run_feature_update(spark, config, run_date, items_df, job=JOB, write_quarantine_rows=False,
                                                  run_id=result.run_id, live_run_ids=run_record.live_run_ids(spark, config),
                                                  views=views)
        stats = update.stats
        result.timings["features"] = time.perf_counter() - t
        result.counts.update(stats.counts())
        result.quarantined["items"] = dict(stats.quarantined)
        result.outputs["item_features"] = config.table("item_features")
        _say(f"    {stats.items_in} items: {stats.encoded} encoded, {stats.reused} reused, "
             f"{stats.quarantined_total} quarantined")
        blobs = feature_cache.cached_features(spark, config, fingerprint, views=bool(views))
        valid = (update.valid_keys(spark).join(blobs.select("item_id", "content_hash"), ["item_id", "content_hash"])
                 .persist(StorageLevel.MEMORY_AND_DISK))
        persisted.append(valid)
        quarantine = update.quarantine_rows(spark, run_date, JOB)

        _say(f"2/5 model cache: item pass of model {model.version} over new or changed items")
        cache = model_cache.refresh(spark, config, model, valid, blobs, run_date, update.encoded_features(spark, bool(views)))
        result.timings["item_pass"] = cache.seconds
        result.counts.update(items_model_scored=cache.scored, items_model_rescored=cache.rescored,
                             items_model_reused=cache.reused, item_features_scans=cache.feature_scans)
        result.outputs["item_model_outputs"] = config.table(model_cache.TABLE)
        _say(f"    {cache.scored} items through the model, {cache.rescored} rescored from their cached projections "
             f"(category or price changed), {cache.reused} reused from the cache"
             + ("; their blobs read from all of item_features" if cache.feature_scans else ""))
        tokens = model_cache.token_source(spark, config, model)
        outputs = model_cache.current(spark, config, model, valid, tokens).persist(StorageLevel.MEMORY_AND_DISK)
        persisted.append(outputs)
        model_cache.check_current(outputs, cache.valid)

        # stages 3 and 4 compute and check every output before anything is written: a broken
        # model (NaN scores) fails here, with no commit to any output table
        writes: dict[str, DataFrame] = {}
        t = time.perf_counter()
        if {"ita", "tia"} <= set(model.tasks):
            _say(f"3/5 alignment: flag {stats.valid} items from model {model.version}'s scores")
            align = score_alignment(spark, config, model, outputs, run_date, persisted)
            result.counts.update(items_scored=align["scored"], items_not_finite=align["not_finite"],
                                 flagged=sum(align["flagged"].values()))
            result.flagged, result.thresholds = align["flagged"], align["thresholds"]
            writes["item_alignment"] = align["rows"]
            quarantine = quarantine.unionByName(align["quarantine"])
            _say(f"    {align['scored']} items scored, {result.counts['flagged']} flagged")
        else:
            result.skipped["alignment"] = f"model {model.version} has no ita/tia heads (tasks={list(model.tasks)})"
            _say(f"3/5 alignment: skipped, {result.skipped['alignment']}")
        result.timings["alignment"] = time.perf_counter() - t

        t = time.perf_counter()
        skip_cvr = cvr_skip_reason(spark, config, model, candidates)
        if skip_cvr is None:
            _say(f"4/5 cvr: score the candidates of {run_date}, grouped by user")
            cvr = score_cvr(spark, config, model, outputs, run_date, persisted, candidates, staging=cvr_staging,
                            tokens=tokens)
            result.counts.update(candidates_in=cvr["in"], cvr_scored=cvr["scored"], candidates_quarantined=cvr["quarantined"],
                                 cvr_model_scored=cvr["by_model"], cvr_reused=cvr["reused"])
            result.quarantined["candidates"] = cvr["reasons"]
            writes["cvr_scores"] = cvr["rows"]
            quarantine = quarantine.unionByName(cvr["quarantine"])
            _say(f"    {cvr['scored']} scores ({cvr['by_model']} by the model, the rest reused from the last "
                 f"night), {cvr['quarantined']} candidates quarantined")
        else:
            result.skipped["cvr"] = skip_cvr
            result.counts["cvr_skipped"] = 1   # countable in SQL beside the reason in details
            _say(f"4/5 cvr: skipped: {skip_cvr}")
        result.timings["cvr"] = time.perf_counter() - t

        t = time.perf_counter()
        _say(f"5/5 publish: write the outputs of run {result.run_id}, then its runs row")
        for name, rows in writes.items():
            spark.sparkContext.setJobDescription(f"publish: append {name} rows of run {result.run_id} ({run_date})")
            result.outputs[name] = tables.append_rows(spark, config, name, rows.withColumn("run_id", F.lit(result.run_id)))
        # every rejected row of this run, whatever its source, in one commit
        result.outputs["quarantine"] = feature_cache.write_quarantine(spark, config, quarantine, run_date=run_date,
                                                                      job=JOB, run_id=result.run_id)
        result.timings["publish"] = time.perf_counter() - t
        result.status = run_record.SUCCEEDED
        result.timings["total"] = time.perf_counter() - t_start
        _write_run(spark, config, result, started)   # the one commit that publishes the run's rows
    except BaseException as exc:
        result.status = run_record.FAILED
        result.timings["total"] = time.perf_counter() - t_start
        # first: on a full disk, deleting its rows may free room for the record
        run_record.best_effort(f"delete the rows of failed run {result.run_id}", run_record.withdraw,
                               spark, config, run_date, result.run_id)
        _write_run(spark, config, result, started, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        run_record.ended(result.run_id)
        spark.sparkContext.setJobDescription(None)
        for df in persisted:
            df.unpersist()
        if update is not None:
            update.cleanup(spark)
        feature_cache.delete_path(spark, cvr_staging)
        if previous_batch is not None:
            spark.conf.set(ARROW_BATCH, previous_batch)
    # published already: what a failed prune leaves, readers do not see and the next run deletes
    run_record.best_effort(f"delete the earlier runs' rows of {run_date}", run_record.prune,
                           spark, config, run_date, JOB, keep_run_id=result.run_id)
    return result


def _write_run(spark: SparkSession, config: AppConfig, result: ScoreRun, started: dt.datetime, error: str | None = None):
    result.outputs["runs"] = config.table("runs")
    run_record.finish(spark, config, run_id=result.run_id, job=JOB, run_date=result.run_date,
                      model_version=result.model_version, started_at=started, status=result.status,
                      counts=result.counts, timings=result.timings, error=error,
                      details={"flagged": result.flagged, "quarantined": result.quarantined, "outputs": result.outputs,
                               "skipped": result.skipped, "thresholds": result.thresholds,
                               "config": config.source, "model_dir": config.model_dir,
                               "registered_version": config.scoring.registered_version,
                               "test_time_views": config.scoring.test_time_views})


__all__ = ["run", "ScoreRun", "MissingInput", "NotFiniteScores", "check_finite_share", "check_inputs", "cvr_skip_reason",
           "checked_candidates", "behaviour_inputs", "scorable_pairs", "score_alignment",
           "score_cvr", "JOB", "FLAG_REASONS"]
