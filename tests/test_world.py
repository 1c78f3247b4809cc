"""The synthetic world: deterministic, partition-independent, with real signal and known truth."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pytest
from chispa import assert_df_equality
from conftest import tiny_config
from PIL import Image

import synthetic as W
from camenn.metrics import roc_auc
from pipeline import tables
from pipeline.world import WORLD_TABLES, bayes_auc, world_frame, world_key, write_world


@pytest.fixture(scope="module")
def tiny(spark, tmp_path_factory):
    """The tiny world, written once for the module."""
    config = tiny_config(tmp_path_factory.mktemp("world_a"))
    written = write_world(spark, config)
    return config, written


def read(spark, config, name):
    return tables.read_table(spark, config, name)


# --- determinism -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["items", "events", "impressions"])
def test_same_seed_gives_the_same_tables_whatever_the_partitions(spark, tiny, tmp_path, name):
    config, _ = tiny
    again = tiny_config(tmp_path, "world.partitions=3")          # another folder, other partitions
    regenerated = tables.conform(world_frame(spark, again.world, name), spark, name)
    assert regenerated.rdd.getNumPartitions() == 3
    assert_df_equality(read(spark, config, name), regenerated, ignore_row_order=True, ignore_nullable=True)


def test_different_seed_gives_a_different_world():
    a = tiny_config_world()
    b = a.model_copy(update={"seed": a.seed + 1})
    idx = np.arange(60)
    items_a, items_b = W.items_frame(a, idx), W.items_frame(b, idx)
    assert (items_a.title != items_b.title).mean() > 0.5
    assert (items_a.image != items_b.image).all()
    imp_a, imp_b = W.impressions_frame(a, np.arange(10)), W.impressions_frame(b, np.arange(10))
    assert (imp_a.item_id != imp_b.item_id).mean() > 0.5
    # ... and slices are pure functions of the index: any order, any batch, same rows
    again = W.items_frame(a, idx[::-1]).iloc[::-1].reset_index(drop=True)
    assert items_a.equals(again)


def tiny_config_world(*overrides):
    from conftest import TINY_CONF

    from camenn.config import load_config

    return load_config(TINY_CONF, list(overrides)).world


# --- rerunning --------------------------------------------------------------------------------

def versions(spark, config, names=WORLD_TABLES) -> dict[str, int]:
    return {name: tables.table_version(spark, config, name) for name in names}


def test_a_rerun_keeps_the_tables_that_hold_this_world(spark, tiny):
    config, _ = tiny
    before = versions(spark, config)
    assert write_world(spark, config, log=None) == dict.fromkeys(WORLD_TABLES, 0)
    assert versions(spark, config) == before  # what training and models were pinned to stays current

    # a commit by anyone else, even of the same rows, makes the rerun write the table again
    users = spark.createDataFrame(read(spark, config, "users").toPandas(), tables.schema_of(spark, "users"))
    tables.overwrite_table(spark, config, "users", users)
    assert write_world(spark, config, names=["users"], log=None) == {"users": config.world.n_users}
    assert write_world(spark, config, names=["users"], log=None) == {"users": 0}

    forced = write_world(spark, config, names=["events"], log=None, force=True)
    assert forced["events"] > 0 and versions(spark, config, ["events"])["events"] == before["events"] + 1


def test_the_world_key_changes_with_the_config_and_the_table():
    a, b = tiny_config_world(), tiny_config_world("world.seed=99")
    assert world_key(a, "items") != world_key(b, "items")
    assert world_key(a, "items") != world_key(a, "users")
    assert world_key(a, "items") == world_key(tiny_config_world(), "items")


# --- contracts and truth ---------------------------------------------------------------------

def test_tables_follow_the_contract_and_truth_stays_in_truth_tables(spark, tiny):
    config, written = tiny
    w = config.world
    assert set(written) == set(WORLD_TABLES)
    assert written["items"] == w.n_items and written["truth_items"] == w.n_items
    assert written["users"] == w.n_users
    assert written["impressions"] == written["truth_impressions"] == w.n_users * w.impressions_per_user
    assert written["candidates"] == w.n_users * w.candidates_per_user
    for name in WORLD_TABLES:
        df = read(spark, config, name)
        assert df.columns == tables.schema_of(spark, name).fieldNames(), name
        if not name.startswith("truth_"):
            assert not {"defect", "true_category", "p_buy", "source_item_id"} & set(df.columns), name


def test_defects_are_planted_as_configured(spark, tiny):
    config, _ = tiny
    items = read(spark, config, "items").select("item_id", "category", "title", "image").toPandas()
    truth = read(spark, config, "truth_items").toPandas()
    df = items.merge(truth, on="item_id", validate="one_to_one")
    clean = df[df.defect == "none"]
    assert (clean.category == clean.true_category).all()
    assert clean.source_item_id.isna().all()
    wrong = df[df.defect == "wrong_category"]
    assert len(wrong) and (wrong.category != wrong.true_category).all()
    others = df[~df.defect.isin(["none", "wrong_category"])]
    assert (others.category == others.true_category).all()
    swaps = df[df.defect.isin(["text_swap", "image_swap"])]
    assert swaps.source_item_id.notna().all()
    source_category = df.set_index("item_id").true_category
    assert (swaps.source_item_id.map(source_category).to_numpy() != swaps.true_category.to_numpy()).all()
    # a text swap shows the source item's own text, an image swap its own picture
    by_id = df.set_index("item_id")
    for row in swaps.itertuples():
        source = by_id.loc[row.source_item_id]
        if source.defect == "none" and row.defect == "text_swap":
            assert row.title == source.title
        if row.defect == "image_swap":
            index, source_index = int(row.item_id[2:]), int(row.source_item_id[2:])
            shown = np.asarray(W.render_item_image(config.world, index))
            assert np.array_equal(shown, np.asarray(W._draw_clean(config.world.seed, source_index, config.world.image_px)))
    # both decoders are exercised
    kinds = {bytes(b[:4]) for b in items.image}
    assert b"\x89PNG" in kinds and any(k.startswith(b"\xff\xd8") for k in kinds)

    # rates, on a bigger catalogue from the pure generator (no images needed)
    big = config.world.model_copy(update={"n_items": 40_000})
    counts = W.item_attributes(big, np.arange(big.n_items)).defect.value_counts(normalize=True)
    for defect, rate in big.defects.model_dump().items():
        assert abs(counts.get(defect, 0.0) - rate) < 0.006, (defect, counts.get(defect), rate)


def test_history_impressions_and_candidates_are_in_time(spark, tiny):
    config, _ = tiny
    w = config.world
    run_start = dt.datetime.combine(w.run_date, dt.time())
    events = read(spark, config, "events").toPandas()
    assert (events.event == "purchase").all()
    assert events.ts.max() < run_start and events.ts.min() >= run_start - dt.timedelta(days=w.days)
    impressions = read(spark, config, "impressions").toPandas()
    assert impressions.ts.max() < run_start
    assert not impressions.duplicated(["user_id", "item_id", "ts"]).any()
    # everyone has at least 5 purchases before their first impression (a behaviour sequence)
    first_seen = impressions.groupby("user_id").ts.min()
    before = events.merge(first_seen.rename("first").reset_index(), on="user_id")
    assert (before[before.ts < before["first"]].groupby("user_id").size().reindex(first_seen.index).fillna(0) >= 5).all()
    candidates = read(spark, config, "candidates").toPandas()
    assert (candidates.run_date == w.run_date).all()
    assert not candidates.duplicated(["user_id", "item_id"]).any()
    known_items = set(read(spark, config, "items").select("item_id").toPandas().item_id)
    assert set(candidates.item_id) <= known_items and set(events.item_id) <= known_items


def test_bayes_auc_and_buy_rate(spark, tiny):
    from sklearn.metrics import roc_auc_score

    config, _ = tiny
    imp = read(spark, config, "impressions").join(read(spark, config, "truth_impressions"), ["user_id", "item_id", "ts"])
    df = imp.toPandas()
    assert len(df) == config.world.n_users * config.world.impressions_per_user
    assert ((df.p_buy > 0) & (df.p_buy < 1)).all()
    exact = roc_auc_score(df.bought, df.p_buy)
    spark_auc = bayes_auc(spark, config)
    print(f"\ntiny world: buy rate {df.bought.mean():.3f}, Bayes AUC {spark_auc:.4f} (sklearn {exact:.4f})")
    assert spark_auc == pytest.approx(exact, abs=1e-3)
    assert 0.70 < spark_auc < 0.90
    assert 0.12 < df.bought.mean() < 0.30
    # the draws follow p_buy: calibration in a few bins
    bins = np.digitize(df.p_buy, [0.1, 0.3, 0.5])
    for b in np.unique(bins):
        sel = bins == b
        if sel.sum() >= 60:
            assert abs(df.bought[sel].mean() - df.p_buy[sel].mean()) < 0.12


def test_purchase_model_is_observable_on_a_larger_sample():
    """Bigger, Spark-free sample: Bayes AUC and buy rate in range; history reveals the taste."""
    world = tiny_config_world("world.n_users=2000", "world.n_items=4000", "world.impressions_per_user=20")
    imp = W.impressions_frame(world, np.arange(world.n_users))
    bayes = roc_auc(imp.bought, imp.p_buy)
    print(f"\n2000 users: buy rate {imp.bought.mean():.3f}, Bayes AUC {bayes:.4f}")
    assert 0.75 <= bayes <= 0.85 and 0.15 <= imp.bought.mean() <= 0.25
    # the history's most bought category is a favourite for nearly everyone
    users = W.user_attributes(world, np.arange(world.n_users))
    events = W.events_frame(world, np.arange(world.n_users))
    events["category"] = events.item_id.str[2:].astype(int) % W.N_CATEGORIES
    top = events.groupby("user_id").category.agg(lambda s: s.value_counts().index[0])
    favs = users.set_index("user_id").favourites
    assert np.mean([top[u] in favs[u] for u in top.index]) > 0.9


# --- the category is in the pictures and in the words ----------------------------------------

@pytest.fixture(scope="module")
def catalogue():
    world = tiny_config_world("world.n_items=1200")
    idx = np.arange(world.n_items)
    items, truth = W.items_frame(world, idx), W.truth_items_frame(world, idx)
    return items, truth


def _fit_and_score(X, y, defect, train):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    # a probe, not a fit to keep: 150 lbfgs iterations on the raw pixels already separate the
    # categories, and running the solver to convergence only costs time
    with threadpool_limits(1), warnings.catch_warnings():  # a shared 2-core machine: BLAS threads only get in each other's way
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = make_pipeline(StandardScaler(with_mean=not hasattr(X, "tocsr")), LogisticRegression(max_iter=150, C=0.1))
        model.fit(X[train], y[train])
        hit = model.predict(X) == y
    test = (defect == "none") & ~train
    return {"clean": hit[test].mean(), **{d: hit[defect == d].mean() for d in W.DEFECTS[1:]}}


def _split(truth):
    # hold out whole blocks of consecutive items, so that every category is in both parts
    return (truth.defect.to_numpy() == "none") & ((np.arange(len(truth)) // W.N_CATEGORIES) % 4 != 0)


def test_images_carry_the_category(catalogue):
    items, truth = catalogue
    X = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((16, 16), Image.BILINEAR),
                             dtype=np.float32).ravel() / 255 for b in items.image])
    y, defect = truth.true_category.to_numpy(), truth.defect.to_numpy()
    acc = _fit_and_score(X, y, defect, _split(truth))
    print("\nimage -> true category accuracy:", {k: round(float(v), 3) for k, v in acc.items()})
    assert acc["clean"] > 0.6                       # chance: 0.05
    assert acc["image_swap"] < 0.2 and acc["blurred_image"] < 0.25
    assert acc["text_swap"] > 0.45 and acc["vague_text"] > 0.45   # their pictures are right


def test_text_carries_the_category(catalogue):
    from sklearn.feature_extraction.text import CountVectorizer

    items, truth = catalogue
    text = (items.title + " " + items.description).to_numpy()
    y, defect = truth.true_category.to_numpy(), truth.defect.to_numpy()
    train = _split(truth)
    X = CountVectorizer().fit(text[train]).transform(text)
    acc = _fit_and_score(X, y, defect, train)
    print("\ntext -> true category accuracy:", {k: round(float(v), 3) for k, v in acc.items()})
    assert acc["clean"] > 0.9
    assert acc["text_swap"] < 0.1 and acc["vague_text"] < 0.25
    assert acc["image_swap"] > 0.8 and acc["blurred_image"] > 0.8
