"""A catalogue's own user profile (issue 15, 5): data.profile_fields, not the synthetic world's three.

The users export of a real catalogue has its own profile columns. With ``data.profile_fields``
set, they land through jobs/ingest_catalog.py's --user-map, training embeds exactly those
fields (the vocabulary follows them), and the nightly CVR reads them: a changed profile value
changes the inputs hash of that user's candidates, which are scored again. Real Spark + Delta,
the real encoders, a tiny hand-made world.
"""

from __future__ import annotations

import datetime as dt

import pytest
from conftest import tiny_config
from pyspark.sql import functions as F
from test_training import FAST
from test_training_data import T0, synthetic_world, write_world

from pipeline import tables

PROFILE = ("age", "membership", "region")
SET_PROFILE = f"data.profile_fields=[{', '.join(PROFILE)}]"
RUN = (T0 + dt.timedelta(days=12)).date()


def ingest_users(root, config, users: list[tuple]) -> int:
    """The users as a CSV export with its own column names, through the ingest job with --user-map."""
    from pipeline.jobs.ingest_catalog import main

    export = root / "members.csv"
    export.write_text("member_no,age_group,club_status,postcode_area\n" + "".join(f"{','.join(u)}\n" for u in users))
    conf = root / "conf.yaml"
    conf.write_text(f"name: t\ndata: {{root: {config.data.root}, profile_fields: [{', '.join(PROFILE)}]}}\n")
    return main(["--conf", str(conf), "--run-date", RUN.isoformat(), "--users-path", str(export),
                 "--user-map", "user_id=member_no", "--user-map", "age=age_group",
                 "--user-map", "membership=club_status", "--user-map", "region=postcode_area"])


@pytest.fixture(scope="module")
def profiled(spark, tmp_path_factory):
    """A world whose users have the profile (age, membership, region), a model trained on it, one night scored."""
    from pipeline import nightly
    from pipeline.train import run_training

    root = tmp_path_factory.mktemp("profile-world")
    config = tiny_config(root, *FAST, SET_PROFILE)
    world = synthetic_world(n_items=24, n_users=12, days=10)
    write_world(spark, config, world, skip=("users",))
    assert ingest_users(root, config, world["users"]) == 0
    result = run_training(spark, config)
    users = [u[0] for u in world["users"]]
    items = sorted(r[0] for r in world["items"])
    rows = [(RUN, u, items[(3 * k + j) % len(items)]) for k, u in enumerate(users) for j in range(3)]
    tables.overwrite_table(spark, config, "candidates", spark.createDataFrame(rows, tables.schema_of(spark, "candidates")))
    night = nightly.run(spark, config, RUN)
    return config, result, night, world


def test_the_tables_and_the_model_follow_the_configured_profile(spark, profiled):
    from camenn.predictor import Predictor

    config, result, night, world = profiled
    users = tables.read_table(spark, config, "users")
    assert users.columns == ["user_id", *PROFILE]
    by_id = {r.user_id: (r.age, r.membership, r.region) for r in users.collect()}
    assert by_id == {u[0]: tuple(u[1:]) for u in world["users"]}
    examples = tables.read_table(spark, config, "training_examples", version=result.data.versions["training_examples"])
    assert set(PROFILE) <= set(examples.columns) and "age_band" not in examples.columns
    model = Predictor.load(config.model_dir)
    assert model.vocab.profile_fields == PROFILE
    assert list(model.config.user_feature_sizes) == list(PROFILE)
    assert model.vocab.user_values["membership"] == sorted({u[2] for u in world["users"]})
    assert night.status == "succeeded", night.summary()
    assert night.counts["candidates_in"] == night.counts["cvr_scored"] == 3 * len(world["users"]), night.summary()


def test_a_changed_profile_value_rescores_that_users_candidates(spark, profiled):
    from pipeline import nightly

    config, _, night, world = profiled
    user, _, membership, _ = world["users"][0]
    other = next(u[2] for u in world["users"] if u[2] != membership)
    before = {r.item_id: r.cvr for r in tables.read_table(spark, config, "cvr_scores")
              .where((F.col("run_date") == F.lit(RUN)) & (F.col("user_id") == user)).collect()}
    users = tables.read_table(spark, config, "users").localCheckpoint()
    tables.overwrite_table(spark, config, "users", users.withColumn(
        "membership", F.when(F.col("user_id") == user, F.lit(other)).otherwise(F.col("membership"))))

    tables.overwrite_table(spark, config, "candidates", tables.read_table(spark, config, "candidates")
                           .withColumn("run_date", F.lit(RUN + dt.timedelta(days=1))).localCheckpoint())
    next_night = nightly.run(spark, config, RUN + dt.timedelta(days=1))
    assert next_night.status == "succeeded", next_night.summary()
    # only the changed user's 3 candidates go through the model; the rest are carried over
    assert (next_night.counts["cvr_model_scored"], next_night.counts["cvr_reused"]) == (3, 3 * (len(world["users"]) - 1))
    after = {r.item_id: r.cvr for r in tables.read_table(spark, config, "cvr_scores")
             .where((F.col("run_date") == F.lit(RUN + dt.timedelta(days=1))) & (F.col("user_id") == user)).collect()}
    assert after.keys() == before.keys() and any(abs(after[i] - before[i]) > 1e-6 for i in after)


def test_users_without_the_models_profile_fields_fail_with_one_clear_line(spark):
    from pipeline import nightly

    users = spark.createDataFrame([("u1", "25-34")], "user_id string, age_band string")
    candidates = spark.createDataFrame([("u1", "i1")], "user_id string, item_id string")
    with pytest.raises(ValueError, match=r"lack the profile field\(s\) \['membership', 'region'\]"):
        nightly.checked_candidates(candidates, candidates.select("item_id"), users, ("age_band", "membership", "region"))


def test_profile_config_is_checked_before_anything_runs(tmp_path):
    from camenn.config import ConfigError
    from pipeline.world import write_world as write_synthetic_world

    with pytest.raises(ConfigError, match="not usable column names"):
        tiny_config(tmp_path, "data.profile_fields=[age, user_id]")
    with pytest.raises(ConfigError, match="repeat a name"):
        tiny_config(tmp_path, "data.profile_fields=[age, age]")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['tier'\]"):
        tiny_config(tmp_path, SET_PROFILE, "ingest.user_map={user_id: id, tier: status}")
    config = tiny_config(tmp_path, SET_PROFILE)   # the default map's synthetic fields are ignored, not an error
    with pytest.raises(ValueError, match="synthetic world's users have the profile"):
        write_synthetic_world(None, config)


def test_a_profile_field_the_map_leaves_out_lands_null_and_the_ingest_says_so(spark, tmp_path, capsys):
    from pipeline.jobs.ingest_catalog import main

    config = tiny_config(tmp_path, SET_PROFILE)
    (tmp_path / "members.csv").write_text("member_no,age_group,postcode_area\nu1,25-34,north\nu2,35-44,south\n")
    (tmp_path / "conf.yaml").write_text(f"name: t\ndata: {{root: {config.data.root}, profile_fields: [{', '.join(PROFILE)}]}}\n")
    assert main(["--conf", str(tmp_path / "conf.yaml"), "--run-date", RUN.isoformat(),
                 "--users-path", str(tmp_path / "members.csv"), "--user-map", "user_id=member_no",
                 "--user-map", "age=age_group", "--user-map", "region=postcode_area"]) == 0
    assert "profile field(s) ['membership'] not mapped" in capsys.readouterr().out
    rows = {r.user_id: (r.age, r.membership, r.region) for r in tables.read_table(spark, config, "users").collect()}
    assert rows == {"u1": ("25-34", None, "north"), "u2": ("35-44", None, "south")}
