"""Item encoding inside Spark: the frozen encoders over new or changed items only.

``encode_fn(...)`` returns the function for ``DataFrame.mapInPandas``. Its input rows are the
items that ``pipeline.feature_cache`` found pending (their stored content_hash is not in the
cache), so every row is encoded; unchanged items never reach Python. Per Python worker the
:class:`~camenn.featurizer.ItemFeaturizer` (frozen text and image encoders) is built once and
cached in a module-level dict keyed by the featurizer config and the device, so reused
workers (``spark.python.worker.reuse``) skip the load on every later task.

Two stages overlap inside a task: background threads run ``featurizer.prepare`` (image
decode, patching, tokenization; CPU, mostly outside the GIL in PIL and the Rust tokenizer)
on the next chunks while the task's thread runs ``featurizer.encode`` (encoder forward on the
task's GPU, or its CPU threads) on the current one. On CPU one thread prepares, since the
encoders' torch threads already hold the task's cores; on a GPU as many as the task has CPUs
(``spark.task.cpus``, at most 8, :func:`prepare_threads`): at production's shape one thread
prepares 45-76 items/s and an H200 encodes 277; this loop ran at 60 items/s with one thread, 158
with 4, 162 with 8 and 129 with 16 (the GIL; docs/results/gpu-scoring.md).

Input rows: item_id, merchant_id, category, title, description, image, image_size, price,
updated_at, content_hash (as stored in ``items``). Output rows follow :data:`STAGING_SCHEMA`
with ``status`` ``encoded`` (new blobs in this row) or ``quarantined`` (``reason`` says why).
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from camenn.featurizer import FeaturizerConfig, pack_item_features, pack_views
from camenn.images import view_seed
from udfs import autocast_dtype, configure_task_threads, memory_logged, task_cpus, task_device

STAGING_SCHEMA = (
    "item_id string, merchant_id string, category string, title string, description string, price double, "
    "updated_at timestamp, image_size int, content_hash string, status string, reason string, "
    "text_emb binary, n_text_tokens int, image_emb binary, view_image_emb binary, n_views int"
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
    out["n_views"] = pd.array(out["n_views"], dtype="Int32")
    return out[_COLUMNS]


# Past this the prepare threads fight over the GIL: 16 ran slower than 8 on an H200's host.
MAX_PREPARE_THREADS = 8


def prepare_threads(device: str) -> int:
    """Threads that prepare chunks in a task on ``device``: one on CPU, the task's CPUs on a GPU."""
    return 1 if device == "cpu" else min(task_cpus(), MAX_PREPARE_THREADS)


def prepared_ahead(chunks: Iterable, prepare: Callable, threads: int) -> Iterator[tuple]:
    """(chunk, prepare(chunk)) for each chunk, in order, with up to ``threads`` chunks being
    prepared in a pool while the caller works on the one it was handed.

    ``prepare`` runs on the pool's threads only; with threads > 1 it must be safe to call
    concurrently (see :func:`thread_featurizers`).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="camenn-prepare") as pool:
        in_flight: deque = deque()
        try:
            for chunk in chunks:
                in_flight.append((chunk, pool.submit(prepare, chunk)))
                if len(in_flight) > threads:
                    chunk, done = in_flight.popleft()
                    yield chunk, done.result()
            while in_flight:
                chunk, done = in_flight.popleft()
                yield chunk, done.result()
        finally:
            for _, future in in_flight:   # a failed or abandoned task: do not prepare the rest
                future.cancel()


def thread_featurizers(featurizer) -> Callable[[], object]:
    """A per-thread view of ``featurizer`` for prepare: a shallow copy with its own tokenizer.

    A fast tokenizer's Rust state is set on first use (truncation) and borrowed per call, so
    one instance shared by prepare threads can fail with "Already borrowed"; the encoders are
    shared, prepare never touches them.
    """
    local = threading.local()

    def get():
        mine = getattr(local, "featurizer", None)
        if mine is None:
            mine = copy.copy(featurizer)
            mine.tokenizer = copy.deepcopy(featurizer.tokenizer)
            local.featurizer = mine
        return mine

    return get


def encode_fn(cfg: FeaturizerConfig, fingerprint: str, *, autocast: str = "none", chunk_rows: int | None = None,
              threads: int | None = None, views: int = 0):
    """The mapInPandas function: (iterator of pending item frames) -> iterator of STAGING_SCHEMA frames.

    ``threads``: prepare threads per task (default :func:`prepare_threads` of the task's device).
    ``views``: test-time views of each photo to encode beside it (``scoring.test_time_views``),
    seeded by the row's content hash; their tokens go to ``view_image_emb`` and their number to
    ``n_views`` (0 and no blob without views).
    """
    chunk_rows = chunk_rows or cfg.batch_size

    @memory_logged("encode")
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
                width = threads or prepare_threads(device)
                loaded.update(featurizer=featurizer, dtype=autocast_dtype(autocast, device), threads=width,
                              preparer=thread_featurizers(featurizer) if width > 1 else lambda: featurizer)
            return loaded["featurizer"]

        def units():
            """Chunks of at most chunk_rows rows to encode."""
            for pdf in batches:
                pdf = pdf.reset_index(drop=True)
                for start in range(0, len(pdf), chunk_rows):
                    yield pdf.iloc[start:start + chunk_rows]

        def prepare(chunk: pd.DataFrame):
            featurizer, images = loaded["preparer"](), list(chunk["image"])
            prepared = featurizer.prepare(list(chunk["title"]), list(chunk["description"]), images)
            if not views:
                return prepared, None
            return prepared, featurizer.prepare_views(images, [view_seed(h) for h in chunk["content_hash"]], views)

        def finish(chunk: pd.DataFrame, prepared_views) -> pd.DataFrame:
            prepared, view_patches = prepared_views
            encoded = loaded["featurizer"].encode(prepared, autocast_dtype=loaded["dtype"])
            blobs = pack_item_features(encoded)
            view_blobs = [None] * len(blobs)
            if view_patches is not None:
                view_blobs = pack_views(loaded["featurizer"].encode_views(view_patches, autocast_dtype=loaded["dtype"]),
                                        encoded.valid)
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
                view_image_emb=view_blobs,
                n_views=[None if b is None else views for b in blobs],
            )

        chunks = units()
        first = next(chunks, None)
        if first is None:
            return
        worker_featurizer()
        for chunk, prepared in prepared_ahead(itertools.chain([first], chunks), prepare, loaded["threads"]):
            yield finish(chunk, prepared)

    return run
