"""GroceryStore: does unfreezing the image encoder's last stages close the gap between training and
validation photos? (issue 15: "partial unfreezing", untried until now as "hours a run on 2 cores")

    /tmp/jobslot .venv/bin/python benchmarks/bench_grocery_unfreeze.py --unfreeze 0 1 2 \
        --json benchmarks/results/bench_grocery_unfreeze.json

Why it is cheap: with the first stages frozen, their output never changes, so each photo (and each
augmented view) goes through them once and the activations at the first unfrozen stage are kept
(112 channels x 7 x 7 per 112 px patch, 44 kB a photo in fp16). A step then runs only the unfrozen
stages, the encoder's head conv and the two projections: about 1 GFLOP a photo forward and
backward with two stages unfrozen, against 0.8 GFLOP forward through the whole encoder.

The model is a two-tower on the same inputs as CameNN's: the photo's 2x2 patches of 112 px through
EfficientNet-Lite0 (the featurizer's own preprocessing, `conf/grocery.yaml`), mean-pooled, a linear
map; the product's text through the frozen MiniLM (the featurizer's tokens, mean-pooled), a linear
map; the cosine of the two, with a learnt scale. It trains by cross-entropy of each photo against
the texts of all 81 products (so every same-class product is a negative in every step), on the
training photos of the training job's "train" split and K views of each (bench_grocery.random_view).
``--unfreeze 0`` trains the projections alone: the same model on the frozen features, the row that
isolates what unfreezing adds. BatchNorm stays in eval mode (its statistics are the encoder's own).

Figures per variant, on the validation photos (never trained on) and on the training photos held
out from it (the same hash split as the training job's: taken like the training photos):
- product accuracy: the text of the photo's own product has the highest cosine among the 81;
  within its coarse class: among the texts of its coarse class only (Granny Smith against Pink Lady);
- ITA / TIA accuracy and AUROC on pairs with one negative each, random (another product) and hard
  (another product of the same coarse class), drawn as bench_grocery draws them; the cosine becomes a
  probability by a logistic fit on the held-out training photos' pairs, so the 0.5 point is set on
  photos taken like the training ones, as the night's calibrated thresholds are.

This is a measurement, not a product path: CameNN's featurizer caches the frozen encoders' outputs,
and an unfrozen stage would move into the model (the night would cache the frozen stages' output).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import io
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
import torch.nn.functional as F  # noqa: E402
from _common import write_json  # noqa: E402
from bench_grocery import DATA, binary_metrics, partners, random_view, read_classes, read_split, say  # noqa: E402
from torch import nn  # noqa: E402

from camenn.config import load_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--conf", default=str(_ROOT / "conf" / "grocery.yaml"))
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--unfreeze", type=int, nargs="+", default=[0, 1, 2],
                   help="variants: how many of the encoder's last stages train (0 = the projections alone)")
    p.add_argument("--views", type=int, default=2, help="augmented views of each training photo")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="the projections'; the unfrozen stages take a tenth")
    p.add_argument("--dim", type=int, default=256, help="the shared space of the two towers")
    p.add_argument("--limit", type=int, default=None, help="photos per split (a stride over each list; tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


class FrozenTrunk:
    """The encoder's stem and first stages, run once per photo: uint8 patches -> activations at stage ``cut``."""

    def __init__(self, image_model, cut: int, mean, std):
        self.model, self.cut, self.mean, self.std = image_model.eval(), cut, mean, std

    @torch.no_grad()
    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        from camenn.images import normalize_patches

        b, p = patches.shape[:2]
        x = normalize_patches(patches.flatten(0, 1), self.mean, self.std)  # (b*P, 3, S, S)
        x = self.model.bn1(self.model.conv_stem(x))  # (b*P, C0, S/2, S/2)
        x = self.model.blocks[: self.cut](x)  # (b*P, Cc, h, w)
        return x.to(torch.float16).reshape(b, p, *x.shape[1:])  # (b, P, Cc, h, w)


class TwoTower(nn.Module):
    """Photo: the encoder's stages from ``cut`` on (the last ``unfreeze`` of them trainable) -> mean over
    patches -> linear; text: pooled frozen tokens -> linear; score: scaled cosine."""

    def __init__(self, image_model, cut: int, unfreeze: int, text_dim: int, dim: int):
        super().__init__()
        n = len(image_model.blocks)
        self.frozen = nn.Sequential(*image_model.blocks[cut: n - unfreeze])
        self.tuned = nn.Sequential(*image_model.blocks[n - unfreeze:])
        self.head = nn.Sequential(image_model.conv_head, image_model.bn2)  # the head conv trains with the last stage
        for m in (self.frozen, self.tuned, self.head):
            m.requires_grad_(False)
        if unfreeze:
            self.tuned.requires_grad_(True)
            self.head.requires_grad_(True)
        self.image_proj = nn.Linear(int(image_model.num_features), dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def train(self, mode: bool = True):
        super().train(mode)
        for m in (self.frozen, self.tuned, self.head):
            m.eval()  # BatchNorm keeps the encoder's statistics
        return self

    def image(self, acts: torch.Tensor) -> torch.Tensor:
        b, p = acts.shape[:2]
        x = acts.flatten(0, 1).float()  # (b*P, Cc, h, w)
        with torch.no_grad():
            x = self.frozen(x)  # (b*P, Cf, h', w')
        x = self.head(self.tuned(x))  # (b*P, Di, h', w')
        x = x.mean((2, 3)).view(b, p, -1).mean(1)  # (b, Di)
        return F.normalize(self.image_proj(x), dim=-1)  # (b, dim)

    def text(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(pooled), dim=-1)  # (n, dim)


def encode_texts(featurizer, classes: dict[int, dict], first_photo: dict[int, bytes]) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Per product (fine class id): the mean of its real text tokens (as bench_grocery.pooled), and one of its
    photos' patch features from the featurizer, to check that the trunk + head split reproduces them."""
    ids = sorted(first_photo)
    enc = featurizer.featurize([classes[c]["product"] for c in ids], [classes[c]["description"] for c in ids],
                               [first_photo[c] for c in ids])
    mask = enc.text_mask.float().unsqueeze(-1)  # (n, L, 1)
    text = (enc.text * mask).sum(1) / mask.sum(1).clamp(min=1)  # (n, Dt)
    return np.array(ids), text.clone(), enc.image.clone()  # (n,), (n, Dt), (n, P, Di); not inference tensors


def view_bytes(path: Path, rng: np.random.Generator, k: int) -> list[bytes]:
    from PIL import Image

    out = []
    with Image.open(path) as photo:
        photo = photo.convert("RGB")
        for _ in range(k):
            buf = io.BytesIO()
            random_view(photo, rng).save(buf, format="JPEG", quality=90)
            out.append(buf.getvalue())
    return out


def trunk_activations(featurizer, trunk: FrozenTrunk, images: list[bytes], t0: float, what: str, batch: int = 64) -> torch.Tensor:
    """The trunk's activations of every image, batch by batch, with the featurizer's decode and patching."""
    parts = []
    for start in range(0, len(images), batch):
        chunk = images[start: start + batch]
        prep = featurizer.prepare(["x"] * len(chunk), [""] * len(chunk), chunk)
        bad = [e for e in prep.errors if e]
        if bad:
            raise ValueError(f"{what}: {len(bad)} photos failed to decode, first: {bad[0]}")
        parts.append(trunk(prep.patches))  # (b, P, Cc, h, w)
        if (start // batch) % 20 == 0:
            say(f"{what}: {start + len(chunk)} of {len(images)} through the frozen stages", t0)
    return torch.cat(parts)


def pair_scores(img: np.ndarray, txt_of_photo: np.ndarray, idx: np.ndarray, donor: np.ndarray) -> dict:
    """Cosines of true pairs and of each swap: ITA (the photo with the donor's text), TIA (the text with the donor's photo)."""
    pos = (img[idx] * txt_of_photo[idx]).sum(1)
    return {"ita": (pos, (img[idx] * txt_of_photo[donor]).sum(1)), "tia": (pos, (img[donor] * txt_of_photo[idx]).sum(1))}


def evaluate(model: TwoTower, acts: torch.Tensor, fine: np.ndarray, coarse: np.ndarray, text_pooled: torch.Tensor,
             class_ids: np.ndarray, coarse_of: dict, calib=None, seed: int = 0) -> tuple[dict, object]:
    """Product accuracy and pair figures of photos ``acts``; ``calib`` None fits the cosine -> probability map here."""
    from sklearn.linear_model import LogisticRegression

    model.eval()
    with torch.no_grad():
        img = torch.cat([model.image(acts[s: s + 256]) for s in range(0, len(acts), 256)]).numpy()  # (n, dim)
        txt = model.text(text_pooled).numpy()  # (C, dim)
    col = {c: j for j, c in enumerate(class_ids)}
    own = np.array([col[f] for f in fine])
    cos = img @ txt.T  # (n, C)
    same = np.array([[coarse_of[c] == coarse[i] for c in class_ids] for i in range(len(fine))])  # (n, C)
    out = {"product_acc": float((cos.argmax(1) == own).mean()),
           "product_acc_within_coarse_class": float((np.where(same, cos, -np.inf).argmax(1) == own).mean()),
           "photos": int(len(fine))}
    txt_of_photo = txt[own]  # (n, dim)
    rng = np.random.default_rng(seed)
    pairs = {}
    for kind in ("random", "hard"):
        donor = partners(fine, coarse, kind == "hard", rng)
        keep = donor >= 0
        pairs[kind] = pair_scores(img, txt_of_photo, np.flatnonzero(keep), donor[keep])
    if calib is None:
        x = np.concatenate([np.concatenate(pairs[k][t]) for k in pairs for t in ("ita", "tia")])
        y = np.concatenate([np.r_[np.ones(len(pairs[k][t][0])), np.zeros(len(pairs[k][t][1]))] for k in pairs for t in ("ita", "tia")])
        calib = LogisticRegression(class_weight="balanced").fit(x[:, None], y)
    prob = lambda c: calib.predict_proba(c[:, None])[:, 1]  # noqa: E731
    for kind, p in pairs.items():
        out[kind] = {task: binary_metrics(prob(pos), prob(neg)) for task, (pos, neg) in p.items()}
    return out, calib


def train(model: TwoTower, acts: torch.Tensor, own: torch.Tensor, text_pooled: torch.Tensor, args, t0: float, name: str) -> dict:
    tuned = [p for m in (model.tuned, model.head) for p in m.parameters() if p.requires_grad]
    rest = [*model.image_proj.parameters(), *model.text_proj.parameters(), model.log_scale]
    groups = [{"params": rest, "lr": args.lr}] + ([{"params": tuned, "lr": args.lr / 10}] if tuned else [])
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    g = torch.Generator().manual_seed(args.seed)
    steps = args.epochs * ((len(acts) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[gr["lr"] for gr in groups], total_steps=steps, pct_start=0.1)
    model.train()
    step, losses, t = 0, [], time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(acts), generator=g)
        for s in range(0, len(acts), args.batch_size):
            b = order[s: s + args.batch_size]
            img = model.image(acts[b])  # (b, dim)
            logits = model.log_scale.exp().clamp(max=100) * img @ model.text(text_pooled).T  # (b, C)
            loss = F.cross_entropy(logits, own[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
        say(f"{name}: epoch {epoch + 1}/{args.epochs}, {step} steps, loss {np.mean(losses[-20:]):.3f}", t0)
    return {"steps": step, "seconds": time.perf_counter() - t, "final_loss": float(np.mean(losses[-20:])),
            "trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad))}


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    config = load_config(args.conf)
    from camenn.featurizer import ItemFeaturizer
    from camenn.training import item_split

    featurizer = ItemFeaturizer.from_config(config.featurizer.to_featurizer_config())
    image_model = featurizer.image_model.eval()
    data = Path(args.data).resolve()
    classes = read_classes(data)
    train_rows, val_rows = read_split(data, "train", classes, args.limit), read_split(data, "val", classes, args.limit)
    sp = config.training.split
    split = {r["photo_id"]: item_split(r["photo_id"], sp.test_fraction, sp.valid_fraction, sp.seed) for r in train_rows}
    fit_rows = [r for r in train_rows if split[r["photo_id"]] == "train"]
    held_rows = [r for r in train_rows if split[r["photo_id"]] != "train"]

    first_photo = {}   # every product, whatever --limit keeps
    for r in read_split(data, "train", classes, None):
        first_photo.setdefault(r["fine_class"], (data / r["path"]).read_bytes())
    class_ids, text_pooled, check_image = encode_texts(featurizer, classes, first_photo)
    say(f"{len(class_ids)} products' texts encoded; {len(fit_rows)} training photos x {1 + args.views} views, "
        f"{len(held_rows)} held-out training photos, {len(val_rows)} validation photos", t0)

    cut = len(image_model.blocks) - max(args.unfreeze)
    trunk = FrozenTrunk(image_model, cut, featurizer.image_mean, featurizer.image_std)
    # the split must reproduce the featurizer's own patch features (what CameNN trains on)
    check = TwoTower(image_model, cut, 0, text_pooled.shape[1], args.dim).eval()
    firsts = [first_photo[c] for c in class_ids]
    with torch.no_grad():
        acts = trunk_activations(featurizer, trunk, firsts, t0, "check")
        b, p = acts.shape[:2]
        x = check.head(check.tuned(check.frozen(acts.flatten(0, 1).float()))).mean((2, 3)).view(b, p, -1)  # (b, P, Di)
    err = float((x - check_image).abs().max() / check_image.abs().max())
    if err > 1e-2:   # fp16 activations: about 1e-3 relative
        raise AssertionError(f"the trunk + head split does not reproduce the featurizer's patch features: {err:.3g} relative")
    say(f"the split reproduces the featurizer's features to {err:.1e} (relative, fp16 activations)", t0)

    t = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    fit_images, fit_fine = [], []
    for r in fit_rows:
        fit_images += [(data / r["path"]).read_bytes(), *view_bytes(data / r["path"], rng, args.views)]
        fit_fine += [r["fine_class"]] * (1 + args.views)
    fit_acts = trunk_activations(featurizer, trunk, fit_images, t0, "training photos and views")
    held_acts = trunk_activations(featurizer, trunk, [(data / r["path"]).read_bytes() for r in held_rows], t0, "held-out")
    val_acts = trunk_activations(featurizer, trunk, [(data / r["path"]).read_bytes() for r in val_rows], t0, "validation")
    trunk_seconds = time.perf_counter() - t
    say(f"frozen stages run once: {len(fit_images) + len(held_rows) + len(val_rows)} images in {trunk_seconds:.0f}s, "
        f"{fit_acts[0].numel() * 2 / 1e3:.1f} kB of activations each", t0)

    col = {c: j for j, c in enumerate(class_ids)}
    own = torch.tensor([col[f] for f in fit_fine])
    held_fine, held_coarse = np.array([r["fine_class"] for r in held_rows]), np.array([r["coarse_class"] for r in held_rows])
    val_fine, val_coarse = np.array([r["fine_class"] for r in val_rows]), np.array([r["coarse_class"] for r in val_rows])
    coarse_of = {c: classes[c]["coarse"] for c in class_ids}
    variants = {}
    for k in args.unfreeze:
        name = f"last {k} stage{'s' if k != 1 else ''} unfrozen" if k else "frozen encoder (projections only)"
        torch.manual_seed(args.seed)
        model = TwoTower(copy.deepcopy(image_model), cut, k, text_pooled.shape[1], args.dim)
        fit = train(model, fit_acts, own, text_pooled, args, t0, name)
        held, calib = evaluate(model, held_acts, held_fine, held_coarse, text_pooled, class_ids, coarse_of, seed=args.seed)
        val, _ = evaluate(model, val_acts, val_fine, val_coarse, text_pooled, class_ids, coarse_of,
                          calib=calib, seed=args.seed)
        variants[name] = {"unfreeze_stages": k, "training": fit, "held_out_training_photos": held, "validation": val}
        say(f"{name}: validation product accuracy {val['product_acc']:.3f} (within coarse class "
            f"{val['product_acc_within_coarse_class']:.3f}); held-out training photos {held['product_acc']:.3f}", t0)

    lines = ["| encoder | trainable params | validation: product acc (within class) | random: ITA acc / AUROC | "
             "random: TIA acc / AUROC | same class: ITA acc / AUROC | same class: TIA acc / AUROC | "
             "held-out training photos: product acc |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in variants.items():
        m = v["validation"]
        lines.append(f"| {name} | {v['training']['trainable_params']:,} | {m['product_acc']:.3f} "
                     f"({m['product_acc_within_coarse_class']:.3f}) | " + " | ".join(
                         f"{m[kind][task]['acc']:.3f} / {m[kind][task]['auroc']:.3f}" for kind in ("random", "hard")
                         for task in ("ita", "tia")) + f" | {v['held_out_training_photos']['product_acc']:.3f} |")
    print("\n".join(lines), flush=True)
    figures = {
        "benchmark": "bench_grocery_unfreeze", "created": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/bench_grocery_unfreeze.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "config": str(args.conf), "args": vars(args), "split_check_relative_error": err,
        "photos": {"fit": len(fit_rows), "fit_with_views": len(fit_images), "held_out": len(held_rows), "val": len(val_rows),
                   "products": len(class_ids)},
        "seconds": {"frozen_stages_once": trunk_seconds, "total": time.perf_counter() - t0},
        "variants": variants, "table": lines,
    }
    write_json(args.json, figures)
    say(f"done in {figures['seconds']['total']:.0f}s", t0)
    return figures


if __name__ == "__main__":
    main()
