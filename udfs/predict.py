"""CameNN inference inside Spark: mapInPandas / mapInArrow functions that load the model once per worker.

    outputs = items.mapInArrow(item_outputs_fn(model_dir, version, batch_size, autocast), ITEM_OUTPUTS_SCHEMA)
    cvr = users.mapInPandas(cvr_users_fn(model_dir, version, batch_size, autocast), CVR_SCHEMA)   # nightly
    pooled = items.mapInArrow(pooled_items_fn(d_model, n_patches), POOLED_ITEMS_SCHEMA)  # behaviour, pooled models
    cvr = pairs.mapInPandas(cvr_fn(model_dir, version, batch_size, autocast), CVR_SCHEMA)         # reference
    scores = items.mapInPandas(align_fn(model_dir, version, batch_size, autocast), ALIGN_SCHEMA)  # reference

Each Arrow batch (``spark.sql.execution.arrow.maxRecordsPerBatch`` rows) is scored in model
batches of ``scoring.batch_size`` rows by :class:`camenn.predictor.Predictor`, the same code
a plain PyTorch loop calls. The model is cached in a module-level dict keyed by
(model_dir, version, device): with ``spark.python.worker.reuse`` a worker loads it once, and
the version check makes a worker refuse an artifact that changed under the driver's feet.

Device: the task's GPU when Spark assigned one (``TaskContext.resources()["gpu"]``), with
autocast (``scoring.autocast``); otherwise the CPU with torch threads = the task's CPUs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pandas as pd
from pyspark.sql.types import BinaryType, DoubleType, IntegerType, StringType, StructField, StructType

from udfs import configure_task_threads, memory_logged, task_device

ALIGN_INPUT = ["item_id", "merchant_id", "category", "price", "text_emb", "n_text_tokens", "image_emb"]
ALIGN_SCHEMA = "item_id string, merchant_id string, category string, p_ita double, p_tia double"

BEHAVIOUR_FIELDS = ["beh_text_emb", "beh_n_text_tokens", "beh_image_emb", "beh_category", "beh_price"]
CVR_SCHEMA = "user_id string, item_id string, cvr double"

# The item pass: encoder blobs in, the item's projected tokens and alignment scores out.
ITEM_OUTPUTS_INPUT = ["item_id", "content_hash", "category", "price", "text_emb", "n_text_tokens", "image_emb"]
# ... and, when the night scores over test-time views (scoring.test_time_views), the views' image tokens
ITEM_VIEWS_INPUT = ["view_image_emb"]
# A StructType rather than DDL: item_outputs_fn derives its Arrow schema from it on the executor,
# where there is no JVM to parse DDL, so the two cannot drift apart.
ITEM_OUTPUTS_SCHEMA = StructType([
    StructField("item_id", StringType()), StructField("content_hash", StringType()),
    StructField("category", StringType()), StructField("price", DoubleType()),
    StructField("text_proj", BinaryType()), StructField("n_text_tokens", IntegerType()),
    StructField("image_proj", BinaryType()), StructField("p_ita", DoubleType()), StructField("p_tia", DoubleType()),
])

# An item whose category or price changed but not its content: its cached projections (which
# depend on content alone, CameNN.project_items) with the new fields, for new alignment scores.
ITEM_RESCORE_INPUT = ["item_id", "content_hash", "category", "price", "text_proj", "n_text_tokens", "image_proj"]

# The nightly CVR input: one row per user, its behaviour once and its candidates as lists,
# every item as projected tokens (ITEM_OUTPUTS_SCHEMA's text_proj / image_proj).
PROJECTED_FIELDS = ["text_proj", "n_text_tokens", "image_proj", "category", "price"]


# A behaviour item as a pooled-behaviour model reads it (camenn.predictor.pool_behaviour_items):
# PROJECTED_FIELDS with one mean text token (none without text) and one mean patch.
POOLED_ITEMS_SCHEMA = StructType([
    StructField("item_id", StringType()), StructField("text_proj", BinaryType()),
    StructField("n_text_tokens", IntegerType()), StructField("image_proj", BinaryType()),
    StructField("category", StringType()), StructField("price", DoubleType()),
])


def cvr_input(profile_fields) -> list[str]:
    """The reference path's columns, one row per candidate: target blobs, behaviour blobs, the profile fields."""
    return ["user_id", "item_id", "category", "price", "text_emb", "n_text_tokens", "image_emb", *BEHAVIOUR_FIELDS,
            *profile_fields]


def cvr_users_input(profile_fields) -> list[str]:
    """The nightly CVR input's columns, one row per user: its profile fields, its candidates, its behaviour."""
    return ["user_id", *profile_fields, "cand_item_id", *(f"cand_{f}" for f in PROJECTED_FIELDS),
            *(f"beh_{f}" for f in PROJECTED_FIELDS)]


_MODELS: dict[tuple[str, str, str], object] = {}
_LOCK = threading.Lock()


def get_model(model_dir: str, version: str, device: str, autocast: str | None = None):
    """The worker's Predictor for (model_dir, version, device), loaded on first use."""
    key = (str(model_dir), version, device, autocast or "none")
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            from camenn.predictor import Predictor

            model = Predictor.load(model_dir, device=device, autocast=autocast)
            if model.version != version:
                raise RuntimeError(f"model artifact {model_dir} is version {model.version} on this worker but the driver "
                                   f"planned version {version}: the artifact changed during the run")
            _MODELS[key] = model
    return model


def _worker_model(model_dir: str, version: str, autocast: str | None):
    device = task_device()
    configure_task_threads(device)
    return get_model(model_dir, version, device, autocast)


def align_fn(model_dir: str, version: str, batch_size: int, autocast: str | None = None):
    """(frames of ALIGN_INPUT) -> (frames of ALIGN_SCHEMA): item-only forward, p_ita and p_tia."""

    @memory_logged("align")
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = _worker_model(model_dir, version, autocast)
        for pdf in batches:
            p_ita, p_tia = model.score_items(list(pdf["text_emb"]), list(pdf["n_text_tokens"]), list(pdf["image_emb"]),
                                             list(pdf["category"]), list(pdf["price"]), batch_size=batch_size)
            yield pd.DataFrame({"item_id": pdf["item_id"].to_numpy(), "merchant_id": pdf["merchant_id"].to_numpy(),
                                "category": pdf["category"].to_numpy(), "p_ita": p_ita, "p_tia": p_tia})

    return run


def cvr_fn(model_dir: str, version: str, batch_size: int, autocast: str | None = None):
    """(frames of cvr_input(the model's profile fields)) -> (frames of CVR_SCHEMA): full forward with the
    user's behaviour and profile."""

    @memory_logged("cvr_reference")
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = _worker_model(model_dir, version, autocast)
        for pdf in batches:
            cvr = model.score_pairs(
                list(pdf["text_emb"]), list(pdf["n_text_tokens"]), list(pdf["image_emb"]),
                list(pdf["category"]), list(pdf["price"]),
                *(list(pdf[c]) for c in BEHAVIOUR_FIELDS),
                {f: list(pdf[f]) for f in model.vocab.profile_fields},
                batch_size=batch_size)
            yield pd.DataFrame({"user_id": pdf["user_id"].to_numpy(), "item_id": pdf["item_id"].to_numpy(), "cvr": cvr})

    return run


def binary_views(column) -> list:
    """A binary Arrow column's values as memoryviews of its data buffer (None for nulls), no copy.

    ``to_pandas`` copies every value into a new ``bytes`` object: for the item pass, whose rows
    are the encoders' fp16 outputs (~47 KB an item with the demo encoders), that copy cost about
    part of moving the rows to Python (bench_scoring's "item rows to Python" on the 20k demo world:
    3.5 s with to_pandas, 2.6 s as views, 2026-12-02 and -03). numpy reads the views in place.
    """
    import numpy as np
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if n == 0:
        return []
    width = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=width, count=n + 1, offset=column.offset * np.dtype(width).itemsize)
    data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
    valid = column.is_valid().to_numpy(zero_copy_only=False) if column.null_count else None
    starts, ends = offsets[:-1].tolist(), offsets[1:].tolist()
    if valid is None:
        return [data[a:b] for a, b in zip(starts, ends)]
    return [data[a:b] if ok else None for a, b, ok in zip(starts, ends, valid)]


def _record_batch(struct: StructType, batch, computed: dict):
    """A record batch of ``struct``: the ``computed`` columns, the rest passed through from ``batch``."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(struct)
    return pa.record_batch([pa.array(computed[f.name], f.type) if f.name in computed else batch.column(f.name).cast(f.type)
                            for f in schema], schema=schema)


def item_outputs_fn(model_dir: str, version: str, batch_size: int, autocast: str | None = None, views: int = 0):
    """For ``mapInArrow``: (record batches of ITEM_OUTPUTS_INPUT) -> (record batches of ITEM_OUTPUTS_SCHEMA).

    Projected tokens and p_ita / p_tia of every item. An Arrow function rather than a pandas
    one: the encoder blobs are read in place (binary_views), not copied into Python bytes.
    With ``views`` the input also has ITEM_VIEWS_INPUT, and p_ita / p_tia are the mean logit
    over the photo and its first ``views`` views (``Predictor.item_outputs``).
    """
    import pyarrow as pa

    @memory_logged("item_outputs")
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = _worker_model(model_dir, version, autocast)
        for batch in batches:
            col = batch.column
            out = model.item_outputs(binary_views(col("text_emb")), col("n_text_tokens").to_pylist(),
                                     binary_views(col("image_emb")), col("category").to_pylist(),
                                     col("price").to_pylist(), batch_size=batch_size,
                                     view_image_embs=binary_views(col("view_image_emb")) if views else None,
                                     n_views=views)
            yield _record_batch(ITEM_OUTPUTS_SCHEMA, batch, out)

    return run


def item_rescore_fn(model_dir: str, version: str, batch_size: int, autocast: str | None = None):
    """For ``mapInArrow``: (record batches of ITEM_RESCORE_INPUT) -> (record batches of ITEM_OUTPUTS_SCHEMA).

    p_ita / p_tia from the cached projected tokens under the item's new category and price; the
    projections pass through. No encoder blob is read: a price change costs d_model-sized rows.
    """
    import numpy as np
    import pyarrow as pa

    @memory_logged("item_rescore")
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = _worker_model(model_dir, version, autocast)
        align = {"ita", "tia"} <= set(model.tasks)
        for batch in batches:
            col = batch.column
            if align:
                p_ita, p_tia = model.score_items(binary_views(col("text_proj")), col("n_text_tokens").to_pylist(),
                                                 binary_views(col("image_proj")), col("category").to_pylist(),
                                                 col("price").to_pylist(), batch_size=batch_size, projected=True)
            else:   # a model without alignment heads caches null scores (item_outputs' NaN)
                p_ita = p_tia = np.full(batch.num_rows, np.nan)
            yield _record_batch(ITEM_OUTPUTS_SCHEMA, batch, {"p_ita": p_ita, "p_tia": p_tia})

    return run


def pooled_items_fn(d_model: int, n_patches: int):
    """(record batches of item_id + PROJECTED_FIELDS) -> (record batches of POOLED_ITEMS_SCHEMA): numpy only, no model."""

    @memory_logged("pooled_items")
    def run(batches: Iterator) -> Iterator:
        from camenn.predictor import pool_behaviour_items

        for batch in batches:
            text, n, image = pool_behaviour_items(binary_views(batch.column("text_proj")),
                                                  batch.column("n_text_tokens").to_pylist(),
                                                  binary_views(batch.column("image_proj")), d_model, n_patches)
            yield _record_batch(POOLED_ITEMS_SCHEMA, batch, {"text_proj": text, "n_text_tokens": n, "image_proj": image})

    return run


def user_frames(batches: Iterator[pd.DataFrame], min_candidates: int) -> Iterator[pd.DataFrame]:
    """Arrow batches of users regrouped into frames of at least ``min_candidates`` candidates.

    An Arrow batch is sized in users (rows), a model batch in candidates; without this a user
    batch of ~80 candidates fills a third of a 256-row model batch. A frame holds at most one
    Arrow batch more than it needs, so memory stays bounded by the two batch sizes.
    """
    held: list[pd.DataFrame] = []
    n_held = 0
    for pdf in batches:
        held.append(pdf)
        n_held += int(pdf["cand_item_id"].map(len).sum())
        if n_held >= min_candidates:
            yield pd.concat(held, ignore_index=True) if len(held) > 1 else held[0]
            held, n_held = [], 0
    if held:
        yield pd.concat(held, ignore_index=True)


def cvr_users_fn(model_dir: str, version: str, batch_size: int, autocast: str | None = None,
                 batches_per_frame: int = 4, pooled_behaviour: bool = False):
    """(frames of cvr_users_input(the model's profile fields), one row per user) -> (frames of CVR_SCHEMA, one
    row per candidate).

    Users are scored ``batches_per_frame`` model batches at a time (user_frames), so at most
    one model batch in that many is partly filled. ``pooled_behaviour``: the behaviour columns
    hold pooled_items_fn's rows (``nightly.user_rows`` with ``pooled``).
    """

    @memory_logged("cvr_users")
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = _worker_model(model_dir, version, autocast)
        for pdf in user_frames(batches, batches_per_frame * batch_size):
            user_idx, item_ids, cvr = model.score_users(
                list(pdf["cand_item_id"]), *(list(pdf[f"cand_{f}"]) for f in PROJECTED_FIELDS),
                *(list(pdf[f"beh_{f}"]) for f in PROJECTED_FIELDS),
                {f: list(pdf[f]) for f in model.vocab.profile_fields}, batch_size=batch_size,
                pooled_behaviour=pooled_behaviour)
            yield pd.DataFrame({"user_id": pdf["user_id"].to_numpy()[user_idx], "item_id": item_ids, "cvr": cvr})

    return run
