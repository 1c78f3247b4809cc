"""``spark-submit jobs/train.py``: the same job as the ``camenn-train`` command (pipeline/jobs/train.py)."""

from pipeline.jobs.train import main

if __name__ == "__main__":
    raise SystemExit(main())
