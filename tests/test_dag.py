"""The Airflow DAGs, loaded by a real Airflow DagBag and run by Airflow's own `airflow dags test`.

Airflow's pins clash with the project's, so `make airflow-env` builds a separate venv with
apache-airflow 3 and the Spark provider; the DagBag runs there in a subprocess and reports
back as JSON. The run test executes both chains (retrain >> evaluate >> promote >> maintain_tables, then
score >> report) on the tiny world: every task a real `spark-submit` of the project's job on
local Spark, the tables real Delta tables, the registry a real MLflow store (SQLite in tmp).
It takes a few minutes (six Spark jobs, each a JVM of its own).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"

PROBE = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
out = {"import_errors": {str(k): str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dags)}
for dag_id, dag in bag.dags.items():
    out[dag_id] = dict(
        max_active_runs=dag.max_active_runs, catchup=dag.catchup,
        schedule=str(getattr(dag, "schedule", None) or getattr(dag.timetable, "expression", None)),
        tasks={t.task_id: {
            "type": type(t).__name__,
            "downstream": sorted(t.downstream_task_ids),
            "upstream": sorted(t.upstream_task_ids),
            "retries": t.retries,
            "application": t.application,
            "args": t.application_args,
            "rendered_args": t.render_template(t.application_args, {"ds": "2026-11-24"}),
        } for t in dag.tasks},
    )
print("PROBE-RESULT " + json.dumps(out))
"""


def airflow_env(tmp_path, **settings: str) -> dict[str, str]:
    """The environment of an Airflow process: ours without the project venv's Python and Spark settings."""
    if not AIRFLOW_PYTHON.exists():
        pytest.fail(f"{AIRFLOW_PYTHON} is missing: run `make airflow-env` once (it installs Airflow 3 and the "
                    "Spark provider in .venv-airflow, apart from the project's own environment)", pytrace=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PYSPARK", "SPARK"))}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "jobs" / "dags"), **settings)
    return env


def load_dag(tmp_path) -> dict:
    env = airflow_env(tmp_path, CAMENN_HOME="/opt/camenn", CAMENN_CONF="conf/production.yaml")
    out = subprocess.run([str(AIRFLOW_PYTHON), "-c", PROBE, str(ROOT / "jobs" / "dags")], capture_output=True,
                         text=True, timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("PROBE-RESULT ")]
    assert line, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(line[-1].removeprefix("PROBE-RESULT "))


CHAINS = {"camenn_nightly": {"score_catalog": "quality_report"},
          "camenn_retrain": {"train": "evaluate", "evaluate": "promote", "promote": "maintain_tables"}}
SCRIPTS = {"score_catalog": "score_catalog.py", "quality_report": "quality_report.py", "train": "train.py",
           "evaluate": "promote.py", "promote": "promote.py", "maintain_tables": "maintain_tables.py"}


def test_dags_load_in_airflow_with_both_chains(tmp_path):
    result = load_dag(tmp_path)
    assert result["import_errors"] == {}
    assert result["dags"] == ["camenn_nightly", "camenn_retrain"]
    assert result["camenn_nightly"]["schedule"] in ("0 0 * * *", "@daily")
    assert result["camenn_retrain"]["schedule"] == "0 6 * * 0"   # weekly: Sundays, after the night

    for dag_id, chain in CHAINS.items():
        dag = result[dag_id]
        assert dag["max_active_runs"] == 1 and dag["catchup"] is False
        tasks = dag["tasks"]
        assert set(tasks) == {*chain, *chain.values()}
        for upstream, downstream in chain.items():
            assert tasks[upstream]["downstream"] == [downstream] and tasks[downstream]["upstream"] == [upstream]
        for task_id, task in tasks.items():
            assert task["type"] == "SparkSubmitOperator"
            assert task["retries"] >= 1
            assert task["application"] == f"/opt/camenn/jobs/{SCRIPTS[task_id]}"
            assert task["args"][:4] == ["--conf", "/opt/camenn/conf/production.yaml", "--run-date", "{{ ds }}"]
            assert task["rendered_args"][2:4] == ["--run-date", "2026-11-24"]
    assert result["camenn_retrain"]["tasks"]["evaluate"]["args"][4:] == ["--evaluate-only"]
    assert result["camenn_retrain"]["tasks"]["promote"]["args"][4:] == []


def test_missing_airflow_env_fails_and_says_how_to_make_it(monkeypatch, tmp_path):
    import sys

    monkeypatch.setattr(sys.modules[__name__], "AIRFLOW_PYTHON", tmp_path / "no-venv" / "bin" / "python")
    with pytest.raises(pytest.fail.Exception, match="make airflow-env"):
        load_dag(tmp_path)


# ------------------------------------------------------------------------ both chains run by `airflow dags test`

RUN_DATE = "2026-11-24"   # the tiny world's run date: its candidates are for this day


def dag_config(tmp_path) -> Path:
    """The tiny world's config with every output under tmp_path, scoring with the registry's champion."""
    import yaml
    from conftest import TINY_CONF

    raw = yaml.safe_load(TINY_CONF.read_text())
    raw["data"]["root"] = str(tmp_path / "tables")
    # a few seconds of steps at a higher rate than the paper's: the candidate has to learn something
    raw["training"].update(artifact_dir=str(tmp_path / "artifacts" / "model"), epochs=3, steps_per_epoch=20, lr=0.002)
    raw["report"]["out_dir"] = str(tmp_path / "reports")
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"}
    # the candidate is measured against a model that knows nothing (below) on the tiny world's test split
    # (about 180 examples, 60 items): the margin leaves room for its noise; the gate itself: test_promote.py
    raw["promotion"] = {"margins": {"ita_acc": 0.05, "tia_acc": 0.05, "cvr_auc": 0.05}}
    raw["scoring"]["model_dir"] = "models:/camenn@champion"
    path = tmp_path / "dag.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def blank_champion(spark, config) -> str:
    """The world's tables and a registered champion that knows nothing: one training step, then zero task heads
    (p = 0.5 for every row: accuracy and AUC exactly 0.5). Training it also fills the feature cache."""
    import torch

    from camenn.checkpoint import load_artifact, save_artifact
    from pipeline import tracking
    from pipeline.train import run_training
    from pipeline.world import write_world

    write_world(spark, config, log=None)
    step = config.model_copy(update={"training": config.training.model_copy(update={"epochs": 1, "steps_per_epoch": 1})})
    art = load_artifact(run_training(spark, step).artifact)
    with torch.no_grad():
        for head in art.model.heads.values():
            head.weight.zero_()
            head.bias.zero_()
    blank = save_artifact(config.training.artifact_dir, art.model, {**art.metadata, "blank": "task heads zeroed"})
    assert tracking.log_training(config, blank).champion
    return blank


def dags_test(tmp_path, env: dict, dag_id: str) -> str:
    """`airflow dags test DAG RUN_DATE`: every task in this process's Airflow, one after the other; its log."""
    log = tmp_path / f"{dag_id}.log"
    with log.open("w") as out:
        done = subprocess.run([str(AIRFLOW_PYTHON.parent / "airflow"), "dags", "test", dag_id, RUN_DATE], env=env,
                              cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, timeout=1200)
    text = log.read_text(errors="replace")
    finished = [line for line in text.splitlines() if "DagRun Finished" in line]
    failed = [line for line in text.splitlines() if "Cannot execute" in line or "error:" in line]
    assert done.returncode == 0 and finished and ", state=success," in finished[-1], \
        f"{dag_id} failed ({log}): {failed[-5:]}\n{text[-3000:]}"
    return text


@pytest.mark.slow
def test_both_chains_run_in_airflow_on_the_tiny_world(spark, tmp_path):
    import json

    from pyspark.sql import functions as F

    from camenn.checkpoint import load_artifact
    from camenn.config import load_config
    from pipeline import promote, tables, tracking

    conf = dag_config(tmp_path)
    config = load_config(conf)
    blank = blank_champion(spark, config)

    env = airflow_env(
        tmp_path, CAMENN_HOME=str(ROOT), CAMENN_CONF=str(conf), CAMENN_RETRIES="0",
        CAMENN_SPARK_CONF_DIR=str(ROOT / "build" / "spark-conf"),   # Delta's jars resolved by make setup
        AIRFLOW_CONN_SPARK_DEFAULT=json.dumps({"conn_type": "spark", "host": "local[2]"}),
        PATH=f"{os.environ['PATH']}:{ROOT / '.venv' / 'bin'}",          # spark-submit of the project's pyspark
        PYSPARK_PYTHON=str(ROOT / ".venv" / "bin" / "python"), SPARK_LOCAL_IP="127.0.0.1",
        # the six jobs are short-lived JVMs on tiny tables: the JIT's optimising tier costs more CPU
        # than it saves there (this test alone: 456 and 458 s with it, 395 s without; 2026-12-06).
        # Only these subprocesses: the suite's long-lived in-process session needs it (test_feature_cache.py
        # and test_tracking.py together: 230 s with it, 292 s without).
        SPARK_SUBMIT_OPTS="-XX:TieredStopAtLevel=1")
    migrate = subprocess.run([str(AIRFLOW_PYTHON.parent / "airflow"), "db", "migrate"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]

    # the model chain: a new version trained and registered, measured against the blank champion, promoted
    dags_test(tmp_path, env, "camenn_retrain")
    mlf = tracking.client(config)
    versions = {str(mv.version): mv.source for mv in mlf.search_model_versions("name='camenn'")}
    assert set(versions) == {"1", "2"} and versions["1"] == blank
    trained = load_artifact(versions["2"])
    assert trained.metadata["seed"] == 0 and "blank" not in trained.metadata
    gate = mlf.search_runs([tracking.experiment_id(mlf, config)], "tags.`camenn.job` = 'promote'")
    assert len(gate) == 1, [r.data.tags for r in gate]   # evaluated once: the promote task used the evaluate task's run
    tags, metrics = gate[0].data.tags, gate[0].data.metrics
    assert (tags["camenn.candidate"], tags["camenn.champion"], tags["camenn.run_date"]) == ("2", "1", RUN_DATE)
    assert metrics["champion.ita_acc"] == 0.5 and metrics["champion.cvr_auc"] == 0.5
    assert tags["camenn.passed"] == "true" and tags["camenn.moved"] == "true", (tags, metrics)
    assert promote.champion_version(config) == "2"
    upkeep = tables.read_table(spark, config, "runs").where("job = 'maintain_tables'").collect()
    assert [r["status"] for r in upkeep] == ["succeeded"], upkeep   # the caches compacted after the promotion

    # the nightly chain scores with the alias's version and reports
    dags_test(tmp_path, env, "camenn_nightly")
    run = (tables.read_table(spark, config, "runs").where("job = 'score_catalog' AND status = 'succeeded'")
           .where(F.col("run_date") == F.lit(RUN_DATE).cast("date")).first())
    details = json.loads(run["details"])
    assert (details["registered_version"], run["model_version"]) == ("camenn/2", trained.version)
    for name in ("item_alignment", "cvr_scores"):
        rows = tables.read_table(spark, config, name).where(F.col("run_date") == F.lit(RUN_DATE).cast("date"))
        assert rows.where(F.col("run_id") == run["run_id"]).where(F.col("model_version") == trained.version).count() > 0, name
    assert (tmp_path / "reports" / RUN_DATE / "index.html").is_file()
