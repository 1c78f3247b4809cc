"""Score the catalogue for one run date: item features, alignment flags, CVR scores.

    spark-submit jobs/score_catalog.py [--conf conf/demo.yaml] [--run-date YYYY-MM-DD] [--set key=value ...]

Writes item_features (MERGE), item_alignment and cvr_scores (the date's rows replaced),
quarantine and runs. A rerun of a date replaces that date's rows; a failed run records a
'failed' row in runs and exits non-zero.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

# spark-submit puts jobs/ first on sys.path, not the repository root, and Python workers
# inherit PYTHONPATH: make the project's packages importable in both.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)

from camenn.config import ConfigError, default_config_path, load_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=str(default_config_path()), help="YAML config (default conf/demo.yaml)")
    parser.add_argument("--run-date", type=dt.date.fromisoformat, default=None,
                        help="YYYY-MM-DD (default: world.run_date of the config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set scoring.batch_size=512 (repeatable)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.conf, args.set)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from pipeline.scoring import MissingInput, run
    from pipeline.session import EnvironmentProblem, get_spark

    try:
        spark = get_spark(config, app_name=f"{config.spark.app_name}-score-catalog")
    except EnvironmentProblem as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    try:
        result = run(spark, config, args.run_date)
    except MissingInput as missing:
        print(f"error: {missing}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
