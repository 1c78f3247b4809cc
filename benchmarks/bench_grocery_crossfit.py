"""GroceryStore: does training on the catalogue's own listings close the gap on photos unlike the training ones?

    /tmp/jobslot .venv/bin/python benchmarks/bench_grocery_crossfit.py --bench-root runs/bench/grocery-views \
        --variant "augmented, 8 epochs:training.hard_negative_share=0.5,..." --json benchmarks/results/bench_grocery_crossfit.json

Runs after benchmarks/bench_grocery.py, on its tables (training photos, their views and the encoded
validation photos) and with one of its variants' settings.

Why: a model trained on the GroceryStore training photos ranks its own held-out photos almost
perfectly (planted-swap AUROC 0.999, precision 1.0 at recall 0.8; bench_grocery_reference.py) and
the validation photos, taken in another session, much worse (0.97, 0.75). A nightly system trains
on its own catalogue, so the listings it scores are mostly of the kind it trained on; the
GroceryStore split is the harder case of a model meeting a new shop's photos for the first time.
This bench measures the first case on the same photos without ever scoring a photo its model saw:

- the validation photos are split in two folds by a hash of their id;
- for each fold, a copy of the tables without the other fold's photos (a Delta DELETE on the copy)
  trains the variant: training photos, views and this fold's validation photos, every listing as
  it is (a true pair), as a night's retraining would take the catalogue;
- each validation listing (clean, or with another validation photo's text or photo, the pairs of
  bench_grocery) is scored by the model that never saw its photo (cross-fitting).

Reported beside bench_grocery_reference's figures of the model trained without any validation photo:
accuracy at 0.5 and at the cut chosen on the held-out training photos, AUROC, and the flags at the
2% quantile of the held-out training photos' clean scores, with precision at a 10% share of
damaged listings. This is not the issue's protocol (its validation photos are never trained on);
it measures what retraining on the catalogue buys.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
from _common import write_json  # noqa: E402
from bench_grocery import DATA, RUN_DATE, is_view, parse_variants, partners, read_classes, read_split, say, slug  # noqa: E402
from bench_grocery_reference import best_cut, flag_metrics, listings_of, pair_logits, pair_metrics  # noqa: E402

from camenn.config import load_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "conf" / "grocery.yaml"))
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--bench-root", default=str(_ROOT / "runs" / "bench" / "grocery"))
    p.add_argument("--variant", required=True, metavar="NAME:KEY=VALUE,...", help="as bench_grocery's --variant")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--reuse", action="store_true",
                   help="score with the folds' models of an earlier run (no training); an existing --json file keeps "
                        "that run's command and seconds under training_run")
    p.add_argument("--flag-quantile", type=float, default=0.02)
    p.add_argument("--damaged-share", type=float, default=0.1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as given to bench_grocery.py")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also draw where clean and swapped listings fall against the flag thresholds, for the variant "
                        "trained without validation photos (bench_grocery's) and for the folds' models")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def fold_of(item_id: str, folds: int) -> int:
    return int(hashlib.sha256(item_id.encode()).hexdigest()[:8], 16) % folds


def fold_tables(spark, src: Path, dst: Path, drop: list[str]) -> None:
    """A copy of the bench's tables without the listings ``drop`` (Delta's log paths are relative)."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    DeltaTable.forPath(spark, str(dst / "items")).delete(F.col("item_id").isin(drop))


def draw(path: str, panels: dict) -> None:
    """One panel per model: the lower of a listing's two margins over the flag thresholds (< 0 = flagged), for the
    held-out training photos (clean), the validation photos (clean) and the validation listings with a swap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), sharex=True, sharey=True)
    bins = np.linspace(-13, 8, 64)
    for ax, (title, (held_out, margins)) in zip(np.atleast_1d(axes), panels.items()):
        swaps = np.concatenate([m.min(1) for kind, m in margins.items() if "swap" in kind])
        series = [("validation photos, swapped", swaps, "tab:red"), ("validation photos, clean", margins["clean"].min(1), "tab:blue")]
        if held_out is not None:
            series.append(("held-out training photos, clean", held_out.min(1), "tab:gray"))
        for label, x, color in series:
            ax.hist(np.clip(x, bins[0], bins[-1]), bins=bins, density=True, histtype="step", lw=1.6, color=color,
                    label=f"{label} ({(x < 0).mean():.0%} flagged)")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("min over ITA, TIA of (logit - 2% quantile of held-out clean), clipped")
        ax.legend(fontsize=8, loc="upper left")
    np.atleast_1d(axes)[0].set_ylabel("density")
    fig.suptitle("GroceryStore validation photos: where clean and swapped listings fall against the flag thresholds")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    root = Path(args.bench_root).resolve()
    (name, vsets), = parse_variants([args.variant]).items()
    config = load_config(args.conf, [f"data.root={root / 'tables'}", *args.set])
    from pyspark.sql import SparkSession

    from camenn.checkpoint import load_artifact
    from camenn.inputs import FeatureVocab
    from camenn.training import item_split
    from pipeline.session import get_spark
    from pipeline.train import run_training
    from pipeline.training_data import load_item_store

    ours = SparkSession.getActiveSession() is None
    spark = get_spark(config)
    listed = sorted(r.item_id for r in spark.read.format("delta").load(config.table("items"))
                    .where("item_id LIKE 'val-%'").select("item_id").collect())   # 296 ids (and views): small
    # test-time views of the validation photos (bench_grocery --val-views) leave both folds' tables: a
    # view is split by its own id, so a kept one could carry a scored photo into training
    val_ids = [i for i in listed if not is_view(i)]
    val_views = [i for i in listed if is_view(i)]
    say(f"{len(val_ids)} validation photos in {args.folds} folds: "
        f"{[sum(fold_of(i, args.folds) == f for i in val_ids) for f in range(args.folds)]}", t0)

    models, seconds = {}, {}
    for f in range(args.folds):
        froot = root / "crossfit" / f"fold-{f}"
        if args.reuse:
            models[f] = load_artifact(str(froot / "model"))
            continue
        fold_tables(spark, root / "tables", froot / "tables", [i for i in val_ids if fold_of(i, args.folds) != f] + val_views)
        fconfig = load_config(args.conf, [f"data.root={froot / 'tables'}", "scoring.test_time_views=0", *args.set, *vsets,
                                          f"training.artifact_dir={froot / 'model'}"])
        say(f"fold {f}: train {name!r} on the training photos, views and this fold's validation photos", t0)
        t = time.perf_counter()
        result = run_training(spark, fconfig, run_date=RUN_DATE)
        seconds[f"train fold {f}"] = time.perf_counter() - t
        say(result.summary(), t0)
        models[f] = load_artifact(result.artifact)

    art = models[0]
    vocab = FeatureVocab.from_dict(art.metadata["vocab"])
    store = load_item_store(spark, config.table("item_features"), None, config.table("items"), None,
                            art.metadata["encoder_fingerprint"], vocab, art.config.n_patches)
    data = Path(args.data).resolve()
    classes = read_classes(data)
    info = {r["photo_id"]: r for split in ("train", "val") for r in read_split(data, split, classes, None)}
    base = [i.split("-aug")[0] for i in store.item_ids]
    fine = np.array([info[b]["fine_class"] for b in base])
    coarse = np.array([info[b]["coarse_class"] for b in base])
    fold = np.array([fold_of(i, args.folds) if i.startswith("val-") and not is_view(i) else -1 for i in store.item_ids])
    sp = config.training.split
    held_out = np.flatnonzero([not is_view(i) and not i.startswith("val-")
                               and item_split(i, sp.test_fraction, sp.valid_fraction, sp.seed) == "test" for i in store.item_ids])
    val_idx = np.flatnonzero(fold >= 0)

    rng = np.random.default_rng(0)   # bench_grocery's pairs
    donor_random = partners(fine[val_idx], coarse[val_idx], False, rng)
    donor_hard = partners(fine[val_idx], coarse[val_idx], True, rng)
    lists = listings_of(val_idx, donor_random, donor_hard)
    rng = np.random.default_rng(0)
    h_lists = listings_of(held_out, partners(fine[held_out], coarse[held_out], False, rng),
                          partners(fine[held_out], coarse[held_out], True, rng))

    # each model's cuts and flag thresholds from the held-out training photos, then each listing scored by the model
    # that never saw its photo, as a margin over that model's cut (so the listings of both models share one scale)
    logits, margins, flag_margins, cuts = {}, {}, {}, {}
    for f, a in models.items():
        h = {kind: pair_logits(a.model, store, *rows) for kind, rows in h_lists.items()}
        cuts[f] = {"cut": [best_cut(h["clean"][:, 0], h["text_swap_random"][:, 0]),
                           best_cut(h["clean"][:, 1], h["image_swap_random"][:, 1])],
                   "flag": np.quantile(h["clean"], args.flag_quantile, axis=0).tolist()}
    for kind, (text, image, feat) in lists.items():
        logits[kind] = np.zeros((len(text), 2))
        margins[kind], flag_margins[kind] = np.zeros((len(text), 2)), np.zeros((len(text), 2))
        for f, a in models.items():
            mine = fold[image] != f            # this model never saw these photos
            out = pair_logits(a.model, store, text[mine], image[mine], feat[mine])   # (m, 2)
            logits[kind][mine] = out
            margins[kind][mine], flag_margins[kind][mine] = out - cuts[f]["cut"], out - cuts[f]["flag"]
    results = {}
    for kind in ("random", "hard"):
        pos = "clean" if kind == "random" else "clean_hard"
        results[kind] = {
            t: {"at_0.5": pair_metrics(logits[pos][:, c], logits[f"{side}_swap_{kind}"][:, c], 0.0),
                "at_the_cut": pair_metrics(margins[pos][:, c], margins[f"{side}_swap_{kind}"][:, c], 0.0)}
            for t, c, side in (("ita", 0, "text"), ("tia", 1, "image"))}
    results["flags"] = flag_metrics(flag_margins, np.zeros(2), args.damaged_share)
    results["flags_at_the_cuts"] = flag_metrics(margins, np.zeros(2), args.damaged_share)
    if args.plot:
        base = load_artifact(str(root / "model" / slug(name)))
        h = {kind: pair_logits(base.model, store, *rows) for kind, rows in h_lists.items()}
        flag = np.quantile(h["clean"], args.flag_quantile, axis=0)
        base_margins = {kind: pair_logits(base.model, store, *rows) - flag for kind, rows in lists.items()}
        draw(args.plot, {"trained without validation photos": (h["clean"] - flag, base_margins),
                         f"each photo scored by the fold model that never saw it ({args.folds} folds)":
                             (None, flag_margins)})
    seconds["total"] = time.perf_counter() - t0

    r, fl = results, results["flags"]
    lines = ["| scored by | random: ITA acc at 0.5 / at the cut / AUROC | random: TIA | same class: ITA | same class: TIA "
             "| flags: clean flagged / swaps caught / precision | best precision at recall 0.8 | detection AUROC |",
             "|---" * 7 + "|",
             f"| the fold's model that never saw the photo ({args.folds} folds) | "
             + " | ".join(f"{r[kind][t]['at_0.5']['acc']:.3f} / {r[kind][t]['at_the_cut']['acc']:.3f} / "
                          f"{r[kind][t]['at_0.5']['auroc']:.3f}" for kind in ("random", "hard") for t in ("ita", "tia"))
             + f" | {fl['clean_flagged']:.3f} / {fl['swaps_caught']:.3f} / {fl['precision']:.3f} | "
               f"{fl['best_precision_at_recall_0.8']:.3f} | {fl['auroc']:.3f} |"]
    print("\n".join(lines), flush=True)

    import torch

    figures = {"benchmark": "bench_grocery_crossfit", "created": dt.datetime.now().isoformat(timespec="seconds"),
               "command": " ".join(["benchmarks/bench_grocery_crossfit.py", *(argv if argv is not None else sys.argv[1:])]),
               "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
               "variant": {"name": name, "overrides": vsets}, "folds": args.folds,
               "models": {f: {"version": a.version, "training_held_out": a.metadata.get("metrics"), **cuts[f]}
                          for f, a in models.items()},
               "validation_photos": int(len(val_idx)), "held_out_photos": int(len(held_out)),
               "results": results, "table": lines, "seconds": seconds}
    if args.reuse and args.json and Path(args.json).is_file():
        # the models of the run that trained them: keep that run's command and seconds beside the new figures
        earlier = json.loads(Path(args.json).read_text())
        figures["training_run"] = earlier.get("training_run") or {k: earlier[k] for k in ("command", "created", "seconds")}
    write_json(args.json, figures)
    say(f"done in {seconds['total']:.0f}s", t0)
    if ours:
        spark.stop()
    return figures


if __name__ == "__main__":
    main()
