"""``spark-submit jobs/quality_report.py``: the same job as the ``camenn-report`` command (pipeline/jobs/quality_report.py)."""

from pipeline.jobs.quality_report import main

if __name__ == "__main__":
    raise SystemExit(main())
