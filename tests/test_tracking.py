"""MLflow tracking and registry on a real store (SQLite in tmp): a training run logs and registers, scoring
resolves models:/camenn@champion on the driver and the runs row records the version it used.

The registry part needs no Spark; the scoring part runs the nightly job on test_nightly's small
world (real Spark + Delta) with two registered models and an alias moved between them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_config
from test_checkpoint import METADATA, trained_like_model
from test_nightly import RUN, make_artifact, write_world

from camenn.checkpoint import list_versions, load_artifact, save_artifact
from pipeline import nightly, tables, tracking

HISTORY = [{"epoch": 1, "train_loss": 1.2, "valid_loss": 0.9, "valid_cvr_auc": 0.61, "seconds": 3.0},
           {"epoch": 2, "train_loss": 0.8, "valid_loss": 0.7, "valid_cvr_auc": 0.66, "seconds": 6.0}]
METRICS = {"cvr_auc": 0.66, "ita_acc": 0.91, "tia_acc": 0.9, "best_epoch": 2, "epochs_run": 2}


def trained(root, frame: str = "camenn", seed: int = 0) -> str:
    """A version under root carrying what camenn.training.train_fn records: history, held-out metrics, seed."""
    return save_artifact(root, trained_like_model(frame), {**METADATA, "seed": seed, "history": HISTORY,
                                                            "metrics": METRICS, "config_name": "tiny"})


def test_a_training_run_logs_params_epochs_and_registers_its_version(tmp_path):
    config = tiny_config(tmp_path)
    first = trained(config.training.artifact_dir)
    reg = tracking.log_training(config, first, seconds={"data": 1.5, "train": 9.0})
    assert (reg.name, reg.version, reg.source, reg.champion) == ("camenn", "1", first, True)   # nothing to beat yet

    mlf = tracking.client(config)
    run = mlf.get_run(reg.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["camenn.model_version"] == load_artifact(first).version
    assert run.data.params["training.lr"] == str(config.training.lr) and run.data.params["artifact.seed"] == "0"
    assert [(m.step, m.value) for m in mlf.get_metric_history(reg.run_id, "valid_loss")] == [(1, 0.9), (2, 0.7)]
    assert run.data.metrics["test_cvr_auc"] == 0.66 and run.data.metrics["seconds_train"] == 9.0
    assert Path(tracking.store_uri(config).removeprefix("sqlite:///")).is_relative_to(tmp_path)

    # a second training: a second version, registered but not in service; the first is untouched
    second = trained(config.training.artifact_dir, "mose", seed=1)
    reg2 = tracking.log_training(config, second)
    assert (reg2.version, reg2.champion) == ("2", False)
    assert tracking.lookup(config, "models:/camenn@champion").source == first
    assert tracking.lookup(config, "models:/camenn/2").source == second
    assert list_versions(config.training.artifact_dir) == [first, second]
    # a rerun that skipped training registers nothing new
    assert tracking.log_training(config, second).version == "2"
    assert len(mlf.search_model_versions("name='camenn'")) == 2


def of_kind(root, fingerprint: str, model=None) -> str:
    """A version under root that reads the item features of encoder ``fingerprint``."""
    return save_artifact(root, model if model is not None else trained_like_model(),
                         {**METADATA, "encoder_fingerprint": fingerprint, "metrics": METRICS, "config_name": "tiny"})


def test_a_registered_model_takes_only_versions_of_its_champions_kind(tmp_path):
    """Versions of one registered model read the same item features and have the same heads: a version of
    another kind (another catalogue's config pointing at this registered model) is refused in one line."""
    from test_checkpoint import TINY

    from camenn.model import create_model

    config = tiny_config(tmp_path)
    ours, theirs = "a" * 64, "b" * 64
    champion = tracking.log_training(config, of_kind(config.training.artifact_dir, ours))
    assert champion.champion
    mlf = tracking.client(config)
    assert mlf.get_model_version("camenn", "1").tags["tasks"] == "cvr,ita,tia"
    n_runs = len(mlf.search_runs([tracking.experiment_id(mlf, config)]))

    with pytest.raises(tracking.RegistryError, match=r"camenn@champion \(version 1\) is another kind of model "
                                                     r"\(encoder_fingerprint aaaaaaaaaaaaaaaa against this model's bbbb") as caught:
        tracking.log_training(config, of_kind(config.training.artifact_dir, theirs))
    assert "\n" not in str(caught.value)
    alignment_only = create_model("camenn", **{**TINY, "tasks": ("ita", "tia")})
    with pytest.raises(tracking.RegistryError, match="tasks cvr,ita,tia against this model's ita,tia"):
        tracking.log_training(config, of_kind(config.training.artifact_dir, ours, alignment_only))
    # the train job asks before it trains, by the features alone (the heads are known after training)
    with pytest.raises(tracking.RegistryError, match="encoder_fingerprint"):
        tracking.check_registrable(config, tracking.model_kind(theirs))
    tracking.check_registrable(config, tracking.model_kind(ours))
    # nothing was logged or registered for the refused ones
    assert len(mlf.search_model_versions("name='camenn'")) == 1
    assert len(mlf.search_runs([tracking.experiment_id(mlf, config)])) == n_runs

    # the same kind in another frame is a candidate; the other kind under a registered model of its own is fine
    assert tracking.log_training(config, of_kind(config.training.artifact_dir, ours, trained_like_model("mose"))).version == "2"
    own = tiny_config(tmp_path, "tracking.registered_model=camenn-other")
    assert tracking.log_training(own, of_kind(own.training.artifact_dir, theirs)).version == "1"


def test_an_evaluation_logs_its_table_curves_and_charts(tmp_path):
    config = tiny_config(tmp_path)
    run_dir = tmp_path / "runs" / "eval"
    run_dir.mkdir(parents=True)
    (run_dir / "report.md").write_text("# comparison\n")
    (run_dir / "comparison.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    report = {"run_dir": str(run_dir), "seeds": [0], "table_versions": {"items": 3},
              "comparison": [{"model": "CameNN", "seeds": [0], "cvr_auc": 0.7, "ita_acc": 0.9, "lift_share": None}],
              "runs": {"CameNN": [{"seed": 0, "cvr_auc": 0.7, "history": HISTORY}]},
              "bayes": {"bayes_auc": 0.8, "n_test": 100, "n_matched": 100}}
    run_id = tracking.log_evaluation(config, report)
    mlf = tracking.client(config)
    run = mlf.get_run(run_id)
    assert run.data.metrics["camenn.cvr_auc"] == 0.7 and run.data.metrics["bayes.bayes_auc"] == 0.8
    assert [m.step for m in mlf.get_metric_history(run_id, "camenn.s0.valid_loss")] == [1, 2]
    files = {f.path for f in mlf.list_artifacts(run_id)}
    assert {"report.md", "comparison.png", "comparison.json"} <= files


def test_a_reference_that_names_nothing_is_one_line(tmp_path):
    config = tiny_config(tmp_path, "scoring.model_dir=models:/camenn@champion")
    with pytest.raises(tracking.RegistryError, match="models:/camenn@champion names no model version") as caught:
        tracking.resolve_model(config)
    assert "\n" not in str(caught.value)
    with pytest.raises(tracking.RegistryError, match="is not models:/<name>@<alias>"):
        tracking.lookup(config, "models:/camenn/latest")


# ------------------------------------------------------------------------ scoring with the alias (Spark)


def runs_row(spark, config, run_id: str) -> dict:
    row = tables.read_table(spark, config, "runs").where(f"run_id = '{run_id}' and status = 'succeeded'").first()
    return {"model_version": row["model_version"], **json.loads(row["details"])}


@pytest.mark.slow
def test_the_nightly_job_scores_with_the_champion_and_records_it(spark, tmp_path):
    config = tiny_config(tmp_path, "scoring.model_dir=models:/camenn@champion")
    write_world(spark, config)
    old_version = make_artifact(config, tmp_path / "model-a", seed=0)
    new_version = make_artifact(config, tmp_path / "model-b", seed=7)
    first = tracking.log_training(config, str(tmp_path / "model-a"))
    second = tracking.log_training(config, str(tmp_path / "model-b"))
    assert first.champion and not second.champion

    resolved = tracking.resolve_model(config)   # on the driver, before the run
    assert (resolved.model_dir, resolved.scoring.registered_version) == (str(tmp_path / "model-a"), "camenn/1")

    night = nightly.run(spark, config, RUN)
    assert night.model_version == old_version
    row = runs_row(spark, config, night.run_id)
    assert (row["model_version"], row["registered_version"], row["model_dir"]) == (old_version, "camenn/1",
                                                                                   str(tmp_path / "model-a"))

    # promotion is an alias move; the next night picks it up, and moving it back is the rollback
    assert tracking.set_alias(config, second.version, reason="test") == "1"
    night = nightly.run(spark, config, RUN)
    assert night.model_version == new_version
    assert runs_row(spark, config, night.run_id)["registered_version"] == "camenn/2"
    tracking.set_alias(config, first.version)
    assert tracking.resolve_model(config).scoring.registered_version == "camenn/1"
