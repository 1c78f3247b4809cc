"""Item featurization inside Spark: hash every item, encode only the new or changed ones.

``featurize_fn(...)`` returns the function for ``DataFrame.mapInPandas``. Per Python worker
the :class:`~camenn.featurizer.ItemFeaturizer` (frozen text and image encoders) is built once
and cached in a module-level dict keyed by the featurizer config and the device, so reused
workers (``spark.python.worker.reuse``) skip the load on every later task.

Two stages overlap inside a task: a background thread runs ``featurizer.prepare`` (image
decode, patching, tokenization; CPU, mostly outside the GIL in PIL and the Rust tokenizer)
on the next chunk while the task's thread runs ``featurizer.encode`` (encoder forward on the
task's GPU, or its CPU threads) on the current one.

Input rows (pipeline.features builds them): item_id, merchant_id, category, title,
description, image, price, updated_at, reason (a validation failure found in Spark, or null)
and cached_hash (the content_hash item_features holds for this item under the current
encoder fingerprint, or null). Output rows follow :data:`STAGING_SCHEMA`; ``status`` is one of
``reused`` (the cached features are current), ``encoded`` (new blobs in this row),
``quarantined`` (``reason`` says why) or, with ``encode=False``, ``pending`` (needs encoding).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from camenn.featurizer import FeaturizerConfig, content_hash, pack_item_features
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


def _hashes(pdf: pd.DataFrame, fingerprint: str) -> list[str | None]:
    out = []
    for item_id, title, description, image in zip(pdf["item_id"], pdf["title"], pdf["description"], pdf["image"]):
        if _is_missing(item_id):
            out.append(None)
            continue
        out.append(content_hash(None if _is_missing(title) else title,
                                None if _is_missing(description) else description,
                                None if _is_missing(image) else bytes(image), fingerprint))
    return out


def _frame(meta: pd.DataFrame, **columns) -> pd.DataFrame:
    out = meta[_META].reset_index(drop=True).copy()
    n = len(out)
    for name in _COLUMNS:
        if name in _META:
            continue
        values = columns.get(name)
        out[name] = pd.Series([None] * n if values is None else list(values), dtype=object)
    out["n_text_tokens"] = pd.array(out["n_text_tokens"], dtype="Int32")
    out["image_size"] = pd.array(out["image_size"], dtype="Int32")
    return out[_COLUMNS]


def _image_sizes(images) -> list[int | None]:
    return [None if _is_missing(im) else len(im) for im in images]


def _classify(pdf: pd.DataFrame, fingerprint: str):
    """Hash every row; split it into rows that are settled (reused / quarantined) and rows to encode."""
    pdf = pdf.reset_index(drop=True)
    hashes = _hashes(pdf, fingerprint)
    reasons = [None if _is_missing(r) else r for r in pdf["reason"]]
    cached = [None if _is_missing(c) else c for c in pdf["cached_hash"]]
    status = [QUARANTINED if r else (REUSED if h == c else PENDING) for r, h, c in zip(reasons, hashes, cached)]
    pdf = pdf.assign(content_hash=hashes, status=status, reason=reasons)
    return pdf


def featurize_fn(cfg: FeaturizerConfig, fingerprint: str, *, encode: bool = True, autocast: str = "none",
                 chunk_rows: int | None = None):
    """The mapInPandas function: (iterator of input frames) -> iterator of STAGING_SCHEMA frames."""
    chunk_rows = chunk_rows or cfg.batch_size

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        if not encode:
            for pdf in batches:
                pdf = _classify(pdf, fingerprint)
                yield _frame(pdf, image_size=_image_sizes(pdf["image"]), content_hash=pdf["content_hash"],
                             status=pdf["status"], reason=pdf["reason"])
            return

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
            """('ready', frame) for settled rows, ('encode', frame) chunks of at most chunk_rows rows to encode."""
            for pdf in batches:
                pdf = _classify(pdf, fingerprint)
                settled = pdf[pdf["status"] != PENDING]
                if len(settled):
                    yield "ready", _frame(settled, image_size=_image_sizes(settled["image"]),
                                          content_hash=settled["content_hash"], status=settled["status"],
                                          reason=settled["reason"])
                todo = pdf[pdf["status"] == PENDING]
                for start in range(0, len(todo), chunk_rows):
                    yield "encode", todo.iloc[start:start + chunk_rows]

        def prepare(chunk: pd.DataFrame):
            return chunk, loaded["featurizer"].prepare(list(chunk["title"]), list(chunk["description"]), list(chunk["image"]))

        def finish(chunk: pd.DataFrame, prepared) -> pd.DataFrame:
            encoded = loaded["featurizer"].encode(prepared, autocast_dtype=loaded["dtype"])
            blobs = pack_item_features(encoded)
            errors = list(prepared.errors)
            return _frame(
                chunk,
                image_size=_image_sizes(chunk["image"]),
                content_hash=chunk["content_hash"],
                status=[ENCODED if b is not None else QUARANTINED for b in blobs],
                reason=[None if b is not None else (e or "features: encoder produced nothing") for b, e in zip(blobs, errors)],
                text_emb=[None if b is None else b[0] for b in blobs],
                n_text_tokens=[None if b is None else int(b[1]) for b in blobs],
                image_emb=[None if b is None else b[2] for b in blobs],
            )

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="camenn-prepare") as pool:
            in_flight = None  # future of the chunk being prepared while the previous one encodes
            for kind, data in units():
                if kind == "ready":
                    yield data
                    continue
                worker_featurizer()
                upcoming = pool.submit(prepare, data)
                if in_flight is not None:
                    yield finish(*in_flight.result())
                in_flight = upcoming
            if in_flight is not None:
                yield finish(*in_flight.result())

    return run
