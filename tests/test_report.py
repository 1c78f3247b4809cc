"""The merchant quality report on real Spark + Delta: pages, CSVs, quality_flags, escaping, browser.

The inputs are real Delta tables in tmp_path, written through pipeline.tables: items with
real JPEG images (PIL), item_features rows with fp16 blobs of the contracted shape (small,
hand-made vectors whose category is known, so the suggestion is checkable) under the
configured encoder fingerprint, and item_alignment rows as the scoring job writes them.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import html
import io
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CONF, tiny_config
from PIL import Image, ImageDraw

from pipeline import report, tables

D1 = dt.date(2026, 11, 24)
T0 = dt.datetime(2026, 11, 1, 8, 0)
CATEGORIES = ["bakery", "dairy", "drinks", "fruit"]
COLOURS = {"bakery": (196, 140, 70), "dairy": (235, 235, 245), "drinks": (40, 110, 200), "fruit": (220, 50, 40)}
TEXT_DIM, IMAGE_DIM, N_TOKENS = 8, 6, 3
SCRIPT_TITLE = "<script>alert(1)</script>"
HOSTILE_DESCRIPTION = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> & more'
FORMULA_TITLE = '=HYPERLINK("http://example.invalid","click me")'
XSS_MERCHANT = "../../etc/passwd"
TAG_MERCHANT = "<b>shop</b>"


@dataclass(frozen=True)
class Item:
    item_id: str
    merchant_id: str
    category: str              # listed category
    text_looks: str            # category its text vector points at
    image_looks: str           # category its image vector (and JPEG colour) points at
    p_ita: float = 0.93
    p_tia: float = 0.91
    flag: bool = False
    side: str | None = None    # item_alignment.suspect_side
    title: str | None = None
    description: str | None = None


def jpeg(category: str, seed: int, px: int = 120) -> bytes:
    img = Image.new("RGB", (px, px), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    colour = COLOURS[category]
    r = px // 3 + seed % 7
    draw.ellipse([px // 2 - r, px // 2 - r, px // 2 + r, px // 2 + r], fill=colour, outline=(30, 30, 30), width=2)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _basis(category: str, dim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(0, 0.05, dim)
    v[CATEGORIES.index(category)] += 1.0
    return v


def blobs(item: Item, n_patches: int, seed: int) -> tuple[bytes, int, bytes]:
    rng = np.random.default_rng(seed)
    text = np.stack([_basis(item.text_looks, TEXT_DIM, rng) for _ in range(N_TOKENS)]).astype(np.float16)      # (n, Dt)
    image = np.stack([_basis(item.image_looks, IMAGE_DIM, rng) for _ in range(n_patches)]).astype(np.float16)  # (P, Di)
    return text.tobytes(), N_TOKENS, image.tobytes()


def base_items() -> list[Item]:
    clean = [Item(f"c{m}{k}-{cat}", merchant, cat, cat, cat, p_ita=0.9 - 0.01 * k, p_tia=0.88 + 0.01 * k)
             for m, merchant in enumerate(["m-clean", "Shop A"]) for cat in CATEGORIES for k in range(2)]
    flagged = [
        # text swapped in: listed fruit, photo fruit, text reads dairy -> text looks wrong, suggest fruit
        Item("t1", TAG_MERCHANT, "fruit", "dairy", "fruit", p_ita=0.08, p_tia=0.71, flag=True, side="text",
             title="Fresh whole milk 1 l", description="Creamy milk from local farms"),
        # photo swapped in: listed bakery, text bakery, photo drinks -> photo looks wrong, suggest bakery
        Item("t2", TAG_MERCHANT, "bakery", "bakery", "drinks", p_ita=0.77, p_tia=0.12, flag=True, side="image",
             title="Sourdough loaf", description="Baked this morning"),
        # wrong category: text and photo both dairy, listed drinks -> both, suggest dairy
        Item("t3", TAG_MERCHANT, "drinks", "dairy", "dairy", p_ita=0.31, p_tia=0.36, flag=True, side=None,
             title="Greek yoghurt", description="Thick and creamy"),
        Item("x1", XSS_MERCHANT, "fruit", "drinks", "fruit", p_ita=0.2, p_tia=0.6, flag=True, side="text",
             title=SCRIPT_TITLE, description=HOSTILE_DESCRIPTION),
        Item("x2", XSS_MERCHANT, "dairy", "dairy", "bakery", p_ita=0.45, p_tia=0.3, flag=True, side="image",
             title=FORMULA_TITLE, description="-1 + 2"),
        Item("a1", "Shop A", "drinks", "fruit", "drinks", p_ita=0.15, p_tia=0.8, flag=True, side="text",
             title="Orange juice", description="Apples, freshly picked"),
    ]
    return clean + flagged


def write_world(spark, config, items: list[Item], run_date: dt.date, *, write_items: bool = True,
                model_version: str = "test-model-1", run_id: str | None = None) -> None:
    """items, item_features and the run date's item_alignment as real Delta tables."""
    n_patches = config.featurizer.patch_grid ** 2
    fingerprint = report.sources.encoder_fingerprint(config)
    if write_items:
        rows = [(it.item_id, it.merchant_id, it.category, it.title or f"{it.text_looks} item {it.item_id}",
                 it.description or f"a good {it.text_looks} product", jpeg(it.image_looks, i), 1.5 + i,
                 T0 + dt.timedelta(hours=i)) for i, it in enumerate(items)]
        tables.overwrite_table(spark, config, "items", spark.createDataFrame(rows, tables.input_schema(spark, "items")))
        feats = [(it.item_id, f"h-{it.item_id}", fingerprint, *blobs(it, n_patches, i), T0, None, None)   # no views
                 for i, it in enumerate(items)]
        tables.overwrite_table(spark, config, "item_features",
                               spark.createDataFrame(feats, tables.schema_of(spark, "item_features")))
    from pipeline.flag_rules import SUSPECT_SIDES

    align = [(run_date, it.item_id, it.merchant_id, it.category, it.p_ita, it.p_tia, it.flag, SUSPECT_SIDES.get(it.side),
              model_version, it.side, run_id) for it in items]   # run_id None: a table from before run ids
    tables.replace_run_date(spark, config, "item_alignment",
                            spark.createDataFrame(align, tables.schema_of(spark, "item_alignment")), run_date)


def run_job(config_root: Path, run_date: dt.date) -> list[str]:
    """The camenn-report job's main() in this process (the suite's Spark session); its stdout lines."""
    from pipeline.jobs.quality_report import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["--conf", str(TINY_CONF), "--run-date", run_date.isoformat(),
                           "--set", f"data.root={config_root / 'tables'}",
                           "--set", f"report.out_dir={config_root / 'reports'}"])
    assert status == 0, out.getvalue()
    return out.getvalue().strip().splitlines()


def record_scoring_run(spark, config, items: list[Item], run_date: dt.date, run_id: str) -> dict:
    """The scoring job's succeeded ``runs`` row for the date, its thresholds recorded by the night's own
    function: a calibrated night (2% quantile) whose values are 0.5, with the shares of ``items``."""
    from camenn.config import ThresholdConfig
    from pipeline import flag_rules, run_record

    by_reason: dict = {}
    for it in items:   # an item flagged without a side (a table from before the column) counts as unflagged
        reason = flag_rules.SUSPECT_SIDES.get(it.side) if it.flag else None
        by_reason[reason] = by_reason.get(reason, 0) + 1
    recorded = flag_rules.recorded_thresholds(ThresholdConfig(mode="calibrated", quantile=0.02),
                                              ThresholdConfig(mode="absolute", ita=0.5, tia=0.5), by_reason)
    tables.append_rows(spark, config, "runs", tables.runs_row(
        spark, run_id=run_id, job=run_record.SCORING_JOB, run_date=run_date, model_version="test-model-1",
        started_at=T0, finished_at=T0 + dt.timedelta(minutes=5), status=run_record.SUCCEEDED, counts={}, timings={},
        details={"thresholds": recorded}))
    return recorded


@dataclass
class Built:
    config: object
    folder: Path
    index: Path
    stdout: list[str]
    items: list[Item]
    thresholds: dict           # what the scoring run recorded (runs.details.thresholds)


_BUILT: dict[str, Built] = {}


def shared_report(spark, tmp_path_factory) -> Built:
    """The base world's tables, its scoring run's record and its D1 report through the job, built once
    per test session (test_notebook.py explores the same run). That night warned: 3 and 2 of the 22
    items are under its ITA and TIA thresholds, more than 3 x its 2% quantile."""
    if "d1" not in _BUILT:
        root = tmp_path_factory.mktemp("report")
        config = tiny_config(root)
        items = base_items()
        run_id = f"score_catalog-{D1}-shared"
        write_world(spark, config, items, D1, run_id=run_id)
        recorded = record_scoring_run(spark, config, items, D1, run_id)
        stdout = run_job(root, D1)
        index = Path(stdout[-1])
        _BUILT["d1"] = Built(config, index.parent, index, stdout, items, recorded)
    return _BUILT["d1"]


@pytest.fixture()
def built(spark, tmp_path_factory) -> Built:
    return shared_report(spark, tmp_path_factory)


def merchant_files(built: Built, merchant_id: str) -> tuple[Path, Path]:
    stem = report.merchant_slug(merchant_id)
    return built.folder / "merchants" / f"{stem}.html", built.folder / "merchants" / f"{stem}.csv"


def html_item_ids(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'data-item-id="([^"]*)"', page)]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- pure parts


def test_merchant_slug_is_a_safe_file_name():
    names = {m: report.merchant_slug(m) for m in
             [XSS_MERCHANT, TAG_MERCHANT, "Shop A", "shop-a", "", "..", "/", "a\x00b", "Ünïcödé shop", "x" * 300]}
    for merchant, slug in names.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*-[0-9a-f]{10}", slug), (merchant, slug)
        assert len(slug) <= 51
    assert names[XSS_MERCHANT].startswith("etc-passwd-")
    assert names[TAG_MERCHANT].startswith("b-shop-b-")
    assert len(set(names.values())) == len(names), "different merchants must get different files"
    assert report.merchant_slug("Shop A") == names["Shop A"], "stable"


def test_side_of_reads_the_suspect_side_then_the_probabilities():
    assert report.side_of("text", 0.9, 0.9) == "text"
    assert report.side_of("image", 0.9, 0.9) == "image"
    assert report.side_of("both", 0.9, 0.9) == "both"
    # a row written before item_alignment had suspect_side: the probabilities decide
    assert report.side_of(None, 0.2, 0.8) == "text"
    assert report.side_of(None, 0.8, 0.2) == "image"
    assert report.side_of(None, 0.2, 0.3) == "both"
    assert report.side_of(None, 0.6, 0.7) == "text"   # neither threshold (a per-category flag): the lower one


def test_suggest_names_the_agreed_category_or_trusts_the_right_side():
    assert report.suggest("both", "drinks", "dairy", "dairy")[0] == "dairy"
    assert "move it to “dairy”" in report.suggest("both", "drinks", "dairy", "dairy")[1]
    assert report.suggest("text", "fruit", "dairy", "fruit")[0] == "fruit"
    assert report.suggest("image", "bakery", "bakery", "drinks")[0] == "bakery"
    assert report.suggest("both", "fruit", "dairy", "drinks")[0] is None
    assert report.suggest("text", "fruit", None, None)[0] is None


def test_csv_safe_neutralises_formulas():
    assert report.csv_safe('=1+1') == "'=1+1"
    assert report.csv_safe("@SUM(A1)") == "'@SUM(A1)"
    assert report.csv_safe("plain") == "plain"
    assert report.csv_safe(0.5) == 0.5


def test_merchant_page_shows_the_worst_items_up_to_the_cap(tmp_path):
    """The per-merchant task on its own (no Spark): page and CSV carry the same worst rows."""
    import pandas as pd

    centroids = report.Centroids([], np.zeros((0, 0)), np.zeros((0, 0)))
    settings = report.PageSettings(run_date=D1, base=str(tmp_path), thumbnail_px=64, n_patches=9, ita_threshold=0.5,
                                   tia_threshold=0.5, max_items=2, centroids=centroids)
    thumb = report.thumbnail_data_uri(jpeg("fruit", 1), 64)
    pdf = pd.DataFrame([{"merchant_id": "m/1", "item_id": f"i{k}", "category": "fruit", "title": f"<i>{k}</i>",
                         "description": "d", "thumb": thumb, "text_category": "fruit", "image_category": "fruit",
                         "p_ita": p, "p_tia": 0.9, "suspect_side": "text", "model_version": "v",
                         "content_hash": "h", "first_flagged": D1 if k else D1 - dt.timedelta(days=3)}
                        for k, p in enumerate([0.4, 0.1, 0.3, 0.2])])
    columns = report.flag_columns()
    rows = report.pages.merchant_page_fn(settings, columns)(pdf)
    assert list(rows.columns) == columns
    assert rows["item_id"].tolist() == ["i1", "i3", "i2", "i0"] and rows["rank"].tolist() == [1, 2, 3, 4]
    assert rows["is_new"].tolist() == [True, True, True, False]
    stem = report.merchant_slug("m/1")
    page = (tmp_path / "merchants" / f"{stem}.html").read_text(encoding="utf-8")
    assert html_item_ids(page) == ["i1", "i3"] == [r["item_id"] for r in read_csv(tmp_path / "merchants" / f"{stem}.csv")]
    assert "4 flagged items" in page and "the worst 2 shown here and in the CSV" in page and "3 new" in page
    assert "&lt;i&gt;1&lt;/i&gt;" in page and "<i>1</i>" not in page
    assert sorted(p.name for p in (tmp_path / "merchants").iterdir()) == [f"{stem}.csv", f"{stem}.html"]


# ----------------------------------------------------------------------------- the report on Spark + Delta


def test_job_prints_the_index_path_last_and_writes_the_pages(built):
    assert built.index.is_file() and built.index.name == "index.html"
    assert built.folder.name == D1.isoformat()
    assert "6 of 22 items flagged" in built.stdout[-2]
    pages = sorted(p.name for p in (built.folder / "merchants").iterdir())
    flagged_merchants = {it.merchant_id for it in built.items if it.flag}
    assert pages == sorted(f"{report.merchant_slug(m)}.{ext}" for m in flagged_merchants for ext in ("csv", "html"))
    assert (built.folder / report.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing but the run folder (no staging or old copies left behind), nothing written outside it
    assert sorted(p.name for p in built.folder.parent.iterdir()) == [D1.isoformat()]
    for path in built.folder.rglob("*"):
        assert path.resolve().is_relative_to(built.folder.resolve())
        assert re.fullmatch(r"[A-Za-z0-9._-]+", path.name), path


def test_quality_flags_rows(spark, built):
    rows = {r["item_id"]: r.asDict() for r in tables.read_table(spark, built.config, "quality_flags")
            .where(f"run_date = DATE'{D1}'").collect()}
    assert set(rows) == {it.item_id for it in built.items if it.flag}
    assert report.flag_columns() == [f.name for f in tables.schema_of(spark, "quality_flags").fields]
    t1, t2, t3 = rows["t1"], rows["t2"], rows["t3"]
    assert (t1["side"], t1["text_category"], t1["image_category"], t1["suggested_category"]) == ("text", "dairy", "fruit", "fruit")
    assert (t2["side"], t2["text_category"], t2["image_category"], t2["suggested_category"]) == ("image", "bakery", "drinks", "bakery")
    assert (t3["side"], t3["suggested_category"]) == ("both", "dairy")
    assert "listed under “drinks”" in t3["suggestion"]
    assert all(r["is_new"] and r["first_flagged"] == D1 for r in rows.values())
    tagged = sorted((r for r in rows.values() if r["merchant_id"] == TAG_MERCHANT), key=lambda r: r["rank"])
    assert [r["item_id"] for r in tagged] == ["t1", "t2", "t3"]
    assert rows["x1"]["title"] == SCRIPT_TITLE, "the table keeps the text as typed; escaping is the page's job"
    runs = tables.read_table(spark, built.config, "runs").where("job = 'quality_report'").collect()
    assert [r["status"] for r in runs] == ["ok"] and runs[0]["counts"]["flagged"] == 6


def test_centroid_sample_is_a_stable_subset_of_unflagged_items(spark, built):
    alignment = tables.read_table(spark, built.config, "item_alignment").where(f"run_date = DATE'{D1}'")
    unflagged = {(r["item_id"], r["category"]) for r in alignment.where("NOT flag").collect()}
    assert {tuple(r) for r in report.centroid_sample(alignment, 100).collect()} == unflagged
    small = [tuple(r) for r in report.centroid_sample(alignment, 1).collect()]
    assert set(small) < unflagged and len(small) < len(unflagged) / 2
    assert sorted(small) == sorted(tuple(r) for r in report.centroid_sample(alignment, 1).collect())
    assert report.publish.uri_like("s3a://bucket/reports", "bucket/reports/2026-11-24") == "s3a://bucket/reports/2026-11-24"
    assert report.publish.uri_like("/srv/reports", "/srv/reports/2026-11-24") == "/srv/reports/2026-11-24"


def test_csv_and_html_list_the_same_items_in_the_same_order(built):
    for merchant in {it.merchant_id for it in built.items if it.flag}:
        page, csv_path = merchant_files(built, merchant)
        html_ids = html_item_ids(page.read_text(encoding="utf-8"))
        rows = read_csv(csv_path)
        assert [r["item_id"] for r in rows] == html_ids
        assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
        worst = [min(float(r["p_ita"]), float(r["p_tia"])) for r in rows]
        assert worst == sorted(worst), "worst first"
        expected = sorted((it for it in built.items if it.flag and it.merchant_id == merchant),
                          key=lambda it: (min(it.p_ita, it.p_tia), it.item_id))
        assert html_ids == [it.item_id for it in expected]


def test_merchant_text_is_escaped_everywhere(built):
    page, csv_path = merchant_files(built, XSS_MERCHANT)
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text.lower(), "no script element of any origin on the page"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=" in text
    assert f'<span id="merchant">{XSS_MERCHANT}</span>' in text      # shown as text ("/" and "." need no escaping)
    index = built.index.read_text(encoding="utf-8")
    assert TAG_MERCHANT not in index and "&lt;b&gt;shop&lt;/b&gt;" in index
    assert "<script" not in index.lower()
    assert "Content-Security-Policy" in index and "Content-Security-Policy" in text
    rows = {r["item_id"]: r for r in read_csv(csv_path)}
    assert rows["x1"]["title"] == SCRIPT_TITLE
    assert rows["x2"]["title"] == "'" + FORMULA_TITLE and rows["x2"]["description"] == "'-1 + 2"


def test_flagged_again_with_the_same_content_is_not_new(spark, tmp_path):
    config = tiny_config(tmp_path)
    d2, d3 = D1 + dt.timedelta(days=1), D1 + dt.timedelta(days=2)
    a = Item("A", "m1", "fruit", "dairy", "fruit", p_ita=0.1, p_tia=0.8, flag=True, side="text")
    b = Item("B", "m1", "bakery", "bakery", "drinks", p_ita=0.8, p_tia=0.2, flag=True, side="image", title="Rye bread")
    c = Item("C", "m2", "dairy", "fruit", "dairy", p_ita=0.3, p_tia=0.7, flag=True, side="text")
    ok = [Item(f"ok{i}", "m2", cat, cat, cat) for i, cat in enumerate(CATEGORIES)]

    def flags(run_date):
        return {r["item_id"]: (r["is_new"], r["first_flagged"]) for r in tables.read_table(spark, config, "quality_flags")
                .where(f"run_date = DATE'{run_date}'").collect()}

    write_world(spark, config, [a, b, c, *ok], D1)
    report.build_report(spark, config, D1)
    assert flags(D1) == {"A": (True, D1), "B": (True, D1), "C": (True, D1)}

    # day 2: B's merchant edited the title (new content, still wrong): new again; C is not flagged
    b2 = replace(b, title="Rye bread, sliced")
    write_world(spark, config, [a, b2, replace(c, flag=False, p_ita=0.8), *ok], d2)
    result = report.build_report(spark, config, d2)
    assert flags(d2) == {"A": (False, D1), "B": (True, d2)}
    assert result.n_new == 1
    page = (Path(result.folder) / "merchants" / f"{report.merchant_slug('m1')}.html").read_text(encoding="utf-8")
    assert re.search(r'data-item-id="A".*?still flagged.*?flagged since ' + D1.isoformat(), page, re.S)
    assert re.search(r'data-item-id="B".*?NEW.*?flagged for the first time', page, re.S)
    statuses = {r["item_id"]: (r["status"], r["first_flagged"]) for r in
                read_csv(Path(result.folder) / "merchants" / f"{report.merchant_slug('m1')}.csv")}
    assert statuses == {"A": ("still flagged", D1.isoformat()), "B": ("new", d2.isoformat())}

    # day 3: C is flagged again with the content it had on day 1: still flagged since day 1, not new
    write_world(spark, config, [a, b2, c, *ok], d3, write_items=False)
    report.build_report(spark, config, d3)
    assert flags(d3) == {"A": (False, D1), "B": (False, d2), "C": (False, D1)}

    # day 4: nothing flagged: an index without merchants, no pages, no quality_flags rows for the day
    d4 = D1 + dt.timedelta(days=3)
    write_world(spark, config, [replace(it, flag=False, p_ita=0.9, p_tia=0.9) for it in (a, b2, c)] + ok, d4,
                write_items=False)
    quiet = report.build_report(spark, config, d4)
    assert (quiet.n_flagged, quiet.n_merchants, flags(d4)) == (0, 0, {})
    assert list((Path(quiet.folder) / "merchants").iterdir()) == []
    index = Path(quiet.index_path).read_text()
    assert "7 more merchants" not in index and "2 more merchants with no flagged items" in index
    # nights with no runs row: the configured rule, said to be that, and no warning
    assert "ITA below 0.500 or TIA below 0.500 (fixed thresholds); the night recorded no thresholds" in index
    assert 'class="warning' not in index

    # a rerun of day 2 replaces its rows (one per item) and its folder, and reads only earlier runs
    report.build_report(spark, config, d2)
    assert flags(d2) == {"A": (False, D1), "B": (True, d2)}
    assert tables.read_table(spark, config, "quality_flags").where(f"run_date = DATE'{d2}'").count() == 2
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [d.isoformat() for d in (D1, d2, d3, d4)]


def test_the_nights_thresholds_and_its_calibration_warning_reach_the_index_and_every_merchant_page(spark, built):
    """The report shows what the night recorded; a score is red where the night flagged its side, not under 0.5."""
    import json

    assert len(built.thresholds["warnings"]) == 2
    index = " ".join(html.unescape(built.index.read_text(encoding="utf-8")).split())   # as a reader sees the lines
    for line in built.thresholds["warnings"]:
        assert f"The night warned: {line}" in index
    assert "ITA below 0.500 or TIA below 0.500: the 2% quantile of the model's own held-out listings" in index
    assert "Under the thresholds: ITA 13.6%, TIA 9.1% of the scored listings" in index
    pages = sorted((built.folder / "merchants").glob("*.html"))
    assert len(pages) == len({it.merchant_id for it in built.items if it.flag})
    for page in pages:
        assert report.CAUTION in html.unescape(page.read_text(encoding="utf-8")), page.name
    # x2: its photo was flagged (TIA 0.30); its ITA of 0.45 is under 0.5 but was not flagged, so not red
    xss = html.unescape(merchant_files(built, XSS_MERCHANT)[0].read_text(encoding="utf-8"))
    assert re.search(r'data-item-id="x2".*?class="score ita">ITA — text fits photo: <span class="">0\.45</span>'
                     r'.*?class="score tia">TIA — photo fits text: <span class="low">0\.30</span>', xss, re.S)
    # and the report's own runs row passes the warnings on
    row = tables.read_table(spark, built.config, "runs").where(f"job = '{report.JOB}'").first()
    assert json.loads(row["details"])["night_warnings"] == built.thresholds["warnings"]


def test_no_scoring_output_is_a_clear_error(spark, built):
    with pytest.raises(report.ReportError, match="no rows for 2026-11-20: run jobs/score_catalog.py"):
        report.build_report(spark, built.config, dt.date(2026, 11, 20))


# ----------------------------------------------------------------------------- in a real browser


def system_chromium() -> str:
    """Debian's Chromium (``make browser``); Playwright drives it, and downloads no browser of its own."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no system Chromium on PATH: `make browser` installs Debian's package")   # never skip
    return path


@dataclass
class PageVisit:
    """What a page did while it loaded: console errors (CSP violations too), dialogs, requests."""
    errors: list = field(default_factory=list)
    dialogs: list = field(default_factory=list)
    requests: list = field(default_factory=list)


def visit(page, url: str) -> PageVisit:
    seen = PageVisit()
    handlers = {"console": lambda m: seen.errors.append(m.text) if m.type == "error" else None,
                "pageerror": lambda e: seen.errors.append(str(e)),
                "dialog": lambda d: (seen.dialogs.append(d.message), d.dismiss()),
                "request": lambda r: seen.requests.append(r.url)}
    for event, handler in handlers.items():
        page.on(event, handler)
    try:
        page.goto(url, wait_until="load")
        page.wait_for_timeout(300)   # late console messages and dialogs
    finally:
        for event, handler in handlers.items():
            page.remove_listener(event, handler)
    return seen


def test_pages_in_headless_chromium(built, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = system_chromium()
    page_path, _ = merchant_files(built, XSS_MERCHANT)
    tag_page, _ = merchant_files(built, TAG_MERCHANT)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium)
        page = browser.new_page()
        try:
            for path, shot in [(built.index, "index.png"), (page_path, "merchant-xss.png"), (tag_page, "merchant.png")]:
                seen = visit(page, path.as_uri())
                assert seen.errors == [], (path.name, seen.errors)
                assert seen.dialogs == [], "an alert fired: merchant text ran as script"
                assert path.as_uri() in seen.requests, seen.requests
                outside = [u for u in seen.requests if not u.startswith(("file://", "data:"))]
                assert outside == [], f"the page reached outside its data: {outside}"
                assert all(u == path.as_uri() or u.startswith("data:") for u in seen.requests), seen.requests
                images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
                assert images and all(done and width > 0 for done, width in images), images
                assert page.evaluate("document.querySelectorAll('script').length") == 0
                assert page.evaluate("typeof window.__pwned") == "undefined"
                page.screenshot(path=tmp_path / shot, full_page=True)
                assert (tmp_path / shot).stat().st_size > 10_000

            visit(page, page_path.as_uri())
            titles = page.locator("article .title").all_text_contents()
            assert SCRIPT_TITLE in titles
            assert HOSTILE_DESCRIPTION in "|".join(page.locator("article .desc").all_text_contents())
            assert page.locator("#merchant").text_content() == XSS_MERCHANT
            order = page.evaluate("Array.from(document.querySelectorAll('article')).map(e => e.dataset.itemId)")
            assert order == [r["item_id"] for r in read_csv(merchant_files(built, XSS_MERCHANT)[1])]

            visit(page, built.index.as_uri())
            links = page.evaluate("Array.from(document.querySelectorAll('#merchants a')).map(a => [a.textContent, a.href])")
            assert TAG_MERCHANT in [t for t, _ in links]
            for _, href in links:
                assert href.startswith(built.folder.as_uri() + "/merchants/"), href
        finally:
            browser.close()
