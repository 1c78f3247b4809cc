"""Scoring with a trained CameNN artifact, from cached item features: pure torch, no Spark.

    model = Predictor.load("artifacts/demo/model", device="cpu")
    p_ita, p_tia = model.score_items(text_embs, n_text_tokens, image_embs, categories, prices)
    out = model.item_outputs(text_embs, n_text_tokens, image_embs, categories, prices)  # + projections
    cvr = model.score_pairs(target..., behaviour..., user_fields)           # one row per candidate
    user_idx, item_ids, cvr = model.score_users(candidates..., behaviour..., user_fields)  # one row per user

``score_pairs`` reads encoder-output blobs for every item of every row: the reference path.
``item_outputs`` computes each item's projected tokens (``CameNN.project_items``, fp32 d_model
vectors: what an item contributes to any row), which the nightly job caches per (content,
model version) in ``item_projections``; ``score_users`` reads those, one row per user with its
behaviour once and its candidates as lists, and gives the same CVR as ``score_pairs``. For a
model that reads behaviour items pooled (``behaviour_tokens: pooled``: [CLS], mean text token,
mean patch), ``pool_behaviour_items`` reduces a projected item to those two means before it
travels, and ``score_users(..., pooled_behaviour=True)`` reads them.

The blobs are the ``item_features`` columns (``camenn.featurizer.pack_item_features``); the
rows go through the same path as training (``camenn.inputs``: FeatureVocab ids, ItemStore,
item_only_batch / full_batch), in batches of ``batch_size`` rows, each batch unpacked on its
own so memory stays bounded whatever the number of rows. The Spark UDFs (``udfs.predict``)
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
from camenn.featurizer import pack_tokens
from camenn.inputs import FeatureVocab, ItemStore, full_batch, item_only_batch
from camenn.logits import logit, sigmoid
from camenn.model import CameNNBatch

__all__ = ["Predictor", "AUTOCAST_DTYPES", "pool_behaviour_items", "mean_logit"]

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _clean(values) -> list:
    """Spark/pandas hand over NaN or None for nulls; the vocab wants None."""
    return [None if _missing(v) else v for v in values]


def mean_logit(probs: Sequence[np.ndarray]) -> np.ndarray:
    """The sigmoid of the mean logit of each row over ``probs`` (one array per view): how a photo's
    views are combined. In logits, not probabilities: one view sure of a mismatch (0.001) and one
    unsure (0.5) say "mismatch", where a mean probability would say 0.25."""
    z = np.stack([logit(p) for p in probs])  # (V, n)
    return sigmoid(z.mean(0))


def _seq(value) -> list:
    return [] if value is None or (isinstance(value, float) and value != value) else list(value)


FP32 = np.dtype("<f4")   # projected tokens' blob dtype (featurizer.BLOB_FP32)


def pool_behaviour_items(text_projs: Sequence, n_text_tokens: Sequence[int], image_projs: Sequence, d_model: int,
                         n_patches: int) -> tuple[list, list[int], list]:
    """Projected items -> all a pooled-behaviour model reads of them as behaviour: (text, n, image) blobs, fp32.

    ``CameNN.embed_items_pooled`` averages a behaviour item's real text tokens and its patches;
    here the averages are taken once per item before the item travels (d_model floats each,
    against (n + n_patches) x d_model), and the model averages one token, which is the
    identity up to an ulp. An item without text keeps no text token (n = 0, as before).
    """
    texts, counts, images = [], [], []
    for t, n, im in zip(text_projs, n_text_tokens, image_projs):
        n = int(n)
        if t is None or im is None:
            texts.append(t), counts.append(n), images.append(im)
            continue
        if len(t) != n * d_model * FP32.itemsize or len(im) != n_patches * d_model * FP32.itemsize:
            raise ValueError(f"projected blob sizes {len(t)}/{len(im)} bytes do not match n_text_tokens={n}, "
                             f"d_model={d_model}, n_patches={n_patches}")
        text = np.frombuffer(t, dtype=FP32).reshape(n, d_model)  # (n, D)
        image = np.frombuffer(im, dtype=FP32).reshape(n_patches, d_model)  # (P, D)
        texts.append(text.mean(0, dtype=np.float32).astype(FP32).tobytes() if n else b"")  # (D,) or nothing
        counts.append(min(n, 1))
        images.append(image.mean(0, dtype=np.float32).astype(FP32).tobytes())  # (D,)
    return texts, counts, images


@dataclass
class Predictor:
    artifact: Artifact
    vocab: FeatureVocab
    device: torch.device
    autocast_dtype: torch.dtype | None = None

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device = "cpu", autocast: str | None = None) -> Predictor:
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
                   categories: Sequence[str | None], prices: Sequence[float | None], projected: bool = False) -> ItemStore:
        """Rows of encoder-output blobs, or with ``projected`` of projected-token blobs (item_projections)."""
        feats = self.vocab.item_feats(_clean(categories), _clean(prices))  # (B, Fi)
        text_dim, image_dim, n_patches = self.dims
        if projected:
            text_dim = image_dim = int(self.config.d_model)
        return ItemStore.from_blobs(range(len(text_embs)), list(text_embs), [int(n) for n in n_text_tokens],
                                    list(image_embs), feats, text_dim, image_dim, n_patches, projected=projected)

    def autocast(self):
        """The autocast context of this predictor (a no-op on CPU or with autocast none)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _predict(self, batch: CameNNBatch, tasks: tuple[str, ...]) -> dict[str, np.ndarray]:
        with torch.inference_mode(), self.autocast():
            probs = self.model.predict(batch.to(self.device, non_blocking=True), tasks)
        return {t: p.float().cpu().numpy().astype(np.float64) for t, p in probs.items()}

    # ------------------------------------------------------------------ scoring

    def score_items(self, text_embs: Sequence[bytes], n_text_tokens: Sequence[int], image_embs: Sequence[bytes],
                    categories: Sequence[str | None], prices: Sequence[float | None],
                    batch_size: int = 256, projected: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Item-only forward: (p_ita, p_tia), float64 arrays of len(rows).

        With ``projected`` the blobs are cached projected tokens (item_outputs' text_proj /
        image_proj): the scores of an item whose category or price changed, its content not.
        """
        missing = [t for t in ("ita", "tia") if t not in self.tasks]
        if missing:
            raise ValueError(f"model {self.version} has no {missing} head(s) (tasks={self.tasks}); it cannot score alignment")
        n = len(text_embs)
        p_ita, p_tia = np.empty(n), np.empty(n)
        for s in range(0, n, batch_size):
            e = min(n, s + batch_size)
            store = self.item_store(text_embs[s:e], n_text_tokens[s:e], image_embs[s:e], categories[s:e], prices[s:e],
                                    projected=projected)
            probs = self._predict(item_only_batch(store, torch.arange(e - s)), ("ita", "tia"))
            p_ita[s:e], p_tia[s:e] = probs["ita"], probs["tia"]
        return p_ita, p_tia

    def item_outputs(self, text_embs: Sequence[bytes], n_text_tokens: Sequence[int], image_embs: Sequence[bytes],
                     categories: Sequence[str | None], prices: Sequence[float | None],
                     batch_size: int = 256, view_image_embs: Sequence[bytes] | None = None,
                     n_views: int = 0) -> dict[str, list | np.ndarray]:
        """One item-only pass: projected tokens of every row, and p_ita / p_tia when the model has those heads.

        Returns text_proj, image_proj (fp32 blobs of (n_text_tokens, D) and (P, D)),
        n_text_tokens, and p_ita, p_tia (float64 arrays, NaN without the heads). The scores are
        computed from the projections themselves, so cached projections reproduce them.

        With ``n_views`` > 0, p_ita / p_tia are the :func:`mean_logit` over the photo and the
        first ``n_views`` views in ``view_image_embs`` (``featurizer.pack_views`` blobs; a row may
        hold more), each view scored with the item's own text, category and price as the photo
        is. The projections stay the photo's: CVR reads the photo alone.
        """
        n = len(text_embs)
        align = {"ita", "tia"} <= set(self.tasks)
        p_ita, p_tia = np.full(n, np.nan), np.full(n, np.nan)
        text_proj: list[bytes] = []
        image_proj: list[bytes] = []
        counts = [int(c) for c in n_text_tokens]
        for s in range(0, n, batch_size):
            e = min(n, s + batch_size)
            store = self.item_store(text_embs[s:e], counts[s:e], image_embs[s:e], categories[s:e], prices[s:e])
            items = store.gather(torch.arange(e - s)).to(self.device)
            with torch.inference_mode(), self.autocast():
                projected = self.model.project_items(items)
                if align:
                    probs = self.model.predict(CameNNBatch(target=projected), ("ita", "tia"))
            text, image = projected.text.float().cpu(), projected.image.float().cpu()  # (b, L, D), (b, P, D)
            for r in range(e - s):
                text_proj.append(pack_tokens(text[r, :counts[s + r]]))
                image_proj.append(pack_tokens(image[r]))
            if align:
                p_ita[s:e] = probs["ita"].float().cpu().numpy()
                p_tia[s:e] = probs["tia"].float().cpu().numpy()
        if align and n_views:
            p_ita, p_tia = self._over_views(p_ita, p_tia, text_embs, counts, image_embs, categories, prices,
                                            view_image_embs, n_views, batch_size)
        return {"text_proj": text_proj, "n_text_tokens": counts, "image_proj": image_proj, "p_ita": p_ita, "p_tia": p_tia}

    def _over_views(self, p_ita, p_tia, text_embs, counts, image_embs, categories, prices, view_image_embs,
                    n_views: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(p_ita, p_tia) of the photo -> their mean logit with the first n_views views' scores."""
        if view_image_embs is None or len(view_image_embs) != len(text_embs):
            raise ValueError(f"{n_views} test-time views asked for, but the rows carry "
                             f"{'no' if view_image_embs is None else len(view_image_embs)} view blobs for {len(text_embs)} rows")
        size = len(image_embs[0]) if len(image_embs) else 0   # one view's bytes: a photo's image_emb
        for i, blob in enumerate(view_image_embs):
            if blob is None or len(blob) < n_views * size or len(blob) % size:
                raise ValueError(f"row {i}: its view blob holds {0 if blob is None else len(blob) / size:g} views of "
                                 f"{size} bytes, fewer than the {n_views} asked for (encode the item again)")
        ita, tia = [p_ita], [p_tia]
        for j in range(n_views):
            view_j = [blob[j * size:(j + 1) * size] for blob in view_image_embs]
            a, b = self.score_items(text_embs, counts, view_j, categories, prices, batch_size=batch_size)
            ita.append(a)
            tia.append(b)
        return mean_logit(ita), mean_logit(tia)

    def score_users(self, cand_item_ids: Sequence[Sequence[str]], cand_text: Sequence[Sequence[bytes]],
                    cand_n_text_tokens: Sequence[Sequence[int]], cand_image: Sequence[Sequence[bytes]],
                    cand_categories: Sequence[Sequence[str | None]], cand_prices: Sequence[Sequence[float | None]],
                    behaviour_text: Sequence[Sequence[bytes]], behaviour_n_text_tokens: Sequence[Sequence[int]],
                    behaviour_image: Sequence[Sequence[bytes]], behaviour_categories: Sequence[Sequence[str | None]],
                    behaviour_prices: Sequence[Sequence[float | None]], user_fields: Mapping[str, Sequence[str | None]],
                    batch_size: int = 256, pooled_behaviour: bool = False) -> tuple[np.ndarray, list[str], np.ndarray]:
        """CVR of every candidate of every user, from projected-token blobs; one input row per user.

        Row u holds user u's candidates (``cand_*[u]``, lists) and behaviour items (oldest first,
        the last ``max_behaviour`` are used), so a user's behaviour is unpacked once per model
        batch however many candidates it has. With ``pooled_behaviour`` the behaviour blobs are
        ``pool_behaviour_items``' (a model with ``behaviour_tokens: pooled`` only). Returns (user
        row index, item_id, cvr) per candidate.
        """
        if "cvr" not in self.tasks:
            raise ValueError(f"model {self.version} has no cvr head (tasks={self.tasks})")
        if pooled_behaviour and self.config.behaviour_tokens != "pooled":
            raise ValueError(f"model {self.version} reads behaviour items as {self.config.behaviour_tokens!r} runs: "
                             "pooled behaviour rows would lose what it reads")
        n_users = len(cand_item_ids)
        users = self.vocab.user_feats({f: _clean(user_fields.get(f, [None] * n_users)) for f in self.vocab.profile_fields})  # (U, Fu)
        out_user: list[int] = []
        out_item: list[str] = []
        out_cvr: list[np.ndarray] = []
        pending: list[tuple[int, int]] = []

        def flush():
            batch = self.user_batch(pending, cand_text, cand_n_text_tokens, cand_image, cand_categories, cand_prices,
                                    behaviour_text, behaviour_n_text_tokens, behaviour_image, behaviour_categories,
                                    behaviour_prices, users, pooled_behaviour=pooled_behaviour)
            out_cvr.append(self._predict(batch, ("cvr",))["cvr"])
            out_user.extend(u for u, _ in pending)
            out_item.extend(_seq(cand_item_ids[u])[j] for u, j in pending)
            pending.clear()

        for u in range(n_users):
            for j in range(len(_seq(cand_item_ids[u]))):
                pending.append((u, j))
                if len(pending) == batch_size:
                    flush()
        if pending:
            flush()
        cvr = np.concatenate(out_cvr) if out_cvr else np.empty(0)
        return np.asarray(out_user, dtype=np.int64), out_item, cvr

    def user_batch(self, rows: Sequence[tuple[int, int]], cand_text, cand_n_text_tokens, cand_image, cand_categories,
                   cand_prices, behaviour_text, behaviour_n_text_tokens, behaviour_image, behaviour_categories,
                   behaviour_prices, users: np.ndarray, projected: bool = True,
                   pooled_behaviour: bool = False) -> CameNNBatch:
        """The model input of candidates ``rows`` = (user row u, candidate j) from score_users' columns.

        Each user's behaviour items enter the batch's store once, however many of its
        candidates the batch holds; ``users`` is vocab.user_feats of the user rows (U, Fu).
        Blobs are projected tokens (the nightly path) or, with ``projected=False``, encoder
        outputs (``score_pairs``, the reference path).
        """
        cands = [(_seq(cand_text[u])[j], int(_seq(cand_n_text_tokens[u])[j]), _seq(cand_image[u])[j],
                  _seq(cand_categories[u])[j], _seq(cand_prices[u])[j]) for u, j in rows]
        seqs = {u: self._behaviour_of(u, behaviour_text, behaviour_n_text_tokens, behaviour_image,
                                      behaviour_categories, behaviour_prices) for u in dict.fromkeys(u for u, _ in rows)}
        if pooled_behaviour:
            seqs = {u: [(t, k, self._patches_of_pooled(im), c, p) for t, k, im, c, p in seq] for u, seq in seqs.items()}
        b = len(cands)
        start, at = {}, b
        for u, seq in seqs.items():
            start[u] = at
            at += len(seq)
        every = cands + [item for seq in seqs.values() for item in seq]
        store = self.item_store(*(list(col) for col in zip(*every)), projected=projected)
        slots = max((len(q) for q in seqs.values()), default=0)
        behaviour = torch.full((b, slots), -1, dtype=torch.long)  # (b, slots), -1 = empty slot
        for r, (u, _) in enumerate(rows):
            behaviour[r, :len(seqs[u])] = torch.arange(start[u], start[u] + len(seqs[u]))
        user_rows = torch.as_tensor(users[[u for u, _ in rows]])  # (b, Fu)
        return full_batch(store, torch.arange(b), behaviour, user_rows)

    def score_pairs(self, target_text_embs: Sequence[bytes], target_n_text_tokens: Sequence[int],
                    target_image_embs: Sequence[bytes], target_categories: Sequence[str | None],
                    target_prices: Sequence[float | None],
                    behaviour_text_embs: Sequence[Sequence[bytes]], behaviour_n_text_tokens: Sequence[Sequence[int]],
                    behaviour_image_embs: Sequence[Sequence[bytes]], behaviour_categories: Sequence[Sequence[str | None]],
                    behaviour_prices: Sequence[Sequence[float | None]],
                    user_fields: Mapping[str, Sequence[str | None]], batch_size: int = 256) -> np.ndarray:
        """CVR of (user, target) rows: the user's behaviour items (oldest first) and profile fields.

        ``behaviour_*[i]`` hold row i's behaviour items (any length; the last ``max_behaviour``
        are used, the order the model was trained with). ``user_fields`` maps each of the
        model's profile fields (``vocab.profile_fields``) to one value per row (None = unknown).
        """
        if "cvr" not in self.tasks:
            raise ValueError(f"model {self.version} has no cvr head (tasks={self.tasks})")
        n = len(target_text_embs)
        users = self.vocab.user_feats({f: _clean(user_fields.get(f, [None] * n)) for f in self.vocab.profile_fields})  # (n, Fu)
        # each row is a "user" with one candidate: the same batch builder as the grouped path
        targets = [[[v] for v in col] for col in (target_text_embs, target_n_text_tokens, target_image_embs,
                                                  target_categories, target_prices)]
        out = np.empty(n)
        for s in range(0, n, batch_size):
            e = min(n, s + batch_size)
            batch = self.user_batch([(i, 0) for i in range(s, e)], *targets, behaviour_text_embs, behaviour_n_text_tokens,
                                    behaviour_image_embs, behaviour_categories, behaviour_prices, users, projected=False)
            out[s:e] = self._predict(batch, ("cvr",))["cvr"]
        return out

    def _patches_of_pooled(self, image: bytes) -> bytes:
        """A pooled item's mean patch (d_model fp32) as n_patches equal patches: the layout ItemStore reads."""
        d_model, n_patches = int(self.config.d_model), self.dims[2]
        if len(image) != d_model * FP32.itemsize:
            raise ValueError(f"pooled behaviour image blob of {len(image)} bytes, expected d_model={d_model} fp32 values")
        return np.tile(np.frombuffer(image, dtype=FP32), n_patches).tobytes()  # (P * D,)

    def _behaviour_of(self, i, texts, counts, images, categories, prices) -> list[tuple]:
        """Row i's behaviour items as (text_emb, n_text_tokens, image_emb, category, price), the last max_behaviour."""
        t, k, im = _seq(texts[i]), _seq(counts[i]), _seq(images[i])
        c, p = _seq(categories[i]) or [None] * len(t), _seq(prices[i]) or [None] * len(t)
        if not len(t) == len(k) == len(im) == len(c) == len(p):
            raise ValueError(f"row {i}: behaviour arrays differ in length: {len(t)}, {len(k)}, {len(im)}, {len(c)}, {len(p)}")
        N = self.max_behaviour
        return list(zip(t, k, im, c, p))[-N:] if N else []
