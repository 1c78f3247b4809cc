"""Which alignment thresholds catch the demo world's subtle defects: flags, precision and recall per defect type.

    .venv/bin/python benchmarks/bench_demo_thresholds.py --conf conf/demo.yaml \
        --json benchmarks/results/bench_demo_thresholds.json          # after `make demo`; about a minute

Reads the published ``item_alignment`` rows of the world's run date (the nightly job's p_ita and
p_tia of every item) and the world's ``truth_items`` (which defect each item was given; the jobs
never read it), then flags the same scores under each threshold rule with the job's own
``pipeline.flag_rules.alignment_flags``:

- ``absolute``: ITA and TIA below a fixed value (the demo's 0.5, and lower and higher ones);
- ``category_quantile``: below the q-quantile of the item's category, computed over the night's
  own scores (no labels needed, so a real catalogue can use it as it is);
- ``calibrated``: below the q-quantile of the model's own clean held-out items (recorded in its
  artifact at training, so a new model brings its thresholds).

- ``recentred`` and ``contrast`` (``scoring.thresholds.recentre`` / ``.contrast``, what
  `conf/grocery.yaml` reads with): the demo's 0.6 moved down by as far as the night's median lies
  under the model's held-out median, then each side read against the other; the night's medians
  come from the job's own ``pipeline.flag_rules.night_recentred``. Contrast was chosen on real
  photos, where a photo unlike the training ones lowers both sides; here it asks whether a blurred
  photo or a vague text, which may lower both, is still caught.

For each rule: the share of items flagged, the precision of the flags (flagged items that carry
any defect), the recall of each defect type, and for the defects that have a side (text swap
and vague text: text; image swap and blurred image: image) how often the flag names that side
(``suspect_side`` "both" counts as naming neither). Prints a table and writes ``--json``.
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

from camenn.config import CALIBRATION_CENTRE, ThresholdConfig, load_config  # noqa: E402

SIDE_OF = {"text_swap": "text", "vague_text": "text", "image_swap": "image", "blurred_image": "image"}
RULES = {
    "absolute 0.3": ThresholdConfig(mode="absolute", ita=0.3, tia=0.3),
    "absolute 0.5": ThresholdConfig(mode="absolute", ita=0.5, tia=0.5),
    "absolute 0.6": ThresholdConfig(mode="absolute", ita=0.6, tia=0.6),
    "absolute 0.7": ThresholdConfig(mode="absolute", ita=0.7, tia=0.7),
    "absolute 0.8": ThresholdConfig(mode="absolute", ita=0.8, tia=0.8),
    "absolute 0.9": ThresholdConfig(mode="absolute", ita=0.9, tia=0.9),
    "category quantile 0.02": ThresholdConfig(mode="category_quantile", quantile=0.02),
    "category quantile 0.05": ThresholdConfig(mode="category_quantile", quantile=0.05),
    "category quantile 0.10": ThresholdConfig(mode="category_quantile", quantile=0.10),
    "category quantile 0.15": ThresholdConfig(mode="category_quantile", quantile=0.15),
    # the q-quantile of the model's own clean held-out items, recorded in its artifact at training
    "calibrated 0.02": ThresholdConfig(mode="calibrated", quantile=0.02),
    "calibrated 0.05": ThresholdConfig(mode="calibrated", quantile=0.05),
    "calibrated 0.10": ThresholdConfig(mode="calibrated", quantile=0.10),
}
# absolute thresholds that the night recentres (around the model's held-out medians) and reads with contrast
CENTRED_RULES = {
    "absolute 0.6, recentred": {"ita": 0.6, "tia": 0.6, "contrast": 0.0},
    "absolute 0.6, recentred, contrast 0.1": {"ita": 0.6, "tia": 0.6, "contrast": 0.1},
    "absolute 0.6, recentred, contrast 0.25": {"ita": 0.6, "tia": 0.6, "contrast": 0.25},
}


def centred_rule(setting: dict, metrics: dict) -> ThresholdConfig:
    """An absolute rule of CENTRED_RULES with the model's held-out medians as its centres."""
    centres = {f"centre_{t}": metrics.get(f"{t}_clean_{CALIBRATION_CENTRE}") for t in ("ita", "tia")}
    if any(v is None for v in centres.values()):
        raise SystemExit(f"error: the model records no held-out median ({CALIBRATION_CENTRE}) to recentre on; retrain it")
    return ThresholdConfig(mode="absolute", recentre=True, **setting, **centres)


def rule_metrics(flags) -> dict:
    """flags: a pandas frame of item_id, defect, flag, suspect_side; the figures of one rule."""
    defect = flags["defect"] != "none"
    flagged = flags["flag"]
    out = {"items": int(len(flags)), "flagged": int(flagged.sum()), "flagged_share": float(flagged.mean()),
           "precision": float(defect[flagged].mean()) if flagged.any() else None,
           "recall_any_defect": float(flagged[defect].mean()) if defect.any() else None,
           "clean_flagged_share": float(flagged[~defect].mean()) if (~defect).any() else None,
           "recall": {}, "side_named": {}}
    for kind, rows in flags[defect].groupby("defect"):
        out["recall"][kind] = {"n": int(len(rows)), "recall": float(rows["flag"].mean())}
        if kind in SIDE_OF and rows["flag"].any():
            hit = rows[rows["flag"]]
            out["side_named"][kind] = float((hit["suspect_side"] == SIDE_OF[kind]).mean())
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "conf" / "demo.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run-date", default=None, help="the scored date (default: the world's run date)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    config = load_config(args.conf, args.set)
    run_date = dt.date.fromisoformat(args.run_date) if args.run_date else config.world.run_date

    from pyspark.sql import SparkSession

    from camenn.checkpoint import load_artifact
    from pipeline import flag_rules, run_record, tables
    from pipeline.session import get_spark

    ours = SparkSession.getActiveSession() is None
    spark = get_spark(config)
    try:
        scores = (run_record.published(spark, config, "item_alignment", run_date, job=run_record.SCORING_JOB)
                  .select("item_id", "merchant_id", "category", "p_ita", "p_tia", "model_version"))
        truth = tables.read_table(spark, config, "truth_items").select("item_id", "defect")
        scores = scores.join(truth, "item_id").localCheckpoint()
        n = scores.count()
        if n == 0:
            raise SystemExit(f"error: no published item_alignment rows with truth for {run_date} under {config.data.root}; "
                             "run `make demo` first")
        versions = sorted(r[0] for r in scores.select("model_version").distinct().collect())
        model = load_artifact(config.model_dir)
        if versions != [model.version]:
            raise SystemExit(f"error: the night of {run_date} was scored by {versions}, the config's model is "
                             f"{model.version}; rerun `make demo` or point scoring.model_dir at that model")
        metrics = model.metadata.get("metrics") or {}
        configured = {**RULES, **{name: centred_rule(setting, metrics) for name, setting in CENTRED_RULES.items()}}
        rules = {name: rule.for_model(metrics, model.version) for name, rule in configured.items()}
        # the night's own medians, as the job takes them (all listings when the model's training snapshot is not here)
        rules.update({name: flag_rules.night_recentred(spark, config, scores, rules[name], model.metadata)[0]
                      for name in CENTRED_RULES})
        results = {}
        for name, rule in rules.items():
            flags = flag_rules.alignment_flags(scores, rule).select("item_id", "defect", "flag", "suspect_side").toPandas()
            results[name] = rule_metrics(flags)
    finally:
        if ours:
            spark.stop()

    kinds = sorted({k for r in results.values() for k in r["recall"]})
    print(f"\n{n} items of {run_date} under {config.data.root} (model {', '.join(versions)})")
    print(f"{'rule':40s} {'flagged':>8s} {'precision':>9s} " + " ".join(f"{k[:14]:>14s}" for k in kinds))
    for name, r in results.items():
        prec = f"{r['precision']:.3f}" if r["precision"] is not None else "-"
        print(f"{name:40s} {r['flagged_share']:8.3f} {prec:>9s} "
              + " ".join(f"{r['recall'][k]['recall']:14.3f}" for k in kinds))
    figures = {"config": args.conf, "overrides": args.set, "run_date": run_date.isoformat(), "items": n,
               "model_versions": versions, "platform": platform.platform(),
               "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
               "rules": {name: {"rule": configured[name].model_dump(), "resolved": rules[name].model_dump(), **r}
                         for name, r in results.items()}}
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
