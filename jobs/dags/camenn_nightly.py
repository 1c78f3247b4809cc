"""Airflow DAG: the nightly CameNN chain, score_catalog >> quality_report, for the run's date.

Each task is a ``spark-submit`` through the Spark connection (``CAMENN_SPARK_CONN``, default
``spark_default``: its host is the master, e.g. ``yarn`` or ``k8s://https://...``), with
``--run-date {{ ds }}``, so a retry, a manual rerun or a backfill of a date rewrites exactly
that date's rows (the jobs replace a date's rows in one Delta commit). One run at a time
(``max_active_runs=1``): runs share the feature cache, which is MERGEd.

Settings come from the environment of the Airflow workers:

    CAMENN_HOME        the project checkout (or unpacked release) on the workers: /opt/camenn
    CAMENN_CONF        the job config, relative to CAMENN_HOME or absolute: conf/production.yaml
    CAMENN_SPARK_CONN  the Airflow connection of the Spark cluster: spark_default
    CAMENN_PYTHON_ENV  optional: a venv-pack archive shipped to YARN executors (see docs/cluster.md)
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

# spark-defaults.conf of the project (Delta packages and extensions, Arrow, worker reuse)
SPARK_PROPERTIES = os.path.join(CAMENN_HOME, "conf", "spark", "spark-defaults.conf")
ENV_VARS = {
    "CAMENN_HOME": CAMENN_HOME,
    "SPARK_CONF_DIR": os.path.join(CAMENN_HOME, "conf", "spark"),
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
PYTHON_CONF = ({"spark.pyspark.python": "./environment/bin/python",
                "spark.yarn.appMasterEnv.PYSPARK_PYTHON": "./environment/bin/python"} if PYTHON_ENV else {})
ARCHIVES = f"{PYTHON_ENV}#environment" if PYTHON_ENV else None

default_args = {
    "owner": "camenn",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=15),
    "retry_exponential_backoff": True,
    "execution_timeout": dt.timedelta(hours=6),
}


def spark_job(task_id: str, script: str) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=task_id,
        conn_id=CONN_ID,
        application=os.path.join(CAMENN_HOME, "jobs", script),
        application_args=["--conf", CONF_PATH, "--run-date", "{{ ds }}"],
        name=f"camenn-{task_id}-{{{{ ds }}}}",
        properties_file=SPARK_PROPERTIES,
        conf=PYTHON_CONF or None,
        archives=ARCHIVES,
        env_vars=ENV_VARS,
        py_files=None,
        verbose=False,
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
) as dag:
    score_catalog = spark_job("score_catalog", "score_catalog.py")
    quality_report = spark_job("quality_report", "quality_report.py")

    score_catalog >> quality_report
