"""Table contracts: constraints reject bad rows without a commit; run-date writes are idempotent."""

from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_df_equality
from conftest import tiny_config

from pipeline import tables

RUN = dt.date(2026, 11, 24)


def cvr_rows(spark, rows):
    return spark.createDataFrame([(*r, None) for r in rows],
                                 "run_date date, user_id string, item_id string, cvr double, model_version string, inputs_hash string")


@pytest.fixture()
def config(tmp_path):
    return tiny_config(tmp_path)


def test_every_table_is_created_with_its_contract(spark, config):
    for name, spec in tables.SPECS.items():
        path = tables.ensure_table(spark, config, name)
        df = spark.read.format("delta").load(path)
        assert df.schema.fieldNames() == tables.schema_of(spark, name).fieldNames(), name
        for key in spec.key:
            assert not df.schema[key].nullable, f"{name}.{key} must be NOT NULL"


def test_rerun_of_a_date_replaces_its_rows(spark, config):
    first = cvr_rows(spark, [(RUN, "u1", "i1", 0.2, "m1"), (RUN, "u1", "i2", 0.3, "m1")])
    other_day = cvr_rows(spark, [(RUN - dt.timedelta(days=1), "u1", "i1", 0.9, "m0")])
    tables.replace_run_date(spark, config, "cvr_scores", other_day, RUN - dt.timedelta(days=1))
    tables.replace_run_date(spark, config, "cvr_scores", first, RUN)
    second = cvr_rows(spark, [(RUN, "u1", "i1", 0.25, "m2"), (RUN, "u1", "i2", 0.35, "m2")])
    tables.replace_run_date(spark, config, "cvr_scores", second, RUN)
    table = tables.read_table(spark, config, "cvr_scores").drop("run_id")   # a writer with no run id leaves it null
    assert_df_equality(table, second.unionByName(other_day), ignore_row_order=True, ignore_nullable=True)


@pytest.mark.parametrize("bad_row", [
    (RUN, "u1", "i1", 1.5, "m1"),      # probability out of range
    (RUN, None, "i1", 0.5, "m1"),      # null key
])
def test_constraint_violation_commits_nothing(spark, config, bad_row):
    tables.replace_run_date(spark, config, "cvr_scores", cvr_rows(spark, [(RUN, "u0", "i0", 0.5, "m1")]), RUN)
    before = tables.table_version(spark, config, "cvr_scores")
    with pytest.raises(Exception, match="(?i)constraint|null"):
        tables.replace_run_date(spark, config, "cvr_scores", cvr_rows(spark, [(RUN, "u9", "i9", 0.1, "m1"), bad_row]), RUN)
    assert tables.table_version(spark, config, "cvr_scores") == before
    assert tables.read_table(spark, config, "cvr_scores").count() == 1


def test_missing_table_says_how_to_make_it(spark, config):
    with pytest.raises(tables.MissingTable, match="make_demo_data.py"):
        tables.read_table(spark, config, "items")


@pytest.mark.faults
def test_a_table_left_without_its_constraints_gets_them_before_a_write(spark, config):
    """A run killed between CREATE TABLE and ADD CONSTRAINT leaves a bare table: the next write adds them first."""
    path = config.table("cvr_scores")
    spark.sql(f"CREATE TABLE delta.`{path}` ({tables.SPECS['cvr_scores'].columns}) USING DELTA PARTITIONED BY (run_date)")
    with pytest.raises(Exception, match="(?i)constraint"):
        tables.replace_run_date(spark, config, "cvr_scores", cvr_rows(spark, [(RUN, "u1", "i1", 7.5, "m1")]), RUN)
    props = {r["key"] for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()}
    assert "delta.constraints.cvr_is_probability" in props
    assert tables.read_table(spark, config, "cvr_scores").count() == 0


def model_output_rows(spark, ids, content="c0"):
    return spark.createDataFrame(
        [(i, content, "Fruit", 1.0, "m1", b"\x00" * 8, 1, b"\x00" * 8, 0.9, 0.9, dt.datetime(2026, 11, 24), 0) for i in ids],
        tables.input_schema(spark, "item_model_outputs"))


def test_a_cache_merge_marks_replaced_rows_instead_of_rewriting_files(spark, config):
    from pipeline import model_cache

    path = tables.ensure_table(spark, config, "item_model_outputs")
    tables.append_rows(spark, config, "item_model_outputs", model_output_rows(spark, [f"i{n}" for n in range(50)]).coalesce(1))
    model_cache._merge(spark, config, model_output_rows(spark, ["i3"], content="c1"))
    metrics = spark.sql(f"DESCRIBE HISTORY delta.`{path}` LIMIT 1").first()["operationMetrics"]
    assert int(metrics["numTargetRowsUpdated"]) == 1
    assert int(metrics["numTargetDeletionVectorsAdded"]) == 1
    assert int(metrics["numTargetFilesRemoved"]) == 0, "the 50-row file was rewritten for one changed row"
    table = tables.read_table(spark, config, "item_model_outputs")
    assert table.count() == 50 and table.where("content_hash = 'c1'").select("item_id").first()[0] == "i3"


def feature_rows(spark, ids, content="c0", value=0.0):
    """item_features rows of one text token and one patch of 4 fp16 values each, all equal to ``value``."""
    import numpy as np

    blob = np.full(4, value, dtype=np.float16).tobytes()
    return spark.createDataFrame([(i, content, "enc1", blob, 1, blob, dt.datetime(2026, 11, 24), None, None) for i in ids],
                                 tables.schema_of(spark, "item_features"))


def test_a_feature_merge_marks_replaced_rows_and_the_evaluation_store_reads_them(spark, config):
    """item_features has deletion vectors too: one re-encoded item of 50 rewrites no file, and the
    whole-catalogue store (read through Spark, as delta-rs cannot) holds its new features once."""
    from camenn.inputs import FeatureVocab
    from pipeline import feature_cache
    from pipeline.training_data import load_item_store

    ids = [f"i{n:02d}" for n in range(50)]
    path = tables.ensure_table(spark, config, "item_features")
    tables.append_rows(spark, config, "item_features", feature_rows(spark, ids).coalesce(1))
    feature_cache._merge(spark, config, feature_rows(spark, ["i03"], content="c1", value=1.0).drop("encoder_fingerprint"),
                         "enc1")
    metrics = spark.sql(f"DESCRIBE HISTORY delta.`{path}` LIMIT 1").first()["operationMetrics"]
    assert int(metrics["numTargetRowsUpdated"]) == 1
    assert int(metrics["numTargetDeletionVectorsAdded"]) == 1
    assert int(metrics["numTargetFilesRemoved"]) == 0, "the 50-row file was rewritten for one changed row"
    items = spark.createDataFrame([(i, "m1", "Fruit", "t", "d", b"", 1.0, dt.datetime(2026, 11, 24), "c", 0) for i in ids],
                                  tables.schema_of(spark, "items"))
    tables.append_rows(spark, config, "items", items)
    vocab = FeatureVocab(categories=["Fruit"], price_edges=[0.5])
    store = load_item_store(spark, path, None, config.table("items"), None, "enc1", vocab, n_patches=1)
    assert store.item_ids == ids
    assert float(store.text[3].float().mean()) == 1.0 and float(store.text[2].float().mean()) == 0.0


def test_a_cache_table_created_before_deletion_vectors_gets_them(spark, config):
    path = config.table("item_model_outputs")
    spark.sql(f"CREATE TABLE delta.`{path}` ({tables.SPECS['item_model_outputs'].columns}) USING DELTA")
    tables.ensure_table(spark, config, "item_model_outputs")
    props = {r["key"]: r["value"] for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()}
    assert props.get("delta.enableDeletionVectors") == "true"


def test_a_cache_table_written_before_its_buckets_is_rewritten_once_by_bucket(spark, config):
    """An older item_model_outputs (no bucket or n_views column, not partitioned) keeps its rows and gains
    each row's bucket, and n_views null (scored over the photo alone)."""
    from delta.tables import DeltaTable

    path = config.table("item_model_outputs")
    old = model_output_rows(spark, [f"i{n}" for n in range(30)]).drop("n_views")
    old.write.format("delta").save(path)
    tables.ensure_table(spark, config, "item_model_outputs")
    assert DeltaTable.forPath(spark, path).detail().first()["partitionColumns"] == ["bucket"]
    got = tables.read_table(spark, config, "item_model_outputs")
    assert got.where("n_views IS NOT NULL").count() == 0
    assert_df_equality(got.drop("bucket", "n_views"), old, ignore_row_order=True, ignore_column_order=True,
                       ignore_nullable=True)
    expected = old.select("item_id", tables.token_bucket(config).cast("int").alias("bucket"))
    assert_df_equality(got.select("item_id", "bucket"), expected, ignore_row_order=True, ignore_nullable=True)
    assert got.select("bucket").distinct().count() > 1
    # the next writer finds the layout in place: one rewrite, not one per run
    versions = DeltaTable.forPath(spark, path).history().count()
    tables._REPAIRED.clear()
    tables.ensure_table(spark, config, "item_model_outputs")
    assert DeltaTable.forPath(spark, path).history().count() == versions


def test_a_cache_with_deletion_vectors_reads_in_a_join(spark, config):
    """After a MERGE wrote a deletion vector, the cache reads, filters and joins as before (the nightly's use)."""
    from pipeline import model_cache

    tables.append_rows(spark, config, "item_model_outputs", model_output_rows(spark, [f"i{n}" for n in range(20)]).coalesce(1))
    model_cache._merge(spark, config, model_output_rows(spark, ["i3"], content="c1"))
    keys = spark.createDataFrame([(f"i{n}",) for n in range(0, 20, 2)], "item_id string").localCheckpoint()
    joined = tables.read_table(spark, config, "item_model_outputs").where("model_version = 'm1'").join(keys, "item_id")
    assert joined.count() == 10 and joined.where("content_hash = 'c1'").count() == 0
