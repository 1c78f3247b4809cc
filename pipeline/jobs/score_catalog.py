"""Score the catalogue for one run date: item features, alignment flags, CVR scores.

    spark-submit jobs/score_catalog.py [--conf conf/demo.yaml] [--run-date YYYY-MM-DD] [--set key=value ...]
    camenn-score [--conf conf/demo.yaml] [--run-date YYYY-MM-DD] [--set key=value ...]

Writes item_features (MERGE), item_alignment and cvr_scores (the date's rows replaced),
quarantine and runs. A rerun of a date replaces that date's rows; a failed run records a
'failed' row in runs and exits 1. Missing inputs (no demo data yet) exit 2 and name the
command that makes them.
"""

from __future__ import annotations

from pipeline.cli import job_config, job_parser, job_session, run_job


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__, run_date="default: the config's world.run_date").parse_args(argv)

    def score() -> None:
        from pipeline.nightly import run

        config = job_config(args)
        result = run(job_session(config, "score-catalog"), config, args.run_date)
        print(result.summary())

    return run_job(score)


if __name__ == "__main__":
    raise SystemExit(main())
