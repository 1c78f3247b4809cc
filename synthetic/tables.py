"""The items, truth_items and users tables as pandas frames (the contract's columns), for any slice of indices.

The shoppers' own tables (events, impressions, candidates) are made in :mod:`synthetic.shoppers`,
beside the draws they are made of.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synthetic.catalogue import _F_PNG, CATEGORIES, item_id, merchant_id
from synthetic.defects import item_attributes, item_text
from synthetic.pictures import PNG_SHARE, encode_image, render_item_image
from synthetic.randomness import KIND_ITEM, _u
from synthetic.shoppers import user_attributes


def items_frame(world, idx, images: bool = True) -> pd.DataFrame:
    """Rows of the ``items`` table (contract columns) for item indices ``idx``."""
    idx = np.asarray(idx, dtype=np.int64)
    a = item_attributes(world, idx)
    titles, descriptions, blobs = [], [], []
    png = _u(world.seed, KIND_ITEM, idx, 0, _F_PNG) < PNG_SHARE
    for k, row in enumerate(a.itertuples(index=False)):
        title, description = item_text(world, int(row.index), row)
        titles.append(title)
        descriptions.append(description)
        if images:
            blobs.append(encode_image(render_item_image(world, int(row.index), row), bool(png[k])))
    return pd.DataFrame({
        "item_id": a["item_id"],
        "merchant_id": merchant_id(a["merchant"].to_numpy()),
        "category": np.asarray(CATEGORIES, dtype=object)[a["listed_category"].to_numpy()],
        "title": titles,
        "description": descriptions,
        "image": blobs if images else [None] * len(a),
        "price": a["price"].astype(np.float64),
        "updated_at": a["updated_at"].astype("datetime64[us]"),
    })


def truth_items_frame(world, idx) -> pd.DataFrame:
    a = item_attributes(world, idx)
    source = a["source_index"].to_numpy()
    return pd.DataFrame({
        "item_id": a["item_id"],
        "true_category": np.asarray(CATEGORIES, dtype=object)[a["true_category"].to_numpy()],
        "defect": a["defect"].astype(object),
        "source_item_id": [item_id(s) if s >= 0 else None for s in source],
    })


def users_frame(world, idx) -> pd.DataFrame:
    return user_attributes(world, idx)[["user_id", "age_band", "household", "zone"]].reset_index(drop=True)
