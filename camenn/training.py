"""The CameNN training loop: pinned Delta snapshots in, a model artifact and its metrics out.

    result = train_fn(spec)        # spec: a plain dict (picklable), see pipeline.train.make_spec

``train_fn`` is what ``pyspark.ml.torch.distributor.TorchDistributor`` runs in every process
(DDP: gloo on CPU, nccl on GPU); with one process the Spark driver calls it directly. It never
imports pyspark. Each process

1. reads the item feature cache (``item_features``) and the items' category and price at the
   table versions pinned in the spec, through delta-rs, into an :class:`~camenn.inputs.ItemStore`;
2. reads ITS shard of the ``training_examples`` snapshot (rows whose ``bucket`` % world_size
   == rank) and turns it into index tensors (target item, behaviour items, user features);
3. trains with Adam; every step mixes a full batch (user + behaviour + target, CVR labels) with
   an item-only batch of random training items turned into ITA/TIA examples by
   :func:`camenn.losses.make_alignment_examples`;
4. early-stops on the validation split's loss (patience), restores the best weights and
   measures the held-out metrics: CVR AUC on the test split, ITA/TIA accuracy on held-out items;
5. on rank 0 alone, writes the artifact with :func:`camenn.checkpoint.save_artifact`.

Items are split for the alignment tasks by a stable hash of item_id (:func:`item_split`), so
held-out items are never seen in an alignment batch; CVR examples are split by the Spark side
(``training_examples.split``).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn

from camenn.inputs import ITEM_FEATURES, FeatureVocab, ItemStore, full_batch, item_only_batch
from camenn.losses import derangement, make_alignment_examples, multitask_loss
from camenn.model import NON_TASK_OUTPUTS, TASKS, CameNN, CameNNBatch, ItemTokens, frame_config
from camenn.predictor import AUTOCAST_DTYPES

SPLITS = ("train", "valid", "test")
N_BUCKETS = 1024  # training_examples.bucket is in [0, N_BUCKETS)
# A frame fixes some settings: the BST-like single-task model has one expert and the CVR task only.
FRAME_FIXED = {"single_task": ("tasks", "n_experts")}
EXAMPLE_COLUMNS = ["item_id", "behaviour", "age_band", "household", "zone", "label", "split", "bucket"]


# -----------------------------------------------------------------------------
# splits and shards


def stable_unit(key: str, salt: int | str = 0) -> float:
    """A uniform number in [0, 1) from a string, the same in every process and on every machine."""
    digest = hashlib.blake2b(f"{salt}\0{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def item_split(item_id: str, test_fraction: float, valid_fraction: float, salt: int = 0) -> str:
    """Which alignment split an item belongs to: "test" (held out), "valid" (early stopping) or "train"."""
    u = stable_unit(item_id, f"items/{salt}")
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


def rank_buckets(rank: int, world_size: int) -> list[int]:
    """The training_examples buckets a rank reads: bucket % world_size == rank."""
    return [b for b in range(N_BUCKETS) if b % world_size == rank]


# -----------------------------------------------------------------------------
# reading pinned Delta snapshots (delta-rs -> pyarrow -> torch)


def _delta_table(path: str, version: int | None):
    from deltalake import DeltaTable

    return DeltaTable(path, version=version)


def _latest_per_item(pdf):
    if "updated_at" in pdf.columns:
        pdf = pdf.sort_values(["item_id", "updated_at"], na_position="first", kind="stable")
    return pdf.drop_duplicates("item_id", keep="last")


def load_item_store(features_path: str, features_version: int | None, items_path: str, items_version: int | None,
                    fingerprint: str, vocab: FeatureVocab, n_patches: int, chunk: int = 2048) -> ItemStore:
    """The item store of every cached item under ``fingerprint`` that ``items`` still holds.

    Blobs are unpacked a chunk at a time straight into float16, so the peak memory is about
    the store itself (fp16) plus one chunk in float32.
    """
    import pyarrow.compute as pc

    feats = _delta_table(features_path, features_version).to_pyarrow_table(
        columns=["item_id", "encoder_fingerprint", "text_emb", "n_text_tokens", "image_emb"])
    feats = feats.filter(pc.equal(feats["encoder_fingerprint"], fingerprint))
    items = _delta_table(items_path, items_version).to_pyarrow_table(
        columns=["item_id", "category", "price", "updated_at"]).to_pandas()
    items = _latest_per_item(items).set_index("item_id")
    ids = feats["item_id"].to_pylist()
    keep = np.array([i in items.index for i in ids], dtype=bool)
    feats = feats.filter(keep)
    order = np.argsort(np.asarray(feats["item_id"].to_pylist(), dtype=object), kind="stable")
    feats = feats.take(order)
    ids = feats["item_id"].to_pylist()
    n = len(ids)
    if n == 0:
        raise ValueError(f"no cached item features under fingerprint {fingerprint[:12]} at {features_path} "
                         f"(version {features_version}) match the items table")

    n_tok = np.asarray(feats["n_text_tokens"].to_numpy(zero_copy_only=False), dtype=np.int64)
    first_text, first_image = feats["text_emb"][0].as_py(), feats["image_emb"][0].as_py()
    text_dim = len(first_text) // (2 * int(n_tok[0]))
    image_dim = len(first_image) // (2 * n_patches)
    longest = int(n_tok.max())
    text = torch.zeros(n, longest, text_dim, dtype=torch.float16)      # (N, L, Dt)
    mask = torch.zeros(n, longest, dtype=torch.bool)                   # (N, L)
    image = torch.zeros(n, n_patches, image_dim, dtype=torch.float16)  # (N, P, Di)
    f16 = np.dtype("<f2")
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        t_blobs = feats["text_emb"].slice(start, stop - start).to_pylist()
        i_blobs = feats["image_emb"].slice(start, stop - start).to_pylist()
        for j, (tb, ib) in enumerate(zip(t_blobs, i_blobs)):
            k, row = int(n_tok[start + j]), start + j
            text[row, :k] = torch.from_numpy(np.frombuffer(tb, dtype=f16).reshape(k, text_dim).copy())
            mask[row, :k] = True
            image[row] = torch.from_numpy(np.frombuffer(ib, dtype=f16).reshape(n_patches, image_dim).copy())
    meta = items.loc[ids]
    item_feats = vocab.item_feats(list(meta["category"]), [None if p != p else p for p in meta["price"]])
    return ItemStore(ids, text, mask, image, torch.as_tensor(item_feats))


@dataclass
class Examples:
    """CVR examples of one split as index tensors into an ItemStore."""

    target: torch.Tensor      # (n,) long
    behaviour: torch.Tensor   # (n, N) long, -1 = empty slot (slots filled from 0)
    user_feats: torch.Tensor  # (n, Fu) long
    label: torch.Tensor       # (n,) float

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def select(self, idx: torch.Tensor) -> "Examples":
        return Examples(self.target[idx], self.behaviour[idx], self.user_feats[idx], self.label[idx])


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
    user = vocab.user_feats({f: table[f].to_pylist() for f in ("age_band", "household", "zone")})
    label = np.asarray(table["label"].to_numpy(zero_copy_only=False), dtype=np.float32)
    split = np.asarray(table["split"].to_pylist(), dtype=object)
    known = target.numpy() >= 0
    out = {}
    for name in SPLITS:
        rows = np.nonzero((split == name) & known)[0]
        out[name] = Examples(target[rows], torch.from_numpy(behaviour[rows]), torch.from_numpy(user[rows]),
                             torch.from_numpy(label[rows]))
    return out, int((~known).sum())


def load_examples(path: str, version: int | None, rank: int, world_size: int, store: ItemStore,
                  vocab: FeatureVocab, max_behaviour: int) -> tuple[dict[str, Examples], int]:
    """This rank's shard of the pinned training_examples snapshot."""
    filters = None if world_size == 1 else [("bucket", "in", rank_buckets(rank, world_size))]
    table = _delta_table(path, version).to_pyarrow_table(columns=EXAMPLE_COLUMNS, filters=filters)
    if world_size > 1:  # delta-rs prunes files by statistics; the row filter is exact here
        import pyarrow.compute as pc

        table = table.filter(pc.equal(pc.modulo(table["bucket"], world_size), rank))
    # a deterministic row order whatever the file layout
    table = table.take(np.argsort(np.asarray(table["bucket"].to_numpy(zero_copy_only=False)), kind="stable")) \
        if table.num_rows else table
    return examples_from_arrow(table, store, vocab, max_behaviour)


# -----------------------------------------------------------------------------
# batches


def trim_items(items: ItemTokens) -> ItemTokens:
    """Cut the text axis to the longest real text in the batch (the store pads to its longest item)."""
    if items.text_mask.numel() == 0:
        return items
    real = items.text_mask.reshape(-1, items.text_mask.shape[-1]).any(0)  # (L,)
    length = int(real.nonzero().max()) + 1 if bool(real.any()) else 1
    if length == items.text.shape[-2]:
        return items
    return ItemTokens(items.text[..., :length, :], items.text_mask[..., :length], items.image, items.feats)


def cvr_batch(store: ItemStore, ex: Examples) -> CameNNBatch:
    """A full batch; behaviour slots are cut to the longest sequence in the batch (the model is padding-invariant)."""
    slots = int((ex.behaviour >= 0).sum(1).max()) if len(ex) else 0
    batch = full_batch(store, ex.target, ex.behaviour[:, :slots], ex.user_feats)
    # trim the text of target and behaviour items to a common length
    L = max(_real_length(batch.target.text_mask), _real_length(batch.behaviour.text_mask) if slots else 1)
    batch.target = _cut(batch.target, L)
    batch.behaviour = _cut(batch.behaviour, L)
    return batch


def _real_length(mask: torch.Tensor) -> int:
    real = mask.reshape(-1, mask.shape[-1]).any(0)
    return int(real.nonzero().max()) + 1 if bool(real.any()) else 1


def _cut(items: ItemTokens, length: int) -> ItemTokens:
    return ItemTokens(items.text[..., :length, :], items.text_mask[..., :length], items.image, items.feats)


def alignment_batch(store: ItemStore, idx: torch.Tensor, generator: torch.Generator,
                    attribute_side: bool) -> tuple[CameNNBatch, dict, dict]:
    examples, labels, mask = make_alignment_examples(store.gather(idx), generator, attribute_side=attribute_side)
    return CameNNBatch(target=trim_items(examples)), labels, mask


def cvr_tasks(model: CameNN) -> tuple[str, ...]:
    """The tasks a full (user + behaviour + target) batch trains: CVR, where the model has it."""
    return tuple(t for t in ("cvr",) if t in model.cfg.tasks) or model.cfg.tasks


def alignment_tasks(model: CameNN) -> tuple[str, ...]:
    return tuple(t for t in ("ita", "tia") if t in model.cfg.tasks)


class _MixedStep(nn.Module):
    """Both forward passes of a step in one module call, so DDP sees one forward per backward.

    Each pass computes only the towers its batch has labels for; together they use every parameter.
    """

    def __init__(self, model: CameNN):
        super().__init__()
        self.model = model

    def forward(self, full: CameNNBatch, align: CameNNBatch | None):
        return (self.model(full, cvr_tasks(self.model)),
                self.model(align, alignment_tasks(self.model)) if align is not None else None)


# -----------------------------------------------------------------------------
# metrics


def roc_auc(labels, scores) -> float:
    """ROC AUC (sklearn), NaN where only one class is present."""
    from sklearn.metrics import roc_auc_score

    labels, scores = np.asarray(labels), np.asarray(scores)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


@torch.no_grad()
def predict_cvr(model: CameNN, store: ItemStore, ex: Examples, batch_size: int, device) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(ex), batch_size):
        part = ex.select(torch.arange(s, min(len(ex), s + batch_size)))
        out.append(model.predict(cvr_batch(store, part).to(device), "cvr")["cvr"].float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


@torch.no_grad()
def predict_items(model: CameNN, store: ItemStore, idx: torch.Tensor, batch_size: int, device,
                  swap: str | None = None, donor: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Item-only probabilities per task for items ``idx``; ``swap`` = "text"/"image" takes that side from ``donor``."""
    model.eval()
    tasks = alignment_tasks(model)
    if not tasks:
        raise ValueError(f"model has no alignment task (tasks={list(model.cfg.tasks)})")
    out: dict[str, list] = {t: [] for t in tasks}
    for s in range(0, len(idx), batch_size):
        rows = idx[s:s + batch_size]
        items = store.gather(rows)
        if swap is not None:
            other = store.gather(donor[s:s + batch_size])
            if swap == "text":
                items = ItemTokens(other.text, other.text_mask, items.image, items.feats)
            else:
                items = ItemTokens(items.text, items.text_mask, other.image, items.feats)
        probs = model.predict(CameNNBatch(target=trim_items(items)).to(device), tasks)
        for t in out:
            out[t].append(probs[t].float().cpu())
    return {t: (torch.cat(v).numpy() if v else np.zeros(0, dtype=np.float32)) for t, v in out.items()}


def alignment_metrics(model: CameNN, store: ItemStore, idx: torch.Tensor, batch_size: int, device,
                      seed: int = 0) -> dict[str, float]:
    """ITA / TIA on items ``idx``: each item as it is (positive) and once with another held-out
    item's text (ITA negative) or image (TIA negative); accuracy at 0.5 and AUC."""
    tasks = [t for t in ("ita", "tia") if t in model.cfg.tasks]
    if not tasks or len(idx) < 2:
        return {}
    g = torch.Generator().manual_seed(seed)
    donor = idx[derangement(len(idx), g)]
    pos = predict_items(model, store, idx, batch_size, device)
    out = {}
    for task, side in (("ita", "text"), ("tia", "image")):
        if task not in tasks:
            continue
        neg = predict_items(model, store, idx, batch_size, device, swap=side, donor=donor)[task]
        p = np.concatenate([pos[task], neg])
        y = np.concatenate([np.ones(len(idx)), np.zeros(len(idx))])
        out[f"{task}_acc"] = float(((p >= 0.5) == (y == 1)).mean())
        out[f"{task}_auc"] = roc_auc(y, p)
    out["n_items"] = int(len(idx))
    return out


# -----------------------------------------------------------------------------
# the spec and the model


def model_config_from_spec(spec: dict, vocab: FeatureVocab, text_dim: int, image_dim: int):
    settings = dict(spec["model"])
    frame = settings.pop("frame")
    for key in FRAME_FIXED.get(frame, ()):
        settings.pop(key, None)
    if "tasks" in settings:
        settings["tasks"] = tuple(settings["tasks"])
    return frame_config(frame, **settings, text_dim=text_dim, image_dim=image_dim,
                        n_patches=int(spec["n_patches"]), max_text_tokens=int(spec["max_text_tokens"]),
                        item_feature_sizes=vocab.item_feature_sizes, user_feature_sizes=vocab.user_feature_sizes)


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def on(self) -> bool:
        return self.world_size > 1


def _dist_from_env() -> _Dist:
    return _Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def _all_reduce(values: list[float], op: str = "sum", dist_info: _Dist | None = None) -> list[float]:
    if dist_info is None or not dist_info.on:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return t.cpu().tolist()


def _gather(obj, dist_info: _Dist):
    if not dist_info.on:
        return [obj]
    import torch.distributed as dist

    out = [None] * dist_info.world_size
    dist.all_gather_object(out, obj)
    return out


def git_commit(root: str | None = None) -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or os.path.dirname(__file__),
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _json_safe(obj):
    """NaN / inf -> None and numpy scalars -> Python, so config.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# -----------------------------------------------------------------------------
# optimisation


def training_autocast_dtype(device: torch.device, setting: str) -> torch.dtype | None:
    """The mixed-precision dtype of a training run: ``setting`` on CUDA, none on CPU.

    On CPU the demo model trains faster in fp32: a bf16 step of the demo size took 1.3x as long
    as an fp32 one on an AVX512-BF16 EPYC (casts cost more than the small matmuls gain).
    """
    if setting not in (*AUTOCAST_DTYPES, "none"):
        raise ValueError(f"training autocast must be one of {[*AUTOCAST_DTYPES, 'none']}, got {setting!r}")
    return AUTOCAST_DTYPES.get(setting) if device.type == "cuda" else None


def lr_schedule(opt: torch.optim.Optimizer, kind: str, warmup_steps: int, total_steps: int,
                min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate factor: linear warm-up, then constant or a cosine down to ``min_lr_ratio``."""
    if kind not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {kind!r}")
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_step(step_module: nn.Module, opt: torch.optim.Optimizer, full: CameNNBatch, cvr_labels: torch.Tensor,
               align: CameNNBatch | None, align_labels: dict | None, align_mask: dict | None,
               weights: dict[str, float], amp_dtype: torch.dtype | None = None,
               scaler: "torch.amp.GradScaler | None" = None) -> tuple[torch.Tensor, dict]:
    """One optimiser step on a full batch plus its item-only alignment batch; returns (loss, per-task losses).

    The forward pass runs under autocast when ``amp_dtype`` is set (CUDA in training; the test
    runs it on CPU); the loss is computed in fp32 (multitask_loss upcasts the logits). With noisy
    top-k gates the loss also holds ``gate_balance_weight`` x the gates' load-balancing loss of
    both passes, and the per-task losses a "gate_aux" entry (that unweighted sum).
    """
    device = full.target.text.device
    cfg = getattr(step_module, "module", step_module).model.cfg  # a _MixedStep, or DDP around one
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out_full, out_align = step_module(full, align)
    loss, per = multitask_loss({k: v for k, v in out_full.items() if k not in NON_TASK_OUTPUTS},
                               {"cvr": cvr_labels.to(device)}, {}, weights)
    gate_aux = out_full["gate_aux_loss"]
    if out_align is not None:
        loss_a, per_a = multitask_loss({k: v for k, v in out_align.items() if k not in NON_TASK_OUTPUTS},
                                       {k: v.to(device) for k, v in align_labels.items()},
                                       {k: v.to(device) for k, v in align_mask.items()}, weights)
        loss = loss + loss_a
        per = {**per, **{k: per_a[k] for k in ("ita", "tia") if k in per_a}}
        gate_aux = gate_aux + out_align["gate_aux_loss"]
    if cfg.sparse_gating:  # dense gating has no such loss: its loss stays bit-for-bit what it was
        loss = loss + cfg.gate_balance_weight * gate_aux
        per["gate_aux"] = gate_aux.detach()
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    return loss.detach(), per


# -----------------------------------------------------------------------------
# the loop


class _LineStream:
    """A file for tqdm that ends every redraw with a newline.

    TorchDistributor relays its workers' output line by line, so a bar redrawn with carriage
    returns would only show when its epoch ends; as lines, the job's log shows it as it goes.
    """

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip("\n")
        if text.strip():
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


@dataclass
class TrainState:
    best_loss: float = math.inf
    best_epoch: int = -1
    best_state: dict | None = None
    bad_epochs: int = 0
    history: list = field(default_factory=list)


def _loss_weights(spec: dict) -> dict[str, float]:
    return {k: float(v) for k, v in spec["training"].get("task_weights", {}).items()}


@torch.no_grad()
def validation_loss(model: CameNN, store: ItemStore, ex: Examples, align_idx: torch.Tensor, spec: dict,
                    device, dist_info: _Dist) -> dict[str, float]:
    """Task-weighted mean BCE on the validation split, reduced over all ranks."""
    model.eval()
    weights = _loss_weights(spec)
    bs = int(spec["training"]["batch_size"])
    tasks = model.cfg.tasks
    sums = {t: 0.0 for t in TASKS}
    counts = {t: 0.0 for t in TASKS}
    cvr_probs: list[np.ndarray] = []
    if "cvr" in tasks:
        for s in range(0, len(ex), bs):
            part = ex.select(torch.arange(s, min(len(ex), s + bs)))
            out = model(cvr_batch(store, part).to(device), "cvr")
            _, per = multitask_loss({"cvr": out["cvr"]}, {"cvr": part.label.to(device)}, {})
            sums["cvr"] += float(per["cvr"]) * len(part)
            counts["cvr"] += len(part)
            cvr_probs.append(torch.sigmoid(out["cvr"]).cpu().numpy())
    align_tasks = [t for t in ("ita", "tia") if t in tasks]
    if align_tasks and len(align_idx) >= 2:
        g = torch.Generator().manual_seed(12345)
        abs_ = max(2, int(spec["training"]["alignment_batch_size"]))
        for s in range(0, len(align_idx), abs_):
            rows = align_idx[s:s + abs_]
            if len(rows) < 2:
                continue
            batch, labels, mask = alignment_batch(store, rows, g, bool(spec["training"]["attribute_side"]))
            out = model(batch.to(device), tuple(align_tasks))
            for t in align_tasks:
                _, per = multitask_loss({t: out[t]}, {t: labels[t].to(device)}, {t: mask[t].to(device)})
                n = float(mask[t].sum())
                sums[t] += float(per[t]) * n
                counts[t] += n
    flat = _all_reduce([sums[t] for t in TASKS] + [counts[t] for t in TASKS], "sum", dist_info)
    k = len(TASKS)
    per_task = {t: flat[i] / flat[k + i] for i, t in enumerate(TASKS) if flat[k + i] > 0}
    total = sum(weights.get(t, 1.0) * v for t, v in per_task.items())
    result = {"loss": total, **{f"loss_{t}": v for t, v in per_task.items()}}
    if "cvr" in tasks:
        # the AUC is what the CVR target is stated in; the loss alone hides whether ranking still improves
        probs = np.concatenate(cvr_probs) if cvr_probs else np.zeros(0, dtype=np.float32)
        parts = _gather((probs.tolist(), ex.label.numpy().tolist()), dist_info)
        result["cvr_auc"] = roc_auc(np.concatenate([np.asarray(b) for _, b in parts]),
                                    np.concatenate([np.asarray(a) for a, _ in parts]))
    return result


def train_fn(spec: dict) -> dict:
    """Train one model from a spec (see pipeline.train.make_spec); rank 0 returns the result and writes the artifact."""
    t_start = time.perf_counter()
    dist_info = _dist_from_env()
    tcfg = spec["training"]
    use_gpu = bool(tcfg.get("use_gpu")) and torch.cuda.is_available()
    if dist_info.on:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_gpu else "gloo")
    device = torch.device(f"cuda:{dist_info.local_rank}" if use_gpu else "cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    threads = tcfg.get("num_threads") or max(1, (os.cpu_count() or 1) // dist_info.world_size)
    torch.set_num_threads(int(threads))
    seed = int(spec["seed"])
    is_main = dist_info.rank == 0
    log = (lambda msg: print(f"[train] {msg}", file=sys.stderr, flush=True)) if is_main else (lambda msg: None)

    try:
        # ---- data -------------------------------------------------------------------------
        t0 = time.perf_counter()
        vocab = FeatureVocab.from_dict(spec["vocab"])
        v = spec["table_versions"]
        store = load_item_store(spec["paths"]["item_features"], v.get("item_features"), spec["paths"]["items"],
                                v.get("items"), spec["encoder_fingerprint"], vocab, int(spec["n_patches"]))
        max_beh = int(spec["model"]["max_behaviour"])
        splits, dropped = load_examples(spec["paths"]["training_examples"], v.get("training_examples"),
                                        dist_info.rank, dist_info.world_size, store, vocab, max_beh)
        sp = spec["split"]
        item_part = np.asarray([item_split(i, sp["test_fraction"], sp["valid_fraction"], sp["seed"])
                                for i in store.item_ids], dtype=object)
        align_idx = {name: torch.from_numpy(np.nonzero(item_part == name)[0]) for name in SPLITS}
        load_s = time.perf_counter() - t0
        log(f"loaded {len(store)} items, examples (rank 0) " +
            ", ".join(f"{k}={len(e)}" for k, e in splits.items()) + f" in {load_s:.1f}s")

        # ---- model ------------------------------------------------------------------------
        text_dim, image_dim = store.text.shape[-1], store.image.shape[-1]
        torch.manual_seed(seed)
        cfg = model_config_from_spec(spec, vocab, text_dim, image_dim)
        model = CameNN(cfg).to(device)
        align_on = any(t in cfg.tasks for t in ("ita", "tia")) and int(tcfg["alignment_batch_size"]) > 0
        step_module: nn.Module = _MixedStep(model)
        if dist_info.on:
            from torch.nn.parallel import DistributedDataParallel as DDP

            step_module = DDP(step_module, device_ids=[device.index] if use_gpu else None)
        opt = torch.optim.Adam(model.parameters(), lr=float(tcfg["lr"]), betas=tuple(tcfg["betas"]),
                               weight_decay=float(tcfg["weight_decay"]))
        torch.manual_seed(seed * 1000 + dist_info.rank)  # dropout: different per rank, fixed per seed
        amp_dtype = training_autocast_dtype(device, tcfg.get("autocast", "none"))
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
        scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

        ws = dist_info.world_size
        bs = max(1, math.ceil(int(tcfg["batch_size"]) / ws))
        abs_ = max(2, math.ceil(int(tcfg["alignment_batch_size"]) / ws)) if align_on else 0
        train = splits["train"]
        n_steps = int(_all_reduce([math.ceil(len(train) / bs)], "min", dist_info)[0])
        if tcfg.get("steps_per_epoch"):
            n_steps = int(tcfg["steps_per_epoch"])
        if n_steps < 1:
            raise ValueError(f"no training examples on rank {dist_info.rank}")
        if align_on and len(align_idx["train"]) < 2:
            raise ValueError("the alignment tasks need at least 2 training items")
        weights = _loss_weights(spec)
        attribute_side = bool(tcfg["attribute_side"])
        state = TrainState()
        epochs = int(tcfg["epochs"])
        schedule = lr_schedule(opt, tcfg.get("lr_schedule", "constant"), int(tcfg.get("warmup_steps") or 0),
                               epochs * n_steps, float(tcfg.get("min_lr_ratio", 0.0)))
        log(f"model {cfg.bottom_type}/{cfg.expert_type} tasks={list(cfg.tasks)} params={model.num_params():,}; "
            f"{epochs} epochs x {n_steps} steps, batch {bs}+{abs_} item-only per rank, {ws} process(es), {threads} thread(s)")

        from tqdm.auto import tqdm

        t_train = time.perf_counter()
        for epoch in range(epochs):
            model.train()
            g_epoch = torch.Generator().manual_seed(seed * 7919 + epoch * 104729 + dist_info.rank)
            # an epoch longer than one pass draws further passes, each reshuffled
            passes = max(1, math.ceil(n_steps * bs / max(1, len(train))))
            order = torch.cat([torch.randperm(len(train), generator=g_epoch) for _ in range(passes)])
            bar = tqdm(range(n_steps), desc=f"epoch {epoch + 1}/{epochs}", disable=not is_main,
                       file=_LineStream(sys.stderr) if dist_info.on else sys.stderr,
                       mininterval=15.0 if dist_info.on else 2.0, leave=True, dynamic_ncols=not dist_info.on)
            running = 0.0
            for step in bar:
                rows = order[step * bs:(step + 1) * bs]
                if len(rows) == 0:  # this rank ran out before the others (uneven shards): wrap around
                    rows = order[:bs]
                ex = train.select(rows)
                full = cvr_batch(store, ex).to(device)
                align = labels = amask = None
                if align_on:
                    pick = align_idx["train"][torch.randperm(len(align_idx["train"]), generator=g_epoch)[:abs_]]
                    align, labels, amask = alignment_batch(store, pick, g_epoch, attribute_side)
                    align = align.to(device)
                loss, per = train_step(step_module, opt, full, ex.label, align, labels, amask, weights,
                                       amp_dtype, scaler)
                schedule.step()
                running += (float(loss.detach()) - running) / (step + 1)
                if is_main and (step % 10 == 0 or step == n_steps - 1):
                    # as lines (under a distributor) a redraw per postfix would be a log line per 10 steps
                    bar.set_postfix(loss=f"{running:.4f}", **{k: f"{float(v):.3f}" for k, v in per.items()},
                                    refresh=not dist_info.on)
            bar.close()
            val = validation_loss(model, store, splits["valid"], align_idx["valid"], spec, device, dist_info)
            record = {"epoch": epoch + 1, "train_loss": running, **{f"valid_{k}": x for k, x in val.items()},
                      "seconds": time.perf_counter() - t_train}
            state.history.append(record)
            improved = val["loss"] < state.best_loss - 1e-4
            if improved:
                state.best_loss, state.best_epoch, state.bad_epochs = val["loss"], epoch + 1, 0
                state.best_state = copy.deepcopy(model.state_dict())
            else:
                state.bad_epochs += 1
            log(f"epoch {epoch + 1}: train loss {running:.4f}, valid loss {val['loss']:.4f}"
                + (f", valid CVR AUC {val['cvr_auc']:.4f}" if "cvr_auc" in val else "")
                + (" (best)" if improved else f" ({state.bad_epochs} without gain)"))
            if state.bad_epochs >= int(tcfg["patience"]):
                log(f"early stop after epoch {epoch + 1}; best epoch {state.best_epoch}")
                break
        train_s = time.perf_counter() - t_train
        if state.best_state is not None:
            model.load_state_dict(state.best_state)

        # ---- held-out metrics -----------------------------------------------------------
        metrics: dict = {}
        test = splits["test"]
        if "cvr" in cfg.tasks:
            p = predict_cvr(model, store, test, max(bs, 256), device)
            parts = _gather((p.tolist(), test.label.numpy().tolist()), dist_info)
            probs = np.concatenate([np.asarray(a, dtype=np.float64) for a, _ in parts])
            ys = np.concatenate([np.asarray(b, dtype=np.float64) for _, b in parts])
            metrics.update(cvr_auc=roc_auc(ys, probs), n_test=int(len(ys)), test_positive_rate=float(ys.mean()) if len(ys) else float("nan"))
        if is_main:
            metrics.update(alignment_metrics(model, store, align_idx["test"], max(bs, 256), device, seed=seed))
        metrics.update(best_epoch=state.best_epoch, epochs_run=len(state.history), best_valid_loss=state.best_loss,
                       train_seconds=train_s, load_seconds=load_s, total_seconds=time.perf_counter() - t_start,
                       steps_per_epoch=n_steps, examples_dropped=dropped, world_size=ws,
                       n_items=len(store), n_train_items=int(len(align_idx["train"])))

        metrics, history = _json_safe(metrics), _json_safe(state.history)
        result = {"metrics": metrics, "history": history, "artifact": None, "model_version": None}
        if is_main and spec.get("artifact_dir"):
            from camenn.checkpoint import load_artifact, save_artifact

            metadata = dict(spec.get("metadata", {}))
            metadata.update({
                "featurizer": spec["featurizer"], "encoder_fingerprint": spec["encoder_fingerprint"],
                "vocab": vocab.to_dict(), "max_behaviour": max_beh, "table_versions": dict(v),
                "metrics": metrics, "history": history, "git_commit": spec.get("git_commit"),
                "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "config_name": spec.get("config_name"), "seed": seed,
                "item_features": list(ITEM_FEATURES),
            })
            path = save_artifact(spec["artifact_dir"], model.cpu(), metadata, overwrite=True)
            result["artifact"] = str(path)
            result["model_version"] = load_artifact(path).version
        return result
    finally:
        if dist_info.on:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


__all__ = ["train_fn", "item_split", "stable_unit", "rank_buckets", "load_item_store", "load_examples",
           "examples_from_arrow", "Examples", "cvr_batch", "alignment_batch", "trim_items", "roc_auc",
           "predict_cvr", "predict_items", "alignment_metrics", "model_config_from_spec", "git_commit",
           "lr_schedule", "train_step", "training_autocast_dtype"]
