"""The model shipped with the repository (models/demo) and the rule that decides when it may stand in for training.

No Spark: the rule reads the artifact, the config and the installed model code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from camenn.checkpoint import load_artifact, save_artifact
from camenn.config import load_config
from pipeline.train import shipped_artifact_problem, use_shipped_artifact

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "conf" / "demo.yaml"


@pytest.fixture(scope="module")
def shipped():
    return load_artifact(ROOT / "models" / "demo")


def test_the_shipped_model_fits_the_quick_demo_and_this_code(shipped):
    problem = shipped_artifact_problem(load_config(QUICK))
    assert problem is None, f"models/demo cannot stand in for training: {problem}"
    metrics = shipped.metadata["metrics"]
    assert shipped.metadata["config_name"] == "demo-full" and metrics["n_items"] > 1000
    assert metrics["ita_acc"] > 0.9 and metrics["tia_acc"] > 0.9 and metrics["cvr_auc"] > 0.7


def test_other_model_settings_are_refused_with_the_setting_named():
    problem = shipped_artifact_problem(load_config(QUICK, ["model.d_model=64", "model.n_heads=4"]))
    assert problem is not None and "d_model" in problem and "n_heads" in problem


def test_a_model_trained_with_other_model_code_is_refused(shipped, tmp_path):
    stale = save_artifact(tmp_path / "stale", shipped.model, {**shipped.metadata, "code_fingerprint": "0" * 16})
    problem = shipped_artifact_problem(load_config(QUICK), str(stale))
    assert problem is not None and "other model code" in problem and "make ship-demo-model" in problem


def test_the_shipped_model_is_published_whole_as_a_new_version(shipped, tmp_path):
    root = tmp_path / "model"
    config = load_config(QUICK, [f"training.artifact_dir={root}"])
    earlier = save_artifact(root, shipped.model, {"run": "an earlier training"})
    assert shipped_artifact_problem(config) is None
    art = use_shipped_artifact(config)
    assert art.version == shipped.version and load_artifact(root).path == art.path != earlier
    assert load_artifact(earlier).metadata == {"run": "an earlier training"}   # left as it was
    files = lambda folder: {p.name: p.read_bytes() for p in Path(folder).iterdir()}
    assert files(art.path) == files(shipped.path)   # byte for byte
