"""The ``runs`` table as the record and the publication of the nightly job's outputs.

A run appends one ``runs`` row when it starts (status ``running``) and one when it ends
(``succeeded`` or ``failed``): blind appends, which never conflict with another run's. The
latest row of a run_id is its state.

Publication: every row the nightly job writes to ``item_alignment``, ``cvr_scores`` and
``quarantine`` carries its ``run_id`` and is appended, never replacing another run's rows. The
``succeeded`` row is the one commit that publishes the run: :func:`published` returns a date's
rows of the latest succeeded run only, so a reader never sees a mix of two runs (two model
versions), whatever was killed where. After publishing, the run prunes the date's rows of every
other run (:func:`prune`); a run that fails deletes its own rows; rows of a killed run stay
invisible to :func:`published` until the next run of their date prunes them, or until
:func:`sweep_abandoned` (at the start of every run, any date) finds the run dead.

A run is dead ("abandoned") when its latest row is ``running`` and either its driver ran on
this host and its process is gone (or is this process, which has ended the run: a final row
that could not be written on a full disk), or it started more than ``scoring.run_timeout_hours`` ago
(a driver on another host cannot be probed; the timeout is longer than any night may last and
the Airflow task's execution_timeout says the same). The sweep records it as ``failed`` with
the reason, deletes its unpublished rows and its staging table.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from camenn.config import AppConfig
from pipeline import tables

log = logging.getLogger(__name__)

SCORING_JOB = "score_catalog"   # the nightly job (pipeline.nightly), whose per-date outputs are published
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
FINAL = (SUCCEEDED, FAILED)
# the nightly job's per-date outputs, published together by its succeeded row
PUBLISHED_TABLES = ("item_alignment", "cvr_scores", "quarantine")


# runs of this process that have started and not ended: for a run recorded by this very process
# (a test, a notebook) the pid is alive, so only this set can tell that the run is over
_IN_FLIGHT: set[str] = set()


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def owner() -> dict:
    """Where this driver runs, so a later run on the same host can tell whether it is still alive."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def start(spark: SparkSession, config: AppConfig, *, run_id: str, job: str, run_date: dt.date,
          started_at: dt.datetime, model_version: str | None = None, details: dict | None = None) -> None:
    """Append the run's ``running`` row: from here on the run is recorded whatever happens to the driver."""
    row = tables.runs_row(spark, run_id=run_id, job=job, run_date=run_date, model_version=model_version,
                          started_at=started_at, finished_at=None, status=RUNNING, counts={}, timings={},
                          details={**owner(), "app_id": spark.sparkContext.applicationId, **(details or {})})
    tables.append_rows(spark, config, "runs", row)
    _IN_FLIGHT.add(run_id)


def ended(run_id: str) -> None:
    """The run is over in this process, whether or not its final row could be written."""
    _IN_FLIGHT.discard(run_id)


def latest_states(spark: SparkSession, config: AppConfig, job: str | None = None) -> DataFrame:
    """One row per run_id: its latest ``runs`` row (a final row wins over ``running`` at equal times)."""
    runs = tables.read_table(spark, config, "runs")
    if job is not None:
        runs = runs.where(F.col("job") == job)
    order = Window.partitionBy("run_id").orderBy(F.col("status").isin(*FINAL).desc(),
                                                 F.coalesce("finished_at", "started_at").desc())
    return runs.withColumn("_n", F.row_number().over(order)).where(F.col("_n") == 1).drop("_n")


def _published_row(spark: SparkSession, config: AppConfig, job: str, run_date: dt.date):
    """The succeeded ``runs`` row of the date's latest succeeded run of ``job``; None if it has none."""
    if not tables.is_delta(spark, config.table("runs")):
        return None
    return (tables.read_table(spark, config, "runs")
            .where((F.col("job") == job) & (F.col("run_date") == F.lit(run_date)) & (F.col("status") == SUCCEEDED))
            .orderBy(F.col("finished_at").desc(), F.col("run_id")).select("run_id", "details").first())


def published_run(spark: SparkSession, config: AppConfig, job: str, run_date: dt.date) -> str | None:
    """run_id of the date's latest succeeded run of ``job``; None if it has none."""
    row = _published_row(spark, config, job, run_date)
    return row["run_id"] if row else None


def published_details(spark: SparkSession, config: AppConfig, job: str, run_date: dt.date) -> dict:
    """The ``details`` that the date's published run of ``job`` recorded ({} if it has none), such as the
    scoring job's ``thresholds``: what a later job (the report) says about the rows it reads."""
    row = _published_row(spark, config, job, run_date)
    return json.loads(row["details"] or "{}") if row else {}


def published(spark: SparkSession, config: AppConfig, name: str, run_date: dt.date, job: str) -> DataFrame:
    """``name``'s rows of ``run_date`` from the run of ``job`` published for that date.

    A date with no succeeded run (or tables from before run ids) gives its rows without a run_id,
    so an older table still reads as before; rows of unfinished or failed runs never show.
    """
    rows = tables.read_table(spark, config, name).where(F.col("run_date") == F.lit(run_date))
    if "job" in rows.columns:  # quarantine holds every job's rows
        rows = rows.where(F.col("job") == job)
    run_id = published_run(spark, config, job, run_date)
    return rows.where(F.col("run_id").isNull() if run_id is None else F.col("run_id") == run_id)


def _delete(spark: SparkSession, config: AppConfig, name: str, condition: str) -> None:
    from delta.tables import DeltaTable

    path = config.table(name)
    if tables.is_delta(spark, path):
        DeltaTable.forPath(spark, path).delete(condition)


def _date(run_date: dt.date) -> str:
    return f"run_date = DATE'{run_date.isoformat()}'"


def prune(spark: SparkSession, config: AppConfig, run_date: dt.date, job: str, keep_run_id: str) -> None:
    """Delete the date's rows of every run but ``keep_run_id`` (the one just published).

    Only finished runs: a run of the same date still going on beside this one keeps its rows
    and, if it succeeds, publishes them and prunes this run's. The other runs are named from
    ``runs`` (every run has its row before it writes), so the DELETE tests equality and null on
    run_id, predicates Delta can test against each file's min/max and null-count statistics to
    skip files (not measured here).
    """
    others = [r[0] for r in latest_states(spark, config, job)
              .where((F.col("run_date") == F.lit(run_date)) & F.col("status").isin(*FINAL) & (F.col("run_id") != keep_run_id))
              .select("run_id").collect()]   # the runs of one date: a handful
    named = f" OR run_id IN ({', '.join(repr(r) for r in others)})" if others else ""
    for name in PUBLISHED_TABLES:
        of_job = f" AND job = '{job}'" if name == "quarantine" else ""
        _delete(spark, config, name, f"{_date(run_date)}{of_job} AND (run_id IS NULL{named})")


def withdraw(spark: SparkSession, config: AppConfig, run_date: dt.date, run_id: str) -> None:
    """Delete the date's rows written by ``run_id`` (a run that did not succeed)."""
    for name in PUBLISHED_TABLES:
        _delete(spark, config, name, f"{_date(run_date)} AND run_id = '{run_id}'")


def best_effort(what: str, action, *args, **kwargs):
    """``action(*args, **kwargs)``, or None with a warning when it raises.

    For the bookkeeping around a run (sweeping other runs, pruning or withdrawing rows): it must
    not fail the run nor hide its own error, and what it leaves undone stays unpublished until
    the next run does it (a DELETE racing a concurrent run's append, a full disk).
    """
    try:
        return action(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning(f"could not {what}: {exc}")
        return None


def finish(spark: SparkSession, config: AppConfig, *, run_id: str, job: str, run_date: dt.date, model_version: str | None,
           started_at: dt.datetime, status: str, counts: dict, timings: dict, details: dict, error: str | None = None) -> None:
    """Append the run's final row (succeeded publishes its rows; failed carries ``error``).

    A failed run's row that cannot be written is logged, not raised over the run's own error;
    the next run records it (sweep_abandoned).
    """
    details = {**details, **owner(), **({"error": error[:4000]} if error else {})}
    row = tables.runs_row(spark, run_id=run_id, job=job, run_date=run_date, model_version=model_version,
                          started_at=started_at, finished_at=now(), status=status, counts=counts, timings=timings,
                          details=details)
    if error is None:
        tables.append_rows(spark, config, "runs", row)
    else:
        best_effort(f"record failed run {run_id} in `runs`", tables.append_rows, spark, config, "runs", row)


def _alive(run_id: str, details: dict, started_at: dt.datetime, timeout_hours: float) -> bool:
    if started_at < now() - dt.timedelta(hours=timeout_hours):
        return False
    if details.get("host") != socket.gethostname() or not details.get("pid"):
        return True  # another host's driver: only the timeout can tell
    if int(details["pid"]) == os.getpid():
        return run_id in _IN_FLIGHT
    try:
        os.kill(int(details["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_abandoned(spark: SparkSession, config: AppConfig, job: str, *, current_run_id: str,
                    timeout_hours: float) -> list[str]:
    """Record ``job``'s dead ``running`` runs as failed and delete their rows; returns their run_ids."""
    if not tables.is_delta(spark, config.table("runs")):
        return []
    running = (latest_states(spark, config, job).where(F.col("status") == RUNNING)
               .where(F.col("run_id") != current_run_id).collect())  # runs in flight: a handful of rows
    dead = []
    for r in running:
        details = json.loads(r["details"] or "{}")
        if _alive(r["run_id"], details, r["started_at"], timeout_hours):
            continue
        why = (f"abandoned: it ended without its final row (its driver {details.get('host')} pid {details.get('pid')} was "
               f"killed, or the row could not be written) or it is older than scoring.run_timeout_hours={timeout_hours}; "
               f"its unpublished rows were deleted by run {current_run_id}")
        withdraw(spark, config, r["run_date"], r["run_id"])
        tables.append_rows(spark, config, "runs", tables.runs_row(
            spark, run_id=r["run_id"], job=job, run_date=r["run_date"], model_version=r["model_version"],
            started_at=r["started_at"], finished_at=now(), status=FAILED, counts={}, timings={},
            details={**details, "error": why}))
        log.warning(f"run {r['run_id']} of {r['run_date']}: {why}")
        dead.append(r["run_id"])
    return dead


def live_run_ids(spark: SparkSession, config: AppConfig) -> set[str]:
    """run_ids whose latest row is ``running`` (any job): their staging tables are left alone."""
    if not tables.is_delta(spark, config.table("runs")):
        return set()
    return {r[0] for r in latest_states(spark, config).where(F.col("status") == RUNNING).select("run_id").collect()}


__all__ = ["SCORING_JOB", "RUNNING", "SUCCEEDED", "FAILED", "PUBLISHED_TABLES", "start", "ended", "finish",
           "best_effort", "latest_states", "published_run", "published", "prune", "withdraw", "sweep_abandoned",
           "live_run_ids", "owner", "now"]
