"""The per-merchant Spark tasks: enrich each flagged item (thumbnail, nearest categories), render and write its merchant's page.

Both run on executors: ``enrich_fn`` in a mapInPandas before the shuffle, so a merchant's group
holds a few KB per item; ``merchant_page_fn`` in ``groupBy(merchant_id).applyInPandas``, one
merchant per call, writing its HTML and CSV and returning its quality_flags rows.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd

from pipeline.report.advice import Centroids, as_date, merchant_rows, merchant_slug, pooled_vectors, text_of
from pipeline.report.publish import MERCHANTS_DIR, filesystem_for, inside, write_bytes
from pipeline.report.render import render_merchant_csv, render_merchant_html, thumbnail_data_uri

# Columns of one flagged item as the Spark side hands it to the enrichment step.
PAGE_INPUT = ["merchant_id", "item_id", "category", "title", "description", "image", "p_ita", "p_tia",
              "suspect_side", "model_version", "content_hash", "first_flagged", "text_emb", "n_text_tokens", "image_emb"]


@dataclass(frozen=True)
class PageSettings:
    run_date: dt.date
    base: str                 # the run's (staging) folder URI, as filesystem_for takes it
    thumbnail_px: int
    n_patches: int
    ita_threshold: float
    tia_threshold: float
    max_items: int
    centroids: Centroids
    caution: str | None = None   # a line above the items: the night warned that its thresholds may not fit


# One flagged item as the per-merchant task receives it: images already thumbnails and blobs
# already reduced to their nearest categories (a step before the shuffle), so a merchant's
# group holds a few KB per item.
ENRICHED_SCHEMA = ("merchant_id string, item_id string, category string, title string, description string, "
                   "thumb string, text_category string, image_category string, p_ita double, p_tia double, "
                   "suspect_side string, model_version string, content_hash string, first_flagged date")
_ENRICHED = [part.strip().split(" ")[0] for part in ENRICHED_SCHEMA.split(",")]


def present(value) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value))


def enrich_fn(settings: PageSettings):
    def enrich(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            thumbs, text_cats, image_cats = [], [], []
            for image, t, n, im in zip(pdf["image"], pdf["text_emb"], pdf["n_text_tokens"], pdf["image_emb"]):
                thumbs.append(thumbnail_data_uri(image, settings.thumbnail_px) if present(image) else None)
                text_cat = image_cat = None
                if present(t) and present(im) and present(n):
                    try:
                        text_cat, image_cat = settings.centroids.nearest(*pooled_vectors(t, n, im, settings.n_patches))
                    except ValueError:          # blobs of another encoder shape: no suggestion
                        pass
                text_cats.append(text_cat)
                image_cats.append(image_cat)
            out = pdf.drop(columns=["image", "text_emb", "n_text_tokens", "image_emb"])
            out["thumb"], out["text_category"], out["image_category"] = thumbs, text_cats, image_cats
            out["first_flagged"] = [as_date(v) for v in out["first_flagged"]]
            yield out[_ENRICHED]
    return enrich


def merchant_page_fn(settings: PageSettings, flag_columns: list[str]):
    def write_merchant(pdf: pd.DataFrame) -> pd.DataFrame:
        merchant_id = text_of(pdf["merchant_id"].iloc[0])
        rows = merchant_rows(pdf, settings)
        shown = rows.iloc[: settings.max_items]          # the page and its CSV: the same worst rows
        stem = merchant_slug(merchant_id)
        filesystem, base = filesystem_for(settings.base)
        folder = f"{base}/{MERCHANTS_DIR}"
        filesystem.create_dir(folder, recursive=True)
        write_bytes(filesystem, inside(base, f"{folder}/{stem}.csv"), render_merchant_csv(shown))
        write_bytes(filesystem, inside(base, f"{folder}/{stem}.html"),
                     render_merchant_html(merchant_id, shown, settings, f"{stem}.csv", n_flagged=len(rows),
                                          n_new=int(rows["is_new"].sum())))
        rows["run_date"] = settings.run_date
        return rows[flag_columns]
    return write_merchant
