"""From table rows to model inputs: one path for training, scoring and notebooks.

``FeatureVocab`` maps the categorical and numeric item/user fields to embedding ids and is
saved in the model artifact, so scoring uses exactly the ids training used. ``ItemStore`` holds
cached encoder outputs (the ``item_features`` blobs) of a set of items as dense tensors, so a
batch, behaviour sequences included, is a gather by item index.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from camenn.featurizer import BLOB_FP16, BLOB_FP32, unpack_item_features
from camenn.model import CameNNBatch, ItemTokens

ITEM_FEATURES = ("category", "price_bucket")
USER_FEATURES = ("age_band", "household", "zone")   # the synthetic world's profile: fit()'s default
UNKNOWN = 0  # id 0 of every feature: unknown value, and padding


@dataclass
class FeatureVocab:
    categories: list[str]
    price_edges: list[float]
    # profile field -> its values; the keys, in order, are the profile fields the model embeds
    user_values: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(cls, categories: Sequence[str], prices: Sequence[float], user_values: dict[str, Sequence[str]],
            n_price_buckets: int = 10, profile_fields: Sequence[str] = USER_FEATURES) -> FeatureVocab:
        """Vocabularies from distinct values; price buckets from quantiles (computed by the caller at scale).

        ``profile_fields``: the users table's profile columns (config data.profile_fields), in
        the order of the model's user embeddings.
        """
        prices = np.asarray([p for p in prices if p is not None and np.isfinite(p)], dtype=np.float64)
        qs = np.quantile(prices, np.linspace(0, 1, n_price_buckets + 1)[1:-1]) if len(prices) else np.array([])
        return cls(
            categories=sorted({c for c in categories if c}),
            price_edges=sorted({float(q) for q in qs}),
            user_values={f: sorted({str(v) for v in user_values.get(f, ()) if v is not None}) for f in profile_fields},
        )

    @property
    def profile_fields(self) -> tuple[str, ...]:
        return tuple(self.user_values)

    @property
    def item_feature_sizes(self) -> dict[str, int]:
        return {"category": len(self.categories) + 1, "price_bucket": len(self.price_edges) + 2}

    @property
    def user_feature_sizes(self) -> dict[str, int]:
        return {f: len(values) + 1 for f, values in self.user_values.items()}

    def item_feats(self, categories: Sequence[str | None], prices: Sequence[float | None]) -> np.ndarray:
        """(B, 2) int64: category id and price bucket, 0 where unknown."""
        lookup = {c: i + 1 for i, c in enumerate(self.categories)}
        out = np.zeros((len(categories), len(ITEM_FEATURES)), dtype=np.int64)  # (B, Fi)
        for row, (category, price) in enumerate(zip(categories, prices)):
            out[row, 0] = lookup.get(category, UNKNOWN)
            if price is not None and np.isfinite(price):
                out[row, 1] = bisect.bisect_right(self.price_edges, float(price)) + 1
        return out

    def user_feats(self, columns: dict[str, Sequence[str | None]]) -> np.ndarray:
        """(B, Fu) int64 from one sequence per profile field, 0 where unknown or missing."""
        n = len(next(iter(columns.values()))) if columns else 0
        out = np.zeros((n, len(self.user_values)), dtype=np.int64)  # (B, Fu)
        for j, (name, known) in enumerate(self.user_values.items()):
            lookup = {v: i + 1 for i, v in enumerate(known)}
            values = columns.get(name)
            if values is not None:
                out[:, j] = [lookup.get(None if v is None else str(v), UNKNOWN) for v in values]
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureVocab:
        return cls(**data)


class ItemStore:
    """Encoder outputs and item features of a set of items, addressable by row index.

    Encoder outputs stay float16 (as cached) until a batch is gathered, which halves the memory
    of a demo-sized catalogue held for training. Projected items (the model's own d_model input
    tokens, ``CameNN.project_items``) stay float32, as cached in ``item_projections``.
    """

    def __init__(self, item_ids: Sequence[str], text: torch.Tensor, text_mask: torch.Tensor,
                 image: torch.Tensor, feats: torch.Tensor, projected: bool = False):
        self.item_ids = list(item_ids)
        self.index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.projected = projected
        dtype = torch.float32 if projected else torch.float16
        self.text = text.to(dtype)              # (N, L, Dt) or (N, L, D) projected
        self.text_mask = text_mask              # (N, L) bool
        self.image = image.to(dtype)            # (N, P, Di) or (N, P, D) projected
        self.feats = feats.long()               # (N, Fi)

    @classmethod
    def from_blobs(cls, item_ids, text_embs, n_text_tokens, image_embs, feats: np.ndarray,
                   text_dim: int, image_dim: int, n_patches: int, projected: bool = False) -> ItemStore:
        """Encoder-output blobs (fp16, item_features), or with ``projected`` the model's fp32 d_model tokens."""
        text, mask, image = unpack_item_features(text_embs, n_text_tokens, image_embs, text_dim, image_dim, n_patches,
                                                 blob_dtype=BLOB_FP32 if projected else BLOB_FP16)
        return cls(item_ids, text, mask, image, torch.as_tensor(feats), projected=projected)

    def __len__(self) -> int:
        return len(self.item_ids)

    def lookup(self, item_ids: Sequence[str]) -> torch.Tensor:
        """Row indexes of item ids; -1 for ids the store does not hold."""
        return torch.tensor([self.index.get(i, -1) for i in item_ids], dtype=torch.long)

    def gather(self, idx: torch.Tensor) -> ItemTokens:
        """Items at ``idx`` of any shape (...); -1 gives an all-padding item."""
        safe = idx.clamp(min=0)
        present = (idx >= 0).unsqueeze(-1)                                  # (..., 1)
        return ItemTokens(
            text=self.text[safe].float(),                                    # (..., L, Dt)
            text_mask=self.text_mask[safe] & present,                        # (..., L)
            image=self.image[safe].float(),                                  # (..., P, Di)
            feats=self.feats[safe] * present,                                # (..., Fi)
            projected=self.projected,
        )


def item_only_batch(store: ItemStore, idx: torch.Tensor) -> CameNNBatch:
    return CameNNBatch(target=store.gather(idx))                             # idx (B,)


def full_batch(store: ItemStore, target_idx: torch.Tensor, behaviour_idx: torch.Tensor,
               user_feats: torch.Tensor) -> CameNNBatch:
    """target_idx (B,), behaviour_idx (B, N) with -1 padding at the end, user_feats (B, Fu)."""
    return CameNNBatch(
        target=store.gather(target_idx),
        behaviour=store.gather(behaviour_idx),
        behaviour_mask=behaviour_idx >= 0,                                   # (B, N)
        user_feats=user_feats,
    )
