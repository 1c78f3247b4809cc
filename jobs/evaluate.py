"""``spark-submit jobs/evaluate.py``: the same job as the ``camenn-evaluate`` command (pipeline/jobs/evaluate.py)."""

from pipeline.jobs.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
