"""``spark-submit jobs/promote.py``: the same job as the ``camenn-promote`` command (pipeline/jobs/promote.py)."""

from pipeline.jobs.promote import main

if __name__ == "__main__":
    raise SystemExit(main())
