"""The Delta tables of DESIGN.md: schemas, constraints and the few ways we write them.

Every table is created from DDL here, before its first write, so keys are NOT NULL and
probabilities carry CHECK constraints; a write that breaks them fails and commits nothing.
Per-run outputs are rewritten with ``replaceWhere run_date = D``, so a rerun of the same date
replaces exactly that date's rows in one atomic commit.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from camenn.config import DEFAULT_PROFILE_FIELDS, AppConfig


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: str                      # Spark DDL column list, NOT NULL where the contract says so
    partition_by: tuple[str, ...] = ()
    checks: dict[str, str] = field(default_factory=dict)   # constraint name -> SQL condition
    key: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)   # Delta table properties, set at creation


_PROBABILITY = "{c} >= 0 AND {c} <= 1"
# The caches (item features, model outputs) are MERGEd every night with a few changed rows: with
# deletion vectors a MERGE marks the replaced rows in a small side file and writes only the new
# ones, instead of rewriting every data file that holds a changed item (all of them, when changes
# are spread evenly: 1.6 GB rewritten for 490 changed items of 50,000 on 2026-12-02).
_MERGED_CACHE = {"delta.enableDeletionVectors": "true"}

SPECS: dict[str, TableSpec] = {spec.name: spec for spec in [
    # content_hash and image_size are derived by conform() whenever a row is written, so a night
    # learns what changed from these two small columns without reading a single image
    TableSpec("items", """item_id STRING NOT NULL, merchant_id STRING NOT NULL, category STRING,
        title STRING, description STRING, image BINARY, price DOUBLE, updated_at TIMESTAMP,
        content_hash STRING, image_size INT""",
        key=("item_id",)),
    # {profile}: the config's data.profile_fields, one STRING column each (``spec``)
    TableSpec("users", "user_id STRING NOT NULL, {profile}",
        key=("user_id",)),
    TableSpec("events", "user_id STRING NOT NULL, item_id STRING NOT NULL, ts TIMESTAMP NOT NULL, event STRING NOT NULL, price DOUBLE"),
    TableSpec("impressions", "user_id STRING NOT NULL, item_id STRING NOT NULL, ts TIMESTAMP NOT NULL, bought INT NOT NULL",
        checks={"bought_is_binary": "bought IN (0, 1)"}),
    TableSpec("candidates", "run_date DATE NOT NULL, user_id STRING NOT NULL, item_id STRING NOT NULL",
        partition_by=("run_date",), key=("run_date", "user_id", "item_id")),
    TableSpec("truth_items", "item_id STRING NOT NULL, true_category STRING NOT NULL, defect STRING NOT NULL, source_item_id STRING",
        key=("item_id",)),
    TableSpec("truth_impressions", "user_id STRING NOT NULL, item_id STRING NOT NULL, ts TIMESTAMP NOT NULL, p_buy DOUBLE NOT NULL",
        checks={"p_buy_is_probability": _PROBABILITY.format(c="p_buy")}),
    TableSpec("item_features", """item_id STRING NOT NULL, content_hash STRING NOT NULL, encoder_fingerprint STRING NOT NULL,
        text_emb BINARY NOT NULL, n_text_tokens INT NOT NULL, image_emb BINARY NOT NULL, updated_at TIMESTAMP NOT NULL,
        view_image_emb BINARY, n_views INT""",
        # view_image_emb: the image tokens of n_views test-time views of the photo (scoring.test_time_views),
        # view after view in image_emb's layout; null and n_views 0 or null where the night asked for none
        # deletion vectors: delta-rs (deltalake 1.6) cannot read this table, so its readers are Spark's
        # (pipeline.training_data.load_item_store for the whole-catalogue evaluation store)
        checks={"has_text_tokens": "n_text_tokens > 0"}, key=("item_id",), properties=_MERGED_CACHE),
    # One row per item: what the model in service computes from the item alone, keyed on what it
    # read (content, category, price) and the model version; the nightly job reuses a row while
    # all of those are unchanged. p_ita / p_tia are null for a model without alignment heads.
    # Partitioned by bucket (pipeline.model_cache.bucket_of): the CVR stage reads a bucket's
    # tokens from its files in the task that holds that bucket's candidates (udfs.cached_tokens).
    TableSpec("item_model_outputs", """item_id STRING NOT NULL, content_hash STRING NOT NULL, category STRING, price DOUBLE,
        model_version STRING NOT NULL, text_proj BINARY NOT NULL, n_text_tokens INT NOT NULL, image_proj BINARY NOT NULL,
        p_ita DOUBLE, p_tia DOUBLE, updated_at TIMESTAMP NOT NULL, bucket INT NOT NULL, n_views INT""",
        # n_views: the test-time views p_ita / p_tia are the mean logit over, beside the photo (null = 0);
        # a row scored over other views than the config's is stale (pipeline.model_cache)
        partition_by=("bucket",), checks={"has_text_tokens": "n_text_tokens > 0"}, key=("item_id",),
        properties=_MERGED_CACHE),
    TableSpec("item_alignment", """run_date DATE NOT NULL, item_id STRING NOT NULL, merchant_id STRING NOT NULL, category STRING,
        p_ita DOUBLE NOT NULL, p_tia DOUBLE NOT NULL, flag BOOLEAN NOT NULL, reason STRING, model_version STRING NOT NULL,
        suspect_side STRING, run_id STRING""",
        partition_by=("run_date",),
        checks={"p_ita_is_probability": _PROBABILITY.format(c="p_ita"), "p_tia_is_probability": _PROBABILITY.format(c="p_tia"),
                "suspect_side_is_a_side": "suspect_side IS NULL OR suspect_side IN ('text', 'image', 'both')"},
        key=("run_date", "item_id")),
    TableSpec("cvr_scores", "run_date DATE NOT NULL, user_id STRING NOT NULL, item_id STRING NOT NULL, cvr DOUBLE NOT NULL, "
        "model_version STRING NOT NULL, inputs_hash STRING, run_id STRING",
        partition_by=("run_date",), checks={"cvr_is_probability": _PROBABILITY.format(c="cvr")},
        key=("run_date", "user_id", "item_id")),
    TableSpec("quarantine", "run_date DATE NOT NULL, job STRING NOT NULL, source STRING NOT NULL, key STRING, "
        "reason STRING NOT NULL, payload STRING, run_id STRING",
        partition_by=("run_date",)),
    TableSpec("runs", """run_id STRING NOT NULL, job STRING NOT NULL, run_date DATE NOT NULL, model_version STRING,
        started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP, status STRING NOT NULL,
        counts MAP<STRING, BIGINT>, timings MAP<STRING, DOUBLE>, details STRING""",
        # a run appends a row when it starts (running) and one when it ends (pipeline.run_record)
        key=("run_id", "status")),
    TableSpec("quality_flags", """run_date DATE NOT NULL, merchant_id STRING NOT NULL, item_id STRING NOT NULL, rank INT NOT NULL,
        side STRING NOT NULL, p_ita DOUBLE NOT NULL, p_tia DOUBLE NOT NULL, category STRING, suggested_category STRING,
        text_category STRING, image_category STRING, problem STRING NOT NULL, suggestion STRING NOT NULL,
        first_flagged DATE NOT NULL, is_new BOOLEAN NOT NULL, content_hash STRING NOT NULL, title STRING, model_version STRING""",
        partition_by=("run_date",),
        checks={"p_ita_is_probability": _PROBABILITY.format(c="p_ita"), "p_tia_is_probability": _PROBABILITY.format(c="p_tia"),
                "side_is_known": "side IN ('text', 'image', 'both')", "rank_is_positive": "rank >= 1",
                "first_flagged_not_after_run": "first_flagged <= run_date"},
        key=("run_date", "item_id")),
    TableSpec("training_examples", """example_id STRING NOT NULL, user_id STRING NOT NULL, item_id STRING NOT NULL,
        ts TIMESTAMP NOT NULL, label INT NOT NULL, behaviour ARRAY<STRING> NOT NULL, {profile},
        split STRING NOT NULL, bucket INT NOT NULL, source STRING NOT NULL""",
        checks={"label_is_binary": "label IN (0, 1)", "split_is_known": "split IN ('train', 'valid', 'test')",
                "bucket_in_range": "bucket >= 0 AND bucket < 1024"},
        key=("example_id",)),
    # The features of the items each training chunk references (examples with bucket % n_chunks
    # == chunk), plus each valid item once in its home chunk for the alignment tasks: a training
    # process reads one chunk's partition at a time. view_image_emb: the test-time views of the
    # held-out home items, for the calibration quantiles, and with training.view_share of the training
    # home items, to train on (training_data.home_views); else null.
    # content_hash: the content the features were encoded from, so a night can tell a listing changed
    # since training from one the model saw (pipeline.flag_rules.snapshot_listings); null in tables
    # written before 2026-12-06.
    TableSpec("training_items", """chunk INT NOT NULL, item_id STRING NOT NULL, home BOOLEAN NOT NULL, category STRING,
        price DOUBLE, text_emb BINARY NOT NULL, n_text_tokens INT NOT NULL, image_emb BINARY NOT NULL,
        view_image_emb BINARY, content_hash STRING""",
        partition_by=("chunk",), key=("chunk", "item_id")),
]}


def spec(name: str, config: AppConfig | None = None) -> TableSpec:
    """The table's spec, with the profile columns of ``config`` (data.profile_fields; None = the default profile)."""
    base = SPECS[name]
    if "{profile}" not in base.columns:
        return base
    fields = config.data.profile_fields if config is not None else DEFAULT_PROFILE_FIELDS
    columns = base.columns.replace(", {profile}", "".join(f", {f} STRING" for f in fields))
    return TableSpec(base.name, columns, base.partition_by, base.checks, base.key, base.properties)


def profile_columns(users: DataFrame, profile_fields: tuple[str, ...]) -> tuple[str, ...]:
    """``profile_fields`` after checking that ``users`` (or a frame of its rows) has each one: a clear error if not."""
    missing = [f for f in profile_fields if f not in users.columns]
    if missing:
        raise ValueError(f"the users rows lack the profile field(s) {missing} (they have {users.columns}): ingest them "
                         "(`--user-map FIELD=COLUMN`) or set data.profile_fields to the fields the users table has")
    return tuple(profile_fields)


def is_delta(spark: SparkSession, path: str) -> bool:
    """Whether a Delta table lives at ``path`` (a folder without a _delta_log is not one)."""
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, path)


def ensure_table(spark: SparkSession, config: AppConfig, name: str) -> str:
    """Create the table (empty, with its constraints and properties) if it does not exist; return its path.

    An existing table is brought up to its spec first: missing nullable columns, properties and
    CHECK constraints are added (a run killed between CREATE TABLE and ADD CONSTRAINT, or a
    table made by an older version), so no write lands in a table without its constraints.
    """
    table, path = spec(name, config), config.table(name)
    if is_delta(spark, path):
        # columns first: a relayout rewrites the rows through conform, which needs every column
        _add_missing_columns(spark, name, path, config)
        _relayout(spark, name, path, config)
        _repair_contract(spark, name, path)
        return path
    partitioned = f" PARTITIONED BY ({', '.join(table.partition_by)})" if table.partition_by else ""
    props = f" TBLPROPERTIES ({_properties_sql(table.properties)})" if table.properties else ""
    spark.sql(f"CREATE TABLE IF NOT EXISTS delta.`{path}` ({table.columns}) USING DELTA{partitioned}{props}")
    for constraint, condition in table.checks.items():
        spark.sql(f"ALTER TABLE delta.`{path}` ADD CONSTRAINT {constraint} CHECK ({condition})")
    _REPAIRED.add((spark.sparkContext.applicationId, path))
    return path


def _relayout(spark: SparkSession, name: str, path: str, config: AppConfig) -> None:
    """A table written before its partitioning changed is rewritten once in its spec's layout, in one commit.

    Only where the new partition columns are derived from the row (``DERIVED``), so the rewrite
    is the table's own rows through ``conform``: item_model_outputs before its bucket column.
    Any other mismatch is an error naming both layouts.
    """
    from delta.tables import DeltaTable

    want, key = tuple(SPECS[name].partition_by), (spark.sparkContext.applicationId, path, "layout")
    if key in _REPAIRED:
        return
    have = tuple(DeltaTable.forPath(spark, path).detail().first()["partitionColumns"])
    if have != want:
        if not set(want) - set(have) <= set(DERIVED.get(name, {})) or set(have) - set(want):
            raise ValueError(f"{name} at {path} is partitioned by {list(have)}, its spec by {list(want)}, and the new "
                             "columns cannot be derived from its rows: rewrite or move the table")
        print(f"tables: {name} at {path} is partitioned by {list(have)}; rewriting it once by {list(want)}", flush=True)
        (conform(read_path(spark, path), spark, name, config).write.format("delta").mode("overwrite")
         .option("overwriteSchema", "true").partitionBy(*want).save(path))
    _REPAIRED.add(key)


def _add_missing_columns(spark: SparkSession, name: str, path: str, config: AppConfig) -> None:
    """A table written before a (nullable) column joined its contract gets the column, one metadata commit
    (a profile field the config added to data.profile_fields included)."""
    have = {f.name for f in spark.read.format("delta").load(path).schema.fields}
    missing = [f for f in schema_of(spark, name, config).fields if f.name not in have]
    if missing:
        cols = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({cols})")


def _properties_sql(properties: dict[str, str]) -> str:
    return ", ".join(f"'{k}' = '{v}'" for k, v in properties.items())


# (application id, path) of the tables checked against their spec in this Spark application: a
# night calls ensure_table a few dozen times, and one look at a table's properties is enough
_REPAIRED: set[tuple[str, ...]] = set()   # (app, path) for the contract, (app, path, "layout") for the partitioning


def _repair_contract(spark: SparkSession, name: str, path: str) -> None:
    """Add the spec's properties and CHECK constraints that the table lacks (each one metadata commit)."""
    table, key = SPECS[name], (spark.sparkContext.applicationId, path)
    if (not table.properties and not table.checks) or key in _REPAIRED:
        return
    have = {r["key"]: r["value"] for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()}
    missing = {k: v for k, v in table.properties.items() if have.get(k) != v}
    if missing:
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({_properties_sql(missing)})")
    for constraint, condition in table.checks.items():
        if f"delta.constraints.{constraint.lower()}" not in have:
            spark.sql(f"ALTER TABLE delta.`{path}` ADD CONSTRAINT {constraint} CHECK ({condition})")
    _REPAIRED.add(key)


def schema_of(spark: SparkSession, name: str, config: AppConfig | None = None):
    """The contracted schema of a table, as a StructType (for conformance checks and empty frames);
    ``config`` gives the profile columns of users and training_examples (None = the default profile)."""
    from pyspark.sql.types import StructType

    return StructType.fromDDL(" ".join(spec(name, config).columns.split()))


def content_hash(title="title", description="description", image="image"):
    """sha-256 hex of what the encoders read and the merchant controls: title, description, image bytes.

    Each field is hashed on its own and a missing field is "-", so no two different field
    tuples (None vs "" included) give the same input to the outer hash. Independent of the
    encoders and the model: ``item_features`` is keyed on it together with the encoder
    fingerprint, the alignment reuse with the model version, and a report's "new flag" on it alone.
    """
    def part(c):
        return F.coalesce(F.sha2(F.col(c).cast("binary"), 256), F.lit("-"))
    return F.sha2(F.concat_ws("|", part(title), part(description), part(image)).cast("binary"), 256)


def token_bucket(config: AppConfig | None = None, item_id="item_id"):
    """An item's bucket in item_model_outputs: xxhash64(item_id) mod scoring.token_buckets (the default without config)."""
    from camenn.config import ScoringConfig

    n = (config.scoring if config is not None else ScoringConfig()).token_buckets
    return F.pmod(F.xxhash64(F.col(item_id)), F.lit(n))


# name -> column -> fn(config) -> Column: computed by conform() from the row and the config
DERIVED = {"items": {"content_hash": lambda config: content_hash(), "image_size": lambda config: F.octet_length("image")},
           "item_model_outputs": {"bucket": token_bucket}}


def input_schema(spark: SparkSession, name: str, config: AppConfig | None = None):
    """The columns a writer provides: the contract without the ones conform() derives."""
    from pyspark.sql.types import StructType

    return StructType([f for f in schema_of(spark, name, config).fields if f.name not in DERIVED.get(name, {})])


def conform(df: DataFrame, spark: SparkSession, name: str, config: AppConfig | None = None) -> DataFrame:
    """Select and cast df's columns to the table's contract, in the contract's order.

    Derived columns (``DERIVED``) are computed here from the row itself, whatever the writer
    passed, so every writer (world, ingest, a MERGE) stores the same hash for the same content.
    ``run_id`` is null when the writer has none (a writer that is not a recorded run); any other
    column the writer lacks fails here, naming it.
    """
    derived = DERIVED.get(name, {})

    def column(f):
        if f.name in derived:
            return derived[f.name](config)
        return F.lit(None) if f.name == "run_id" and f.name not in df.columns else F.col(f.name)

    return df.select(*[column(f).cast(f.dataType).alias(f.name) for f in schema_of(spark, name, config).fields])


def _overwriter(df: DataFrame, spark: SparkSession, config: AppConfig, name: str, tag: str | None):
    """A Delta overwrite of ``name``'s conformed rows; ``tag`` becomes the commit's userMetadata (see latest_commit)."""
    writer = conform(df, spark, name, config).write.format("delta").mode("overwrite")
    return writer.option("userMetadata", tag) if tag is not None else writer


def overwrite_table(spark: SparkSession, config: AppConfig, name: str, df: DataFrame, tag: str | None = None) -> str:
    """Replace a whole (input) table in one commit, keeping its DDL and constraints."""
    path = ensure_table(spark, config, name)
    _overwriter(df, spark, config, name, tag).save(path)
    return path


def replace_run_date(spark: SparkSession, config: AppConfig, name: str, df: DataFrame, run_date: dt.date,
                     tag: str | None = None) -> str:
    """Replace one run date's rows atomically: a rerun of the date leaves one row per key."""
    path = ensure_table(spark, config, name)
    _overwriter(df, spark, config, name, tag).option("replaceWhere", f"run_date = DATE'{run_date.isoformat()}'").save(path)
    return path


def latest_commit(spark: SparkSession, path: str) -> tuple[int, str | None] | None:
    """(version, userMetadata) of the table's last commit; None when there is no Delta table at path.

    Writers that tag their commits with what decided the rows (the world, training_examples)
    compare the tag to skip a rewrite that would only move the version.
    """
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        return None
    row = DeltaTable.forPath(spark, path).history(1).select("version", "userMetadata").first()
    return int(row[0]), row[1]


def append_rows(spark: SparkSession, config: AppConfig, name: str, df: DataFrame) -> str:
    path = ensure_table(spark, config, name)
    conform(df, spark, name, config).write.format("delta").mode("append").save(path)
    return path


def read_table(spark: SparkSession, config: AppConfig, name: str, version: int | None = None) -> DataFrame:
    path = config.table(name)
    if not is_delta(spark, path):
        raise MissingTable(name, path)
    return read_path(spark, path, version)


def read_path(spark: SparkSession, path: str, version: int | None = None) -> DataFrame:
    """The Delta table at ``path``, as of ``version`` (None = its latest)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    return reader.load(path)


def table_version(spark: SparkSession, config: AppConfig, name: str) -> int:
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, config.table(name)).history(1).select("version").first()[0]


class MissingTable(FileNotFoundError):
    def __init__(self, name: str, path: str):
        super().__init__(
            f"table {name!r} not found at {path}; make it with "
            "`spark-submit jobs/make_demo_data.py --conf <conf>` (demo) or `jobs/ingest_catalog.py` (real exports)")
        self.name, self.path = name, path


def quarantine_rows(df: DataFrame, *, run_date: dt.date, job: str, source: str, key_col: str,
                    reason_col: str = "reason", payload_cols: list[str] | None = None) -> DataFrame:
    """Shape rejected rows as quarantine rows: the key, a reason and the offending fields as JSON."""
    payload_cols = payload_cols or [c for c in df.columns if c not in (reason_col,) and df.schema[c].dataType.typeName() != "binary"]
    return df.select(
        F.lit(run_date).cast("date").alias("run_date"), F.lit(job).alias("job"), F.lit(source).alias("source"),
        F.col(key_col).cast("string").alias("key"), F.col(reason_col).alias("reason"),
        F.to_json(F.struct(*[F.col(c) for c in payload_cols])).alias("payload"),
    )


def runs_row(spark: SparkSession, *, run_id: str, job: str, run_date: dt.date, model_version: str | None,
             started_at: dt.datetime, finished_at: dt.datetime | None, status: str,
             counts: dict[str, int], timings: dict[str, float], details: dict | None = None) -> DataFrame:
    return spark.createDataFrame(
        [(run_id, job, run_date, model_version, started_at, finished_at, status,
          {k: int(v) for k, v in counts.items()}, {k: float(v) for k, v in timings.items()}, json.dumps(details or {}))],
        schema_of(spark, "runs"),
    )
