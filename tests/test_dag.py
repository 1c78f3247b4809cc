"""The Airflow DAG, loaded by a real Airflow DagBag in its own environment (.venv-airflow).

Airflow's pins clash with the project's, so `make airflow-env` builds a separate venv with
apache-airflow 3 and the Spark provider; the DagBag runs there in a subprocess and reports
back as JSON.
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
dag = bag.dags.get("camenn_nightly")
if dag is not None:
    timetable = dag.timetable
    out.update(
        max_active_runs=dag.max_active_runs, catchup=dag.catchup,
        schedule=str(getattr(dag, "schedule", None) or getattr(timetable, "expression", None)),
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


def load_dag(tmp_path) -> dict:
    if not AIRFLOW_PYTHON.exists():
        pytest.fail(f"{AIRFLOW_PYTHON} is missing: run `make airflow-env` once (it installs Airflow 3 and the "
                    "Spark provider in .venv-airflow, apart from the project's own environment)", pytrace=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PYSPARK", "SPARK"))}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow"), CAMENN_HOME="/opt/camenn", CAMENN_CONF="conf/production.yaml",
               AIRFLOW__CORE__LOAD_EXAMPLES="False")
    out = subprocess.run([str(AIRFLOW_PYTHON), "-c", PROBE, str(ROOT / "jobs" / "dags")], capture_output=True,
                         text=True, timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("PROBE-RESULT ")]
    assert line, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(line[-1].removeprefix("PROBE-RESULT "))


def test_dag_loads_in_airflow_with_the_nightly_chain(tmp_path):
    result = load_dag(tmp_path)
    assert result["import_errors"] == {}
    assert result["dags"] == ["camenn_nightly"]
    assert result["max_active_runs"] == 1 and result["catchup"] is False
    assert result["schedule"] in ("0 0 * * *", "@daily")

    tasks = result["tasks"]
    assert set(tasks) == {"score_catalog", "quality_report"}
    assert tasks["score_catalog"]["downstream"] == ["quality_report"]
    assert tasks["quality_report"]["upstream"] == ["score_catalog"]
    for task_id, task in tasks.items():
        assert task["type"] == "SparkSubmitOperator"
        assert task["retries"] >= 1
        assert task["application"] == f"/opt/camenn/jobs/{task_id}.py"
        assert task["args"] == ["--conf", "/opt/camenn/conf/production.yaml", "--run-date", "{{ ds }}"]
        assert task["rendered_args"][-2:] == ["--run-date", "2026-11-24"]


def test_missing_airflow_env_fails_and_says_how_to_make_it(monkeypatch, tmp_path):
    import sys

    monkeypatch.setattr(sys.modules[__name__], "AIRFLOW_PYTHON", tmp_path / "no-venv" / "bin" / "python")
    with pytest.raises(pytest.fail.Exception, match="make airflow-env"):
        load_dag(tmp_path)
