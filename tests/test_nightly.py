"""The nightly scoring run on real Spark + Delta, a hand-made world and a real (untrained) CameNN.

One file (~830 lines) because every test shares the module-scoped world, its first run and the
plain-PyTorch oracle below: split, each file would rebuild the world and rescore it.
The tests run in file order on that world; those that score with another model (the faults,
a new model version) come after the incremental ones, which expect this model's outputs cached.

The world is small enough to check by hand: 20 clean items and 5 poison rows, 8 users with
purchase histories, candidates with unknown items, unknown users and a duplicate. The model
is a real CameNN sized from the featurizer and the world's vocabulary, saved with
save_artifact and the metadata contract the training job writes (its heads are re-drawn
with a larger scale so the scores spread out and the parity checks mean something).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from pyspark.sql import functions as F
from test_feature_cache import CATEGORIES, POISON_REASONS, clean_items, poison_items, write_items

from pipeline import feature_cache, flag_rules, nightly, tables

RUN = dt.date(2026, 11, 24)
BEFORE = RUN - dt.timedelta(days=1)
NEXT = RUN + dt.timedelta(days=1)
N_CLEAN = 20
USERS = [f"u{k}" for k in range(8)]
PROFILES = {u: (["18-25", "26-40", "41-65"][k % 3], ["single", "family"][k % 2], ["north", "south", "centre"][k % 3])
            for k, u in enumerate(USERS)}
TOL = 1e-5


# ------------------------------------------------------------------------ the world


def purchases() -> list[tuple]:
    rows = []
    for k, user in enumerate(USERS[:7]):                      # u7 never bought anything
        for j in range(k % 5 + 1):                           # 1..5 purchases, more than max_behaviour for some
            rows.append((user, f"i{(3 * k + 2 * j) % N_CLEAN:03d}", dt.datetime(2026, 11, 10 + j, 9 + k), "purchase", 2.0))
    rows += [
        ("u0", "i100", dt.datetime(2026, 11, 20), "purchase", 1.0),    # a quarantined item: skipped
        ("u0", "i999", dt.datetime(2026, 11, 21), "purchase", 1.0),    # an unknown item: skipped
        ("u1", "i007", dt.datetime(2026, 11, 23, 23, 59), "view", 1.0),  # not a purchase
        ("u1", "i008", dt.datetime(2026, 11, 24, 0, 0), "purchase", 1.0),  # on the run date: not before it
        ("u2", "i011", dt.datetime(2026, 11, 12, 11), "purchase", 1.0),   # same time as u2 buying i010
    ]
    return rows


def candidate_rows(run_date: dt.date) -> list[tuple]:
    rows = [(run_date, user, f"i{(5 * k + 3 * j) % N_CLEAN:03d}") for k, user in enumerate(USERS) for j in range(3)]
    return rows + [
        (run_date, "u0", "i100"),      # the item is quarantined (undecodable image)
        (run_date, "u1", "i999"),      # unknown item
        (run_date, "u99", "i001"),     # unknown user
        rows[4],                       # a duplicate
    ]


CANDIDATE_REASONS = {"item: unknown or invalid": 2, "user: unknown": 1, "candidate: duplicate": 1}


def write_world(spark, config):
    write_items(spark, config, clean_items(N_CLEAN) + poison_items(100))
    tables.overwrite_table(spark, config, "users", spark.createDataFrame(
        [(u, *PROFILES[u]) for u in USERS], tables.schema_of(spark, "users")))
    tables.overwrite_table(spark, config, "events", spark.createDataFrame(purchases(), tables.schema_of(spark, "events")))
    tables.overwrite_table(spark, config, "candidates", spark.createDataFrame(
        candidate_rows(RUN) + candidate_rows(BEFORE)[:6], tables.schema_of(spark, "candidates")))


def make_artifact(config, path: Path, seed: int, nan_head: str | None = None, table_versions: dict | None = None) -> str:
    """A real CameNN sized from the featurizer and the world, saved with the training metadata contract.

    ``nan_head``: that task's head weights are NaN, a model that emits NaN for every row of the task.
    ``table_versions``: the training tables' versions it pins (none: a model trained elsewhere).
    """
    from camenn.checkpoint import load_artifact, write_artifact
    from camenn.inputs import FeatureVocab
    from camenn.model import create_model
    from udfs.encode import get_featurizer

    fcfg = feature_cache.featurizer_config(config)
    featurizer = get_featurizer(fcfg, "cpu")
    rows = clean_items(N_CLEAN)
    vocab = FeatureVocab.fit([r[2] for r in rows], [r[6] for r in rows],
                             {f: [p[j] for p in PROFILES.values()] for j, f in enumerate(("age_band", "household", "zone"))},
                             n_price_buckets=3)
    torch.manual_seed(seed)
    m = config.model
    model = create_model("camenn", text_dim=featurizer.text_dim, image_dim=featurizer.image_dim,
                         n_patches=featurizer.n_patches, max_text_tokens=featurizer.max_text_tokens,
                         d_model=m.d_model, n_heads=m.n_heads, n_experts=m.n_experts, max_behaviour=m.max_behaviour,
                         item_feature_sizes=vocab.item_feature_sizes, user_feature_sizes=vocab.user_feature_sizes,
                         dropout=0.0)
    with torch.no_grad():
        for head in model.heads.values():
            head.weight.normal_(std=0.2)
        if nan_head:
            model.heads[nan_head].weight.fill_(float("nan"))
    metadata = {"featurizer": {k: getattr(fcfg, k) for k in fcfg.__dataclass_fields__},
                "encoder_fingerprint": featurizer.fingerprint, "vocab": vocab.to_dict(),
                "table_versions": dict(table_versions or {}), "metrics": {}}
    write_artifact(path, model, metadata, overwrite=True)
    return load_artifact(path).version


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    config = tiny_config(root)
    write_world(spark, config)
    version = make_artifact(config, Path(config.model_dir), seed=0)
    return config, version


@pytest.fixture(scope="module")
def first_run(spark, world):
    config, _ = world
    return nightly.run(spark, config, RUN)


# ------------------------------------------------------------------------ an oracle without Spark


def expected_behaviour(run_date: dt.date, valid, max_n: int) -> dict[str, list[str]]:
    """Each user's last max_n purchases of valid items before run_date, oldest first, in plain Python."""
    history: dict[str, list] = {}
    for user, item, ts, event, _ in purchases():
        if event == "purchase" and ts < dt.datetime.combine(run_date, dt.time()) and item in valid:
            history.setdefault(user, []).append((ts, item))
    return {u: [i for _, i in sorted(h)][-max_n:] for u, h in history.items()}


def expected_scores(spark, config, run_date: dt.date = RUN):
    """p_ita, p_tia per valid item and cvr per scorable candidate, from camenn.predictor called row by row.

    The behaviour sequences are worked out here in plain Python from the events, so this also
    checks the Spark side's window and regrouping.
    """
    from camenn.predictor import Predictor

    model = Predictor.load(config.model_dir)
    feats = {r.item_id: r for r in tables.read_table(spark, config, "item_features").collect()}
    items = {r.item_id: r for r in tables.read_table(spark, config, "items").collect()}
    valid = sorted(i for i in feats if i in items and i.startswith("i0"))
    assert len(valid) == N_CLEAN

    def blobs(ids):
        return ([feats[i].text_emb for i in ids], [feats[i].n_text_tokens for i in ids], [feats[i].image_emb for i in ids],
                [items[i].category for i in ids], [items[i].price for i in ids])

    p_ita, p_tia = model.score_items(*blobs(valid), batch_size=1)
    align = {i: (a, t) for i, a, t in zip(valid, p_ita, p_tia)}

    seqs = expected_behaviour(run_date, align, model.max_behaviour)
    cvr = {}
    for _, user, item in candidate_rows(run_date):
        if user not in PROFILES or item not in align or (user, item) in cvr:
            continue
        beh = seqs.get(user, [])
        t = blobs([item])
        b = blobs(beh)
        cvr[(user, item)] = model.score_pairs(*t, [b[0]], [b[1]], [b[2]], [b[3]], [b[4]],
                                              {f: [PROFILES[user][j]] for j, f in enumerate(("age_band", "household", "zone"))},
                                              batch_size=1)[0]
    return align, cvr, model.version


def assert_cvr_matches(spark, config, run_date: dt.date, cvr: dict):
    got = tables.read_table(spark, config, "cvr_scores").where(F.col("run_date") == F.lit(run_date)).collect()
    assert sorted((r.user_id, r.item_id) for r in got) == sorted(cvr)
    worst = max(abs(r.cvr - cvr[(r.user_id, r.item_id)]) for r in got)
    assert worst < TOL, f"cvr scores differ from camenn.predictor by {worst}"
    spread = np.ptp([r.cvr for r in got])
    assert spread > 1e-3, "scores hardly vary: the parity check would prove little"


def assert_tables_match_oracle(spark, config, version):
    align, cvr, _ = expected_scores(spark, config)
    got = tables.read_table(spark, config, "item_alignment").where(F.col("run_date") == F.lit(RUN)).collect()
    assert sorted(r.item_id for r in got) == sorted(align)
    assert {r.model_version for r in got} == {version}
    worst = max(max(abs(r.p_ita - align[r.item_id][0]), abs(r.p_tia - align[r.item_id][1])) for r in got)
    assert worst < TOL, f"alignment scores differ from camenn.predictor by {worst}"
    assert_cvr_matches(spark, config, RUN, cvr)


# ------------------------------------------------------------------------ no Spark


def test_pick_device_from_task_resources():
    from pyspark.resource import ResourceInformation

    from udfs import autocast_dtype, pick_device

    assert pick_device({}) == "cpu"
    assert pick_device(None) == "cpu"
    gpu = {"gpu": ResourceInformation("gpu", ["1"])}
    assert pick_device(gpu, cuda_available=True, device_count=4) == "cuda:1"
    assert pick_device(gpu, cuda_available=True, device_count=1) == "cuda:0"     # CUDA_VISIBLE_DEVICES narrowed
    assert pick_device(gpu, cuda_available=False, device_count=0) == "cpu"
    assert pick_device({"gpu": ["3"]}, cuda_available=True, device_count=8) == "cuda:3"
    assert autocast_dtype("bf16", "cuda:0") == torch.bfloat16
    assert autocast_dtype("fp16", "cuda:1") == torch.float16
    assert autocast_dtype("bf16", "cpu") is None and autocast_dtype("none", "cuda:0") is None


def test_user_frames_hold_enough_candidates_and_every_user_once():
    import pandas as pd

    from udfs.predict import user_frames

    # Arrow batches of 3 users with 2, 3 and 0..4 candidates
    batches = [pd.DataFrame({"user_id": [f"u{b}{k}" for k in range(3)],
                             "cand_item_id": [["i"] * 2, ["i"] * 3, ["i"] * (b % 5)]}) for b in range(7)]
    frames = list(user_frames(iter(batches), min_candidates=12))
    sizes = [int(f["cand_item_id"].map(len).sum()) for f in frames]
    assert all(n >= 12 for n in sizes[:-1]) and 0 < sizes[-1], sizes
    assert all(n < 12 + 9 for n in sizes), sizes          # at most one Arrow batch more than needed
    users = pd.concat(frames)["user_id"].tolist()
    assert users == [u for b in batches for u in b["user_id"]]   # every user once, in order



def test_memory_logged_says_rows_and_whether_the_task_raised_its_workers_peak(capfd):
    import numpy as np
    import pyarrow as pa

    from udfs import MEMORY_LOG, _peak_mib, _rss_mib, memory_logged

    @memory_logged("grows")
    def grows(batches):
        held = []
        for b in batches:   # each batch holds 64 MiB more than this process's peak so far, touched
            held.append(np.ones(int((max(0.0, _peak_mib() - _rss_mib()) + 64) * 2**20 // 8)))
            yield b

    batches = [pa.record_batch([pa.array(range(n))], names=["x"]) for n in (3, 4)]
    assert [b.num_rows for b in grows(iter(batches))] == [3, 4]   # the rows pass through
    assert list(memory_logged("empty")(lambda it: iter(()))(iter(batches))) == []
    lines = [json.loads(x.split(" ", 1)[1]) for x in capfd.readouterr().err.splitlines() if x.startswith(MEMORY_LOG)]
    assert [(x["name"], x["rows"], x["batches"]) for x in lines] == [("grows", 7, 2), ("empty", 0, 0)]
    grown = lines[0]
    assert grown["peak_end"] >= grown["peak_start"] + 100, grown   # at least 2 x 64 MiB above the old peak
    assert grown["stage"] is None and grown["pid"] > 0   # outside a Spark task
@pytest.mark.parametrize("kind", ["binary", "large_binary"])
def test_binary_views_read_each_value_in_place_with_nulls_and_slices(kind):
    import numpy as np
    import pyarrow as pa

    from udfs.predict import binary_views

    values = [np.arange(n, dtype=np.float16).tobytes() for n in (3, 0, 5)] + [None, b"\x01\x02"]
    column = pa.array(values, getattr(pa, kind)())
    assert [None if v is None else bytes(v) for v in binary_views(column)] == values
    # a slice keeps the parent's buffers with an offset: the views must start at the slice
    assert [None if v is None else bytes(v) for v in binary_views(column.slice(2, 3))] == values[2:]
    assert binary_views(pa.chunked_array([column[:2], column[2:]]))[2].tobytes() == values[2]
    assert np.frombuffer(binary_views(column)[2], dtype=np.float16).tolist() == list(range(5))
    assert binary_views(pa.array([], pa.binary())) == []


def test_scoring_model_is_the_model(tmp_path):
    """Predictor gives model.predict's numbers, whatever the batch size and padding."""
    from camenn.checkpoint import save_artifact
    from camenn.featurizer import EncodedItems, pack_item_features
    from camenn.inputs import FeatureVocab, ItemStore, full_batch, item_only_batch
    from camenn.model import create_model
    from camenn.predictor import Predictor

    g = torch.Generator().manual_seed(0)
    n, dt_, di, p = 7, 16, 8, 4
    lengths = [3, 5, 2, 6, 4, 1, 5]
    mask = torch.tensor([[j < k for j in range(6)] for k in lengths])
    enc = EncodedItems(text=torch.randn(n, 6, dt_, generator=g) * mask[..., None], text_mask=mask,
                       image=torch.randn(n, p, di, generator=g), valid=torch.ones(n, dtype=torch.bool))
    blobs = pack_item_features(enc)
    text, counts, image = (list(x) for x in zip(*blobs))
    cats, prices = ["a", "b", None, "a", "c", "b", "zz"], [1.0, 5.0, None, 3.0, 9.0, float("nan"), 2.0]
    vocab = FeatureVocab.fit(["a", "b", "c"], [1.0, 3.0, 5.0, 9.0], {"age_band": ["x", "y"], "zone": ["n"]}, n_price_buckets=2)
    torch.manual_seed(1)
    model = create_model("camenn", text_dim=dt_, image_dim=di, n_patches=p, max_text_tokens=8, d_model=16, n_heads=2,
                         n_experts=2, max_behaviour=3, item_feature_sizes=vocab.item_feature_sizes,
                         user_feature_sizes=vocab.user_feature_sizes)
    save_artifact(tmp_path / "m", model, {"vocab": vocab.to_dict(), "encoder_fingerprint": "f"})
    sm = Predictor.load(tmp_path / "m")
    assert sm.dims == (dt_, di, p) and sm.max_behaviour == 3

    store = ItemStore.from_blobs(range(n), text, counts, image, vocab.item_feats(cats, prices), dt_, di, p)
    direct = model.eval().predict(item_only_batch(store, torch.arange(n)))
    for bs in (1, 3, 64):
        p_ita, p_tia = sm.score_items(text, counts, image, cats, prices, batch_size=bs)
        np.testing.assert_allclose(p_ita, direct["ita"].numpy(), atol=TOL)
        np.testing.assert_allclose(p_tia, direct["tia"].numpy(), atol=TOL)

    # CVR: row 0 has 4 behaviour items (the oldest is dropped), row 1 none, row 2 one
    beh = [[1, 2, 3, 4], [], [5]]
    users = {"age_band": ["x", None, "y"], "household": [None, None, None], "zone": ["n", "n", "?"]}
    cols = [[[col[i] for i in row] for row in beh] for col in (text, counts, image, cats, prices)]
    targets = [0, 6, 2]
    got = {bs: sm.score_pairs([text[i] for i in targets], [counts[i] for i in targets], [image[i] for i in targets],
                              [cats[i] for i in targets], [prices[i] for i in targets], *cols, users, batch_size=bs)
           for bs in (1, 2, 8)}
    idx = torch.tensor([[2, 3, 4], [-1, -1, -1], [5, -1, -1]])
    expected = model.predict(full_batch(store, torch.tensor(targets), idx,
                                        torch.as_tensor(vocab.user_feats(users))))["cvr"].numpy()
    for bs, values in got.items():
        np.testing.assert_allclose(values, expected, atol=TOL, err_msg=f"batch_size={bs}")


def test_alignment_flags_absolute_and_per_category_quantile(spark):
    from camenn.config import ThresholdConfig

    rows = [(f"f{k:02d}", "m1", "fruit", k / 100, 1 - k / 100) for k in range(100)]       # 100 fruit items
    rows += [("t1", "m2", "tea", 0.3, 0.9), ("t2", "m2", "tea", 0.9, 0.2), ("n1", "m2", None, 0.1, 0.1)]
    scores = spark.createDataFrame(rows, "item_id string, merchant_id string, category string, p_ita double, p_tia double")

    flags = flag_rules.alignment_flags(scores, ThresholdConfig(ita=0.5, tia=0.5)).collect()
    absolute = {r.item_id: r.reason for r in flags}
    assert absolute["t1"] == "text suspect" and absolute["t2"] == "image suspect" and absolute["n1"] == "text and image suspect"
    assert absolute["f60"] == "image suspect" and absolute["f40"] == "text suspect" and absolute["f50"] is None
    side = {r.item_id: r.suspect_side for r in flags}   # the typed column the report reads
    assert (side["t1"], side["t2"], side["n1"], side["f50"]) == ("text", "image", "both", None)
    assert all(r.flag == (r.suspect_side is not None) for r in flags)

    quantile = ThresholdConfig(mode="category_quantile", quantile=0.05, min_category_items=50, ita=0.5, tia=0.5)
    got = {r.item_id: (r.flag, r.reason) for r in flag_rules.alignment_flags(scores, quantile).collect()}
    fruit = {k: v for k, v in got.items() if k.startswith("f")}
    # the lowest 5% of each score in the category: f00..f03 (p_ita < 0.04), f96..f99 (p_tia < 0.05)
    assert sorted(k for k, (flag, _) in fruit.items() if flag) == ["f00", "f01", "f02", "f03", "f96", "f97", "f98", "f99"]
    assert {fruit["f00"][1], fruit["f99"][1]} == {"text suspect", "image suspect"}
    # categories with fewer than min_category_items items (the null category too) use the absolute thresholds
    assert got["t1"] == (True, "text suspect") and got["t2"] == (True, "image suspect")
    assert got["n1"] == (True, "text and image suspect")


# ------------------------------------------------------------------------ the run on Spark + Delta


def test_end_to_end_outputs_and_counts(spark, world, first_run):
    config, version = world
    result = first_run
    print(result.summary())
    assert result.status == "succeeded" and result.model_version == version
    for name in ("item_features", "item_alignment", "cvr_scores", "quarantine", "runs"):
        df = tables.read_table(spark, config, name)
        expected = tables.schema_of(spark, name)
        assert [(f.name, f.dataType) for f in df.schema] == [(f.name, f.dataType) for f in expected], name

    c = result.counts
    n_items = N_CLEAN + len(POISON_REASONS) + 1   # two undecodable images share a reason
    assert c["items_in"] == n_items == c["items_valid"] + c["items_quarantined"]
    assert c["items_valid"] == N_CLEAN == c["items_scored"]
    assert result.quarantined["items"] == POISON_REASONS
    assert c["flagged"] == sum(result.flagged.values())
    n_candidates = len(candidate_rows(RUN))
    assert c["candidates_in"] == n_candidates == c["cvr_scored"] + c["candidates_quarantined"]
    assert result.quarantined["candidates"] == CANDIDATE_REASONS

    align = tables.read_table(spark, config, "item_alignment").where(F.col("run_date") == F.lit(RUN)).collect()
    for r in align:
        low_ita, low_tia = r.p_ita < 0.5, r.p_tia < 0.5
        assert r.flag == (low_ita or low_tia)
        assert r.reason == ({(True, True): "text and image suspect", (True, False): "text suspect",
                             (False, True): "image suspect"}.get((low_ita, low_tia)))
        assert r.merchant_id and r.category

    q = tables.read_table(spark, config, "quarantine").where(F.col("run_date") == F.lit(RUN))
    assert q.where("source = 'items'").count() == c["items_quarantined"]
    assert {(r.key, r.reason) for r in q.where("source = 'candidates'").collect()} >= {
        ("u0|i100", "item: unknown or invalid"), ("u1|i999", "item: unknown or invalid"), ("u99|i001", "user: unknown")}

    run_rows = tables.read_table(spark, config, "runs").where(F.col("run_id") == result.run_id).collect()
    assert sorted(r.status for r in run_rows) == ["running", "succeeded"]   # one row at the start, one at the end
    (row,) = [r for r in run_rows if r.status == "succeeded"]
    assert (row.status, row.job, row.run_date, row.model_version) == ("succeeded", "score_catalog", RUN, version)
    assert row.counts["cvr_scored"] == c["cvr_scored"] and row.counts["items_encoded"] == N_CLEAN
    assert {"features", "alignment", "cvr", "total"} <= set(row.timings)
    assert json.loads(row.details)["flagged"] == result.flagged
    used = json.loads(row.details)["thresholds"]   # what the night flagged with, recorded
    assert (used["mode"], used["ita"], used["tia"]) == ("absolute", 0.5, 0.5)
    for name in ("item_alignment", "cvr_scores", "quarantine"):   # every output row names the run that wrote it
        assert {r.run_id for r in tables.read_table(spark, config, name).where(F.col("run_date") == F.lit(RUN))
                .select("run_id").distinct().collect()} == {result.run_id}, name
    # the run's staging tables (its feature keys, its CVR scores) went with it
    staging = Path(config.table("item_features") + "_staging")
    leftover = [p.name for p in staging.glob(f"*{result.run_id}")] if staging.exists() else []
    assert leftover == [], leftover


def test_spark_scores_equal_plain_pytorch(spark, world, first_run):
    config, version = world
    assert_tables_match_oracle(spark, config, version)


@pytest.fixture(scope="module")
def cvr_inputs(spark, world, first_run):
    """The first night's scorable candidates, every item's cached outputs (with their tokens, for the Spark
    join), where the night reads the tokens, and the user rows built the night's way."""
    from camenn.predictor import Predictor
    from pipeline import model_cache

    config, _ = world
    model = Predictor.load(config.model_dir)
    profile = model.vocab.profile_fields
    valid = feature_cache.valid_items(spark, config)
    tokens = model_cache.token_source(spark, config, model)
    outputs = model_cache.current(spark, config, model, valid.select("item_id", "merchant_id", "category", "price",
                                                                     "content_hash"), tokens, with_tokens=True).localCheckpoint()
    candidates = tables.read_table(spark, config, "candidates").where(F.col("run_date") == F.lit(RUN))
    good = (nightly.checked_candidates(candidates, outputs.select("item_id"), tables.read_table(spark, config, "users"),
                                       profile).where("reason IS NULL").drop("reason").localCheckpoint())
    events = tables.read_table(spark, config, "events")
    rows = nightly.user_rows(good, outputs, events, RUN, model.max_behaviour, profile, tokens=tokens).toPandas()
    return dict(outputs=outputs, good=good, events=events, tokens=tokens, user_rows=rows)


def test_training_and_nightly_build_the_same_inputs(spark, world, cvr_inputs):
    """One (user, item, cutoff) through training's builder and the nightly one: the same model inputs."""
    import pyarrow as pa

    from camenn.chunks import EXAMPLE_COLUMNS, examples_from_arrow, store_from_arrow
    from camenn.predictor import Predictor
    from camenn.training import cvr_batch
    from pipeline import history, training_data
    from udfs.predict import PROJECTED_FIELDS

    config, _ = world
    model = Predictor.load(config.model_dir)
    n_beh = model.max_behaviour
    valid = feature_cache.valid_items(spark, config)
    users, events = tables.read_table(spark, config, "users"), cvr_inputs["events"]
    profile = model.vocab.profile_fields
    pdf = cvr_inputs["user_rows"]
    u = max(range(len(pdf)), key=lambda k: len(pdf["beh_text_proj"][k]) if pdf["beh_text_proj"][k] is not None else 0)
    user, item = pdf["user_id"][u], pdf["cand_item_id"][u][0]
    assert len(pdf["beh_text_proj"][u]) >= 2, "pick a user with a history, or the test proves little"
    user_feats = model.vocab.user_feats({f: list(pdf[f]) for f in profile})
    night = model.user_batch([(u, 0)], *(list(pdf[f"cand_{f}"]) for f in PROJECTED_FIELDS),
                             *(list(pdf[f"beh_{f}"]) for f in PROJECTED_FIELDS), user_feats)

    cutoff = dt.datetime.combine(RUN, dt.time())
    ex = spark.createDataFrame([("p0", user, item, cutoff, 0)],
                               "example_id string, user_id string, item_id string, ts timestamp, label int")
    rows = (training_data.model_inputs(ex, users, history.purchases(events, valid.select("item_id")), n_beh, profile)
            .withColumn("split", F.lit("test")).withColumn("bucket", F.lit(0)).select(*EXAMPLE_COLUMNS, *profile))
    table = pa.Table.from_pandas(rows.toPandas(), preserve_index=False)
    named = {item, *table["behaviour"][0].as_py()}
    items = valid.where(F.col("item_id").isin(list(named))).select("item_id", "category", "price", "text_emb",
                                                                   "n_text_tokens", "image_emb").toPandas()
    store = store_from_arrow(pa.Table.from_pandas(items, preserve_index=False), model.vocab, model.dims[2])
    splits, dropped = examples_from_arrow(table, store, model.vocab, n_beh)
    assert dropped == 0 and len(splits["test"]) == 1
    train = cvr_batch(store, splits["test"])

    with torch.no_grad():
        pairs = [(night.target, model.model.project_items(train.target)),
                 (night.behaviour, model.model.project_items(train.behaviour))]
    assert torch.equal(night.user_feats, train.user_feats)
    assert torch.equal(night.behaviour_mask, train.behaviour_mask)
    for a, b in pairs:
        n = min(a.text.shape[-2], b.text.shape[-2])
        assert torch.equal(a.text_mask[..., :n], b.text_mask[..., :n])
        assert not a.text_mask[..., n:].any() and not b.text_mask[..., n:].any()
        mask = a.text_mask[..., :n, None]
        torch.testing.assert_close(a.text[..., :n, :] * mask, b.text[..., :n, :] * mask, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.image, b.image, atol=1e-5, rtol=0)
        assert torch.equal(a.feats, b.feats)


def pooled_predictor(model_dir):
    """The tiny model read as a pooled-behaviour one: behaviour_tokens chooses how inputs are read, not weights."""
    import dataclasses

    from camenn.predictor import Predictor

    model = Predictor.load(model_dir)
    model.artifact.config = model.model.cfg = dataclasses.replace(model.config, behaviour_tokens="pooled")
    return model


def candidates_by_user(pdf) -> dict:
    """user -> its candidates' (item_id, text blob, image blob), sorted: collect_list's order is the shuffle's."""
    return {u: sorted(zip(ids, map(bytes, texts), map(bytes, images)))
            for u, ids, texts, images in zip(pdf["user_id"], pdf["cand_item_id"], pdf["cand_text_proj"],
                                             pdf["cand_image_proj"])}


def plain(column) -> list:
    return [v if v is None or isinstance(v, str) else list(v) for v in column]


def scores_of_user_rows(model, pdf, pooled_behaviour: bool) -> dict:
    from udfs.predict import PROJECTED_FIELDS

    user_idx, items, cvr = model.score_users(
        list(pdf["cand_item_id"]), *(list(pdf[f"cand_{f}"]) for f in PROJECTED_FIELDS),
        *(list(pdf[f"beh_{f}"]) for f in PROJECTED_FIELDS), {f: list(pdf[f]) for f in model.vocab.profile_fields},
        batch_size=7, pooled_behaviour=pooled_behaviour)
    return {(pdf["user_id"][u], i): c for u, i, c in zip(user_idx, items, cvr)}


def test_pooled_behaviour_moves_two_vectors_per_item_and_scores_as_its_tokens(world, cvr_inputs):
    """A pooled-behaviour model's user rows carry each behaviour item's two means, and score as the full tokens."""
    from camenn.predictor import Predictor

    config, _ = world
    model = pooled_predictor(config.model_dir)
    good, full = cvr_inputs["good"], cvr_inputs["user_rows"]
    pooled = nightly.user_rows(good, cvr_inputs["outputs"], cvr_inputs["events"], RUN, model.max_behaviour,
                               model.vocab.profile_fields, pooled=nightly.pooled_shape(model)).toPandas()
    profile = model.vocab.profile_fields

    full, pooled = (f.sort_values("user_id", ignore_index=True) for f in (full, pooled))
    assert candidates_by_user(full) == candidates_by_user(pooled)
    for column in ("user_id", *profile, "beh_category", "beh_price"):
        assert plain(full[column]) == plain(pooled[column]), column

    width = 4 * model.config.d_model
    moved = {name: [len(t) + len(im) for ts, ims in zip(f["beh_text_proj"], f["beh_image_proj"]) for t, im in zip(ts, ims)]
             for name, f in (("full", full), ("pooled", pooled))}
    assert len(moved["pooled"]) == len(moved["full"]) >= 10, "too few behaviour items to prove anything"
    assert set(moved["pooled"]) <= {width, 2 * width}   # one mean patch, and one mean text token where there is text
    assert min(moved["full"]) >= (model.config.n_patches + 1) * width

    expected, got = scores_of_user_rows(model, full, False), scores_of_user_rows(model, pooled, True)
    assert sorted(got) == sorted(expected) and len(got) == good.count()
    worst = max(abs(got[k] - expected[k]) for k in got)
    assert worst < TOL, f"pooled behaviour rows score {worst} away from the full tokens"
    assert np.ptp(list(got.values())) > 1e-3, "scores hardly vary: the parity check would prove little"

    with pytest.raises(ValueError, match="pooled behaviour rows would lose"):
        scores_of_user_rows(Predictor.load(config.model_dir), pooled, True)


def behaviour_by_user(pdf) -> dict:
    """user -> its behaviour items' (category, price, text blob, n, image blob), in order."""
    def seq(v) -> list:
        return [] if v is None else list(v)

    return {u: list(zip(seq(c), seq(p), map(bytes, seq(t)), seq(n), map(bytes, seq(im))))
            for u, c, p, t, n, im in zip(pdf["user_id"], pdf["beh_category"], pdf["beh_price"], pdf["beh_text_proj"],
                                         pdf["beh_n_text_tokens"], pdf["beh_image_proj"])}


@pytest.mark.parametrize("pooled", [False, True], ids=["every_token", "pooled_behaviour"])
def test_tokens_read_by_bucket_equal_the_spark_join(spark, world, cvr_inputs, pooled):
    """The night's user rows (tokens read from the cache's bucket files) hold the same bytes as a Spark join of the tokens."""
    from pipeline import model_cache

    config, _ = world
    model = pooled_predictor(config.model_dir)
    shape = nightly.pooled_shape(model) if pooled else None
    args = (cvr_inputs["good"], cvr_inputs["outputs"], cvr_inputs["events"], RUN, model.max_behaviour,
            model.vocab.profile_fields)
    by_bucket = nightly.user_rows(*args, pooled=shape, tokens=cvr_inputs["tokens"]).toPandas()
    joined = nightly.user_rows(*args, pooled=shape).toPandas()
    assert len(by_bucket) == len(joined) > 3
    assert candidates_by_user(by_bucket) == candidates_by_user(joined)
    assert behaviour_by_user(by_bucket) == behaviour_by_user(joined)
    assert sum(len(b) for b in behaviour_by_user(joined).values()) >= 10, "too few behaviour items to prove anything"
    buckets = tables.read_table(spark, config, model_cache.TABLE).select("bucket").distinct().count()
    assert buckets > 1, "one bucket: the read by bucket would prove nothing about routing"


def test_a_token_read_that_misses_an_item_fails_naming_it(world, cvr_inputs):
    """Tokens of another model version than the night's outputs: every demand row misses, and the task says which."""
    import dataclasses

    config, _ = world
    model = pooled_predictor(config.model_dir)
    stale = dataclasses.replace(cvr_inputs["tokens"], model_version="0" * 12)
    rows = nightly.user_rows(cvr_inputs["good"], cvr_inputs["outputs"], cvr_inputs["events"], RUN, model.max_behaviour,
                             model.vocab.profile_fields, tokens=stale)
    with pytest.raises(Exception, match=r"item\(s\) have no cached row of model 000000000000"):
        rows.collect()


def test_the_model_cache_check_catches_a_cached_row_of_other_content(spark, world, first_run):
    from camenn.predictor import Predictor
    from pipeline import model_cache

    config, _ = world
    model = Predictor.load(config.model_dir)
    valid = feature_cache.valid_items(spark, config).select("item_id", "merchant_id", "category", "price", "content_hash")
    outputs = model_cache.current(spark, config, model, valid)
    model_cache.check_current(outputs, N_CLEAN)
    # the CVR input joins these rows on item_id: partitioned by item_id alone, they are not shuffled again
    plan = outputs._jdf.queryExecution().executedPlan().toString()
    keys = re.findall(r"hashpartitioning\((.*?), \d+\)", plan)
    assert keys and all(k.startswith("item_id#") and "," not in k for k in keys), keys
    with pytest.raises(AssertionError, match="1 of them for other content"):
        edited = valid.withColumn("content_hash", F.when(F.col("item_id") == "i003", F.lit("0" * 64))
                                  .otherwise(F.col("content_hash")))
        model_cache.check_current(model_cache.current(spark, config, model, edited), N_CLEAN)
    with pytest.raises(AssertionError, match="20 valid items but 19 cached outputs"):
        model_cache.check_current(model_cache.current(spark, config, model, valid.where("item_id != 'i004'")), N_CLEAN)


def test_rerun_same_date_other_batching_replaces_rows(spark, world, first_run):
    config, version = world
    # Arrow batches of 8 rows, model batches of 4: the numbers must not move
    config2 = tiny_config(Path(config.data.root).parent, "scoring.batch_size=4", "scoring.max_records_per_batch=8")
    again = nightly.run(spark, config2, RUN)
    assert again.counts["items_encoded"] == 0 and again.counts["items_reused"] == N_CLEAN
    # nothing changed: no item goes through the model again, and item_alignment is still complete
    assert (again.counts["items_model_scored"], again.counts["items_model_reused"]) == (0, N_CLEAN)
    assert again.counts["items_scored"] == N_CLEAN
    for name, key in (("item_alignment", ["item_id"]), ("cvr_scores", ["user_id", "item_id"])):
        df = tables.read_table(spark, config, name).where(F.col("run_date") == F.lit(RUN))
        assert df.count() == df.select(*key).distinct().count() > 0, name
    q = tables.read_table(spark, config, "quarantine").where(F.col("run_date") == F.lit(RUN))
    assert q.count() == first_run.counts["items_quarantined"] + first_run.counts["candidates_quarantined"]
    assert_tables_match_oracle(spark, config, version)
    assert spark.conf.get(nightly.ARROW_BATCH) != "8"   # the session's setting is put back


def test_backfill_leaves_the_newer_date_alone(spark, world, first_run):
    config, _ = world
    def snapshot(name):
        return sorted(tuple(r) for r in tables.read_table(spark, config, name).where(F.col("run_date") == F.lit(RUN)).collect())

    before = {name: snapshot(name) for name in ("item_alignment", "cvr_scores", "quarantine")}
    old = nightly.run(spark, config, BEFORE)
    assert old.counts["candidates_in"] == 6 == old.counts["cvr_scored"]
    assert {name: snapshot(name) for name in before} == before
    cvr = tables.read_table(spark, config, "cvr_scores").where(F.col("run_date") == F.lit(BEFORE))
    assert cvr.count() == 6
    assert tables.read_table(spark, config, "item_alignment").where(F.col("run_date") == F.lit(BEFORE)).count() == N_CLEAN


def test_constraints_reject_bad_rows_without_a_commit(spark, world, first_run):
    config, version = world
    good = (RUN, "i000", "m0", "fruit", 0.5, 0.5, False, None, version, None)
    schema = "run_date date, item_id string, merchant_id string, category string, p_ita double, p_tia double, " \
             "flag boolean, reason string, model_version string, suspect_side string"
    before = tables.table_version(spark, config, "item_alignment")
    rows_before = tables.read_table(spark, config, "item_alignment").count()
    for bad in [good[:4] + (1.5,) + good[5:], (RUN, None) + good[2:], good[:9] + ("left",)]:
        with pytest.raises(Exception, match="(?i)constraint|null"):
            tables.replace_run_date(spark, config, "item_alignment", spark.createDataFrame([good, bad], schema), RUN)
        assert tables.table_version(spark, config, "item_alignment") == before
    assert tables.read_table(spark, config, "item_alignment").count() == rows_before


def test_three_changed_items_are_encoded_and_scored_again_and_nothing_else(spark, world, first_run):
    config, version = world   # the caches hold this model's outputs for every item (other models' tests come later)
    changed = {"i002", "i005", "i009"}
    rows = [r if r[0] not in changed else r[:3] + (r[3] + " (new pack)",) + r[4:]
            for r in clean_items(N_CLEAN) + poison_items(100)]
    write_items(spark, config, rows)
    result = nightly.run(spark, config, RUN)
    c = result.counts
    assert (c["items_encoded"], c["items_model_scored"]) == (3, 3)
    assert c["item_features_scans"] == 0   # their blobs come from tonight's encoded rows, not a scan of every item's
    assert (c["items_reused"], c["items_model_reused"], c["items_scored"]) == (N_CLEAN - 3, N_CLEAN - 3, N_CLEAN)
    assert c["items_in"] == c["items_valid"] + c["items_quarantined"]
    assert c["candidates_in"] == c["cvr_scored"] + c["candidates_quarantined"]
    assert_tables_match_oracle(spark, config, version)
    again = nightly.run(spark, config, RUN).counts
    assert (again["items_encoded"], again["items_model_scored"], again["item_features_scans"]) == (0, 0, 0)
    # a cached row lost (a night killed between the two MERGEs): tonight's encoded rows do not hold
    # that item's blobs, so the item pass falls back to scanning item_features, and says so
    from delta.tables import DeltaTable
    DeltaTable.forPath(spark, config.table("item_model_outputs")).delete("item_id = 'i004'")
    lost = nightly.run(spark, config, RUN).counts
    assert (lost["items_encoded"], lost["items_model_scored"], lost["item_features_scans"]) == (0, 1, 1)
    assert_tables_match_oracle(spark, config, version)


def test_a_price_or_category_change_is_rescored_from_the_cached_projections(spark, world, first_run):
    """The projections depend on content alone, so an item whose price or category changed is
    scored again from them (no encoder blob read), and the night still equals the oracle's."""
    config, version = world   # the caches hold the items as they are and this model's outputs
    repriced, recategorised = ["i001", "i004"], "i007"
    items = tables.read_table(spark, config, "items").localCheckpoint()   # the overwrite replaces what it reads
    other = next(c for c in CATEGORIES if c != items.where(F.col("item_id") == recategorised).first().category)
    tables.overwrite_table(spark, config, "items", items
                           .withColumn("price", F.when(F.col("item_id").isin(repriced), F.col("price") + 0.75)
                                       .otherwise(F.col("price")))
                           .withColumn("category", F.when(F.col("item_id") == recategorised, F.lit(other))
                                       .otherwise(F.col("category"))))
    c = nightly.run(spark, config, RUN).counts
    assert (c["items_encoded"], c["items_model_scored"], c["items_model_rescored"]) == (0, 0, 3), c
    assert c["items_model_reused"] == N_CLEAN - 3
    assert_tables_match_oracle(spark, config, version)
    again = nightly.run(spark, config, RUN).counts
    assert (again["items_model_scored"], again["items_model_rescored"]) == (0, 0)


def test_cvr_of_unchanged_inputs_is_carried_over_from_the_last_night(spark, world, first_run):
    """u1 bought i008 on RUN, so the night after scores only u1's candidates again; once i005's
    title changes, the next night scores again i005's candidates and those of users who bought it."""
    config, version = world

    def night(run_date: dt.date):
        candidates = spark.createDataFrame(candidate_rows(run_date), tables.schema_of(spark, "candidates"))
        counts = nightly.run(spark, config, run_date, candidates=candidates).counts
        _, cvr, _ = expected_scores(spark, config, run_date)
        assert counts["cvr_scored"] == counts["cvr_model_scored"] + counts["cvr_reused"] == len(cvr)
        assert_cvr_matches(spark, config, run_date, cvr)
        return counts, cvr

    counts, cvr = night(NEXT)         # the last night is RUN's, scored by this model
    rescored = {pair for pair in cvr if pair[0] == "u1"}
    assert len(rescored) == 3 and counts["cvr_model_scored"] == 3, counts

    items = tables.read_table(spark, config, "items").localCheckpoint()   # the overwrite replaces what it reads
    tables.overwrite_table(spark, config, "items", items.withColumn(
        "title", F.when(F.col("item_id") == "i005", F.concat("title", F.lit(" (2 kg)"))).otherwise(F.col("title"))))
    later = NEXT + dt.timedelta(days=1)
    counts, cvr = night(later)
    seqs = expected_behaviour(later, {f"i{k:03d}" for k in range(N_CLEAN)}, config.model.max_behaviour)
    rescored = {(u, i) for u, i in cvr if i == "i005" or "i005" in seqs.get(u, [])}
    assert {"u1", "u5"} <= {u for u, _ in rescored}   # u1 bought i005, u5 is offered it
    assert (counts["items_model_scored"], counts["cvr_model_scored"]) == (1, len(rescored)), counts
    assert counts["cvr_reused"] == len(cvr) - len(rescored) > 0


@pytest.mark.faults
def test_failed_run_is_recorded_and_leaves_outputs_alone(spark, world, first_run, tmp_path):
    config, _ = world
    versions = {name: tables.table_version(spark, config, name) for name in ("item_alignment", "cvr_scores")}
    broken = tmp_path / "broken-model"
    make_artifact(config, broken, seed=3)
    with open(broken / "model.safetensors", "ab") as f:   # one byte more than the manifest says
        f.write(b"\0")
    bad_config = config.model_copy(update={"scoring": config.scoring.model_copy(update={"model_dir": str(broken)})})
    with pytest.raises(Exception, match="does not match"):
        nightly.run(spark, bad_config, RUN)
    failed = tables.read_table(spark, config, "runs").where("status = 'failed'").collect()
    assert len(failed) == 1 and "does not match" in json.loads(failed[0].details)["error"]
    assert {name: tables.table_version(spark, config, name) for name in versions} == versions


@pytest.mark.faults
def test_a_model_emitting_nan_fails_the_night_before_any_output_commit(spark, world, first_run, tmp_path):
    config, _ = world
    versions = {name: tables.table_version(spark, config, name) for name in ("item_alignment", "cvr_scores")}
    nan_dir = tmp_path / "nan-model"
    make_artifact(config, nan_dir, seed=4, nan_head="ita")
    nan_config = config.model_copy(update={"scoring": config.scoring.model_copy(update={"model_dir": str(nan_dir)})})
    with pytest.raises(nightly.NotFiniteScores, match=r"of \d+ item alignment scores .* are NaN or infinite \(100.0%"):
        nightly.run(spark, nan_config, RUN)
    assert {name: tables.table_version(spark, config, name) for name in versions} == versions   # the date is intact
    failed = tables.read_table(spark, config, "runs").where("status = 'failed'").collect()
    assert any("NaN or infinite" in json.loads(r.details)["error"] for r in failed)


@pytest.mark.faults
def test_a_cvr_head_emitting_nan_fails_the_night_before_any_output_commit(spark, world, first_run, tmp_path):
    config, _ = world
    names = ("item_alignment", "cvr_scores", "quarantine")
    versions = {name: tables.table_version(spark, config, name) for name in names}
    nan_dir = tmp_path / "nan-cvr"
    make_artifact(config, nan_dir, seed=5, nan_head="cvr")
    broken = config.model_copy(update={"scoring": config.scoring.model_copy(update={"model_dir": str(nan_dir)})})
    with pytest.raises(nightly.NotFiniteScores, match=r"CVR scores .* are NaN or infinite"):
        nightly.run(spark, broken, RUN)
    # alignment was computed (finite) before CVR failed, and still nothing of the run was written
    assert {name: tables.table_version(spark, config, name) for name in names} == versions


@pytest.mark.faults
def test_below_the_limit_non_finite_scores_are_quarantined_and_counted(spark, world, first_run, tmp_path):
    config, _ = world
    nan_dir = tmp_path / "nan-model"
    make_artifact(config, nan_dir, seed=4, nan_head="ita")
    tolerant = config.model_copy(update={"scoring": config.scoring.model_copy(
        update={"model_dir": str(nan_dir), "max_not_finite_share": 1.0})})
    result = nightly.run(spark, tolerant, RUN)
    c = result.counts
    assert c["items_not_finite"] == c["items_valid"] > 0 and c["items_scored"] == 0
    assert c["candidates_in"] == c["cvr_scored"] + c["candidates_quarantined"]
    reasons = {r.reason: r["count"] for r in tables.read_table(spark, config, "quarantine")
               .where((F.col("run_date") == F.lit(RUN)) & (F.col("source") == "item_alignment")).groupBy("reason").count().collect()}
    assert reasons == {"score: not finite": c["items_valid"]}


def test_missing_inputs_say_which_command_makes_them(spark, tmp_path):
    config = tiny_config(tmp_path)
    with pytest.raises(nightly.MissingInput, match="make demo-data"):
        nightly.check_inputs(spark, config)
    write_world(spark, config)
    with pytest.raises(nightly.MissingInput, match="make train"):
        nightly.check_inputs(spark, config)


def test_new_model_version_replaces_the_rows(spark, world, first_run, tmp_path):
    config, old_version = world
    new_dir = tmp_path / "model-v2"
    new_version = make_artifact(config, new_dir, seed=1)
    assert new_version != old_version
    config2 = config.model_copy(update={"scoring": config.scoring.model_copy(update={"model_dir": str(new_dir)})})
    result = nightly.run(spark, config2, RUN)
    assert result.model_version == new_version
    assert (result.counts["items_encoded"], result.counts["items_model_scored"]) == (0, N_CLEAN)  # all rescored
    assert result.counts["item_features_scans"] == 1   # nothing encoded tonight: the blobs come from item_features
    for name in ("item_alignment", "cvr_scores"):
        versions = tables.read_table(spark, config, name).where(F.col("run_date") == F.lit(RUN)) \
            .groupBy("model_version").count().collect()
        assert [(r.model_version, r["count"]) for r in versions] == \
            [(new_version, result.counts["items_scored" if name == "item_alignment" else "cvr_scored"])]
    assert_tables_match_oracle(spark, config2, new_version)


# ------------------------------------------------------------------------ the job's command line


def test_job_says_what_to_run_when_inputs_are_missing(tmp_path):
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "jobs" / "score_catalog.py"), "--conf", str(root / "tests/conf/tiny.yaml"),
                          "--set", f"data.root={tmp_path / 'empty'}", "--set", "spark.master=local[1]"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "make demo-data" in out.stderr
