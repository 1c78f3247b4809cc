"""Merchant data-quality reports: which listings' text and image disagree, and what to fix.

A small package, one module per kind of work:

    advice.py    pure logic: the flagged side, the suggested category, a merchant's rows
    sources.py   the data, read and reduced in Spark (centroids, flagged items, history, index)
    render.py    HTML/CSV/PNG from rows; Jinja templates shipped as package files (templates/)
    pages.py     the executor tasks: enrich flagged items, render and write one merchant's page
    publish.py   the file system (pyarrow.fs), whole-file writes, the atomic publish of a date
    build.py     build_report and record_run: the run date end to end

    result = build_report(spark, config, run_date)    # ReportResult; result.index_path

For one run date, from ``item_alignment`` (the scoring job's flags), ``items`` (what the
merchant typed and uploaded) and ``item_features`` (cached encoder outputs):

1. **Side.** Low ITA (image-to-text) means the text looks wrong; low TIA (text-to-image) the
   image; both low, both (:func:`advice.side_of`).
2. **Suggestion.** Per listed category, the centroid of the L2-normalised, mean-pooled text
   and image vectors (item_features blobs) of that run's *unflagged* items (a stable hash sample
   of ``report.centroid_sample_per_category`` per category), computed in Spark with map-side
   partial sums (:func:`sources.category_centroids`). A flagged item's text and image each go to their nearest
   centroid by cosine; when both name the same category, that is the suggestion, otherwise the
   trusted side's category (the image when the text looks wrong, and vice versa)
   (:func:`advice.suggest`).
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

5. **How the night flagged.** The thresholds the night applied, each side's share of listings
   under them and its calibration warnings come from its published ``runs`` row
   (:class:`advice.FlagRule`); the index states them and shows the warnings, and a night that warned
   puts :data:`advice.CAUTION` on every merchant page. A score is red where the night flagged its
   side, whatever its value.

Everything goes to ``<report.out_dir>/<run_date>/`` through ``pyarrow.fs`` (local folder,
HDFS or S3), built in a staging folder and published at the end, so a rerun of a date
replaces its folder and a reader never sees half a report. File names of merchant pages are
``<slug>-<hash>`` (:func:`advice.merchant_slug`): merchant ids never become paths.
"""

from pipeline.report.advice import (
    CAUTION,
    PROBLEM,
    SIDE_LABEL,
    SIDES,
    Centroids,
    FlagRule,
    csv_safe,
    merchant_rows,
    merchant_slug,
    pooled_vectors,
    side_of,
    suggest,
)
from pipeline.report.build import JOB, ReportResult, build_report, record_run
from pipeline.report.pages import PageSettings
from pipeline.report.publish import INDEX, MERCHANTS_DIR, PLOT, ReportError
from pipeline.report.render import CSV_COLUMNS, render_merchant_csv, render_merchant_html, thumbnail_data_uri
from pipeline.report.sources import category_centroids, centroid_sample, flag_columns

__all__ = [
    "CAUTION", "CSV_COLUMNS", "FlagRule",
    "INDEX", "JOB", "MERCHANTS_DIR", "PLOT", "PROBLEM", "SIDES", "SIDE_LABEL", "Centroids", "PageSettings",
    "ReportError", "ReportResult", "build_report", "category_centroids", "centroid_sample", "csv_safe", "flag_columns",
    "merchant_rows", "merchant_slug", "pooled_vectors", "record_run", "render_merchant_csv", "render_merchant_html",
    "side_of", "suggest", "thumbnail_data_uri",
]
