"""Training end to end on real Spark + Delta and the real (frozen) encoders, on a tiny hand-made world.

One module-scoped world; each test trains a few steps only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from test_training_data import synthetic_world, write_world

from pipeline import tables

FAST = ("training.epochs=2", "training.steps_per_epoch=3", "training.batch_size=16",
        "training.alignment_batch_size=8", "training.patience=1", "model.d_model=16", "model.n_heads=2",
        "model.n_experts=2", "model.max_behaviour=3")


@pytest.fixture(scope="module")
def world_root(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("train-world")
    config = tiny_config(root, *FAST)
    world = synthetic_world(n_items=28, n_users=16, days=10)
    # rows training must leave out, each with its reason: a user missing from users, an unknown item
    world["impressions"].append(("u999", "i000", world["impressions"][0][2], 1))
    world["events"].append(("u000", "i999", world["events"][0][2], "purchase", 1.0))
    write_world(spark, config, world)
    return root


THREADS_AFTER: dict[str, int] = {}   # torch's thread count in this process once `trained` has trained
# the run date `trained` trained on: today's, as a job's default, but fixed before it starts. Other tests of
# this module train on the same tables on their own date, which is another one when the module runs past midnight
TRAINED_ON: dict[str, object] = {}


@pytest.fixture(scope="module")
def trained(spark, world_root):
    import datetime as dt

    import torch

    from pipeline.train import run_training

    config = tiny_config(world_root, *FAST)
    before = torch.get_num_threads()
    torch.set_num_threads(1)   # what a test worker has, or OMP_NUM_THREADS=1
    TRAINED_ON["run_date"] = dt.date.today()
    try:
        result = run_training(spark, config, run_date=TRAINED_ON["run_date"])
        THREADS_AFTER["trained"] = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    return config, result


def test_training_in_this_process_keeps_the_threads_it_was_given(trained):
    """training.num_threads unset: cores / processes, but never more than the process had. Beside
    a busy core, a second OpenMP thread spin-waits: the DAG test's training steps took 1.5 s with
    two threads and 0.6 s with one."""
    assert THREADS_AFTER["trained"] == 1


def test_artifact_records_the_contract_and_table_versions(spark, trained):
    from camenn.checkpoint import load_artifact
    from pipeline.feature_cache import featurizer_config, featurizer_fingerprint

    config, result = trained
    art = load_artifact(result.artifact)
    meta = art.metadata
    for key in ("featurizer", "encoder_fingerprint", "vocab", "max_behaviour", "table_versions", "metrics",
                "git_commit", "trained_at", "config_name"):
        assert key in meta, key
    assert meta["config_name"] == "tiny" and meta["max_behaviour"] == 3 == art.config.max_behaviour
    assert meta["encoder_fingerprint"] == featurizer_fingerprint(featurizer_config(config))
    assert meta["featurizer"]["max_text_tokens"] == config.featurizer.max_text_tokens
    versions = meta["table_versions"]
    for name in ("items", "users", "events", "impressions", "item_features", "training_examples"):
        assert versions[name] == tables.table_version(spark, config, name), name
    # the pinned snapshot is readable by version, and it is what the model was trained from
    from deltalake import DeltaTable

    snap = DeltaTable(config.table("training_examples"), version=versions["training_examples"]).to_pyarrow_table()
    assert snap.num_rows == sum(v for k, v in meta["example_counts"].items() if k[:4] in ("trai", "vali", "test"))
    m = meta["metrics"]
    assert 0.0 <= m["cvr_auc"] <= 1.0 and 0.0 <= m["ita_acc"] <= 1.0 and 0.0 <= m["tia_acc"] <= 1.0
    assert m["epochs_run"] >= 1 and meta["history"]
    for record in meta["history"]:  # the CVR target is an AUC, so every epoch records the validation AUC
        auc = record["valid_cvr_auc"]
        assert auc is None or 0.0 <= auc <= 1.0, record  # None: one class only in a tiny validation split
    json.dumps(meta)  # JSON-safe
    assert result.model_version == art.version


def test_artifact_scores_full_and_item_only(spark, trained):
    from camenn.checkpoint import load_artifact
    from camenn.inputs import FeatureVocab, full_batch, item_only_batch
    from pipeline.training_data import load_item_store

    config, result = trained
    art = load_artifact(result.artifact)
    vocab = FeatureVocab.from_dict(art.metadata["vocab"])
    v = art.metadata["table_versions"]
    store = load_item_store(spark, config.table("item_features"), v["item_features"], config.table("items"), v["items"],
                            art.metadata["encoder_fingerprint"], vocab, art.config.n_patches)
    idx = torch.arange(4)
    probs = art.model.predict(item_only_batch(store, idx))
    assert set(probs) == {"cvr", "ita", "tia"} and all(p.shape == (4,) for p in probs.values())
    beh = torch.tensor([[4, 5, -1], [6, -1, -1], [-1, -1, -1], [7, 8, 9]])
    users = torch.as_tensor(vocab.user_feats({"age_band": ["18-29"] * 4, "household": ["family"] * 4, "zone": ["z1"] * 4}))
    out = art.model.predict(full_batch(store, idx, beh, users))["cvr"]
    assert torch.isfinite(out).all() and ((out >= 0) & (out <= 1)).all()


def test_an_artifact_trained_on_streamed_chunks_scores_in_the_nightly_job(spark, trained):
    """The streamed training's artifact is what the nightly job loads: every item and candidate scored."""
    import datetime as dt

    from pyspark.sql import functions as F
    from test_training_data import T0

    from pipeline import nightly

    config, result = trained
    run_date = (T0 + dt.timedelta(days=12)).date()
    users = [r.user_id for r in tables.read_table(spark, config, "users").select("user_id").collect()]
    items = sorted(r.item_id for r in tables.read_table(spark, config, "items").select("item_id").collect())
    rows = [(run_date, u, items[(3 * k + j) % len(items)]) for k, u in enumerate(users) for j in range(3)]
    tables.overwrite_table(spark, config, "candidates", spark.createDataFrame(rows, tables.schema_of(spark, "candidates")))

    night = nightly.run(spark, config, run_date)

    assert night.status == "succeeded" and night.model_version == result.model_version, night.summary()
    c = night.counts
    assert c["items_scored"] == c["items_valid"] == len(items), night.summary()
    assert c["candidates_in"] == len(rows) == c["cvr_scored"], night.summary()
    cvr = tables.read_table(spark, config, "cvr_scores").where(F.col("run_date") == F.lit(run_date))
    assert cvr.where(F.col("model_version") == result.model_version).where("cvr >= 0 AND cvr <= 1").count() == len(rows)


def test_training_is_deterministic_given_a_seed(spark, trained):
    from camenn.training import train_fn
    from pipeline.train import make_spec

    config, result = trained
    spec = make_spec(config, result.data, artifact_dir="")
    a, b = train_fn(spec), train_fn(spec)
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert drop(a["history"]) == drop(b["history"])
    assert a["metrics"]["cvr_auc"] == b["metrics"]["cvr_auc"]


def test_a_weight_average_validates_and_keeps_the_average_not_the_last_step(trained):
    from camenn.training import train_fn
    from pipeline.train import make_spec

    config, result = trained
    spec = make_spec(config, result.data, artifact_dir="")
    assert spec["training"]["ema_decay"] is None
    plain = train_fn(spec)["history"]
    spec["training"]["ema_decay"] = 0.5
    averaged = train_fn(spec)["history"]
    # the average watches the steps and never takes one: the same batches give the same training losses
    assert [r["train_loss"] for r in averaged] == [r["train_loss"] for r in plain]
    # what each epoch validates (and keeps as the best) is the average
    assert [r["valid_loss"] for r in averaged] != [r["valid_loss"] for r in plain]


def test_the_weight_average_is_the_decayed_mean_of_the_steps_and_loads_into_the_model():
    from camenn.model import CameNN, CameNNConfig
    from camenn.training import weight_average

    assert weight_average(torch.nn.Linear(2, 2), None) is None
    model = CameNN(CameNNConfig(d_model=8, n_heads=2, n_experts=2, tasks=("ita", "tia")))
    ema = weight_average(model, 0.75)
    firsts, seconds = {}, {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0)
            firsts[name] = p.clone()
        ema.update_parameters(model)   # the first update copies
        for name, p in model.named_parameters():
            p.fill_(3.0)
            seconds[name] = p.clone()
        ema.update_parameters(model)
    kept = ema.module.state_dict()
    for name in firsts:
        torch.testing.assert_close(kept[name], 0.75 * firsts[name] + 0.25 * seconds[name])
    fresh = CameNN(model.cfg)
    fresh.load_state_dict(kept)   # strict: the same keys as the model that is saved


@pytest.mark.parametrize("balance", ["weights", "logit_adjustment"])
def test_alignment_balance_reaches_the_training_loss(trained, balance):
    from camenn.training import train_fn
    from pipeline.train import make_spec

    config, result = trained
    spec = make_spec(config, result.data, artifact_dir="")
    assert spec["training"]["alignment_balance"] == "none"
    plain = [r["train_loss"] for r in train_fn(spec)["history"]]
    spec["training"]["alignment_balance"] = balance
    losses = [r["train_loss"] for r in train_fn(spec)["history"]]
    assert np.isfinite(losses).all()
    # same seed, same batches: only the alignment loss's prior correction differs
    assert losses != plain


def test_if_missing_skips_a_current_artifact(spark, world_root, trained, tmp_path):
    from pipeline.train import run_training

    config, result = trained
    again = run_training(spark, config, if_missing=True)
    assert again.skipped and again.model_version == result.model_version
    from pipeline.train import current_artifact

    assert current_artifact(config) is not None
    assert current_artifact(tiny_config(world_root, *FAST, "training.lr=0.001")) is None  # another config
    # the list of seeds is not part of the config: the seed-0 model serves any list that starts with 0
    assert current_artifact(tiny_config(world_root, *FAST, "training.seeds=[0, 5]")) is not None
    assert current_artifact(tiny_config(world_root, *FAST, "training.seeds=[5, 0]")) is None
    # scoring settings are not the model's, but calibrated thresholds taken on the photo alone do not
    # serve a night over test-time views: that config trains again
    calibrated = (*FAST, "scoring.thresholds.mode=calibrated")
    assert current_artifact(tiny_config(world_root, *calibrated)) is not None
    assert current_artifact(tiny_config(world_root, *calibrated, "scoring.test_time_views=2")) is None
    assert current_artifact(tiny_config(world_root, *FAST, "scoring.test_time_views=2")) is not None   # absolute
    # a model records its held-out medians, so it serves a night that recentres its thresholds on them; one
    # from before it recorded them does not
    from camenn.checkpoint import write_artifact

    recentred = tiny_config(world_root, *calibrated, "scoring.thresholds.recentre=true")
    art = current_artifact(recentred)
    assert art is not None
    older = {**art.metadata, "metrics": {k: v for k, v in art.metadata["metrics"].items() if k != "ita_clean_q50"}}
    path = write_artifact(tmp_path / "before-medians", art.model, older)
    assert current_artifact(recentred, path) is None and current_artifact(tiny_config(world_root, *calibrated), path) is not None


def test_torch_distributor_two_processes(spark, world_root, tmp_path, capfd):
    from camenn.checkpoint import load_artifact, resolve_artifact
    from camenn.inputs import FeatureVocab, item_only_batch
    from pipeline.train import run_training
    from pipeline.training_data import load_item_store

    config = tiny_config(world_root, *FAST, "training.num_processes=2", "training.num_threads=1",
                         f"training.artifact_dir={tmp_path / 'ddp-model'}")
    result = run_training(spark, config)
    assert result.metrics["world_size"] == 2
    # TorchDistributor relays its workers' output line by line: the progress bar must come as
    # whole lines (a carriage-return redraw would only surface when its epoch ends)
    out = capfd.readouterr()
    progress = [line for line in (out.out + out.err).split("\n") if "epoch 1/2" in line and "loss=" in line]
    assert progress and not any("\r" in line for line in progress), progress
    # whichever process finished last, the job gets rank 0's artifact and version
    art = load_artifact(result.artifact)
    # the version the root's LATEST names: rank 0's save
    assert result.artifact == resolve_artifact(tmp_path / "ddp-model") and result.model_version == art.version
    assert art.metadata["table_versions"]["training_examples"] == tables.table_version(spark, config, "training_examples")
    vocab = FeatureVocab.from_dict(art.metadata["vocab"])
    v = art.metadata["table_versions"]
    store = load_item_store(spark, config.table("item_features"), v["item_features"], config.table("items"), v["items"],
                            art.metadata["encoder_fingerprint"], vocab, art.config.n_patches)
    probs = art.model.predict(item_only_batch(store, torch.arange(len(store))))
    assert all(np.isfinite(p.numpy()).all() for p in probs.values())


def test_chunks_partition_the_examples_and_hold_only_their_items(spark, world_root, tmp_path):
    """Four chunks: every example in exactly one, each chunk's store only the items its examples name + its home items."""
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    from camenn.chunks import load_chunk, read_chunk_examples
    from camenn.training import item_split
    from pipeline.train import make_spec
    from pipeline.training_data import prepare_training_data

    config = tiny_config(world_root, *FAST, "training.examples_per_chunk=40", "training.num_processes=2",
                         f"training.artifact_dir={tmp_path / 'm'}")
    data = prepare_training_data(spark, config)
    spec = make_spec(config, data)
    n_chunks = spec["n_chunks"]
    assert n_chunks % 2 == 0 and n_chunks >= 4
    examples = DeltaTable(config.table("training_examples"), version=data.versions["training_examples"]).to_pyarrow_table()
    seen: list[str] = []
    for c in range(n_chunks):
        rows = read_chunk_examples(spec, c)
        seen += rows["example_id"].to_pylist()
        chunk = load_chunk(spec, c, data.vocab, lambda i: item_split(i, 0.25, 0.1))
        named = set(rows["item_id"].to_pylist()) | set(pc.list_flatten(rows["behaviour"]).to_pylist())
        home = {chunk.store.item_ids[k] for split in ("train", "valid", "test") for k in chunk.home[split].tolist()}
        assert set(chunk.store.item_ids) <= named | home and named <= set(chunk.store.item_ids)
        examples_of_chunk = sum(n for split, n in spec["chunks"][c].items() if split != "home")   # home: its own items
        assert sum(len(e) for e in chunk.splits.values()) == rows.num_rows == examples_of_chunk
        assert chunk.dropped == 0
    assert sorted(seen) == sorted(examples["example_id"].to_pylist())   # each example exactly once


def test_dropped_input_rows_are_counted_and_quarantined(spark, trained):
    from pyspark.sql import functions as F

    config, result = trained
    drops = result.data.drops
    assert drops, "the tiny world has no row to leave out: this test would prove nothing"
    # that run's date: a training replaces its own date's rows, and the module's other trainings may write another date's
    on_its_date = (F.col("job") == "train") & (F.col("run_date") == F.lit(TRAINED_ON["run_date"]))
    q = tables.read_table(spark, config, "quarantine").where(on_its_date)
    assert drops == {"dropped impressions: user: unknown": 1, "dropped events: item: unknown or invalid": 1}
    assert q.count() == sum(drops.values())
    row = tables.read_table(spark, config, "runs").where(on_its_date).orderBy(F.col("started_at").desc()).first()
    assert row.status == "succeeded" and all(row.counts[k] == v for k, v in drops.items())


def test_evaluation_report(spark, world_root, tmp_path):
    from pipeline.train import run_evaluation

    config = tiny_config(world_root, *FAST)
    out = run_evaluation(spark, config, out_dir=str(tmp_path / "run"), variants=["CameNN", "CameNN w/o ITA+TIA"])
    run = tmp_path / "run"
    assert (run / "metrics.json").is_file() and (run / "report.md").is_file()
    assert (run / "fig4_before_alignment.png").is_file() and (run / "fig5_after_alignment.png").is_file()
    assert (run / "comparison.png").stat().st_size > 10_000 and "](comparison.png)" in (run / "report.md").read_text()
    assert (run / "learning_curves.png").stat().st_size > 10_000 and "](learning_curves.png)" in (run / "report.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    names = [row["model"] for row in metrics["comparison"]]
    assert names == ["CameNN", "CameNN w/o ITA+TIA"]
    for name in names:  # each run carries its per-epoch history, which the learning curves are drawn from
        (record,) = metrics["runs"][name]
        assert len(record["history"]) == record["epochs_run"] >= 1
        assert {"epoch", "valid_loss_cvr", "valid_cvr_auc"} <= set(record["history"][0])
    assert metrics["bayes"]["n_matched"] == metrics["bayes"]["n_test"] > 0
    assert metrics["comparison"][0]["lift_share"] is not None
    assert set(metrics["mislabel"]["all_items"]["per_defect"]) == {"text_swap", "image_swap", "vague_text",
                                                                   "blurred_image", "wrong_category"}
    assert "Bayes-optimal" in (run / "report.md").read_text()
    ceiling = metrics["inputs_ceiling"]
    assert ceiling["n_test"] == metrics["bayes"]["n_test"] and 0.0 <= ceiling["auc"] <= 1.0
    assert "observable features" in (run / "report.md").read_text()

    # the same run folder again: every model is reused, not retrained, and the table is the same
    weights = sorted(run.glob("models/*/versions/*/model.safetensors"))   # one version per variant and seed
    assert len(weights) == 2
    stamps = {w: w.stat().st_mtime_ns for w in weights}
    again = run_evaluation(spark, config, out_dir=str(run), variants=["CameNN", "CameNN w/o ITA+TIA"])
    assert {w: w.stat().st_mtime_ns for w in weights} == stamps
    assert json.dumps(again["comparison"], sort_keys=True) == json.dumps(out["comparison"], sort_keys=True)  # NaN-safe

    # a model is reused only for the very spec it was trained from
    from camenn.checkpoint import load_artifact
    from pipeline.train import finished_run

    meta = load_artifact(weights[0].parent).metadata
    spec = {"artifact_dir": str(weights[0].parent), "seed": meta["seed"], "table_versions": meta["table_versions"],
            "encoder_fingerprint": meta["encoder_fingerprint"],
            "metadata": {"config_hash": meta["config_hash"], "variant": meta["variant"]}}
    assert finished_run(spec) == {"metrics": meta["metrics"], "history": meta["history"]}
    assert finished_run({**spec, "seed": meta["seed"] + 1}) is None
    assert finished_run({**spec, "table_versions": {**meta["table_versions"], "training_examples": -1}}) is None
    assert finished_run({**spec, "metadata": {**spec["metadata"], "variant": "MMoE frame (MLP)"}}) is None


def test_logistic_ceiling_reads_history_and_profile_but_not_noise():
    import pandas as pd

    from camenn.evaluation import logistic_ceiling

    rng = np.random.default_rng(0)
    n = 4000
    frame = pd.DataFrame({
        "split": np.where(np.arange(n) % 4 == 0, "test", "train"),
        "category": rng.choice(["fruit", "dairy", "bakery"], n), "price": rng.uniform(1, 5, n),
        "age_band": rng.choice(["18-24", "65+"], n), "household": "single", "zone": "centre",
        "match": rng.integers(0, 4, n), "tag_bestseller": rng.random(n) < 0.2,
    })
    logit = -2 + 1.2 * frame["match"] + 2.0 * ((frame["age_band"] == "65+") & (frame["category"] == "bakery"))
    frame["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    out = logistic_ceiling(frame)
    assert out["auc"] > 0.75 and out["n_test"] == n // 4
    frame["label"] = rng.permutation(frame["label"].to_numpy())  # the same rows, no signal left
    assert abs(logistic_ceiling(frame)["auc"] - 0.5) < 0.06


def test_binned_auc_matches_sklearn_and_adds_up_across_processes():
    from camenn.metrics import roc_auc
    from camenn.training import BinnedAUC

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 20_000)
    p = 1 / (1 + np.exp(-(y * 1.2 + rng.normal(size=y.size))))
    whole = BinnedAUC()
    whole.add(y, p)
    assert abs(whole.auc() - roc_auc(y, p)) < 1e-4
    halves = [BinnedAUC(), BinnedAUC()]
    halves[0].add(y[:7000], p[:7000])
    halves[1].add(y[7000:], p[7000:])
    assert np.array_equal(halves[0].counts + halves[1].counts, whole.counts)  # what all_reduce sums
    assert abs(whole.accuracy() - float(((p >= 0.5) == (y == 1)).mean())) < 1e-3
    assert np.isnan(BinnedAUC().auc())
    for q in (0.01, 0.05, 0.1):   # the calibrated thresholds: a share q of the positives scores below
        t = whole.quantile(q)
        assert abs(float((p[y == 1] < t).mean()) - q) < 1e-3 and abs(t - np.quantile(p[y == 1], q)) < 1e-3


def test_the_best_cut_is_where_the_pairs_split_best_and_the_middle_of_a_tie():
    from camenn.training import BinnedAUC

    gap = BinnedAUC(bins=100)
    gap.add([1, 1, 1, 0, 0, 0], [0.9, 0.35, 0.4, 0.1, 0.2, 0.3])   # every edge from 0.31 to 0.35 splits them
    assert gap.best_cut() == 0.33 and gap.accuracy(gap.best_cut()) == 1.0 and gap.accuracy() == 4 / 6
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 5_000)
    p = 1 / (1 + np.exp(-(2.0 * y - 2.5 + rng.normal(size=y.size))))   # scores that lean low: 0.5 is not the split
    whole = BinnedAUC(bins=1000)
    whole.add(y, p)
    cut = whole.best_cut()
    grid = np.linspace(0, 1, 1001)
    best_on_grid = max(float(((p >= c) == (y == 1)).mean()) for c in grid)
    assert whole.accuracy(cut) == best_on_grid and cut < 0.45 and whole.accuracy(cut) > whole.accuracy() + 0.05


def test_calibrated_thresholds_come_from_the_artifact(trained):
    """Training records quantiles of its held-out items' own ITA/TIA; mode calibrated flags below them."""
    import pytest

    from camenn.checkpoint import load_artifact
    from camenn.config import CALIBRATION_QUANTILES, ThresholdConfig

    config, result = trained
    metrics = load_artifact(result.artifact).metadata["metrics"]
    for task in ("ita", "tia"):
        values = [metrics[f"{task}_clean_q{round(q * 100):02d}"] for q in CALIBRATION_QUANTILES] + [metrics[f"{task}_clean_q50"]]
        assert all(0.0 < v <= 1.0 for v in values) and values == sorted(values), (task, values)   # ... and the median
    for task in ("ita", "tia"):   # the model's decision point: no worse than 0.5 on the same held-out pairs
        assert 0.0 <= metrics[f"{task}_cut"] <= 1.0 and metrics[f"{task}_acc_at_cut"] >= metrics[f"{task}_acc"], task
    resolved = ThresholdConfig(mode="calibrated", quantile=0.05).for_model(metrics, "m1")
    assert (resolved.mode, resolved.ita, resolved.tia) == ("absolute", metrics["ita_clean_q05"], metrics["tia_clean_q05"])
    centred = ThresholdConfig(mode="calibrated", quantile=0.05, recentre=True).for_model(metrics, "m1")
    assert (centred.centre_ita, centred.centre_tia) == (metrics["ita_clean_q50"], metrics["tia_clean_q50"])
    absolute = ThresholdConfig(ita=0.8, tia=0.8)
    assert absolute.for_model(metrics, "m1") is absolute   # the other modes do not read the model
    with pytest.raises(ValueError, match="records no held-out q05"):
        ThresholdConfig(mode="calibrated").for_model({"ita_acc": 0.9}, "old-model")
    with pytest.raises(ValueError, match="recorded at the quantiles"):
        ThresholdConfig(mode="calibrated", quantile=0.03)
