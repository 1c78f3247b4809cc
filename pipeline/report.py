"""Merchant data-quality reports: which listings' text and image disagree, and what to fix.

Still one module (~680 lines: Spark orchestration, the pure logic and the publishing; the
pages are Jinja templates in pipeline/templates/). Issue 18 plans it as a small package.

    result = build_report(spark, config, run_date)    # ReportResult; result.index_path

For one run date, from ``item_alignment`` (the scoring job's flags), ``items`` (what the
merchant typed and uploaded) and ``item_features`` (cached encoder outputs):

1. **Side.** Low ITA (image-to-text) means the text looks wrong; low TIA (text-to-image) the
   image; both low, both (:func:`side_of`).
2. **Suggestion.** Per listed category, the centroid of the L2-normalised, mean-pooled text
   and image vectors (item_features blobs) of that run's *unflagged* items (a stable hash sample
   of ``report.centroid_sample_per_category`` per category), computed in Spark with map-side
   partial sums (:func:`category_centroids`). A flagged item's text and image each go to their nearest
   centroid by cosine; when both name the same category, that is the suggestion, otherwise the
   trusted side's category (the image when the text looks wrong, and vice versa)
   (:func:`suggest`).
3. **New or still flagged.** ``first_flagged`` is kept per (item_id, content): the earliest
   earlier ``quality_flags`` date of the same item with the same content (sha-256 of title,
   description and image bytes, independent of the encoders). An item is *new* when that is
   this run: never flagged before, or flagged before with other content (the merchant changed
   it and it is still wrong). An item flagged before with the same content is *still flagged*
   (shown, not marked new), also when it was unflagged in between.
4. **Pages.** A mapInPandas turns each flagged item's image into a JPEG thumbnail and its blobs
   into nearest categories; then ``groupBy(merchant_id).applyInPandas``: each task renders one
   merchant's page (HTML, Jinja2 with autoescaping, thumbnails as data: URIs, a CSP that allows
   no scripts or fetches) and CSV (the same worst ``report.max_items_per_page`` rows, same order)
   and writes them from the executor; its output rows are the ``quality_flags`` table (every
   flagged item), written with ``replace_run_date`` in the same Spark job. The driver only sees
   per-merchant and per-category aggregates (index page, plot).

Everything goes to ``<report.out_dir>/<run_date>/`` through ``pyarrow.fs`` (local folder,
HDFS or S3), built in a staging folder and published at the end, so a rerun of a date
replaces its folder and a reader never sees half a report. File names of merchant pages are
``<slug>-<hash>`` (:func:`merchant_slug`): merchant ids never become paths.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import functools
import hashlib
import io
import math
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from camenn.config import AppConfig
from pipeline import feature_cache, tables

JOB = "quality_report"
SIDES = ("text", "image", "both")
MERCHANTS_DIR = "merchants"
INDEX = "index.html"
PLOT = "flag_rate_by_category.png"

PROBLEM = {
    "text": "The description does not match the photo — check the title and description.",
    "image": "The photo does not match the description — check the photo.",
    "both": "The photo and the description do not match each other — check the photo, the title and the description.",
}
SIDE_LABEL = {"text": "text looks wrong", "image": "photo looks wrong", "both": "text and photo disagree"}

CSV_COLUMNS = ["rank", "item_id", "status", "first_flagged", "category", "title", "description",
               "p_ita", "p_tia", "side", "problem", "suggested_category", "suggestion"]

# Columns of one flagged item as the Spark side hands it to the enrichment step.
_PAGE_INPUT = ["merchant_id", "item_id", "category", "title", "description", "image", "p_ita", "p_tia",
               "suspect_side", "model_version", "content_hash", "first_flagged", "text_emb", "n_text_tokens", "image_emb"]


def flag_columns() -> list[str]:
    """quality_flags column names, in contract order (its DDL has no nested types)."""
    return [part.split()[0] for part in " ".join(tables.SPECS["quality_flags"].columns.split()).split(",")]


class ReportError(RuntimeError):
    """The report cannot be built from what is there (no scoring output for the date, ...)."""


# ----------------------------------------------------------------------------- small pure parts


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


def _text(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _opt(value) -> str | None:
    text = _text(value)
    return text if text else None


def _as_date(value) -> dt.date | None:
    if value is None or value is pd.NaT or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return pd.Timestamp(value).date()


def thumbnail_data_uri(image: bytes | None, px: int, quality: int = 82) -> str | None:
    """A JPEG thumbnail (longest side ``px``) as a data: URI, or None when the bytes do not decode."""
    from camenn.images import ImageDecodeError, decode_image

    if image is None or isinstance(image, float):
        return None
    try:
        img = decode_image(bytes(image), min_size=px)
    except ImageDecodeError:
        return None
    img.thumbnail((px, px))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------- vectors and centroids


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(norm, 1e-12)


def pooled_vectors(text_emb, n_text_tokens, image_emb, n_patches: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit mean-pooled text and image vectors of one item from its item_features blobs (fp16)."""
    n = int(n_text_tokens)
    text = np.frombuffer(bytes(text_emb), dtype=np.float16).reshape(n, -1).astype(np.float32)         # (n, Dt)
    image = np.frombuffer(bytes(image_emb), dtype=np.float16).reshape(n_patches, -1).astype(np.float32)  # (P, Di)
    return _unit(text.mean(axis=0)), _unit(image.mean(axis=0))


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


_PARTIAL_SCHEMA = "category string, n long, text_sum array<double>, image_sum array<double>"


def _partial_sums_fn(n_patches: int):
    def partial_sums(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        sums: dict[str, list] = {}
        for pdf in batches:
            for category, t, n, im in zip(pdf["category"], pdf["text_emb"], pdf["n_text_tokens"], pdf["image_emb"]):
                tv, iv = pooled_vectors(t, n, im, n_patches)
                acc = sums.get(category)
                if acc is None:
                    sums[category] = [1, tv.astype(np.float64), iv.astype(np.float64)]
                else:
                    acc[0] += 1
                    acc[1] += tv
                    acc[2] += iv
        if sums:   # an empty frame has no element type for the array columns: yield nothing
            yield pd.DataFrame({"category": list(sums), "n": [v[0] for v in sums.values()],
                                "text_sum": [v[1].tolist() for v in sums.values()],
                                "image_sum": [v[2].tolist() for v in sums.values()]})
    return partial_sums


def _total(pdf: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"category": [pdf["category"].iloc[0]], "n": [int(pdf["n"].sum())],
                         "text_sum": [np.sum(np.stack(pdf["text_sum"].to_list()), axis=0).tolist()],
                         "image_sum": [np.sum(np.stack(pdf["image_sum"].to_list()), axis=0).tolist()]})


def centroid_sample(alignment: DataFrame, per_category: int) -> DataFrame:
    """item_id, category of about ``per_category`` unflagged items per category (all of a smaller one).

    A deterministic hash sample: the same items every run while they stay unflagged. One row
    per category reaches the driver (the counts).
    """
    unflagged = alignment.where(~F.col("flag") & F.col("category").isNotNull()).select("item_id", "category")
    counts = {r["category"]: r["n"] for r in unflagged.groupBy("category").agg(F.count(F.lit(1)).alias("n")).collect()}
    partial = {c: per_category / n for c, n in counts.items() if n > per_category}
    if not partial:
        return unflagged
    fraction = F.create_map(*[F.lit(x) for c, f in sorted(partial.items()) for x in (c, f)])
    u = (F.abs(F.xxhash64("item_id")) % 1_000_003) / 1_000_003.0
    return unflagged.where(F.coalesce(fraction[F.col("category")], F.lit(1.0)) > u)


def category_centroids(vectors_in: DataFrame, n_patches: int) -> Centroids:
    """Centroids from rows (category, text_emb, n_text_tokens, image_emb), computed in Spark.

    Each partition sums its items' unit vectors per category; one small shuffle adds the
    partial sums; only one row per category reaches the driver.
    """
    rows = (vectors_in.where(F.col("category").isNotNull())
            .select("category", "text_emb", "n_text_tokens", "image_emb")
            .mapInPandas(_partial_sums_fn(n_patches), _PARTIAL_SCHEMA)
            .groupBy("category").applyInPandas(_total, _PARTIAL_SCHEMA)
            .collect())
    rows = sorted(rows, key=lambda r: r["category"])
    if not rows:
        return Centroids([], np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), [])
    text = _unit(np.stack([np.asarray(r["text_sum"], np.float64) for r in rows]).astype(np.float32))
    image = _unit(np.stack([np.asarray(r["image_sum"], np.float64) for r in rows]).astype(np.float32))
    return Centroids([r["category"] for r in rows], text, image, [int(r["n"]) for r in rows])


# ----------------------------------------------------------------------------- output file system


def _filesystem(uri: str):
    """(pyarrow FileSystem, path) for a local folder or a URI; s3a:// (Hadoop's name) is s3://."""
    from pyarrow import fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    if uri.startswith(("s3a://", "s3n://")):
        uri = "s3://" + uri.split("://", 1)[1]
    return pafs.FileSystem.from_uri(uri)


def _write_bytes(filesystem, path: str, data: bytes) -> None:
    """Write a file whole: to a temporary name first, then renamed (a retried task overwrites it)."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with filesystem.open_output_stream(tmp) as out:
        out.write(data)
    filesystem.move(tmp, path)


def _within(base: str, path: str) -> str:
    """Refuse any output path outside ``base`` (defence in depth behind merchant_slug)."""
    if os.path.normpath(path) != path.rstrip("/") or not os.path.normpath(path).startswith(base.rstrip("/") + "/"):
        raise ReportError(f"refusing to write outside the report folder: {path!r}")
    return path


# ----------------------------------------------------------------------------- HTML (pipeline/templates/)

@functools.lru_cache(maxsize=1)
def _jinja():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    # pipeline/templates/: base.html (with style.css inlined: the pages work offline, one file each),
    # merchant.html, index.html; autoescaped, as merchant text is untrusted
    return Environment(loader=PackageLoader("pipeline", "templates"),
                       autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


# ----------------------------------------------------------------------------- one merchant


@dataclass(frozen=True)
class PageSettings:
    run_date: dt.date
    base: str                 # the run's (staging) folder URI, as _filesystem takes it
    thumbnail_px: int
    n_patches: int
    ita_threshold: float
    tia_threshold: float
    max_items: int
    centroids: Centroids


# One flagged item as the per-merchant task receives it: images already thumbnails and blobs
# already reduced to their nearest categories (a step before the shuffle), so a merchant's
# group holds a few KB per item.
_ENRICHED_SCHEMA = ("merchant_id string, item_id string, category string, title string, description string, "
                    "thumb string, text_category string, image_category string, p_ita double, p_tia double, "
                    "suspect_side string, model_version string, content_hash string, first_flagged date")
_ENRICHED = [part.strip().split(" ")[0] for part in _ENRICHED_SCHEMA.split(",")]


def _present(value) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value))


def _enrich_fn(settings: PageSettings):
    def enrich(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            thumbs, text_cats, image_cats = [], [], []
            for image, t, n, im in zip(pdf["image"], pdf["text_emb"], pdf["n_text_tokens"], pdf["image_emb"]):
                thumbs.append(thumbnail_data_uri(image, settings.thumbnail_px) if _present(image) else None)
                text_cat = image_cat = None
                if _present(t) and _present(im) and _present(n):
                    try:
                        text_cat, image_cat = settings.centroids.nearest(*pooled_vectors(t, n, im, settings.n_patches))
                    except ValueError:          # blobs of another encoder shape: no suggestion
                        pass
                text_cats.append(text_cat)
                image_cats.append(image_cat)
            out = pdf.drop(columns=["image", "text_emb", "n_text_tokens", "image_emb"])
            out["thumb"], out["text_category"], out["image_category"] = thumbs, text_cats, image_cats
            out["first_flagged"] = [_as_date(v) for v in out["first_flagged"]]
            yield out[_ENRICHED]
    return enrich


def merchant_rows(pdf: pd.DataFrame, settings: PageSettings) -> pd.DataFrame:
    """One merchant's flagged items -> report rows, worst first (rank 1 = lowest min(p_ita, p_tia))."""
    out = []
    for rec in pdf.to_dict("records"):
        p_ita, p_tia = float(rec["p_ita"]), float(rec["p_tia"])
        side = side_of(_opt(rec.get("suspect_side")), p_ita, p_tia, settings.ita_threshold, settings.tia_threshold)
        category = _opt(rec.get("category"))
        text_cat, image_cat = _opt(rec.get("text_category")), _opt(rec.get("image_category"))
        suggested, suggestion = suggest(side, category, text_cat, image_cat)
        first = _as_date(rec.get("first_flagged")) or settings.run_date
        out.append({
            "item_id": _text(rec["item_id"]), "merchant_id": _text(rec["merchant_id"]), "category": category,
            "title": _text(rec.get("title")), "description": _text(rec.get("description")),
            "p_ita": p_ita, "p_tia": p_tia, "side": side, "problem": PROBLEM[side],
            "text_category": text_cat, "image_category": image_cat, "suggested_category": suggested,
            "suggestion": suggestion, "first_flagged": first, "is_new": first >= settings.run_date,
            "content_hash": _text(rec.get("content_hash")), "model_version": _opt(rec.get("model_version")),
            "thumb": _opt(rec.get("thumb")),
        })
    out.sort(key=lambda r: (min(r["p_ita"], r["p_tia"]), r["item_id"]))
    for rank, row in enumerate(out, start=1):
        row["rank"] = rank
        row["status"] = "new" if row["is_new"] else "still flagged"
    return pd.DataFrame(out)


def render_merchant_csv(rows: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows.to_dict("records"):
        writer.writerow([csv_safe(f"{row[c]:.4f}" if c in ("p_ita", "p_tia") else _text(row[c])) for c in CSV_COLUMNS])
    return buf.getvalue().encode("utf-8")


def render_merchant_html(merchant_id: str, rows: pd.DataFrame, settings: PageSettings, csv_name: str,
                         n_flagged: int | None = None, n_new: int | None = None) -> bytes:
    records = rows.to_dict("records")
    versions = sorted({r["model_version"] for r in records if r.get("model_version")})
    html = _jinja().get_template("merchant.html").render(
        merchant_id=merchant_id, run_date=settings.run_date.isoformat(), rows=records,
        n_flagged=n_flagged if n_flagged is not None else len(records),
        n_new=n_new if n_new is not None else sum(1 for r in records if r["is_new"]), model_version=", ".join(versions) or "unknown",
        csv_name=csv_name, px=settings.thumbnail_px, side_label=SIDE_LABEL)
    return html.encode("utf-8")


def _merchant_page_fn(settings: PageSettings, flag_columns: list[str]):
    def write_merchant(pdf: pd.DataFrame) -> pd.DataFrame:
        merchant_id = _text(pdf["merchant_id"].iloc[0])
        rows = merchant_rows(pdf, settings)
        shown = rows.iloc[: settings.max_items]          # the page and its CSV: the same worst rows
        stem = merchant_slug(merchant_id)
        filesystem, base = _filesystem(settings.base)
        folder = f"{base}/{MERCHANTS_DIR}"
        filesystem.create_dir(folder, recursive=True)
        _write_bytes(filesystem, _within(base, f"{folder}/{stem}.csv"), render_merchant_csv(shown))
        _write_bytes(filesystem, _within(base, f"{folder}/{stem}.html"),
                     render_merchant_html(merchant_id, shown, settings, f"{stem}.csv", n_flagged=len(rows),
                                          n_new=int(rows["is_new"].sum())))
        rows["run_date"] = settings.run_date
        return rows[flag_columns]
    return write_merchant


# ----------------------------------------------------------------------------- Spark inputs


def latest_items(spark: SparkSession, config: AppConfig, item_ids: DataFrame) -> DataFrame:
    """One row per item_id of ``item_ids`` with its image: the newest, by feature_cache's one rule."""
    items = feature_cache.item_rows(spark, config, with_image=True).join(item_ids, "item_id", "left_semi")
    return (items.withColumn("_k", F.row_number().over(feature_cache.newest_first()))
            .where(F.col("_k") == 1).drop("_k"))


def _history(spark: SparkSession, config: AppConfig, run_date: dt.date) -> DataFrame:
    """(item_id, content_hash) -> first_flagged over quality_flags runs before run_date."""
    tables.ensure_table(spark, config, "quality_flags")
    return (tables.read_table(spark, config, "quality_flags")
            .where(F.col("run_date") < F.lit(run_date))
            .groupBy("item_id", "content_hash").agg(F.min("first_flagged").alias("first_flagged")))


def _fingerprint(config: AppConfig) -> str:
    """The encoder fingerprint item_features rows of the configured featurizer carry."""
    return _fingerprint_of(config.featurizer)


@functools.lru_cache(maxsize=4)
def _fingerprint_of(settings) -> str:   # hashes the encoder weight files: once per process and settings
    from pipeline.feature_cache import featurizer_fingerprint

    return featurizer_fingerprint(settings.to_featurizer_config())


# ----------------------------------------------------------------------------- the report


@dataclass
class ReportResult:
    run_date: dt.date
    folder: str               # <out_dir>/<run_date>
    index_path: str
    n_items: int
    n_flagged: int
    n_new: int
    n_merchants: int          # merchants with at least one flagged item (one page each)
    by_side: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        sides = ", ".join(f"{s} {self.by_side.get(s, 0)}" for s in SIDES)
        return (f"quality report {self.run_date}: {self.n_flagged} of {self.n_items} items flagged "
                f"({self.n_new} new; {sides}) across {self.n_merchants} merchant pages in {self.folder}")


def _plot_png(categories: list[dict]) -> bytes | None:
    if not categories:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = sorted(categories, key=lambda c: (c["rate"], c["category"]))
    height = max(2.4, 0.28 * len(cats) + 1.0)
    fig, ax = plt.subplots(figsize=(7.5, height), dpi=110)
    labels = [c["category"] for c in cats]
    rates = [100 * c["rate"] for c in cats]
    bars = ax.barh(range(len(cats)), rates, color="#c62828", alpha=0.8)
    ax.set_yticks(range(len(cats)), labels=labels, fontsize=9)
    ax.set_xlabel("flagged items (%)")
    ax.set_title("Flag rate by category")
    for bar, c in zip(bars, cats):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {c['n_flagged']}/{c['n_items']}",
                va="center", fontsize=8, color="#3e4c59")
    ax.set_xlim(0, max(rates + [1.0]) * 1.25)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _publish(filesystem, staging: str, final: str) -> None:
    """Replace ``final`` with ``staging``: a rename where the file system has one, else copy + delete."""
    from pyarrow import fs as pafs

    old = None
    if filesystem.get_file_info(final).type != pafs.FileType.NotFound:
        old = f"{final}.old-{uuid.uuid4().hex[:8]}"
        filesystem.move(final, old)
    try:
        filesystem.move(staging, final)
    except (OSError, NotImplementedError):   # object stores cannot rename folders
        pafs.copy_files(staging, final, source_filesystem=filesystem, destination_filesystem=filesystem)
        filesystem.delete_dir(staging)
    if old is not None:
        filesystem.delete_dir(old)


def build_report(spark: SparkSession, config: AppConfig, run_date: dt.date) -> ReportResult:
    """Write the run date's merchant pages, CSVs, index page, plot and quality_flags rows."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    alignment = tables.read_table(spark, config, "item_alignment").where(F.col("run_date") == F.lit(run_date))
    counts = alignment.agg(F.count(F.lit(1)).alias("n"), F.collect_set("model_version").alias("versions")).first()
    if not counts["n"]:
        raise ReportError(f"item_alignment has no rows for {run_date}: run jobs/score_catalog.py --run-date {run_date} first")

    fingerprint = _fingerprint(config)
    n_patches = config.featurizer.patch_grid ** 2
    features = (tables.read_table(spark, config, "item_features")
                .where(F.col("encoder_fingerprint") == fingerprint)
                .select("item_id", "text_emb", "n_text_tokens", "image_emb"))

    spark.sparkContext.setJobDescription(f"quality report: category centroids ({run_date})")
    sample = centroid_sample(alignment, config.report.centroid_sample_per_category)
    centroids = category_centroids(F.broadcast(sample).join(features, "item_id"), n_patches)
    timings["centroids"] = time.perf_counter() - t0

    thresholds = config.scoring.thresholds
    filesystem, out_base = _filesystem(config.report.out_dir)
    filesystem.create_dir(out_base, recursive=True)
    final = f"{out_base}/{run_date.isoformat()}"
    staging = f"{out_base}/.staging-{run_date.isoformat()}-{uuid.uuid4().hex[:8]}"
    filesystem.create_dir(f"{staging}/{MERCHANTS_DIR}", recursive=True)
    settings = PageSettings(run_date=run_date, base=_uri_like(config.report.out_dir, staging), thumbnail_px=config.report.thumbnail_px,
                            n_patches=n_patches, ita_threshold=thresholds.ita, tia_threshold=thresholds.tia,
                            max_items=config.report.max_items_per_page, centroids=centroids)
    try:
        t1 = time.perf_counter()
        flagged = (alignment.where(F.col("flag"))
                   .select("item_id", "merchant_id", "category", "p_ita", "p_tia", "suspect_side", "model_version"))
        # only the flagged items' rows reach the de-duplication window (not the catalogue's images)
        items = (latest_items(spark, config, flagged.select("item_id"))
                 .select("item_id", "title", "description", "image", "content_hash"))
        flagged = flagged.join(items, "item_id", "left").join(features, "item_id", "left")
        flagged = (flagged.join(_history(spark, config, run_date), ["item_id", "content_hash"], "left")
                   .select(*_PAGE_INPUT))
        flag_schema = tables.schema_of(spark, "quality_flags")
        spark.sparkContext.setJobDescription(f"quality report: merchant pages and quality_flags ({run_date})")
        pages = flagged.mapInPandas(_enrich_fn(settings), _ENRICHED_SCHEMA).groupBy("merchant_id").applyInPandas(
            _merchant_page_fn(settings, [f.name for f in flag_schema.fields]), flag_schema)
        tables.replace_run_date(spark, config, "quality_flags", pages, run_date)
        timings["pages"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        spark.sparkContext.setJobDescription(f"quality report: index ({run_date})")
        index = _index_data(spark, config, alignment, run_date, sorted(counts["versions"]))
        plot = _plot_png(index["categories"])
        if plot is not None:
            _write_bytes(filesystem, f"{staging}/{PLOT}", plot)
        html = _jinja().get_template("index.html").render(
            run_date=run_date.isoformat(), generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            plot=("data:image/png;base64," + base64.b64encode(plot).decode("ascii")) if plot else None, **index)
        _write_bytes(filesystem, f"{staging}/{INDEX}", html.encode("utf-8"))
        _publish(filesystem, staging, final)
        timings["index"] = time.perf_counter() - t2
    except BaseException:
        if filesystem.get_file_info(staging).type.name != "NotFound":
            filesystem.delete_dir(staging)
        raise
    finally:
        spark.sparkContext.setJobDescription(None)

    totals = index["totals"]
    folder = _uri_like(config.report.out_dir, final)
    return ReportResult(run_date=run_date, folder=folder, index_path=f"{folder}/{INDEX}", n_items=totals["n_items"],
                        n_flagged=totals["flagged"], n_new=totals["new"], n_merchants=len(index["merchants"]),
                        by_side={r["side"]: r["n"] for r in index["reasons"]}, timings=timings)


def _uri_like(original: str, path: str) -> str:
    """A path of the pyarrow file system as ``original`` names it: itself for a local folder, else scheme://path."""
    if "://" not in original:
        return path
    return f"{original.split('://', 1)[0]}://{path}"


def _index_data(spark: SparkSession, config: AppConfig, alignment: DataFrame, run_date: dt.date,
                model_versions: list[str]) -> dict:
    """Aggregates for the index page in two small collects: one row per merchant, one per category."""
    flags = tables.read_table(spark, config, "quality_flags").where(F.col("run_date") == F.lit(run_date))
    per_merchant_flags = flags.groupBy("merchant_id").agg(
        F.count(F.lit(1)).alias("n_flagged"), F.sum(F.col("is_new").cast("long")).alias("n_new"),
        *[F.sum((F.col("side") == s).cast("long")).alias(f"n_{s}") for s in SIDES])
    per_merchant = (alignment.groupBy("merchant_id").agg(F.count(F.lit(1)).alias("n_items"))
                    .join(per_merchant_flags, "merchant_id", "left"))
    merchants, n_clean = [], 0
    for r in per_merchant.collect():
        if not r["n_flagged"]:
            n_clean += 1
            continue
        stem = merchant_slug(r["merchant_id"])
        merchants.append({"merchant_id": r["merchant_id"], "n_items": r["n_items"], "n_flagged": r["n_flagged"],
                          "rate": r["n_flagged"] / r["n_items"], "n_new": r["n_new"],
                          **{f"n_{s}": r[f"n_{s}"] for s in SIDES},
                          "page": f"{MERCHANTS_DIR}/{stem}.html", "csv": f"{MERCHANTS_DIR}/{stem}.csv"})
    merchants.sort(key=lambda m: (-m["rate"], -m["n_flagged"], m["merchant_id"]))

    categories = [{"category": r["category"] if r["category"] is not None else "(none)", "n_items": r["n_items"],
                   "n_flagged": r["n_flagged"], "rate": r["n_flagged"] / r["n_items"]}
                  for r in alignment.groupBy("category").agg(
                      F.count(F.lit(1)).alias("n_items"), F.sum(F.col("flag").cast("long")).alias("n_flagged")).collect()]
    reasons = [{"side": s, "label": f"{SIDE_LABEL[s]}: {PROBLEM[s]}",
                "n": sum(m[f"n_{s}"] for m in merchants)} for s in SIDES]
    n_items = sum(c["n_items"] for c in categories)
    n_flagged = sum(m["n_flagged"] for m in merchants)
    return {"merchants": merchants, "categories": categories, "reasons": reasons,
            "n_clean_merchants": n_clean, "model_versions": model_versions,
            "totals": {"n_items": n_items, "flagged": n_flagged, "rate": n_flagged / n_items if n_items else 0.0,
                       "new": sum(m["n_new"] for m in merchants)}}


def record_run(spark: SparkSession, config: AppConfig, result: ReportResult | None, *, run_id: str,
               run_date: dt.date, started_at: dt.datetime, status: str, error: str | None = None) -> None:
    """One ``runs`` row for this job (status ok or failed)."""
    counts = ({"items": result.n_items, "flagged": result.n_flagged, "new": result.n_new,
               "merchant_pages": result.n_merchants, **{f"side_{k}": v for k, v in result.by_side.items()}}
              if result else {})
    details = {"folder": result.folder, "index": result.index_path} if result else {"error": error}
    tables.append_rows(spark, config, "runs", tables.runs_row(
        spark, run_id=run_id, job=JOB, run_date=run_date, model_version=None, started_at=started_at,
        finished_at=dt.datetime.now(dt.UTC).replace(tzinfo=None), status=status, counts=counts,
        timings=result.timings if result else {}, details=details))
