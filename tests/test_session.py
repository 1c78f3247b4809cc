"""The shared SparkSession really has Delta Lake, and environment problems read as one line."""

from __future__ import annotations

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
    assert "delta" in defaults["spark.jars.packages"]


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
