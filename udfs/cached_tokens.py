"""Projected tokens read from item_model_outputs by bucket, in the task that holds that bucket's demand.

    rows = (demand.repartition("bucket").sortWithinPartitions("bucket")
            .mapInArrow(cached_tokens_fn(path, version, model_version, out_struct, pooled), out_struct))

A Spark join of the demand (candidates and behaviour items, keyed by item_id) with the cache
shuffles the cache's rows, tokens and all, to item_id partitions, and the joined rows then
move again to their user: every candidate's target tokens crossed the shuffle twice. The cache
is partitioned by ``bucket`` (``pipeline.tables.token_bucket``), so a task that holds all the
demand of a bucket reads that bucket's files itself, with delta-rs at the version the driver
pinned (deletion vectors applied by its DataFusion scan), and emits each demand row with its
tokens. Only the small demand rows are shuffled to get here; the tokens move once, to the user.

Memory per task: one bucket's demand rows (sorted by item_id) and one Arrow batch of the
bucket's cached rows at a time, never the bucket's whole cache.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from udfs import memory_logged

TOKEN_COLUMNS = ("text_proj", "n_text_tokens", "image_proj", "category", "price")
OUT_ROWS = 4096   # rows per emitted record batch

_TABLES: dict[tuple[str, int], object] = {}
_LOCK = threading.Lock()


def _table(path: str, version: int):
    """The worker's delta-rs snapshot of (path, version), loaded once: its log is read per worker, not per bucket."""
    from camenn.chunks import delta_table

    with _LOCK:
        table = _TABLES.get((path, version))
        if table is None:
            table = _TABLES[(path, version)] = delta_table(path, version)
    return table


def bucket_rows(path: str, version: int, model_version: str, bucket: int):
    """A RecordBatchReader of the bucket's cached rows of ``model_version``: item_id and TOKEN_COLUMNS."""
    import pyarrow as pa
    from deltalake import QueryBuilder

    if not model_version.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"model version {model_version!r} is not a plain identifier")
    sql = (f"SELECT item_id, {', '.join(TOKEN_COLUMNS)} FROM cache "
           f"WHERE bucket = {int(bucket)} AND model_version = '{model_version}'")
    return pa.RecordBatchReader.from_stream(QueryBuilder().register("cache", _table(path, version)).execute(sql))


def _runs(ids) -> tuple:
    """Sorted item ids -> (the distinct ids, the start and the end of each one's rows)."""
    import numpy as np
    import pyarrow.compute as pc

    ree = pc.run_end_encode(ids)
    ends = ree.run_ends.to_numpy().astype(np.int64)
    return ree.values, np.concatenate([[0], ends[:-1]]), ends


def _matches(token_ids, distinct, starts, ends, found) -> tuple:
    """(token row, demand row) index pairs of every demand row whose item is in this batch of tokens."""
    import numpy as np
    import pyarrow.compute as pc

    at = pc.index_in(token_ids, value_set=distinct)
    rows = np.flatnonzero(at.is_valid().to_numpy(zero_copy_only=False))
    which = at.drop_null().to_numpy().astype(np.int64)
    found[which] = True
    counts = ends[which] - starts[which]
    total = int(counts.sum())
    first = np.repeat(starts[which] - (np.cumsum(counts) - counts), counts)   # each run's start, less its offset
    return np.repeat(rows, counts), first + np.arange(total)


def _pooled(tokens, rows, shape: tuple[int, int]) -> tuple:
    """The token rows that ``rows`` name, pooled as a behaviour item is read (two means), and ``rows`` renumbered into them."""
    import numpy as np
    import pyarrow as pa

    from camenn.predictor import pool_behaviour_items
    from udfs.predict import binary_views

    distinct = np.unique(rows)
    sub = tokens.take(distinct)
    text, n, image = pool_behaviour_items(binary_views(sub.column("text_proj")), sub.column("n_text_tokens").to_pylist(),
                                          binary_views(sub.column("image_proj")), *shape)
    for name, values, kind in (("text_proj", text, pa.binary()), ("n_text_tokens", n, pa.int32()),
                               ("image_proj", image, pa.binary())):
        sub = sub.set_column(sub.schema.get_field_index(name), name, pa.array(values, kind))
    return sub, np.searchsorted(distinct, rows)


def cached_tokens_fn(path: str, version: int, model_version: str, out_struct, pooled: tuple[int, int] | None = None):
    """For ``mapInArrow`` over demand rows sorted by bucket within each partition (item_id, pos, bucket, ...).

    Yields ``out_struct``'s rows: the demand's columns but bucket, with the item's TOKEN_COLUMNS.
    ``pooled`` = (d_model, n_patches): behaviour rows (pos >= 0) get the two means a
    pooled-behaviour model reads (``camenn.predictor.pool_behaviour_items``), candidates (pos < 0)
    every token. A demand row whose item has no cached row of ``model_version`` in its bucket
    fails the task, naming the item: no row is dropped.
    """

    def one_bucket(bucket: int, parts: list) -> Iterator:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        from pyspark.sql.pandas.types import to_arrow_schema

        schema = to_arrow_schema(out_struct)
        demand = pa.Table.from_batches(parts).drop_columns(["bucket"])
        kinds = [(demand.filter(pc.less(demand.column("pos"), 0)), False)]
        kinds.append((demand.filter(pc.greater_equal(demand.column("pos"), 0)), pooled is not None))
        kinds = [(d.take(pc.sort_indices(d.column("item_id"))), pool) for d, pool in kinds if d.num_rows]
        runs = []
        for d, _ in kinds:
            distinct, starts, ends = _runs(d.column("item_id").combine_chunks())
            runs.append(((distinct, starts, ends), np.zeros(len(distinct), bool)))   # found: a cached row was seen
        for tokens in bucket_rows(path, version, model_version, bucket):
            # delta-rs gives string and binary views; Spark's Arrow reader wants the plain types
            tokens = pa.Table.from_batches([tokens]).cast(pa.schema([(n, schema.field(n).type) for n in tokens.schema.names]))
            for (d, pool), ((distinct, starts, ends), found) in zip(kinds, runs):
                tok_rows, dem_rows = _matches(tokens.column("item_id"), distinct, starts, ends, found)
                if not len(tok_rows):
                    continue
                have = tokens
                if pool:
                    have, tok_rows = _pooled(tokens, tok_rows, pooled)
                for lo in range(0, len(tok_rows), OUT_ROWS):
                    rows_d, rows_t = dem_rows[lo:lo + OUT_ROWS], tok_rows[lo:lo + OUT_ROWS]
                    left, right = d.take(rows_d), have.take(rows_t)
                    yield pa.record_batch([(right if f.name in TOKEN_COLUMNS else left).column(f.name).combine_chunks()
                                           .cast(f.type) for f in schema], schema=schema)
        for (distinct, _starts, _ends), found in runs:
            if not found.all():
                missing = distinct.filter(pa.array(~found)).to_pylist()
                raise RuntimeError(f"item_model_outputs@v{version}, bucket {bucket}: {len(missing)} item(s) have no cached "
                                   f"row of model {model_version}, e.g. {missing[:5]}: the cache changed under the run, or "
                                   "the night's outputs came from another version")

    @memory_logged("cached_tokens")
    def run(batches: Iterator) -> Iterator:
        import numpy as np

        held, current = [], None
        for batch in batches:
            buckets = batch.column("bucket").to_numpy(zero_copy_only=False)
            cuts = [0, *(np.flatnonzero(np.diff(buckets)) + 1).tolist(), len(buckets)]
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                if hi == lo:
                    continue
                bucket = int(buckets[lo])
                if current is not None and bucket != current:
                    yield from one_bucket(current, held)
                    held = []
                current = bucket
                held.append(batch.slice(lo, hi - lo))
        if held:
            yield from one_bucket(current, held)

    return run


__all__ = ["cached_tokens_fn", "bucket_rows", "TOKEN_COLUMNS"]
