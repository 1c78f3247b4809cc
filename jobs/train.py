"""Train CameNN: refresh the item feature cache, write training_examples, train, save the artifact.

    spark-submit jobs/train.py --conf conf/demo.yaml [--set training.epochs=4] [--if-missing]
                               [--run-date YYYY-MM-DD] [--seed N]

--if-missing: leave a valid artifact that was trained from this configuration alone (make demo
is idempotent). training.num_processes > 1 trains with TorchDistributor (DDP, local processes).
The artifact (training.artifact_dir) records the table versions it was trained from and its
held-out metrics. Exit status 2 = bad configuration or environment, 1 = training failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
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
    parser.add_argument("--if-missing", action="store_true", help="skip when a valid artifact for this config exists")
    parser.add_argument("--run-date", type=dt.date.fromisoformat, help="date of the feature-cache update (default today)")
    parser.add_argument("--seed", type=int, help="model seed (default: the first of training.seeds)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.conf, args.set)
    except ConfigError as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from pipeline.train import current_artifact, run_training

    if args.if_missing:  # decided before Spark starts: a no-op run costs nothing
        art = current_artifact(config)
        if art is not None:
            print(f"artifact {art.path} (version {art.version}) is current for {config.name}; training skipped")
            return 0
    from pipeline.session import EnvironmentProblem, get_spark
    from pipeline.tables import MissingTable

    t0 = time.perf_counter()
    try:
        spark = get_spark(config, app_name=f"{config.spark.app_name}-train")
    except EnvironmentProblem as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        result = run_training(spark, config, run_date=args.run_date, if_missing=args.if_missing, seed=args.seed)
    except MissingTable as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(result.summary())
    if result.data is not None:
        print(f"data: examples from {result.data.source}, table versions {result.data.versions}, counts {result.data.counts}")
    print(f"total {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
