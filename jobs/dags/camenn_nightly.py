"""Airflow DAGs of CameNN: the nightly scoring chain and the weekly model chain, for the run's date.

    camenn_nightly   @daily          score_catalog >> quality_report
    camenn_retrain   weekly (below)  train >> evaluate >> promote >> maintain_tables

``train`` trains on the date's tables and registers the model as a new version (MLflow);
``evaluate`` measures that version and the champion on the same held-out data and records the
figures and the gate's verdict (``jobs/promote.py --evaluate-only``); ``promote`` moves the
champion alias when the verdict passed (``jobs/promote.py``, reusing that evaluation);
``maintain_tables`` then compacts and vacuums the caches the nights MERGE
(``jobs/maintain_tables.py``), whatever the verdict. The
nightly chain scores with whatever the alias names (``scoring.model_dir:
models:/camenn@champion``), so a promotion takes effect on the next night, and a rollback
(``jobs/promote.py --rollback``, by hand) too.

Each task is a ``spark-submit`` through the Spark connection (``CAMENN_SPARK_CONN``, default
``spark_default``: its host is the master, e.g. ``yarn`` or ``k8s://https://...``), with
``--run-date {{ ds }}``, so a retry, a manual rerun or a backfill of a date redoes exactly that
date: the scoring jobs replace a date's rows, a rerun training adds a version (versions are
never overwritten), and a rerun promotion of a candidate already in service does nothing. One
run at a time per DAG (``max_active_runs=1``): runs share the feature cache, which is MERGEd.
The two DAGs may overlap (a long night and the weekly training both MERGE the feature cache):
Delta then fails one of the two commits and the task's retry redoes it, so the weekly default
runs on Sunday morning, after the night.

Settings come from the environment of the Airflow workers (and the DAG processor):

    CAMENN_HOME              the project checkout (or unpacked release) on the workers: /opt/camenn
    CAMENN_CONF              the job config, relative to CAMENN_HOME or absolute: conf/production.yaml
    CAMENN_SPARK_CONN        the Airflow connection of the Spark cluster: spark_default
    CAMENN_SPARK_CONF_DIR    Spark's configuration folder (spark-defaults.conf): CAMENN_HOME/conf/spark
    CAMENN_PYTHON_ENV        optional: a venv-pack archive shipped to YARN executors (see docs/cluster.md)
    CAMENN_RETRAIN_SCHEDULE  the model chain's schedule (cron or preset): "0 6 * * 0", Sundays 06:00
    CAMENN_RETRIES           retries of every task: 2
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG

CAMENN_HOME = os.environ.get("CAMENN_HOME", "/opt/camenn")
CONF = os.environ.get("CAMENN_CONF", "conf/production.yaml")
CONF_PATH = CONF if os.path.isabs(CONF) else os.path.join(CAMENN_HOME, CONF)
CONN_ID = os.environ.get("CAMENN_SPARK_CONN", "spark_default")
PYTHON_ENV = os.environ.get("CAMENN_PYTHON_ENV")  # e.g. hdfs:///envs/camenn-env.tar.gz
RETRAIN_SCHEDULE = os.environ.get("CAMENN_RETRAIN_SCHEDULE", "0 6 * * 0")
RETRIES = int(os.environ.get("CAMENN_RETRIES", "2"))

# spark-defaults.conf of the project (Delta packages and extensions, Arrow, worker reuse)
SPARK_CONF_DIR = os.environ.get("CAMENN_SPARK_CONF_DIR", os.path.join(CAMENN_HOME, "conf", "spark"))
SPARK_PROPERTIES = os.path.join(SPARK_CONF_DIR, "spark-defaults.conf")
ENV_VARS = {
    "CAMENN_HOME": CAMENN_HOME,
    "SPARK_CONF_DIR": SPARK_CONF_DIR,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
PYTHON_CONF = ({"spark.pyspark.python": "./environment/bin/python",
                "spark.yarn.appMasterEnv.PYSPARK_PYTHON": "./environment/bin/python"} if PYTHON_ENV else {})
ARCHIVES = f"{PYTHON_ENV}#environment" if PYTHON_ENV else None

default_args = {
    "owner": "camenn",
    "retries": RETRIES,
    "retry_delay": dt.timedelta(minutes=15),
    "retry_exponential_backoff": True,
    "execution_timeout": dt.timedelta(hours=6),
}


def spark_job(task_id: str, script: str, *flags: str, **operator_args) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=task_id,
        conn_id=CONN_ID,
        application=os.path.join(CAMENN_HOME, "jobs", script),
        application_args=["--conf", CONF_PATH, "--run-date", "{{ ds }}", *flags],
        name=f"camenn-{task_id}-{{{{ ds }}}}",
        properties_file=SPARK_PROPERTIES,
        conf=PYTHON_CONF or None,
        archives=ARCHIVES,
        env_vars=ENV_VARS,
        py_files=None,
        verbose=False,
        **operator_args,
    )


with DAG(
    dag_id="camenn_nightly",
    description="CameNN: item features, alignment flags and CVR scores, then the merchant quality report",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["camenn", "spark", "scoring"],
    doc_md=__doc__,
) as nightly:
    score_catalog = spark_job("score_catalog", "score_catalog.py")
    quality_report = spark_job("quality_report", "quality_report.py")

    score_catalog >> quality_report


with DAG(
    dag_id="camenn_retrain",
    description="CameNN: train and register a new version, evaluate it against the champion, promote it if no worse",
    schedule=RETRAIN_SCHEDULE,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["camenn", "spark", "training"],
    doc_md=__doc__,
) as retrain:
    # training at catalogue scale takes longer than a night's jobs (docs/cluster.md)
    train = spark_job("train", "train.py", execution_timeout=dt.timedelta(hours=24))
    evaluate = spark_job("evaluate", "promote.py", "--evaluate-only")
    promote = spark_job("promote", "promote.py")

    # upkeep of the MERGEd caches, whether or not the candidate was promoted
    maintain_tables = spark_job("maintain_tables", "maintain_tables.py", trigger_rule="all_done")

    train >> evaluate >> promote >> maintain_tables
