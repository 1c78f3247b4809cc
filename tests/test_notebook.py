"""notebooks/explore_run.ipynb runs top to bottom on a real run's outputs.

The run is the report test's hand-built world (real Delta tables, the real report job) plus a
small model artifact, so the notebook computes the heat maps itself. The kernel is this
interpreter (.venv's python) through a kernelspec written into tmp_path; parameters are
injected after the cell tagged ``parameters``, as papermill does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
from conftest import TINY_CONF
from nbclient import NotebookClient
from test_report import CATEGORIES, D1, IMAGE_DIM, SCRIPT_TITLE, TEXT_DIM, XSS_MERCHANT, shared_report

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "explore_run.ipynb"
KERNEL = "camenn-test-venv"


def write_kernelspec(jupyter_dir: Path) -> None:
    spec_dir = jupyter_dir / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "camenn (test venv)", "language": "python"}))


def save_small_model(path: Path, n_patches: int) -> None:
    import torch

    from camenn.checkpoint import write_artifact
    from camenn.inputs import FeatureVocab
    from camenn.model import CameNNConfig, create_model_from_config

    vocab = FeatureVocab.fit(CATEGORIES, [1.0, 5.0, 9.0, 20.0], {}, n_price_buckets=2)
    cfg = CameNNConfig(text_dim=TEXT_DIM, image_dim=IMAGE_DIM, n_patches=n_patches, max_text_tokens=24, d_model=16,
                       n_heads=2, n_experts=2, item_feature_sizes=vocab.item_feature_sizes,
                       user_feature_sizes=vocab.user_feature_sizes)
    torch.manual_seed(1)
    write_artifact(path, create_model_from_config(cfg), {"vocab": vocab.to_dict()}, overwrite=True)


def inject(nb, **params) -> None:
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "# injected by tests/test_notebook.py\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, cell)


def outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if kind in o.get("data", {})]


def test_explore_notebook_runs_on_a_run(spark, tmp_path_factory, tmp_path, monkeypatch):
    built = shared_report(spark, tmp_path_factory)
    config = built.config
    save_small_model(Path(config.training.artifact_dir), config.featurizer.patch_grid ** 2)
    write_kernelspec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), "the notebook needs a parameters cell"
    inject(nb, CONF=str(TINY_CONF), RUN_DATE=D1.isoformat(),
           OVERRIDES=[f"data.root={config.data.root}", f"report.out_dir={config.report.out_dir}",
                      f"training.artifact_dir={config.training.artifact_dir}"],
           MERCHANT=XSS_MERCHANT, MAX_ITEMS=12, EVAL_RUN_DIR=str(tmp_path / "no-evaluation-run"))
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=900, startup_timeout=180,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute()          # raises CellExecutionError on the first failing cell
    finally:
        nbformat.write(nb, tmp_path / "explore_run.executed.ipynb")

    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    pages = [o["data"]["text/html"] for o in outputs(nb, "text/html") if "flagged item(s) shown" in o["data"]["text/html"]]
    assert len(pages) == 1
    page = pages[0]
    assert page.count('<img src="data:image/jpeg;base64,') == 2, "both flagged items of the merchant, with photos"
    assert SCRIPT_TITLE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    images = outputs(nb, "image/png")
    assert len(images) >= 3, "histograms and the two heat maps"
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "diagonal contrast: before" in text
