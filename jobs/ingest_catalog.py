"""Ingest a real catalogue export into the items / events / quarantine tables.

    spark-submit jobs/ingest_catalog.py --conf conf/demo.yaml \\
        --items-path exports/articles.csv --images-root exports/images \\
        [--events-path exports/transactions.csv] \\
        [--map title=prod_name --map 'image={article_id:0>10}.jpg' ...] \\
        [--run-date YYYY-MM-DD] [--format csv|parquet] [--mode overwrite|merge]

Flags override the config's `ingest` section; see docs/ingest.md. Exit status 2 = bad input
(nothing written), 1 = the run failed (a `runs` row with status=failed says why).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, _ROOT)

from camenn.config import ConfigError, default_config_path, load_config  # noqa: E402


def _abs(path: str | None) -> str | None:
    """Paths given on the command line are relative to the folder the command runs in."""
    return path if path is None or "://" in path else os.path.abspath(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conf", default=str(default_config_path()), help="YAML config (default conf/demo.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--items-path", help="CSV/Parquet file or folder of item rows")
    parser.add_argument("--images-root", help="folder (or URI) holding the image files")
    parser.add_argument("--events-path", help="CSV/Parquet file or folder of purchases")
    parser.add_argument("--map", action="append", default=[], metavar="FIELD=SOURCE",
                        help="items field mapping: FIELD=COLUMN, FIELD=const:VALUE, image=TEMPLATE; FIELD= unmaps")
    parser.add_argument("--event-map", action="append", default=[], metavar="FIELD=SOURCE",
                        help="events field mapping (user_id, item_id, ts, price)")
    parser.add_argument("--format", choices=["csv", "parquet"], help="export format (default: from the extension)")
    parser.add_argument("--mode", choices=["overwrite", "merge"], help="overwrite the tables or upsert into them")
    parser.add_argument("--run-date", type=dt.date.fromisoformat, help="YYYY-MM-DD (default: today, UTC)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pipeline.ingest import IngestError, run_ingest, with_flags
    from pipeline.session import EnvironmentProblem, get_spark

    try:
        config = load_config(args.conf, args.set)
        cfg = with_flags(config.ingest, items_path=_abs(args.items_path), images_root=_abs(args.images_root),
                         events_path=_abs(args.events_path), fmt=args.format, item_map=args.map,
                         event_map=args.event_map, mode=args.mode)
        # Python workers (the image check imports camenn) get the executor environment, not
        # the driver's sys.path: a spark-submit started outside the repository needs this.
        spark_conf = {"spark.executorEnv.PYTHONPATH": _ROOT, **config.spark.conf}
        config = config.model_copy(update={"spark": config.spark.model_copy(update={"conf": spark_conf})})
        spark = get_spark(config, app_name="camenn-ingest")
        result = run_ingest(spark, config, cfg, args.run_date)
    except (ConfigError, IngestError, EnvironmentProblem) as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
