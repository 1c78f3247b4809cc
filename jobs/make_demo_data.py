"""Make the synthetic world: items, users, events, impressions, candidates and their truth.

    spark-submit jobs/make_demo_data.py --conf conf/demo.yaml
    python jobs/make_demo_data.py --size tiny
    python jobs/make_demo_data.py --set world.n_items=100000 --set world.partitions=16

Rerunning with the same config rewrites identical tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# spark-submit (and `python jobs/...`) put jobs/ first on sys.path, not the repository root, and
# Python workers inherit PYTHONPATH: make the project's packages importable in both.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)

from camenn.config import ConfigError, load_config, project_root  # noqa: E402

SIZES = {"tiny": "tests/conf/tiny.yaml", "demo": "conf/demo.yaml"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=None, help="YAML config (default conf/demo.yaml)")
    parser.add_argument("--size", choices=sorted(SIZES), help="tiny (tests/conf/tiny.yaml) or demo (conf/demo.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set world.n_items=50000 (repeatable)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.conf and args.size:
        print("error: give --conf or --size, not both", file=sys.stderr)
        return 2
    conf = args.conf or str(project_root() / SIZES[args.size or "demo"])
    try:
        config = load_config(conf, args.set)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from pipeline.session import EnvironmentProblem, get_spark
    from pipeline.world import write_world, world_summary

    # Python workers of a spark-submit started elsewhere than the repository root must find
    # camenn too (they get the executor environment, not the driver's sys.path).
    spark_conf = {"spark.executorEnv.PYTHONPATH": _ROOT, **config.spark.conf}
    config = config.model_copy(update={"spark": config.spark.model_copy(update={"conf": spark_conf})})
    try:
        spark = get_spark(config, app_name=f"{config.spark.app_name}-make-demo-data")
    except EnvironmentProblem as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    w = config.world
    print(f"world {config.name}: seed {w.seed}, {w.n_items:,} items, {w.n_users:,} users, {w.days} days "
          f"before {w.run_date}, {w.partitions} partitions -> {config.data.root}", flush=True)
    start = time.perf_counter()
    write_world(spark, config, log=lambda line: print(line, flush=True))
    summary = world_summary(spark, config)
    print(f"done in {time.perf_counter() - start:.1f} s")
    print("rows: " + ", ".join(f"{k} {v:,}" for k, v in summary["rows"].items()))
    n_items = summary["rows"]["items"] or 1
    print("defects: " + ", ".join(f"{k} {v:,} ({v / n_items:.1%})" for k, v in summary["defects"].items()))
    print(f"buy rate: {summary['buy_rate']:.3f}")
    print(f"Bayes-optimal CVR AUC (true p_buy vs bought, Spark aggregation over p_buy bins): {summary['bayes_auc']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
