"""One way to get a SparkSession with Delta Lake, for spark-submit jobs, tests and notebooks.

Under spark-submit the session already carries conf/spark/spark-defaults.conf (through
SPARK_CONF_DIR); in-process sessions read the same file here, so both agree.

``python -m pipeline.session`` (run by ``make setup``) resolves Delta's packages once and writes
``build/spark-conf/``: the same two files, with ``spark.jars.packages`` replaced by the resolved
jar files (``spark.jars``). The Makefile and the activated venv point SPARK_CONF_DIR there, so a
job does not print Ivy's ~90 lines of resolution on every start; conf/spark/ stays the source.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from camenn.config import AppConfig, project_root

MIN_JAVA = 17
RESOLVED_CONF_DIR = "build/spark-conf"


class EnvironmentProblem(RuntimeError):
    """Something outside the project is missing; the message is one line that says what to do."""


def default_conf_dir() -> Path:
    """build/spark-conf/ once `make setup` resolved the jars there, else the source conf/spark/."""
    resolved = project_root() / RESOLVED_CONF_DIR
    return resolved if (resolved / "spark-defaults.conf").is_file() else project_root() / "conf" / "spark"


def spark_defaults_path() -> Path:
    conf_dir = os.environ.get("SPARK_CONF_DIR") or str(default_conf_dir())
    return Path(conf_dir) / "spark-defaults.conf"


def read_spark_defaults(path: Path | None = None) -> dict[str, str]:
    path = path or spark_defaults_path()
    settings: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            settings[key] = value.strip()
    return settings


def java_major_version() -> int | None:
    java = shutil.which("java", path=os.path.join(os.environ["JAVA_HOME"], "bin")) if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java:
        return None
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 else major  # "1.8" means Java 8


def check_java() -> None:
    major = java_major_version()
    if major is None:
        raise EnvironmentProblem(
            f"Java not found: Spark 4 needs Java {MIN_JAVA}+; install it (apt-get install openjdk-17-jre-headless) or set JAVA_HOME")
    if major < MIN_JAVA:
        raise EnvironmentProblem(
            f"Java {major} is too old: Spark 4 needs Java {MIN_JAVA}+; install openjdk-17 and point JAVA_HOME at it")


def _explain_gateway_failure(exc: Exception, packages: str) -> EnvironmentProblem:
    return EnvironmentProblem(
        f"Spark could not start ({type(exc).__name__}); most often Delta's jars ({packages}) could not be "
        "resolved from Maven Central: check the network or proxy, or run `make setup` once on a machine that "
        "reaches it (the jars are cached under ~/.ivy2.5.2)")


def get_spark(config: AppConfig | None = None, app_name: str | None = None):
    """The active SparkSession, or a new local one with Delta and the project's defaults."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    check_java()
    # the JVM reads log4j2.properties from here; spark-submit and make set it already
    os.environ.setdefault("SPARK_CONF_DIR", str(default_conf_dir()))
    # Python workers must run the same interpreter (and so the same torch) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # spark-submit already applied spark-defaults.conf and its own --master; a process of our
    # own applies the same file here. The YAML's spark.conf wins in both cases.
    under_submit = bool(os.environ.get("SPARK_ENV_LOADED"))
    settings = {} if under_submit else read_spark_defaults()
    if config is not None:
        settings.update(config.spark.conf)
    builder = SparkSession.builder.appName(app_name or (config.spark.app_name if config else "camenn"))
    if not under_submit:
        builder = builder.master((config.spark.master if config else None) or "local[*]")
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # py4j raises plain exceptions when the JVM dies during start-up
        if "Java gateway process exited" in str(exc) or "JAVA_GATEWAY_EXITED" in str(exc):
            raise _explain_gateway_failure(exc, settings.get("spark.jars.packages", "")) from exc
        raise
    spark.sparkContext.setLogLevel("WARN")
    return spark


def write_resolved_conf(spark, source_dir: Path | None = None, out_dir: Path | None = None) -> Path:
    """Copy conf/spark/ to build/spark-conf/ with the packages replaced by the jars this session resolved."""
    source_dir = source_dir or project_root() / "conf" / "spark"
    out_dir = out_dir or project_root() / RESOLVED_CONF_DIR
    jars = [j for j in spark.sparkContext.getConf().get("spark.jars", "").split(",") if j]
    missing = [j for j in jars if not Path(j.removeprefix("file://")).is_file()]
    if not jars or missing:
        raise EnvironmentProblem(f"Spark resolved no usable jars for spark.jars.packages (missing: {missing[:3]})")
    lines = []
    for line in (source_dir / "spark-defaults.conf").read_text().splitlines():
        if line.strip().startswith("spark.jars.packages"):
            lines.append(f"# resolved from conf/spark/spark-defaults.conf's `{line.strip()}` by `python -m pipeline.session`")
            line = f"spark.jars {','.join(jars)}"
        lines.append(line)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spark-defaults.conf").write_text("\n".join(lines) + "\n")
    shutil.copyfile(source_dir / "log4j2.properties", out_dir / "log4j2.properties")
    return out_dir


def main() -> int:
    """`python -m pipeline.session`: check Java and resolve Delta's jars once (used by `make setup`)."""
    try:
        spark = get_spark(app_name="camenn-setup-check")
        # a folder of its own: two setups at once (make test beside make demo) must not race on one table
        with tempfile.TemporaryDirectory(prefix="camenn-setup-check-") as check:
            spark.range(1).write.format("delta").mode("overwrite").save(check)
        out = write_resolved_conf(spark)
        print(f"Spark {spark.version} with Delta is ready; resolved settings in {out}")
        spark.stop()
    except EnvironmentProblem as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
