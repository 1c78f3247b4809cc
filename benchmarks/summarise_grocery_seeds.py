"""Issue 15's GroceryStore targets over several training seeds of one setting: each seed's figures,
their mean and spread, and a picture of them against the targets.

    .venv/bin/python benchmarks/summarise_grocery_seeds.py \
        benchmarks/results/bench_grocery_reference_test_time_views.json \
        benchmarks/results/bench_grocery_reference_seed_{1,2,3}.json \
        --json benchmarks/results/bench_grocery_seeds.json --plot docs/img/grocery_seeds.png

It reads ``bench_grocery_reference.py`` results (one trained variant each) and trains nothing.
Every figure is the ``views`` row: the photo and its test-time views, cuts taken on the held-out
training photos, the way the night scores with ``conf/grocery.yaml``. A seed's draw moved the
same-class figures more than most settings did (docs/results/grocery-store.md, 2026-12-06), so a setting is judged
by the mean over its seeds and the spread says how far one run can be trusted.

With ``--against`` another setting's summary (this script's ``--json``), it also writes the two settings
side by side: each figure's mean and sd over its seeds, the difference and Welch's t (the difference over
its standard error; with 3 or 4 seeds a side, |t| under about 2.5 is within what the seeds spread), and
the plot draws both settings' seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT / "benchmarks"))

from _common import write_json  # noqa: E402

ROW = "views"
# (name, where in the row, issue 15's target: at least this)
FIGURES = (
    ("random ITA acc", ("validation", "random", "ita", "acc"), 0.95),
    ("random TIA acc", ("validation", "random", "tia", "acc"), 0.95),
    ("random ITA AUROC", ("validation", "random", "ita", "auroc"), 0.98),
    ("random TIA AUROC", ("validation", "random", "tia", "auroc"), 0.98),
    ("same class ITA acc", ("validation", "hard", "ita", "acc"), 0.90),
    ("same class TIA acc", ("validation", "hard", "tia", "acc"), 0.90),
    ("same class ITA AUROC", ("validation", "hard", "ita", "auroc"), None),
    ("same class TIA AUROC", ("validation", "hard", "tia", "auroc"), None),
    ("detection AUROC", ("validation", "flags", "auroc"), 0.98),
    ("best precision at recall 0.8", ("validation", "flags", "best_precision_at_recall_0.8"), 0.90),
    # the lower side names the swapped one; across classes only: a same-class swap is labelled a
    # mismatch on both sides in training (same_category_swaps: both_sides), so it has no side to name
    ("side named, text swaps across classes", ("validation", "flags", "side_named", "text_swap_random"), 0.95),
    ("side named, image swaps across classes", ("validation", "flags", "side_named", "image_swap_random"), 0.95),
)


def dig(obj: dict, keys: tuple[str, ...]) -> float:
    for key in keys:
        obj = obj[key]
    return float(obj)


def seed_of(result: dict) -> str:
    """The seed the scored model was trained with: its artifact's, as bench_grocery_reference.py records it
    (``model_seeds``). Runs from before it recorded one (until 2026-12-06) fall back to the variant's name
    ("..., seed N"; no seed in the name is the config's default, 0), and say so."""
    if "model_seeds" in result:
        if len(result["model_seeds"]) != 1:
            raise SystemExit(f"error: {result['variant']!r} scored an ensemble of seeds {result['model_seeds']}: one model a seed")
        return str(result["model_seeds"][0])
    name = result["variant"]
    seed = name.rsplit("seed ", 1)[1] if "seed " in name else "0"
    print(f"note: {name!r} records no model seed (a run from before it recorded one); its name says seed {seed}", file=sys.stderr)
    return seed


def summarise(results: list[dict]) -> dict:
    seeds = [seed_of(r) for r in results]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: the same seed twice among the inputs ({seeds}): one run a seed")
    rows = {}
    for name, keys, target in FIGURES:
        values = [dig(r["results"][ROW], keys) for r in results]
        rows[name] = {"per_seed": dict(zip(seeds, values)), "mean": statistics.fmean(values),
                      "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                      "min": min(values), "max": max(values), "target": target,
                      "seeds_at_target": None if target is None else sum(v >= target for v in values)}
    return {"seeds": seeds, "row": ROW, "figures": rows}


def table(summary: dict) -> list[str]:
    seeds = summary["seeds"]
    lines = ["| figure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | sd | target | seeds at target |",
             "|---|" + "---|" * (len(seeds) + 4)]
    for name, row in summary["figures"].items():
        target = "-" if row["target"] is None else f">= {row['target']:.2f}"
        at = "-" if row["seeds_at_target"] is None else f"{row['seeds_at_target']} of {len(seeds)}"
        lines.append(f"| {name} | " + " | ".join(f"{row['per_seed'][s]:.3f}" for s in seeds)
                     + f" | {row['mean']:.3f} | {row['sd']:.3f} | {target} | {at} |")
    return lines


def compare(summary: dict, other: dict) -> dict:
    """Per figure: both settings' means and sds, the difference (this minus the other) and Welch's t."""
    rows = {}
    for name, row in summary["figures"].items():
        base = other["figures"][name]
        n, m = len(row["per_seed"]), len(base["per_seed"])
        diff = row["mean"] - base["mean"]
        se = math.sqrt(row["sd"] ** 2 / n + base["sd"] ** 2 / m)
        rows[name] = {"mean": row["mean"], "sd": row["sd"], "against_mean": base["mean"], "against_sd": base["sd"],
                      "difference": diff, "welch_t": diff / se if se > 0 else None}
    return {"against": other["setting"], "seeds": len(summary["seeds"]), "against_seeds": len(other["seeds"]),
            "figures": rows}


def comparison_table(summary: dict) -> list[str]:
    c = summary["comparison"]
    lines = [f"| figure | {c['against']} ({c['against_seeds']} seeds): mean / sd | {summary['setting']} ({c['seeds']} seeds): "
             "mean / sd | difference | Welch t |", "|---|---|---|---|---|"]
    for name, row in c["figures"].items():
        t = "-" if row["welch_t"] is None else f"{row['welch_t']:+.1f}"
        lines.append(f"| {name} | {row['against_mean']:.3f} / {row['against_sd']:.3f} | {row['mean']:.3f} / {row['sd']:.3f} "
                     f"| {row['difference']:+.3f} | {t} |")
    return lines


def plot(summary: dict, out: Path, other: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["figures"])
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) + 1.2))
    settings = [(summary, 0.0, "tab:blue", "black")]
    if other is not None:   # the other setting's seeds just above each row, in grey
        settings.insert(0, (other, -0.18, "tab:gray", "dimgray"))
    for y, name in enumerate(names):
        for s, dy, colour, mean_colour in settings:
            row = s["figures"][name]
            values = list(row["per_seed"].values())
            label = f"{s['setting']}: one seed" if other is not None else "one seed"
            ax.scatter(values, [y + dy] * len(values), color=colour, s=22, zorder=3, label=label if y == 0 else None)
            ax.scatter([row["mean"]], [y + dy], color=mean_colour, marker="|", s=260, zorder=4,
                       label=("mean" if other is None else f"{s['setting']}: mean") if y == 0 else None)
        row = summary["figures"][name]
        if row["target"] is not None:
            ax.scatter([row["target"]], [y], color="tab:red", marker="x", s=50, zorder=4,
                       label="issue 15's target" if y == 0 else None)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    lowest = min(v for s in settings for row in s[0]["figures"].values() for v in row["per_seed"].values())
    ax.set_xlim(min(0.6, lowest - 0.02), 1.0)
    ax.grid(axis="x", alpha=0.3)
    title = f"{summary['setting']} over {len(summary['seeds'])} seeds"
    if other is not None:
        title += f", against {other['setting']} over {len(other['seeds'])}"
    ax.set_title(f"GroceryStore validation, photo + test-time views:\n{title}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="bench_grocery_reference.py --json outputs, one seed each")
    p.add_argument("--setting", default="CameNN", help="what the inputs were trained with, as the tables name it")
    p.add_argument("--against", help="another setting's summary (--json of this script) to compare with")
    p.add_argument("--json", help="also write the summary to this JSON file")
    p.add_argument("--plot", help="also draw the seeds against the targets into this image")
    args = p.parse_args(argv)
    other = None
    if args.against:
        other = json.loads(Path(args.against).read_text())
        if other.get("benchmark") != "summarise_grocery_seeds" or other.get("row") != ROW:
            raise SystemExit(f"error: {args.against} is not a summarise_grocery_seeds.py summary of the {ROW!r} row")
        other.setdefault("setting", Path(args.against).stem)
    results = []
    for path in args.results:
        result = json.loads(Path(path).read_text())
        if result.get("benchmark") != "bench_grocery_reference" or ROW not in result.get("results", {}):
            raise SystemExit(f"error: {path} is not a bench_grocery_reference.py result with a {ROW!r} row")
        results.append(result)
    summary = {"benchmark": "summarise_grocery_seeds", "setting": args.setting, "inputs": [str(p) for p in args.results],
               "variants": [r["variant"] for r in results], **summarise(results)}
    summary["table"] = table(summary)
    print("\n".join(summary["table"]))
    if other is not None:
        summary["comparison"] = compare(summary, other)
        summary["comparison_table"] = comparison_table(summary)
        print("\n" + "\n".join(summary["comparison_table"]))
    write_json(args.json, summary)
    if args.plot:
        plot(summary, Path(args.plot), other)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
