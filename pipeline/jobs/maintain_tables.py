"""Compact and vacuum the tables the nightly job MERGEs (item_features, item_model_outputs).

    spark-submit jobs/maintain_tables.py --conf conf/demo.yaml [--run-date YYYY-MM-DD] [--retention-hours 168]
    camenn-maintain --conf conf/demo.yaml

OPTIMIZE rewrites the files that carry many deleted rows (the nightly MERGEs mark replaced rows
with deletion vectors) and bins the nights' small files; VACUUM then deletes files no version
within --retention-hours reads (default 168: Delta refuses less unless its retention check is
turned off). One runs row records the files and bytes before and after. Library:
pipeline/maintenance.py. Weekly in the camenn_retrain DAG, after the promotion.
"""

from __future__ import annotations

from pipeline.cli import job_config, job_parser, job_session, run_job


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__, run_date="the date the runs row is filed under (default: the config's world.run_date)")
    parser.add_argument("--retention-hours", type=float, default=None,
                        help="VACUUM keeps the files of versions younger than this (default 168)")
    args = parser.parse_args(argv)
    if args.retention_hours is not None and args.retention_hours < 0:
        parser.error("--retention-hours must be >= 0")

    def upkeep() -> int | None:
        from pipeline.maintenance import DEFAULT_RETENTION_HOURS, maintain

        config = job_config(args)
        retention = DEFAULT_RETENTION_HOURS if args.retention_hours is None else args.retention_hours
        result = maintain(job_session(config, "maintain-tables"), config, args.run_date or config.world.run_date,
                          retention_hours=retention)
        print(result.summary())
        return None

    return run_job(upkeep)


if __name__ == "__main__":
    raise SystemExit(main())
