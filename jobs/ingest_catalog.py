"""``spark-submit jobs/ingest_catalog.py``: the same job as the ``camenn-ingest`` command (pipeline/jobs/ingest_catalog.py)."""

from pipeline.jobs.ingest_catalog import main

if __name__ == "__main__":
    raise SystemExit(main())
