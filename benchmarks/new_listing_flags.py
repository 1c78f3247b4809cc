"""How a published night's flags fall on the listings new to its model and on the ones it trained on.

    .venv/bin/python benchmarks/new_listing_flags.py --conf conf/grocery.yaml --run-date 2026-11-24 \
        --json benchmarks/results/grocery_chain_new_listing_flags.json     # after `make grocery`; about a minute

Reads the date's published ``item_alignment`` scores and the thresholds its ``runs`` row recorded,
splits the listings with the job's own ``pipeline.flag_rules.snapshot_listings`` and ``mark_new``
(new = not an alignment item of the model's training snapshot; by id alone, since item_alignment
keeps no content hash, so a listing changed since training counts as known here, unlike in the
job) and counts, for each side, the listings flagged under three rules on the same scores:

- "held-out quantile": the thresholds before any move (``before_recentre``, or the ones applied
  on a night that did not recentre);
- "recentred on the whole night": moved down by the whole night's median, as ``recentre`` did
  before it took the new listings' median (2026-12-06, last);
- "applied": the thresholds the night flagged with (``recentre`` over the new listings since then).

The counts are Spark aggregations; nothing per listing comes to the driver. Without labels a flag
is not known to be right or wrong: the figures say where the flags go, which is what the rule
changes. On GroceryStore's `make grocery` catalogue every listing is a clean photo of its product.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)

from _common import write_json  # noqa: E402

from camenn.config import ThresholdConfig, load_config  # noqa: E402


def rule_thresholds(recorded: dict, whole_night_median: dict[str, float]) -> dict[str, dict[str, float]]:
    """rule -> {"ita", "tia"} from a night's recorded thresholds and its whole-night medians (see the module)."""
    applied = {t: float(recorded[t]) for t in ("ita", "tia")}
    before = {t: float(v) for t, v in (recorded.get("before_recentre") or applied).items()}
    rules = {"held-out quantile": before}
    if recorded.get("centre_ita") is not None and recorded.get("centre_tia") is not None:
        held_out = ThresholdConfig(ita=before["ita"], tia=before["tia"], recentre=True,
                                   centre_ita=recorded["centre_ita"], centre_tia=recorded["centre_tia"])
        moved = held_out.recentred(whole_night_median["ita"], whole_night_median["tia"])
        rules["recentred on the whole night"] = {"ita": moved.ita, "tia": moved.tia}
    rules["applied"] = applied
    return rules


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conf", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--run-date", required=True)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    config = load_config(args.conf, args.set)
    run_date = dt.date.fromisoformat(args.run_date)

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from camenn.checkpoint import load_artifact
    from pipeline import flag_rules, run_record
    from pipeline.session import get_spark

    ours = SparkSession.getActiveSession() is None
    spark = get_spark(config)
    try:
        recorded = run_record.published_details(spark, config, run_record.SCORING_JOB, run_date).get("thresholds")
        if not recorded:
            raise SystemExit(f"error: no published scoring night with recorded thresholds for {run_date} under "
                             f"{config.data.root}; run `make grocery` (or `make score`) first")
        scores = run_record.published(spark, config, "item_alignment", run_date, job=run_record.SCORING_JOB)
        versions = sorted(r[0] for r in scores.select("model_version").distinct().collect())
        model = load_artifact(config.model_dir)
        if versions != [model.version]:
            raise SystemExit(f"error: the night of {run_date} was scored by {versions}, the config's model is "
                             f"{model.version}; score the night again or point scoring.model_dir at that model")
        known, why_not = flag_rules.snapshot_listings(spark, config, model.metadata)
        if known is None:
            raise SystemExit(f"error: cannot tell the model's new listings from its trained ones: {why_not}")
        marked = flag_rules.mark_new(scores, known).localCheckpoint()
        medians = marked.agg(*[F.percentile_approx(f"p_{t}", 0.5, 10000).alias(t) for t in ("ita", "tia")]).first()
        rules = rule_thresholds(recorded, {t: float(medians[t]) for t in ("ita", "tia")})
        groups = {"new": F.col("new"), "known": ~F.col("new")}
        counts = [F.count(F.when(cond, 1)).alias(g) for g, cond in groups.items()]
        for rule, thr in rules.items():
            flagged = (F.col("p_ita") < F.lit(thr["ita"])) | (F.col("p_tia") < F.lit(thr["tia"]))
            counts += [F.count(F.when(cond & flagged, 1)).alias(f"{rule}|{g}") for g, cond in groups.items()]
        row = marked.agg(*counts).first().asDict()
    finally:
        if ours:
            spark.stop()

    sizes = {g: int(row[g]) for g in ("new", "known")}
    results = {rule: {"thresholds": thr, **{g: {"flagged": int(row[f"{rule}|{g}"]),
                                               "share": row[f"{rule}|{g}"] / max(1, sizes[g])} for g in sizes}}
               for rule, thr in rules.items()}
    print(f"\n{sum(sizes.values())} listings of {run_date} under {config.data.root} (model {model.version}): "
          f"{sizes['new']} new to the model, {sizes['known']} in its training snapshot")
    print(f"{'rule':32s} {'ITA':>7s} {'TIA':>7s} {'new flagged':>16s} {'known flagged':>16s}")
    for rule, r in results.items():
        print(f"{rule:32s} {r['thresholds']['ita']:7.4f} {r['thresholds']['tia']:7.4f} "
              + " ".join(f"{r[g]['flagged']:>7d} ({r[g]['share']:5.1%})" for g in ("new", "known")))
    figures = {"config": args.conf, "overrides": args.set, "run_date": run_date.isoformat(), "model_version": model.version,
               "listings": sizes, "whole_night_median": {t: float(medians[t]) for t in ("ita", "tia")},
               "recorded": {k: recorded.get(k) for k in ("night_median", "recentred_over", "before_recentre")},
               "rules": results, "platform": platform.platform(),
               "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
