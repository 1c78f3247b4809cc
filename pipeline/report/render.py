"""Pages and files from report rows: merchant HTML and CSV (Jinja templates shipped in templates/), thumbnails, the plot.

The templates are package files (``pipeline/report/templates/``: base.html with style.css
inlined, merchant.html, index.html), autoescaped because merchant text is untrusted.
"""

from __future__ import annotations

import base64
import csv
import functools
import io
from typing import TYPE_CHECKING

import pandas as pd

from pipeline.report.advice import SIDE_LABEL, csv_safe, text_of

if TYPE_CHECKING:
    from pipeline.report.pages import PageSettings

CSV_COLUMNS = ["rank", "item_id", "status", "first_flagged", "category", "title", "description",
               "p_ita", "p_tia", "side", "problem", "suggested_category", "suggestion"]


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


@functools.lru_cache(maxsize=1)
def templates():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    # pipeline/report/templates/: base.html (with style.css inlined: the pages work offline, one file each),
    # merchant.html, index.html; autoescaped, as merchant text is untrusted
    return Environment(loader=PackageLoader("pipeline.report", "templates"),
                       autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_merchant_csv(rows: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows.to_dict("records"):
        writer.writerow([csv_safe(f"{row[c]:.4f}" if c in ("p_ita", "p_tia") else text_of(row[c])) for c in CSV_COLUMNS])
    return buf.getvalue().encode("utf-8")


def render_merchant_html(merchant_id: str, rows: pd.DataFrame, settings: PageSettings, csv_name: str,
                         n_flagged: int | None = None, n_new: int | None = None) -> bytes:
    records = rows.to_dict("records")
    versions = sorted({r["model_version"] for r in records if r.get("model_version")})
    html = templates().get_template("merchant.html").render(
        merchant_id=merchant_id, run_date=settings.run_date.isoformat(), rows=records,
        n_flagged=n_flagged if n_flagged is not None else len(records),
        n_new=n_new if n_new is not None else sum(1 for r in records if r["is_new"]), model_version=", ".join(versions) or "unknown",
        csv_name=csv_name, px=settings.thumbnail_px, side_label=SIDE_LABEL, caution=settings.caution)
    return html.encode("utf-8")


def plot_png(categories: list[dict]) -> bytes | None:
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
