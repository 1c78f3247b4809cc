"""The shared SparkSession really has Delta Lake, and environment problems read as one line."""

from __future__ import annotations

from pathlib import Path

from chispa import assert_df_equality

from pipeline import session as session_module


def test_delta_round_trip_and_time_travel(spark, tmp_path):
    path = str(tmp_path / "t")
    first = spark.createDataFrame([(1, "a"), (2, "b")], "id int, v string")
    first.write.format("delta").save(path)
    spark.createDataFrame([(3, "c")], "id int, v string").write.format("delta").mode("append").save(path)
    assert spark.read.format("delta").load(path).count() == 3
    version0 = spark.read.format("delta").option("versionAsOf", 0).load(path)
    assert_df_equality(version0, first, ignore_row_order=True)


def test_in_process_session_uses_spark_defaults(spark):
    defaults = session_module.read_spark_defaults()
    assert spark.conf.get("spark.sql.extensions") == defaults["spark.sql.extensions"]
    # conf/spark/ names the package; build/spark-conf/ (make setup) names its resolved jars
    assert "delta" in defaults.get("spark.jars.packages", defaults.get("spark.jars", ""))


def test_missing_java_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(session_module, "java_major_version", lambda: None)
    try:
        session_module.check_java()
    except session_module.EnvironmentProblem as problem:
        assert "Java not found" in str(problem) and "\n" not in str(problem)
    else:
        raise AssertionError("check_java accepted a machine without Java")


def test_old_java_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(session_module, "java_major_version", lambda: 11)
    try:
        session_module.check_java()
    except session_module.EnvironmentProblem as problem:
        assert "Java 11 is too old" in str(problem)
    else:
        raise AssertionError("check_java accepted Java 11")


def test_java_on_this_machine_is_recent_enough():
    assert session_module.java_major_version() >= session_module.MIN_JAVA


def test_resolved_conf_replaces_the_packages_by_their_jars_and_keeps_every_other_line(spark, tmp_path):
    source = session_module.project_root() / "conf" / "spark"
    out = session_module.write_resolved_conf(spark, source_dir=source, out_dir=tmp_path / "spark-conf")
    resolved = session_module.read_spark_defaults(out / "spark-defaults.conf")
    original = session_module.read_spark_defaults(source / "spark-defaults.conf")
    assert "spark.jars.packages" not in resolved
    jars = resolved["spark.jars"].split(",")
    assert any("delta-spark" in j for j in jars) and all(Path(j.removeprefix("file://")).is_file() for j in jars)
    assert {k: v for k, v in resolved.items() if k != "spark.jars"} == {k: v for k, v in original.items() if k != "spark.jars.packages"}
    assert (out / "log4j2.properties").read_text() == (source / "log4j2.properties").read_text()
