"""GroceryStore: alignment scores measured against reference listings, for photos unlike the training ones.

    /tmp/jobslot .venv/bin/python benchmarks/bench_grocery_reference.py --bench-root runs/bench/grocery-views \
        --variant "augmented, 8 epochs" --json benchmarks/results/bench_grocery_reference.json

Runs after benchmarks/bench_grocery.py, on its tables and one of its trained variants.

Why: on the validation photos the model ranks pairs well (random ITA AUROC 0.997) but scores true
pairs lower than on photos taken like the training ones, so a fixed cut (0.5, or a quantile of the
held-out training photos) rejects many true pairs and flags many clean listings
(docs/results/grocery-store.md). A listing's logit measured against the same listing with K other listings' texts
(ITA) or photos (TIA) would cancel what moves every score of a photo or of a text at once: the
question becomes "does this text fit this photo better than other listings' texts do?".

For a listing (text t, photo v, item fields f) and K reference listings r, drawn from the same set
of listings (never one with the listing's own text: another photo of the same product would fit):

- ``raw``: the ITA and TIA logits of (t, v, f), the model's own scores;
- ``centred``: the logit minus the mean of the K reference logits, (r's text, v, f) for ITA and
  (t, r's photo, f) for TIA;
- ``softmax``: the logit minus the log-sum-exp of the K reference logits, plus log K (a rank-like
  score: how the listing's own pair competes with the alternatives);

- ``views`` (on a root of ``bench_grocery.py --val-views K``): the raw logits as the mean over the
  listing's photo and its K test-time views (no references), to read its flags beside the others;

with references drawn from any listing of the same night (``any``), from the listing's own category
(``category``, where the category has K other texts; else from any), or from the held-out training
photos (``held_out``: a fixed set a model artifact could carry, so that a night of one changed
listing still has references). The decision thresholds come from the
training job's own held-out training photos (item_split "test", never a view): the per-task cut
that maximises accuracy on their pairs with random negatives (the median of the cuts that tie). The validation photos never set one.

On the validation photos (the same pairs as bench_grocery: its random and hard partners, seed 0):
accuracy at those thresholds and AUROC, random and same-class; and the flags a night would raise,
simulated on the same listings: a listing is flagged when a side is under the 2% quantile of the
held-out photos' clean scores (as bench_grocery_flags), with the swapped listings (text swaps =
ITA negatives, image swaps = TIA negatives) as the damaged ones; precision at a 10% share of
damaged listings (as the planted night), and the best precision at recall 0.8 that the scores allow.

Cost for a night: 2K more pair forwards per listing through the fused model (the alignment heads,
not the encoders), or the same with the pooled cosine (``model.alignment_skip``) at the price of a
dot product. Nothing here runs in the nightly job yet.

``--pools any`` draws references from one pool only: the raw and views rows (what the seed summary,
summarise_grocery_seeds.py, reads) come with the first pool, and the other pools' reference passes
are skipped. The JSON records the scored models' training seeds (``model_seeds``, from their artifacts).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
from _common import write_json  # noqa: E402
from bench_grocery import DATA, VIEW_MARK, is_view, partners, read_classes, read_split, say, slug, view_rows  # noqa: E402

from camenn.config import load_config  # noqa: E402

METHODS = ("raw", "centred", "softmax")
POOLS = ("any", "category", "held_out")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "conf" / "grocery.yaml"))
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--bench-root", default=str(_ROOT / "runs" / "bench" / "grocery"))
    p.add_argument("--variant", required=True, help="which of bench_grocery's trained variants scores")
    p.add_argument("--ensemble", action="append", default=[], metavar="ROOT:VARIANT",
                   help="also score with this bench root's variant and take the mean logit of the models (repeatable; "
                        "its features must be the same encoder's and its vocabulary the same)")
    p.add_argument("--k", type=int, default=16, help="reference listings per listing")
    p.add_argument("--pools", nargs="+", choices=POOLS, default=list(POOLS),
                   help="where references come from (default all); the raw and views rows come with the first")
    p.add_argument("--flag-quantile", type=float, default=0.02)
    p.add_argument("--damaged-share", type=float, default=0.1, help="share of damaged listings for the precision")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as given to bench_grocery.py")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


# ------------------------------------------------------------------------ scores


def mean_of_models(models: list):
    """Several models scored as one: the mean of their logits (an ensemble; one model is itself)."""
    import torch

    if len(models) == 1:
        return models[0]

    class MeanLogit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.members = torch.nn.ModuleList(models)

        def forward(self, batch, tasks):
            outs = [m(batch, tasks) for m in self.members]
            return {t: torch.stack([o[t] for o in outs]).mean(0) for t in tasks}   # (b,) per task

    return MeanLogit()


def pair_logits(model, store, text_rows, image_rows, feat_rows, batch_size: int = 512) -> np.ndarray:
    """ITA and TIA logits (n, 2) of the listings made of these rows' text, photo and item fields."""
    import torch

    from camenn.model import CameNNBatch, ItemTokens
    from camenn.training import trim_items

    out = []
    with torch.no_grad():
        for s in range(0, len(text_rows), batch_size):
            t, v, f = (store.gather(torch.as_tensor(r[s:s + batch_size])) for r in (text_rows, image_rows, feat_rows))
            items = ItemTokens(t.text, t.text_mask, v.image, f.feats)
            logits = model.eval()(CameNNBatch(target=trim_items(items)), ("ita", "tia"))
            out.append(torch.stack([logits["ita"], logits["tia"]], 1).float().numpy())   # (b, 2)
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def draw_references(listing_text: np.ndarray, listing_feat: np.ndarray, pool: np.ndarray, fine: np.ndarray,
                    coarse: np.ndarray, k: int, by_category: bool, rng: np.random.Generator) -> np.ndarray:
    """(n, k) store rows of reference listings: never one with the listing's own text (its product);
    from the listing's category where it has k such rows, else from the whole pool."""
    out = np.empty((len(listing_text), k), dtype=np.int64)
    for n, (t, f) in enumerate(zip(listing_text, listing_feat)):
        ok = pool[fine[pool] != fine[t]]
        if by_category:
            same = ok[coarse[ok] == coarse[f]]
            ok = same if len(same) >= k else ok
        out[n] = rng.choice(ok, size=k, replace=len(ok) < k)
    return out


def listing_scores(model, store, text, image, feat, refs, views=None) -> dict[str, np.ndarray]:
    """method -> (n, 2) ITA/TIA scores of the listings (text, image, feat) with reference rows ``refs`` (n, k);
    with ``views`` = (K, a function (image rows, j) -> the rows of their view j, or the rows themselves
    where a photo has no views), also "views": the mean logit over the photo and its K test-time views."""
    own = pair_logits(model, store, text, image, feat)                       # (n, 2)
    out = {}
    if views is not None:
        k_views, view_rows = views
        out["views"] = np.mean([own, *(pair_logits(model, store, text, view_rows(image, j), feat)
                                       for j in range(1, k_views + 1))], 0)  # (n, 2)
    n, k = refs.shape
    flat = refs.reshape(-1)
    rep = lambda a: np.repeat(a, k)                                          # noqa: E731
    ita_ref = pair_logits(model, store, flat, rep(image), rep(feat))[:, 0].reshape(n, k)   # other texts, own photo
    tia_ref = pair_logits(model, store, rep(text), flat, rep(feat))[:, 1].reshape(n, k)    # own text, other photos
    ref = np.stack([ita_ref, tia_ref], 1)                                    # (n, 2, k)
    lse = np.log(np.exp(ref - ref.max(-1, keepdims=True)).sum(-1)) + ref.max(-1)   # (n, 2)
    return {"raw": own, "centred": own - ref.mean(-1), "softmax": own - lse + np.log(k), **out}


def listings_of(idx: np.ndarray, donor_random: np.ndarray, donor_hard: np.ndarray) -> dict[str, tuple]:
    """(text, image, feat) rows of the clean listings and of the swaps: a text swap takes the donor's text
    (an ITA negative), an image swap the donor's photo (a TIA negative); hard = the donor is of the same class.
    "clean_hard": the clean listings that have a same-class partner, the positives of the hard pairs."""
    keep = donor_hard >= 0
    hi, hd = idx[keep], idx[donor_hard[keep]]
    dr = idx[donor_random]
    return {"clean": (idx, idx, idx), "clean_hard": (hi, hi, hi),
            "text_swap_random": (dr, idx, idx), "image_swap_random": (idx, dr, idx),
            "text_swap_hard": (hd, hi, hi), "image_swap_hard": (hi, hd, hi)}


# ------------------------------------------------------------------------ metrics


def best_cut(pos: np.ndarray, neg: np.ndarray) -> float:
    """The threshold that maximises accuracy over these positives and negatives: of the cuts that tie (every
    cut in a gap between the two kinds of score does, and held-out photos leave a wide one), the median one,
    so that the tie is not broken towards either side."""
    s = np.sort(np.concatenate([pos, neg]))
    cuts = np.concatenate([[s[0] - 1], (s[1:] + s[:-1]) / 2, [s[-1] + 1]])
    acc = np.array([((pos >= c).sum() + (neg < c).sum()) for c in cuts])
    best = np.flatnonzero(acc == acc.max())
    return float(cuts[best[len(best) // 2]])


def pair_metrics(pos: np.ndarray, neg: np.ndarray, cut: float) -> dict:
    from camenn.metrics import roc_auc

    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return {"acc": float(((pos >= cut).sum() + (neg < cut).sum()) / len(y)),
            "auroc": float(roc_auc(y, np.r_[pos, neg])), "n": int(len(pos)),
            "true_pairs_kept": float((pos >= cut).mean()), "negatives_caught": float((neg < cut).mean())}


def flag_metrics(scores: dict, thresholds: np.ndarray, share: float) -> dict:
    """The flags (a side under its threshold) on clean listings against every swap: the clean flagged,
    the swaps caught, precision at ``share`` damaged listings, the best precision at recall 0.8 (a cut
    chosen on these listings: what the scores allow) and how often the lower side names the swapped one."""
    from camenn.metrics import roc_auc

    margin = {name: s - thresholds for name, s in scores.items()}           # (n, 2) each: < 0 = under the cut
    clean = margin["clean"].min(1)
    swaps = {name: m for name, m in margin.items() if "swap" in name}
    damaged = np.concatenate([m.min(1) for m in swaps.values()])
    fpr, tpr = float((clean < 0).mean()), float((damaged < 0).mean())
    # weight the clean listings so that the damaged ones are ``share`` of the whole, as a planted night
    w = share / (1 - share) * len(clean) / len(damaged)
    order = np.argsort(np.r_[damaged, clean], kind="stable")
    y = np.r_[np.ones(len(damaged)), np.zeros(len(clean))][order]
    hits, weight = np.cumsum(y * w), np.cumsum(np.where(y == 1, w, 1.0))
    reach = int(np.searchsorted(hits / (len(damaged) * w), 0.8))
    side = {name: float(((m[:, 0] < m[:, 1]) == name.startswith("text")).mean()) for name, m in swaps.items()}
    return {"clean_flagged": fpr, "swaps_caught": tpr,
            "precision": float(tpr * share / (tpr * share + fpr * (1 - share))) if tpr + fpr else None,
            "best_precision_at_recall_0.8": float(hits[reach] / weight[reach]),
            "auroc": float(roc_auc(np.r_[np.ones(len(damaged)), np.zeros(len(clean))], -np.r_[damaged, clean])),
            "side_named": side}


# ------------------------------------------------------------------------ the run


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    root = Path(args.bench_root).resolve()
    sets = [f"data.root={root / 'tables'}", *args.set]
    config = load_config(args.conf, sets)
    from pyspark.sql import SparkSession

    from camenn.checkpoint import load_artifact
    from camenn.inputs import FeatureVocab
    from camenn.training import item_split
    from pipeline.session import get_spark
    from pipeline.training_data import load_item_store

    ours = SparkSession.getActiveSession() is None
    spark = get_spark(config)
    art = load_artifact(str(root / "model" / slug(args.variant)))
    vocab = FeatureVocab.from_dict(art.metadata["vocab"])
    members, seeds = [art.model.eval()], [int(art.metadata["seed"])]
    for spec in args.ensemble:
        other_root, _, other_variant = spec.partition(":")
        other = load_artifact(str(Path(other_root).resolve() / "model" / slug(other_variant)))
        for key in ("vocab", "encoder_fingerprint"):
            if other.metadata[key] != art.metadata[key]:
                raise SystemExit(f"--ensemble {spec}: its {key} is not {args.variant}'s, so it reads other inputs")
        members.append(other.model.eval())
        seeds.append(int(other.metadata["seed"]))
    model = mean_of_models(members)
    store = load_item_store(spark, config.table("item_features"), None, config.table("items"), None,
                            art.metadata["encoder_fingerprint"], vocab, art.config.n_patches)
    data = Path(args.data).resolve()
    classes = read_classes(data)
    info = {r["photo_id"]: r for split in ("train", "val") for r in read_split(data, split, classes, None)}
    base = [i.split("-aug")[0] for i in store.item_ids]   # a view's product is its photo's
    fine = np.array([info[b]["fine_class"] for b in base])
    coarse = np.array([info[b]["coarse_class"] for b in base])
    sp = config.training.split
    held_out = np.array([not is_view(i) and not i.startswith("val-")
                         and item_split(i, sp.test_fraction, sp.valid_fraction, sp.seed) == "test" for i in store.item_ids])
    sets_of = {"held_out": np.flatnonzero(held_out),
               # a root of bench_grocery --val-views also holds test-time views of the validation photos
               "validation": np.flatnonzero([i.startswith("val-") and not is_view(i) for i in store.item_ids])}
    # test-time views (bench_grocery --val-views): a row "views" scores each listing's photo as the mean logit
    # over it and its views; the held-out training photos have none, so their "views" are their raw scores
    # and the cuts and thresholds of the row are raw's
    row_of = {item_id: r for r, item_id in enumerate(store.item_ids)}
    k_views = max((int(i.rsplit(VIEW_MARK, 1)[1]) for i in store.item_ids if i.startswith("val-") and is_view(i)), default=0)

    views = (k_views, partial(view_rows, store.item_ids, row_of)) if k_views else None
    methods = (*METHODS, "views") if views else METHODS
    say(f"{len(store.item_ids)} items in the store; held-out training photos {len(sets_of['held_out'])}, "
        f"validation photos {len(sets_of['validation'])}; K = {args.k}; test-time views a photo {k_views}", t0)
    if not len(sets_of["validation"]):
        # bench_grocery merges the validation photos after its last variant has trained
        raise SystemExit(f"error: {args.bench_root}: no validation photos in its items yet; let bench_grocery.py on it run to the end")

    scores: dict = {}   # set -> pool -> method -> listing kind -> (n, 2)
    for set_name, idx in sets_of.items():
        rng = np.random.default_rng(0)   # bench_grocery's order: random partners, then hard, from one seed-0 rng
        donor_random = partners(fine[idx], coarse[idx], False, rng)
        donor_hard = partners(fine[idx], coarse[idx], True, rng)
        lists = listings_of(idx, donor_random, donor_hard)
        scores[set_name] = {}
        for pool in args.pools:
            rng = np.random.default_rng(args.seed)
            per_kind = {}
            for kind, (text, image, feat) in lists.items():
                ref_pool = sets_of["held_out"] if pool == "held_out" else idx
                refs = draw_references(text, feat, ref_pool, fine, coarse, args.k, pool == "category", rng)
                per_kind[kind] = listing_scores(model, store, text, image, feat, refs, views if pool == args.pools[0] else None)
            scored = next(iter(per_kind.values()))   # the methods each kind was scored by (views: first pool only)
            scores[set_name][pool] = {m: {kind: per_kind[kind][m] for kind in lists} for m in scored}
            say(f"{set_name}: scored {sum(len(t) for t, _, _ in lists.values())} listings with {args.k} "
                f"{pool} references each", t0)

    results: dict = {}
    lines = ["| score | references | cut from held-out photos ITA / TIA | random: ITA acc / AUROC | random: TIA acc / AUROC "
             "| same class: ITA acc / AUROC | same class: TIA acc / AUROC | flags: clean flagged / swaps caught / precision "
             "| flags at the cuts: clean flagged / swaps caught / precision | best precision at recall 0.8 | detection AUROC |",
             "|---" * 11 + "|"]
    for pool in args.pools:
        for method in methods:
            if method in ("raw", "views") and pool != args.pools[0]:
                continue   # raw scores (and their views) do not use the references
            cal, val = scores["held_out"][pool][method], scores["validation"][pool][method]
            cuts = np.array([best_cut(cal["clean"][:, 0], cal["text_swap_random"][:, 0]),
                             best_cut(cal["clean"][:, 1], cal["image_swap_random"][:, 1])])
            flag_cuts = np.quantile(cal["clean"], args.flag_quantile, axis=0)   # (2,)
            row = {"cuts": cuts.tolist(), "flag_thresholds": flag_cuts.tolist(), "validation": {}, "held_out": {}}
            for set_name, s in (("validation", val), ("held_out", cal)):
                for kind in ("random", "hard"):
                    pos = s["clean" if kind == "random" else "clean_hard"]
                    row[set_name][kind] = {"ita": pair_metrics(pos[:, 0], s[f"text_swap_{kind}"][:, 0], cuts[0]),
                                           "tia": pair_metrics(pos[:, 1], s[f"image_swap_{kind}"][:, 1], cuts[1])}
                row[set_name]["flags"] = flag_metrics(s, flag_cuts, args.damaged_share)
                row[set_name]["flags_at_the_cuts"] = flag_metrics(s, cuts, args.damaged_share)
            if method in ("raw", "views"):   # and the model's own 0.5 point, as bench_grocery reports it
                row["validation_at_0.5"] = {kind: {t: pair_metrics(val["clean" if kind == "random" else "clean_hard"][:, c],
                                                                   val[f"{side}_swap_{kind}"][:, c], 0.0)
                                                   for t, c, side in (("ita", 0, "text"), ("tia", 1, "image"))}
                                            for kind in ("random", "hard")}
            name = method if method in ("raw", "views") else f"{method}, {pool}"
            results[name] = row
            v, f, fc = row["validation"], row["validation"]["flags"], row["validation"]["flags_at_the_cuts"]
            lines.append(f"| {method} | {'-' if method in ('raw', 'views') else pool} | {cuts[0]:.2f} / {cuts[1]:.2f} | "
                         + " | ".join(f"{v[kind][t]['acc']:.3f} / {v[kind][t]['auroc']:.3f}"
                                      for kind in ("random", "hard") for t in ("ita", "tia"))
                         + f" | {f['clean_flagged']:.3f} / {f['swaps_caught']:.3f} / {f['precision']:.3f} | "
                           f"{fc['clean_flagged']:.3f} / {fc['swaps_caught']:.3f} / {fc['precision']:.3f} | "
                           f"{f['best_precision_at_recall_0.8']:.3f} | {f['auroc']:.3f} |")
    print("\n".join(lines), flush=True)
    raw05 = results["raw"]["validation_at_0.5"]
    print("raw at the model's 0.5: " + "; ".join(f"{kind} ITA {raw05[kind]['ita']['acc']:.3f} / TIA {raw05[kind]['tia']['acc']:.3f}"
                                                  for kind in ("random", "hard")), flush=True)

    import torch

    figures = {"benchmark": "bench_grocery_reference", "created": dt.datetime.now().isoformat(timespec="seconds"),
               "command": " ".join(["benchmarks/bench_grocery_reference.py", *(argv if argv is not None else sys.argv[1:])]),
               "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
               "variant": args.variant, "ensemble": args.ensemble, "model_seeds": seeds, "pools": args.pools,
               "k": args.k, "test_time_views": k_views,
               "flag_quantile": args.flag_quantile,
               "damaged_share": args.damaged_share,
               "listings": {s: len(i) for s, i in sets_of.items()}, "results": results, "table": lines,
               "seconds": time.perf_counter() - t0}
    write_json(args.json, figures)
    say(f"done in {figures['seconds']:.0f}s", t0)
    if ours:
        spark.stop()
    return figures


if __name__ == "__main__":
    main()
