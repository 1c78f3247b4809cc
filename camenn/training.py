"""The CameNN training loop: pinned Delta snapshots in, a model artifact and its metrics out.

    result = train_fn(spec)        # spec: a plain dict (picklable), see pipeline.train.make_spec

``train_fn`` is what ``pyspark.ml.torch.distributor.TorchDistributor`` runs in every process
(DDP: gloo on CPU, nccl on GPU); with one process the Spark driver calls it directly. It never
imports pyspark. Each process

1. streams ITS chunks of the pinned training snapshot (``camenn.chunks``: chunk c holds the
   examples with ``bucket % n_chunks == c`` and the features of just the items they reference,
   read through delta-rs), one chunk in memory at a time, whatever the catalogue's size;
2. trains with Adam; every step mixes a full batch (user + behaviour + target, CVR labels) of
   the current chunk with an item-only batch of the chunk's own training items turned into
   ITA/TIA examples by :func:`camenn.losses.make_alignment_examples`;
3. early-stops on the validation split's loss (patience), restores the best weights and
   measures the held-out metrics (CVR AUC on the test split, ITA/TIA accuracy and AUC on
   held-out items), each process over its chunks, reducing histograms and counts only;
4. on rank 0 alone, writes the artifact with :func:`camenn.checkpoint.save_artifact`.

Why one module of ~960 lines: the loop, its batches, its metrics and the pieces a training
process runs (distributed setup, schedule, step) are read together when a run misbehaves;
the data it reads lives in ``camenn.chunks`` and the model in ``camenn.model``.

Items are split for the alignment tasks by a stable hash of item_id (:func:`item_split`), so
held-out items are never seen in an alignment batch; CVR examples are split by the Spark side
(``training_examples.split``).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from camenn.chunks import Chunk, ChunkCache, Examples, ItemViews, batch_stream, home_stream, load_chunk, rank_chunks
from camenn.config import CALIBRATION_CENTRE, CALIBRATION_QUANTILES, CALIBRATION_QUARTILE
from camenn.inputs import ITEM_FEATURES, FeatureVocab, ItemStore, full_batch
from camenn.logs import setup_logging
from camenn.losses import derangement, hard_donors, make_alignment_examples, multitask_loss, twin_key
from camenn.metrics import auc_from_counts, roc_auc
from camenn.model import NON_TASK_OUTPUTS, TASKS, CameNN, CameNNBatch, ItemTokens, frame_config
from camenn.predictor import AUTOCAST_DTYPES, mean_logit

_log = logging.getLogger(__name__)

# A frame fixes some settings: the BST-like single-task model has one expert and the CVR task only.
FRAME_FIXED = {"single_task": ("tasks", "n_experts")}


# -----------------------------------------------------------------------------
# splits and shards


def stable_unit(key: str, salt: int | str = 0) -> float:
    """A uniform number in [0, 1) from a string, the same in every process and on every machine."""
    digest = hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def item_split(item_id: str, test_fraction: float, valid_fraction: float, salt: int = 0) -> str:
    """Which alignment split an item belongs to: "test" (held out), "valid" (early stopping) or "train"."""
    u = stable_unit(item_id, f"items/{salt}")
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


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


def alignment_batch(store: ItemStore, idx: torch.Tensor, generator: torch.Generator, attribute_side: bool,
                    hard_share: float = 0.0, hard_kind: str = "category", same_category_swaps: str = "one_side",
                    views: ItemViews | None = None, view_share: float = 0.0) -> tuple[CameNNBatch, dict, dict]:
    items = store.gather(idx)
    if views is not None and view_share > 0:
        items = with_views(items, idx, views, view_share, generator)
    examples, labels, mask = make_alignment_examples(items, generator, attribute_side=attribute_side,
                                                     hard_share=hard_share, hard_kind=hard_kind,
                                                     same_category_swaps=same_category_swaps)
    return CameNNBatch(target=trim_items(examples)), labels, mask


def with_views(items: ItemTokens, rows: torch.Tensor, views: ItemViews, share: float,
               generator: torch.Generator) -> ItemTokens:
    """``items`` (the store rows ``rows``) with the image of about ``share`` of those that carry views
    replaced by one of their views, drawn at random (``training.view_share``).

    Why: the photos a night scores are new ones, framed and lit otherwise than those trained on, and
    a model that has seen only the trained photos' exact features scores them higher than new ones
    (docs/results/grocery-store.md). A view is the photo cropped, mirrored and lit otherwise; it keeps
    the item's text, category and price, so the example's label is the photo's.
    """
    has = views.has(rows)                                                      # (b,) bool
    take = has & (torch.rand(len(rows), generator=generator) < share)          # (b,) bool
    which = torch.randint(views.n_views, (len(rows),), generator=generator)   # (b,)
    if not bool(take.any()):
        return items
    picked = take.nonzero().squeeze(1)                                         # (k,)
    image = items.image.clone()                                                # (b, P, Di)
    image[picked] = views.image[views.slot[rows[picked]], which[picked]].float()   # (k, P, Di)
    return ItemTokens(items.text, items.text_mask, image, items.feats)


def alignment_options(tcfg: dict) -> dict:
    """The training section's alignment-example settings, as alignment_batch's keyword arguments (but ``views``)."""
    return {"attribute_side": bool(tcfg["attribute_side"]), "hard_share": float(tcfg.get("hard_negative_share", 0.0)),
            "hard_kind": str(tcfg.get("hard_negative_kind", "category")),
            "same_category_swaps": str(tcfg.get("same_category_swaps", "one_side")),
            "view_share": float(tcfg.get("view_share") or 0.0)}


def cvr_tasks(model: CameNN) -> tuple[str, ...]:
    """The tasks a full (user + behaviour + target) batch trains: CVR, where the model has it."""
    return tuple(t for t in ("cvr",) if t in model.cfg.tasks) or model.cfg.tasks


def alignment_tasks(model: CameNN) -> tuple[str, ...]:
    return tuple(t for t in ("ita", "tia") if t in model.cfg.tasks)


class _MixedStep(nn.Module):
    """Both forward passes of a step in one module call, so DDP sees one forward per backward.

    Each pass computes only the towers its batch has labels for; together they use every parameter.
    With ``contrastive_weight`` > 0 the alignment pass also returns "contrastive_loss" over its
    first ``n_real`` rows (the unswapped items, see make_alignment_examples).
    """

    def __init__(self, model: CameNN, contrastive_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.contrastive_weight = float(contrastive_weight)

    def forward(self, full: CameNNBatch | None, align: CameNNBatch | None, n_real: int = 0):
        # full is None in alignment-only training (no CVR examples): the item-only batch is the step
        out_full = self.model(full, cvr_tasks(self.model)) if full is not None else None
        out_align = self.model(align, alignment_tasks(self.model)) if align is not None else None
        if out_align is not None and self.contrastive_weight > 0 and n_real >= 2:
            out_align["contrastive_loss"] = contrastive_loss(self.model, align.target.select(torch.arange(n_real)))
        return out_full, out_align


CONTRASTIVE_TAU = 0.1  # InfoNCE temperature: CLIP's learnt one ends near 0.01; 0.1 is gentler for 32-d towers
STEP_EXTRA_OUTPUTS = ("contrastive_loss",)


def contrastive_loss(model: CameNN, items: ItemTokens) -> torch.Tensor:
    """Symmetric InfoNCE between the mean projected text and the mean projected image of B real items.

    The same projections (``CameNN.project_items``) feed the fusion transformer, so pulling a
    photo's tokens towards its own text and away from the batch's other texts aligns the two
    modalities before the cross-attention has to. Twins (identical text, losses.twin_key) are
    no negatives of each other: their logits are masked.
    """
    t, v = model.pooled_modalities(items)                                                        # (B, D), (B, D)
    logits = (t @ v.T).float() / CONTRASTIVE_TAU                                                 # (B, B)
    key = twin_key(items)
    twin = (key[:, None] == key[None, :]) & ~torch.eye(len(key), dtype=torch.bool, device=key.device)
    logits = logits.masked_fill(twin, float("-inf"))
    target = torch.arange(len(key), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


# -----------------------------------------------------------------------------
# metrics


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
                  swap: str | None = None, donor: torch.Tensor | None = None,
                  views: ItemViews | None = None, view: int = 0) -> dict[str, np.ndarray]:
    """Item-only probabilities per task for items ``idx``; ``swap`` = "text"/"image" takes that side from ``donor``.

    With ``views``, the image is view ``view`` of each row's photo instead of the photo.
    """
    model.eval()
    tasks = alignment_tasks(model)
    if not tasks:
        raise ValueError(f"model has no alignment task (tasks={list(model.cfg.tasks)})")
    out: dict[str, list] = {t: [] for t in tasks}
    for s in range(0, len(idx), batch_size):
        rows = idx[s:s + batch_size]
        items = store.gather(rows)
        if views is not None:
            items = ItemTokens(items.text, items.text_mask, views.gather(rows, view), items.feats)
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


def clean_scores(model: CameNN, store: ItemStore, idx: torch.Tensor, batch_size: int, device,
                 views: ItemViews | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Items ``idx`` as they are, scored as the night scores them: (task -> probabilities, rows over views).

    The rows that carry test-time views get the mean logit over their photo and its views
    (``Predictor.item_outputs`` with ``n_views``); the others, and all without ``views``, the photo alone.
    """
    scores = predict_items(model, store, idx, batch_size, device)
    if views is None or len(idx) == 0:
        return scores, 0
    has = views.has(idx)                                                      # (n,) bool
    rows = idx[has]
    if len(rows) == 0:
        return scores, 0
    per_view = [predict_items(model, store, rows, batch_size, device, views=views, view=j) for j in range(views.n_views)]
    mask = has.numpy()
    for task, photo in scores.items():
        photo[mask] = mean_logit([photo[mask]] + [p[task] for p in per_view])
    return scores, int(len(rows))


def alignment_scores(model: CameNN, store: ItemStore, idx: torch.Tensor, batch_size: int, device,
                     seed: int = 0, hard: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ITA / TIA probabilities and labels on items ``idx``: each item as it is (positive) and once with
    another of these items' text (ITA negative) or image (TIA negative). task -> (labels, probs).

    ``hard``: the other item shares the item's category (and is no twin, losses.hard_donors), so
    the category field is the same on both sides; items of a category with no such partner among
    ``idx`` are left out.
    """
    tasks = [t for t in ("ita", "tia") if t in model.cfg.tasks]
    if not tasks or len(idx) < 2:
        return {}
    g = torch.Generator().manual_seed(seed)
    if hard:
        partner = hard_donors(store.gather(idx), g, "category")
        idx, donor = idx[partner >= 0], idx[partner[partner >= 0]]
        if len(idx) == 0:
            return {}
    else:
        donor = idx[derangement(len(idx), g)]
    pos = predict_items(model, store, idx, batch_size, device)
    out = {}
    for task, side in (("ita", "text"), ("tia", "image")):
        if task not in tasks:
            continue
        neg = predict_items(model, store, idx, batch_size, device, swap=side, donor=donor)[task]
        out[task] = (np.concatenate([np.ones(len(idx)), np.zeros(len(idx))]), np.concatenate([pos[task], neg]))
    return out


def alignment_metrics(model: CameNN, store: ItemStore, idx: torch.Tensor, batch_size: int, device,
                      seed: int = 0) -> dict[str, float]:
    """Accuracy at 0.5 and AUC of ``alignment_scores`` on items ``idx`` of one store."""
    out: dict = {}
    for task, (y, p) in alignment_scores(model, store, idx, batch_size, device, seed).items():
        out[f"{task}_acc"] = float(((p >= 0.5) == (y == 1)).mean())
        out[f"{task}_auc"] = roc_auc(y, p)
    if out:
        out["n_items"] = int(len(idx))
    return out


class BinnedAUC:
    """ROC AUC from per-label score histograms: summable across chunks and processes, no scores kept.

    Exact but for pairs whose scores share a bin (1/bins wide), which count one half; with
    2**16 bins that moved the demo's AUC by less than 1e-4 against sklearn's.
    """

    def __init__(self, bins: int = 1 << 16):
        self.counts = np.zeros((2, bins), dtype=np.float64)  # (label, bin)

    def add(self, labels, scores) -> None:
        labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
        bins = self.counts.shape[1]
        at = np.clip((np.nan_to_num(scores, nan=0.0) * bins).astype(np.int64), 0, bins - 1)
        for label in (0, 1):
            np.add.at(self.counts[label], at[labels == label], 1.0)

    def all_reduce(self, dist_info: _Dist) -> BinnedAUC:
        if dist_info.on:
            import torch.distributed as dist

            t = torch.from_numpy(self.counts)
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.all_reduce(t)
            self.counts = t.cpu().numpy()
        return self

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def auc(self) -> float:
        neg, pos = self.counts  # counts[0]: negatives, counts[1]: positives, per bin in increasing score order
        return auc_from_counts(pos, neg)

    def quantile(self, q: float, label: int = 1) -> float:
        """The score below which a share ``q`` of the ``label`` rows fall (to a bin's width)."""
        counts = self.counts[label]
        total = counts.sum()
        if total == 0:
            return float("nan")
        k = int(np.searchsorted(np.cumsum(counts), q * total))   # the first bin reaching the share
        return float(min(1.0, (k + 1) / counts.shape[0]))

    def accuracy(self, threshold: float = 0.5) -> float:
        cut = int(round(threshold * self.counts.shape[1]))
        right = self.counts[0, :cut].sum() + self.counts[1, cut:].sum()
        return float(right / max(1.0, self.counts.sum()))

    def best_cut(self) -> float:
        """The threshold (a bin edge) of the highest accuracy: negatives below, positives at or above it.

        Every edge in a gap between the two kinds of score ties, and held-out pairs leave wide gaps:
        the median of the tied edges, so that the tie leans to neither side.
        """
        neg, pos = self.counts
        right = np.concatenate([[0.0], np.cumsum(neg)]) + (pos.sum() - np.concatenate([[0.0], np.cumsum(pos)]))  # (bins+1,)
        best = np.flatnonzero(right == right.max())
        return float(best[len(best) // 2] / self.counts.shape[1])


# -----------------------------------------------------------------------------
# the spec and the model


def has_cvr_examples(spec: dict) -> bool:
    """Whether any chunk holds a CVR training example (pipeline.training_data writes none without
    users and purchases, or when model.tasks has no cvr)."""
    return any(n.get("train", 0) for n in spec["chunks"].values())


def alignment_only_spec(spec: dict, log=_log.info) -> dict:
    """``spec`` with cvr dropped from the model's tasks when there are no CVR examples to train it on.

    Every rank reads the same spec, so they all build the same model. The artifact then has no
    cvr head, and the nightly job skips its CVR stage for it.
    """
    if has_cvr_examples(spec):
        return spec
    frame = spec["model"]["frame"]
    tasks = [t for t in spec["model"].get("tasks", ("cvr",)) if t != "cvr"]
    if "tasks" in FRAME_FIXED.get(frame, ()) or not tasks:
        raise ValueError(f"no CVR training examples, and model frame {frame!r} with tasks "
                         f"{spec['model'].get('tasks')} has no alignment task to train alone")
    if "cvr" in spec["model"].get("tasks", ()):
        log(f"no CVR training examples (no users, purchases or impressions): training the alignment tasks "
            f"{', '.join(tasks)} alone")
    return {**spec, "model": {**spec["model"], "tasks": tasks}}


def alignment_only_steps(spec: dict, chunks: list[int], batch_size: int) -> int:
    """Steps of one pass over a rank's home items in the training share of the item split."""
    home = sum(int(spec["chunks"].get(c, spec["chunks"].get(str(c), {})).get("home", 0)) for c in chunks)
    train_share = 1.0 - float(spec["split"]["test_fraction"]) - float(spec["split"]["valid_fraction"])
    return math.ceil(home * train_share / max(1, batch_size))


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


def train_step(step_module: nn.Module, opt: torch.optim.Optimizer, full: CameNNBatch | None,
               cvr_labels: torch.Tensor | None,
               align: CameNNBatch | None, align_labels: dict | None, align_mask: dict | None,
               weights: dict[str, float], amp_dtype: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None, n_real: int = 0,
               balance: dict | None = None) -> tuple[torch.Tensor, dict]:
    """One optimiser step on a full batch plus its item-only alignment batch; returns (loss, per-task losses).

    ``full`` (and ``cvr_labels``) is None in alignment-only training: the step is the item-only batch.

    The forward pass runs under autocast when ``amp_dtype`` is set (CUDA in training; the test
    runs it on CPU); the loss is computed in fp32 (multitask_loss upcasts the logits). With noisy
    top-k gates the loss also holds ``gate_balance_weight`` x the gates' load-balancing loss of
    both passes, and the per-task losses a "gate_aux" entry (that unweighted sum). ``balance``:
    multitask_loss's prior correction of the alignment tasks (``_balance``), empty for none.
    """
    device = (full if full is not None else align).target.text.device
    cfg = getattr(step_module, "module", step_module).model.cfg  # a _MixedStep, or DDP around one
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out_full, out_align = step_module(full, align, n_real)
    loss, per, gate_aux = torch.zeros((), device=device), {}, torch.zeros((), device=device)
    if out_full is not None:
        loss, per = multitask_loss({k: v for k, v in out_full.items() if k not in NON_TASK_OUTPUTS},
                                   {"cvr": cvr_labels.to(device)}, {}, weights)
        gate_aux = out_full["gate_aux_loss"]
    if out_align is not None:
        loss_a, per_a = multitask_loss({k: v for k, v in out_align.items()
                                        if k not in NON_TASK_OUTPUTS and k not in STEP_EXTRA_OUTPUTS},
                                       {k: v.to(device) for k, v in align_labels.items()},
                                       {k: v.to(device) for k, v in align_mask.items()}, weights, **(balance or {}))
        loss = loss + loss_a
        per = {**per, **{k: per_a[k] for k in ("ita", "tia") if k in per_a}}
        if "contrastive_loss" in out_align:
            loss = loss + getattr(step_module, "module", step_module).contrastive_weight * out_align["contrastive_loss"]
            per["contrastive"] = out_align["contrastive_loss"].detach()
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


def weight_average(model: CameNN, decay: float | None) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of ``model``'s parameters and buffers (``training.ema_decay``), or None.

    Its ``module`` has ``model``'s state-dict keys, so a kept average loads into the model that is saved.
    """
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=True)


@dataclass
class TrainState:
    best_loss: float = math.inf
    best_epoch: int = -1
    best_state: dict | None = None
    bad_epochs: int = 0
    history: list = field(default_factory=list)


def _loss_weights(spec: dict) -> dict[str, float]:
    return {k: float(v) for k, v in spec["training"].get("task_weights", {}).items()}


def _balance(spec: dict) -> dict[str, tuple[str, ...]]:
    """multitask_loss's prior correction of the alignment tasks (training.alignment_balance), as keywords."""
    keyword = {"weights": "balanced", "logit_adjustment": "logit_adjusted"}.get(spec["training"].get("alignment_balance"))
    return {keyword: ("ita", "tia")} if keyword else {}


@torch.no_grad()
def validation_loss(model: CameNN, cache: ChunkCache, chunks: list[int], spec: dict, device,
                    dist_info: _Dist) -> dict[str, float]:
    """Task-weighted mean BCE on the validation split of this process's chunks, reduced over all ranks."""
    model.eval()
    weights = _loss_weights(spec)
    bs = int(spec["training"]["batch_size"])
    tasks = model.cfg.tasks
    sums = {t: 0.0 for t in TASKS}
    counts = {t: 0.0 for t in TASKS}
    hist = BinnedAUC()
    align_tasks = [t for t in ("ita", "tia") if t in tasks]
    for c in chunks:
        chunk = cache.get(c)
        store, ex, align_idx = chunk.store, chunk.splits["valid"], chunk.home["valid"]
        if "cvr" in tasks:
            for s in range(0, len(ex), bs):
                part = ex.select(torch.arange(s, min(len(ex), s + bs)))
                out = model(cvr_batch(store, part).to(device), "cvr")
                _, per = multitask_loss({"cvr": out["cvr"]}, {"cvr": part.label.to(device)}, {})
                sums["cvr"] += float(per["cvr"]) * len(part)
                counts["cvr"] += len(part)
                hist.add(part.label.numpy(), torch.sigmoid(out["cvr"]).float().cpu().numpy())
        if align_tasks and len(align_idx) >= 2:
            g = torch.Generator().manual_seed(12345)
            abs_ = max(2, int(spec["training"]["alignment_batch_size"]))
            for s in range(0, len(align_idx), abs_):
                rows = align_idx[s:s + abs_]
                if len(rows) < 2:
                    continue
                # no views passed: validation scores the photos themselves, whatever training.view_share
                batch, labels, mask = alignment_batch(store, rows, g, **alignment_options(spec["training"]))
                out = model(batch.to(device), tuple(align_tasks))
                for t in align_tasks:
                    _, per = multitask_loss({t: out[t]}, {t: labels[t].to(device)}, {t: mask[t].to(device)},
                                            **_balance(spec))
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
        result["cvr_auc"] = hist.all_reduce(dist_info).auc()
    return result


@torch.no_grad()
def held_out_metrics(model: CameNN, cache: ChunkCache, chunks: list[int], batch_size: int, device, seed: int,
                     dist_info: _Dist) -> dict:
    """CVR AUC on the test split and ITA/TIA accuracy and AUC on held-out home items, over every rank's chunks.

    Also the 1/2/5/10% quantiles of the held-out items' own ITA and TIA (``ita_clean_q05``, ...):
    the thresholds of ``scoring.thresholds.mode: calibrated`` (camenn.config.ThresholdConfig), their
    median (``ita_clean_q50``: the centre ``thresholds.recentre`` moves them from), and
    the cut where the held-out pairs with random negatives split best (``ita_cut``, with
    ``ita_acc_at_cut``; ``ita_acc`` is at 0.5).

    Each process scores its own chunks and only histograms and counts are reduced: no process
    ever holds the test set's scores.
    """
    tasks = [t for t in ("ita", "tia") if t in model.cfg.tasks]
    # random negatives (another held-out item) and same-category ones ("_hard"), side by side
    cvr, align = BinnedAUC(), {k: BinnedAUC() for t in tasks for k in (t, f"{t}_hard")}
    clean = {t: BinnedAUC() for t in tasks}   # the held-out items as the night scores them, views and all
    n_items = n_hard = n_clean = n_over_views = 0
    n_views = 0
    for c in chunks:
        chunk = cache.get(c)
        if "cvr" in model.cfg.tasks:
            test = chunk.splits["test"]
            cvr.add(test.label.numpy(), predict_cvr(model, chunk.store, test, batch_size, device))
        scores = alignment_scores(model, chunk.store, chunk.home["test"], batch_size, device, seed=seed + c)
        for task, (y, p) in scores.items():
            align[task].add(y, p)
        n_items += len(chunk.home["test"]) if scores else 0
        if tasks:
            own, over_views = clean_scores(model, chunk.store, chunk.home["test"], batch_size, device, chunk.views)
            for task in tasks:
                clean[task].add(np.ones(len(own[task])), own[task])
            n_clean += len(chunk.home["test"])
            n_over_views += over_views
            n_views = max(n_views, chunk.views.n_views if chunk.views is not None else 0)
        hard = alignment_scores(model, chunk.store, chunk.home["test"], batch_size, device, seed=seed + c, hard=True)
        for task, (y, p) in hard.items():
            align[f"{task}_hard"].add(y, p)
        n_hard += len(next(iter(hard.values()))[0]) // 2 if hard else 0
    metrics: dict = {}
    if "cvr" in model.cfg.tasks:
        cvr.all_reduce(dist_info)
        metrics.update(cvr_auc=cvr.auc(), n_test=cvr.n, test_positive_rate=float(cvr.counts[1].sum() / max(1, cvr.n)))
    for task, hist in align.items():
        hist.all_reduce(dist_info)
        if hist.n:   # a catalogue with one item per category has no same-category pair
            metrics.update({f"{task}_acc": hist.accuracy(), f"{task}_auc": hist.auc()})
    for task in tasks:   # the held-out items as they are: what thresholds.mode "calibrated" flags below
        if clean[task].all_reduce(dist_info).n:
            metrics.update({f"{task}_clean_q{round(q * 100):02d}": clean[task].quantile(q) for q in CALIBRATION_QUANTILES})
            metrics[f"{task}_clean_{CALIBRATION_CENTRE}"] = clean[task].quantile(0.5)   # what thresholds.recentre moves from
            metrics[f"{task}_clean_{CALIBRATION_QUARTILE}"] = clean[task].quantile(0.25)   # what thresholds.rescale compares
        if align[task].n:
            # the model's own decision point: where its held-out pairs (random negatives) split best; a model
            # whose scores lean to one side (logit adjustment, a skewed share of negatives) is read at it
            cut = align[task].best_cut()
            metrics.update({f"{task}_cut": cut, f"{task}_acc_at_cut": align[task].accuracy(cut)})
    if align:
        n = _all_reduce([float(n_items), float(n_hard), float(n_clean), float(n_over_views)], "sum", dist_info)
        metrics["n_items"], metrics["n_items_hard"] = int(n[0]), int(n[1])
        # the night compares its own scoring.test_time_views with these (pipeline.flag_rules.views_warnings)
        metrics["calibration_views"] = int(_all_reduce([float(n_views)], "max", dist_info)[0])
        metrics["calibration_items"], metrics["calibration_items_over_views"] = int(n[2]), int(n[3])
    return metrics


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
    threads = tcfg.get("num_threads")
    if not threads:
        # a process's share of the cores; in the caller's own process (not torchrun's, which
        # starts with OMP_NUM_THREADS=1) never more than it was given (OMP_NUM_THREADS, a
        # caller's set_num_threads): on a busy machine an extra OpenMP thread spin-waits for a core
        threads = max(1, (os.cpu_count() or 1) // dist_info.world_size)
        if not dist_info.on:
            threads = min(threads, torch.get_num_threads())
    torch.set_num_threads(int(threads))
    seed = int(spec["seed"])
    is_main = dist_info.rank == 0
    setup_logging()   # a torchrun process of its own: nothing has set up its logging
    log = _log.info if is_main else (lambda msg: None)

    try:
        spec = alignment_only_spec(spec, log)
        # ---- data -------------------------------------------------------------------------
        t0 = time.perf_counter()
        vocab = FeatureVocab.from_dict(spec["vocab"])
        max_beh = int(spec["model"]["max_behaviour"])
        n_chunks = int(spec["n_chunks"])
        chunks = rank_chunks(dist_info.rank, dist_info.world_size, n_chunks)
        sp = spec["split"]

        def split_of(item_id: str) -> str:
            return item_split(item_id, sp["test_fraction"], sp["valid_fraction"], sp["seed"])

        dropped: dict[int, int] = {}

        def load(c: int) -> Chunk:
            chunk = load_chunk(spec, c, vocab, split_of)
            dropped[c] = chunk.dropped
            return chunk

        cache = ChunkCache(load)
        first = cache.get(chunks[0])
        per_chunk = {int(c): n for c, n in spec["chunks"].items()}
        n_train = sum(per_chunk.get(c, {}).get("train", 0) for c in chunks)
        load_s = time.perf_counter() - t0
        log(f"{n_chunks} chunk(s), {len(chunks)} per process; chunk {first.index}: {len(first.store)} items, examples " +
            ", ".join(f"{k}={len(e)}" for k, e in first.splits.items()) + f", read in {load_s:.1f}s")
        if float(tcfg.get("view_share") or 0.0) > 0:   # a training item without views trains on its photo alone
            carry = int(first.views.has(first.home["train"]).sum()) if first.views is not None else 0
            log(f"view_share {tcfg['view_share']}: {carry} of chunk {first.index}'s {len(first.home['train'])} training "
                f"items carry {first.views.n_views if first.views is not None else 0} test-time views")

        # ---- model ------------------------------------------------------------------------
        text_dim, image_dim = first.store.text.shape[-1], first.store.image.shape[-1]
        torch.manual_seed(seed)
        cfg = model_config_from_spec(spec, vocab, text_dim, image_dim)
        model = CameNN(cfg).to(device)
        align_on = any(t in cfg.tasks for t in ("ita", "tia")) and int(tcfg["alignment_batch_size"]) > 0
        step_module: nn.Module = _MixedStep(model, float(tcfg.get("contrastive_weight", 0.0)))
        if dist_info.on:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # an item-only step leaves the user and behaviour parameters unused
            step_module = DDP(step_module, device_ids=[device.index] if use_gpu else None,
                              find_unused_parameters="cvr" not in cfg.tasks)
        opt = torch.optim.Adam(model.parameters(), lr=float(tcfg["lr"]), betas=tuple(tcfg["betas"]),
                               weight_decay=float(tcfg["weight_decay"]))
        torch.manual_seed(seed * 1000 + dist_info.rank)  # dropout: different per rank, fixed per seed
        amp_dtype = training_autocast_dtype(device, tcfg.get("autocast", "none"))
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
        scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        # why an average: the last step's weights follow its batch; an average over the last ~1/(1-decay) steps
        # is the usual cheaper stand-in for an ensemble of nearby models (torch's own swa_utils keeps it)
        ema = weight_average(model, tcfg.get("ema_decay"))
        kept = ema.module if ema is not None else model   # what is validated, kept as best and saved

        ws = dist_info.world_size
        bs = max(1, math.ceil(int(tcfg["batch_size"]) / ws))
        abs_ = max(2, math.ceil(int(tcfg["alignment_batch_size"]) / ws)) if align_on else 0
        align_only = "cvr" not in cfg.tasks
        if align_only and not align_on:
            raise ValueError("alignment-only training needs training.alignment_batch_size > 0")
        per_rank = alignment_only_steps(spec, chunks, abs_) if align_only else math.ceil(n_train / bs)
        n_steps = int(_all_reduce([per_rank], "min", dist_info)[0])
        if tcfg.get("steps_per_epoch"):
            n_steps = int(tcfg["steps_per_epoch"])
        if n_steps < 1:
            raise ValueError(f"no training examples in the chunks {chunks} of rank {dist_info.rank}")
        weights = _loss_weights(spec)
        align_opts = alignment_options(tcfg)
        state = TrainState()
        epochs = int(tcfg["epochs"])
        schedule = lr_schedule(opt, tcfg.get("lr_schedule", "constant"), int(tcfg.get("warmup_steps") or 0),
                               epochs * n_steps, float(tcfg.get("min_lr_ratio", 0.0)))
        log(f"model {cfg.bottom_type}/{cfg.expert_type} tasks={list(cfg.tasks)} params={model.num_params():,}; "
            f"{epochs} epochs x {n_steps} steps, batch {bs}+{abs_} item-only per rank, {ws} process(es), {threads} thread(s)")

        from tqdm.auto import tqdm

        t_train = time.perf_counter()
        # one stream per process: a pass over each of its chunks in turn, an epoch = n_steps batches of it
        g_stream = torch.Generator().manual_seed(seed * 7919 + dist_info.rank)
        stream = home_stream(cache, chunks, abs_, g_stream) if align_only else batch_stream(cache, chunks, bs, g_stream)
        steps_s = 0.0  # time in the steps themselves, chunk reads of the stream included, validation not
        for epoch in range(epochs):
            model.train()
            g_epoch = torch.Generator().manual_seed(seed * 7919 + epoch * 104729 + dist_info.rank)
            bar = tqdm(range(n_steps), desc=f"epoch {epoch + 1}/{epochs}", disable=not is_main,
                       file=_LineStream(sys.stderr) if dist_info.on else sys.stderr,
                       mininterval=15.0 if dist_info.on else 2.0, leave=True, dynamic_ncols=not dist_info.on)
            running = 0.0
            t_steps = time.perf_counter()
            for step in bar:
                chunk, rows = next(stream)
                ex = full = align = labels = amask = None
                if align_only:   # rows are the chunk's own training items
                    align, labels, amask = alignment_batch(chunk.store, rows, g_epoch, views=chunk.views, **align_opts)
                    align = align.to(device)
                else:
                    ex = chunk.splits["train"].select(rows)
                    full = cvr_batch(chunk.store, ex).to(device)
                if align_on and not align_only:
                    home = chunk.home["train"]
                    if len(home) < 2:
                        raise ValueError(f"chunk {chunk.index} has {len(home)} training item(s) of its own; the alignment "
                                         "tasks need 2 (raise training.examples_per_chunk: fewer, larger chunks)")
                    pick = home[torch.randperm(len(home), generator=g_epoch)[:abs_]]
                    align, labels, amask = alignment_batch(chunk.store, pick, g_epoch, views=chunk.views, **align_opts)
                    align = align.to(device)
                n_real = len(rows) if align_only else (len(pick) if align is not None else 0)
                loss, per = train_step(step_module, opt, full, ex.label if ex is not None else None, align, labels,
                                       amask, weights, amp_dtype, scaler, n_real=n_real, balance=_balance(spec))
                schedule.step()
                if ema is not None:
                    ema.update_parameters(model)
                running += (float(loss.detach()) - running) / (step + 1)
                if is_main and (step % 10 == 0 or step == n_steps - 1):
                    # as lines (under a distributor) a redraw per postfix would be a log line per 10 steps
                    bar.set_postfix(loss=f"{running:.4f}", **{k: f"{float(v):.3f}" for k, v in per.items()},
                                    refresh=not dist_info.on)
            bar.close()
            steps_s += time.perf_counter() - t_steps
            if spec.get("steps_only"):  # benchmarks/bench_training_scale.py: the steps alone, no chunk walks
                state.history.append({"epoch": epoch + 1, "train_loss": running, "seconds": time.perf_counter() - t_train})
                continue
            val = validation_loss(kept, cache, chunks, spec, device, dist_info)
            record = {"epoch": epoch + 1, "train_loss": running, **{f"valid_{k}": x for k, x in val.items()},
                      "seconds": time.perf_counter() - t_train}
            state.history.append(record)
            improved = val["loss"] < state.best_loss - 1e-4
            if improved:
                state.best_loss, state.best_epoch, state.bad_epochs = val["loss"], epoch + 1, 0
                state.best_state = copy.deepcopy(kept.state_dict())
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
        elif ema is not None:   # steps_only: no validation chose an epoch
            model.load_state_dict(kept.state_dict())

        # ---- held-out metrics -----------------------------------------------------------
        metrics = {} if spec.get("steps_only") else held_out_metrics(model, cache, chunks, max(bs, 256), device, seed,
                                                                      dist_info)
        n_dropped = int(_all_reduce([float(sum(dropped.values()))], "sum", dist_info)[0])
        metrics.update(best_epoch=state.best_epoch, epochs_run=len(state.history), best_valid_loss=state.best_loss,
                       train_seconds=train_s, load_seconds=load_s, total_seconds=time.perf_counter() - t_start,
                       steps_per_epoch=n_steps, step_seconds=steps_s / max(1, n_steps * len(state.history)),
                       examples_dropped=n_dropped, world_size=ws, n_chunks=n_chunks,
                       chunk_loads=cache.loads)

        metrics, history = _json_safe(metrics), _json_safe(state.history)
        result = {"metrics": metrics, "history": history, "artifact": None, "model_version": None}
        if is_main and spec.get("artifact_dir"):
            from camenn.checkpoint import load_artifact, save_artifact

            metadata = dict(spec.get("metadata", {}))
            metadata.update({
                "featurizer": spec["featurizer"], "encoder_fingerprint": spec["encoder_fingerprint"],
                "vocab": vocab.to_dict(), "max_behaviour": max_beh, "table_versions": dict(spec["table_versions"]),
                "metrics": metrics, "history": history, "git_commit": spec.get("git_commit"),
                "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "config_name": spec.get("config_name"), "seed": seed,
                "item_features": list(ITEM_FEATURES),
                "tasks": list(cfg.tasks), "alignment_only": align_only,
            })
            path = save_artifact(spec["artifact_dir"], model.cpu(), metadata)   # a new version; the last is kept
            result["artifact"] = str(path)
            result["model_version"] = load_artifact(path).version
        if dist_info.on:
            # TorchDistributor returns the output of whichever process wrote its result file last,
            # not rank 0's: every rank returns rank 0's artifact path and version
            import torch.distributed as dist

            saved = [result["artifact"], result["model_version"]]
            dist.broadcast_object_list(saved, src=0)
            result["artifact"], result["model_version"] = saved
        return result
    finally:
        if dist_info.on:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


__all__ = ["train_fn", "item_split", "stable_unit", "Examples", "BinnedAUC", "cvr_batch", "alignment_batch",
           "trim_items", "predict_cvr", "predict_items", "alignment_metrics", "alignment_scores", "held_out_metrics",
           "model_config_from_spec", "git_commit", "alignment_only_spec", "has_cvr_examples",
           "lr_schedule", "train_step", "training_autocast_dtype"]
