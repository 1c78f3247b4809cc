"""Scoring with a trained CameNN artifact, from cached item features: pure torch, no Spark.

    model = ScoringModel.load("artifacts/demo/model", device="cpu")
    p_ita, p_tia = model.score_items(text_embs, n_text_tokens, image_embs, categories, prices)
    cvr = model.score_pairs(target..., behaviour..., user_fields)

The blobs are the ``item_features`` columns (``camenn.featurizer.pack_item_features``); the
rows go through the same path as training (``camenn.inputs``: FeatureVocab ids, ItemStore,
item_only_batch / full_batch), in batches of ``batch_size`` rows, each batch unpacked on its
own so memory stays bounded whatever the number of rows. The Spark UDFs (``udfs.scoring``)
call exactly these methods, which is what the parity test holds them to.

The artifact's ``config.json`` carries, besides the model config: ``featurizer`` (the
FeaturizerConfig as a dict), ``encoder_fingerprint``, ``vocab`` (FeatureVocab.to_dict()),
``table_versions`` and ``metrics``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from camenn.checkpoint import Artifact, ArtifactError, load_artifact
from camenn.inputs import USER_FEATURES, FeatureVocab, ItemStore, full_batch, item_only_batch
from camenn.model import CameNNBatch

__all__ = ["ScoringModel", "AUTOCAST_DTYPES"]

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _clean(values) -> list:
    """Spark/pandas hand over NaN or None for nulls; the vocab wants None."""
    return [None if _missing(v) else v for v in values]


def _seq(value) -> list:
    return [] if value is None or (isinstance(value, float) and value != value) else list(value)


@dataclass
class ScoringModel:
    artifact: Artifact
    vocab: FeatureVocab
    device: torch.device
    autocast_dtype: torch.dtype | None = None

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device = "cpu", autocast: str | None = None) -> "ScoringModel":
        """load_artifact + the artifact's vocabulary; ``autocast`` ("bf16"/"fp16") applies on CUDA only."""
        artifact = load_artifact(model_dir, device=device)
        if "vocab" not in artifact.metadata:
            raise ArtifactError(f"artifact {model_dir}: config.json has no 'vocab' (not written by camenn.training?)")
        device = torch.device(device)
        dtype = AUTOCAST_DTYPES.get(autocast or "none") if device.type == "cuda" else None
        return cls(artifact=artifact, vocab=FeatureVocab.from_dict(artifact.metadata["vocab"]), device=device,
                   autocast_dtype=dtype)

    # ------------------------------------------------------------------ what the artifact says

    @property
    def model(self):
        return self.artifact.model

    @property
    def config(self):
        return self.artifact.config

    @property
    def version(self) -> str:
        return self.artifact.version

    @property
    def metadata(self) -> dict:
        return self.artifact.metadata

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.config.tasks)

    @property
    def max_behaviour(self) -> int:
        return int(self.config.max_behaviour)

    @property
    def encoder_fingerprint(self) -> str | None:
        return self.metadata.get("encoder_fingerprint")

    @property
    def dims(self) -> tuple[int, int, int]:
        """(text_dim, image_dim, n_patches) of the features this model reads."""
        return int(self.config.text_dim), int(self.config.image_dim), int(self.config.n_patches)

    # ------------------------------------------------------------------ rows -> inputs

    def item_store(self, text_embs: Sequence[bytes], n_text_tokens: Sequence[int], image_embs: Sequence[bytes],
                   categories: Sequence[str | None], prices: Sequence[float | None]) -> ItemStore:
        feats = self.vocab.item_feats(_clean(categories), _clean(prices))  # (B, Fi)
        text_dim, image_dim, n_patches = self.dims
        return ItemStore.from_blobs(range(len(text_embs)), list(text_embs), [int(n) for n in n_text_tokens],
                                    list(image_embs), feats, text_dim, image_dim, n_patches)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _predict(self, batch: CameNNBatch, tasks: tuple[str, ...]) -> dict[str, np.ndarray]:
        with torch.inference_mode(), self._autocast():
            probs = self.model.predict(batch.to(self.device, non_blocking=True), tasks)
        return {t: p.float().cpu().numpy().astype(np.float64) for t, p in probs.items()}

    # ------------------------------------------------------------------ scoring

    def score_items(self, text_embs: Sequence[bytes], n_text_tokens: Sequence[int], image_embs: Sequence[bytes],
                    categories: Sequence[str | None], prices: Sequence[float | None],
                    batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Item-only forward: (p_ita, p_tia), float64 arrays of len(rows)."""
        missing = [t for t in ("ita", "tia") if t not in self.tasks]
        if missing:
            raise ValueError(f"model {self.version} has no {missing} head(s) (tasks={self.tasks}); it cannot score alignment")
        n = len(text_embs)
        p_ita, p_tia = np.empty(n), np.empty(n)
        for s in range(0, n, batch_size):
            e = min(n, s + batch_size)
            store = self.item_store(text_embs[s:e], n_text_tokens[s:e], image_embs[s:e], categories[s:e], prices[s:e])
            probs = self._predict(item_only_batch(store, torch.arange(e - s)), ("ita", "tia"))
            p_ita[s:e], p_tia[s:e] = probs["ita"], probs["tia"]
        return p_ita, p_tia

    def score_pairs(self, target_text_embs: Sequence[bytes], target_n_text_tokens: Sequence[int],
                    target_image_embs: Sequence[bytes], target_categories: Sequence[str | None],
                    target_prices: Sequence[float | None],
                    behaviour_text_embs: Sequence[Sequence[bytes]], behaviour_n_text_tokens: Sequence[Sequence[int]],
                    behaviour_image_embs: Sequence[Sequence[bytes]], behaviour_categories: Sequence[Sequence[str | None]],
                    behaviour_prices: Sequence[Sequence[float | None]],
                    user_fields: Mapping[str, Sequence[str | None]], batch_size: int = 256) -> np.ndarray:
        """CVR of (user, target) rows: the user's behaviour items (oldest first) and profile fields.

        ``behaviour_*[i]`` hold row i's behaviour items (any length; the last ``max_behaviour``
        are used, the order the model was trained with). ``user_fields`` maps age_band,
        household, zone to one value per row (None = unknown).
        """
        if "cvr" not in self.tasks:
            raise ValueError(f"model {self.version} has no cvr head (tasks={self.tasks})")
        n, N = len(target_text_embs), self.max_behaviour
        users = self.vocab.user_feats({f: _clean(user_fields.get(f, [None] * n)) for f in USER_FEATURES})  # (n, Fu)
        out = np.empty(n)
        for s in range(0, n, batch_size):
            e = min(n, s + batch_size)
            rows = range(s, e)
            seqs = [self._behaviour_of(i, behaviour_text_embs, behaviour_n_text_tokens, behaviour_image_embs,
                                       behaviour_categories, behaviour_prices) for i in rows]
            flat = [item for seq in seqs for item in seq]
            b = e - s
            store = self.item_store(
                list(target_text_embs[s:e]) + [x[0] for x in flat],
                list(target_n_text_tokens[s:e]) + [x[1] for x in flat],
                list(target_image_embs[s:e]) + [x[2] for x in flat],
                list(target_categories[s:e]) + [x[3] for x in flat],
                list(target_prices[s:e]) + [x[4] for x in flat])
            slots = max((len(q) for q in seqs), default=0)
            behaviour = torch.full((b, slots), -1, dtype=torch.long)  # (b, slots), -1 = empty slot
            at = b
            for r, seq in enumerate(seqs):
                behaviour[r, :len(seq)] = torch.arange(at, at + len(seq))
                at += len(seq)
            batch = full_batch(store, torch.arange(b), behaviour, torch.as_tensor(users[s:e]))
            out[s:e] = self._predict(batch, ("cvr",))["cvr"]
        return out

    def _behaviour_of(self, i, texts, counts, images, categories, prices) -> list[tuple]:
        """Row i's behaviour items as (text_emb, n_text_tokens, image_emb, category, price), the last max_behaviour."""
        t, k, im = _seq(texts[i]), _seq(counts[i]), _seq(images[i])
        c, p = _seq(categories[i]) or [None] * len(t), _seq(prices[i]) or [None] * len(t)
        if not len(t) == len(k) == len(im) == len(c) == len(p):
            raise ValueError(f"row {i}: behaviour arrays differ in length: {len(t)}, {len(k)}, {len(im)}, {len(c)}, {len(p)}")
        N = self.max_behaviour
        return list(zip(t, k, im, c, p))[-N:] if N else []
