"""GroceryStore: planted swaps among a catalogue the model mostly trained on, the case of a new shop.

    /tmp/jobslot .venv/bin/python benchmarks/bench_grocery_chain_plants.py --source data/grocery \
        --root runs/bench/grocery-chain-plants --json benchmarks/results/bench_grocery_chain_plants.json

Runs after `make grocery`. bench_grocery_flags.py scores the 296 validation photos alone, so every
listing of its night is new to the model. A real catalogue is mostly listings the model trained on
with a few new ones; the `make grocery` catalogue is that: 2,640 training photos and 296 new ones.

1. Copies the chain's tables (``--source``: items, the feature and model caches, training_items
   with its history, so the model's pinned version reads) under ``--root``; the chain's own tables
   are never written.
2. Plants the same swaps as bench_grocery_flags.py (same function and seed: 5% text swaps and 5%
   image swaps of the validation photos) and merges them with jobs/ingest_catalog.py, so only those
   listings change and the night encodes only them.
3. Runs the nightly job with conf/grocery.yaml as it is (the chain's model, its calibrated
   thresholds at the configured quantile, ``recentre`` over the listings new to the model).
4. From the published scores: precision, recall and clean listings flagged for the job's own flags
   and, on the same scores, for the thresholds before any move and for the move by the whole
   night's median (as ``recentre`` did before it took the new listings' median; new_listing_flags.rule_thresholds), over
   the whole catalogue and over its new listings; and for the same move from each held-out quantile
   the artifact records (ThresholdConfig.for_model and .recentred, the job's own functions), a dial
   of ``scoring.thresholds.quantile``.
5. Rules beside the job's, on the same scores (:func:`candidate_rules`):
   each quantile read off a normal fitted on the logit scale to the held-out median and 5% and 10%
   quantiles ("logit-normal tail"), and each quantile's distance under the median stretched by as
   much as the new listings' lower half is wider than the held-out items' ("rescaled", the job's
   ``scoring.thresholds.rescale``); neither was adopted (docs/results/grocery-store.md, "2026-12-07,
   evening"). And each side read against the other at CONTRASTS (``scoring.thresholds.contrast``;
   conf/grocery.yaml applies 0.1 since 2026-12-07 night, so the "applied" row is that rule and the
   "recentred on the new listings" rows are the same thresholds read side by side). The night's
   scores go into the JSON (``scores``), so a rule can be judged later without another night
   (``--rejudge``).

``--plant categories`` plants wrong categories instead of swaps: as many validation listings filed
under another coarse class, photo and text as they were. The grocery model reads the category in the
item's [CLS] on both sides, so a wrong one can lower both scores, which is what contrast spares.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from statistics import NormalDist

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)

import numpy as np  # noqa: E402
from _common import write_json  # noqa: E402
from bench_grocery import DATA, ingest, read_classes, read_split, say, score_night, write_export  # noqa: E402
from bench_grocery_flags import CONTRAST_RULE, flag_metrics, plant, plant_categories, rule_flags  # noqa: E402
from new_listing_flags import rule_thresholds  # noqa: E402

from camenn.config import CALIBRATION_QUANTILES, CALIBRATION_QUARTILE, ThresholdConfig, load_config  # noqa: E402
from camenn.logits import logit, sigmoid  # noqa: E402

COPIED = ("items", "item_features", "item_model_outputs", "training_items")
CONTRASTS = (0.1, 0.25)   # scoring.thresholds.contrast values judged beside the job's rule


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "conf" / "grocery.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data", default=str(DATA), help="the GroceryStore folder (train.txt, val.txt, classes.csv)")
    p.add_argument("--source", default=str(_ROOT / "data" / "grocery"), help="the tables `make grocery` wrote")
    p.add_argument("--root", default=str(_ROOT / "runs" / "bench" / "grocery-chain-plants"))
    p.add_argument("--run-date", default="2026-11-24", help="the chain's run date (the Makefile's RUN_DATE)")
    p.add_argument("--share", type=float, default=0.05, help="share of validation photos per side with a planted swap")
    p.add_argument("--plant", choices=("swaps", "categories"), default="swaps",
                   help="swaps: text and image swaps (bench_grocery_flags.plant); categories: as many listings filed "
                        "under another coarse class, photo and text kept (a wrong category, which lowers both sides)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--rejudge", nargs="+", metavar="RESULT", default=[],
                   help="judge the candidate rules a committed result lacks on its saved scores, in place; runs no night")
    return p.parse_args(argv)


def candidate_rules(metrics: dict, night_median: dict[str, float], new_scores: dict[str, np.ndarray]) -> dict:
    """rule -> {"ita", "tia"}: rules the job does not apply, from the model's held-out quantiles
    (``metrics``), the new listings' median as the job took it, and their scores (per side).

    All on the logit scale, from the recentred centre (the held-out median moved down to the night's,
    never up, as ThresholdConfig.recentred does):
    - logit-normal tail: centre + z(q) x the spread that fits the held-out 5% and 10% quantiles'
      distances under the median best (least squares through the centre); dozens of held-out items
      decide it where the observed 1% rests on the third-lowest of 259;
    - rescaled: centre + (the held-out q's distance under the median) x max(1, the new listings'
      median-to-lower-quartile distance / the held-out items'); never narrower, as recentring never
      moves up. The job's ``scoring.thresholds.rescale`` (ThresholdConfig.recentred), with the lower
      quartile taken as Spark's percentile_approx takes it. Needs the held-out lower quartile
      (``*_clean_q25``, recorded since 2026-12-07).
    - contrast c (CONTRASTS): the job's recentred thresholds, each side's logit compared less c x the
      other side's above the new listings' median (``scoring.thresholds.contrast``, ThresholdConfig.below);
      these rules carry the whole ThresholdConfig they were judged with.
    """
    z = NormalDist().inv_cdf
    shares = (0.05, 0.10)
    zs = np.array([z(share) for share in shares])                                                   # (2,)
    rules: dict[str, dict[str, float]] = {}
    for q in CALIBRATION_QUANTILES:
        tail = {}
        for t in ("ita", "tia"):
            centre = float(logit(metrics[f"{t}_clean_q50"]))
            moved = centre + min(0.0, float(logit(night_median[t])) - centre)
            gaps = np.array([float(logit(metrics[f"{t}_clean_q{round(share * 100):02d}"])) - centre for share in shares])
            tail[t] = float(sigmoid(moved + z(q) * float(zs @ gaps / (zs @ zs))))
        rules[f"quantile {q:g}, logit-normal tail, recentred on the new listings"] = tail
        if all(f"{t}_clean_{CALIBRATION_QUARTILE}" in metrics for t in ("ita", "tia")):   # the job's own rule
            rule = (ThresholdConfig(mode="calibrated", quantile=q, recentre=True, rescale=True).for_model(metrics, "model")
                    .recentred(night_median["ita"], night_median["tia"],
                               {t: float(np.quantile(new_scores[t], 0.25, method="inverted_cdf")) for t in ("ita", "tia")}))
            rules[f"quantile {q:g}, recentred and rescaled on the new listings"] = {"ita": rule.ita, "tia": rule.tia}
        for c in CONTRASTS:
            rule = (ThresholdConfig(mode="calibrated", quantile=q, recentre=True, contrast=c).for_model(metrics, "model")
                    .recentred(night_median["ita"], night_median["tia"]))
            rules[f"quantile {q:g}, recentred, contrast {c:g}"] = rule.model_dump(include=set(CONTRAST_RULE))
    return rules


def judge(rules: dict, rows: list[dict], damaged: dict[str, str], across: set[str]) -> dict:
    """Each rule's figures over the catalogue (``rows``: item_id, p_ita, p_tia, new and, for "applied", the
    job's flag) and over its new listings."""
    is_new = np.array([bool(r["new"]) for r in rows])
    new = [r for r in rows if r["new"]]
    results = {}
    for rule, thr in rules.items():
        flags, suspicion = (np.array([bool(r["flag"]) for r in rows]), None) if rule == "applied" else rule_flags(thr, rows)
        flag_of = dict(zip((r["item_id"] for r in rows), flags))
        results[rule] = {"thresholds": thr,
                         "catalogue": flag_metrics(rows, damaged, lambda r, f=flag_of: f[r["item_id"]], across, suspicion),
                         "new_listings": flag_metrics(new, damaged, lambda r, f=flag_of: f[r["item_id"]], across,
                                                      None if suspicion is None else suspicion[is_new]),
                         "known_flagged": int(flags[~is_new].sum())}
    return results


def rejudge(path: str) -> dict:
    """A committed result with the candidate rules it lacks judged on its saved scores (``scores``), no night run:
    the known listings' ids are not saved, so they are numbered; every rule it has stays as it is."""
    figures = json.loads(Path(path).read_text())
    if "scores" not in figures:
        raise SystemExit(f"error: {path} saved no scores (a result from before 2026-12-07 evening): run its night again")
    saved, applied = figures["scores"], figures["applied_thresholds"]
    rows = [{**r, "new": True} for r in saved["new"]] + [
        {"item_id": f"known-{k}", "p_ita": a, "p_tia": b, "new": False} for k, (a, b) in enumerate(zip(*saved["known"].values()))]
    new_scores = {t: np.array([r[f"p_{t}"] for r in saved["new"]]) for t in ("ita", "tia")}
    missing = {k: v for k, v in candidate_rules(figures["held_out"], applied["night_median"], new_scores).items()
               if k not in figures["rules"]}
    damaged = {i: plant.split()[0] for i, plant in figures["plants"].items()}   # "text from another class" -> text
    across = {i for i, plant in figures["plants"].items() if "another class" in plant}
    figures["rules"].update(judge(missing, rows, damaged, across))
    figures.setdefault("rejudged", []).append({"created": dt.datetime.now().isoformat(timespec="seconds"), "rules": sorted(missing)})
    Path(path).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"{path}: {len(missing)} rules judged on its saved scores")
    return figures


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.rejudge:
        return {path: rejudge(path) for path in args.rejudge}
    t0 = time.perf_counter()
    data, source, root = Path(args.data).resolve(), Path(args.source).resolve(), Path(args.root).resolve()
    run_date = dt.date.fromisoformat(args.run_date)
    missing = [name for name in COPIED if not (source / name / "_delta_log").is_dir()]
    if missing:
        raise SystemExit(f"error: no {missing} under {source}; run `make grocery` first")
    say(f"copy the chain's tables {list(COPIED)} from {source} to {root / 'tables'}", t0)
    shutil.rmtree(root, ignore_errors=True)
    for name in COPIED:
        shutil.copytree(source / name, root / "tables" / name)
    sets = [*args.set, f"data.root={root / 'tables'}", f"report.out_dir={root / 'reports'}"]
    config = load_config(args.conf, sets)

    from pyspark.sql import SparkSession

    from pipeline.session import get_spark

    ours = SparkSession.getActiveSession() is None
    spark = get_spark(config)
    planter, planted_kind = (plant, "swap") if args.plant == "swaps" else (plant_categories, "wrong category")
    rows, damaged = planter(read_split(data, "val", read_classes(data), None), args.share, np.random.default_rng(args.seed))
    planted = [r for r in rows if r["photo_id"] in damaged]
    say(f"merge {len(planted)} validation photos with a planted {planted_kind} into the copy", t0)
    ingest(args.conf, sets, write_export(planted, root / "exports" / "val-planted.csv"), data, "merge")

    say("the nightly job with the config as it is", t0)
    nightly_s = score_night(args.conf, sets, run_date)


    from camenn.checkpoint import load_artifact
    from pipeline import flag_rules, run_record

    scores = run_record.published(spark, config, "item_alignment", run_date, job=run_record.SCORING_JOB)
    applied = run_record.published_details(spark, config, run_record.SCORING_JOB, run_date)["thresholds"]
    metadata = load_artifact(config.model_dir).metadata
    known, why_not = flag_rules.snapshot_listings(spark, config, metadata)
    if known is None:
        raise SystemExit(f"error: {why_not}")
    out = [r.asDict() for r in flag_rules.mark_new(scores, known)
           .select("item_id", "p_ita", "p_tia", "flag", "suspect_side", "new").collect()]
    if ours:
        spark.stop()
    whole = {t: float(np.sort([r[f"p_{t}"] for r in out])[(len(out) - 1) // 2]) for t in ("ita", "tia")}   # the lower middle
    rules = rule_thresholds(applied, whole)
    if applied.get("recentred_over", {}).get("listings") == "new":
        # the same move at each quantile the artifact records: how the quantile trades recall for precision
        for q in CALIBRATION_QUANTILES:
            at_q = (config.scoring.thresholds.model_copy(update={"quantile": q}).for_model(metadata["metrics"], config.model_dir)
                    .recentred(applied["night_median"]["ita"], applied["night_median"]["tia"]))
            rules[f"quantile {q:g}, recentred on the new listings"] = {"ita": at_q.ita, "tia": at_q.tia}
        new_scores = {t: np.array([r[f"p_{t}"] for r in out if r["new"]]) for t in ("ita", "tia")}
        rules.update(candidate_rules(metadata["metrics"], applied["night_median"], new_scores))
    plant_of = {r["photo_id"]: r.get("plant") for r in rows}
    across = {i for i in damaged if "another class" in plant_of[i]}
    new = [r for r in out if r["new"]]
    results = judge(rules, out, damaged, across)
    figures = {
        "benchmark": "bench_grocery_chain_plants", "created": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/bench_grocery_chain_plants.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count()}, "model_dir": config.model_dir, "source": str(source), "root": str(root),
        "listings": {"scored": len(out), "new": len(new), "known": len(out) - len(new), "damaged": len(damaged),
                     "damaged_new": sum(r["item_id"] in damaged for r in new)},
        "plants": {i: plant_of[i] for i in sorted(damaged)},
        "applied_thresholds": applied, "whole_night_median": whole,
        # the night's scores, for rules judged later: the new listings by id, the known ones' as two lists (~160 kB a result)
        "scores": {"new": [{"item_id": r["item_id"], "p_ita": round(r["p_ita"], 7), "p_tia": round(r["p_tia"], 7),
                            "damaged": r["item_id"] in damaged} for r in new],
                   "known": {t: [round(r[f"p_{t}"], 7) for r in out if not r["new"]] for t in ("ita", "tia")}},
        "held_out": {k: v for k, v in metadata["metrics"].items() if "_clean_" in k},
        # the job flags by the thresholds it recorded: a check of the "applied" row
        "below_the_applied": int(rule_flags(applied, out)[0].sum()),
        "rules": results, "seconds": {"nightly_job": nightly_s, "total": time.perf_counter() - t0,
                                       # the model's own training time, as its artifact records it
                                       "train_fn": metadata["metrics"].get("total_seconds")},
    }
    print(f"\n{len(out)} listings ({len(new)} new to the model, {len(damaged)} of them with a planted {planted_kind}); "
          f"recentred over {applied.get('recentred_over')}")
    print("| thresholds | ITA / TIA | precision | recall | clean flagged (catalogue) | clean new listings flagged | "
          "known listings flagged |\n|---|---|---|---|---|---|---|")
    for rule, r in results.items():
        c, n = r["catalogue"], r["new_listings"]
        print(f"| {rule} | {r['thresholds']['ita']:.3f} / {r['thresholds']['tia']:.3f} | {c['precision']:.3f} | "
              f"{c['recall']:.3f} | {c['clean_flagged_share']:.1%} | {n['clean_flagged_share']:.1%} | {r['known_flagged']} |")
    print(f"detection AUROC {results['applied']['catalogue']['auroc']:.3f} over the catalogue, "
          f"{results['applied']['new_listings']['auroc']:.3f} over the new listings; the best single threshold: "
          f"precision {results['applied']['catalogue']['oracle_precision_at_recall_0.8']:.3f} at recall 0.8")
    write_json(args.json, figures)
    say(f"done in {figures['seconds']['total']:.0f}s", t0)
    return figures


if __name__ == "__main__":
    main()
