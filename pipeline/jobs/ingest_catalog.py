"""Ingest a real catalogue export into the items / events / quarantine tables.

    spark-submit jobs/ingest_catalog.py --conf conf/demo.yaml \\
        --items-path exports/articles.csv --images-root exports/images \\
        [--events-path exports/transactions.csv] \\
        [--map title=prod_name --map 'image={article_id:0>10}.jpg' ...] \\
        [--run-date YYYY-MM-DD] [--format csv|parquet] [--mode overwrite|merge]
    camenn-ingest --conf conf/demo.yaml \\
        --items-path exports/articles.csv --images-root exports/images \\
        [--events-path exports/transactions.csv] \\
        [--map title=prod_name --map 'image={article_id:0>10}.jpg' ...] \\
        [--run-date YYYY-MM-DD] [--format csv|parquet] [--mode overwrite|merge]

Flags override the config's `ingest` section; see docs/ingest.md. Exit status 2 = bad input
(nothing written), 1 = the run failed (a `runs` row with status=failed says why). Rows that
cannot land (a malformed CSV line, a bad price, an image outside the root, empty, too large or
undecodable) are quarantined with their reason, not an error; docs/reliability.md lists them.
"""

from __future__ import annotations

import os

from pipeline.cli import job_config, job_parser, job_session, run_job


def _abs(path: str | None) -> str | None:
    """Paths given on the command line are relative to the folder the command runs in."""
    return path if path is None or "://" in path else os.path.abspath(path)


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__, run_date="default: today, UTC")
    parser.add_argument("--items-path", help="CSV/Parquet file or folder of item rows")
    parser.add_argument("--images-root", help="folder (or URI) holding the image files")
    parser.add_argument("--events-path", help="CSV/Parquet file or folder of purchases")
    parser.add_argument("--map", action="append", default=[], metavar="FIELD=SOURCE",
                        help="items field mapping: FIELD=COLUMN, FIELD=const:VALUE, image=TEMPLATE; FIELD= unmaps")
    parser.add_argument("--event-map", action="append", default=[], metavar="FIELD=SOURCE",
                        help="events field mapping (user_id, item_id, ts, price)")
    parser.add_argument("--users-path", help="CSV/Parquet file or folder of user profiles")
    parser.add_argument("--candidates-path", help="CSV/Parquet file or folder of (user, item) pairs for --run-date")
    parser.add_argument("--user-map", action="append", default=[], metavar="FIELD=SOURCE",
                        help="users field mapping (user_id and the config's data.profile_fields; the demo's: age_band, "
                             "household, zone)")
    parser.add_argument("--candidate-map", action="append", default=[], metavar="FIELD=SOURCE",
                        help="candidates field mapping (user_id, item_id)")
    parser.add_argument("--format", choices=["csv", "parquet"], help="export format (default: from the extension)")
    parser.add_argument("--mode", choices=["overwrite", "merge"], help="overwrite the tables or upsert into them")
    args = parser.parse_args(argv)

    def ingest() -> None:
        from pipeline.ingest import run_ingest, with_flags

        config = job_config(args)
        cfg = with_flags(config.ingest, items_path=_abs(args.items_path), images_root=_abs(args.images_root),
                         events_path=_abs(args.events_path), fmt=args.format, item_map=args.map,
                         event_map=args.event_map, mode=args.mode, users_path=_abs(args.users_path),
                         candidates_path=_abs(args.candidates_path), user_map=args.user_map,
                         candidate_map=args.candidate_map)
        result = run_ingest(job_session(config, "ingest"), config, cfg, args.run_date)
        print(result.summary())

    return run_job(ingest)


if __name__ == "__main__":
    raise SystemExit(main())
