"""Helpers shared by the benchmarks: an untrained CameNN artifact of a config's model size, timing.

    vocab = table_vocab(spark, config)                      # from the items and users tables
    config = save_untrained_model(config, path, vocab, text_dim, image_dim, fingerprint)
    text_dim, image_dim = encoder_dims(fcfg)                # without loading any weights

The artifact is what jobs/train.py writes (config, weights, manifest, vocabulary, featurizer
settings and fingerprint), with random weights: the same FLOPs and bytes as a trained model,
scores that mean nothing. The returned config points ``scoring.model_dir`` at it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path


def table_vocab(spark, config):
    """FeatureVocab from the tables: distinct categories and user values, price deciles (Spark aggregates only)."""
    from camenn.inputs import FeatureVocab
    from pipeline import tables

    items = tables.read_table(spark, config, "items")
    users = tables.read_table(spark, config, "users")
    cats = [r[0] for r in items.select("category").distinct().collect()]
    edges = items.approxQuantile("price", [i / 10 for i in range(1, 10)], 0.01)
    return FeatureVocab(categories=sorted(c for c in cats if c), price_edges=sorted(set(edges)),
                        user_values={f: sorted(r[0] for r in users.select(f).distinct().collect() if r[0] is not None)
                                     for f in config.data.profile_fields})


def encoder_dims(fcfg) -> tuple[int, int]:
    """(text_dim, image_dim) of the configured encoders, read from their configs: no weights are loaded."""
    import timm

    from camenn import encoders

    text_cfg = json.loads((encoders._resolve_text_dir(fcfg.text_model_dir) / "config.json").read_text())
    image = timm.create_model(fcfg.image_arch, pretrained=False, num_classes=0)
    return int(text_cfg["hidden_size"]), int(getattr(image, "head_hidden_size", None) or image.num_features)


def save_untrained_model(config, path: Path, vocab, text_dim: int, image_dim: int, fingerprint: str, seed: int = 0):
    """An untrained model of ``config.model``'s settings at ``path``; returns config scoring with it."""
    import torch

    from camenn.checkpoint import write_artifact
    from camenn.model import create_model_from_config
    from camenn.training import model_config_from_spec

    fcfg = config.featurizer.to_featurizer_config()
    # the same spec -> model config mapping as training, so every model setting (behaviour_tokens, ...) applies
    spec = {"model": config.model.model_dump(mode="json"), "n_patches": fcfg.patch_grid * fcfg.patch_grid,
            "max_text_tokens": fcfg.max_text_tokens}
    torch.manual_seed(seed)
    model = create_model_from_config(model_config_from_spec(spec, vocab, text_dim, image_dim))
    write_artifact(path, model, {"featurizer": asdict(fcfg), "encoder_fingerprint": fingerprint,
                                "vocab": vocab.to_dict(), "table_versions": {}, "metrics": {}}, overwrite=True)
    return config.model_copy(update={"scoring": config.scoring.model_copy(update={"model_dir": str(path)})})


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def matmul_peak(threads: int, n: int = 2048, reps: int = 5) -> float:
    """Dense fp32 matmul FLOP/s with ``threads`` torch threads (best of reps); the thread count is restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / best


def device_matmul_peak(device: str, n: int = 8192, reps: int = 10) -> tuple[float, str]:
    """(FLOP/s, what was measured) of a dense matmul on ``device``: bf16 n^3 on CUDA, mean of
    ``reps`` after warm-ups; on CPU the fp32 2048^3 figure of matmul_peak with torch's threads."""
    import torch

    if not str(device).startswith("cuda"):
        return matmul_peak(torch.get_num_threads()), f"fp32 2048^3, {torch.get_num_threads()} thread(s)"
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b)
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t), f"bf16 {n}^3, mean of {reps}"


def model_flops(cfg, text_tokens: int, behaviour: int) -> tuple[int, int]:
    """(FLOPs per item of the item pass, FLOPs per CVR pair from projected tokens) of a CameNN config.

    count_flops_per_item counts a tower per task; the item pass runs the ita and tia towers, CVR
    the cvr tower only, and a CVR pair starts from cached projections, so those are taken out.
    """
    import dataclasses

    from camenn.model import count_flops_per_item

    item_tasks = tuple(t for t in cfg.tasks if t in ("ita", "tia"))
    item = count_flops_per_item(dataclasses.replace(cfg, tasks=item_tasks), n_behaviour=0, n_text_tokens=text_tokens)
    projections = 2 * (text_tokens * cfg.text_dim * cfg.d_model + cfg.n_patches * cfg.image_dim * cfg.d_model)
    pair = (count_flops_per_item(dataclasses.replace(cfg, tasks=("cvr",)), n_behaviour=behaviour,
                                 n_text_tokens=text_tokens, with_user=True) - (behaviour + 1) * projections)
    return item, pair


def encoder_flops(featurizer, titles, descriptions, images) -> dict:
    """FLOPs per item of the frozen encoders (FlopCounterMode), on one real batch of these items.

    text_at_max_tokens: the text encoder on the batch's (title, description) pairs padded to
    max_text_tokens; image: the image encoder on the batch's n_patches patches of patch_size;
    real_batch: one ``ItemFeaturizer.encode`` of the batch (text padded to its longest row).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from camenn.images import normalize_patches

    prepared = featurizer.prepare(list(titles), list(descriptions), list(images))
    rows = [i for i, e in enumerate(prepared.errors) if e is None]
    if not rows:
        raise ValueError("no valid item in the FLOPs batch")
    b = len(rows)
    tok = featurizer.tokenizer.pad({"input_ids": [prepared.input_ids[i] for i in rows],
                                    "token_type_ids": [prepared.token_type_ids[i] for i in rows]},
                                   padding="max_length", max_length=featurizer.max_text_tokens, return_tensors="pt")
    tok = {k: v.to(featurizer.device) for k, v in tok.items()}
    x = normalize_patches(prepared.patches[rows].to(featurizer.device).flatten(0, 1), featurizer.image_mean,
                          featurizer.image_std)  # (b*P, 3, S, S)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as text_counter:
            featurizer.text_model(**tok)
        with FlopCounterMode(display=False) as image_counter:
            featurizer.image_model(x)
    sub = type(prepared)([prepared.input_ids[i] for i in rows], [prepared.token_type_ids[i] for i in rows],
                         prepared.patches[rows], [None] * b)
    with FlopCounterMode(display=False) as real_counter:
        featurizer.encode(sub)
    text = text_counter.get_total_flops() / b
    image = image_counter.get_total_flops() / b
    return {"batch_items": b, "max_text_tokens": featurizer.max_text_tokens,
            "mean_text_tokens": sum(len(prepared.input_ids[i]) for i in rows) / b,
            "n_patches": featurizer.n_patches, "patch_size": featurizer.cfg.patch_size,
            "text_per_item_at_max_tokens": text, "image_per_item": image, "per_item_at_max_tokens": text + image,
            "per_item_real_batch": real_counter.get_total_flops() / b}


def grocery_descriptions(grocery: Path) -> dict[str, str]:
    """GroceryStore class name -> its product description (the dataset's iconic descriptions)."""
    import glob

    out = {}
    for path in glob.glob(str(grocery / "iconic-images-and-descriptions" / "**" / "*_Description.txt"), recursive=True):
        out[Path(path).name[: -len("_Description.txt")]] = " ".join(Path(path).read_text(errors="replace").split())
    return out


def write_json(path: str | None, figures: dict) -> None:
    """A benchmark's --json output (nothing when no path was given)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(figures, indent=2, default=str))
