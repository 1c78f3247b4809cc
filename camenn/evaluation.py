"""Evaluation: the comparison table, mislabel detection and the text-image similarity heat maps.

Pure Python + PyTorch (no pyspark): the Spark side (pipeline.train.run_evaluation) hands in
plain frames and arrays.

- :func:`comparison` - CVR AUC mean +- std over seeds per model, ITA/TIA accuracy on held-out
  items, and, on the synthetic world, each model's share of the achievable lift
  (AUC - 0.5) / (Bayes AUC - 0.5) against the Bayes-optimal ceiling.
- :func:`mislabel_detection` - per planted defect type (truth_items.defect): AUROC of low
  ITA / TIA / min(ITA, TIA) against clean items, precision and recall of the flag rule
  (scoring.thresholds), and whether ITA vs TIA names the wrong side (text or image).
- :func:`similarity_heatmap` - cosine similarity between 8 items' text and image
  representations (the paper's figures 4 and 5), as a PNG.
- :func:`comparison_chart` - the comparison table as a picture: CVR AUC per model with every
  seed's value, against the inputs ceiling and the Bayes AUC; ITA/TIA accuracy beside it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from camenn.inputs import FeatureVocab, ItemStore  # noqa: F401  (FeatureVocab re-exported for callers)
from camenn.metrics import roc_auc
from camenn.model import CameNN, CameNNBatch
from camenn.training import item_split, predict_items, trim_items

# which side a planted defect damages: text defects should show on ITA, image defects on TIA
DEFECT_SIDE = {"text_swap": "text", "vague_text": "text", "image_swap": "image", "blurred_image": "image",
               "wrong_category": None}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def mean_std(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def lift_share(auc: float, bayes_auc: float | None) -> float | None:
    """(AUC - 0.5) / (Bayes AUC - 0.5): the share of the achievable lift over random a model gets."""
    if bayes_auc is None or not bayes_auc > 0.5 or auc is None or math.isnan(auc):
        return None
    return (auc - 0.5) / (bayes_auc - 0.5)


def comparison(results: dict[str, list[dict]], bayes: float | None = None) -> list[dict]:
    """One row per model: mean and std over seeds of CVR AUC, ITA/TIA accuracy, lift share."""
    rows = []
    for name, runs in results.items():
        row = {"model": name, "seeds": [r.get("seed") for r in runs]}
        for key in ("cvr_auc", "ita_acc", "tia_acc", "ita_auc", "tia_auc", "train_seconds", "epochs_run"):
            m, s = mean_std([r.get(key) for r in runs])
            row[key] = m
            row[f"{key}_std"] = s
        shares = [lift_share(r.get("cvr_auc"), bayes) for r in runs]
        row["lift_share"], row["lift_share_std"] = mean_std(shares) if bayes else (None, None)
        rows.append(row)
    return rows


def logistic_ceiling(frame, seed: int = 0, profile_fields: tuple[str, ...] = ("age_band", "household", "zone")) -> dict:
    """CVR AUC of a logistic regression on hand-made features of what the model's inputs show.

    ``frame`` (pandas): split, label, category, price, the ``profile_fields``, match (how
    many of the example's behaviour items share the target's category) and boolean text-tag
    columns whose names start with ``tag_``. The features follow the synthetic world's purchase
    model (favourite categories from the profile and the history, price, tags): it is the
    AUC within reach of the same inputs, which the Bayes AUC (true favourites) is not. Fit on
    the train split, measured on test. Returns {"auc", "auc_without_tags", "n_train", "n_test"}.
    """
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    n = len(frame)
    categories = {c: i for i, c in enumerate(sorted(frame["category"].astype(str).unique()))}
    cat = frame["category"].astype(str).map(categories).to_numpy()
    rows = np.arange(n)

    def one_hot(codes: np.ndarray, width: int):
        return sp.csr_matrix((np.ones(n), (rows, codes)), shape=(n, width))

    blocks = [one_hot(cat, len(categories))]
    for field in profile_fields:  # profile x category: favourites follow the profile
        values = {v: i for i, v in enumerate(sorted(frame[field].astype(str).unique()))}
        blocks.append(one_hot(frame[field].astype(str).map(values).to_numpy() * len(categories) + cat,
                              len(values) * len(categories)))
    match = frame["match"].to_numpy(dtype=np.float64)
    price = np.log(np.clip(frame["price"].to_numpy(dtype=np.float64), 1e-3, None))
    base = sp.hstack(blocks + [sp.csr_matrix(np.column_stack([match, match > 0, price]))]).tocsr()
    tags = [c for c in frame.columns if c.startswith("tag_")]
    with_tags = sp.hstack([base, sp.csr_matrix(frame[tags].to_numpy(dtype=np.float64))]).tocsr() if tags else base
    train, test = (frame["split"] == "train").to_numpy(), (frame["split"] == "test").to_numpy()
    y = frame["label"].to_numpy(dtype=np.float64)
    out = {"n_train": int(train.sum()), "n_test": int(test.sum())}
    for key, X in (("auc_without_tags", base), ("auc", with_tags)):
        fit = LogisticRegression(max_iter=2000, random_state=seed).fit(X[train], y[train])
        out[key] = roc_auc(y[test], fit.predict_proba(X[test])[:, 1])
    return out


# ------------------------------------------------------------------------------ mislabel detection


def _flags(p_ita: np.ndarray, p_tia: np.ndarray, categories: np.ndarray | None, thresholds) -> np.ndarray:
    if thresholds.mode == "absolute" or categories is None:
        return (p_ita < thresholds.ita) | (p_tia < thresholds.tia)
    flag = (p_ita < thresholds.ita) | (p_tia < thresholds.tia)  # small categories keep the absolute rule
    least = getattr(thresholds, "min_category_items", 1)
    for c in np.unique(categories):
        rows = categories == c
        if rows.sum() < least:
            continue
        qi, qt = np.quantile(p_ita[rows], thresholds.quantile), np.quantile(p_tia[rows], thresholds.quantile)
        flag[rows] = (p_ita[rows] <= qi) | (p_tia[rows] <= qt)
    return flag


def detection_table(p_ita: np.ndarray, p_tia: np.ndarray, defects: np.ndarray, flag: np.ndarray) -> dict:
    """Per defect type vs clean items: AUROCs of low scores, precision/recall of ``flag``, side attribution."""
    clean = defects == "none"
    low = 1.0 - np.minimum(p_ita, p_tia)
    out: dict = {"n_items": int(len(defects)), "n_clean": int(clean.sum()), "n_flagged": int(flag.sum()),
                 "flag_rate_clean": float(flag[clean].mean()) if clean.any() else float("nan")}
    bad = ~clean
    out["overall"] = {
        "n": int(bad.sum()), "auroc_min": roc_auc(bad[clean | bad], low),
        "precision": float(bad[flag].mean()) if flag.any() else float("nan"),
        "recall": float(flag[bad].mean()) if bad.any() else float("nan"),
    }
    per = {}
    for d in sorted(set(defects) - {"none"}):
        rows = defects == d
        both = rows | clean
        y = rows[both]
        entry = {
            "n": int(rows.sum()),
            "auroc_ita": roc_auc(y, 1.0 - p_ita[both]), "auroc_tia": roc_auc(y, 1.0 - p_tia[both]),
            "auroc_min": roc_auc(y, low[both]),
            "recall": float(flag[rows].mean()) if rows.any() else float("nan"),
            # precision of the flag among this type and clean items: how pure the flagged set is
            "precision": float(rows[flag & both].mean()) if (flag & both).any() else float("nan"),
            "mean_p_ita": float(p_ita[rows].mean()) if rows.any() else float("nan"),
            "mean_p_tia": float(p_tia[rows].mean()) if rows.any() else float("nan"),
        }
        side = DEFECT_SIDE.get(d)
        if side is not None and rows.any():
            blamed_text = p_ita < p_tia
            right = blamed_text if side == "text" else ~blamed_text
            entry["side"] = side
            entry["side_accuracy"] = float(right[rows].mean())
            entry["side_accuracy_flagged"] = float(right[rows & flag].mean()) if (rows & flag).any() else float("nan")
        per[d] = entry
    out["per_defect"] = per
    return out


def mislabel_detection(model: CameNN, store: ItemStore, truth, thresholds, test_fraction: float,
                       valid_fraction: float, seed: int, batch_size: int = 512) -> dict:
    """Score every item item-only and compare the flags with truth_items (a pandas frame: item_id, defect)."""
    if not {"ita", "tia"} <= set(model.cfg.tasks):
        return {}
    known = truth[truth["item_id"].isin(store.index)]
    idx = store.lookup(list(known["item_id"]))
    probs = predict_items(model, store, idx, batch_size, "cpu")
    p_ita, p_tia = probs["ita"].astype(np.float64), probs["tia"].astype(np.float64)
    defects = known["defect"].to_numpy(dtype=object)
    cats = None
    if thresholds.mode == "category_quantile":
        cats = store.feats[idx, 0].numpy()
    flag = _flags(p_ita, p_tia, cats, thresholds)
    held = np.asarray([item_split(i, test_fraction, valid_fraction, seed) == "test" for i in known["item_id"]])
    return {"threshold": {"mode": thresholds.mode, "ita": thresholds.ita, "tia": thresholds.tia, "quantile": thresholds.quantile},
            "all_items": detection_table(p_ita, p_tia, defects, flag),
            "held_out_items": detection_table(p_ita[held], p_tia[held], defects[held], flag[held])}


# ------------------------------------------------------------------------------ heat maps


def pick_heatmap_items(store: ItemStore, truth=None, n: int = 8, seed: int = 0) -> list[int]:
    """n clean items of n different categories where possible (store rows), chosen reproducibly."""
    rng = np.random.default_rng(seed)
    candidates = np.arange(len(store))
    if truth is not None:
        clean = set(truth.loc[truth["defect"] == "none", "item_id"])
        candidates = np.asarray([i for i, item in enumerate(store.item_ids) if item in clean], dtype=np.int64)
    candidates = rng.permutation(candidates)
    cats = store.feats[:, 0].numpy()
    picked, seen = [], set()
    for i in candidates:
        if cats[i] not in seen:
            picked.append(int(i))
            seen.add(cats[i])
        if len(picked) == n:
            return picked
    for i in candidates:  # fewer categories than n
        if int(i) not in picked:
            picked.append(int(i))
        if len(picked) == n:
            break
    return picked


@torch.no_grad()
def text_image_representations(model: CameNN, store: ItemStore, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item (item-only input): the shared bottom's output averaged over its text tokens and over its
    image patches -> (n, D), (n, D)."""
    model.eval()
    items = trim_items(store.gather(torch.as_tensor(rows, dtype=torch.long)))
    x, pad, _ = model.embed(CameNNBatch(target=items))  # (n, T, D) with T = 1 + L + 1 + P
    h = model.bottom(x, pad)  # (n, T, D)
    L, P = items.text.shape[1], model.cfg.n_patches
    mask = items.text_mask.float().unsqueeze(-1)  # (n, L, 1)
    text = (h[:, 1:1 + L] * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (n, D)
    image = h[:, 2 + L:2 + L + P].mean(1)  # (n, D)
    return text, image


def cosine_matrix(text: torch.Tensor, image: torch.Tensor) -> np.ndarray:
    t = torch.nn.functional.normalize(text.float(), dim=-1)
    i = torch.nn.functional.normalize(image.float(), dim=-1)
    return (t @ i.T).numpy()  # (n, n): row = item's text, column = item's image


def diagonal_contrast(sim: np.ndarray) -> dict:
    n = sim.shape[0]
    off = sim[~np.eye(n, dtype=bool)]
    diag = np.diag(sim)
    return {"diag_mean": float(diag.mean()), "offdiag_mean": float(off.mean()),
            "contrast": float(diag.mean() - off.mean()),
            "top1": float((sim.argmax(1) == np.arange(n)).mean())}


def similarity_heatmap(model: CameNN, store: ItemStore, rows: list[int], path, title: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text, image = text_image_representations(model, store, rows)
    sim = cosine_matrix(text, image)
    labels = [f"{k + 1}" for k in range(len(rows))]
    fig, ax = plt.subplots(figsize=(5.6, 4.8), dpi=120)
    im = ax.imshow(sim, cmap="viridis", vmin=-1, vmax=1)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xlabel("item image")
    ax.set_ylabel("item text")
    for a in range(len(rows)):
        for b in range(len(rows)):
            ax.text(b, a, f"{sim[a, b]:.2f}", ha="center", va="center", fontsize=6.5,
                    color="black" if sim[a, b] > 0.3 else "white")
    stats = diagonal_contrast(sim)
    ax.set_title(f"{title}\ndiag {stats['diag_mean']:.2f} vs off-diag {stats['offdiag_mean']:.2f}", fontsize=8.5)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return {"path": str(path), "items": [store.item_ids[r] for r in rows], "similarity": sim.round(4).tolist(), **stats}


def comparison_chart(runs: dict[str, list[dict]], path, bayes_auc: float | None = None,
                     ceiling_auc: float | None = None) -> dict:
    """CVR AUC (mean, and each seed as a dot) and held-out ITA/TIA accuracy per model, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)[::-1]  # first model on top
    y = np.arange(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.55 * len(names) + 1.6), dpi=120, sharey=True,
                                      gridspec_kw={"width_ratios": [3, 2]})
    labelled: set[str] = set()
    for row, name in enumerate(names):
        auc = [a for a in (r.get("cvr_auc") for r in runs[name]) if a is not None]
        mean, std = mean_std(auc)
        left.barh(row, mean - 0.5, left=0.5, color="#4c72b0", alpha=0.75, xerr=std if len(auc) > 1 else None, capsize=3)
        # seeds drawn above the error bar, which would otherwise hide them
        left.plot(auc, [row] * len(auc), "o", color="#dd8452", mec="white", ms=5, zorder=3)
        for k, (key, label, colour) in enumerate((("ita_acc", "ITA", "#55a868"), ("tia_acc", "TIA", "#c44e52"))):
            acc, acc_std = mean_std([r.get(key) for r in runs[name]])
            if math.isnan(acc):
                continue  # a model without the alignment tasks
            right.barh(row + (k - 0.5) * 0.38, acc, height=0.36, color=colour, alpha=0.8, capsize=2,
                       xerr=acc_std if len(runs[name]) > 1 else None, label=None if label in labelled else label)
            labelled.add(label)
    for value, label, style in ((ceiling_auc, "inputs ceiling (logistic regression)", ":"), (bayes_auc, "Bayes-optimal", "--")):
        if value is not None:
            left.axvline(value, color="grey", linestyle=style, label=f"{label} {value:.3f}")
    left.set_yticks(y, names)
    left.set_xlim(0.5, max([bayes_auc or 0.0, ceiling_auc or 0.0,
                            *[r.get("cvr_auc") or 0.0 for rs in runs.values() for r in rs]]) + 0.03)
    left.set_xlabel("CVR AUC, held-out users (bar: mean, dots: seeds)")
    right.set_xlim(0.5, 1.0)
    right.axvline(0.85, color="grey", linestyle="--", lw=0.8, label="paper's level 0.85")
    right.set_xlabel("ITA / TIA accuracy, held-out items")
    for ax in (left, right):
        labels = ax.get_legend_handles_labels()[1]
        if labels:
            # below the axes: inside, the legend covered the bottom model's bar
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(labels), frameon=False)
    n_seeds = max(len(r) for r in runs.values())
    fig.suptitle(f"CameNN and the paper's ablations, {n_seeds} seed(s)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return {"path": str(path)}


def learning_curves_chart(runs: dict[str, list[dict]], path, ceiling_auc: float | None = None) -> dict:
    """Validation CVR AUC and CVR loss after each epoch, one line per model and seed, as a PNG.

    Each run's ``history`` (camenn.training: one record per epoch) gives the points; the x axis
    is training steps, so models with different epoch lengths line up. Whether a curve is still
    rising at its last point says more about a short budget than the final number does.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = 0
    for k, (name, rs) in enumerate(runs.items()):
        colour = colours[k % len(colours)]
        for j, run in enumerate(rs):
            history = run.get("history") or []
            steps = [h["epoch"] * (run.get("steps_per_epoch") or 1) for h in history]
            label = name if j == 0 else None
            auc = [h.get("valid_cvr_auc") for h in history]
            if any(a is not None for a in auc):
                left.plot(steps, [np.nan if a is None else a for a in auc], "o-", color=colour, ms=3, lw=1.2,
                          alpha=0.85, label=label)
                drawn += 1
            # the CVR loss, not the task-weighted total: models without ITA/TIA have no alignment terms
            right.plot(steps, [h.get("valid_loss_cvr") for h in history], "o-", color=colour, ms=3, lw=1.2,
                       alpha=0.85, label=label)
    if ceiling_auc is not None:
        left.axhline(ceiling_auc, color="grey", linestyle=":", label=f"inputs ceiling {ceiling_auc:.3f}")
    left.set_xlabel("training steps")
    left.set_ylabel("CVR AUC, validation users")
    right.set_xlabel("training steps")
    right.set_ylabel("CVR loss (BCE), validation users")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7)
    fig.suptitle("Learning curves (one line per model and seed)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return {"path": str(path), "cvr_curves": drawn}


# ------------------------------------------------------------------------------ report


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _pm(row: dict, key: str, digits: int = 3) -> str:
    m, s = row.get(key), row.get(f"{key}_std")
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    if len(row.get("seeds") or ()) < 2 or s is None or math.isnan(s):  # one seed has no spread to show
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def report_markdown(metrics: dict) -> str:
    lines = [f"# Evaluation: {metrics.get('config')} ({metrics.get('created')})", ""]
    lines += [f"Config: `{metrics.get('config_source')}`; examples from **{metrics.get('examples_source')}**; "
              f"seeds {metrics.get('seeds')}; table versions `{json_compact(metrics.get('table_versions'))}`.", ""]
    counts = metrics.get("example_counts") or {}
    if counts:
        lines += ["Examples (split_label: rows): " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), ""]
    bayes = metrics.get("bayes") or {}
    lines += ["## Comparison (held-out 25%: CVR AUC on test users, ITA/TIA on held-out items)", ""]
    head = "| model | CVR AUC | share of achievable lift | ITA acc | TIA acc | ITA AUC | TIA AUC | epochs | train s |"
    lines += [head, "|---" * (head.count("|") - 1) + "|"]
    for row in metrics.get("comparison", []):
        lines.append(f"| {row['model']} | {_pm(row, 'cvr_auc')} | {_pm(row, 'lift_share')} | {_pm(row, 'ita_acc')} | "
                     f"{_pm(row, 'tia_acc')} | {_pm(row, 'ita_auc')} | {_pm(row, 'tia_auc')} | {_f(row.get('epochs_run'), 1)} | "
                     f"{_f(row.get('train_seconds'), 0)} |")
    chart = metrics.get("comparison_chart")
    ceiling = metrics.get("inputs_ceiling") or {}
    if ceiling.get("auc") is not None:
        share = lift_share(ceiling["auc"], bayes.get("bayes_auc")) if bayes else None
        lines.append(f"| logistic regression on the world's observable features | {_f(ceiling['auc'])} | {_f(share)} | | | | | | |")
    if bayes:
        lines.append(f"| Bayes-optimal (truth p_buy) | {_f(bayes.get('bayes_auc'))} | 1.000 | | | | | | |")
        lines += ["", f"Bayes AUC on {bayes.get('n_matched')} of {bayes.get('n_test')} test rows matched in truth_impressions; "
                  "lift share = (AUC - 0.5) / (Bayes AUC - 0.5)."]
    if ceiling.get("auc") is not None:
        lines += ["", "The logistic regression is fitted on hand-made features of what the models' inputs show "
                  "(profile x category, how many of the last behaviour items share the target's category, price, "
                  "the text's tag words): the AUC within reach of these inputs "
                  f"({_f(ceiling.get('auc_without_tags'))} without the tag words). The Bayes AUC knows each user's "
                  "true favourite categories, which a handful of purchases only hints at."]
    if chart:
        lines += ["", f"![comparison]({Path(chart['path']).name})"]
    curves = metrics.get("learning_curves_chart")
    if curves:
        lines += ["", "Validation CVR AUC and CVR loss after each epoch (a curve still rising at its end is undertrained):",
                  "", f"![learning curves]({Path(curves['path']).name})"]
    mis = metrics.get("mislabel")
    if mis:
        th = mis["threshold"]
        lines += ["", "## Mislabel detection (synthetic truth_items)", "",
                  f"Flag rule: {th['mode']} (ITA < {th['ita']} or TIA < {th['tia']})" if th["mode"] == "absolute"
                  else f"Flag rule: lowest {th['quantile']:.0%} of ITA or TIA per category", ""]
        for scope in ("all_items", "held_out_items"):
            t = mis[scope]
            lines += [f"### {scope.replace('_', ' ')} ({t['n_items']} items, {t['n_flagged']} flagged, "
                      f"{_f(t['flag_rate_clean'])} of clean items flagged)", "",
                      "| defect | n | AUROC low ITA | AUROC low TIA | AUROC low min | precision | recall | side "
                      "| side right (all) | side right (flagged) |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for d, e in t["per_defect"].items():
                lines.append(f"| {d} | {e['n']} | {_f(e['auroc_ita'])} | {_f(e['auroc_tia'])} | {_f(e['auroc_min'])} | "
                             f"{_f(e['precision'])} | {_f(e['recall'])} | {e.get('side') or '-'} | {_f(e.get('side_accuracy'))} | "
                             f"{_f(e.get('side_accuracy_flagged'))} |")
            o = t["overall"]
            lines += [f"| any defect | {o['n']} | | | {_f(o['auroc_min'])} | {_f(o['precision'])} | {_f(o['recall'])} | | | |", ""]
    maps = metrics.get("heatmaps")
    if maps:
        lines += ["## Text-image cosine similarity of 8 clean items (figures 4 and 5)", ""]
        for key, fig in maps.items():
            lines += [f"![{key}]({Path(fig['path']).name})", "",
                      f"{key}: diagonal {fig['diag_mean']:.3f}, off-diagonal {fig['offdiag_mean']:.3f}, "
                      f"contrast {fig['contrast']:.3f}, text->image top-1 {fig['top1']:.2f}", ""]
    lines += ["", "Per-seed numbers and training histories: metrics.json."]
    return "\n".join(lines) + "\n"


def json_compact(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


__all__ = ["comparison", "comparison_chart", "learning_curves_chart", "lift_share", "logistic_ceiling", "mean_std",
           "mislabel_detection", "detection_table", "similarity_heatmap", "pick_heatmap_items", "text_image_representations",
           "cosine_matrix", "report_markdown", "slug", "DEFECT_SIDE"]
