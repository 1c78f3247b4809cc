"""What a flagged listing's report row says: which side looks wrong, which category fits, the advice.

Pure logic (no Spark, no files): the flagged side, the category suggestion from the nearest
centroids of unflagged items, and a merchant's rows worst first. Each function is unit-tested
on plain values (tests/test_report.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pipeline.report.pages import PageSettings


SIDES = ("text", "image", "both")


PROBLEM = {
    "text": "The description does not match the photo — check the title and description.",
    "image": "The photo does not match the description — check the photo.",
    "both": "The photo and the description do not match each other — check the photo, the title and the description.",
}


SIDE_LABEL = {"text": "text looks wrong", "image": "photo looks wrong", "both": "text and photo disagree"}


# What a merchant page says when the night warned that its calibrated thresholds do not fit the catalogue
CAUTION = ("Tonight's check flagged far more listings than usual across all shops: its limits may not fit "
           "listings like these yet, so some flags below may be false alarms. Check each one before you change it.")


@dataclass(frozen=True)
class FlagRule:
    """How the night flagged items, as its ``runs`` row recorded it (``details.thresholds``)."""

    mode: str                      # absolute, category_quantile or calibrated
    ita: float                     # the values applied (a calibrated mode's come from the model)
    tia: float
    quantile: float
    min_category_items: int = 0
    share_below: dict[str, float] = field(default_factory=dict)   # share of scored items under each threshold
    warnings: tuple[str, ...] = ()
    recorded: bool = True          # False: a night from before thresholds were recorded; the config's rule
    night_median: dict[str, float] = field(default_factory=dict)  # recentre: the night's median ITA / TIA
    before_recentre: dict[str, float] = field(default_factory=dict)  # recentre: the values before the night moved them
    recentred_over: dict = field(default_factory=dict)  # recentre: {"listings": "new" or "all", "n", "scored", "why"}
    night_quartile: dict[str, float] = field(default_factory=dict)  # rescale: the night's lower quartile ITA / TIA
    contrast: float = 0.0          # each side read against the other's distance above the night's median

    @classmethod
    def of(cls, recorded: dict | None, configured) -> FlagRule:
        """From a night's recorded thresholds, or the configured ones (a ``ThresholdConfig``) if it has none."""
        if not recorded:
            return cls(configured.mode, configured.ita, configured.tia, configured.quantile,
                       configured.min_category_items, recorded=False)
        return cls(recorded["mode"], float(recorded["ita"]), float(recorded["tia"]), float(recorded["quantile"]),
                   int(recorded.get("min_category_items", 0)),
                   {k: float(v) for k, v in (recorded.get("share_below") or {}).items()},
                   tuple(recorded.get("warnings") or ()),
                   night_median={k: float(v) for k, v in (recorded.get("night_median") or {}).items()},
                   before_recentre={k: float(v) for k, v in (recorded.get("before_recentre") or {}).items()},
                   recentred_over=dict(recorded.get("recentred_over") or {}),
                   night_quartile={k: float(v) for k, v in (recorded.get("night_quartile") or {}).items()
                                   if recorded.get("rescale")},
                   contrast=float(recorded.get("contrast") or 0.0))

    def summary(self) -> str:
        """One sentence for the index page: the rule, the values and, for an unrecorded night, where they come from."""
        values = f"ITA below {self.ita:.3f} or TIA below {self.tia:.3f}"
        if self.mode == "calibrated":
            rule = f"{values}: the {self.quantile:.0%} quantile of the model's own held-out listings"
        elif self.mode == "category_quantile":
            rule = (f"ITA or TIA in the lowest {self.quantile:.0%} of its category (categories of at least "
                    f"{self.min_category_items} listings), else {values}")
        else:
            rule = f"{values} (fixed thresholds)"
        if self.night_median:   # thresholds.recentre: moved down where tonight's median listing scores lower
            over = self.recentred_over
            whose = (f"the median of tonight's {over['n']:,} listings new to the model" if over.get("listings") == "new"
                     else "tonight's median listing")   # "all": too few new ones, no snapshot, or a night recorded before the field
            median = f"{whose} (ITA {self.night_median['ita']:.3f}, TIA {self.night_median['tia']:.3f})"
            before = self.before_recentre
            if before and (before.get("ita") != self.ita or before.get("tia") != self.tia):
                rule += (f", moved down from ITA {before['ita']:.3f} / TIA {before['tia']:.3f} by as much as {median} "
                         "scores under the listings they were set on")
                if self.night_quartile:   # thresholds.rescale
                    rule += (f", and further by as much as their lower half (lower quartile ITA {self.night_quartile['ita']:.3f}, "
                             f"TIA {self.night_quartile['tia']:.3f}) spreads wider than those listings'")
            else:
                rule += f", not moved: {median} scores no lower than the listings they were set on"
            if self.contrast:   # thresholds.contrast
                rule += (f"; each side read against the other: its score less {self.contrast:g} x how far the other "
                         "side's lies above tonight's median (a listing whose two sides are both low is an unusual photo "
                         "more often than a mismatch)")
        return rule if self.recorded else f"{rule}; the night recorded no thresholds, so these are the configuration's"


def merchant_slug(merchant_id: str) -> str:
    """A file-name stem for a merchant: lowercase ASCII letters, digits and dashes + a short hash.

    The hash (of the exact id) keeps ids that slug alike apart ("Shop A" / "shop-a"); the slug
    keeps names readable. Nothing of the id can reach the path as a separator, dot or control
    character: "../../etc/passwd" becomes "etc-passwd-<hash>".
    """
    digest = hashlib.sha256(str(merchant_id).encode("utf-8")).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9]+", "-", str(merchant_id).lower()).strip("-")[:40].strip("-")
    return f"{slug or 'merchant'}-{digest}"


def side_of(suspect_side: str | None, p_ita: float, p_tia: float, ita_threshold: float = 0.5,
            tia_threshold: float = 0.5) -> str:
    """Which side of a flagged item looks wrong: "text" (low ITA), "image" (low TIA) or "both".

    The scoring job's ``item_alignment.suspect_side`` decides; a row without it (written before
    the column existed) is decided by the probabilities against the thresholds, and a flag
    neither threshold explains (per-category thresholds) goes to the lower one.
    """
    if suspect_side in SIDES:
        return suspect_side
    low_text, low_image = p_ita < ita_threshold, p_tia < tia_threshold
    if low_text and low_image:
        return "both"
    if low_text or low_image:
        return "text" if low_text else "image"
    return "text" if p_ita <= p_tia else "image"


def suggest(side: str, category: str | None, text_category: str | None,
            image_category: str | None) -> tuple[str | None, str]:
    """(suggested category, one sentence for the merchant) from the nearest centroids.

    When the model's text and image agree on a category, that is the suggestion; otherwise the
    side that looks right is trusted (the image when the text looks wrong, and vice versa).
    """
    listed = category or "(none)"
    if text_category is None and image_category is None:
        return None, "No suggestion: there are not enough unflagged items to compare with."
    if text_category is not None and text_category == image_category:
        agreed = text_category
        if agreed != category:
            return agreed, (f"The photo and the text both look like “{agreed}”, but the item is listed under "
                            f"“{listed}”: if it is a {agreed} item, move it to “{agreed}”.")
        fix = {"text": "make the title and description say clearly what the photo shows",
               "image": "use a clear photo of the product itself",
               "both": "make the photo and the text clearer"}[side]
        return agreed, f"The photo and the text both look like “{agreed}”, as listed: {fix}."
    if side == "text" and image_category is not None:
        return image_category, (f"The photo looks like “{image_category}”, the text like “{text_category}”: "
                                f"describe what the photo shows, or replace the photo if the text is right.")
    if side == "image" and text_category is not None:
        return text_category, (f"The text describes “{text_category}”, the photo looks like “{image_category}”: "
                               f"use a photo of the product the text describes.")
    return None, (f"The text reads like “{text_category}” and the photo looks like “{image_category}”: "
                  f"make both show the same product (listed under “{listed}”).")


def csv_safe(value):
    """Neutralise spreadsheet formulas in merchant text (OWASP CSV injection): prefix with '."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def text_of(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def optional_text(value) -> str | None:
    text = text_of(value)
    return text if text else None


def as_date(value) -> dt.date | None:
    if value is None or value is pd.NaT or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return pd.Timestamp(value).date()


def unit_vectors(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(norm, 1e-12)


def pooled_vectors(text_emb, n_text_tokens, image_emb, n_patches: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit mean-pooled text and image vectors of one item from its item_features blobs (fp16).

    Decoded by the project's one blob codec; the widths follow from the blob sizes, so blobs of
    any encoder decode (a size that does not divide raises ValueError: no suggestion).
    """
    from camenn.featurizer import BLOB_FP16, unpack_item_features

    n, text, image = int(n_text_tokens), bytes(text_emb), bytes(image_emb)
    size = BLOB_FP16.itemsize
    if n < 1 or len(text) % (n * size) or len(image) % (n_patches * size):
        raise ValueError(f"blob sizes {len(text)}/{len(image)} bytes do not fit {n} tokens and {n_patches} patches")
    t, _, im = unpack_item_features([text], [n], [image], len(text) // (n * size), len(image) // (n_patches * size),
                                    n_patches)                          # (1, n, Dt), (1, n), (1, P, Di)
    return unit_vectors(t[0].mean(dim=0).numpy()), unit_vectors(im[0].mean(dim=0).numpy())


@dataclass
class Centroids:
    """Per listed category: unit centroids of unflagged items' text and image vectors."""

    categories: list[str]
    text: np.ndarray            # (C, Dt)
    image: np.ndarray           # (C, Di)
    counts: list[int] = field(default_factory=list)

    def nearest(self, text_vec: np.ndarray, image_vec: np.ndarray) -> tuple[str | None, str | None]:
        if not self.categories:
            return None, None
        t = int(np.argmax(self.text @ text_vec)) if self.text.shape[1] == text_vec.shape[0] else None
        i = int(np.argmax(self.image @ image_vec)) if self.image.shape[1] == image_vec.shape[0] else None
        return (self.categories[t] if t is not None else None, self.categories[i] if i is not None else None)


def merchant_rows(pdf: pd.DataFrame, settings: PageSettings) -> pd.DataFrame:
    """One merchant's flagged items -> report rows, worst first (rank 1 = lowest min(p_ita, p_tia))."""
    out = []
    for rec in pdf.to_dict("records"):
        p_ita, p_tia = float(rec["p_ita"]), float(rec["p_tia"])
        side = side_of(optional_text(rec.get("suspect_side")), p_ita, p_tia, settings.ita_threshold, settings.tia_threshold)
        category = optional_text(rec.get("category"))
        text_cat, image_cat = optional_text(rec.get("text_category")), optional_text(rec.get("image_category"))
        suggested, suggestion = suggest(side, category, text_cat, image_cat)
        first = as_date(rec.get("first_flagged")) or settings.run_date
        out.append({
            "item_id": text_of(rec["item_id"]), "merchant_id": text_of(rec["merchant_id"]), "category": category,
            "title": text_of(rec.get("title")), "description": text_of(rec.get("description")),
            "p_ita": p_ita, "p_tia": p_tia, "side": side, "problem": PROBLEM[side],
            "text_category": text_cat, "image_category": image_cat, "suggested_category": suggested,
            "suggestion": suggestion, "first_flagged": first, "is_new": first >= settings.run_date,
            "content_hash": text_of(rec.get("content_hash")), "model_version": optional_text(rec.get("model_version")),
            "thumb": optional_text(rec.get("thumb")),
        })
    out.sort(key=lambda r: (min(r["p_ita"], r["p_tia"]), r["item_id"]))
    for rank, row in enumerate(out, start=1):
        row["rank"] = rank
        row["status"] = "new" if row["is_new"] else "still flagged"
    return pd.DataFrame(out)
