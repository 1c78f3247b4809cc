"""GroceryStore: the chain's planted-swap night for one more training seed of a setting, trained the way `make grocery` trains.

    /tmp/jobslot .venv/bin/python benchmarks/bench_grocery_chain_seeds.py --seed 2 --name plain \
        --set training.ema_decay=null --json benchmarks/results/bench_grocery_chain_seed_2_plain.json
    /tmp/jobslot .venv/bin/python benchmarks/bench_grocery_chain_seeds.py --seed 2 --name ema \
        --set training.ema_decay=0.99 --json benchmarks/results/bench_grocery_chain_seed_2_ema.json
    .venv/bin/python benchmarks/bench_grocery_chain_seeds.py --summarise benchmarks/results/bench_grocery_chain_seed_*.json \
        --json benchmarks/results/bench_grocery_chain_seeds.json --plot docs/img/grocery_chain_seeds.png

Runs after `make grocery`. A single night's precision spreads widely over training seeds (docs/results/grocery-store.md,
"2026-12-06 evening"), so a training setting is judged here over several seeds of it, each on the
same plants. For one seed, under ``runs/bench/grocery-chain-<name>-seed-<seed>``:

1. a copy of the chain's feature caches and exports, so no photo is encoded again;
2. jobs/ingest_catalog.py: the 2,640 training photos;
3. jobs/train.py with the Makefile's GROCERY_TRAIN_ARGS (``make grocery-train-args``), the seed and
   ``--set`` (the setting under test), one torch thread so two seeds can run side by side;
4. jobs/ingest_catalog.py: the 296 validation photos merged in, as `make grocery` does;
5. bench_grocery_chain_plants.py on that root: the same plants, the job's own flags, its JSON.

``--summarise`` reads such JSONs (of one draw of plants) and prints, per setting (the name in each JSON), the mean and sd
over its seeds of what the job's flags give and of the ranking among the new listings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from bench_grocery import DATA, say  # noqa: E402

sys.path.insert(0, str(_ROOT))
from camenn.config import CALIBRATION_QUANTILES  # noqa: E402

RUN_DATE = "2026-11-24"   # the Makefile's RUN_DATE, as bench_grocery_chain_plants.py assumes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "conf" / "grocery.yaml"))
    p.add_argument("--data", default=str(DATA), help="the GroceryStore folder")
    p.add_argument("--source", default=str(_ROOT / "data" / "grocery"), help="the tables `make grocery` wrote")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--name", default="plain", help="the setting's name (folder names, the summary's rows)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the setting, on top of GROCERY_TRAIN_ARGS")
    p.add_argument("--chain-only", action="store_true", help="the night alone again, on a seed's root trained before")
    p.add_argument("--plants-seed", type=int, default=0,
                   help="the seed of the planted swaps (bench_grocery_chain_plants.py --seed); another than 0 tests a "
                        "choice made on the plants of seed 0 on other swaps of the same photos")
    p.add_argument("--json", default=None)
    p.add_argument("--summarise", nargs="+", default=None, metavar="JSON")
    p.add_argument("--plot", default=None, metavar="PNG", help="with --summarise: the seeds' figures as dots")
    p.add_argument("--frontier", default=None, metavar="PNG",
                   help="with --summarise: precision against recall of each rule family over the quantiles (the dial)")
    return p.parse_args(argv)


def submit(*args: str) -> None:
    subprocess.run([str(_ROOT / ".venv" / "bin" / "spark-submit"), *args], cwd=_ROOT, check=True)


def train_args() -> list[str]:
    out = subprocess.run(["make", "-s", "grocery-train-args"], cwd=_ROOT, check=True, capture_output=True, text=True)
    return out.stdout.split()


def one_seed(args) -> dict:
    t0 = time.perf_counter()
    root = _ROOT / "runs" / "bench" / f"grocery-chain-{args.name}-seed-{args.seed}"
    trained = None
    if args.chain_only:
        if not (root / "model" / "LATEST").is_file():
            raise SystemExit(f"error: no model under {root}; run this seed without --chain-only first")
    else:
        trained = train_seed(args, root, t0)
    from bench_grocery_chain_plants import main as chain_plants

    plants = f"-plants-{args.plants_seed}" if args.plants_seed else ""
    figures = chain_plants(["--conf", args.conf, "--data", args.data, "--source", str(root / "tables"), "--seed", str(args.plants_seed),
                            "--root", str(_ROOT / "runs" / "bench" / f"grocery-chain-plants-{args.name}-seed-{args.seed}{plants}"),
                            "--set", f"training.artifact_dir={root / 'model'}",
                            "--set", f"tracking.uri=sqlite:///{root / 'mlflow' / 'mlflow.db'}"])   # its JSON: ours, below
    figures.update(setting={"name": args.name, "seed": args.seed, "sets": args.set, "plants_seed": args.plants_seed},
                   command=" ".join(["benchmarks/bench_grocery_chain_seeds.py", *sys.argv[1:]]))
    if trained is not None:
        figures["setting"]["grocery_train_args"] = trained["grocery_train_args"]
        figures["seconds"].update(training_job=trained["seconds"], with_training=time.perf_counter() - t0)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    say(f"done in {time.perf_counter() - t0:.0f}s", t0)
    return figures


def train_seed(args, root: Path, t0: float) -> dict:
    """Steps 1-4 on a fresh ``root``: the training job's seconds and the GROCERY_TRAIN_ARGS it trained with."""
    source = Path(args.source).resolve()
    for name in ("item_features", "item_model_outputs"):
        if not (source / name / "_delta_log").is_dir():
            raise SystemExit(f"error: no {name} under {source}; run `make grocery` first")
    if not (source / "exports" / "train.csv").is_file():
        raise SystemExit(f"error: no exports/train.csv under {source}; run `make grocery` first")
    shutil.rmtree(root, ignore_errors=True)
    for name in ("item_features", "item_model_outputs"):
        shutil.copytree(source / name, root / "tables" / name)
    shutil.copytree(source / "exports", root / "exports")
    (root / "mlflow").mkdir()
    where = ["--set", f"data.root={root / 'tables'}", "--set", f"training.artifact_dir={root / 'model'}",
             "--set", f"tracking.uri=sqlite:///{root / 'mlflow' / 'mlflow.db'}"]
    ingest = ["jobs/ingest_catalog.py", "--conf", args.conf, *where, "--images-root", args.data, "--run-date", RUN_DATE]
    say(f"ingest the training photos into {root / 'tables'}", t0)
    submit(*ingest, "--items-path", str(root / "exports" / "train.csv"), "--mode", "overwrite")
    setting, base = [x for kv in args.set for x in ("--set", kv)], train_args()
    say(f"train seed {args.seed} with GROCERY_TRAIN_ARGS {' '.join(setting)}", t0)
    t_train = time.perf_counter()
    submit("jobs/train.py", "--conf", args.conf, *where, *base, *setting,
           "--set", f"training.seeds=[{args.seed}]", "--set", "training.num_threads=1")
    train_s = time.perf_counter() - t_train
    say("merge the validation photos", t0)
    submit(*ingest, "--items-path", str(root / "exports" / "val.csv"), "--mode", "merge")
    return {"seconds": train_s, "grocery_train_args": base}


def _precision_recall(label: str, rule: str) -> tuple[tuple[str, str, str, str], ...]:
    """One rule's two summary rows over the whole catalogue."""
    return (f"{label}: precision", rule, "catalogue", "precision"), (f"{label}: recall", rule, "catalogue", "recall")


# what the summary reads from a chain JSON's rules: (row label, rule, part, key)
SUMMARY = (*_precision_recall("job's flags", "applied"),
           ("clean new listings flagged", "applied", "new_listings", "clean_flagged_share"),
           ("job's flags among new listings: precision", "applied", "new_listings", "precision"),
           ("detection AUROC among new listings", "applied", "new_listings", "auroc"),
           ("best single threshold among new: precision at recall 0.8", "applied", "new_listings",
            "oracle_precision_at_recall_0.8"),
           ("held-out quantile as it is: precision", "held-out quantile", "catalogue", "precision"),
           # the configured quantile changed (0.02 -> 0.01 on 2026-12-07), so "job's flags" of runs from before and after
           # differ in the rule too; these rows hold each quantile fixed over every run
           *(row for q in ("0.02", "0.01") for row in _precision_recall(f"quantile {q}, recentred",
                                                                        f"quantile {q}, recentred on the new listings")),
           # rules the job does not apply (bench_grocery_chain_plants.candidate_rules); results from before 2026-12-07 lack them
           *_precision_recall("quantile 0.01, logit-normal tail", "quantile 0.01, logit-normal tail, recentred on the new listings"),
           *(row for q in ("0.01", "0.02", "0.05") for row in _precision_recall(
               f"quantile {q}, rescaled", f"quantile {q}, recentred and rescaled on the new listings")),
           *((f"quantile 0.01, {name}: clean new listings flagged", f"quantile 0.01, {rule} on the new listings", "new_listings",
              "clean_flagged_share") for name, rule in (("rescaled", "recentred and rescaled"), ("recentred", "recentred"))),
           # each side read against the other (scoring.thresholds.contrast); judged on results from 2026-12-07 evening on
           *(row for q in ("0.01", "0.02") for c in ("0.1", "0.25")
             for row in _precision_recall(f"quantile {q}, contrast {c}", f"quantile {q}, recentred, contrast {c}")),
           *((f"quantile 0.01, contrast {c}: {name}", f"quantile 0.01, recentred, contrast {c}", "new_listings", key)
             for c in ("0.1", "0.25") for name, key in (
                 ("clean new listings flagged", "clean_flagged_share"), ("detection AUROC among new listings", "auroc"),
                 ("best single threshold among new: precision at recall 0.8", "oracle_precision_at_recall_0.8"))))


def summarise(paths: list[str]) -> tuple[dict, int]:
    """Per setting and SUMMARY row, the seeds' values, mean and sd; and the one plants seed they share."""
    runs: dict[str, dict[int, dict]] = {}
    for path in paths:
        figures = json.loads(Path(path).read_text())
        if "setting" not in figures:
            raise SystemExit(f"error: {path} is not a result of this script (no 'setting')")
        name, seed = figures["setting"]["name"], int(figures["setting"]["seed"])
        if seed in runs.get(name, {}):
            raise SystemExit(f"error: two results of {name} seed {seed}")
        runs.setdefault(name, {})[seed] = figures
    # a summary compares settings on one draw of plants; mixing draws would compare the plants, not the settings
    plants_seeds = {figures["setting"].get("plants_seed", 0) for by_seed in runs.values() for figures in by_seed.values()}
    if len(plants_seeds) > 1:
        raise SystemExit(f"error: these results plant swaps with different seeds {sorted(plants_seeds)}; summarise one at a time")
    table = {}
    for name, by_seed in runs.items():
        rows = {}
        for label, rule, part, key in SUMMARY:
            has = [rule in by_seed[s]["rules"] for s in sorted(by_seed)]
            if not any(has):
                continue   # a rule added after these results were taken
            if not all(has):
                raise SystemExit(f"error: only some seeds of {name} have the rule {rule!r}; rerun the others with --chain-only")
            values = [by_seed[s]["rules"][rule][part][key] for s in sorted(by_seed)]
            rows[label] = {"seeds": sorted(by_seed), "values": values, "mean": statistics.fmean(values),
                           "sd": statistics.stdev(values) if len(values) > 1 else None}
        table[name] = rows
    names = list(table)
    print("| figure | " + " | ".join(f"{n}: seeds {table[n][SUMMARY[0][0]]['seeds']}" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for label, *_ in SUMMARY:
        if not any(label in table[n] for n in names):
            continue
        cells = []
        for n in names:
            r = table[n].get(label)
            if r is None:
                cells.append("-")
                continue
            cells.append(", ".join(f"{v:.3f}" for v in r["values"]) + f" (mean {r['mean']:.3f}"
                         + (f", sd {r['sd']:.3f})" if r["sd"] is not None else ")"))
        print(f"| {label} | " + " | ".join(cells) + " |")
    return table, plants_seeds.pop()


def plot(table: dict, plants_seed: int, path: str) -> None:
    """One panel per figure, a dot per seed and a bar at the mean, per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, *_ in SUMMARY if any(label in rows for rows in table.values())]
    cols = 4
    rows_n = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 3.0 * rows_n), squeeze=False)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    for ax, label in zip(axes.flat, labels):
        for i, rows in enumerate(table.values()):
            r = rows.get(label)
            if r is None:
                continue
            ax.scatter([i] * len(r["values"]), r["values"], s=18, alpha=0.8)
            for seed, v in zip(r["seeds"], r["values"]):
                ax.annotate(str(seed), (i, v), xytext=(4, 0), textcoords="offset points", fontsize=6)
            ax.hlines(r["mean"], i - 0.25, i + 0.25, colors="black")
        ax.set_xticks(range(len(table)), list(table), fontsize=7)
        ax.set_xlim(-0.6, len(table) - 0.4)
        ax.set_title(label, fontsize=7, wrap=True)
    fig.suptitle(f"GroceryStore chain, the same plants (seed {plants_seed}) among 296 new listings: one dot per training seed",
                 fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# rule families over the quantile dial: (label, rule name with {q})
FRONTIER = (("recentred (the job's rule)", "quantile {q}, recentred on the new listings"),
            ("recentred, contrast 0.1", "quantile {q}, recentred, contrast 0.1"),
            ("recentred, contrast 0.25", "quantile {q}, recentred, contrast 0.25"),
            ("recentred and rescaled", "quantile {q}, recentred and rescaled on the new listings"))


def plot_frontier(paths: list[str], path: str) -> None:
    """Precision against recall over the whole catalogue, one line per rule family through the quantiles the
    artifact records (means over the results; each result's points faint): a rule is better where its line
    lies above another's at the same recall, whatever quantile gets it there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(Path(p).read_text()) for p in paths]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for k, (label, rule) in enumerate(FRONTIER):
        names = [rule.format(q=f"{q:g}") for q in CALIBRATION_QUANTILES]
        names = [n for n in names if all(n in r["rules"] for r in runs)]
        if not names:
            continue
        pr = np.array([[(r["rules"][n]["catalogue"]["precision"], r["rules"][n]["catalogue"]["recall"]) for n in names]
                       for r in runs])                                                           # (results, quantiles, 2)
        for one in pr:
            ax.plot(one[:, 1], one[:, 0], color=f"C{k}", alpha=0.15, lw=0.8)
        mean = pr.mean(axis=0)                                                                   # (quantiles, 2)
        ax.plot(mean[:, 1], mean[:, 0], "o-", color=f"C{k}", label=label)
        for (p_, r_), n in zip(mean, names):
            ax.annotate(n.split(",")[0].removeprefix("quantile "), (r_, p_), xytext=(3, 3), textcoords="offset points", fontsize=6)
    ax.axhline(0.9, color="grey", ls=":", lw=0.8)
    ax.axvline(0.8, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("recall (planted swaps flagged)")
    ax.set_ylabel("precision (flags that are swaps)")
    plants = {r["setting"].get("plants_seed", 0) for r in runs}
    ax.set_title(f"GroceryStore chain, {len(runs)} training seeds, plants seed {sorted(plants)}: each family through its quantiles",
                 fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.summarise:
        table, plants_seed = summarise(args.summarise)
        if args.json:
            Path(args.json).write_text(json.dumps({"benchmark": "bench_grocery_chain_seeds", "inputs": args.summarise,
                                                   "plants_seed": plants_seed, "settings": table}, indent=2))
        if args.plot:
            plot(table, plants_seed, args.plot)
        if args.frontier:
            plot_frontier(args.summarise, args.frontier)
        return table
    if args.seed is None:
        raise SystemExit("error: --seed is needed (or --summarise)")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return one_seed(args)


if __name__ == "__main__":
    main()
