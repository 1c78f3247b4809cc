"""The item feature cache: validate items, encode only what changed, MERGE into item_features.

    stats = update_item_features(spark, config, run_date)      # FeatureStats
    items = valid_items(spark, config)                          # valid items joined to their features

One pass over ``items``' small columns per run; images are read only for new or changed items:

1. Spark checks the cheap things (null/blank item_id, empty text = title and description both
   blank, missing image from the stored ``image_size``, duplicate item_id: the newest row wins)
   and left-joins each item's stored ``content_hash`` (computed once, when the row was written:
   ``pipeline.tables.content_hash``) to the hash ``item_features`` holds for it under the
   current encoder fingerprint. Equal hashes are settled here, in Spark: no image is read.
2. Only the pending rows (new or changed content) fetch their image bytes and go through one
   mapInPandas (``udfs.encode``), in tasks of ``featurizer.rows_per_task`` items so the progress
   bar moves and a retry is cheap; undecodable images are found there. The union of settled
   and encoded rows goes to a staging Delta table once, so the encoders run exactly once per
   item even though three things read the result (the MERGE, the quarantine and the counts).

Rows of an older ``items`` table written without ``content_hash`` still work: their hash is
computed from the row in Spark (their images are read), and the run says how many there were.
3. ``item_features`` gets one MERGE commit keyed on item_id (update where the hash or the
   fingerprint differs, insert new items); bad rows go to ``quarantine`` (source='items'),
   replacing that run date's rows of this job, so a rerun never duplicates them.

Invariant: items_in = valid + quarantined, and valid = encoded + reused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from camenn.config import AppConfig
from camenn.featurizer import FeaturizerConfig
from pipeline import tables
from udfs.encode import ENCODED, PENDING, QUARANTINED, REUSED, STAGING_SCHEMA, encode_fn

log = logging.getLogger(__name__)

SOURCE = "items"
QUARANTINE_PAYLOAD = ["merchant_id", "category", "title", "description", "price", "updated_at", "image_size"]
DEFAULT_JOB = "item_features"
# what a reader of cached features gets per item: its key and the encoder outputs
FEATURE_COLUMNS = ("item_id", "content_hash", "text_emb", "n_text_tokens", "image_emb")
# the test-time views' image tokens: read by the night's item pass only when it scores over views
VIEW_COLUMNS = ("view_image_emb", "n_views")

# Java regex with Unicode classes: a full-width space (U+3000) is blank, as Python's strip() says.
_NON_BLANK = "(?U)\\S"


@dataclass
class FeatureStats:
    items_in: int
    valid: int
    quarantined: dict[str, int]      # reason (details in parentheses dropped) -> rows
    encoded: int
    reused: int
    fingerprint: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    def check(self) -> FeatureStats:
        if self.items_in != self.valid + self.quarantined_total or self.valid != self.encoded + self.reused:
            raise AssertionError(f"feature counts do not add up: {self}")
        return self

    def counts(self, prefix: str = "items_") -> dict[str, int]:
        return {f"{prefix}in": self.items_in, f"{prefix}valid": self.valid,
                f"{prefix}quarantined": self.quarantined_total, f"{prefix}encoded": self.encoded,
                f"{prefix}reused": self.reused}


# ------------------------------------------------------------------------ featurizer identity


def featurizer_config(config: AppConfig) -> FeaturizerConfig:
    return config.featurizer.to_featurizer_config()


def featurizer_fingerprint(cfg: FeaturizerConfig) -> str:
    """The fingerprint ItemFeaturizer.from_config(cfg) reports, without loading the encoders."""
    from camenn import encoders

    return encoders.encoder_fingerprint(cfg.text_model_dir, cfg.image_arch, cfg.image_weights,
                                        max_text_tokens=cfg.max_text_tokens, patch_grid=cfg.patch_grid,
                                        patch_size=cfg.patch_size)


# ------------------------------------------------------------------------ validation


def _blank(col):
    return col.isNull() | ~col.rlike(_NON_BLANK)


def newest_first():
    """The one rule for which row of an item_id counts: the newest, ties broken by content, never by chance."""
    return Window.partitionBy("item_id").orderBy(
        F.col("updated_at").desc_nulls_last(), F.col("content_hash").desc_nulls_last(),
        F.xxhash64("merchant_id", "category", "price").desc())


def checked_items(items: DataFrame) -> DataFrame:
    """items (with content_hash and image_size, no image needed) + ``reason``: why a row cannot be featurized.

    Several problems of one row are joined with "; ". Of rows sharing an item_id the newest
    (updated_at, then a content hash to break ties) is the item; the others are duplicates.
    """
    id_blank = _blank(F.col("item_id"))
    rank = F.row_number().over(newest_first())
    checks = [
        F.when(id_blank, F.lit("item_id: null or blank")),
        F.when(~id_blank & (rank > 1), F.lit("item_id: duplicate (a newer row of this item wins)")),
        F.when(_blank(F.col("title")) & _blank(F.col("description")), F.lit("text: empty title and description")),
        F.when(F.col("image_size").isNull() | (F.col("image_size") == 0), F.lit("image: missing")),
    ]
    reason = F.concat_ws("; ", *checks)
    return items.withColumn("reason", F.when(reason != "", reason))


def reason_kind(col):
    """A reason without its parenthesised details: groups "image: cannot decode (...)" rows together."""
    parts = F.split(col, "; ")
    return F.array_join(F.transform(parts, lambda p: F.trim(F.regexp_extract(p, "^[^(]*", 0))), "; ")


# ------------------------------------------------------------------------ the update


def _cached_hashes(spark: SparkSession, config: AppConfig, fingerprint: str) -> DataFrame:
    tables.ensure_table(spark, config, "item_features")
    return (tables.read_table(spark, config, "item_features")
            .where(F.col("encoder_fingerprint") == fingerprint)
            .select("item_id", F.col("content_hash").alias("cached_hash"),
                    F.coalesce(F.col("n_views"), F.lit(0)).alias("cached_views")))


def item_rows(spark: SparkSession, config: AppConfig, items_df: DataFrame | None = None,
              with_image: bool = False) -> DataFrame:
    """``items`` with content_hash and image_size filled in, and the image column only if asked for.

    Rows that carry their hash are read without the image column (Parquet never touches it);
    rows of an older table without one get it computed here, which reads their images.
    """
    items = items_df if items_df is not None else tables.read_table(spark, config, "items")
    if "content_hash" not in items.columns:
        items = items.withColumn("content_hash", F.lit(None).cast("string"))
    if "image_size" not in items.columns:
        items = items.withColumn("image_size", F.lit(None).cast("int"))
    cols = [f.name for f in tables.schema_of(spark, "items").fields if with_image or f.name != "image"]
    stored = items.where(F.col("content_hash").isNotNull()).select(*cols)
    if items.where(F.col("content_hash").isNull()).limit(1).count() == 0:
        return stored  # the usual case: the plan has no branch that could read an image
    legacy = (items.where(F.col("content_hash").isNull())
              .withColumn("content_hash", tables.content_hash())
              .withColumn("image_size", F.octet_length("image")).select(*cols))
    return stored.unionByName(legacy)


def legacy_rows(spark: SparkSession, config: AppConfig, items_df: DataFrame | None = None) -> int:
    """How many ``items`` rows were written without a content_hash (an older table)."""
    items = items_df if items_df is not None else tables.read_table(spark, config, "items")
    if "content_hash" not in items.columns:
        return items.count()
    return items.where(F.col("content_hash").isNull()).count()


def _item_keys(spark: SparkSession, config: AppConfig, fingerprint: str, items_df: DataFrame | None,
               views: int = 0) -> DataFrame:
    """Every items row (no image) + reason, cached_hash and status: reused, quarantined or pending.

    With ``views``, a cached row of the item's content but fewer test-time views is pending too:
    the item is encoded again, views and all (a night that turned views on pays for it once).
    """
    checked = checked_items(item_rows(spark, config, items_df)).join(_cached_hashes(spark, config, fingerprint),
                                                                      "item_id", "left")
    current = (F.col("content_hash") == F.col("cached_hash")) & (F.col("cached_views") >= views)
    status = (F.when(F.col("reason").isNotNull(), F.lit(QUARANTINED))
              .when(current, F.lit(REUSED)).otherwise(F.lit(PENDING)))
    return checked.withColumn("status", status)


# A pending set at most this large is broadcast to the image scan, so the images of unchanged
# items are never shuffled; a larger one (a first run, new encoders) needs every image anyway.
BROADCAST_PENDING_ROWS = 2_000_000


def _encoded(spark: SparkSession, config: AppConfig, keys: DataFrame, items_df: DataFrame | None, n_pending: int,
             fingerprint: str, autocast: str, run_date: dt.date, views: int = 0):
    """The pending items' images through the encoders, in tasks of ``featurizer.rows_per_task`` items.

    Returns the STAGING_SCHEMA frame and an accumulator of the rows encoded so far (a task adds
    its rows as it yields them; the driver sees them when the task ends, like the progress bar).
    """
    pending = keys.where(F.col("status") == PENDING).drop("image_size")
    if n_pending <= BROADCAST_PENDING_ROWS:
        pending = F.broadcast(pending)
    images = item_rows(spark, config, items_df, with_image=True).select("item_id", "content_hash", "image_size", "image")
    tasks = max(1, -(-n_pending // config.featurizer.rows_per_task))
    todo = images.join(pending, ["item_id", "content_hash"], "inner").dropDuplicates(["item_id"]).repartition(tasks)
    _say(f"{n_pending} new or changed item(s) to encode in {tasks} task(s)"
         + (f", each photo with {views} test-time views" if views else ""))
    spark.sparkContext.setJobDescription(f"item features: encode {n_pending} new or changed items ({run_date})")
    encode = encode_fn(featurizer_config(config), fingerprint, autocast=autocast, views=views)
    done = spark.sparkContext.accumulator(0)

    def counted(batches):
        for frame in encode(batches):
            done.add(len(frame))
            yield frame

    return todo.mapInPandas(counted, STAGING_SCHEMA), done


@contextlib.contextmanager
def _progress(done, total: int, every_s: float = 10.0):
    """While the block runs, "encoded k / n items" every ``every_s`` seconds when k moved; once more at the end."""
    if done is None:
        yield
        return
    stop = threading.Event()

    def report():
        last = -1
        while not stop.wait(every_s):
            if done.value != last:
                last = done.value
                _say(f"encoded {min(last, total)} / {total} items")

    threading.Thread(target=report, name="item-features-progress", daemon=True).start()
    try:
        yield
    finally:
        stop.set()
        _say(f"encoded {min(done.value, total)} / {total} items")


def _staging_rows(df: DataFrame) -> DataFrame:
    return df.select(*[(F.col(c) if c in df.columns else F.lit(None)).cast(t).alias(c)
                       for c, t in (part.strip().split(" ", 1) for part in STAGING_SCHEMA.split(","))])


def write_quarantine(spark: SparkSession, config: AppConfig, rows: DataFrame, *, run_date: dt.date,
                     job: str, source: str | None = None, run_id: str | None = None) -> str:
    """Write a job's quarantine rows for run_date in one commit.

    Without ``run_id``: replace the date's rows of ``job`` (and ``source``, if given). With it
    (the nightly job): append them tagged with the run, published by its runs row
    (pipeline.run_record), so a failed or killed run never replaces the published run's rows.
    """
    path = tables.ensure_table(spark, config, "quarantine")
    if run_id is not None:
        tables.conform(rows.withColumn("run_id", F.lit(run_id)), spark, "quarantine").write.format("delta").mode("append").save(path)
        return path
    where = f"run_date = DATE'{run_date.isoformat()}' AND job = '{job}'" + (f" AND source = '{source}'" if source else "")
    (tables.conform(rows, spark, "quarantine").write.format("delta").mode("overwrite")
        .option("replaceWhere", where).save(path))
    return path


def _say(message: str) -> None:
    log.info(message)


def delete_path(spark: SparkSession, path: str) -> None:
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(hpath, True)


STALE_STAGING_HOURS = 24.0
_RUN_ID = re.compile(r"-([0-9a-f]{32})$")


def staging_path(config: AppConfig, run_date: dt.date, run_id: str) -> str:
    return f"{config.table('item_features').rstrip('/')}_staging/{run_date.isoformat()}-{run_id}"


def sweep_stale_staging(spark: SparkSession, config: AppConfig, live_run_ids: set[str] | None = None,
                        max_age_hours: float = STALE_STAGING_HOURS) -> list[str]:
    """Delete staging tables that killed drivers left behind; returns the deleted paths.

    A run deletes its own staging table on success and on any Python-side failure; only a
    driver killed outright (OOM, SIGKILL, a lost node) leaves one. A table named by a run_id
    goes as soon as that run is not live (``live_run_ids``: runs whose latest ``runs`` row is
    'running', see pipeline.run_record); one without a run id (an older run, or a caller that
    does not record runs) after ``max_age_hours``, which keeps a concurrent run's table safe.
    """
    jvm = spark.sparkContext._jvm
    root = jvm.org.apache.hadoop.fs.Path(f"{config.table('item_features').rstrip('/')}_staging")
    fs = root.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(root):
        return []
    cutoff_ms = (time.time() - max_age_hours * 3600.0) * 1000.0
    deleted = []
    for status in fs.listStatus(root):
        if not status.isDirectory():
            continue
        owner = _RUN_ID.search(status.getPath().getName())
        if owner and live_run_ids is not None:
            stale = owner.group(1) not in live_run_ids
        else:
            stale = status.getModificationTime() < cutoff_ms
        if stale:
            fs.delete(status.getPath(), True)
            deleted.append(status.getPath().toString())
    return deleted


@dataclass
class FeatureUpdate:
    """The outcome of one feature update; the staging table stays until ``cleanup()``."""

    stats: FeatureStats
    staging_path: str
    fingerprint: str

    def staged(self, spark: SparkSession) -> DataFrame:
        return spark.read.format("delta").load(self.staging_path)

    def valid_keys(self, spark: SparkSession) -> DataFrame:
        """item_id, content_hash and item fields of this run's valid items (no blobs)."""
        return (self.staged(spark).where(F.col("status").isin(REUSED, ENCODED))
                .select("item_id", "merchant_id", "category", "title", "description", "price", "content_hash"))

    def encoded_features(self, spark: SparkSession, views: bool = False) -> DataFrame:
        """This run's newly encoded rows, shaped like ``cached_features``: read instead of
        item_features when only they are needed, so a night with few changes reads few blobs."""
        return (self.staged(spark).where(F.col("status") == ENCODED)
                .select(*FEATURE_COLUMNS, *(VIEW_COLUMNS if views else ())))

    def quarantine_rows(self, spark: SparkSession, run_date: dt.date, job: str) -> DataFrame:
        """This run's rejected items, shaped as quarantine rows (source='items')."""
        bad = self.staged(spark).where(F.col("status") == QUARANTINED)
        return tables.quarantine_rows(bad, run_date=run_date, job=job, source=SOURCE, key_col="item_id",
                                      payload_cols=QUARANTINE_PAYLOAD)

    def cleanup(self, spark: SparkSession) -> None:
        delete_path(spark, self.staging_path)


def run_feature_update(spark: SparkSession, config: AppConfig, run_date: dt.date, items_df: DataFrame | None = None,
                       *, job: str = DEFAULT_JOB, autocast: str | None = None,
                       write_quarantine_rows: bool = True, run_id: str | None = None,
                       live_run_ids: set[str] | None = None, views: int = 0) -> FeatureUpdate:
    """update_item_features, keeping the staging table for the caller (call ``cleanup()``).

    ``write_quarantine_rows=False`` leaves the quarantine to the caller (``quarantine_rows()``),
    which lets a job write all its quarantine rows in one commit. ``run_id`` names the staging
    table after the run (a recorded run, see sweep_stale_staging); ``live_run_ids`` are the runs
    whose staging tables must stay. ``views``: test-time views each new or changed photo is
    encoded with (``scoring.test_time_views``: the night scores over them; training encodes them
    too, so that the night after a training finds every photo's views cached).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    fcfg = featurizer_config(config)
    fingerprint = featurizer_fingerprint(fcfg)
    autocast = autocast if autocast is not None else config.scoring.encoder_autocast
    staging = staging_path(config, run_date, run_id or uuid.uuid4().hex[:8])
    for path in sweep_stale_staging(spark, config, live_run_ids):
        log.warning(f"deleted the staging table of a killed run: {path}")

    spark.sparkContext.setJobDescription(f"item features: find new and changed items ({run_date})")
    keys = _item_keys(spark, config, fingerprint, items_df, views).persist()
    try:
        n_pending = keys.where(F.col("status") == PENDING).count()
        staged, done = _staging_rows(keys.where(F.col("status") != PENDING)), None
        if n_pending:  # with nothing to encode, no image is joined, read or shuffled
            encoded, done = _encoded(spark, config, keys, items_df, n_pending, fingerprint, autocast, run_date, views)
            staged = staged.unionByName(encoded)
        with _progress(done, n_pending):
            staged.write.format("delta").mode("overwrite").save(staging)
    finally:
        keys.unpersist()
    timings["encode"] = time.perf_counter() - t0

    try:
        t1 = time.perf_counter()
        out = spark.read.format("delta").load(staging)
        counted = (out.groupBy("status", reason_kind(F.col("reason")).alias("kind"))
                   .agg(F.count(F.lit(1)).alias("n")).collect())
        by_status: dict[str, int] = {}
        quarantined: dict[str, int] = {}
        for r in counted:
            by_status[r["status"]] = by_status.get(r["status"], 0) + r["n"]
            if r["status"] == QUARANTINED:
                quarantined[r["kind"]] = quarantined.get(r["kind"], 0) + r["n"]
        if by_status.get(PENDING):
            raise AssertionError(f"{by_status[PENDING]} items were neither encoded nor quarantined")
        encoded, reused = by_status.get(ENCODED, 0), by_status.get(REUSED, 0)
        stats = FeatureStats(items_in=sum(by_status.values()), valid=encoded + reused, quarantined=quarantined,
                             encoded=encoded, reused=reused, fingerprint=fingerprint, timings=timings).check()

        spark.sparkContext.setJobDescription(f"item features: merge into item_features ({run_date})")
        if encoded:  # nothing new: no MERGE, no commit
            _merge(spark, config, out.where(F.col("status") == ENCODED), fingerprint)
        update = FeatureUpdate(stats=stats, staging_path=staging, fingerprint=fingerprint)
        if write_quarantine_rows:
            write_quarantine(spark, config, update.quarantine_rows(spark, run_date, job), run_date=run_date, job=job,
                             source=SOURCE)
        timings["merge"] = time.perf_counter() - t1
    except BaseException:
        delete_path(spark, staging)
        raise
    finally:
        spark.sparkContext.setJobDescription(None)
    return update


def _merge(spark: SparkSession, config: AppConfig, encoded: DataFrame, fingerprint: str) -> None:
    from delta.tables import DeltaTable

    path = tables.ensure_table(spark, config, "item_features")
    source = tables.conform(
        encoded.withColumn("encoder_fingerprint", F.lit(fingerprint)).withColumn("updated_at", F.current_timestamp()),
        spark, "item_features")
    (DeltaTable.forPath(spark, path).alias("t")
        .merge(source.alias("s"), "t.item_id = s.item_id")
        .whenMatchedUpdateAll(condition="t.content_hash <> s.content_hash OR t.encoder_fingerprint <> s.encoder_fingerprint "
                                        "OR NOT (t.n_views <=> s.n_views)")
        .whenNotMatchedInsertAll()
        .execute())


def update_item_features(spark: SparkSession, config: AppConfig, run_date: dt.date, items_df: DataFrame | None = None,
                         *, job: str = DEFAULT_JOB, views: int = 0) -> FeatureStats:
    """Validate ``items`` (or ``items_df``), encode new and changed items, MERGE them into item_features.

    ``views``: test-time views each new or changed photo is encoded with (run_feature_update)."""
    update = run_feature_update(spark, config, run_date, items_df, job=job, views=views)
    update.cleanup(spark)
    return update.stats


# ------------------------------------------------------------------------ readers for training and scoring


def item_keys(spark: SparkSession, config: AppConfig, fingerprint: str | None = None,
              items_df: DataFrame | None = None) -> DataFrame:
    """item_id, content_hash and item fields of every item that passes validation (Spark only, no image read)."""
    fingerprint = fingerprint or featurizer_fingerprint(featurizer_config(config))
    return (_item_keys(spark, config, fingerprint, items_df).where(F.col("status") != QUARANTINED)
            .select("item_id", "merchant_id", "category", "title", "description", "price", "content_hash"))


def valid_items(spark: SparkSession, config: AppConfig, fingerprint: str | None = None,
                keys: DataFrame | None = None) -> DataFrame:
    """Valid items with their current cached features.

    Columns: item_id, merchant_id, category, title, description, price, content_hash,
    text_emb, n_text_tokens, image_emb. An item is valid when it passes validation and
    ``item_features`` holds its current content under ``fingerprint`` (items whose new version
    could not be encoded drop out here). ``keys``: FeatureUpdate.valid_keys() of this run, or
    None to take them from ``items`` (stored hashes, no image read, no encoding).
    """
    fingerprint = fingerprint or featurizer_fingerprint(featurizer_config(config))
    keys = keys if keys is not None else item_keys(spark, config, fingerprint)
    feats = (tables.read_table(spark, config, "item_features")
             .where(F.col("encoder_fingerprint") == fingerprint)
             .select(*FEATURE_COLUMNS))
    return keys.join(feats, ["item_id", "content_hash"], "inner")


def cached_features(spark: SparkSession, config: AppConfig, fingerprint: str, views: bool = False) -> DataFrame:
    """item_features rows under ``fingerprint``: item_id, content_hash, text_emb, n_text_tokens, image_emb
    (and with ``views`` view_image_emb and n_views)."""
    return (tables.read_table(spark, config, "item_features")
            .where(F.col("encoder_fingerprint") == fingerprint)
            .select(*FEATURE_COLUMNS, *(VIEW_COLUMNS if views else ())))
