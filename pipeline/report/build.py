"""One run date's report, end to end: read, compute, render in the executors, publish, record the run.

    result = build_report(spark, config, run_date)    # ReportResult; result.index_path
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from camenn.config import AppConfig
from pipeline import run_record, tables
from pipeline.report.advice import CAUTION, SIDES, FlagRule
from pipeline.report.pages import ENRICHED_SCHEMA, PAGE_INPUT, PageSettings, enrich_fn, merchant_page_fn
from pipeline.report.publish import INDEX, MERCHANTS_DIR, PLOT, ReportError, filesystem_for, publish_folder, uri_like, write_bytes
from pipeline.report.render import plot_png, templates
from pipeline.report.sources import category_centroids, centroid_sample, encoder_fingerprint, flag_history, index_data, latest_items

JOB = "quality_report"
log = logging.getLogger(__name__)


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
    rule: FlagRule | None = None   # how the night flagged the items, with its warnings
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        sides = ", ".join(f"{s} {self.by_side.get(s, 0)}" for s in SIDES)
        return (f"quality report {self.run_date}: {self.n_flagged} of {self.n_items} items flagged "
                f"({self.n_new} new; {sides}) across {self.n_merchants} merchant pages in {self.folder}")


def build_report(spark: SparkSession, config: AppConfig, run_date: dt.date) -> ReportResult:
    """Write the run date's merchant pages, CSVs, index page, plot and quality_flags rows."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # the date's rows of the scoring run published for it, never a failed or unfinished run's
    alignment = run_record.published(spark, config, "item_alignment", run_date, job=run_record.SCORING_JOB)
    counts = alignment.agg(F.count(F.lit(1)).alias("n"), F.collect_set("model_version").alias("versions")).first()
    if not counts["n"]:
        raise ReportError(f"item_alignment has no rows for {run_date}: run jobs/score_catalog.py --run-date {run_date} first")

    fingerprint = encoder_fingerprint(config)
    n_patches = config.featurizer.patch_grid ** 2
    features = (tables.read_table(spark, config, "item_features")
                .where(F.col("encoder_fingerprint") == fingerprint)
                .select("item_id", "text_emb", "n_text_tokens", "image_emb"))

    spark.sparkContext.setJobDescription(f"quality report: category centroids ({run_date})")
    sample = centroid_sample(alignment, config.report.centroid_sample_per_category)
    centroids = category_centroids(F.broadcast(sample).join(features, "item_id"), n_patches)
    timings["centroids"] = time.perf_counter() - t0

    # the thresholds the night applied (a calibrated night's are the model's) and its warnings, as it recorded them
    rule = FlagRule.of(run_record.published_details(spark, config, run_record.SCORING_JOB, run_date).get("thresholds"),
                       config.scoring.thresholds)
    for line in rule.warnings:
        log.warning("the night of %s warned: %s", run_date, line)
    filesystem, out_base = filesystem_for(config.report.out_dir)
    filesystem.create_dir(out_base, recursive=True)
    final = f"{out_base}/{run_date.isoformat()}"
    staging = f"{out_base}/.staging-{run_date.isoformat()}-{uuid.uuid4().hex[:8]}"
    filesystem.create_dir(f"{staging}/{MERCHANTS_DIR}", recursive=True)
    settings = PageSettings(run_date=run_date, base=uri_like(config.report.out_dir, staging), thumbnail_px=config.report.thumbnail_px,
                            n_patches=n_patches, ita_threshold=rule.ita, tia_threshold=rule.tia,
                            max_items=config.report.max_items_per_page, centroids=centroids,
                            caution=CAUTION if rule.warnings else None)
    try:
        t1 = time.perf_counter()
        flagged = (alignment.where(F.col("flag"))
                   .select("item_id", "merchant_id", "category", "p_ita", "p_tia", "suspect_side", "model_version"))
        # only the flagged items' rows reach the de-duplication window (not the catalogue's images)
        items = (latest_items(spark, config, flagged.select("item_id"))
                 .select("item_id", "title", "description", "image", "content_hash"))
        flagged = flagged.join(items, "item_id", "left").join(features, "item_id", "left")
        flagged = (flagged.join(flag_history(spark, config, run_date), ["item_id", "content_hash"], "left")
                   .select(*PAGE_INPUT))
        flag_schema = tables.schema_of(spark, "quality_flags")
        spark.sparkContext.setJobDescription(f"quality report: merchant pages and quality_flags ({run_date})")
        pages = flagged.mapInPandas(enrich_fn(settings), ENRICHED_SCHEMA).groupBy("merchant_id").applyInPandas(
            merchant_page_fn(settings, [f.name for f in flag_schema.fields]), flag_schema)
        tables.replace_run_date(spark, config, "quality_flags", pages, run_date)
        timings["pages"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        spark.sparkContext.setJobDescription(f"quality report: index ({run_date})")
        index = index_data(spark, config, alignment, run_date, sorted(counts["versions"]))
        plot = plot_png(index["categories"])
        if plot is not None:
            write_bytes(filesystem, f"{staging}/{PLOT}", plot)
        html = templates().get_template("index.html").render(
            run_date=run_date.isoformat(), generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            plot=("data:image/png;base64," + base64.b64encode(plot).decode("ascii")) if plot else None,
            rule=rule, **index)
        write_bytes(filesystem, f"{staging}/{INDEX}", html.encode("utf-8"))
        publish_folder(filesystem, staging, final)
        timings["index"] = time.perf_counter() - t2
    except BaseException:
        if filesystem.get_file_info(staging).type.name != "NotFound":
            filesystem.delete_dir(staging)
        raise
    finally:
        spark.sparkContext.setJobDescription(None)

    totals = index["totals"]
    folder = uri_like(config.report.out_dir, final)
    return ReportResult(run_date=run_date, folder=folder, index_path=f"{folder}/{INDEX}", n_items=totals["n_items"],
                        n_flagged=totals["flagged"], n_new=totals["new"], n_merchants=len(index["merchants"]),
                        by_side={r["side"]: r["n"] for r in index["reasons"]}, rule=rule, timings=timings)


def record_run(spark: SparkSession, config: AppConfig, result: ReportResult | None, *, run_id: str,
               run_date: dt.date, started_at: dt.datetime, status: str, error: str | None = None) -> None:
    """One ``runs`` row for this job (status ok or failed)."""
    counts = ({"items": result.n_items, "flagged": result.n_flagged, "new": result.n_new,
               "merchant_pages": result.n_merchants, **{f"side_{k}": v for k, v in result.by_side.items()}}
              if result else {})
    details = {"folder": result.folder, "index": result.index_path} if result else {"error": error}
    if result and result.rule and result.rule.warnings:   # the night's warnings, passed on to whoever reads this run
        details["night_warnings"] = list(result.rule.warnings)
    tables.append_rows(spark, config, "runs", tables.runs_row(
        spark, run_id=run_id, job=JOB, run_date=run_date, model_version=None, started_at=started_at,
        finished_at=dt.datetime.now(dt.UTC).replace(tzinfo=None), status=status, counts=counts,
        timings=result.timings if result else {}, details=details))
