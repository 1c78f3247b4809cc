"""``spark-submit jobs/maintain_tables.py``: the same job as the ``camenn-maintain`` command (pipeline/jobs/maintain_tables.py)."""

from pipeline.jobs.maintain_tables import main

if __name__ == "__main__":
    raise SystemExit(main())
