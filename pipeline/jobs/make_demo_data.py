"""Make the synthetic world: items, users, events, impressions, candidates and their truth.

    spark-submit jobs/make_demo_data.py --conf conf/demo.yaml
    camenn-demo-data --conf conf/demo.yaml
    python jobs/make_demo_data.py --size tiny
    python jobs/make_demo_data.py --set world.n_items=100000 --set world.partitions=16
    spark-submit jobs/make_demo_data.py --conf conf/demo.yaml --force

Rerunning with the same config keeps a table whose last commit is this world's write (same
config, same generator code), so training data and models pinned to its version stay
current; --force rewrites every table.
"""

from __future__ import annotations

import sys
import time

from pipeline.cli import EXIT_NOTHING_DONE, job_config, job_parser, job_session, run_job

SIZES = {"tiny": "tests/conf/tiny.yaml", "demo": "conf/demo.yaml"}


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__, conf_default=None)
    parser.add_argument("--size", choices=sorted(SIZES), help="tiny (tests/conf/tiny.yaml) or demo (conf/demo.yaml)")
    parser.add_argument("--force", action="store_true", help="rewrite tables that already hold this world")
    args = parser.parse_args(argv)
    if args.conf and args.size:
        print("error: give --conf or --size, not both", file=sys.stderr)
        return EXIT_NOTHING_DONE

    def make() -> None:
        from camenn.config import project_root
        from pipeline.world import world_summary, write_world

        config = job_config(args, args.conf or str(project_root() / SIZES[args.size or "demo"]))
        spark = job_session(config, "make-demo-data")
        w = config.world
        print(f"world {config.name}: seed {w.seed}, {w.n_items:,} items, {w.n_users:,} users, {w.days} days "
              f"before {w.run_date}, {w.partitions} partitions -> {config.data.root}", flush=True)
        start = time.perf_counter()
        write_world(spark, config, log=lambda line: print(line, flush=True), force=args.force)
        summary = world_summary(spark, config)
        print(f"done in {time.perf_counter() - start:.1f} s")
        print("rows: " + ", ".join(f"{k} {v:,}" for k, v in summary["rows"].items()))
        n_items = summary["rows"]["items"] or 1
        print("defects: " + ", ".join(f"{k} {v:,} ({v / n_items:.1%})" for k, v in summary["defects"].items()))
        print(f"buy rate: {summary['buy_rate']:.3f}")
        print(f"Bayes-optimal CVR AUC (true p_buy vs bought, Spark aggregation over p_buy bins): {summary['bayes_auc']:.4f}")

    return run_job(make)


if __name__ == "__main__":
    raise SystemExit(main())
