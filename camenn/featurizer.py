"""One item featurizer for training and scoring: frozen encoders -> cacheable item features.

    featurizer = ItemFeaturizer.from_config(cfg.featurizer, device="cuda")
    prepared = featurizer.prepare(titles, descriptions, images)   # CPU: tokenize, decode, patch
    encoded = featurizer.encode(prepared, autocast_dtype=torch.bfloat16)
    blobs = pack_item_features(encoded)                           # rows for `item_features`
    views = featurizer.encode_views(featurizer.prepare_views(images, seeds, k))   # (B, K, P, Di)
    view_blobs = pack_views(views, encoded.valid)                 # item_features.view_image_emb

Rows that cannot be featurized carry a reason in ``errors`` and are encoded as nothing
(``valid`` False, zero tensors, ``None`` blobs); the caller quarantines them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import encoders
from .images import ImageDecodeError, decode_image, image_to_patches, normalize_patches, random_view

__all__ = [
    "FeaturizerConfig",
    "ItemFeaturizer",
    "PreparedItems",
    "EncodedItems",
    "pack_item_features",
    "unpack_item_features",
    "pack_tokens",
    "pack_views",
    "BLOB_FP16",
    "BLOB_FP32",
]

# Little-endian on disk whatever the worker's byte order, so blobs move between machines.
BLOB_FP16, BLOB_FP32 = np.dtype("<f2"), np.dtype("<f4")
_BLOB_DTYPE = BLOB_FP16
_AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class FeaturizerConfig:
    text_model_dir: str | None = None  # None = packaged all-MiniLM-L6-v2
    image_arch: str = encoders.DEFAULT_IMAGE_ARCH
    image_weights: str | None = None  # None = packaged EfficientNet-Lite0 weights
    max_text_tokens: int = 50
    patch_grid: int = 3
    patch_size: int = 224
    batch_size: int = 64
    unfreeze_last_layers: int = 0

    def __post_init__(self):
        # [CLS] + one token of each segment + two [SEP] is the least a title/description pair needs.
        checks = {
            "max_text_tokens": (self.max_text_tokens, 5),
            "patch_grid": (self.patch_grid, 1),
            "patch_size": (self.patch_size, 1),
            "batch_size": (self.batch_size, 1),
            "unfreeze_last_layers": (self.unfreeze_last_layers, 0),
        }
        for key, (value, least) in checks.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"featurizer.{key} must be an integer >= {least}, got {value!r}")


@dataclass
class PreparedItems:
    """CPU-side inputs for :meth:`ItemFeaturizer.encode`, one entry per input row."""

    input_ids: list[list[int]]  # per row, unpadded, with [CLS]/[SEP]; [] for invalid rows
    token_type_ids: list[list[int]]
    patches: torch.Tensor  # (B, P, 3, S, S) uint8; zeros for invalid rows
    errors: list[str | None]

    def __len__(self) -> int:
        return len(self.errors)

    @property
    def valid(self) -> torch.Tensor:
        return torch.tensor([e is None for e in self.errors], dtype=torch.bool)  # (B,)


@dataclass
class EncodedItems:
    text: torch.Tensor  # (B, L, Dt) float32, zero at padding and for invalid rows
    text_mask: torch.Tensor  # (B, L) bool, True = real token
    image: torch.Tensor  # (B, P, Di) float32
    valid: torch.Tensor  # (B,) bool
    errors: list[str | None] = field(default_factory=list)


def _as_text(value) -> str:
    # Spark/pandas hand over None or NaN for missing strings.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else str(value)


class ItemFeaturizer:
    """Frozen text + image encoders with the preprocessing that belongs to them."""

    def __init__(self, cfg: FeaturizerConfig, tokenizer, text_model, image_model, fingerprint: str, device="cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.tokenizer = tokenizer
        self.text_model = text_model.to(self.device)
        self.image_model = image_model.to(self.device)
        self.fingerprint = fingerprint
        self.max_text_tokens = cfg.max_text_tokens
        self.n_patches = cfg.patch_grid * cfg.patch_grid
        self.text_dim = int(text_model.config.hidden_size)
        self.image_dim = int(getattr(image_model, "head_hidden_size", None) or image_model.num_features)
        pre = encoders.image_preprocessing(cfg.image_arch)
        self.image_mean, self.image_std = pre["mean"], pre["std"]
        from timm.data.transforms import str_to_pil_interp

        self._resample = str_to_pil_interp(pre["interpolation"])
        limit = getattr(text_model.config, "max_position_embeddings", None)
        if limit is not None and cfg.max_text_tokens > limit:
            raise ValueError(f"featurizer.max_text_tokens={cfg.max_text_tokens} exceeds the text model's {limit} positions")

    @classmethod
    def from_config(cls, cfg: FeaturizerConfig, device: str | torch.device = "cpu") -> ItemFeaturizer:
        tokenizer, text_model = encoders.load_text_encoder(cfg.text_model_dir)
        image_model = encoders.load_image_encoder(cfg.image_arch, cfg.image_weights, num_classes=0)
        encoders.set_trainable_layers(text_model, cfg.unfreeze_last_layers)
        encoders.set_trainable_layers(image_model, cfg.unfreeze_last_layers)
        fingerprint = encoders.encoder_fingerprint(
            cfg.text_model_dir,
            cfg.image_arch,
            cfg.image_weights,
            max_text_tokens=cfg.max_text_tokens,
            patch_grid=cfg.patch_grid,
            patch_size=cfg.patch_size,
        )
        return cls(cfg, tokenizer, text_model, image_model, fingerprint, device=device)

    # ---------------------------------------------------------------- CPU side

    def prepare(
        self,
        titles: Sequence[str | None],
        descriptions: Sequence[str | None],
        images: Sequence[bytes | bytearray | memoryview | None],
    ) -> PreparedItems:
        """Tokenize (title, description) pairs and decode + patch images; never raises per row."""
        n = len(titles)
        if len(descriptions) != n or len(images) != n:
            raise ValueError(f"titles, descriptions and images differ in length: {n}, {len(descriptions)}, {len(images)}")
        titles = [_as_text(t).strip() for t in titles]
        descriptions = [_as_text(d).strip() for d in descriptions]
        text_errors, input_ids, token_type_ids = self._tokenize(titles, descriptions)

        grid, size = self.cfg.patch_grid, self.cfg.patch_size
        patches = torch.zeros(n, self.n_patches, 3, size, size, dtype=torch.uint8)  # (B, P, 3, S, S)
        errors: list[str | None] = []
        for i, data in enumerate(images):
            image_error = None
            if data is None or len(data) == 0:
                image_error = "image: missing"
            else:
                try:
                    img = decode_image(data, min_size=grid * size)
                    patches[i] = image_to_patches(img, grid, size, self._resample)  # (P, 3, S, S)
                except ImageDecodeError as e:
                    image_error = f"image: cannot decode ({e.reason})"
            reasons = [r for r in (text_errors[i], image_error) if r]
            errors.append("; ".join(reasons) if reasons else None)
        for i, e in enumerate(errors):
            if e is not None:
                input_ids[i], token_type_ids[i] = [], []
                patches[i].zero_()
        return PreparedItems(input_ids, token_type_ids, patches, errors)

    def _tokenize(self, titles: list[str], descriptions: list[str]):
        n = len(titles)
        errors: list[str | None] = [None] * n
        input_ids: list[list[int]] = [[] for _ in range(n)]
        token_type_ids: list[list[int]] = [[] for _ in range(n)]
        pairs = [i for i in range(n) if titles[i] and descriptions[i]]
        # A lone title or description is one segment: a pair with an empty side would add a
        # bare [SEP] that the encoder never saw in pre-training.
        singles = [i for i in range(n) if bool(titles[i]) != bool(descriptions[i])]
        for i in range(n):
            if not titles[i] and not descriptions[i]:
                errors[i] = "text: empty title and description"
        batches = [
            (pairs, [titles[i] for i in pairs], [descriptions[i] for i in pairs]),
            (singles, [titles[i] or descriptions[i] for i in singles], None),
        ]
        for rows, first, second in batches:
            if not rows:
                continue
            # longest_first trims the longer segment token by token, so a short title survives a
            # long description intact; over-long text is cut, never rejected.
            enc = self.tokenizer(
                first,
                second,
                truncation="longest_first",
                max_length=self.max_text_tokens,
                add_special_tokens=True,
                return_token_type_ids=True,
                return_attention_mask=False,
            )
            for j, i in enumerate(rows):
                input_ids[i] = enc["input_ids"][j]
                token_type_ids[i] = enc["token_type_ids"][j]
        return errors, input_ids, token_type_ids

    # ---------------------------------------------------------------- device side

    def encode(self, prepared: PreparedItems, autocast_dtype: torch.dtype | None = None) -> EncodedItems:
        """Run the encoders over the valid rows, ``batch_size`` items at a time, without grad.

        ``autocast_dtype`` (torch.bfloat16 / torch.float16) runs the encoders under autocast on
        this featurizer's device; outputs are float32 on CPU either way.
        """
        n = len(prepared)
        valid = prepared.valid  # (B,)
        rows = valid.nonzero().flatten().tolist()
        lengths = [len(prepared.input_ids[i]) for i in rows]
        longest = max(lengths, default=0)
        text = torch.zeros(n, longest, self.text_dim)  # (B, L, Dt)
        text_mask = torch.zeros(n, longest, dtype=torch.bool)  # (B, L)
        image = torch.zeros(n, self.n_patches, self.image_dim)  # (B, P, Di)
        with torch.inference_mode(), self._autocast(autocast_dtype):
            for start in range(0, len(rows), self.cfg.batch_size):
                chunk = rows[start : start + self.cfg.batch_size]
                hidden, mask = self._encode_text(prepared, chunk)  # (b, l, Dt), (b, l)
                text[chunk, : hidden.shape[1]] = hidden
                text_mask[chunk, : mask.shape[1]] = mask
                image[chunk] = self._encode_image(prepared.patches[chunk])  # (b, P, Di)
        return EncodedItems(text, text_mask, image, valid, list(prepared.errors))

    def _autocast(self, autocast_dtype: torch.dtype | None):
        if autocast_dtype is None:
            return contextlib.nullcontext()
        if autocast_dtype not in _AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {autocast_dtype}")
        return torch.autocast(device_type=self.device.type, dtype=autocast_dtype)

    def _encode_text(self, prepared: PreparedItems, chunk: list[int]):
        batch = self.tokenizer.pad(
            {"input_ids": [prepared.input_ids[i] for i in chunk], "token_type_ids": [prepared.token_type_ids[i] for i in chunk]},
            padding="longest",
            return_tensors="pt",
        )
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.text_model(**batch).last_hidden_state  # (b, l, Dt)
        mask = batch["attention_mask"].bool()  # (b, l)
        # Padding positions carry garbage vectors; zero them so packed/cached rows are clean.
        hidden = hidden.float().masked_fill(~mask[..., None], 0.0)  # (b, l, Dt)
        return hidden.cpu(), mask.cpu()

    def _encode_image(self, patches: torch.Tensor) -> torch.Tensor:
        b = patches.shape[0]
        x = patches.to(self.device).flatten(0, 1)  # (b*P, 3, S, S) uint8
        x = normalize_patches(x, self.image_mean, self.image_std)  # (b*P, 3, S, S) float32
        feats = self.image_model(x)  # (b*P, Di) pooled per patch
        return feats.float().view(b, self.n_patches, -1).cpu()  # (b, P, Di)

    # ---------------------------------------------------------------- test-time views

    def prepare_views(self, images: Sequence[bytes | bytearray | memoryview | None], seeds: Sequence[int],
                      n_views: int) -> torch.Tensor:
        """``n_views`` random views (:func:`camenn.images.random_view`) of each row's photo, as patches.

        Row i's views follow ``seeds[i]`` alone (the nightly job passes ``images.view_seed`` of the
        content hash), so a photo gets the same views on every night and worker. The photo is
        decoded again here rather than kept from :meth:`prepare`: a decoded phone photo is MBs, a
        chunk's patches are not. A row whose photo does not decode keeps zeros; ``prepare`` has
        already given it its reason. Returns uint8 (B, K, P, 3, S, S).
        """
        if len(seeds) != len(images):
            raise ValueError(f"images and seeds differ in length: {len(images)}, {len(seeds)}")
        grid, size = self.cfg.patch_grid, self.cfg.patch_size
        views = torch.zeros(len(images), n_views, self.n_patches, 3, size, size, dtype=torch.uint8)  # (B, K, P, 3, S, S)
        for i, (data, seed) in enumerate(zip(images, seeds)):
            if data is None or len(data) == 0:
                continue
            try:
                photo = decode_image(data, min_size=grid * size)
            except ImageDecodeError:
                continue
            rng = np.random.default_rng(seed)
            for j in range(n_views):
                views[i, j] = image_to_patches(random_view(photo, rng), grid, size, self._resample)  # (P, 3, S, S)
        return views

    def encode_views(self, views: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """uint8 view patches (B, K, P, 3, S, S) -> the image encoder's tokens (B, K, P, Di) float32 on CPU,
        ``batch_size`` views at a time: each view is a photo to the encoder."""
        b, k = views.shape[:2]
        flat = views.flatten(0, 1)  # (B*K, P, 3, S, S)
        out = torch.zeros(b * k, self.n_patches, self.image_dim)  # (B*K, P, Di)
        with torch.inference_mode(), self._autocast(autocast_dtype):
            for start in range(0, b * k, self.cfg.batch_size):
                out[start : start + self.cfg.batch_size] = self._encode_image(flat[start : start + self.cfg.batch_size])
        return out.view(b, k, self.n_patches, self.image_dim)  # (B, K, P, Di)

    def featurize(self, titles, descriptions, images, autocast_dtype: torch.dtype | None = None) -> EncodedItems:
        return self.encode(self.prepare(titles, descriptions, images), autocast_dtype=autocast_dtype)


# -------------------------------------------------------------------- storage


def pack_item_features(encoded: EncodedItems) -> list[tuple[bytes, int, bytes] | None]:
    """Per row: (text_emb fp16 bytes (n_tok, Dt), n_text_tokens, image_emb fp16 bytes (P, Di)); None if invalid."""
    out: list[tuple[bytes, int, bytes] | None] = []
    text = encoded.text.detach().cpu().numpy()  # (B, L, Dt)
    image = encoded.image.detach().cpu().numpy()  # (B, P, Di)
    n_tokens = encoded.text_mask.sum(dim=1).tolist()  # (B,)
    for i, ok in enumerate(encoded.valid.tolist()):
        if not ok:
            out.append(None)
            continue
        n = int(n_tokens[i])
        t = text[i, :n].astype(_BLOB_DTYPE)  # (n, Dt)
        im = image[i].astype(_BLOB_DTYPE)  # (P, Di)
        if not (np.isfinite(t).all() and np.isfinite(im).all()):
            # fp16 tops out at 65504; an encoder that exceeds it needs a wider blob format.
            raise OverflowError(f"row {i}: encoder outputs do not fit float16")
        out.append((t.tobytes(), n, im.tobytes()))
    return out


def pack_views(views: torch.Tensor, valid: torch.Tensor) -> list[bytes | None]:
    """Per row: its K views' image tokens (K, P, Di) as one fp16 blob, view after view; None if invalid.

    K is the blob's length over one view's (P * Di * 2 bytes): the reader slices view j as the
    j-th such run, the layout of ``image_emb`` for each view.
    """
    out: list[bytes | None] = []
    array = views.detach().cpu().numpy()  # (B, K, P, Di)
    for i, ok in enumerate(valid.tolist()):
        if not ok:
            out.append(None)
            continue
        blob = array[i].astype(_BLOB_DTYPE)  # (K, P, Di)
        if not np.isfinite(blob).all():
            raise OverflowError(f"row {i}: view encoder outputs do not fit float16")
        out.append(blob.tobytes())
    return out


def unpack_item_features(
    text_embs: Sequence[bytes],
    n_text_tokens: Sequence[int],
    image_embs: Sequence[bytes],
    text_dim: int,
    image_dim: int,
    n_patches: int,
    blob_dtype: np.dtype = BLOB_FP16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blobs from :func:`pack_item_features` -> (text (B, Lmax, Dt), text_mask (B, Lmax), image (B, P, Di)) float32.

    The one blob codec of the project: ``blob_dtype`` BLOB_FP32 reads the model's projected
    item tokens (``item_projections``, written by :func:`pack_tokens`) with the same layout.
    """
    b = len(text_embs)
    if len(n_text_tokens) != b or len(image_embs) != b:
        raise ValueError(f"text_embs, n_text_tokens and image_embs differ in length: {b}, {len(n_text_tokens)}, {len(image_embs)}")
    counts = [int(c) for c in n_text_tokens]
    longest = max(counts, default=0)
    text = np.zeros((b, longest, text_dim), dtype=np.float32)  # (B, Lmax, Dt)
    mask = np.zeros((b, longest), dtype=bool)  # (B, Lmax)
    image = np.zeros((b, n_patches, image_dim), dtype=np.float32)  # (B, P, Di)
    for i, (t, n, im) in enumerate(zip(text_embs, counts, image_embs)):
        if len(t) != n * text_dim * blob_dtype.itemsize or len(im) != n_patches * image_dim * blob_dtype.itemsize:
            raise ValueError(
                f"row {i}: blob sizes {len(t)}/{len(im)} bytes do not match n_text_tokens={n}, "
                f"text_dim={text_dim}, n_patches={n_patches}, image_dim={image_dim} ({blob_dtype})"
            )
        text[i, :n] = np.frombuffer(t, dtype=blob_dtype).reshape(n, text_dim)
        mask[i, :n] = True
        image[i] = np.frombuffer(im, dtype=blob_dtype).reshape(n_patches, image_dim)
    return torch.from_numpy(text), torch.from_numpy(mask), torch.from_numpy(image)


def pack_tokens(tokens: torch.Tensor, blob_dtype: np.dtype = BLOB_FP32) -> bytes:
    """One item's token vectors (n, D) as a little-endian blob that unpack_item_features reads."""
    return tokens.detach().cpu().numpy().astype(blob_dtype).tobytes()
