"""Ingest of users and candidates exports (issue 15, 5) through jobs/ingest_catalog.py, real Spark + Delta.

The exports use their own column names, mapped with --user-map / --candidate-map like items and
events; rows that cannot land are quarantined with one reason each; a rerun of the run date's
candidates replaces them.
"""

from __future__ import annotations

import datetime as dt
import json

from conftest import tiny_config
from pyspark.sql import functions as F
from test_feature_cache import clean_items, write_items

from pipeline import tables

RUN = dt.date(2026, 11, 24)

USERS = """id,age_group,members,region
u1,25-34,ACTIVE,north
u2,35-44,,south
,45-54,ACTIVE,east
u2,35-44,PRE-CREATE,west
u3,18-24,ACTIVE,
"""

CANDIDATES = """member,sku
u1,i000
u1,i000
u1,i001
u2,i002
u2,i999
u9,i001
,i001
"""


def ingest(root, config, *extra):
    from pipeline.jobs.ingest_catalog import main

    conf = root / "conf.yaml"
    conf.write_text(f"name: t\ndata: {{root: {config.data.root}}}\n")
    return main(["--conf", str(conf), "--run-date", RUN.isoformat(),
                 "--user-map", "user_id=id", "--user-map", "age_band=age_group", "--user-map", "household=members",
                 "--user-map", "zone=region", "--candidate-map", "user_id=member", "--candidate-map", "item_id=sku",
                 *extra])


def reasons(spark, config, source):
    rows = (tables.read_table(spark, config, "quarantine")
            .where((F.col("source") == source) & (F.col("run_date") == F.lit(RUN))).collect())
    return sorted((r.key, r.reason) for r in rows)


def test_users_and_candidates_exports_land_with_mappings_or_are_quarantined(spark, tmp_path):
    config = tiny_config(tmp_path)
    write_items(spark, config, clean_items(3))                                   # i000, i001, i002
    (tmp_path / "users.csv").write_text(USERS)
    (tmp_path / "candidates.csv").write_text(CANDIDATES)

    assert ingest(tmp_path, config, "--users-path", str(tmp_path / "users.csv"),
                  "--candidates-path", str(tmp_path / "candidates.csv")) == 0

    users = {r.user_id: (r.age_band, r.household, r.zone) for r in tables.read_table(spark, config, "users").collect()}
    assert users == {"u1": ("25-34", "ACTIVE", "north"), "u2": ("35-44", "PRE-CREATE", "west"),   # the last u2 wins
                     "u3": ("18-24", "ACTIVE", None)}
    assert reasons(spark, config, "users") == [("", "missing user_id"), ("u2", "duplicate user_id")]

    cands = tables.read_table(spark, config, "candidates").where(F.col("run_date") == F.lit(RUN))
    assert sorted((r.user_id, r.item_id) for r in cands.collect()) == [("u1", "i000"), ("u1", "i001"), ("u2", "i002")]
    assert reasons(spark, config, "candidates") == sorted([("|i001", "missing user_id"), ("u2|i999", "unknown item_id"),
                                                           ("u9|i001", "unknown user_id")])

    run = (tables.read_table(spark, config, "runs").where(F.col("job") == "ingest").orderBy(F.col("finished_at").desc())
           .first())
    counts = json.loads(run.counts) if isinstance(run.counts, str) else dict(run.counts)
    assert counts["users_in"] == 5 and counts["users_landed"] == 3 and counts["users_quarantined"] == 2
    assert counts["candidates_in"] == 7 and counts["candidates_landed"] == 4 and counts["candidates_quarantined"] == 3

    # a rerun of the date's candidates replaces them: one row per pair, whatever ran before
    (tmp_path / "candidates.csv").write_text("member,sku\nu3,i002\n")
    assert ingest(tmp_path, config, "--candidates-path", str(tmp_path / "candidates.csv")) == 0
    cands = tables.read_table(spark, config, "candidates").where(F.col("run_date") == F.lit(RUN))
    assert [(r.user_id, r.item_id) for r in cands.collect()] == [("u3", "i002")]
    assert reasons(spark, config, "candidates") == []


def test_a_users_mapping_to_a_missing_column_is_one_line_before_any_write(spark, tmp_path, capsys):
    config = tiny_config(tmp_path)
    (tmp_path / "users.csv").write_text(USERS)
    assert ingest(tmp_path, config, "--users-path", str(tmp_path / "users.csv"), "--user-map", "zone=postcode") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'postcode' (mapped to zone)" in err
    assert not tables.is_delta(spark, config.table("users"))
