"""The promotion gate on real Spark + Delta, real training and a real MLflow store (SQLite in tmp).

A model trained on test_training's small world and the same model with its heads negated
(every logit's sign flipped: each AUC becomes 1 - AUC, each accuracy 1 - accuracy) are a
candidate and a champion whose order is known before the gate measures them. The gate must
refuse the damaged one as a candidate and accept the trained one over it; both decisions are
MLflow runs with the figures, and moving the alias back is the rollback.
"""

from __future__ import annotations

import datetime as dt

import pytest
import torch
from conftest import TINY_CONF, tiny_config
from test_training import FAST
from test_training_data import T0, synthetic_world, write_world

from pipeline import promote, tracking

RUN = (T0 + dt.timedelta(days=12)).date()


# ------------------------------------------------------------------------ the gate alone (no Spark)


def test_the_gate_allows_the_margin_and_no_more():
    champion = {"ita_acc": 0.90, "tia_acc": 0.90, "cvr_auc": 0.70}
    margins = {"ita_acc": 0.01, "tia_acc": 0.01, "cvr_auc": 0.0}
    passed, checks, _ = promote.compare({"ita_acc": 0.891, "tia_acc": 0.95, "cvr_auc": 0.70}, champion, margins)
    assert passed and [c["passed"] for c in checks] == [True, True, True]
    passed, checks, reason = promote.compare({"ita_acc": 0.889, "tia_acc": 0.95, "cvr_auc": 0.71}, champion, margins)
    assert not passed and "ita_acc" in reason and "tia_acc" not in reason
    # an alignment-only champion has no CVR AUC: not gated; a candidate without one where the champion has it fails
    assert promote.compare({"ita_acc": 0.9, "tia_acc": 0.9}, {"ita_acc": 0.9, "tia_acc": 0.9}, margins)[0]
    passed, _, reason = promote.compare({"ita_acc": 0.95, "tia_acc": 0.95}, champion, margins)
    assert not passed and reason.endswith("cvr_auc")


def test_a_negative_margin_is_refused_by_the_config(tmp_path):
    from camenn.config import ConfigError

    with pytest.raises(ConfigError, match="promotion.margins: .*must be >= 0"):
        tiny_config(tmp_path, "promotion.margins={ita_acc: -0.1}")
    with pytest.raises(ConfigError, match="promotion.margins.auc"):
        tiny_config(tmp_path, "promotion.margins={auc: 0.1}")


def test_the_job_says_in_one_line_when_there_is_nothing_to_promote(tmp_path, capsys):
    import logging

    from pipeline.jobs.promote import main

    store = f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"
    before = list(logging.getLogger().handlers)
    assert main(["--conf", str(TINY_CONF), "--set", store, "--to-version", "3"]) == 2
    for handler in set(logging.getLogger().handlers) - set(before):   # the job's handler writes to capsys's stream
        logging.getLogger().removeHandler(handler)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]   # beside MLflow's INFO lines
    assert len(errors) == 1 and errors[0].startswith("error: no version of camenn in sqlite:///"), errors


# ------------------------------------------------------------------------ two models measured (Spark, training)


def damaged(artifact: str, root: str) -> str:
    """A new version under root: the artifact's model with every task head negated (its scores mirrored)."""
    from camenn.checkpoint import load_artifact, save_artifact

    art = load_artifact(artifact)
    with torch.no_grad():
        for head in art.model.heads.values():
            head.weight.neg_()
            head.bias.neg_()
    return save_artifact(root, art.model, {**art.metadata, "damaged": "task heads negated"})


@pytest.fixture(scope="module")
def models(spark, tmp_path_factory):
    from pipeline.train import run_training

    root = tmp_path_factory.mktemp("promote-world")
    config = tiny_config(root, *FAST)
    write_world(spark, config, synthetic_world(n_items=28, n_users=16, days=10))
    good = run_training(spark, config, run_date=RUN).artifact
    return root, good, damaged(good, config.training.artifact_dir)


def registry(root, name: str, *artifacts: str):
    """A config with a registry of its own holding ``artifacts`` as versions 1, 2, ...; version 1 is the champion."""
    config = tiny_config(root, *FAST, f"tracking.uri=sqlite:///{root / name / 'mlflow.db'}")
    for art in artifacts:
        tracking.log_training(config, art)
    return config


def gate_run(config, decision) -> dict:
    run = tracking.client(config).get_run(decision.run_id)
    return {"tags": run.data.tags, "metrics": run.data.metrics}


@pytest.mark.slow
def test_the_gate_refuses_a_worse_candidate_and_promotes_a_better_one(spark, models):
    root, good, bad = models

    # the damaged model as candidate: refused, the champion stays, the decision and figures are in MLflow
    config = registry(root, "refuse", good, bad)
    refused = promote.promote(lambda: spark, config, run_date=RUN)
    assert (refused.candidate, refused.champion, refused.passed, refused.moved) == ("2", "1", False, False), refused.summary()
    assert promote.champion_version(config) == "1"
    trained, mirrored = refused.figures["champion"], refused.figures["candidate"]
    # a few steps of training rank CVR (its accuracies may still sit at 0.5: every item on one side of 0.5)
    assert trained["cvr_auc"] > 0.55 and "cvr_auc" in refused.reason, (trained, refused.reason)
    for figure in ("cvr_auc", "ita_auc", "tia_auc"):   # the same rows, the scores mirrored
        assert mirrored[figure] == pytest.approx(1 - trained[figure], abs=2e-3), figure
    assert mirrored["n_test"] == trained["n_test"] > 0 and mirrored["n_items"] == trained["n_items"] > 0
    recorded = gate_run(config, refused)
    assert recorded["tags"]["camenn.passed"] == "false" and recorded["tags"]["camenn.moved"] == "false"
    assert recorded["metrics"]["candidate.ita_acc"] == mirrored["ita_acc"]
    assert recorded["metrics"]["champion.cvr_auc"] == trained["cvr_auc"]
    assert recorded["metrics"]["margin.cvr_auc"] == config.promotion.margins["cvr_auc"]
    mv = tracking.client(config).get_model_version("camenn", "2")
    assert mv.tags["promotion"].startswith("refused against 1")

    # the trained model as candidate over the damaged champion: promoted, on the very same figures
    config = registry(root, "accept", bad, good)
    accepted = promote.promote(lambda: spark, config, run_date=RUN)
    assert (accepted.candidate, accepted.champion, accepted.passed, accepted.moved) == ("2", "1", True, True), accepted.summary()
    assert accepted.figures["candidate"] == trained and accepted.figures["champion"] == mirrored
    assert promote.champion_version(config) == "2"
    assert tracking.resolve_model(config.model_copy(update={"scoring": config.scoring.model_copy(
        update={"model_dir": "models:/camenn@champion"})})).model_dir == good   # what the next night scores with
    assert gate_run(config, accepted)["tags"]["camenn.moved"] == "true"
    # a rerun of the date is a no-op: the candidate is the champion, nothing is measured (Spark is not even asked for)
    def no_spark():
        raise AssertionError("measured again")

    assert not promote.promote(no_spark, config, run_date=RUN).moved

    # the rollback: the alias back where it was, recorded as an operator's move
    assert promote.previous_champion(config) == "1"
    back = promote.move_alias(config, promote.previous_champion(config), reason="rollback: test")
    assert back.moved and promote.champion_version(config) == "1"
    assert gate_run(config, back)["tags"]["camenn.kind"] == "manual"
