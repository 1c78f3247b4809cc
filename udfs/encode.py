"""Item encoding inside Spark: the frozen encoders over new or changed items only.

``encode_fn(...)`` returns the function for ``DataFrame.mapInPandas``. Its input rows are the
items that ``pipeline.feature_cache`` found pending (their stored content_hash is not in the
cache), so every row is encoded; unchanged items never reach Python. Per Python worker the
:class:`~camenn.featurizer.ItemFeaturizer` (frozen text and image encoders) is built once and
cached in a module-level dict keyed by the featurizer config and the device, so reused
workers (``spark.python.worker.reuse``) skip the load on every later task.

Two stages overlap inside a task: a background thread runs ``featurizer.prepare`` (image
decode, patching, tokenization; CPU, mostly outside the GIL in PIL and the Rust tokenizer)
on the next chunk while the task's thread runs ``featurizer.encode`` (encoder forward on the
task's GPU, or its CPU threads) on the current one.

Input rows: item_id, merchant_id, category, title, description, image, image_size, price,
updated_at, content_hash (as stored in ``items``). Output rows follow :data:`STAGING_SCHEMA`
with ``status`` ``encoded`` (new blobs in this row) or ``quarantined`` (``reason`` says why).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from camenn.featurizer import FeaturizerConfig, pack_item_features
from udfs import autocast_dtype, configure_task_threads, task_device

STAGING_SCHEMA = (
    "item_id string, merchant_id string, category string, title string, description string, price double, "
    "updated_at timestamp, image_size int, content_hash string, status string, reason string, "
    "text_emb binary, n_text_tokens int, image_emb binary"
)
_COLUMNS = [part.strip().split(" ")[0] for part in STAGING_SCHEMA.split(",")]
_META = ["item_id", "merchant_id", "category", "title", "description", "price", "updated_at"]

REUSED, ENCODED, QUARANTINED, PENDING = "reused", "encoded", "quarantined", "pending"

_FEATURIZERS: dict[tuple[FeaturizerConfig, str], object] = {}
_LOCK = threading.Lock()


def get_featurizer(cfg: FeaturizerConfig, device: str = "cpu"):
    """The worker's featurizer for (cfg, device), built on first use."""
    key = (cfg, device)
    with _LOCK:
        featurizer = _FEATURIZERS.get(key)
        if featurizer is None:
            from camenn.featurizer import ItemFeaturizer

            featurizer = ItemFeaturizer.from_config(cfg, device=device)
            _FEATURIZERS[key] = featurizer
    return featurizer


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _frame(meta: pd.DataFrame, **columns) -> pd.DataFrame:
    out = meta[_META].reset_index(drop=True).copy()
    n = len(out)
    # a chunk is a slice of the input frame; its index must not reach the new columns
    columns = {k: (v.to_numpy() if isinstance(v, pd.Series) else v) for k, v in columns.items()}
    for name in _COLUMNS:
        if name in _META:
            continue
        values = columns.get(name)
        out[name] = pd.Series([None] * n if values is None else list(values), dtype=object)
    out["n_text_tokens"] = pd.array(out["n_text_tokens"], dtype="Int32")
    out["image_size"] = pd.array(out["image_size"], dtype="Int32")
    return out[_COLUMNS]


def encode_fn(cfg: FeaturizerConfig, fingerprint: str, *, autocast: str = "none", chunk_rows: int | None = None):
    """The mapInPandas function: (iterator of pending item frames) -> iterator of STAGING_SCHEMA frames."""
    chunk_rows = chunk_rows or cfg.batch_size

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        loaded: dict = {}

        def worker_featurizer():
            """Loaded on the first chunk to encode: a task whose items are all cached never loads the encoders."""
            if not loaded:
                device = task_device()
                configure_task_threads(device)
                featurizer = get_featurizer(cfg, device)
                if featurizer.fingerprint != fingerprint:
                    raise RuntimeError(
                        f"the encoders on this worker have fingerprint {featurizer.fingerprint[:12]} but the driver "
                        f"expected {fingerprint[:12]}: the worker's environment differs from the driver's "
                        "(ship the same environment / image to the executors)")
                loaded.update(featurizer=featurizer, dtype=autocast_dtype(autocast, device))
            return loaded["featurizer"]

        def units():
            """Chunks of at most chunk_rows rows to encode."""
            for pdf in batches:
                pdf = pdf.reset_index(drop=True)
                for start in range(0, len(pdf), chunk_rows):
                    yield pdf.iloc[start:start + chunk_rows]

        def prepare(chunk: pd.DataFrame):
            return chunk, loaded["featurizer"].prepare(list(chunk["title"]), list(chunk["description"]), list(chunk["image"]))

        def finish(chunk: pd.DataFrame, prepared) -> pd.DataFrame:
            encoded = loaded["featurizer"].encode(prepared, autocast_dtype=loaded["dtype"])
            blobs = pack_item_features(encoded)
            errors = list(prepared.errors)
            return _frame(
                chunk,
                image_size=chunk["image_size"],
                content_hash=chunk["content_hash"],
                status=[ENCODED if b is not None else QUARANTINED for b in blobs],
                reason=[None if b is not None else (e or "features: encoder produced nothing") for b, e in zip(blobs, errors)],
                text_emb=[None if b is None else b[0] for b in blobs],
                n_text_tokens=[None if b is None else int(b[1]) for b in blobs],
                image_emb=[None if b is None else b[2] for b in blobs],
            )

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="camenn-prepare") as pool:
            in_flight = None  # future of the chunk being prepared while the previous one encodes
            for data in units():
                worker_featurizer()
                upcoming = pool.submit(prepare, data)
                if in_flight is not None:
                    yield finish(*in_flight.result())
                in_flight = upcoming
            if in_flight is not None:
                yield finish(*in_flight.result())

    return run
