"""Training examples for CameNN, built in Spark and written to the ``training_examples`` table.

    data = prepare_training_data(spark, config, run_date)      # TrainingData
    data.versions        # table versions the model is trained from (pinned in the artifact)
    data.vocab           # FeatureVocab fitted with Spark (distincts, approxQuantile)

One row per (user, target item, time) with label = bought:

- from ``impressions`` (user_id, item_id, ts, bought) where that table has rows, else from
  ``events``: every purchase is a positive and ``training.negative_ratio`` items drawn at
  random from the catalogue, at the same time, are negatives (``training.examples_from``
  forces either source);
- ``behaviour``: the user's last ``model.max_behaviour`` purchases STRICTLY before the
  example's ``ts``, oldest first (item_id array), of items with cached features - the one
  rule the nightly job applies at its run date (``pipeline.history``);
- the user's profile fields (config data.profile_fields; the demo's age_band, household, zone), null where unknown;
- ``split``: train / valid / test by a salted hash of user_id (``split.rule: random_user``,
  so no user is on two sides) or by time quantiles (``split.rule: time``: every valid row is
  later than every train row, every test row later than every valid row);
- ``bucket``: a hash of example_id in [0, 1024); training process r of w reads the buckets
  with bucket % w == r.

Nothing is collected to the driver but the vocabularies (distinct values, price quantiles)
and a few counts. A rebuild from the same input versions and settings reuses the existing
table version (the inputs are recorded in the Delta commit's userMetadata).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, field

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from camenn.chunks import N_BUCKETS  # the examples' bucket range, which the chunk reader shares
from camenn.config import AppConfig
from camenn.inputs import USER_FEATURES, FeatureVocab
from pipeline import history, tables
from pipeline.history import purchases

_HASH_RANGE = 1_000_000


@dataclass
class TrainingData:
    vocab: FeatureVocab
    versions: dict[str, int]            # table -> Delta version read (training_examples included)
    fingerprint: str                    # encoder fingerprint of the item features
    source: str                         # "impressions" or "sampled"
    counts: dict[str, int] = field(default_factory=dict)
    reused: bool = False                # the training_examples version was reused, not rewritten
    feature_stats: object | None = None
    drops: dict[str, int] = field(default_factory=dict)   # "dropped <source>: <reason>" -> input rows left out
    chunks: dict[int, dict[str, int]] = field(default_factory=dict)  # chunk -> split -> examples


# ------------------------------------------------------------------------------ inputs


def has_rows(spark: SparkSession, config: AppConfig, name: str) -> bool:
    try:
        return tables.read_table(spark, config, name).limit(1).count() > 0
    except tables.MissingTable:
        return False


def examples_source(spark: SparkSession, config: AppConfig) -> str:
    """"impressions" or "sampled", from training.examples_from (auto = impressions when it has rows)."""
    mode = config.training.examples_from
    if mode != "auto":
        return mode
    return "impressions" if has_rows(spark, config, "impressions") else "sampled"


# ------------------------------------------------------------------------------ vocabulary


def fit_vocab(items: DataFrame, users: DataFrame, n_price_buckets: int = 10, rel_error: float = 1e-3,
              profile_fields: tuple[str, ...] = USER_FEATURES) -> FeatureVocab:
    """FeatureVocab from Spark: distinct categories and profile values, price bucket edges by approxQuantile."""
    categories = [r[0] for r in items.where(F.col("category").isNotNull() & (F.col("category") != ""))
                  .select("category").distinct().collect()]
    probs = [i / n_price_buckets for i in range(1, n_price_buckets)]
    priced = items.where(F.col("price").isNotNull() & ~F.isnan("price"))
    edges = priced.approxQuantile("price", probs, rel_error) if probs else []
    user_values = {}
    for f in tables.profile_columns(users, profile_fields):
        user_values[f] = sorted(str(r[0]) for r in users.where(F.col(f).isNotNull()).select(f).distinct().collect())
    return FeatureVocab(categories=sorted(set(categories)), price_edges=sorted({float(e) for e in edges}),
                        user_values=user_values)


# ------------------------------------------------------------------------------ examples


def _with_example_id(df: DataFrame) -> DataFrame:
    """A stable example_id: md5 of the row's fields plus its index among identical rows."""
    dup = F.row_number().over(Window.partitionBy("user_id", "item_id", "ts", "label", "source").orderBy(F.lit(0)))
    return (df.withColumn("_dup", dup)
            .withColumn("example_id", F.md5(F.concat_ws("|", "user_id", "item_id", F.col("ts").cast("string"),
                                                        F.col("label").cast("string"), "source", F.col("_dup").cast("string"))))
            .drop("_dup"))


def impression_examples(impressions: DataFrame, known_items: DataFrame) -> DataFrame:
    return (impressions.join(known_items.select("item_id"), "item_id", "left_semi")
            .select("user_id", "item_id", "ts", F.col("bought").cast("int").alias("label"), F.lit("impressions").alias("source")))


def sampled_examples(bought: DataFrame, known_items: DataFrame, negative_ratio: float, seed: int) -> DataFrame:
    """Every purchase (label 1) and about ``negative_ratio`` random catalogue items at its ts (label 0).

    Items are numbered with zipWithIndex (distributed), each purchase draws its negatives'
    numbers with rand(seed) and fetches them with an equi-join; a draw of the purchased item
    itself is dropped. A fractional ratio gives floor(ratio) or floor(ratio)+1 negatives.
    """
    spark = bought.sparkSession
    ids = known_items.select("item_id").distinct()
    indexed = spark.createDataFrame(ids.rdd.zipWithIndex().map(lambda r: (r[0][0], r[1])), "item_id string, idx long")
    n_items = indexed.count()
    positives = bought.select("user_id", "item_id", "ts", F.lit(1).alias("label"))
    whole = int(negative_ratio)
    frac = float(negative_ratio) - whole
    n_neg = F.lit(whole) + (F.rand(seed) < F.lit(frac)).cast("int") if frac > 0 else F.lit(whole)
    draws = (bought.withColumn("_n", n_neg)
             .withColumn("_j", F.explode(F.when(F.col("_n") > 0, F.sequence(F.lit(1), F.col("_n")))
                                         .otherwise(F.array().cast("array<int>"))))
             .withColumn("idx", F.floor(F.rand(seed + 1) * F.lit(n_items)).cast("long")))
    negatives = (draws.join(indexed.withColumnRenamed("item_id", "neg_item"), "idx")
                 .where(F.col("neg_item") != F.col("item_id"))
                 .select("user_id", F.col("neg_item").alias("item_id"), "ts", F.lit(0).alias("label")))
    return positives.unionByName(negatives).withColumn("source", F.lit("sampled"))


def attach_behaviour(examples: DataFrame, bought: DataFrame, max_n: int) -> DataFrame:
    """examples + ``behaviour``: pipeline.history's rule with each example's ts as the cutoff."""
    rows = examples.select(F.col("example_id").alias("row_id"), "user_id", "ts")
    seqs = history.behaviour_before(rows, bought, max_n).withColumnRenamed("row_id", "example_id")
    return examples.join(seqs, "example_id", "left")


def _unit_hash(col, salt: str):
    return (F.pmod(F.xxhash64(F.lit(salt), col), F.lit(_HASH_RANGE)) / F.lit(float(_HASH_RANGE)))


def assign_split(examples: DataFrame, rule: str, test_fraction: float, valid_fraction: float, seed: int) -> DataFrame:
    """examples + ``split`` in {train, valid, test}."""
    if rule == "random_user":
        u = _unit_hash(F.col("user_id"), f"users/{seed}")
        split = (F.when(u < test_fraction, "test").when(u < test_fraction + valid_fraction, "valid").otherwise("train"))
        return examples.withColumn("split", split)
    if rule == "time":
        t = F.col("ts").cast("double")
        probs = [1.0 - test_fraction, 1.0 - test_fraction - valid_fraction]
        cut_test, cut_valid = examples.select(t.alias("t")).approxQuantile("t", probs, 1e-4)
        split = F.when(t >= cut_test, "test").when(t >= cut_valid, "valid").otherwise("train") if valid_fraction > 0 \
            else F.when(t >= cut_test, "test").otherwise("train")
        return examples.withColumn("split", split)
    raise ValueError(f"unknown split rule {rule!r}")


def build_examples(config: AppConfig, *, items: DataFrame, users: DataFrame, events: DataFrame,
                   impressions: DataFrame | None, source: str) -> DataFrame:
    """The training_examples rows (not yet written) from input frames; ``items`` = the valid items.

    Examples of users missing from ``users`` are left out, as the nightly job quarantines their
    candidates (one rule for both); ``dropped_rows`` says what was left out and why.
    """
    known = items.select("item_id").distinct()
    bought = purchases(events, known)
    split_cfg = config.training.split
    if source == "impressions":
        if impressions is None:
            raise ValueError("examples from impressions asked for, but there is no impressions table")
        ex = impression_examples(impressions, known)
    elif source == "sampled":
        ex = sampled_examples(bought, known, config.training.negative_ratio, split_cfg.seed)
    else:
        raise ValueError(f"unknown examples source {source!r}")
    ex = model_inputs(_with_example_id(ex), users, bought, config.model.max_behaviour, config.data.profile_fields)
    ex = assign_split(ex, split_cfg.rule, split_cfg.test_fraction, split_cfg.valid_fraction, split_cfg.seed)
    ex = ex.withColumn("bucket", F.pmod(F.xxhash64("example_id"), F.lit(N_BUCKETS)).cast("int"))
    return ex


def model_inputs(examples: DataFrame, users: DataFrame, bought: DataFrame, max_n: int,
                 profile_fields: tuple[str, ...] = USER_FEATURES) -> DataFrame:
    """examples (example_id, user_id, item_id, ts, ...) + profile fields + behaviour: what the model reads of a row.

    The same rules as the nightly job's (pipeline.nightly.user_rows): a user missing from
    ``users`` has no row, the history is pipeline.history's, of valid items (``bought``).
    """
    profile = users.select("user_id", *tables.profile_columns(users, profile_fields)).dropDuplicates(["user_id"])
    return attach_behaviour(examples.join(profile, "user_id", "inner"), bought, max_n)


def dropped_rows(*, items: DataFrame, users: DataFrame, events: DataFrame, impressions: DataFrame | None,
                 source: str) -> DataFrame:
    """The input rows training leaves out, with the reason: source, key, reason (for quarantine and the counts).

    An impression of an item that is not valid, a purchase of one (no example, no history), and
    an impression or purchase of a user missing from ``users``. Sampled negatives are drawn from
    valid items only, so they drop nothing.
    """
    known = items.select("item_id").distinct().withColumn("_item_ok", F.lit(True))
    who = users.select("user_id").distinct().withColumn("_user_ok", F.lit(True))

    def reasons(df: DataFrame, name: str) -> DataFrame:
        checked = df.join(known, "item_id", "left").join(who, "user_id", "left")
        reason = F.concat_ws("; ", F.when(F.col("_item_ok").isNull(), F.lit("item: unknown or invalid")),
                             F.when(F.col("_user_ok").isNull(), F.lit("user: unknown")))
        return (checked.withColumn("reason", F.when(reason != "", reason)).where(F.col("reason").isNotNull())
                .select(F.lit(name).alias("source"),
                        F.concat_ws("|", "user_id", "item_id", F.col("ts").cast("string")).alias("key"), "reason"))

    out = reasons(events.where(F.col("event") == "purchase").select("user_id", "item_id", "ts"), "events")
    if source == "impressions" and impressions is not None:
        out = out.unionByName(reasons(impressions.select("user_id", "item_id", "ts"), "impressions"))
    return out


# ------------------------------------------------------------------------------ the table


def _inputs_key(inputs: dict) -> str:
    return json.dumps(inputs, sort_keys=True, default=str)


def write_examples(spark: SparkSession, config: AppConfig, examples: DataFrame, inputs: dict) -> tuple[int, bool]:
    """Overwrite training_examples in one commit tagged with ``inputs``; reuse the table when the tag matches.

    Returns (version, reused).
    """
    path = tables.ensure_table(spark, config, "training_examples")
    key = _inputs_key(inputs)
    latest = tables.latest_commit(spark, path)
    if latest is not None and latest[1] == key:
        return latest[0], True
    tables.overwrite_table(spark, config, "training_examples", examples, tag=key)
    return tables.table_version(spark, config, "training_examples"), False


def n_chunks_for(n_examples: int, examples_per_chunk: int, world_size: int) -> int:
    """Chunks of at most about ``examples_per_chunk`` examples, a multiple of the processes.

    The examples alone set the count. A chunk's store holds the items its examples name (at
    most examples_per_chunk x (1 + max_behaviour)) and at most one home item per example
    (:func:`home_fraction`). Letting the home items set the count instead spread a small
    training set over a large catalogue's worth of chunks (1M items, 20k examples: 182 chunks of
    about 110 examples, a chunk read every step).
    """
    return world_size * max(1, math.ceil(n_examples / examples_per_chunk / world_size))


def home_fraction(n_items: int, n_chunks: int, examples_per_chunk: int) -> float:
    """The share of valid items that get a home chunk: all of them while each chunk has at most one per example.

    Home items are what the alignment tasks train and are evaluated on, and an alignment batch
    is as large as a CVR batch, so a pass over a chunk's examples visits about as many home
    items as it has examples. Past that, a stable hash sample of the catalogue stands in for
    it, so a chunk's store stays the size its examples set, whatever the catalogue (1M items,
    40 chunks of 500 examples: a 2% sample, 20,000 items).
    """
    budget = n_chunks * examples_per_chunk
    return 1.0 if n_items <= budget else budget / n_items


def chunk_items(examples: DataFrame, items: DataFrame, n_chunks: int, fraction: float = 1.0,
                views: tuple[int, dict, bool] | None = None) -> DataFrame:
    """training_items rows: per chunk, the valid items its examples reference, and home items in their home chunk.

    ``items``: valid items with their features (item_id, content_hash, category, price, text_emb,
    n_text_tokens, image_emb). An item's home chunk (a hash of its id) is where the alignment tasks see it, so
    every valid item (or, past one per example, a stable ``fraction`` of them, see
    :func:`home_fraction`) is trained on and evaluated once, whether or not an example mentions it.
    ``views`` = (K, split, trained_too): see :func:`home_views`; without it view_image_emb is null.
    """
    referenced = (examples.select((F.col("bucket") % n_chunks).alias("chunk"),
                                  F.explode(F.array_union(F.array("item_id"), "behaviour")).alias("item_id"))
                  .distinct().withColumn("home", F.lit(False)))
    sampled = items if fraction >= 1.0 else items.where(
        (F.abs(F.xxhash64(F.lit("home-sample"), F.col("item_id"))) % 1_000_003) < F.lit(int(fraction * 1_000_003)))
    homes = sampled.select(home_chunk(F.col("item_id"), n_chunks).alias("chunk"), "item_id", F.lit(True).alias("home"))
    wanted = (referenced.unionByName(homes).groupBy("chunk", "item_id").agg(F.max("home").alias("home")))
    rows = wanted.join(items, "item_id", "inner")
    if views is None or not views[0]:
        return rows.withColumn("view_image_emb", F.lit(None).cast("binary"))
    return home_views(rows, *views)


def home_views(rows: DataFrame, n_views: int, split: dict, trained_too: bool = False) -> DataFrame:
    """training_items rows with ``view_image_emb``: the first ``n_views`` test-time views of the
    held-out home items (camenn.training.item_split "test") and, with ``trained_too``, of the
    training ones ("train"); null on every other row.

    Why the held-out ones: the calibrated thresholds are quantiles of the held-out items' own
    scores, and the night scores a listing over its photo and ``scoring.test_time_views`` views
    (mean logit), which moves the scores; the quantiles are taken the same way
    (camenn.training.held_out_metrics). Why the training ones (``training.view_share``): a view
    stands in for the photo in some of the item's alignment examples (camenn.training.with_views).
    Each carrying row holds K x its image_emb bytes more (4 views of 2x2 x 1280 fp16 tokens:
    40 kB): about ``split.test_fraction`` of the home items, or with ``trained_too`` all but the
    validation ones. ``rows`` must carry view_image_emb and n_views (item_features' VIEW_COLUMNS);
    a row encoded with fewer views than asked carries none (calibrated, or trained, on its photo alone).
    """
    test_fraction, valid_fraction, salt = float(split["test_fraction"]), float(split["valid_fraction"]), int(split["seed"])
    wanted = ("test", "train") if trained_too else ("test",)

    @F.pandas_udf("boolean")
    def carries_views(item_ids: pd.Series) -> pd.Series:
        from camenn.training import item_split

        return item_ids.map(lambda i: item_split(i, test_fraction, valid_fraction, salt) in wanted)

    keep = F.col("home") & (F.coalesce(F.col("n_views"), F.lit(0)) >= n_views) & carries_views(F.col("item_id"))
    first_views = F.expr(f"substring(view_image_emb, 1, {int(n_views)} * length(image_emb))")
    return rows.withColumn("view_image_emb", F.when(keep, first_views).otherwise(F.lit(None).cast("binary")))


def home_chunk(item_id, n_chunks: int):
    return F.pmod(F.xxhash64(F.lit("home"), item_id), F.lit(n_chunks)).cast("int")


def write_chunk_items(spark: SparkSession, config: AppConfig, examples: DataFrame, items: DataFrame, n_chunks: int,
                      inputs: dict, fraction: float = 1.0, views: tuple[int, dict, bool] | None = None) -> tuple[int, bool]:
    """Overwrite training_items in one commit tagged with ``inputs``; reuse it when the tag matches. (version, reused)."""
    path = tables.ensure_table(spark, config, "training_items")
    key = _inputs_key(inputs)
    latest = tables.latest_commit(spark, path)
    if latest is not None and latest[1] == key:
        return latest[0], True
    tables.overwrite_table(spark, config, "training_items", chunk_items(examples, items, n_chunks, fraction, views),
                           tag=key)
    return tables.table_version(spark, config, "training_items"), False


def settings_of(config: AppConfig, source: str, fingerprint: str) -> dict:
    s = config.training.split
    return {"source": source, "negative_ratio": config.training.negative_ratio, "max_behaviour": config.model.max_behaviour,
            "split": {"rule": s.rule, "test_fraction": s.test_fraction, "valid_fraction": s.valid_fraction, "seed": s.seed},
            "fingerprint": fingerprint}


def prepare_training_data(spark: SparkSession, config: AppConfig, run_date: dt.date | None = None,
                          update_features: bool = True) -> TrainingData:
    """Refresh the item feature cache, fit the vocabulary and write training_examples; pin every version."""
    from pipeline import feature_cache

    run_date = run_date or dt.date.today()
    fcfg = feature_cache.featurizer_config(config)
    fingerprint = feature_cache.featurizer_fingerprint(fcfg)
    stats = None
    if update_features:
        spark.sparkContext.setJobDescription("training: item feature cache")
        # the views the night scores over are encoded here too: the model does not read them, but a
        # photo encoded without them would be decoded and encoded again, views and all, by the next night
        stats = feature_cache.update_item_features(spark, config, run_date, job="train",
                                                   views=config.scoring.test_time_views)

    versions: dict[str, int] = {}
    source = examples_source(spark, config)
    names = ["items", "item_features"] + (["impressions"] if source == "impressions" else [])
    # users and events are optional: a catalogue of photos and texts alone trains the alignment tasks
    names += [name for name in ("users", "events") if tables.is_delta(spark, config.table(name))]
    for name in names:
        versions[name] = tables.table_version(spark, config, name)
    frames = {name: tables.read_table(spark, config, name, version=versions[name]) for name in names}
    for name in ("users", "events"):
        frames.setdefault(name, spark.createDataFrame([], tables.schema_of(spark, name, config)))
    # valid items: those the cache holds under this fingerprint with their current content (the nightly rule)
    spark.sparkContext.setJobDescription("training: valid items and vocabulary")
    # the held-out items' views: the calibrated thresholds are taken over them as the night scores (home_views)
    views = config.scoring.test_time_views
    cached = (frames["item_features"].where(F.col("encoder_fingerprint") == fingerprint)
              .select(*feature_cache.FEATURE_COLUMNS, *(feature_cache.VIEW_COLUMNS if views else ())))
    keys = feature_cache.item_keys(spark, config, fingerprint, items_df=frames["items"])
    with_blobs = keys.join(cached, ["item_id", "content_hash"], "inner")
    valid = with_blobs.select("item_id", "category", "price").cache()
    vocab = fit_vocab(valid, frames["users"], config.training.price_buckets, profile_fields=config.data.profile_fields)

    cvr = cvr_examples_possible(config, frames, source)
    inputs = {"versions": {k: v for k, v in versions.items() if k != "item_features"},
              **settings_of(config, source, fingerprint), "cvr_examples": cvr}
    # the set of valid items is fixed by the items version and the fingerprint, so item_features'
    # version (bumped by every feature update) is not part of the key
    spark.sparkContext.setJobDescription("training: examples")
    if cvr:
        examples = build_examples(config, items=valid, users=frames["users"], events=frames["events"],
                                  impressions=frames.get("impressions"), source=source)
    else:
        examples = spark.createDataFrame([], tables.schema_of(spark, "training_examples", config))
    version, reused = write_examples(spark, config, examples, inputs)
    versions["training_examples"] = version
    written = tables.read_table(spark, config, "training_examples", version=version)
    per_split = written.groupBy("split", "label").agg(F.count(F.lit(1)).alias("n")).collect()
    counts = {f"{r['split']}_{r['label']}": int(r["n"]) for r in per_split}
    n_examples = sum(int(r["n"]) for r in per_split)
    counts["items_valid"] = valid.count()

    spark.sparkContext.setJobDescription("training: dropped input rows")
    dropped = dropped_rows(items=valid, users=frames["users"], events=frames["events"],
                           impressions=frames.get("impressions"), source=source).persist()
    drops = {f"dropped {r['source']}: {r['reason']}": int(r["n"])
             for r in dropped.groupBy("source", "reason").agg(F.count(F.lit(1)).alias("n")).collect()}
    feature_cache.write_quarantine(spark, config, tables.quarantine_rows(
        dropped, run_date=run_date, job="train", source="training", key_col="key", payload_cols=["source"]),
        run_date=run_date, job="train")
    dropped.unpersist()

    # without CVR examples the items alone set the chunks, and every valid item is trained on
    n_chunks = n_chunks_for(n_examples or counts["items_valid"], config.training.examples_per_chunk,
                            config.training.num_processes)
    fraction = home_fraction(counts["items_valid"], n_chunks, config.training.examples_per_chunk) if n_examples else 1.0
    spark.sparkContext.setJobDescription(f"training: features of the items of {n_chunks} chunk(s)")
    # without views the key is the one earlier runs wrote, so their training_items stay reusable. With
    # them, the number of valid items that carry them is in the key too: a table written while some had
    # none (promote reads the cache without encoding) is written again once a refresh has encoded them
    calibration = {}
    if views:
        calibration = {"calibration_views": views,
                       "items_with_views": with_blobs.where(F.col("n_views") >= views).count()}
    # the training items carry their views too when a share of their examples is to be drawn from them;
    # only then is that in the key, so tables written before view_share existed stay reusable
    trained_too = bool(views) and config.training.view_share > 0
    if trained_too:
        calibration["trained_views"] = True
    item_version, _ = write_chunk_items(spark, config, written, with_blobs, n_chunks,
                                        {**inputs, "training_examples": version, "n_chunks": n_chunks,
                                         "home_fraction": fraction, **calibration},
                                        fraction, (views, config.training.split.model_dump(), trained_too) if views else None)
    versions["training_items"] = item_version
    chunk_rows = (written.groupBy((F.col("bucket") % n_chunks).alias("chunk"), "split").agg(F.count(F.lit(1)).alias("n"))
                  .collect())
    chunks: dict[int, dict[str, int]] = {c: {} for c in range(n_chunks)}
    for r in chunk_rows:
        chunks[int(r["chunk"])][r["split"]] = int(r["n"])
    # home items per chunk: an alignment-only run sets its epoch from them (camenn.training)
    for r in (tables.read_table(spark, config, "training_items", version=item_version).where(F.col("home"))
              .groupBy("chunk").agg(F.count(F.lit(1)).alias("n")).collect()):
        chunks[int(r["chunk"])]["home"] = int(r["n"])
    valid.unpersist()
    spark.sparkContext.setJobDescription(None)
    return TrainingData(vocab=vocab, versions=versions, fingerprint=fingerprint, source=source, counts=counts,
                        reused=reused, feature_stats=stats, drops=drops, chunks=chunks)


def cvr_examples_possible(config: AppConfig, frames: dict[str, DataFrame], source: str) -> bool:
    """Whether CVR examples can be built: the model has a cvr task, and there are users and purchases
    (or impressions) to build them from. Otherwise training runs the alignment tasks alone."""
    if "cvr" not in config.model.tasks:
        return False
    labelled = frames["impressions"] if source == "impressions" else \
        frames["events"].where(F.col("event") == "purchase")
    return bool(frames["users"].limit(1).count()) and bool(labelled.limit(1).count())


# ------------------------------------------------------------------------------ whole-catalogue store


def load_item_store(spark: SparkSession, features_path: str, features_version: int | None, items_path: str,
                    items_version: int | None, fingerprint: str, vocab: FeatureVocab, n_patches: int):
    """Every cached item under ``fingerprint`` that ``items`` still holds (its newest row), in one ItemStore.

    For the evaluation of the synthetic world (mislabel detection, heat maps), benchmarks and
    tests: it holds the whole catalogue, which training never does (it reads chunks,
    camenn.chunks). Read through Spark, not delta-rs: ``item_features`` has deletion vectors
    (pipeline.tables), which deltalake 1.6 cannot read. The rows come a partition at a time
    (toLocalIterator), so no single result meets ``spark.driver.maxResultSize``.
    """
    import pyarrow as pa

    from camenn.chunks import store_from_arrow

    feats = (tables.read_path(spark, features_path, features_version).where(F.col("encoder_fingerprint") == fingerprint)
             .select("item_id", "text_emb", "n_text_tokens", "image_emb"))
    newest = Window.partitionBy("item_id").orderBy(F.col("updated_at").desc())
    items = (tables.read_path(spark, items_path, items_version).withColumn("_n", F.row_number().over(newest))
             .where(F.col("_n") == 1).select("item_id", "category", "price"))
    joined = feats.join(items, "item_id")
    types = {"item_id": pa.string(), "text_emb": pa.binary(), "n_text_tokens": pa.int32(), "image_emb": pa.binary(),
             "category": pa.string(), "price": pa.float64()}
    columns: dict[str, list] = {name: [] for name in types}
    for row in joined.select(*types).toLocalIterator():
        for name in types:
            columns[name].append(row[name])
    if not columns["item_id"]:
        raise ValueError(f"no cached item features under fingerprint {fingerprint[:12]} at {features_path} "
                         f"(version {features_version}) match the items table")
    table = pa.table({name: pa.array([bytes(v) if isinstance(v, bytearray) else v for v in values], types[name])
                      for name, values in columns.items()})
    return store_from_arrow(table, vocab, n_patches)


def examples_digest(inputs: dict) -> str:
    return hashlib.sha256(_inputs_key(inputs).encode()).hexdigest()[:16]


__all__ = ["TrainingData", "prepare_training_data", "build_examples", "attach_behaviour", "assign_split",
           "sampled_examples", "impression_examples", "fit_vocab", "purchases", "examples_source", "write_examples",
           "N_BUCKETS"]
