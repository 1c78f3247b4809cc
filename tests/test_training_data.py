"""Training examples on real Spark + Delta: no leakage, disjoint splits, sampled negatives."""

from __future__ import annotations

import datetime as dt
import random

from conftest import jpeg_with_shapes, tiny_config
from pyspark.sql import functions as F

from pipeline import tables, training_data

T0 = dt.datetime(2026, 10, 1, 9, 0)
CATEGORIES = ["fruit", "dairy", "bakery", "drinks"]
COLOURS = {"fruit": (220, 40, 40), "dairy": (240, 240, 230), "bakery": (180, 120, 50), "drinks": (40, 90, 220)}
WORDS = {"fruit": "apple pear plum", "dairy": "milk yogurt cheese", "bakery": "bread bun croissant",
         "drinks": "juice soda water"}


# ------------------------------------------------------------------------------ a hand-made world


def jpeg(category: str, seed: int, px: int = 64) -> bytes:
    return jpeg_with_shapes(COLOURS[category], seed, px, shape="ellipse", n_shapes=2, quality=80)


def item_rows(n: int, with_images: bool = True) -> list[tuple]:
    rows = []
    for i in range(n):
        c = CATEGORIES[i % len(CATEGORIES)]
        word = WORDS[c].split()[i % 3]
        rows.append((f"i{i:03d}", f"m{i % 3}", c, f"{word} {i}", f"fresh {c}: {word}, pack {i}",
                     jpeg(c, i) if with_images else b"\xff", 1.0 + (i % 9) * 1.5, T0))
    return rows


def user_rows(n: int) -> list[tuple]:
    return [(f"u{u:03d}", ["18-29", "30-49", "50+"][u % 3], ["single", "family"][u % 2], f"z{u % 4}") for u in range(n)]


def synthetic_world(n_items: int = 32, n_users: int = 16, days: int = 12, seed: int = 3, with_images: bool = True):
    """Items, users, purchases and impressions: each user likes two categories and buys mostly those."""
    rng = random.Random(seed)
    items = item_rows(n_items, with_images)
    users = user_rows(n_users)
    by_cat = {c: [r[0] for r in items if r[2] == c] for c in CATEGORIES}
    events, impressions, truth_imp = [], [], []
    for u, *_ in users:
        liked = rng.sample(CATEGORIES, 2)
        for day in range(days):
            ts = T0 + dt.timedelta(days=day, hours=rng.randrange(12))
            if rng.random() < 0.7:
                item = rng.choice(by_cat[rng.choice(liked)])
                events.append((u, item, ts, "purchase", 2.0))
            for _ in range(2):
                its = ts + dt.timedelta(minutes=rng.randrange(1, 600))
                cat = rng.choice(CATEGORIES)
                item = rng.choice(by_cat[cat])
                p = 0.55 if cat in liked else 0.08
                bought = int(rng.random() < p)
                impressions.append((u, item, its, bought))
                truth_imp.append((u, item, its, p))
    defects = ["none"] * n_items
    for k, d in zip(range(0, n_items, 5), ["text_swap", "image_swap", "vague_text", "blurred_image", "wrong_category"]):
        defects[k] = d
    truth_items = [(r[0], r[2], defects[i], None) for i, r in enumerate(items)]
    return {"items": items, "users": users, "events": events, "impressions": impressions,
            "truth_impressions": truth_imp, "truth_items": truth_items}


def write_world(spark, config, world: dict, skip: tuple[str, ...] = ()) -> None:
    for name, rows in world.items():
        if name in skip:
            continue
        tables.overwrite_table(spark, config, name, spark.createDataFrame(rows, tables.input_schema(spark, name)))


def frames(spark, world: dict) -> dict:
    return {name: spark.createDataFrame(rows, tables.input_schema(spark, name)) for name, rows in world.items()}


def build(spark, config, world: dict, source: str):
    f = frames(spark, world)
    return training_data.build_examples(config, items=f["items"], users=f["users"], events=f["events"],
                                        impressions=f.get("impressions"), source=source)


# ------------------------------------------------------------------------------ leakage


def expected_behaviour(events, user, ts, n, known):
    """The rule in plain Python: the last n purchases of known items strictly before ts, oldest first."""
    past = sorted((e[2], e[1]) for e in events if e[0] == user and e[3] == "purchase" and e[2] < ts and e[1] in known)
    return [item for _, item in past[-n:]]


def test_behaviour_is_strictly_before_the_example(spark, tmp_path):
    config = tiny_config(tmp_path, "model.max_behaviour=3")
    t = lambda h: T0 + dt.timedelta(hours=h)  # noqa: E731
    world = {
        "items": item_rows(12, with_images=False),
        "users": user_rows(3),
        "events": [
            # u000: five purchases before the impression, one AT its time, one after it
            ("u000", "i001", t(1), "purchase", 1.0), ("u000", "i002", t(2), "purchase", 1.0),
            ("u000", "i003", t(3), "purchase", 1.0), ("u000", "i004", t(4), "purchase", 1.0),
            ("u000", "i005", t(5), "purchase", 1.0),
            ("u000", "i006", t(10), "purchase", 1.0),     # same instant as the impression: excluded
            ("u000", "i007", t(11), "purchase", 1.0),     # after: excluded
            ("u000", "i008", t(2), "view", 1.0),          # not a purchase
            ("u000", "i999", t(6), "purchase", 1.0),      # unknown item: not embeddable, dropped
            # u001: buys only after its impression
            ("u001", "i001", t(20), "purchase", 1.0),
            # u002: another user's purchases never leak in
            ("u002", "i009", t(1), "purchase", 1.0),
        ],
        "impressions": [
            ("u000", "i010", t(10), 1), ("u000", "i011", t(4), 0), ("u000", "i001", t(0), 0),
            ("u001", "i010", t(10), 0), ("u002", "i011", t(30), 1),
        ],
    }
    rows = {(r.user_id, r.item_id, r.ts): r for r in build(spark, config, world, "impressions").collect()}
    assert rows[("u000", "i010", t(10))].behaviour == ["i003", "i004", "i005"]   # last 3, oldest first
    assert rows[("u000", "i011", t(4))].behaviour == ["i001", "i002", "i003"]    # the purchase at t(4) is not before t(4)
    assert rows[("u000", "i001", t(0))].behaviour == []
    assert rows[("u001", "i010", t(10))].behaviour == []
    assert rows[("u002", "i011", t(30))].behaviour == ["i009"]
    assert rows[("u000", "i010", t(10))].label == 1 and rows[("u000", "i011", t(4))].label == 0


def test_behaviour_matches_the_rule_on_random_histories(spark, tmp_path):
    config = tiny_config(tmp_path, "model.max_behaviour=3")
    world = synthetic_world(n_items=24, n_users=10, days=10, with_images=False)
    # ties: a purchase at exactly an impression's time, for every user
    world["events"] += [(u, "i000", ts, "purchase", 1.0) for (u, _, ts, _) in world["impressions"][::7]]
    known = {r[0] for r in world["items"]}
    got = build(spark, config, world, "impressions").select("user_id", "ts", "behaviour").collect()
    assert got
    for r in got:
        assert r.behaviour == expected_behaviour(world["events"], r.user_id, r.ts, 3, known), (r.user_id, r.ts)
    # and in Spark, against the table itself: no behaviour item was bought at or after the example's time
    ex = build(spark, config, world, "impressions")
    ev = frames(spark, world)["events"].where("event = 'purchase'")
    exploded = ex.select("example_id", "user_id", "ts", F.posexplode("behaviour").alias("pos", "item_id"))
    earliest = ev.groupBy("user_id", "item_id").agg(F.min("ts").alias("first_bought"))
    assert exploded.join(earliest, ["user_id", "item_id"]).where(F.col("first_bought") >= F.col("ts")).count() == 0


# ------------------------------------------------------------------------------ splits


def test_random_user_split_is_disjoint(spark, tmp_path):
    config = tiny_config(tmp_path, "training.split.rule=random_user", "training.split.valid_fraction=0.1")
    world = synthetic_world(n_items=16, n_users=120, days=3, with_images=False)
    ex = build(spark, config, world, "impressions")
    per_user = ex.groupBy("user_id").agg(F.countDistinct("split").alias("k"), F.first("split").alias("split"))
    assert per_user.where("k > 1").count() == 0
    shares = {r.split: r["count"] / 120 for r in per_user.groupBy("split").count().collect()}
    assert set(shares) == {"train", "valid", "test"}
    assert 0.12 < shares["test"] < 0.40 and shares["train"] > 0.45


def test_time_split_keeps_time_order(spark, tmp_path):
    config = tiny_config(tmp_path, "training.split.rule=time", "training.split.valid_fraction=0.1")
    world = synthetic_world(n_items=16, n_users=30, days=12, with_images=False)
    ex = build(spark, config, world, "impressions")
    span = {r.split: (r.lo, r.hi, r.n) for r in
            ex.groupBy("split").agg(F.min("ts").alias("lo"), F.max("ts").alias("hi"), F.count("*").alias("n")).collect()}
    assert span["train"][1] < span["valid"][0] and span["valid"][1] < span["test"][0]
    total = sum(v[2] for v in span.values())
    assert 0.15 < span["test"][2] / total < 0.35


# ------------------------------------------------------------------------------ sampled negatives


def test_sampled_negatives_when_there_are_no_impressions(spark, tmp_path):
    config = tiny_config(tmp_path, "training.negative_ratio=4", "model.max_behaviour=3")
    world = synthetic_world(n_items=40, n_users=12, days=8, with_images=False)
    world.pop("impressions")
    assert training_data.examples_source(spark, config) == "sampled"   # no impressions table
    tables.ensure_table(spark, config, "impressions")                   # an empty one: still sampled
    assert training_data.examples_source(spark, config) == "sampled"

    ex = build(spark, config, world, "sampled").cache()
    bought = {(e[0], e[1], e[2]) for e in world["events"] if e[3] == "purchase"}
    pos = ex.where("label = 1").collect()
    assert {(r.user_id, r.item_id, r.ts) for r in pos} == bought
    n_pos, n_neg = len(pos), ex.where("label = 0").count()
    assert 3.0 * n_pos <= n_neg <= 4.0 * n_pos                            # self-draws are dropped
    assert set(r.source for r in ex.select("source").distinct().collect()) == {"sampled"}
    # a negative sits at its purchase's time, so it shares the purchase's (strictly earlier) history
    known = {r[0] for r in world["items"]}
    for r in ex.where("label = 0").limit(40).collect():
        assert r.behaviour == expected_behaviour(world["events"], r.user_id, r.ts, 3, known)
    for r in pos[:40]:
        assert r.item_id not in r.behaviour or any(
            e[0] == r.user_id and e[1] == r.item_id and e[2] < r.ts for e in world["events"])
    # a negative is never the purchase it was drawn for (one purchase per user and time here)
    negatives = {(r.user_id, r.item_id, r.ts) for r in ex.where("label = 0").select("user_id", "item_id", "ts").collect()}
    assert not negatives & bought
    assert ex.select("example_id").distinct().count() == ex.count()
    ex.unpersist()


def test_vocab_from_spark(spark, tmp_path):
    world = synthetic_world(n_items=40, n_users=12, days=2, with_images=False)
    f = frames(spark, world)
    vocab = training_data.fit_vocab(f["items"], f["users"], n_price_buckets=4)
    assert vocab.categories == sorted(CATEGORIES)
    assert len(vocab.price_edges) <= 3 and vocab.price_edges == sorted(vocab.price_edges)
    assert vocab.user_values["zone"] == ["z0", "z1", "z2", "z3"]


def test_dropped_rows_name_every_left_out_row_and_its_reason(spark):
    """An impression or purchase of an invalid item or of a user missing from users is left out, with why."""
    items = spark.createDataFrame([("a",), ("b",)], "item_id string")
    users = spark.createDataFrame([("u1",)], "user_id string")
    events = spark.createDataFrame([
        ("u1", "a", T0, "purchase", 1.0), ("u1", "zz", T0, "purchase", 1.0), ("u9", "a", T0, "purchase", 1.0),
        ("u1", "zz", T0, "view", 1.0)], "user_id string, item_id string, ts timestamp, event string, price double")
    impressions = spark.createDataFrame([("u1", "b", T0, 1), ("u9", "zz", T0, 0)],
                                        "user_id string, item_id string, ts timestamp, bought int")
    got = sorted((r.source, r.key.split("|")[0], r.key.split("|")[1], r.reason) for r in training_data.dropped_rows(
        items=items, users=users, events=events, impressions=impressions, source="impressions").collect())
    assert got == [("events", "u1", "zz", "item: unknown or invalid"), ("events", "u9", "a", "user: unknown"),
                   ("impressions", "u9", "zz", "item: unknown or invalid; user: unknown")]
    sampled = training_data.dropped_rows(items=items, users=users, events=events, impressions=impressions, source="sampled")
    assert sampled.where("source = 'impressions'").count() == 0   # impressions are not read when examples are sampled


def test_chunk_count_follows_the_examples_and_a_chunk_has_at_most_one_home_item_per_example():
    from pipeline.training_data import home_fraction, n_chunks_for

    assert n_chunks_for(20_000, 500, 1) == 40                                      # the examples alone
    assert n_chunks_for(104_000, 100_000, 2) == 2                                  # the demo: one chunk per process
    assert n_chunks_for(10, 500, 4) == 4                                           # at least one per process
    assert all(n_chunks_for(e, 64, 3) % 3 == 0 for e in (1, 500, 9_999))
    assert home_fraction(20_000, 2, 100_000) == 1.0                                 # the demo: every item has a home
    assert home_fraction(20_000, 40, 500) == 1.0
    assert home_fraction(1_000_000, 40, 500) == 40 * 500 / 1_000_000                # 1M items: a 2% sample


def test_past_one_per_example_a_stable_sample_of_items_has_a_home(spark):
    from pipeline.training_data import chunk_items

    items = spark.createDataFrame([(f"i{k:05d}", "fruit", 1.0, b"t", 1, b"i") for k in range(4_000)],
                                  "item_id string, category string, price double, text_emb binary, n_text_tokens int, image_emb binary")
    examples = spark.createDataFrame([(3, "i00001", ["i00002"])], "bucket int, item_id string, behaviour array<string>")
    every = chunk_items(examples, items, 4).where("home")
    some = chunk_items(examples, items, 4, fraction=0.25).where("home")
    assert every.count() == 4_000 and every.select("item_id").distinct().count() == 4_000
    n = some.count()
    assert 900 < n < 1_100 and some.select("item_id").distinct().count() == n          # each sampled item once
    assert sorted(r.item_id for r in some.collect()) == sorted(r.item_id for r in chunk_items(
        examples, items, 4, fraction=0.25).where("home").collect())                   # the same sample every time
    referenced = {r.item_id for r in chunk_items(examples, items, 4, fraction=0.25).where("chunk = 3").collect()}
    assert {"i00001", "i00002"} <= referenced                                          # examples' items stay whatever the sample
