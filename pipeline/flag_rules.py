"""Which listings a night flags: the thresholds it applies, how it moves them, and what it records of them.

    thresholds = run_thresholds(config.scoring.thresholds, model)         # calibrated -> the model's quantiles
    thresholds, moved = night_recentred(spark, config, scores, thresholds, model.metadata)   # recentre
    flagged = alignment_flags(scores, thresholds)                         # + flag, suspect_side, reason (contrast: sides read together)
    details = recorded_thresholds(config.scoring.thresholds, thresholds, by_reason)   # runs.details.thresholds

The rules themselves are ``camenn.config.ThresholdConfig``'s; this module applies them to a
night's scores in Spark (pipeline.nightly's alignment stage calls it) and words the warnings a
night records when its scores do not look like the ones the thresholds were taken on. The
report reads the record again (pipeline.report.advice.FlagRule).
"""

from __future__ import annotations

import logging

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from camenn.config import AppConfig, ThresholdConfig
from camenn.logits import EPS, logit
from pipeline import tables

log = logging.getLogger(__name__)

TEXT_SUSPECT, IMAGE_SUSPECT, BOTH_SUSPECT = "text suspect", "image suspect", "text and image suspect"
FLAG_REASONS = (TEXT_SUSPECT, IMAGE_SUSPECT, BOTH_SUSPECT)
# item_alignment.suspect_side, the typed column readers use; ``reason`` is its label for people
SUSPECT_SIDES = {"text": TEXT_SUSPECT, "image": IMAGE_SUSPECT, "both": BOTH_SUSPECT}


def run_thresholds(thresholds: ThresholdConfig, model) -> ThresholdConfig:
    """The night's thresholds: mode ``calibrated`` becomes the model's recorded held-out quantiles (absolute)."""
    resolved = thresholds.for_model(model.metadata.get("metrics") or {}, model.version)
    if resolved is not thresholds:
        log.info(f"    thresholds: the {thresholds.quantile:.0%} quantile of model {model.version}'s held-out items: "
                 f"ita {resolved.ita:.4f}, tia {resolved.tia:.4f}")
    return resolved


def snapshot_listings(spark: SparkSession, config: AppConfig, metadata: dict) -> tuple[DataFrame | None, str]:
    """(item_id and content_hash of each listing the model's training snapshot held for its alignment tasks, ""),
    or (None, why not).

    Those are the ``home`` rows of ``training_items`` at the version the artifact pins
    (``table_versions``): what the alignment tasks trained on, and the held-out share they were
    calibrated on. Bounded by the training budget (pipeline.training_data.home_fraction), not by
    the catalogue. content_hash is the content their features were encoded from; it is null in a
    snapshot written before the table had it, whose listings are then known by id alone. A model
    trained on another root's tables, or a version no longer readable here, gives None and the reason.
    """
    version = (metadata.get("table_versions") or {}).get("training_items")
    if version is None:
        return None, "the model pins no training_items version (trained elsewhere, or before training pinned it)"
    path = config.table("training_items")
    if not tables.is_delta(spark, path):
        return None, f"no training_items table at {path} to find the model's training listings in"
    try:
        snapshot = tables.read_path(spark, path, int(version))
    except Exception as e:   # a version this table never had (another root's model) or one vacuumed away
        return None, f"training_items version {version} is not readable at {path} ({type(e).__name__})"
    content = F.col("content_hash") if "content_hash" in snapshot.columns else F.lit(None).cast("string")
    return snapshot.where(F.col("home")).select("item_id", content.alias("content_hash")).distinct(), ""


def mark_new(scores: DataFrame, known: DataFrame) -> DataFrame:
    """``scores`` + ``new``: true where the listing is not one of ``known`` (snapshot_listings) as it is now.

    A listing is known when the snapshot holds its id with the content it has now (``scores``'
    content_hash, where it has one), or with no recorded content: one whose photo or text changed
    since training is new to the model. Both sides keep one row per listing, so the left join
    neither drops nor repeats a scored row.
    """
    k = known.select(F.col("item_id").alias("_known_id"), F.col("content_hash").alias("_known_hash"))
    same = scores["item_id"] == k["_known_id"]
    if "content_hash" in scores.columns:
        same = same & (k["_known_hash"].isNull() | (scores["content_hash"] == k["_known_hash"]))
    return (scores.join(k, same, "left").withColumn("new", F.col("_known_id").isNull())
            .drop("_known_id", "_known_hash"))


def night_recentred(spark: SparkSession, config: AppConfig, scores: DataFrame, thresholds: ThresholdConfig,
                    metadata: dict) -> tuple[ThresholdConfig, dict]:
    """``thresholds`` moved down to the median ITA / TIA of the night's new listings when they are to be
    recentred (``recentre``), and stretched by their lower half's spread (``rescale``), with what a night records
    of it: {"night_median", "night_quartile", "before_recentre", "recentred_over"} (empty when it does not
    recentre; a side whose median is not under its centre keeps its value, ThresholdConfig.recentred).

    New listings are the scored ones the training snapshot of the model (its artifact's ``metadata``) did
    not hold as they are now (:func:`snapshot_listings`, :func:`mark_new`: a listing changed since counts as new):
    like its held-out items, listings it never fit, so their median is the one to set beside the held-out
    median. A night of mostly trained listings scores above its held-out items because the model fit them,
    and its median would hide a new shop that scores lower. With fewer than ``min_new_listings`` new ones, or
    no readable snapshot, the median is the whole night's: it can only move the thresholds less than the new
    listings' would (trained listings score higher), and ``recentred_over`` says which and why.

    One left join of the night's scores (item_id, content hash and two doubles a row, ~120 bytes) to the
    snapshot's ids and hashes (~100 bytes each; broadcast by adaptive execution while small), then one
    aggregation with approximate medians and lower quartiles to 1e-4 in rank.
    """
    if not (thresholds.recentre and thresholds.mode == "absolute"):
        return thresholds, {}
    known, why_not = snapshot_listings(spark, config, metadata)
    marked = scores.withColumn("new", F.lit(False)) if known is None else mark_new(scores, known)
    new = F.col("new")
    # the median and lower quartile of each side, over all listings and over the new ones
    m = marked.agg(F.count(F.lit(1)).alias("n"), F.count(F.when(new, 1)).alias("n_new"),
                   *[F.percentile_approx(F.col(f"p_{t}"), [0.5, 0.25], 10000).alias(t) for t in ("ita", "tia")],
                   *[F.percentile_approx(F.when(new, F.col(f"p_{t}")), [0.5, 0.25], 10000).alias(f"new_{t}")
                     for t in ("ita", "tia")]).first()
    if not m["n"]:   # nothing to flag: no medians, so nothing for contrast to read either
        return thresholds.model_copy(update={"contrast": 0.0}), {}
    n, n_new, least = int(m["n"]), int(m["n_new"]), thresholds.min_new_listings
    if known is not None and n_new >= least:
        over, prefix = {"listings": "new", "n": n_new, "scored": n}, "new_"
        whose = f"the median of the {n_new} of {n} listings new to the model"
    else:
        why = why_not or f"{n_new} of {n} listings are new to the model, under scoring.thresholds.min_new_listings {least}"
        over, prefix = {"listings": "all", "n": n, "scored": n, "why": why}, ""
        whose = f"the night's median over all {n} listings ({why})"
    median, quartile = ({t: float(m[f"{prefix}{t}"][k]) for t in ("ita", "tia")} for k in (0, 1))
    moved = thresholds.recentred(median["ita"], median["tia"], quartile)
    change = ", ".join(f"{t} {getattr(thresholds, t):.4f} -> {getattr(moved, t):.4f}" if getattr(moved, t) != getattr(thresholds, t)
                       else f"{t} not moved (that median is not under the held-out one)" for t in ("ita", "tia"))
    log.info(f"    thresholds recentred on {whose}: ita {median['ita']:.4f}, tia {median['tia']:.4f} (held-out "
             f"{thresholds.centre_ita:.4f}, {thresholds.centre_tia:.4f}): {change}")
    if thresholds.rescale:
        log.info(f"    and rescaled by the lower half's spread: the night's lower quartiles ita {quartile['ita']:.4f}, "
                 f"tia {quartile['tia']:.4f} (held-out {thresholds.quartile_ita:.4f}, {thresholds.quartile_tia:.4f})")
    if thresholds.contrast:
        log.info(f"    each side read against the other: its logit less {thresholds.contrast:g} x the other's above that median")
    return moved, {"night_median": median, "night_quartile": quartile,
                   "before_recentre": {"ita": thresholds.ita, "tia": thresholds.tia}, "recentred_over": over}


def share_below(flagged: dict[str, int], scored: int) -> dict[str, float]:
    """The share of scored items under the ITA and under the TIA threshold, from the night's flag counts."""
    n = max(1, scored)
    return {"ita": (flagged.get(TEXT_SUSPECT, 0) + flagged.get(BOTH_SUSPECT, 0)) / n,
            "tia": (flagged.get(IMAGE_SUSPECT, 0) + flagged.get(BOTH_SUSPECT, 0)) / n}


def calibration_warnings(shares: dict[str, float], thresholds: ThresholdConfig) -> list[str]:
    """One line per side whose share under a calibrated threshold is more than ``warn_ratio`` times the quantile.

    Why: calibrated thresholds are quantiles of the model's held-out items, which are listings of the
    kind it trained on. A catalogue of photos or texts unlike those (a new shop; GroceryStore's
    validation photos put 24-33% of clean listings under a 2% quantile, docs/results/grocery-store.md) scores lower as a whole,
    and the night would flag a large share of clean listings without a word.
    """
    if thresholds.mode != "calibrated":
        return []
    limit = thresholds.warn_ratio * thresholds.quantile
    return [f"calibration: {share:.1%} of the scored items are under the {task.upper()} threshold, where the model's "
            f"held-out items had {thresholds.quantile:.0%}: this catalogue's listings differ from the ones the model "
            "was trained and calibrated on (retrain on them, or set absolute thresholds)"
            for task, share in shares.items() if share > limit]


def views_warnings(thresholds: ThresholdConfig, metrics: dict, views: int) -> list[str]:
    """One line when calibrated thresholds were taken over another number of test-time views than the night's.

    Why: a listing's score over its photo and K views (the mean logit) is not its photo's score,
    so a quantile taken one way and applied to scores taken the other flags another share than the
    configured one. Training records the views it calibrated over (``metrics.calibration_views``,
    camenn.training.held_out_metrics); a model trained before that calibrated on the photo alone.
    """
    if thresholds.mode != "calibrated":
        return []
    recorded = int(metrics.get("calibration_views") or 0)
    if recorded != views:
        return [f"calibration: the model's thresholds are quantiles of its held-out items scored over their photo and "
                f"{recorded} test-time view(s), and this night scores over the photo and {views}: retrain the model with "
                f"scoring.test_time_views={views} (or set that back to {recorded})"]
    # some held-out items had no views in the cache when training read it: those were scored on the photo
    items, over_views = metrics.get("calibration_items"), metrics.get("calibration_items_over_views")
    if views and items is not None and over_views is not None and over_views < items:
        return [f"calibration: only {over_views} of the model's {items} held-out items were scored over {views} "
                "test-time views when its thresholds were taken, the others on their photo alone: retrain it"]
    return []


def alignment_flags(scores: DataFrame, thresholds: ThresholdConfig) -> DataFrame:
    """scores (item_id, category, p_ita, p_tia, ...) + flag, suspect_side (text, image, both) and reason."""
    ita_abs, tia_abs = F.lit(float(thresholds.ita)), F.lit(float(thresholds.tia))
    if thresholds.mode == "absolute":
        scored = scores.withColumn("_ita_thr", ita_abs).withColumn("_tia_thr", tia_abs)
    elif thresholds.mode == "category_quantile":   # ("calibrated" is resolved to absolute by run_thresholds)
        q = float(thresholds.quantile)
        per_category = (scores.groupBy("category").agg(
            F.count(F.lit(1)).alias("_n"),
            F.percentile_approx("p_ita", q, 10000).alias("_q_ita"),
            F.percentile_approx("p_tia", q, 10000).alias("_q_tia"))
            .withColumnRenamed("category", "_category"))
        big = F.col("_n") >= thresholds.min_category_items
        scored = (scores.join(F.broadcast(per_category), scores["category"].eqNullSafe(per_category["_category"]), "left")
                  .withColumn("_ita_thr", F.when(big, F.col("_q_ita")).otherwise(ita_abs))
                  .withColumn("_tia_thr", F.when(big, F.col("_q_tia")).otherwise(tia_abs))
                  .drop("_category", "_n", "_q_ita", "_q_tia"))
    else:
        raise ValueError(f"unknown threshold mode {thresholds.mode!r}")
    if thresholds.contrast:   # each side against the other, on the logit scale (ThresholdConfig.read)
        if thresholds.contrast_ita is None or thresholds.contrast_tia is None:
            raise ValueError("thresholds.contrast reads the night's medians: recentre the thresholds first (night_recentred)")
        # contrast needs recentre, so the mode is absolute: the thresholds' logits are constants, not per-row work
        c, l_ita, l_tia = float(thresholds.contrast), _logit(F.col("p_ita")), _logit(F.col("p_tia"))
        low_ita = l_ita - F.lit(c) * (l_tia - F.lit(float(logit(thresholds.contrast_tia)))) < F.lit(float(logit(thresholds.ita)))
        low_tia = l_tia - F.lit(c) * (l_ita - F.lit(float(logit(thresholds.contrast_ita)))) < F.lit(float(logit(thresholds.tia)))
    else:
        low_ita, low_tia = F.col("p_ita") < F.col("_ita_thr"), F.col("p_tia") < F.col("_tia_thr")
    side = F.when(low_ita & low_tia, F.lit("both")).when(low_ita, F.lit("text")).when(low_tia, F.lit("image"))
    reason = F.create_map(*[F.lit(x) for pair in SUSPECT_SIDES.items() for x in pair])[F.col("suspect_side")]
    return (scored.withColumn("suspect_side", side).withColumn("reason", reason)
            .withColumn("flag", F.col("suspect_side").isNotNull()).drop("_ita_thr", "_tia_thr"))


def _logit(p: Column) -> Column:
    """camenn.logits.logit as a Spark expression: clipped to [EPS, 1 - EPS] the same way."""
    clipped = F.least(F.greatest(p.cast("double"), F.lit(EPS)), F.lit(1 - EPS))
    return F.log(clipped) - F.log1p(-clipped)


def recorded_thresholds(configured: ThresholdConfig, applied: ThresholdConfig, by_reason: dict[str, int],
                        other_warnings: list[str] = ()) -> dict:
    """What a night records of its thresholds (``runs.details.thresholds``, read again by the report).

    The rule as configured (mode, quantile) with the values applied (a calibrated mode's come from
    the model), each side's share of the scored items under its threshold (``by_reason``: the count
    of scored items per reason, unflagged ones under None) and the calibration warnings, if any
    (``other_warnings``: the ones found before the flags, views_warnings).
    """
    used = {**applied.model_dump(), "mode": configured.mode, "quantile": configured.quantile,
            "share_below": share_below(by_reason, sum(by_reason.values()))}
    warnings = [*other_warnings, *calibration_warnings(used["share_below"], configured)]
    return {**used, "warnings": warnings} if warnings else used
