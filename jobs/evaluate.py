"""Evaluate: the paper's comparison table on the same data and seeds, mislabel detection, heat maps.

    spark-submit jobs/evaluate.py --conf conf/demo.yaml [--set training.seeds=[0]]
                                  [--variants "CameNN,MMoE frame (MLP)"] [--out runs/demo/x]

Trains every variant once per seed in training.seeds (CameNN; MoSE frame; MMoE frame; CameNN
without ITA/TIA; the CVR-only single-task transformer) and writes runs/<config>/<timestamp>/
with metrics.json, report.md and the text-image similarity heat maps (PNG).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)

from camenn.config import ConfigError, default_config_path, load_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conf", default=str(default_config_path()), help="YAML config (default conf/demo.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--variants", help="comma-separated subset of the comparison (default: all)")
    parser.add_argument("--out", help="run folder (default runs/<config>/<timestamp>)")
    parser.add_argument("--run-date", type=dt.date.fromisoformat, help="date of the feature-cache update (default today)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.conf, args.set)
    except ConfigError as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from pipeline.train import VARIANTS, run_evaluation

    variants = None
    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            print(f"error: unknown variant(s) {unknown}; known: {list(VARIANTS)}", file=sys.stderr)
            return 2
    from pipeline.session import EnvironmentProblem, get_spark
    from pipeline.tables import MissingTable

    try:
        spark = get_spark(config, app_name=f"{config.spark.app_name}-evaluate")
        out = run_evaluation(spark, config, out_dir=os.path.abspath(args.out) if args.out else None,
                             variants=variants, run_date=args.run_date)
    except (EnvironmentProblem, MissingTable) as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print((Path(out["run_dir"]) / "report.md").read_text())
    print(f"run folder: {out['run_dir']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
