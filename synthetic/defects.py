"""The planted defects: which items get one, and what their listing then shows.

``DEFECTS``: none, text_swap (another category's item's text), image_swap (its picture),
vague_text (a text without category words), blurred_image (a washed-out picture) and
wrong_category (the listed category is another one). Each item draws its defect from
``world.defects``'s rates with its own hash field.

:func:`item_attributes` lives here, not in :mod:`synthetic.catalogue`, because the defect draw,
the swap source, the listed category and the displayed text's tags are computed with the item's
clean fields in one vectorised pass: it is what turns a clean item into a listed one (truth
included). :func:`item_text` applies the text defects; the picture defects are applied by
:func:`synthetic.pictures.render_item_image`, with :func:`_degrade` from here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from synthetic.catalogue import (
    _F_DEFECT,
    _F_MERCHANT,
    _F_OTHER_CAT,
    _F_OTHER_ITEM,
    _F_UPDATED,
    _F_VAGUE1,
    _F_VAGUE2,
    N_CATEGORIES,
    _clean_attributes,
    _clean_of_row,
    _clean_text,
    _item_of_category,
    item_id,
)
from synthetic.randomness import KIND_IMAGE, KIND_ITEM, _pick, _rng, _u

DEFECTS = ("none", "text_swap", "image_swap", "vague_text", "blurred_image", "wrong_category")

# Texts with no category in them (vague_text defect).
_VAGUE_TITLES = ("Good item", "Fresh produce", "Best quality", "Great value", "Daily essentials", "New arrival",
                 "Item", "Special offer", "Shop favourite", "Product")
_VAGUE_DESCRIPTIONS = ("Good quality.", "Buy now.", "See pictures.", "", "Great price, order today.",
                       "Available while stocks last.", "Quality product.")


def _check(world) -> None:
    if world.n_items < N_CATEGORIES:
        raise ValueError(f"world.n_items must be >= {N_CATEGORIES} (one item per category), got {world.n_items}")
    rates = world.defects.model_dump()
    if sum(rates.values()) > 1:
        raise ValueError(f"world.defects rates add up to {sum(rates.values()):.3f} > 1: {rates}")


def item_attributes(world, idx) -> pd.DataFrame:
    """Every non-image field of items ``idx``, defects and truth included (vectorised, cheap).

    Columns: index, item_id, true_category (int), listed_category (int), product, size, organic,
    local, bestseller, premium, value, price, merchant, updated_at, defect (str), source_index
    (-1 when none), and shown_* tags (the tags of the displayed text, which drive p_buy).
    """
    _check(world)
    seed, idx = world.seed, np.asarray(idx, dtype=np.int64)
    a = _clean_attributes(seed, idx)
    cat = a["category"]
    u = lambda f: _u(seed, KIND_ITEM, idx, 0, f)  # noqa: E731
    rates = world.defects.model_dump()
    edges = np.cumsum([rates[d] for d in DEFECTS[1:]])
    defect_code = np.searchsorted(edges, u(_F_DEFECT), side="right") + 1
    defect_code[defect_code > len(DEFECTS) - 1] = 0
    defect = np.asarray(DEFECTS, dtype=object)[defect_code]
    other_cat = (cat + 1 + _pick(u(_F_OTHER_CAT), N_CATEGORIES - 1)) % N_CATEGORIES
    other_item = _item_of_category(world.n_items, other_cat, u(_F_OTHER_ITEM))
    swapped = (defect == "text_swap") | (defect == "image_swap")
    source = np.where(swapped, other_item, -1)
    listed = np.where(defect == "wrong_category", other_cat, cat)
    # Merchants specialise: each category is sold by about a third of the shops.
    span = max(1, world.n_merchants // 3)
    merchant = (cat * 7919 + _pick(u(_F_MERCHANT), span)) % world.n_merchants
    run_start = np.datetime64(world.run_date, "s")
    updated_at = run_start - (np.int64(86400) + _pick(u(_F_UPDATED), 365 * 86400)).astype("timedelta64[s]")
    out = pd.DataFrame(a)
    out.insert(1, "item_id", item_id(idx))
    out = out.rename(columns={"category": "true_category"})
    out["listed_category"] = listed
    out["merchant"] = merchant
    out["updated_at"] = updated_at
    out["defect"] = defect
    out["source_index"] = source
    # The displayed text's tags: those of the source item for a swapped text, none for a vague one.
    shown = {k: a[k].copy() for k in ("organic", "local", "bestseller")}
    text_swap = defect == "text_swap"
    if text_swap.any():
        src = _clean_attributes(seed, other_item[text_swap])
        for k in shown:
            shown[k][text_swap] = src[k]
    for k in shown:
        shown[k][defect == "vague_text"] = False
        out[f"shown_{k}"] = shown[k]
    return out


def item_text(world, i: int, attrs=None) -> tuple[str, str]:
    """(title, description) of item ``i`` as listed: its own, another item's, or a vague one.

    ``attrs``: the item's row of :func:`item_attributes` when the caller has it (saves time).
    """
    attrs = attrs if attrs is not None else next(item_attributes(world, np.array([i])).itertuples(index=False))
    if attrs.defect == "text_swap":
        return _clean_text(world.seed, int(attrs.source_index))
    if attrs.defect == "vague_text":
        u = lambda f: float(_u(world.seed, KIND_ITEM, i, 0, f))  # noqa: E731
        return (_VAGUE_TITLES[int(_pick(u(_F_VAGUE1), len(_VAGUE_TITLES)))],
                _VAGUE_DESCRIPTIONS[int(_pick(u(_F_VAGUE2), len(_VAGUE_DESCRIPTIONS)))])
    return _clean_text(world.seed, i, _clean_of_row(attrs))


def _degrade(img: Image.Image, seed: int, i: int) -> Image.Image:
    """blurred_image: heavy blur washed out towards a flat colour, or a nearly blank frame."""
    rng = _rng(seed, KIND_IMAGE, i + (1 << 40))
    px = img.size[0]
    flat = tuple(int(v) for v in rng.integers(150, 245, 3))
    if rng.random() < 0.5:
        blurred = img.filter(ImageFilter.GaussianBlur(radius=px * 0.18))
        return Image.blend(blurred, Image.new("RGB", img.size, flat), float(rng.uniform(0.55, 0.75)))
    noise = rng.normal(0, 4, (px, px, 3))
    return Image.fromarray(np.clip(np.asarray(flat, dtype=np.float64) + noise, 0, 255).astype(np.uint8))
