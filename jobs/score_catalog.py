"""``spark-submit jobs/score_catalog.py``: the same job as the ``camenn-score`` command (pipeline/jobs/score_catalog.py)."""

from pipeline.jobs.score_catalog import main

if __name__ == "__main__":
    raise SystemExit(main())
