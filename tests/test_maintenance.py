"""Upkeep of the MERGEd caches: OPTIMIZE drops rows marked deleted, VACUUM the files, readers see the same rows."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from chispa import assert_df_equality
from conftest import TESTS, TINY_CONF, tiny_config
from test_tables import model_output_rows

from pipeline import maintenance, model_cache, tables

RUN = dt.date(2026, 11, 24)


def parquet_files(path: str) -> list[Path]:
    return sorted(p for p in Path(path).rglob("*.parquet") if "_delta_log" not in p.parts)


def nights_of_merges(spark, config, n_items: int = 60, nights: int = 3) -> str:
    """One 60-row file of item_model_outputs, then ``nights`` MERGEs of 10 changed items each."""
    path = tables.ensure_table(spark, config, "item_model_outputs")
    tables.append_rows(spark, config, "item_model_outputs",
                       model_output_rows(spark, [f"i{k:02d}" for k in range(n_items)]).coalesce(1))
    for night in range(nights):
        changed = [f"i{k:02d}" for k in range(night * 10, night * 10 + 10)]
        model_cache._merge(spark, config, model_output_rows(spark, changed, content=f"c{night + 1}"))
    return path


def test_maintain_drops_deletion_vectors_and_old_files_and_keeps_every_row(spark, tmp_path):
    config = tiny_config(tmp_path, "scoring.token_buckets=1")   # one partition: "one file" means the table
    path = nights_of_merges(spark, config)
    before = tables.read_table(spark, config, "item_model_outputs")
    expected = spark.createDataFrame(before.collect(), before.schema)   # the rows as they read now, held apart
    n_files = len(parquet_files(path))
    assert n_files >= 4   # the first file and the MERGEs' new rows; the replaced rows only marked as deleted

    # VACUUM of files younger than Delta's 7-day floor needs its safety check off (a test only)
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    try:
        result = maintenance.maintain(spark, config, RUN, names=("item_model_outputs", "item_features"),
                                      retention_hours=0.0)
    finally:
        spark.conf.unset("spark.databricks.delta.retentionDurationCheck.enabled")
    print(result.summary())
    figures = result.tables["item_model_outputs"]
    assert result.status == "succeeded" and result.skipped == {"item_features": "no table yet"}
    assert figures["files_before"] == n_files and figures["files_after"] == 1
    assert figures["deletion_vectors_removed"] >= 1 and figures["deleted_rows_dropped"] == 30   # 3 nights x 10 items
    assert len(parquet_files(path)) == 1, "VACUUM left the rewritten files on disk"
    assert_df_equality(tables.read_table(spark, config, "item_model_outputs"), expected,
                       ignore_row_order=True, ignore_nullable=True)
    (row,) = tables.read_table(spark, config, "runs").where("job = 'maintain_tables'").collect()
    assert row["status"] == "succeeded" and row["counts"]["item_model_outputs_files_after"] == 1
    assert json.loads(row["details"])["retention_hours"] == 0.0


def test_maintain_job_refuses_a_negative_retention(tmp_path):
    out = subprocess.run([sys.executable, str(TESTS.parent / "jobs" / "maintain_tables.py"), "--conf",
                          str(TINY_CONF), "--retention-hours", "-1"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2 and "--retention-hours must be >= 0" in out.stderr
