"""GroceryStore: CameNN trained on real photos (alignment only) against a pooled two-tower probe.

    /tmp/jobslot .venv/bin/python benchmarks/bench_grocery.py --root runs/bench/grocery-i15 \
        --json benchmarks/results/bench_grocery.json        # 5 variants: 3,107 s on 2 shared cores
    ... --variant baseline --variant "hard:training.hard_negative_share=0.5"   # chosen variants only

The data is ../shared/data/grocery-store (its README): 2,640 training and 296 validation
smartphone photos of 81 products (fine classes) in 42 coarse classes. One item per photo:
title = the product name, description = the product's description text (classes.csv), category
= the coarse class, no price. There are no users, purchases or candidates.

1. The training photos are written as a CSV export and ingested with jobs/ingest_catalog.py
   (conf/grocery.yaml maps the columns); ``pipeline.train.run_training`` encodes them and, with no
   CVR examples, trains the ITA/TIA tasks alone (its held-out figures are the training photos'
   own hash split, reported as ``training_held_out``).
2. The validation photos are ingested afterwards (``--mode merge``) and encoded; the model never
   saw them.
3. On the validation photos, ITA (the photo with another item's text) and TIA (the text with
   another item's photo): accuracy at 0.5 and AUROC over the true pairs and one negative each,
   - random: the partner is any validation photo of another product (another fine class: photos
     of the same product share their text, so they would not be negatives);
   - hard: the partner is a photo of another product of the same coarse class (Granny Smith
     against Pink Lady): the category field is then the same on both sides, so it cannot decide.
     Items of a coarse class with one product have no hard partner and are left out (``n``).
4. The probe, on the same frozen encoder outputs (the cached item features) and split: the
   mean-pooled text tokens and image patches, a ridge map of the image vector into the text space
   fitted on the training photos, and a logistic regression on the elementwise product of the
   L2-normalised text and mapped image vectors, fitted on training pairs with random negatives
   (both kinds of swap); accuracy at 0.5 and AUROC on the same validation pairs as CameNN's.

5. With ``--val-views K``, every pair once more with each side's photo as the mean logit over the
   photo and K random views of it (the donor's views for the swapped side): test-time views, merged
   as items of their own after training; the probe's scores averaged the same way. A measurement:
   the nightly job scores each listing's one photo.

Every variant (VARIANTS, or --variant) is trained on the same ingested and encoded training photos
before the validation photos enter the tables, and scored on the same pairs. Everything is measured
in one run: the figures are what it gives, whatever they are.

One file of about 530 lines: the exports, the views, the pairs, the probe and the run are this
benchmark's, and the other GroceryStore benchmarks (flags, reference, cross-fit, unfreeze) import
them from here rather than from a package of their own.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import itertools
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
from _common import write_json  # noqa: E402

from camenn.config import load_config  # noqa: E402
from camenn.images import random_view  # noqa: E402  (re-exported: the benches and tests call bench_grocery.random_view)

DATA = _ROOT.parent / "shared" / "data" / "grocery-store"
RUN_DATE = dt.date(2026, 12, 1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "conf" / "grocery.yaml"))
    p.add_argument("--data", default=str(DATA), help="the grocery-store folder (train.txt, val.txt, classes.csv)")
    p.add_argument("--root", default=None, help="scratch folder for tables, exports and the model (default runs/bench/grocery)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--limit", type=int, default=None, help="at most this many photos per split (a quick check)")
    p.add_argument("--variant", action="append", default=None, metavar="NAME[:KEY=VALUE,...]",
                   help="a CameNN variant to train and score (repeatable; default: the VARIANTS below)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--augment", type=int, default=0, metavar="K",
                   help="also K random views of every training photo (crop, mirror, light) as training items of "
                        "their own, written under <root>/augmented")
    p.add_argument("--view-colour", type=float, default=0.0, metavar="S",
                   help="the training views' colour change too (random_view's colour: RGB gains exp(U(-S, S)))")
    p.add_argument("--val-views", type=int, default=0, metavar="K",
                   help="also score every validation pair as the mean logit over the photo and K views of it "
                        "(test-time views; the views are items of their own, merged after training)")
    p.add_argument("--exports-only", action="store_true",
                   help="write <root>/exports/{train,val}.csv and stop (make grocery ingests them with the jobs)")
    return p.parse_args(argv)


# The variants of issue 15 (2), each trained on the same ingested and encoded photos and scored on
# the same validation pairs. "hard" = half the alignment negatives from the same coarse class.
VARIANTS = {
    "baseline": [],
    "hard": ["training.hard_negative_share=0.5"],
    "hard+contrastive": ["training.hard_negative_share=0.5", "training.contrastive_weight=1.0"],
    "hard+neighbour": ["training.hard_negative_share=0.5", "training.hard_negative_kind=neighbour"],
    "hard+contrastive, d_model 64": ["training.hard_negative_share=0.5", "training.contrastive_weight=1.0",
                                     "model.d_model=64", "model.n_heads=4"],
}


def parse_variants(specs: list[str] | None) -> dict[str, list[str]]:
    if not specs:
        return dict(VARIANTS)
    out = {}
    for spec in specs:
        name, _, sets = spec.partition(":")
        out[name] = VARIANTS.get(name, []) if not sets and name in VARIANTS else [x for x in sets.split(",") if x]
    return out


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def say(message: str, t0: float) -> None:
    print(f"[bench_grocery {time.perf_counter() - t0:7.1f}s] {message}", flush=True)


# ------------------------------------------------------------------------ the export


def read_classes(data: Path) -> dict[int, dict]:
    """Fine class id -> product name, coarse class and description text ('' where there is none)."""
    out = {}
    with open(data / "classes.csv", newline="") as f:
        for row in csv.DictReader(f):
            desc_path = data / row["Product Description Path (str)"].lstrip("/")
            desc = desc_path.read_text(errors="replace").strip() if desc_path.is_file() else ""
            out[int(row["Class ID (int)"])] = {"product": row["Class Name (str)"].replace("-", " "),
                                               "coarse": row["Coarse Class Name (str)"], "description": " ".join(desc.split())}
    return out


def read_split(data: Path, split: str, classes: dict[int, dict], limit: int | None) -> list[dict]:
    """One export row per photo of ``split``.txt: photo_id, path, product, description, coarse_class, fine_class."""
    rows = []
    for line in (data / f"{split}.txt").read_text().splitlines():
        if not line.strip():
            continue
        path, fine, _coarse = (x.strip() for x in line.split(","))
        c = classes[int(fine)]
        rows.append({"photo_id": f"{split}-{len(rows):05d}", "path": path, "product": c["product"],
                     "description": c["description"], "coarse_class": c["coarse"], "fine_class": int(fine)})
    if limit:   # every product keeps some photos: a stride over the file, which lists them class by class
        rows = rows[::max(1, len(rows) // limit)][:limit]
    return rows


def write_export(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["photo_id", "path", "product", "description", "coarse_class"],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


VIEW_MARK = "-aug"   # a view's photo_id: its photo's id, this mark and the view's number


def is_view(item_id: str) -> bool:
    return VIEW_MARK in item_id


def view_rows(item_ids: list[str], row_of: dict[str, int], rows: np.ndarray, j: int) -> np.ndarray:
    """The store rows of view ``j`` of these photo rows (j = 0: the photos themselves); a photo without
    such a view keeps its own row (the held-out training photos have no test-time views)."""
    return rows if j == 0 else np.array([row_of.get(f"{item_ids[r]}{VIEW_MARK}{j}", r) for r in rows])


def augment_photos(rows: list[dict], data: Path, out: Path, k: int, seed: int = 0,
                   in_train: Callable[[str], bool] | None = None, colour: float = 0.0) -> list[dict]:
    """K random views of each photo, written under ``out``: one export row each (photo_id ``<id>-aug<j>``).
    The caller passes only photos of the training job's "train" split (see main), and ``in_train``, its
    split of an item id: a view is an item of its own, split by its own id, and a view of a trained photo
    in the held-out split would score like a trained photo there (it did: 425 of 684 held-out items on
    2026-12-05, which raised the cut the model recorded). So ``j`` runs on past the numbers whose id
    would land outside the "train" split, until the photo has K views.

    A view is ``random_view(photo, rng, colour)``: a crop, a mirror, a light and, with ``colour``, a
    white balance, saturation and contrast. Why: the model that ranks the training job's held-out
    photos well loses accuracy on the validation photos (docs/results/grocery-store.md), which are framed
    and lit otherwise; views widen what the training photos show.
    A view keeps its photo's text, so it is a twin of it (losses.twin_key), never its negative.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    views = []
    for r in rows:
        numbers = (j for j in itertools.count(1) if in_train is None or in_train(f"{r['photo_id']}{VIEW_MARK}{j}"))
        with Image.open(data / r["path"]) as photo:
            photo = photo.convert("RGB")
            for j in itertools.islice(numbers, k):
                view = random_view(photo, rng, colour)
                rel = str(Path(r["path"]).with_suffix("")) + f"-aug{j}.jpg"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                view.save(out / rel, quality=90)
                views.append({**r, "photo_id": f"{r['photo_id']}{VIEW_MARK}{j}", "path": rel})
    return views


def ingest(conf: str, sets: list[str], export: Path, data: Path, mode: str) -> None:
    """The export through jobs/ingest_catalog.py's main, in this process (its session is this one)."""
    from pipeline.jobs.ingest_catalog import main as ingest_main

    argv = ["--conf", conf, "--items-path", str(export), "--images-root", str(data), "--mode", mode,
            "--run-date", RUN_DATE.isoformat()]
    for s in sets:
        argv += ["--set", s]
    status = ingest_main(argv)
    if status != 0:
        raise SystemExit(f"ingest of {export} exited {status}")


def score_night(conf: str, sets: list[str], run_date: dt.date) -> float:
    """The nightly job (jobs/score_catalog.py's main) on the config with ``sets``, in this process; its seconds."""
    from pipeline.jobs.score_catalog import main as score_main

    t = time.perf_counter()
    argv = ["--conf", conf, "--run-date", run_date.isoformat()]
    for s in sets:
        argv += ["--set", s]
    status = score_main(argv)
    if status != 0:
        raise SystemExit(f"score_catalog exited {status}")
    return time.perf_counter() - t


# ------------------------------------------------------------------------ pairs and metrics


def partners(fine: np.ndarray, coarse: np.ndarray, hard: bool, rng: np.random.Generator) -> np.ndarray:
    """For each item, a random other item of another fine class (hard: of the same coarse class); -1 if none."""
    out = np.full(len(fine), -1, dtype=np.int64)
    for i in range(len(fine)):
        ok = (fine != fine[i]) & ((coarse == coarse[i]) if hard else True)
        pool = np.flatnonzero(ok)
        if len(pool):
            out[i] = rng.choice(pool)
    return out


def binary_metrics(pos: np.ndarray, neg: np.ndarray, cut: float | None = None) -> dict:
    """Accuracy at 0.5 and AUROC; with ``cut`` (the model's own, recorded at training from its held-out
    pairs: ``ita_cut``), the accuracy at that cut too."""
    from camenn.metrics import roc_auc

    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    p = np.concatenate([pos, neg])
    # the two sides of the accuracy: true pairs kept (>= 0.5) and negatives caught (< 0.5); a shift of
    # every score moves them apart while the AUROC stays
    out = {"acc": float(((p >= 0.5) == (y == 1)).mean()), "auroc": float(roc_auc(y, p)), "n": int(len(pos)),
           "true_pairs_kept": float((pos >= 0.5).mean()), "negatives_caught": float((neg < 0.5).mean())}
    if cut is not None:
        out.update(model_cut=float(cut), acc_at_model_cut=float(((p >= cut) == (y == 1)).mean()))
    return out


def camenn_scores(model, store, idx, donor, batch_size=256) -> dict:
    """task -> (positive probs, negative probs) for items ``idx`` (store rows) swapped with ``donor`` rows."""
    import torch

    from camenn.training import predict_items

    idx_t, donor_t = torch.as_tensor(idx), torch.as_tensor(donor)
    pos = predict_items(model, store, idx_t, batch_size, "cpu")
    out = {}
    for task, side in (("ita", "text"), ("tia", "image")):
        neg = predict_items(model, store, idx_t, batch_size, "cpu", swap=side, donor=donor_t)[task]
        out[task] = (pos[task], neg)
    return out


def mean_logit(runs: list[dict]) -> dict:
    """task -> (positive, negative) probabilities as the sigmoid of the mean logit over ``runs`` (views):
    the nightly job's rule (camenn.predictor.mean_logit) on each side."""
    from camenn.predictor import mean_logit as combine

    return {task: tuple(combine([r[task][k] for r in runs]) for k in (0, 1)) for task in runs[0]}


def cosine_scores(model, store, idx, donor) -> dict:
    """The same pairs scored by the cosine of the model's pooled projected text and image alone
    (``CameNN.pooled_modalities``: what the contrastive loss trains and ``model.alignment_skip`` reads)."""
    import torch

    with torch.no_grad():
        t, v = model.eval().pooled_modalities(store.gather(torch.arange(len(store.item_ids))))   # (n, D), (n, D)
    t, v = t.float().numpy(), v.float().numpy()
    pos = (t[idx] * v[idx]).sum(1)
    return {"ita": (pos, (t[donor] * v[idx]).sum(1)), "tia": (pos, (t[idx] * v[donor]).sum(1))}


def pooled(store) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled text tokens (real ones only) and image patches of every item of the store, float32."""
    mask = store.text_mask.float().unsqueeze(-1)                           # (n, L, 1)
    text = (store.text.float() * mask).sum(1) / mask.sum(1).clamp(min=1)   # (n, Dt)
    image = store.image.float().mean(1)                                    # (n, Di)
    return text.numpy(), image.numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


class PooledProbe:
    """Two towers on frozen pooled features: a ridge map image -> text space, then a logistic regression
    on the elementwise product of the unit text and mapped image vectors."""

    def __init__(self, ridge: float = 1.0, seed: int = 0):
        self.ridge, self.seed = ridge, seed

    def fit(self, text: np.ndarray, image: np.ndarray, fine: np.ndarray, coarse: np.ndarray) -> PooledProbe:
        from sklearn.linear_model import LogisticRegression

        self.mu_t, self.mu_i = text.mean(0), image.mean(0)
        t, i = _unit(text - self.mu_t), _unit(image - self.mu_i)
        # closed-form ridge regression of the text vector on the image vector: W (Di, Dt)
        self.W = np.linalg.solve(i.T @ i + self.ridge * np.eye(i.shape[1]), i.T @ t)
        rng = np.random.default_rng(self.seed)
        a, b = partners(fine, coarse, False, rng), partners(fine, coarse, False, rng)
        n = np.arange(len(t))
        feats = np.concatenate([self._pair(t[n], i[n]), self._pair(t[a], i[n]), self._pair(t[n], i[b])])
        y = np.concatenate([np.ones(len(n)), np.zeros(2 * len(n))])
        self.lr = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(feats, y)
        return self

    def _pair(self, t_unit: np.ndarray, i_unit: np.ndarray) -> np.ndarray:
        return t_unit * _unit(i_unit @ self.W)

    def score(self, text: np.ndarray, image: np.ndarray) -> np.ndarray:
        t, i = _unit(text - self.mu_t), _unit(image - self.mu_i)
        return self.lr.predict_proba(self._pair(t, i))[:, 1]


def probe_scores(probe: PooledProbe, text: np.ndarray, image: np.ndarray, idx, donor) -> dict:
    """The probe's (positive, negative) probabilities for the same pairs as camenn_scores."""
    pos = probe.score(text[idx], image[idx])
    return {"ita": (pos, probe.score(text[donor], image[idx])),   # the photo with another product's text
            "tia": (pos, probe.score(text[idx], image[donor]))}   # the text with another product's photo


def table(variants: dict, probe: dict) -> list[str]:
    lines = ["| model | negatives | ITA acc / AUROC | TIA acc / AUROC | n |", "|---|---|---|---|---|"]
    for kind in ("random", "hard"):
        for name, m in [*((f"CameNN {v}", r) for v, r in variants.items()), ("pooled probe", probe)]:
            cells = [f"{m[kind][t]['acc']:.3f} / {m[kind][t]['auroc']:.3f}" for t in ("ita", "tia")]
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + f" | {m[kind]['ita']['n']} |")
    return lines


# ------------------------------------------------------------------------ the run


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    data = Path(args.data).resolve()
    root = Path(args.root or _ROOT / "runs" / "bench" / "grocery").resolve()
    if args.exports_only:
        classes = read_classes(data)
        for split in ("train", "val"):
            print(write_export(read_split(data, split, classes, args.limit), root / "exports" / f"{split}.csv"))
        return {}
    # the bench scores its pairs itself, test-time views as items of their own (--val-views): its training
    # need not encode the night's views (conf/grocery.yaml's 4 would be 5x the encoding of every photo)
    sets = [f"data.root={root / 'tables'}", f"training.artifact_dir={root / 'model'}", "scoring.test_time_views=0",
            *args.set]
    config = load_config(args.conf, sets)
    from pyspark.sql import SparkSession

    from pipeline.session import get_spark

    ours = SparkSession.getActiveSession() is None   # a caller's session (a test's) is left running
    spark = get_spark(config)
    classes = read_classes(data)
    train_rows, val_rows = read_split(data, "train", classes, args.limit), read_split(data, "val", classes, args.limit)
    seconds: dict[str, float] = {}

    say(f"ingest {len(train_rows)} training photos", t0)
    t = time.perf_counter()
    ingest(args.conf, sets, write_export(train_rows, root / "exports" / "train.csv"), data, "overwrite")
    if args.augment:
        # views only of the photos the training job trains on: a view of a held-out photo would carry
        # that photo into training, and the held-out photos set bench_grocery_flags' thresholds
        from camenn.training import item_split

        sp = config.training.split
        def in_train(item_id: str) -> bool:
            return item_split(item_id, sp.test_fraction, sp.valid_fraction, sp.seed) == "train"

        trained_on = [r for r in train_rows if in_train(r["photo_id"])]
        aug_rows = augment_photos(trained_on, data, root / "augmented", args.augment, in_train=in_train,
                                  colour=args.view_colour)
        say(f"ingest {len(aug_rows)} augmented views of the {len(trained_on)} training photos outside the held-out "
            f"splits ({args.augment} each)", t0)
        ingest(args.conf, sets, write_export(aug_rows, root / "exports" / "train_augmented.csv"), root / "augmented", "merge")
        train_rows = train_rows + aug_rows
    seconds["ingest_train"] = time.perf_counter() - t

    from pipeline.train import run_training

    variants = parse_variants(args.variant)
    trained = {}
    for name, vsets in variants.items():   # every variant before the validation photos enter the tables
        say(f"train {name!r} {vsets} (the photos are encoded once; ITA/TIA alone: no users or purchases)", t0)
        t = time.perf_counter()
        vconfig = load_config(args.conf, [*sets, *vsets, f"training.artifact_dir={root / 'model' / slug(name)}"])
        trained[name] = run_training(spark, vconfig, run_date=RUN_DATE)
        seconds[f"train_job {name}"] = time.perf_counter() - t
        say(trained[name].summary(), t0)

    say(f"ingest and encode {len(val_rows)} validation photos", t0)
    t = time.perf_counter()
    ingest(args.conf, sets, write_export(val_rows, root / "exports" / "val.csv"), data, "merge")
    val_view_rows = []
    if args.val_views:
        # seed 1: not the training views' stream; no colour: a test-time view should show the photo as taken
        val_view_rows = augment_photos(val_rows, data, root / "val-views", args.val_views, seed=1)
        say(f"ingest {len(val_view_rows)} test-time views of the validation photos ({args.val_views} each)", t0)
        ingest(args.conf, sets, write_export(val_view_rows, root / "exports" / "val_views.csv"), root / "val-views", "merge")
    from pipeline import feature_cache

    feature_cache.update_item_features(spark, config, RUN_DATE, job="bench_grocery")
    seconds["ingest_encode_val"] = time.perf_counter() - t

    say("score the validation pairs: the CameNN variants and the pooled probe", t0)
    t = time.perf_counter()
    from camenn.checkpoint import load_artifact
    from camenn.inputs import FeatureVocab
    from pipeline.training_data import load_item_store

    arts = {name: load_artifact(r.artifact) for name, r in trained.items()}
    art = next(iter(arts.values()))   # the variants share the encoders, photos and vocabulary
    vocab = FeatureVocab.from_dict(art.metadata["vocab"])
    store = load_item_store(spark, config.table("item_features"), None, config.table("items"), None,
                            art.metadata["encoder_fingerprint"], vocab, art.config.n_patches)
    row_of = {item_id: k for k, item_id in enumerate(store.item_ids)}
    info = {r["photo_id"]: r for r in train_rows + val_rows + val_view_rows}
    fine = np.array([info[i]["fine_class"] for i in store.item_ids])
    coarse = np.array([info[i]["coarse_class"] for i in store.item_ids])
    is_val = np.array([i.startswith("val-") for i in store.item_ids])
    val_view = is_val & np.array([is_view(i) for i in store.item_ids])
    val_idx, train_idx = np.flatnonzero(is_val & ~val_view), np.flatnonzero(~is_val)
    if args.val_views:   # every validation photo has its K views, or a mean would quietly repeat the photo
        assert int(val_view.sum()) == args.val_views * len(val_idx), (int(val_view.sum()), len(val_idx))
    text, image = pooled(store)
    probe = PooledProbe().fit(text[train_idx], image[train_idx], fine[train_idx], coarse[train_idx])

    rng = np.random.default_rng(0)
    results: dict = {"camenn": {name: {} for name in arts}, "probe": {}, "camenn_cosine": {name: {} for name in arts}}
    if args.val_views:
        results.update(camenn_views={name: {} for name in arts}, probe_views={})
    for kind in ("random", "hard"):
        donor_local = partners(fine[val_idx], coarse[val_idx], kind == "hard", rng)
        keep = donor_local >= 0
        idx, donor = val_idx[keep], val_idx[donor_local[keep]]
        for name, a in arts.items():
            scores = camenn_scores(a.model, store, idx, donor)
            held_out = a.metadata.get("metrics") or {}
            results["camenn"][name][kind] = {task: binary_metrics(*scores[task], held_out.get(f"{task}_cut"))
                                             for task in ("ita", "tia")}
            # AUROC only: a cosine has no 0.5 point (its "acc" is of cosine >= 0.5)
            cos = cosine_scores(a.model, store, idx, donor)
            results["camenn_cosine"][name][kind] = {task: binary_metrics(*cos[task]) for task in ("ita", "tia")}
        scores = probe_scores(probe, text, image, idx, donor)
        results["probe"][kind] = {task: binary_metrics(*scores[task]) for task in ("ita", "tia")}
        if args.val_views:   # the same pairs, each side's photo as the photo and its views (donors' views too)
            views_of = partial(view_rows, store.item_ids, row_of)
            views = range(args.val_views + 1)
            for name, a in arts.items():
                scores = mean_logit([camenn_scores(a.model, store, views_of(idx, j), views_of(donor, j)) for j in views])
                held_out = a.metadata.get("metrics") or {}
                results["camenn_views"][name][kind] = {task: binary_metrics(*scores[task], held_out.get(f"{task}_cut"))
                                                       for task in ("ita", "tia")}
            scores = mean_logit([probe_scores(probe, text, image, views_of(idx, j), views_of(donor, j)) for j in views])
            results["probe_views"][kind] = {task: binary_metrics(*scores[task]) for task in ("ita", "tia")}
    seconds["evaluate"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    lines = table(results["camenn"], results["probe"])
    print("\n".join(lines), flush=True)
    for name, kinds in results["camenn"].items():
        if "acc_at_model_cut" in kinds["random"]["ita"]:
            print(f"{name}, at the model's own cut (from its held-out training photos): accuracy " + "; ".join(
                f"{kind} ITA {m['ita']['acc_at_model_cut']:.3f} / TIA {m['tia']['acc_at_model_cut']:.3f}"
                for kind, m in kinds.items()), flush=True)
    tested_views = {**results["camenn_views"], "probe": results["probe_views"]} if args.val_views else {}
    for name, kinds in tested_views.items():
        print(f"{name}, mean logit over the photo and {args.val_views} views: " + "; ".join(
            f"{kind} ITA {m['ita']['acc']:.3f} / {m['ita']['auroc']:.3f}, TIA {m['tia']['acc']:.3f} / "
            f"{m['tia']['auroc']:.3f}" + (f" (at the model's cut {m['ita']['acc_at_model_cut']:.3f} / "
                                          f"{m['tia']['acc_at_model_cut']:.3f})" if "acc_at_model_cut" in m["ita"] else "")
            for kind, m in kinds.items()), flush=True)
    for name, kinds in results["camenn_cosine"].items():
        print(f"{name}, its pooled cosine alone: AUROC " + "; ".join(
            f"{kind} ITA {m['ita']['auroc']:.3f} / TIA {m['tia']['auroc']:.3f}" for kind, m in kinds.items()), flush=True)

    import torch

    figures = {
        "benchmark": "bench_grocery", "created": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/bench_grocery.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "config": config.source, "overrides": args.set,
        "model": dataclasses.asdict(art.config),
        "training": config.training.model_dump(mode="json", include={"epochs", "steps_per_epoch", "alignment_batch_size",
                                                                     "lr", "split", "num_processes"}),
        "variants": {name: {"overrides": variants[name], "d_model": a.config.d_model, "params": a.model.num_params(),
                            "training_held_out": trained[name].metrics, "validation": results["camenn"][name]}
                     for name, a in arts.items()},
        "augment": args.augment, "view_colour": args.view_colour, "val_views": args.val_views,
        "photos": {"train": len(train_rows), "val": len(val_rows), "in_store": len(row_of),
                   "products": len(set(fine)), "coarse_classes": len(set(coarse))},
        "artifact_tasks": art.metadata.get("tasks"), "validation": results, "table": lines, "seconds": seconds,
    }
    write_json(args.json, figures)
    say(f"done in {seconds['total']:.0f}s", t0)
    if ours:
        spark.stop()
    return figures


if __name__ == "__main__":
    main()
