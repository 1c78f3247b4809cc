"""Test-time views in the nightly job (``scoring.test_time_views``) and in training
(``training.view_share``): real Spark + Delta, the real encoders, a real CameNN (test_nightly's),
on test_nightly's clean items and a poison one.

An item's p_ita / p_tia over K views are the mean logit of its photo's scores and its K views'
scores, each scored with the item's own text, category and price: the oracle here computes that
from the item_features blobs with camenn.predictor, row by row, without Spark.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from conftest import tiny_config
from pyspark.sql import functions as F
from test_feature_cache import clean_items, item_row, write_items

from pipeline import feature_cache, model_cache, nightly, run_record, tables

RUN = dt.date(2026, 11, 24)
N_CLEAN = 12
VIEWS = 2


def night_config(root: Path, views: int):
    return tiny_config(root, f"scoring.test_time_views={views}")


@pytest.fixture(scope="module")
def catalogue(spark, tmp_path_factory):
    """Clean items and one undecodable photo; a real CameNN with alignment heads; the first night with views."""
    from test_nightly import make_artifact

    root = tmp_path_factory.mktemp("test-time-views")
    config = night_config(root, VIEWS)
    write_items(spark, config, clean_items(N_CLEAN) + [item_row(90, image=b"not an image")])
    make_artifact(config, Path(config.model_dir), seed=0)
    return root, nightly.run(spark, config, RUN)


def features(spark, config) -> dict:
    return {r.item_id: r for r in tables.read_table(spark, config, "item_features").collect()}


def expected_alignment(spark, config, views: int) -> dict[str, tuple[float, float]]:
    """item_id -> (p_ita, p_tia): the mean logit over the photo and its first ``views`` views, from the blobs."""
    from camenn.predictor import Predictor, mean_logit

    model = Predictor.load(config.model_dir)
    feats = features(spark, config)
    items = {r.item_id: r for r in tables.read_table(spark, config, "items").collect()}
    ids = sorted(i for i in feats if i in items)
    text, counts = [feats[i].text_emb for i in ids], [feats[i].n_text_tokens for i in ids]
    cats, prices = [items[i].category for i in ids], [items[i].price for i in ids]
    size = len(feats[ids[0]].image_emb)
    images = [[feats[i].image_emb for i in ids]] + [[feats[i].view_image_emb[j * size:(j + 1) * size] for i in ids]
                                                     for j in range(views)]
    scores = [model.score_items(text, counts, im, cats, prices, batch_size=1) for im in images]
    p_ita, p_tia = mean_logit([s[0] for s in scores]), mean_logit([s[1] for s in scores])
    return {i: (a, t) for i, a, t in zip(ids, p_ita, p_tia)}


def published(spark, config) -> dict[str, tuple[float, float]]:
    rows = run_record.published(spark, config, "item_alignment", RUN, job=nightly.JOB).collect()
    return {r.item_id: (r.p_ita, r.p_tia) for r in rows}


def assert_alignment_is(got: dict, want: dict):
    assert got.keys() == want.keys()
    for item_id in want:
        assert got[item_id] == pytest.approx(want[item_id], abs=1e-6), item_id


def test_a_night_with_views_scores_each_item_over_its_photo_and_views(spark, catalogue):
    root, first = catalogue
    config = night_config(root, VIEWS)
    assert first.status == "succeeded", first.summary()
    c = first.counts
    assert (c["items_encoded"], c["items_quarantined"], c["items_scored"]) == (N_CLEAN, 1, N_CLEAN), c
    feats = features(spark, config)
    assert len(feats) == N_CLEAN
    for row in feats.values():   # each view is a photo's worth of image tokens
        assert row.n_views == VIEWS and len(row.view_image_emb) == VIEWS * len(row.image_emb)
    cached = tables.read_table(spark, config, model_cache.TABLE).select("n_views").distinct().collect()
    assert [r.n_views for r in cached] == [VIEWS]
    got, want = published(spark, config), expected_alignment(spark, config, VIEWS)
    assert_alignment_is(got, want)
    # the views moved the scores: the photo alone scores otherwise
    photo_alone = expected_alignment(spark, config, 0)
    assert max(abs(got[i][0] - photo_alone[i][0]) for i in got) > 1e-4
    details = json.loads(tables.read_table(spark, config, "runs")
                         .where((F.col("run_id") == first.run_id) & (F.col("status") == "succeeded")).first().details)
    assert details["test_time_views"] == VIEWS


def test_views_follow_the_config_without_encoding_a_photo_twice(spark, catalogue):
    """The same views again reuse everything but a repriced item (through the item pass: the views'
    projections are not cached); no views reuse the features and score the photo alone; more
    views than cached encode the items again, and their first views are the old ones."""
    root, _ = catalogue
    config = night_config(root, VIEWS)
    items = tables.read_table(spark, config, "items").localCheckpoint()   # the overwrite replaces what it reads
    tables.overwrite_table(spark, config, "items", items.withColumn(
        "price", F.when(F.col("item_id") == "i003", F.col("price") + 1.25).otherwise(F.col("price"))))
    c = nightly.run(spark, config, RUN).counts
    assert (c["items_encoded"], c["items_model_scored"], c["items_model_rescored"], c["items_model_reused"]) == \
        (0, 1, 0, N_CLEAN - 1), c
    assert_alignment_is(published(spark, config), expected_alignment(spark, config, VIEWS))

    without = night_config(root, 0)
    c = nightly.run(spark, without, RUN).counts
    assert (c["items_encoded"], c["items_model_scored"]) == (0, N_CLEAN), c   # a row of other views is stale
    assert_alignment_is(published(spark, without), expected_alignment(spark, without, 0))

    before = features(spark, config)
    more = night_config(root, VIEWS + 1)
    stats = feature_cache.run_feature_update(spark, more, RUN, views=VIEWS + 1)
    stats.cleanup(spark)
    assert (stats.stats.encoded, stats.stats.reused) == (N_CLEAN, 0)
    after = features(spark, more)
    for item_id, row in after.items():
        old = before[item_id]
        assert row.n_views == VIEWS + 1 and row.image_emb == old.image_emb
        assert row.view_image_emb[:len(old.view_image_emb)] == old.view_image_emb


def held_out_quantiles(scores: dict[str, tuple[float, float]], held_out: list[str]) -> dict[str, float]:
    """ita_clean_q01 ... tia_clean_q10 of the held-out items' scores, as training takes them."""
    import numpy as np

    from camenn.config import CALIBRATION_QUANTILES
    from camenn.training import BinnedAUC

    out = {}
    for side, task in enumerate(("ita", "tia")):
        hist = BinnedAUC()
        hist.add(np.ones(len(held_out)), [scores[i][side] for i in held_out])
        out.update({f"{task}_clean_q{round(q * 100):02d}": hist.quantile(q) for q in CALIBRATION_QUANTILES})
    return out


def views_warnings_of(night) -> list[str]:
    return [w for w in night.thresholds.get("warnings", []) if "test-time view" in w]


def test_a_training_encodes_the_views_and_calibrates_over_them(spark, tmp_path):
    """Training's feature refresh encodes the night's test-time views beside each photo: the first night
    after it reuses every item's features instead of decoding and encoding every photo again.

    And it takes the calibration quantiles of its held-out items over their photo and those views
    (mean logit), as the night scores them; a night over another number of views says so.
    """
    from test_training import FAST
    from test_training_data import synthetic_world, write_world

    from camenn.predictor import Predictor
    from camenn.training import item_split
    from pipeline.train import run_training

    n_items = 16
    # half the items held out, so that the calibration quantiles are over more than a few
    config = tiny_config(tmp_path, *FAST, f"scoring.test_time_views={VIEWS}", "training.split.test_fraction=0.5",
                         "scoring.thresholds.mode=calibrated", "scoring.thresholds.quantile=0.1")
    write_world(spark, config, {"items": synthetic_world(n_items=n_items, n_users=4, days=2)["items"]})
    trained = run_training(spark, config)   # photos and texts alone: the alignment tasks
    assert trained.data.feature_stats.encoded == n_items
    feats = features(spark, config)
    assert len(feats) == n_items
    for row in feats.values():
        assert row.n_views == VIEWS and len(row.view_image_emb) == VIEWS * len(row.image_emb)

    night = nightly.run(spark, config, RUN)
    assert night.status == "succeeded", night.summary()
    c = night.counts
    assert (c["items_encoded"], c["items_reused"], c["items_scored"]) == (0, n_items, n_items), c
    assert_alignment_is(published(spark, config), expected_alignment(spark, config, VIEWS))
    assert views_warnings_of(night) == []

    # the calibration: the held-out items' quantiles over the photo and the views, from the blobs
    metrics = Predictor.load(config.model_dir).metadata["metrics"]
    split = config.training.split
    held_out = sorted(i for i in feats if item_split(i, split.test_fraction, split.valid_fraction, split.seed) == "test")
    assert len(held_out) >= 4, held_out
    assert (metrics["calibration_views"], metrics["calibration_items"], metrics["calibration_items_over_views"]) == \
        (VIEWS, len(held_out), len(held_out)), metrics
    over_views = held_out_quantiles(expected_alignment(spark, config, VIEWS), held_out)
    photo_alone = held_out_quantiles(expected_alignment(spark, config, 0), held_out)
    bin_width = 1 / 65536
    # the test tells the two apart: the views move at least one quantile by more than a few bins
    assert max(abs(over_views[k] - photo_alone[k]) for k in over_views) > 4 * bin_width, (over_views, photo_alone)
    for key, want in over_views.items():
        assert metrics[key] == pytest.approx(want, abs=2 * bin_width), key
    assert night.thresholds["ita"] == metrics["ita_clean_q10"] and night.thresholds["tia"] == metrics["tia_clean_q10"]

    # the same model read by a night over the photo alone: its thresholds were taken another way
    photo_config = config.model_copy(update={"scoring": config.scoring.model_copy(update={"test_time_views": 0})})
    photo_night = nightly.run(spark, photo_config, RUN)
    assert photo_night.status == "succeeded", photo_night.summary()
    assert views_warnings_of(photo_night) == [
        f"calibration: the model's thresholds are quantiles of its held-out items scored over their photo and {VIEWS} "
        "test-time view(s), and this night scores over the photo and 0: retrain the model with "
        f"scoring.test_time_views=0 (or set that back to {VIEWS})"]


def test_training_items_carry_the_held_out_items_views_once_they_are_encoded(spark, tmp_path):
    """training_items carries the first K views of the held-out home items alone (null elsewhere). A table
    written while the cache had no views (promote reads the cache without encoding) is written again by
    the next training, whose refresh encodes them, instead of being reused without them."""
    from test_training_data import synthetic_world, write_world

    from camenn.training import item_split
    from pipeline.training_data import prepare_training_data

    config = tiny_config(tmp_path, f"scoring.test_time_views={VIEWS}", "training.split.test_fraction=0.5")
    write_world(spark, config, {"items": synthetic_world(n_items=12, n_users=4, days=2)["items"]})
    feature_cache.update_item_features(spark, config, RUN)   # the photos alone, as a night without views leaves them

    def training_items(data) -> dict:
        return {r.item_id: r for r in tables.read_table(spark, config, "training_items",
                                                        version=data.versions["training_items"]).collect()}

    before = prepare_training_data(spark, config, RUN, update_features=False)
    assert all(r.view_image_emb is None for r in training_items(before).values())
    after = prepare_training_data(spark, config, RUN)
    assert after.versions["training_items"] > before.versions["training_items"]
    rows = training_items(after)
    split = config.training.split
    held_out = {i for i, r in rows.items() if r.home
                and item_split(i, split.test_fraction, split.valid_fraction, split.seed) == "test"}
    assert held_out and {i for i, r in rows.items() if r.view_image_emb is not None} == held_out
    cached = features(spark, config)
    for i in held_out:
        assert rows[i].view_image_emb == cached[i].view_image_emb[:VIEWS * len(cached[i].image_emb)]


# ------------------------------------------------------------------ training on the views (training.view_share)


def tiny_views(n: int, carrying: list[int], k: int = 3):
    """An ItemStore of ``n`` items and ItemViews for the rows ``carrying``: every image token of item r is
    -r, of view j of item r is 10 r + j + 1 (k < 10; fp16 holds these exactly), so an image says whose
    photo or view it is."""
    import torch

    from camenn.chunks import ItemViews
    from camenn.inputs import ItemStore

    P, D = 2, 4
    image = -torch.arange(n, dtype=torch.float16)[:, None, None].expand(n, P, D).clone()       # (n, P, Di)
    text = torch.randn(n, 3, 5).half()                                                         # (n, L, Dt)
    store = ItemStore([f"i{r:02d}" for r in range(n)], text, torch.ones(n, 3, dtype=torch.bool), image,
                      torch.zeros(n, 2, dtype=torch.long))
    slot = torch.full((n,), -1, dtype=torch.long)
    slot[carrying] = torch.arange(len(carrying))
    marks = torch.tensor([[10 * r + j + 1 for j in range(k)] for r in carrying], dtype=torch.float32)     # (c, K)
    views = ItemViews(slot, marks[:, :, None, None].expand(len(carrying), k, P, D).half())      # (c, K, P, Di)
    return store, views


def test_a_view_stands_in_for_the_photo_in_a_share_of_the_examples_of_items_that_carry_views():
    import torch

    from camenn.training import with_views

    n, k = 40, 3
    carrying = list(range(0, n, 2))
    store, views = tiny_views(n, carrying, k)
    rows = torch.arange(n)
    seen = {r: set() for r in range(n)}
    for draw in range(50):
        g = torch.Generator().manual_seed(draw)
        items = with_views(store.gather(rows), rows, views, 0.5, g)
        assert torch.equal(items.text, store.gather(rows).text) and torch.equal(items.feats, store.gather(rows).feats)
        for r in range(n):
            patch = items.image[r]                                                 # (P, Di): one mark throughout
            assert bool((patch == patch[0, 0]).all())
            seen[r].add(int(patch[0, 0]))
    for r in range(n):
        if r in carrying:   # its photo and each of its views, over 50 draws at share 0.5
            assert seen[r] == {-r} | {10 * r + j + 1 for j in range(k)}, (r, seen[r])
        else:
            assert seen[r] == {-r}, (r, seen[r])
    # about half of a batch's carrying rows take a view
    g = torch.Generator().manual_seed(99)
    batch = torch.tensor(carrying * 10)
    took = (with_views(store.gather(batch), batch, views, 0.5, g).image[:, 0, 0] != -batch.float()).float().mean()
    assert 0.4 < float(took) < 0.6, float(took)


def test_without_a_view_share_an_alignment_batch_is_drawn_as_before():
    """view_share 0 draws nothing from the generator: a training without it is the training it was."""
    import torch

    from camenn.training import alignment_batch

    store, views = tiny_views(16, list(range(16)))
    rows = torch.arange(16)
    plain = alignment_batch(store, rows, torch.Generator().manual_seed(3), True)
    zero = alignment_batch(store, rows, torch.Generator().manual_seed(3), True, views=views, view_share=0.0)
    assert torch.equal(plain[0].target.image, zero[0].target.image) and torch.equal(plain[0].target.text, zero[0].target.text)
    assert all(torch.equal(plain[1][t], zero[1][t]) for t in plain[1])
    some = alignment_batch(store, rows, torch.Generator().manual_seed(3), True, views=views, view_share=0.5)
    assert not torch.equal(plain[0].target.image, some[0].target.image)


def test_a_training_with_a_view_share_carries_the_training_items_views_and_trains_on_them(spark, tmp_path, caplog):
    """training_items carries the views of the training home items too (the validation ones never), the
    table of a training without the share is written again rather than reused, and the training says
    how many of its items carry views."""
    import logging

    from test_training import FAST
    from test_training_data import synthetic_world, write_world

    from camenn.training import item_split
    from pipeline.train import run_training
    from pipeline.training_data import prepare_training_data

    n_items = 24
    config = tiny_config(tmp_path, *FAST, f"scoring.test_time_views={VIEWS}", "training.split.test_fraction=0.25",
                         "training.split.valid_fraction=0.25")
    write_world(spark, config, {"items": synthetic_world(n_items=n_items, n_users=4, days=2)["items"]})
    without = prepare_training_data(spark, config, RUN)
    shared = config.model_copy(update={"training": config.training.model_copy(update={"view_share": 0.5})})
    with caplog.at_level(logging.INFO):
        trained = run_training(spark, shared)
    assert trained.data.versions["training_items"] > without.versions["training_items"]
    rows = {r.item_id: r for r in tables.read_table(spark, config, "training_items",
                                                    version=trained.data.versions["training_items"]).collect()}
    split = config.training.split
    part = {i: item_split(i, split.test_fraction, split.valid_fraction, split.seed) for i, r in rows.items() if r.home}
    assert set(part.values()) == {"train", "valid", "test"}, part
    assert {i for i, r in rows.items() if r.view_image_emb is not None} == {i for i, s in part.items() if s != "valid"}
    cached = features(spark, config)
    for i, r in rows.items():
        if r.view_image_emb is not None:
            assert r.view_image_emb == cached[i].view_image_emb[:VIEWS * len(cached[i].image_emb)]
    n_train = sum(s == "train" for s in part.values())
    assert f"view_share 0.5: {n_train} of chunk 0's {n_train} training items carry {VIEWS} test-time views" in caplog.text
