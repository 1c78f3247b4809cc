"""``spark-submit jobs/make_demo_data.py``: the same job as the ``camenn-demo-data`` command (pipeline/jobs/make_demo_data.py)."""

from pipeline.jobs.make_demo_data import main

if __name__ == "__main__":
    raise SystemExit(main())
