"""Write the per-merchant listing-quality report of one run date.

    spark-submit jobs/quality_report.py --conf conf/demo.yaml [--run-date YYYY-MM-DD] [--set key=value ...]
    camenn-report --conf conf/demo.yaml [--run-date YYYY-MM-DD] [--set key=value ...]

Reads item_alignment (the scoring job's flags), items and item_features; writes
<report.out_dir>/<run date>/index.html, one HTML page and one CSV per merchant with flagged
items under merchants/, flag_rate_by_category.png, the run date's quality_flags rows and a
runs row. The library is the package pipeline/report/. The last line printed is the index page's path.
Exit status 2 = nothing to report from (no scoring output for the date, bad config),
1 = the run failed (a runs row with status=failed says why).
"""

from __future__ import annotations

import datetime as dt
import traceback
import uuid

from pipeline.cli import EXIT_FAILED, job_config, job_parser, job_session, run_job


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__, run_date="default: the config's world.run_date").parse_args(argv)

    def report() -> int | None:
        from pipeline.report import ReportError, build_report, record_run
        from pipeline.tables import MissingTable

        config = job_config(args)
        spark = job_session(config, "quality-report")
        run_date = args.run_date or config.world.run_date
        started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        run_id = f"quality_report-{run_date.isoformat()}-{uuid.uuid4().hex[:8]}"
        try:
            result = build_report(spark, config, run_date)
        except (ReportError, MissingTable):
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, then the job fails
            traceback.print_exc()
            try:
                record_run(spark, config, None, run_id=run_id, run_date=run_date, started_at=started, status="failed",
                           error=f"{type(exc).__name__}: {exc}")
            except Exception:  # noqa: BLE001 - the failure above is the one to report
                pass
            return EXIT_FAILED
        record_run(spark, config, result, run_id=run_id, run_date=run_date, started_at=started, status="ok")
        print(result.summary())
        print(result.index_path)
        return None

    return run_job(report)


if __name__ == "__main__":
    raise SystemExit(main())
