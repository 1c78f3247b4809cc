"""The process-level faults, each done for real on Spark + Delta, and what must hold afterwards.

    make faults                 # pytest -m faults: these and the quicker faults beside their code

- a driver SIGKILLed between the nightly job's output commits: readers still see the last
  published run, the killed run stays 'running' until the next run (of any date) records it as
  failed and deletes its rows and its staging table;
- an executor lost mid-stage on a Spark standalone cluster on loopback (a master and two
  workers started with ``spark-class``): the job finishes and its outputs equal a clean run's;
- a driver killed between CREATE TABLE and ADD CONSTRAINT: the next writer's ensure_table adds
  the constraint before its write, which the constraint then refuses;
- a full disk under the tables (a tmpfs mounted for the test): the run fails, every table keeps
  its last version, and a rerun after space is freed succeeds.

The quicker faults live beside their code, marked ``faults`` too, and run in ``make test``: ingest
(tests/test_ingest.py), artifacts (tests/test_checkpoint.py), NaN scores (tests/test_nightly.py),
a table left without its constraints (tests/test_tables.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chispa import assert_approx_df_equality
from conftest import tiny_config
from pyspark.sql import functions as F
from test_nightly import RUN, make_artifact, write_world

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _standalone import alive_workers, free_port  # noqa: E402  (the bench's standalone cluster helpers)

from pipeline import feature_cache, nightly, run_record, tables

# minutes each, so `make test` leaves them to `make faults` (docs/reliability.md has the last run)
pytestmark = [pytest.mark.faults, pytest.mark.process_faults]

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ("item_alignment", "cvr_scores")
JOB_TIMEOUT_S = 600


# ------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """The nightly test world, scored once (the published run every fault must leave alone)."""
    config = tiny_config(tmp_path_factory.mktemp("faults"))
    write_world(spark, config)
    make_artifact(config, Path(config.model_dir), seed=0)
    return config, nightly.run(spark, config, RUN)


def published(spark, config, name, run_date=RUN):
    """The date's rows as readers see them, without the run id (which differs between equal runs)."""
    return run_record.published(spark, config, name, run_date, job=nightly.JOB).drop("run_id")


def rows_of(df) -> list[tuple]:
    return sorted(tuple(r) for r in df.collect())


def delta_version(path: str) -> int:
    """The table's latest commit, read from its log folder without Spark (safe to poll)."""
    log = Path(path) / "_delta_log"
    return max((int(p.stem) for p in log.glob("*.json") if p.stem.isdigit()), default=-1)


def job_command(config, *, model_dir: str | None = None, master: str = "local[1]", run_date: dt.date = RUN) -> list[str]:
    return [sys.executable, str(ROOT / "jobs" / "score_catalog.py"), "--conf", str(ROOT / "tests/conf/tiny.yaml"),
            "--run-date", run_date.isoformat(), "--set", f"data.root={config.data.root}",
            "--set", f"scoring.model_dir={model_dir or config.model_dir}", "--set", f"spark.master={master}"]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: a JVM's executors and their Python workers)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_tree(pid: int) -> None:
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


# ------------------------------------------------------------------------ a killed driver


def test_driver_killed_between_output_commits_publishes_nothing_and_the_next_run_records_it(spark, world, tmp_path):
    config, first = world
    before = {name: rows_of(published(spark, config, name)) for name in OUTPUTS}
    other = tmp_path / "model-b"     # another model: a mix of the two runs would show two versions
    make_artifact(config, other, seed=7)
    v0 = delta_version(config.table("item_alignment"))
    log = tmp_path / "job.log"
    with open(log, "w") as out:
        job = subprocess.Popen(job_command(config, model_dir=str(other)), stdout=out, stderr=subprocess.STDOUT,
                               cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    # the first output commit is item_alignment's; cvr_scores and the runs row come after it
    while delta_version(config.table("item_alignment")) == v0:
        assert job.poll() is None, f"the job ended before its first output commit:\n{tail(log)}"
        assert time.monotonic() < deadline, "no output commit in time"
        time.sleep(0.02)
    kill_tree(job.pid)
    job.wait()

    raw = tables.read_table(spark, config, "item_alignment").where(F.col("run_date") == F.lit(RUN))
    (killed,) = {r.run_id for r in raw.select("run_id").distinct().collect()} - {first.run_id}
    states = {r.run_id: r for r in run_record.latest_states(spark, config, nightly.JOB).collect()}
    assert states[killed].status == "running"          # recorded from its start, though killed
    staging = Path(feature_cache.staging_path(config, RUN, killed))
    assert staging.exists()
    assert {name: rows_of(published(spark, config, name)) for name in OUTPUTS} == before   # readers see run 1 only

    nightly.run(spark, config, RUN - dt.timedelta(days=1))     # the next run, of another date
    states = {r.run_id: r for r in run_record.latest_states(spark, config, nightly.JOB).collect()}
    assert states[killed].status == "failed"
    assert json.loads(states[killed].details)["error"].startswith("abandoned: ")
    for name in (*OUTPUTS, "quarantine"):
        assert tables.read_table(spark, config, name).where(F.col("run_id") == killed).count() == 0, name
    assert not staging.exists()
    assert {name: rows_of(published(spark, config, name)) for name in OUTPUTS} == before


# ------------------------------------------------------------------------ a table half made

CREATE_TABLE = """
import sys
from pathlib import Path
sys.path[:0] = [{tests!r}]
from conftest import tiny_config
from pipeline import tables
from pipeline.session import get_spark
config = tiny_config(Path({root!r}))
tables.ensure_table(get_spark(config), config, "cvr_scores")
"""


def test_a_driver_killed_between_create_table_and_its_constraint_leaves_a_table_that_gets_it(spark, tmp_path):
    """CREATE TABLE is commit 0 and each CHECK constraint a commit of its own: kill in between, for real."""
    for attempt in range(1, 6):   # the window is a fraction of a second: retry until the kill lands in it
        root = tmp_path / f"attempt{attempt}"
        config = tiny_config(root)
        path = config.table("cvr_scores")
        job = subprocess.Popen([sys.executable, "-c", CREATE_TABLE.format(tests=str(ROOT / "tests"), root=str(root))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True)
        deadline = time.monotonic() + 300
        while delta_version(path) < 0 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        kill_tree(job.pid)
        job.wait()
        if delta_version(path) == 0:
            break
    else:
        pytest.fail("five kills all missed the moment between CREATE TABLE and ADD CONSTRAINT")
    print(f"killed after CREATE TABLE, before its constraint, on attempt {attempt}")
    constraints = [k for k in spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect() if k.key.startswith("delta.constraints")]
    assert constraints == []                               # the kill left the table without its constraint
    tables.ensure_table(spark, config, "cvr_scores")       # what every writer calls first
    bad = spark.createDataFrame([(RUN, "u1", "i1", 7.5, "m1", None, None)], tables.schema_of(spark, "cvr_scores"))
    with pytest.raises(Exception, match="(?i)constraint"):
        tables.append_rows(spark, config, "cvr_scores", bad)
    assert tables.read_table(spark, config, "cvr_scores").count() == 0


# ------------------------------------------------------------------------ a lost executor


@pytest.fixture
def standalone_cluster(tmp_path):
    """A Spark standalone master and two 1-core workers on loopback, from the pyspark install."""
    import pyspark

    home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(tmp_path),
           "PYSPARK_PYTHON": sys.executable}
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    procs = []

    def start(name, *args):
        out = open(tmp_path / f"{name}.log", "w")
        procs.append(subprocess.Popen([str(home / "bin" / "spark-class"), *args], stdout=out, stderr=subprocess.STDOUT,
                                      env=env, start_new_session=True))
        return procs[-1]

    ui = free_port()
    start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
          "--webui-port", str(ui))
    workers = [start(f"worker{k}", "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "1",
                     "--memory", "2g", "--webui-port", str(free_port()), "--work-dir", str(tmp_path / f"work{k}"))
               for k in (1, 2)]
    deadline = time.monotonic() + 120
    while alive_workers(ui) < 2:
        assert time.monotonic() < deadline, "standalone workers did not register:\n" + tail(tmp_path / "master.log")
        assert all(p.poll() is None for p in procs), "a standalone daemon exited:\n" + tail(tmp_path / "master.log")
        time.sleep(0.5)
    yield url, workers
    for p in procs:
        kill_tree(p.pid)
        p.wait()


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def executor_id(worker_pid: int) -> str | None:
    """The id of the executor the standalone worker launched (from its JVM's command line)."""
    for p in descendants(worker_pid):
        found = re.search(r"--executor-id (\S+)", cmdline(p))
        if found:
            return found.group(1)
    return None


def active_tasks(ui_port: int, executor: str) -> int:
    """Tasks running now on ``executor``, from the driver's status REST API."""
    import urllib.request

    base = f"http://127.0.0.1:{ui_port}/api/v1/applications"
    try:
        with urllib.request.urlopen(base, timeout=2) as page:
            (app,) = json.load(page)
        with urllib.request.urlopen(f"{base}/{app['id']}/executors", timeout=2) as page:
            return sum(e["activeTasks"] for e in json.load(page) if e["id"] == executor)
    except (OSError, ValueError):
        return 0


def python_computing(worker_pid: int, interval_s: float = 0.1) -> bool:
    """Whether a Python worker under the standalone worker uses CPU (its CPU time grows)."""
    # the executor JVM's classpath names pyspark too: match the Python daemon and workers only
    pythons = [p for p in descendants(worker_pid) if re.search(r"pyspark\.(daemon|worker)", cmdline(p))]
    before = {p: cpu_ticks(p) for p in pythons}
    time.sleep(interval_s)
    return any(cpu_ticks(p) > t for p, t in before.items())


def event_log_conf(tmp_path: Path, ui_port: int) -> Path:
    """The project's Spark settings plus an event log and a known UI port, as a SPARK_CONF_DIR for the job."""
    from pipeline.session import default_conf_dir

    conf_dir, events = tmp_path / "spark-conf", tmp_path / "events"
    shutil.copytree(default_conf_dir(), conf_dir)
    events.mkdir()
    with open(conf_dir / "spark-defaults.conf", "a") as f:
        f.write(f"\nspark.eventLog.enabled true\nspark.eventLog.dir file://{events}\n"
                f"spark.eventLog.compress false\nspark.eventLog.rolling.enabled false\n"
                f"spark.ui.enabled true\nspark.ui.port {ui_port}\n")
    return conf_dir


def listener_events(tmp_path: Path) -> list[dict]:
    """The job's listener events (Spark 4 writes a folder of rolling files per application)."""
    logs = [p for p in (tmp_path / "events").rglob("*") if p.is_file() and not p.name.startswith("appstatus")]
    return [json.loads(line) for log in logs for line in log.read_text().splitlines() if line.strip()]


def test_an_executor_lost_mid_stage_on_a_standalone_cluster_changes_nothing(spark, tmp_path, standalone_cluster):
    url, (worker, _) = standalone_cluster
    clean, faulted = tiny_config(tmp_path / "clean"), tiny_config(tmp_path / "faulted")
    for config in (clean, faulted):
        write_world(spark, config)
        make_artifact(config, Path(config.model_dir), seed=0)
    nightly.run(spark, clean, RUN)

    log = tmp_path / "job.log"
    ui_port = free_port()
    env = {**os.environ, "SPARK_CONF_DIR": str(event_log_conf(tmp_path, ui_port))}
    with open(log, "w") as out:
        job = subprocess.Popen(job_command(faulted, master=url), stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                               env=env, start_new_session=True)
    # kill worker 1 and its executor while a task of theirs runs Python: the encoders or the model
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not ((executor := executor_id(worker.pid)) and active_tasks(ui_port, executor)
               and python_computing(worker.pid) and active_tasks(ui_port, executor)):
        assert job.poll() is None, f"the job ended before a Python task ran on worker 1:\n{tail(log)}"
        assert time.monotonic() < deadline, "no Python task on worker 1 in time"
    kill_tree(worker.pid)
    assert job.wait(timeout=JOB_TIMEOUT_S) == 0, tail(log)

    events = listener_events(tmp_path)
    removed = [e for e in events if e["Event"] == "SparkListenerExecutorRemoved"]
    lost_tasks = [e for e in events if e["Event"] == "SparkListenerTaskEnd"
                  and e.get("Task End Reason", {}).get("Reason") == "ExecutorLostFailure"]
    assert removed, "the driver never lost an executor"
    print(f"executors removed: {[e['Executor ID'] for e in removed]} ({removed[0].get('Removed Reason')}); "
          f"tasks lost with them and run again: {len(lost_tasks)}")
    assert lost_tasks, "the executor was killed between tasks, not mid-stage"

    for name, key in (("item_alignment", ["item_id"]), ("cvr_scores", ["user_id", "item_id"])):
        assert_approx_df_equality(published(spark, faulted, name).orderBy(*key), published(spark, clean, name).orderBy(*key),
                                  1e-5, ignore_nullable=True)


# ------------------------------------------------------------------------ a full disk


@pytest.fixture
def small_volume(tmp_path):
    """A 48 MB tmpfs: the tables' filesystem, small enough to fill."""
    mount = tmp_path / "volume"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"the full-disk fault needs a tmpfs and this user cannot mount one: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(volume: Path, leave_bytes: int) -> Path:
    """Write a file until the volume is full, then give back ``leave_bytes``."""
    filler = volume / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:   # ENOSPC: the volume is full
            pass
    os.truncate(filler, max(filler.stat().st_size - leave_bytes, 0))
    return filler


def test_a_full_disk_fails_the_run_and_every_table_keeps_its_last_version(spark, tmp_path, small_volume):
    config = tiny_config(small_volume)
    write_world(spark, config)
    make_artifact(config, tmp_path / "model-a", seed=0)
    config = config.model_copy(update={"scoring": config.scoring.model_copy(update={"model_dir": str(tmp_path / "model-a")})})
    nightly.run(spark, config, RUN)
    names = [n for n in ("items", "item_features", "item_model_outputs", *OUTPUTS, "quarantine", "runs")]
    versions = {name: tables.table_version(spark, config, name) for name in names}
    before = {name: rows_of(published(spark, config, name)) for name in OUTPUTS}

    make_artifact(config, tmp_path / "model-b", seed=7)  # a new model: every stage writes
    other = config.model_copy(update={"scoring": config.scoring.model_copy(update={"model_dir": str(tmp_path / "model-b")})})
    filler = fill(small_volume, leave_bytes=256 * 1024)
    with pytest.raises(Exception, match="(?i)no space left|space") as failure:
        nightly.run(spark, other, RUN)
    print(f"the run failed with: {str(failure.value).splitlines()[0][:300]}")
    for name in names:
        tables.read_table(spark, config, name).count()     # every table still reads
    # the inputs and the feature cache are as they were; the outputs may hold the run's appends
    # (with no room left to delete them), invisible: readers see run 1
    assert {name: tables.table_version(spark, config, name) for name in ("items", "item_features")} == \
        {name: versions[name] for name in ("items", "item_features")}
    assert {name: rows_of(published(spark, config, name)) for name in OUTPUTS} == before
    # the disk had no room for its 'failed' row either: it stays 'running' until the next run
    (failed,) = [r for r in run_record.latest_states(spark, config, nightly.JOB).collect() if r.status != "succeeded"]
    print(f"the failed run's latest row: {failed.status}")

    filler.unlink()
    again = nightly.run(spark, other, RUN)
    assert again.status == "succeeded"
    states = {r.run_id: r for r in run_record.latest_states(spark, config, nightly.JOB).collect()}
    assert states[failed.run_id].status == "failed"      # every run recorded, at the latest by the next one
    for name in (*OUTPUTS, "quarantine"):
        assert tables.read_table(spark, config, name).where(F.col("run_id") == failed.run_id).count() == 0, name
    assert {r.model_version for r in published(spark, config, "item_alignment").collect()} == {again.model_version}
