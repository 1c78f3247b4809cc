"""Losses and the item-only alignment examples that train ITA and TIA."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from camenn.model import NON_TASK_OUTPUTS, ItemTokens


def multitask_loss(
    logits: dict,
    labels: dict[str, torch.Tensor],
    label_mask: dict[str, torch.Tensor],
    weights: dict[str, float] | None = None,
    balanced: tuple[str, ...] = (),
    logit_adjusted: tuple[str, ...] = (),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of per-task BCE-with-logits, each averaged over its labelled rows.

    logits: the model's output (task -> (B,); its "gates" and "gate_aux_loss" entries, NON_TASK_OUTPUTS,
    are ignored: the training step adds the weighted gate loss itself).
    labels / label_mask: task -> (B,) float / bool. A task that has logits but no labels, or
    whose mask is all False in this batch (a CVR task in an item-only alignment batch), adds 0
    and gets zero gradient, never NaN.
    weights: task -> weight; a task missing from it weighs 1.0.
    balanced / logit_adjusted: two ways to train a task for a 1:1 prior when its labelled rows
    come in another ratio. The alignment examples are 3 positives to 1 negative per task
    (``make_alignment_examples``), so a plain BCE learns that prior, while the held-out accuracy
    and the nightly flags ask about a 1:1 split. ``balanced``: the positive and the negative rows
    weigh half the loss each (the mean of the two classes' mean BCE), which reweights the
    gradients. ``logit_adjusted``: the loss sees the logit plus log(positives / negatives) of
    the batch, and the model's own logit is left to learn the 1:1 log-odds (logit adjustment,
    Menon et al. 2021); the gradients keep the plain loss's weighting.
    Returns (total, per_task) with per_task detached, for logging.
    """
    weights = weights or {}
    total = None
    per_task: dict[str, torch.Tensor] = {}
    for task, z in logits.items():
        if task in NON_TASK_OUTPUTS:
            continue
        if task in labels:
            y = labels[task].to(device=z.device, dtype=torch.float32)  # (B,)
            m = label_mask.get(task)
            m = torch.ones_like(y, dtype=torch.bool) if m is None else m.to(device=z.device, dtype=torch.bool)  # (B,)
            if y.shape != z.shape or m.shape != z.shape:
                raise ValueError(f"task {task!r}: logits {tuple(z.shape)}, labels {tuple(y.shape)}, mask {tuple(m.shape)} must match")
            # unlabelled rows are replaced before the BCE, not multiplied by 0 after it: a NaN
            # logit there (0 * NaN = NaN) must poison neither the loss nor the gradient
            z = torch.where(m, z.float(), torch.zeros_like(z, dtype=torch.float32))  # (B,)
            y = torch.where(m, y, torch.zeros_like(y))  # (B,)
            if task in logit_adjusted:
                n_pos = (m & (y > 0.5)).sum()
                n_neg = m.sum() - n_pos
                if n_pos > 0 and n_neg > 0:
                    z = z + torch.log(n_pos.float() / n_neg.float())  # (B,) the batch's prior, added back for the loss
            bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")  # (B,)
            if task in balanced:
                pos = m & (y > 0.5)  # (B,)
                neg = m & ~pos  # (B,)
                loss = 0.5 * ((bce * pos).sum() / pos.sum().clamp_min(1) + (bce * neg).sum() / neg.sum().clamp_min(1))
            else:
                loss = (bce * m).sum() / m.sum().clamp_min(1)
        else:
            loss = z.sum() * 0.0  # keeps the graph (and DDP's unused-parameter check) happy
        per_task[task] = loss.detach()
        term = float(weights.get(task, 1.0)) * loss
        total = term if total is None else total + term
    if total is None:
        raise ValueError("multitask_loss: no task logits given")
    return total, per_task


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of range(n) with no fixed point (one n-cycle, Sattolo-style)."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    perm = torch.randperm(n, generator=generator)  # (n,)
    out = torch.empty(n, dtype=torch.long)
    out[perm] = perm.roll(-1)  # perm[i] -> perm[i+1]
    return out


def twin_key(items: ItemTokens) -> torch.Tensor:
    """(B,) long: rows with the same key have identical text tokens (two photos of one product, say).

    A twin's text or photo is no negative for an item: its text is the item's own text, so the
    swap would be labelled 0 while it matches.
    """
    flat = (items.text * items.text_mask.unsqueeze(-1)).flatten(1)  # (B, L*Dt), padding zeroed
    return torch.unique(flat, dim=0, return_inverse=True)[1]


def _pooled_unit(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, D) tokens -> (B, D) unit mean over the real ones."""
    w = torch.ones(x.shape[:2], device=x.device) if mask is None else mask.to(x.dtype)
    mean = (x * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)
    return F.normalize(mean.float(), dim=-1)


def hard_donors(items: ItemTokens, generator: torch.Generator, kind: str = "category",
                side: str = "text", key: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) for each row a donor row of the same batch that makes a hard negative, or -1 where none.

    kind "category": a random other item of the same category (feats[:, 0]), so the category
    field is the same on both sides of the swap and cannot decide; "neighbour": the item whose
    mean-pooled encoder output of ``side`` (text tokens or image patches) is nearest by cosine,
    any category. Never the row itself nor a twin (identical text, ``twin_key``; ``key``: its value
    for these items where the caller has it, so a batch pays for the ``torch.unique`` once).
    """
    B = len(items)
    key = twin_key(items) if key is None else key.to(items.text.device)
    ok = key[:, None] != key[None, :]  # (B, B) not itself, not a twin
    if kind == "category":
        cat = items.feats[:, 0]
        ok &= cat[:, None] == cat[None, :]
        score = torch.rand(B, B, generator=generator).to(items.text.device)
    elif kind == "neighbour":
        v = _pooled_unit(items.text, items.text_mask) if side == "text" else _pooled_unit(items.image)
        score = v @ v.T  # (B, B) cosine
    else:
        raise ValueError(f"hard negative kind must be 'category' or 'neighbour', got {kind!r}")
    score = score.masked_fill(~ok, float("-inf"))
    donor = score.argmax(1)
    return torch.where(ok.any(1), donor, torch.full_like(donor, -1)).cpu()


def make_alignment_examples(
    items: ItemTokens,
    generator: torch.Generator,
    swap_fraction: float = 0.5,
    attribute_side: bool = True,
    hard_share: float = 0.0,
    hard_kind: str = "category",
    same_category_swaps: str = "one_side",
) -> tuple[ItemTokens, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Item-only ITA / TIA examples from B real items (B >= 2).

    Rows, in order: the B items as they are (ita=1, tia=1); round(swap_fraction * B) of them
    with the text (and text_mask) of another item in the batch (text-swapped); and
    round(swap_fraction * B) of them, chosen independently, with another item's image
    (image-swapped). Donors come from one derangement of the batch, so no row is its own donor,
    and never from the row's twins (identical text: two photos of one product, or a photo and
    its augmented view): a twin's text is the row's own, so its swap would be labelled 0 while it
    matches. A twin donor is redrawn from the row's other items; a row whose batch holds only its
    twins keeps its own text and photo with both labels masked.

    Hard negatives. With ``hard_share`` > 0 each swapped row takes, with that probability, a
    donor from ``hard_donors`` instead (``hard_kind`` "category": another item of the same
    category, never a twin; "neighbour": the nearest in pooled encoder space); rows with no such
    donor in the batch keep the random one. Random swaps almost always cross categories, and the
    swapped row keeps the receiving item's category, so a model can learn "does this text fit
    the category field" instead of "does this text fit this photo"; a same-category donor leaves
    the field identical on both sides, so only the text and the photo can decide.

    Labelling. ITA asks "does the text match this item?", TIA "does the image match this
    item?", where the item is everything else about the listing (its features and the other
    modality). A text-swapped row has ita=0, and with ``attribute_side=True`` also tia=1: its
    image still matches the item's category and other fields. Likewise an image-swapped row
    has tia=0 and ita=1. Labelling the other side positive, rather than leaving it unlabelled
    as the paper does, is what lets ITA vs TIA say WHICH side of a flagged listing is wrong.
    ``attribute_side=False`` is paper-faithful: the other task is masked out on swapped rows.

    What names the side is the item's other fields, above all its category. A swap whose partner
    shares the category (a hard negative) leaves them agreeing with both sides: the same
    (text of A, photo of B, category C) row is a text swap into B or an image swap into A, so
    "one_side" labelling gives it ITA 0 / TIA 1 as often as ITA 1 / TIA 0 and teaches the model
    to answer 0.5 to it. ``same_category_swaps="both_sides"`` labels such a row 0 for both tasks:
    text and photo disagree, and nothing says which is wrong.

    Returns (examples, labels, label_mask) with labels/label_mask keyed "ita" and "tia",
    each (B + 2 * round(swap_fraction * B),) float / bool, on the items' device.
    """
    B = len(items)
    if not 0.0 <= swap_fraction <= 1.0:
        raise ValueError(f"swap_fraction must be in [0, 1], got {swap_fraction}")
    if not 0.0 <= hard_share <= 1.0:
        raise ValueError(f"hard_share must be in [0, 1], got {hard_share}")
    dev = items.text.device
    donor = derangement(B, generator)  # (B,)
    n = int(round(swap_fraction * B))
    rows_t = torch.randperm(B, generator=generator)[:n]  # (n,) rows that get another item's text
    rows_i = torch.randperm(B, generator=generator)[:n]  # (n,) rows that get another item's image
    donor_t, donor_i = donor, donor
    if same_category_swaps not in ("one_side", "both_sides"):
        raise ValueError(f"same_category_swaps must be 'one_side' or 'both_sides', got {same_category_swaps!r}")
    key = twin_key(items)  # (B,) on the items' device; draws nothing from the generator
    if hard_share > 0:
        donor_t, donor_i = (_mix_hard(donor, hard_donors(items, generator, hard_kind, side, key), hard_share, generator)
                            for side in ("text", "image"))
    key = key.cpu()
    donor_t, donor_i = (_no_twin(d, key, generator) for d in (donor_t, donor_i))
    lone_t, lone_i = donor_t[rows_t] < 0, donor_i[rows_i] < 0  # (n,) rows with no donor but twins

    t_rows, i_rows = rows_t.to(dev), rows_i.to(dev)
    t_donor = torch.where(lone_t, rows_t, donor_t[rows_t]).to(dev)  # (n,)
    i_donor = torch.where(lone_i, rows_i, donor_i[rows_i]).to(dev)  # (n,)
    text_swapped = ItemTokens(items.text[t_donor], items.text_mask[t_donor], items.image[t_rows], items.feats[t_rows])
    image_swapped = ItemTokens(items.text[i_rows], items.text_mask[i_rows], items.image[i_donor], items.feats[i_rows])
    examples = ItemTokens.cat([items, text_swapped, image_swapped])

    ones, zeros = torch.ones(B + 2 * n, device=dev), torch.zeros(n, device=dev)
    ita = ones.clone()
    ita[B:B + n] = zeros  # text-swapped
    tia = ones.clone()
    tia[B + n:] = zeros  # image-swapped
    if same_category_swaps == "both_sides":
        cat = items.feats[:, 0].to(dev)  # (B,)
        ita[B + n:][cat[i_donor] == cat[i_rows]] = 0.0  # image swapped within the category: the text fits no better
        tia[B:B + n][cat[t_donor] == cat[t_rows]] = 0.0  # text swapped within the category: nor does the photo
    ita_mask = torch.ones(B + 2 * n, dtype=torch.bool, device=dev)
    tia_mask = ita_mask.clone()
    if not attribute_side:
        tia_mask[B:B + n] = False  # a text swap says nothing the paper would label about the image
        ita_mask[B + n:] = False
    lone = torch.cat([torch.zeros(B, dtype=torch.bool), lone_t, lone_i]).to(dev)  # (B + 2n,)
    ita_mask[lone] = False
    tia_mask[lone] = False
    return examples, {"ita": ita, "tia": tia}, {"ita": ita_mask, "tia": tia_mask}


def _no_twin(donor: torch.Tensor, key: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``donor`` (B,) with each twin donor (``key`` equal to its row's) redrawn at random from the row's
    non-twins, or -1 where the row has none. A batch without twins draws nothing, so it gets the donors
    it always had."""
    twin = key[donor] == key  # (B,)
    if not twin.any():
        return donor
    ok = key[:, None] != key[None, :]  # (B, B)
    score = torch.rand(len(key), len(key), generator=generator).masked_fill(~ok, float("-inf"))
    other = torch.where(ok.any(1), score.argmax(1), torch.full_like(donor, -1))  # (B,)
    return torch.where(twin, other, donor)


def _mix_hard(donor: torch.Tensor, hard: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """``donor`` with a ``share`` of its rows (those that have one) replaced by their hard donor."""
    use = (torch.rand(len(donor), generator=generator) < share) & (hard >= 0)
    return torch.where(use, hard, donor)


__all__ = ["multitask_loss", "make_alignment_examples", "derangement", "hard_donors", "twin_key"]
