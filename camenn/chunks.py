"""Training data in chunks: a process holds one chunk's examples and items, whatever the catalogue.

    chunk = load_chunk(spec, c, vocab)           # Chunk: ItemStore + Examples per split + home items
    for chunk, rows in batch_stream(spec, my_chunks, ...):   # endless stream of (chunk, example rows)

``pipeline.training_data`` writes, next to the pinned ``training_examples`` snapshot, the table
``training_items``: per chunk c (the examples with ``bucket % n_chunks == c``) the features of
just the items those examples reference (targets and behaviour), plus every valid item once in
its home chunk for the alignment tasks. Rank r of w reads the chunks with ``c % w == r``, one
at a time, through delta-rs (the chunk is a partition column, so a read opens only its files).

Memory per process is one chunk: its examples (ids and small ints) and its ItemStore (fp16
encoder outputs of at most ``examples_per_chunk`` x (1 + max_behaviour) referenced items plus
its home items, and with ``scoring.test_time_views`` K the K views of its held-out home items,
with ``training.view_share`` of its training home items too: ``ItemViews``), not the catalogue
and not every example. docs/training.md has the bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from camenn.featurizer import BLOB_FP16, unpack_item_features
from camenn.inputs import FeatureVocab, ItemStore

SPLITS = ("train", "valid", "test")
N_BUCKETS = 1024  # training_examples.bucket is in [0, N_BUCKETS)
EXAMPLE_COLUMNS = ["example_id", "item_id", "behaviour", "label", "split", "bucket"]   # + the vocabulary's profile fields
ITEM_COLUMNS = ["item_id", "home", "category", "price", "text_emb", "n_text_tokens", "image_emb"]
VIEW_COLUMN = "view_image_emb"   # training_items: the test-time views of held-out home items, null elsewhere


@dataclass
class Examples:
    """CVR examples of one split as index tensors into an ItemStore."""

    target: torch.Tensor      # (n,) long
    behaviour: torch.Tensor   # (n, N) long, -1 = empty slot (slots filled from 0)
    user_feats: torch.Tensor  # (n, Fu) long
    label: torch.Tensor       # (n,) float

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def select(self, idx: torch.Tensor) -> Examples:
        return Examples(self.target[idx], self.behaviour[idx], self.user_feats[idx], self.label[idx])


@dataclass
class Chunk:
    index: int
    store: ItemStore
    splits: dict[str, Examples]
    home: dict[str, torch.Tensor]     # split -> store rows of this chunk's home items in that alignment split
    dropped: int                      # examples whose target is not in the store (0 unless the table is damaged)
    views: ItemViews | None = None    # the test-time views of some home items (spec["calibration_views"])


@dataclass
class ItemViews:
    """The test-time views of some of a chunk's home items. The held-out ones carry them so that
    the calibration quantiles are taken over what the night scores a listing over: its photo and
    these views (mean logit); with ``training.view_share`` the training ones too, to train on.

    Which rows carry views is training_data.home_views's choice, so a store row maps to a slot
    here or to -1.
    """

    slot: torch.Tensor    # (N,) long: store row -> row of ``image``, -1 = no views
    image: torch.Tensor   # (n, K, P, Di) fp16

    @property
    def n_views(self) -> int:
        return int(self.image.shape[1])

    def has(self, rows: torch.Tensor) -> torch.Tensor:
        return self.slot[rows] >= 0                                            # (b,) bool

    def gather(self, rows: torch.Tensor, view: int) -> torch.Tensor:
        """View ``view`` of each row's photo in place of the photo: rows must have views."""
        slots = self.slot[rows]                                                # (b,)
        if bool((slots < 0).any()):
            raise ValueError(f"{int((slots < 0).sum())} of the rows have no test-time views")
        return self.image[slots, view].float()                                 # (b, P, Di)


def views_from_arrow(table, store: ItemStore, n_views: int, n_patches: int) -> ItemViews | None:
    """ItemViews from the training_items rows whose ``view_image_emb`` holds ``n_views`` views; None if none does.

    A blob is K x P x Di fp16 values, view after view (the layout of featurizer.pack_views); a row with fewer
    views than asked (a cache row of an older night) has none here and is calibrated on its photo.
    """
    if n_views < 1 or VIEW_COLUMN not in table.column_names:
        return None
    image_dim = store.image.shape[-1]
    size = n_views * n_patches * image_dim * BLOB_FP16.itemsize
    ids, blobs = table["item_id"].to_pylist(), table[VIEW_COLUMN].to_pylist()
    kept = [(i, b) for i, b in zip(ids, blobs) if b is not None and len(b) >= size]
    if not kept:
        return None
    slot = torch.full((len(store),), -1, dtype=torch.long)                     # (N,)
    slot[store.lookup([i for i, _ in kept])] = torch.arange(len(kept))
    image = torch.stack([torch.from_numpy(np.frombuffer(b, dtype=BLOB_FP16, count=size // BLOB_FP16.itemsize).copy())
                         for _, b in kept]).view(len(kept), n_views, n_patches, image_dim)   # (n, K, P, Di) fp16
    return ItemViews(slot, image)


def chunk_buckets(chunk: int, n_chunks: int) -> list[int]:
    """The training_examples buckets of a chunk: bucket % n_chunks == chunk."""
    return [b for b in range(N_BUCKETS) if b % n_chunks == chunk]


def rank_chunks(rank: int, world_size: int, n_chunks: int) -> list[int]:
    """The chunks a training process reads: chunk % world_size == rank (n_chunks is a multiple of world_size)."""
    return [c for c in range(n_chunks) if c % world_size == rank]


def delta_table(path: str, version: int | None):
    """The delta-rs snapshot of the table at ``path``; Hadoop's s3a:// and s3n:// are delta-rs's s3://."""
    from deltalake import DeltaTable

    if path.startswith(("s3a://", "s3n://")):
        path = "s3://" + path.split("://", 1)[1]
    return DeltaTable(path, version=version)


def store_from_arrow(table, vocab: FeatureVocab, n_patches: int, rows_at_once: int = 2048) -> ItemStore:
    """An ItemStore from item rows (item_id, category, price, text_emb, n_text_tokens, image_emb), ordered by item_id.

    Blobs are unpacked by the one blob codec ``rows_at_once`` rows at a time and stored in
    float16, so the peak is about the store itself plus one slice in float32.
    """
    import pyarrow.compute as pc

    n = table.num_rows
    if n == 0:
        raise ValueError("no item features in this chunk")
    table = table.take(pc.sort_indices(table, sort_keys=[("item_id", "ascending")]))
    n_tok = np.asarray(table["n_text_tokens"].to_numpy(zero_copy_only=False), dtype=np.int64)
    first_text, first_image = table["text_emb"][0].as_py(), table["image_emb"][0].as_py()
    text_dim = len(first_text) // (2 * int(n_tok[0]))
    image_dim = len(first_image) // (2 * n_patches)
    longest = int(n_tok.max())
    text = torch.zeros(n, longest, text_dim, dtype=torch.float16)      # (n, L, Dt)
    mask = torch.zeros(n, longest, dtype=torch.bool)                   # (n, L)
    image = torch.zeros(n, n_patches, image_dim, dtype=torch.float16)  # (n, P, Di)
    for start in range(0, n, rows_at_once):
        stop = min(n, start + rows_at_once)
        t, m, im = unpack_item_features(table["text_emb"].slice(start, stop - start).to_pylist(), n_tok[start:stop],
                                        table["image_emb"].slice(start, stop - start).to_pylist(),
                                        text_dim, image_dim, n_patches)   # (b, Lb, Dt), (b, Lb), (b, P, Di) fp32
        text[start:stop, :t.shape[1]] = t.half()
        mask[start:stop, :m.shape[1]] = m
        image[start:stop] = im.half()
    prices = [None if p is None or p != p else p for p in table["price"].to_pylist()]
    feats = vocab.item_feats(table["category"].to_pylist(), prices)
    return ItemStore(table["item_id"].to_pylist(), text, mask, image, torch.as_tensor(feats))


def examples_from_arrow(table, store: ItemStore, vocab: FeatureVocab, max_behaviour: int) -> tuple[dict[str, Examples], int]:
    """training_examples rows (a pyarrow Table) -> Examples per split; also the rows dropped (unknown target)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    target = store.lookup(table["item_id"].to_pylist())                               # (n,)
    beh = table["behaviour"].combine_chunks() if n else pa.array([], pa.list_(pa.string()))
    lengths = np.asarray(pc.fill_null(pc.list_value_length(beh), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    flat = store.lookup(pc.list_flatten(beh).to_pylist()).numpy()                     # (sum lengths,)
    behaviour = np.full((n, max_behaviour), -1, dtype=np.int64)                       # (n, N)
    if max_behaviour and n:
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        # the sequence is oldest first; keep its last max_behaviour entries
        take = np.minimum(lengths, max_behaviour)
        for row in np.nonzero(take)[0]:
            s, k = starts[row] + lengths[row] - take[row], take[row]
            seq = flat[s:s + k]
            seq = seq[seq >= 0]                                                        # unknown items drop out
            behaviour[row, :len(seq)] = seq
    user = vocab.user_feats({f: table[f].to_pylist() for f in vocab.profile_fields})
    label = np.asarray(table["label"].to_numpy(zero_copy_only=False), dtype=np.float32)
    split = np.asarray(table["split"].to_pylist(), dtype=object)
    known = target.numpy() >= 0
    out = {}
    for name in SPLITS:
        rows = np.nonzero((split == name) & known)[0]
        out[name] = Examples(target[rows], torch.from_numpy(behaviour[rows]), torch.from_numpy(user[rows]),
                             torch.from_numpy(label[rows]))
    return out, int((~known).sum())


def read_chunk_examples(spec: dict, chunk: int, profile_fields: Sequence[str] = ()):
    """The pinned training_examples rows of one chunk (EXAMPLE_COLUMNS + ``profile_fields``), in a fixed
    order (by example_id) whatever the file layout."""
    import pyarrow.compute as pc

    n_chunks = int(spec["n_chunks"])
    buckets = chunk_buckets(chunk, n_chunks)
    filters = None if n_chunks == 1 else [("bucket", "in", buckets)]
    table = delta_table(spec["paths"]["training_examples"], spec["table_versions"].get("training_examples")) \
        .to_pyarrow_table(columns=[*EXAMPLE_COLUMNS, *profile_fields], filters=filters)
    if n_chunks > 1:  # delta-rs prunes files by statistics; the row filter is exact here
        table = table.filter(pc.equal(pc.modulo(table["bucket"], n_chunks), chunk))
    return table.take(pc.sort_indices(table, sort_keys=[("example_id", "ascending")])) if table.num_rows else table


def load_chunk(spec: dict, chunk: int, vocab: FeatureVocab, item_split_of) -> Chunk:
    """One chunk: its item store (training_items partition), its examples, its home items per alignment split.

    ``item_split_of(item_id) -> "train" | "valid" | "test"`` splits items for the alignment tasks.
    """
    n_views = int(spec.get("calibration_views") or 0)
    items = delta_table(spec["paths"]["training_items"], spec["table_versions"].get("training_items")) \
        .to_pyarrow_table(columns=ITEM_COLUMNS + ([VIEW_COLUMN] if n_views else []), filters=[("chunk", "=", chunk)])
    store = store_from_arrow(items, vocab, int(spec["n_patches"]))
    splits, dropped = examples_from_arrow(read_chunk_examples(spec, chunk, vocab.profile_fields), store, vocab,
                                          int(spec["model"]["max_behaviour"]))
    home_ids = set(items.filter(items["home"])["item_id"].to_pylist())
    part = np.asarray([item_split_of(i) if i in home_ids else "" for i in store.item_ids], dtype=object)
    home = {name: torch.from_numpy(np.nonzero(part == name)[0]) for name in SPLITS}
    return Chunk(chunk, store, splits, home, dropped, views_from_arrow(items, store, n_views, int(spec["n_patches"])))


class ChunkCache:
    """The chunk a process holds: ``get(c)`` loads chunk c unless it is the one held (the held one is dropped first).

    The training stream keeps a reference to its current chunk, so while validation walks the
    other chunks a process holds at most two.
    """

    def __init__(self, loader):
        self.loader = loader
        self.held: Chunk | None = None
        self.loads = 0

    def get(self, chunk: int) -> Chunk:
        if self.held is None or self.held.index != chunk:
            self.held = None  # release before loading, so two chunks never sit side by side here
            self.held = self.loader(chunk)
            self.loads += 1
        return self.held


def batch_stream(cache: ChunkCache, chunks: list[int], batch_size: int, generator: torch.Generator):
    """Endless (chunk, example rows) of training batches: a pass over each chunk in turn, chunks reshuffled every round."""
    while True:
        order = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
        yielded = False
        for c in order:
            chunk = cache.get(c)
            n = len(chunk.splits["train"])
            perm = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                yielded = True
                yield chunk, perm[start:start + batch_size]
        if not yielded:
            raise ValueError(f"chunks {chunks} hold no training examples")


def home_stream(cache: ChunkCache, chunks: list[int], batch_size: int, generator: torch.Generator):
    """Endless (chunk, store rows) of alignment-only training: each chunk's own training items, reshuffled.

    The counterpart of :func:`batch_stream` when there are no CVR examples (a catalogue without
    purchases): a step is an item-only batch, and an epoch a pass over the home items.
    """
    while True:
        order = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
        yielded = False
        for c in order:
            chunk = cache.get(c)
            home = chunk.home["train"]
            perm = home[torch.randperm(len(home), generator=generator)]
            for start in range(0, len(perm), batch_size):
                rows = perm[start:start + batch_size]
                if len(rows) >= 2:  # a swap needs another item of the batch
                    yielded = True
                    yield chunk, rows
        if not yielded:
            raise ValueError(f"chunks {chunks} hold fewer than 2 training items each: nothing to align")


__all__ = ["Examples", "Chunk", "ChunkCache", "load_chunk", "store_from_arrow", "examples_from_arrow",
           "read_chunk_examples", "delta_table", "chunk_buckets", "rank_chunks", "batch_stream", "home_stream", "SPLITS", "N_BUCKETS"]
