"""The item feature cache on real Spark + Delta: validation, quarantine, incremental encoding."""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import jpeg_with_shapes, tiny_config
from pyspark.sql import functions as F

from pipeline import feature_cache, tables

RUN = dt.date(2026, 11, 24)
T0 = dt.datetime(2026, 11, 1, 8, 0)

COLOURS = ["red", "green", "blue", "orange", "purple", "brown", "pink", "grey", "yellow", "white"]
CATEGORIES = ["fruit", "dairy", "bakery", "drinks"]


def jpeg(seed: int, px: int = 64) -> bytes:
    return jpeg_with_shapes(COLOURS[seed % len(COLOURS)], seed, px)


_DEFAULT = object()


def item_row(i: int, title=_DEFAULT, description=_DEFAULT, image=_DEFAULT, item_id=_DEFAULT):
    """A valid items row for item i; any field given replaces the default (None included)."""
    category = CATEGORIES[i % len(CATEGORIES)]
    return (f"i{i:03d}" if item_id is _DEFAULT else item_id, f"m{i % 3}", category,
            f"{COLOURS[i % len(COLOURS)]} {category} item {i}" if title is _DEFAULT else title,
            f"a fresh {category} product number {i}" if description is _DEFAULT else description,
            jpeg(i) if image is _DEFAULT else image, 1.0 + (i % 7) * 2.5, T0 + dt.timedelta(hours=i))


def clean_items(n: int) -> list[tuple]:
    return [item_row(i) for i in range(n)]


def poison_items(start: int) -> list[tuple]:
    """Rows the pipeline must quarantine, each with the reason it must give."""
    good = jpeg(start)
    return [
        item_row(start, image=b"this is not an image"),                       # undecodable
        item_row(start + 1, image=good[: len(good) // 2]),                    # truncated JPEG
        item_row(start + 2, title="  ", description="\u3000"),                # empty text (a full-width space)
        item_row(start + 3, item_id="   "),                                   # blank key
        item_row(start + 4, image=b""),                                       # missing image
    ]


POISON_REASONS = {"image: cannot decode": 2, "text: empty title and description": 1,
                  "item_id: null or blank": 1, "image: missing": 1}


def items_frame(spark, rows):
    return spark.createDataFrame(rows, tables.input_schema(spark, "items"))


def nullable_items_schema(spark):
    """The items contract without NOT NULL, for frames that carry rows the table would refuse."""
    from pyspark.sql.types import StructType

    schema = tables.input_schema(spark, "items").jsonValue()
    return StructType.fromJson({**schema, "fields": [{**f, "nullable": True} for f in schema["fields"]]})


def checked(spark, df):
    """checked_items over a frame as a writer gives it: the stored columns derived first, as the table would."""
    return feature_cache.checked_items(feature_cache.item_rows(spark, None, df))


def write_items(spark, config, rows):
    tables.overwrite_table(spark, config, "items", items_frame(spark, rows))


@pytest.fixture()
def config(tmp_path):
    return tiny_config(tmp_path)


def test_fingerprint_is_the_featurizers(config):
    from udfs.encode import get_featurizer

    cfg = feature_cache.featurizer_config(config)
    assert feature_cache.featurizer_fingerprint(cfg) == get_featurizer(cfg, "cpu").fingerprint


def test_checked_items_reasons(spark):
    rows = [item_row(0), item_row(1, title="", description=" \t"), item_row(2, image=b""),
            item_row(3, item_id=" ", title="\u3000", description=""),
            # the same item twice: the newer row wins, the older one is a duplicate
            item_row(4), item_row(4, title="newer title")[:7] + (T0 + dt.timedelta(days=30),)]
    df = spark.createDataFrame(rows, nullable_items_schema(spark))
    got = {(r.item_id, r.title): r.reason for r in checked(spark, df).collect()}
    assert got[("i000", rows[0][3])] is None
    assert got[("i001", "")] == "text: empty title and description"
    assert got[("i002", rows[2][3])] == "image: missing"
    assert got[(" ", "\u3000")] == "item_id: null or blank; text: empty title and description"
    assert got[("i004", "newer title")] is None
    assert got[("i004", rows[4][3])].startswith("item_id: duplicate")


def test_incremental_update_reencodes_only_changed_items(spark, config):
    n_clean = 12
    rows = clean_items(n_clean) + poison_items(100)
    write_items(spark, config, rows)

    first = feature_cache.update_item_features(spark, config, RUN)
    print("first run:", first)
    assert first.items_in == len(rows) == first.valid + first.quarantined_total
    assert (first.valid, first.encoded, first.reused) == (n_clean, n_clean, 0)
    assert first.quarantined == POISON_REASONS

    cache = tables.read_table(spark, config, "item_features").collect()
    assert len(cache) == n_clean
    assert {r.encoder_fingerprint for r in cache} == {first.fingerprint}
    stamps = {r.item_id: r.updated_at for r in cache}

    # nothing changed: nothing is encoded, the quarantine keeps one row per bad item
    again = feature_cache.update_item_features(spark, config, RUN)
    assert (again.encoded, again.reused, again.quarantined) == (0, n_clean, POISON_REASONS)
    quarantine = tables.read_table(spark, config, "quarantine").where(F.col("run_date") == F.lit(RUN))
    assert quarantine.count() == sum(POISON_REASONS.values())
    assert quarantine.where("source = 'items' AND job = 'item_features'").count() == quarantine.count()
    decode_rows = quarantine.where(F.col("reason").startswith("image: cannot decode")).collect()
    assert sorted(r.key for r in decode_rows) == ["i100", "i101"]
    assert '"title"' in decode_rows[0].payload
    # an empty MERGE source rewrites no row
    assert {r.item_id: r.updated_at for r in tables.read_table(spark, config, "item_features").collect()} == stamps

    # three titles change: exactly those three are encoded again
    changed = {"i002", "i005", "i009"}
    before = {r.item_id: (r.content_hash, r.text_emb) for r in tables.read_table(spark, config, "item_features").collect()}
    rows2 = [r if r[0] not in changed else (r[0], r[1], r[2], r[3] + " (new pack)") + r[4:] for r in rows]
    write_items(spark, config, rows2)
    third = feature_cache.update_item_features(spark, config, RUN)
    assert (third.encoded, third.reused, third.valid) == (3, n_clean - 3, n_clean)
    after = {r.item_id: (r.content_hash, r.text_emb) for r in tables.read_table(spark, config, "item_features").collect()}
    assert len(after) == n_clean
    assert {k for k in after if after[k][0] != before[k][0]} == changed
    assert all(after[k][1] != before[k][1] for k in changed)


def test_staging_tables_of_killed_runs_are_swept_and_fresh_ones_kept(spark, config):
    root = Path(config.table("item_features") + "_staging")
    killed, running = root / "2026-11-01-0badc0de", root / "2026-11-24-5ca1ab1e"
    for folder in (killed, running):
        (folder / "_delta_log").mkdir(parents=True)
        (folder / "part-00000.parquet").write_bytes(b"half-written")
    week_ago = time.time() - 7 * 86400
    os.utime(killed, (week_ago, week_ago))
    deleted = feature_cache.sweep_stale_staging(spark, config)
    assert [Path(p).name for p in deleted] == [killed.name]
    assert not killed.exists() and running.exists()
    assert feature_cache.sweep_stale_staging(spark, config) == []


def test_items_frame_with_null_key_and_valid_items(spark, config):
    rows = clean_items(4) + [item_row(50, item_id=None)]
    df = spark.createDataFrame(rows, nullable_items_schema(spark))
    update = feature_cache.run_feature_update(spark, config, RUN, items_df=df, job="score_catalog")
    try:
        assert update.stats.quarantined == {"item_id: null or blank": 1}
        assert update.stats.valid == 4
        q = tables.read_table(spark, config, "quarantine").collect()
        assert [(r.job, r.source, r.key) for r in q] == [("score_catalog", "items", None)]
        valid = feature_cache.valid_items(spark, config, update.fingerprint, keys=update.valid_keys(spark))
        assert sorted(r.item_id for r in valid.collect()) == ["i000", "i001", "i002", "i003"]
    finally:
        update.cleanup(spark)
    # the same set recomputed from the items frame's hashes (the training side's way in)
    write_items(spark, config, rows[:4])
    again = feature_cache.valid_items(spark, config)
    assert again.count() == 4 and again.where("n_text_tokens > 0").count() == 4


def test_behaviour_at_the_run_date(spark):
    """pipeline.history's rule at a run date: the last N purchases of known items strictly before it, oldest first."""
    from pipeline import history

    ts = lambda d, h=0: dt.datetime(2026, 11, d, h)  # noqa: E731
    events = spark.createDataFrame([
        ("u1", "a", ts(1), "purchase", 1.0), ("u1", "b", ts(2), "purchase", 1.0), ("u1", "c", ts(3), "purchase", 1.0),
        ("u1", "d", ts(4), "purchase", 1.0), ("u1", "e", ts(24, 1), "purchase", 1.0),   # on the run date: excluded
        ("u1", "x", ts(5), "view", 1.0),                                                   # not a purchase
        ("u1", "gone", ts(6), "purchase", 1.0),                                            # no features: skipped
        ("u2", "a", ts(1), "purchase", 1.0),
        ("u3", "b", ts(1), "purchase", 1.0),
    ], "user_id string, item_id string, ts timestamp, event string, price double")
    known = spark.createDataFrame([(i,) for i in "abcdex"], "item_id string")
    users = spark.createDataFrame([("u1",), ("u2",)], "user_id string")
    got = {r.user_id: r.behaviour for r in history.behaviour_at(events, RUN, 3, known, users).collect()}
    assert got == {"u1": ["b", "c", "d"], "u2": ["a"]}
    users3 = spark.createDataFrame([("u1",), ("u4",)], "user_id string")   # u4 never bought: an empty history
    assert {r.user_id: r.behaviour for r in history.behaviour_at(events, RUN, 3, known, users3).collect()} == \
        {"u1": ["b", "c", "d"], "u4": []}


def test_change_detection_reads_no_image_of_an_unchanged_item(spark, config):
    """Three changed items: exactly three encoded; the plan of the unchanged side never touches ``image``."""
    write_items(spark, config, clean_items(8))
    assert feature_cache.update_item_features(spark, config, RUN).encoded == 8
    stored = tables.read_table(spark, config, "items").collect()
    assert all(r.content_hash and r.image_size for r in stored)

    changed = {"i001", "i004", "i006"}
    rows = [r if r[0] not in changed else r[:5] + (jpeg(100 + int(r[0][1:])),) + r[6:] for r in clean_items(8)]
    write_items(spark, config, rows)
    keys = feature_cache._item_keys(spark, config, feature_cache.featurizer_fingerprint(feature_cache.featurizer_config(config)), None)
    assert "image" not in keys.columns
    plan = keys._jdf.queryExecution().executedPlan().toString()
    scans = re.findall(r"ReadSchema: (struct<[^>]*>)", plan)
    assert scans and not any("image:binary" in schema for schema in scans), scans
    stats = feature_cache.update_item_features(spark, config, RUN)
    assert (stats.encoded, stats.reused) == (3, 5)
    assert feature_cache.update_item_features(spark, config, RUN).encoded == 0


def test_an_items_table_written_without_hashes_still_works(spark, config):
    """A table of the older contract (no content_hash, no image_size): hashes computed on the fly, then stored on write."""
    from pyspark.sql.types import StructType

    old = StructType([f for f in tables.input_schema(spark, "items").fields])
    path = config.table("items")
    spark.createDataFrame(clean_items(4), old).write.format("delta").save(path)
    assert feature_cache.legacy_rows(spark, config) == 4
    first = feature_cache.update_item_features(spark, config, RUN)
    assert (first.valid, first.encoded) == (4, 4)
    # the same content written through the contract (ensure_table adds the columns) is not encoded again
    write_items(spark, config, clean_items(4))
    assert feature_cache.legacy_rows(spark, config) == 0
    again = feature_cache.update_item_features(spark, config, RUN)
    assert (again.encoded, again.reused) == (0, 4)


# ------------------------------------------------------------------------ prepare threads


def udf_frame(rows) -> pd.DataFrame:
    """Rows as the encode UDF receives them: the items columns with image_size and content_hash."""
    columns = ["item_id", "merchant_id", "category", "title", "description", "image", "price", "updated_at"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["image_size"] = [len(b) for b in frame["image"]]
    frame["content_hash"] = [f"h{i}" for i in range(len(frame))]
    return frame


def test_prepared_ahead_keeps_the_order_and_raises_the_first_failure():
    from udfs.encode import prepared_ahead

    def slow_square(i):   # later chunks finish first: the order must come from the queue, not the pool
        time.sleep(0.02 * (5 - i % 5))
        if i == 7:
            raise ValueError("chunk 7 is bad")
        return i * i

    assert list(prepared_ahead(range(7), slow_square, threads=3)) == [(i, i * i) for i in range(7)]
    got = []
    with pytest.raises(ValueError, match="chunk 7 is bad"):
        for chunk, _square in prepared_ahead(range(12), slow_square, threads=4):
            got.append(chunk)
    assert got == list(range(7))


def test_several_prepare_threads_give_the_rows_one_thread_gives(config):
    """The GPU setting (a task's CPUs preparing) against the CPU one, on the same chunks: every row,
    blob and quarantine reason identical, so the fast tokenizer is safe across the threads."""
    from udfs.encode import encode_fn

    cfg = feature_cache.featurizer_config(config)
    fingerprint = feature_cache.featurizer_fingerprint(cfg)
    frame = udf_frame(clean_items(9) + [row for row in poison_items(20) if row[0].strip()])
    outputs = {threads: pd.concat(list(encode_fn(cfg, fingerprint, chunk_rows=2, threads=threads)(iter([frame]))),
                                  ignore_index=True)
               for threads in (1, 3)}
    pd.testing.assert_frame_equal(outputs[3], outputs[1])
    assert list(outputs[1]["item_id"]) == list(frame["item_id"])
    assert (outputs[1]["status"] == "encoded").sum() == 9 and outputs[1]["text_emb"].notna().sum() == 9
