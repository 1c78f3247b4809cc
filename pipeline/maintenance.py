"""Upkeep of the tables the nightly job MERGEs: compaction that drops deleted rows, then VACUUM.

    result = maintain(spark, config, run_date, retention_hours=168.0)   # spark-submit jobs/maintain_tables.py

The caches ``item_features`` and ``item_model_outputs`` are MERGEd every night with deletion
vectors (pipeline.tables): a changed item's old row stays in its data file, only marked as
deleted, and each MERGE adds a small file of the new rows. Left alone, a quiet night's 1% of
changed items leaves 1% more dead rows that every read skips, and the table gains a small file
per night. Delta's OPTIMIZE rewrites the files whose deleted share is above
``spark.databricks.delta.optimize.maxDeletedRowsRatio`` (0.05 by default) and bins small files
together; VACUUM then removes the files that no version inside the retention window reads.

The retention bounds time travel: a version older than ``retention_hours`` can no longer be read
once its files are vacuumed. Training pins the versions it read (the artifact's
``table_versions``) and the weekly chain evaluates right after it trains, so the default
(7 days, Delta's own minimum without overriding its safety check) keeps every version the
chain needs. Both steps are Delta commits that readers never notice: a night running at the
same time reads a consistent snapshot, and OPTIMIZE commits only if no MERGE touched its files
meanwhile (otherwise it fails and the next upkeep redoes it).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass, field

from pyspark.sql import SparkSession

from camenn.config import AppConfig
from pipeline import run_record, tables

JOB = "maintain_tables"
TABLES = ("item_features", "item_model_outputs")
DEFAULT_RETENTION_HOURS = 168.0


@dataclass
class MaintenanceRun:
    run_id: str
    run_date: dt.date
    status: str
    tables: dict[str, dict] = field(default_factory=dict)   # table -> files / bytes before and after, OPTIMIZE metrics
    skipped: dict[str, str] = field(default_factory=dict)   # table -> why it was left alone

    def summary(self) -> str:
        lines = [f"maintain_tables {self.run_date}, run {self.run_id}: {self.status}"]
        for name, t in self.tables.items():
            lines.append(f"  {name}: {t['files_before']} files ({t['bytes_before'] / 1e6:.1f} MB) -> "
                         f"{t['files_after']} files ({t['bytes_after'] / 1e6:.1f} MB); OPTIMIZE rewrote "
                         f"{t['files_removed']} file(s) into {t['files_added']}, dropping {t['deleted_rows_dropped']} deleted "
                         f"row(s) of {t['deletion_vectors_removed']} deletion vector(s); {t['seconds']:.1f} s")
        lines += [f"  {name}: skipped, {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def _detail(spark: SparkSession, path: str) -> tuple[int, int]:
    row = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").select("numFiles", "sizeInBytes").first()
    return int(row["numFiles"]), int(row["sizeInBytes"])


def maintain_table(spark: SparkSession, path: str, retention_hours: float) -> dict:
    """OPTIMIZE (bin compaction, which also rewrites files with many deleted rows), then VACUUM; the figures."""
    from delta.tables import DeltaTable

    t0 = time.perf_counter()
    files_before, bytes_before = _detail(spark, path)
    table = DeltaTable.forPath(spark, path)
    metrics = table.optimize().executeCompaction().select("metrics").first()["metrics"].asDict(recursive=True)
    dv = metrics.get("deletionVectorStats") or {}
    table.vacuum(retention_hours)
    files_after, bytes_after = _detail(spark, path)
    return {"files_before": files_before, "bytes_before": bytes_before, "files_after": files_after,
            "bytes_after": bytes_after, "files_removed": int(metrics.get("numFilesRemoved") or 0),
            "files_added": int(metrics.get("numFilesAdded") or 0),
            "deletion_vectors_removed": int(dv.get("numDeletionVectorsRemoved") or 0),
            "deleted_rows_dropped": int(dv.get("numDeletionVectorRowsRemoved") or 0),
            "seconds": time.perf_counter() - t0}


def maintain(spark: SparkSession, config: AppConfig, run_date: dt.date, *, names: tuple[str, ...] = TABLES,
             retention_hours: float = DEFAULT_RETENTION_HOURS) -> MaintenanceRun:
    """Compact and vacuum each table of ``names`` that exists; one ``runs`` row records the figures or the error."""
    result = MaintenanceRun(run_id=f"{JOB}-{run_date.isoformat()}-{uuid.uuid4().hex[:8]}", run_date=run_date,
                            status=run_record.RUNNING)
    started = run_record.now()
    error = None
    try:
        for name in names:
            path = config.table(name)
            if not tables.is_delta(spark, path):
                result.skipped[name] = "no table yet"
                continue
            spark.sparkContext.setJobDescription(f"maintain: OPTIMIZE and VACUUM {name}")
            result.tables[name] = maintain_table(spark, path, retention_hours)
        result.status = run_record.SUCCEEDED
    except BaseException as exc:
        result.status, error = run_record.FAILED, f"{type(exc).__name__}: {exc}"
        raise
    finally:
        spark.sparkContext.setJobDescription(None)
        run_record.finish(spark, config, run_id=result.run_id, job=JOB, run_date=run_date, model_version=None,
                          started_at=started, status=result.status,
                          counts={f"{n}_files_after": t["files_after"] for n, t in result.tables.items()},
                          timings={n: t["seconds"] for n, t in result.tables.items()},
                          details={"tables": result.tables, "skipped": result.skipped,
                                   "retention_hours": retention_hours}, error=error)
    return result


__all__ = ["maintain", "maintain_table", "MaintenanceRun", "TABLES", "JOB", "DEFAULT_RETENTION_HOURS"]
