"""GroceryStore: which layout of image tokens tells the products apart best? (issue 15: "a global
image token beside the patches", not measured until now)

    /tmp/jobslot .venv/bin/python benchmarks/bench_grocery_image_layout.py \
        --json benchmarks/results/bench_grocery_image_layout.json

Each layout encodes every training and validation photo with the frozen EfficientNet-Lite0 of the
featurizer (its preprocessing: resize, the encoder's mean and std) and keeps the encoder's pooled
vector of each token:
- ``2x2@112``: the photo squared to 224 px and cut into 2x2 patches (``conf/grocery.yaml`` today);
- ``3x3@64``: the demo's 3x3 patches of 64 px;
- ``1x1@224``: the whole photo, squared to 224 px (a global token);
- ``1x1@224 crop``: the centre square of the photo at 224 px (no stretch);
- ``2x2@112 + 1x1@224``: the patches beside the global token (what a global token would add);
- ``2x2@224``, ``3x3@112``: more pixels a product (the photo at 448 or 336 px), for the detail that
  tells two apples apart (4x and 2.25x the encoder's work of ``2x2@112``).

A layout's photo vector is the mean of its tokens, or the tokens side by side (``concat``: keeps
where each patch is), unit length. The probe is a multinomial logistic regression on the training
photos (C picked from a grid on the training photos of the training job's held-out hash split,
then refitted on all), scored on the 296 validation photos, which no layout or C ever saw:
- product accuracy (81 products);
- within its coarse class: the argmax among the products of the photo's own coarse class (a
  Granny Smith against the other apples), the image side of a same-class swap;
- coarse-class accuracy (42 classes, from the product probabilities summed per class).

This is the probe of the featurizer's output, not CameNN: a layout that does not lift it gives the
model nothing new to learn from. One run, as the machine gives it; the JSON has the timings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import write_json  # noqa: E402
from bench_grocery import DATA, read_classes, read_split, say  # noqa: E402
from PIL import Image  # noqa: E402

from camenn.featurizer import FeaturizerConfig, ItemFeaturizer  # noqa: E402
from camenn.images import decode_image, image_to_patches, normalize_patches  # noqa: E402
from camenn.training import item_split  # noqa: E402

# name -> (grid, patch size, centre crop)
TOKENS = {"2x2@112": (2, 112, False), "3x3@64": (3, 64, False), "1x1@224": (1, 224, False), "1x1@224 crop": (1, 224, True),
          "2x2@224": (2, 224, False), "3x3@112": (3, 112, False)}
# layout -> (token sets, how a photo's vector is made of them)
LAYOUTS = {
    "2x2@112 mean": (["2x2@112"], "mean"),
    "2x2@112 concat": (["2x2@112"], "concat"),
    "3x3@64 mean": (["3x3@64"], "mean"),
    "1x1@224": (["1x1@224"], "mean"),
    "1x1@224 crop": (["1x1@224 crop"], "mean"),
    "2x2@112 mean + 1x1@224": (["2x2@112", "1x1@224"], "mean"),
    "2x2@112 concat + 1x1@224": (["2x2@112", "1x1@224"], "concat"),
    "2x2@224 mean": (["2x2@224"], "mean"),
    "3x3@112 mean": (["3x3@112"], "mean"),
    "2x2@112 mean + 2x2@224 mean": (["2x2@112", "2x2@224"], "mean"),
}
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--limit", type=int, default=None, help="photos per split (a stride over each list; tests)")
    p.add_argument("--tokens", nargs="+", default=list(TOKENS), choices=list(TOKENS),
                   help="token sets to encode; the layouts made of them alone are probed")
    p.add_argument("--batch-size", type=int, default=32, help="photos per encoder call")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def centre_square(img: Image.Image) -> Image.Image:
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side))


def encode_tokens(featurizer: ItemFeaturizer, data: Path, rows: list[dict], grid: int, size: int, crop: bool,
                  batch_size: int, t0: float) -> np.ndarray:
    """Every photo's ``grid x grid`` tokens of ``size`` px: float32 (N, grid*grid, Di)."""
    out = np.zeros((len(rows), grid * grid, featurizer.image_dim), dtype=np.float32)  # (N, P, Di)
    for start in range(0, len(rows), batch_size):
        batch = []
        for row in rows[start: start + batch_size]:
            img = decode_image((data / row["path"]).read_bytes(), min_size=grid * size)
            batch.append(image_to_patches(centre_square(img) if crop else img, grid, size, featurizer._resample))  # (P, 3, S, S)
        x = torch.stack(batch)  # (b, P, 3, S, S) uint8
        x = normalize_patches(x.flatten(0, 1), featurizer.image_mean, featurizer.image_std)  # (b*P, 3, S, S)
        with torch.inference_mode():
            feats = featurizer.image_model(x)  # (b*P, Di)
        out[start: start + len(batch)] = feats.float().view(len(batch), grid * grid, -1).numpy()
        if (start // batch_size) % 20 == 0:
            say(f"  {grid}x{grid}@{size}{' crop' if crop else ''}: {start + len(batch)} / {len(rows)} photos", t0)
    return out


def photo_vectors(tokens: dict[str, np.ndarray], names: list[str], how: str) -> np.ndarray:
    parts = []
    for name in names:
        t = tokens[name]  # (N, P, Di)
        parts.append(t.mean(axis=1) if how == "mean" else t.reshape(len(t), -1))  # (N, Di) or (N, P*Di)
    parts = [p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p in parts]
    return np.concatenate(parts, axis=1)  # (N, sum of dims)


def fit_probe(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=3000).fit(x, y)


def figures(probe, x: np.ndarray, fine: np.ndarray, coarse_of: dict[int, str]) -> dict:
    proba = probe.predict_proba(x)  # (N, classes seen)
    classes = probe.classes_
    pred = classes[proba.argmax(1)]
    same = np.array([[coarse_of[int(c)] == coarse_of[int(f)] for c in classes] for f in fine])  # (N, classes)
    within = classes[np.where(same, proba, -1.0).argmax(1)]
    coarse_names = sorted({coarse_of[int(c)] for c in classes})
    col_of = {c: i for i, c in enumerate(coarse_names)}
    coarse_proba = np.zeros((len(x), len(coarse_names)))
    for j, c in enumerate(classes):
        coarse_proba[:, col_of[coarse_of[int(c)]]] += proba[:, j]
    coarse_pred = np.array(coarse_names)[coarse_proba.argmax(1)]
    truth_coarse = np.array([coarse_of[int(f)] for f in fine])
    return {"product_acc": round(float((pred == fine).mean()), 4),
            "within_class_acc": round(float((within == fine).mean()), 4),
            "coarse_acc": round(float((coarse_pred == truth_coarse).mean()), 4), "photos": int(len(x))}


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    data = Path(args.data)
    classes = read_classes(data)
    coarse_of = {k: v["coarse"] for k, v in classes.items()}
    train, val = read_split(data, "train", classes, args.limit), read_split(data, "val", classes, args.limit)
    # the training job's own hash split of the training photos picks C; the validation photos pick nothing
    split = [item_split(r["photo_id"], test_fraction=0.1, valid_fraction=0.1) for r in train]
    pick = np.array([s != "train" for s in split])
    fine_train = np.array([r["fine_class"] for r in train])
    fine_val = np.array([r["fine_class"] for r in val])
    featurizer = ItemFeaturizer.from_config(FeaturizerConfig(patch_grid=2, patch_size=112))
    featurizer.image_model.eval()

    tokens_train, tokens_val, encode_s = {}, {}, {}
    for name in args.tokens:
        grid, size, crop = TOKENS[name]
        t = time.perf_counter()
        tokens_train[name] = encode_tokens(featurizer, data, train, grid, size, crop, args.batch_size, t0)
        tokens_val[name] = encode_tokens(featurizer, data, val, grid, size, crop, args.batch_size, t0)
        encode_s[name] = round(time.perf_counter() - t, 1)
        say(f"{name}: {len(train) + len(val)} photos in {encode_s[name]} s", t0)

    layouts = {}
    for layout, (names, how) in LAYOUTS.items():
        if not set(names) <= set(args.tokens):
            continue
        xt, xv = photo_vectors(tokens_train, names, how), photo_vectors(tokens_val, names, how)
        picked = {}
        if pick.any() and len(set(fine_train[~pick])) > 1:
            for c in C_GRID:
                picked[c] = figures(fit_probe(xt[~pick], fine_train[~pick], c), xt[pick], fine_train[pick], coarse_of)["product_acc"]
            c_best = max(picked, key=lambda c: (picked[c], -c))
        else:
            c_best = 1.0
        probe = fit_probe(xt, fine_train, c_best)
        layouts[layout] = {"dims": int(xt.shape[1]), "C": c_best, "held_out_training_photos_product_acc_by_C": picked,
                           "validation": figures(probe, xv, fine_val, coarse_of)}
        v = layouts[layout]["validation"]
        say(f"{layout:26s} C={c_best:<5} product {v['product_acc']:.3f}  within class {v['within_class_acc']:.3f}  "
            f"coarse {v['coarse_acc']:.3f}", t0)

    lines = ["| layout | dims | product acc | within its coarse class | coarse class acc |", "|---|---|---|---|---|"]
    for layout, f in layouts.items():
        v = f["validation"]
        lines.append(f"| {layout} | {f['dims']} | {v['product_acc']:.3f} | {v['within_class_acc']:.3f} | {v['coarse_acc']:.3f} |")
    print("\n".join(lines))
    out = {
        "benchmark": "bench_grocery_image_layout", "created": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/bench_grocery_image_layout.py", *(argv if argv is not None else sys.argv[1:])]),
        "platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "photos": {"train": len(train), "validation": len(val)}, "encode_seconds": encode_s,
        "seconds": round(time.perf_counter() - t0, 1), "layouts": layouts, "table": lines,
    }
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
