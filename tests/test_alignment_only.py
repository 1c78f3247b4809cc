"""A catalogue of photos and texts alone: alignment-only training and a night without a CVR stage.

Real Spark + Delta and the real (frozen) encoders. The training world is test_training's hand-made
one without users, events or impressions; the night is test_nightly's world without users and
candidates, scored by its real CameNN that does have a cvr head (so the skip comes from the data).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pytest
from conftest import tiny_config
from pyspark.sql import functions as F
from test_feature_cache import clean_items, poison_items, write_items
from test_training import FAST
from test_training_data import synthetic_world, write_world

from pipeline import flag_rules, nightly, run_record, tables

RUN = dt.date(2026, 11, 24)
N_CLEAN = 20


@pytest.fixture(scope="module")
def photos_only(spark, tmp_path_factory):
    """Items (title, description, photo, category, price) and nothing else: no users, events, impressions."""
    root = tmp_path_factory.mktemp("photos-only")
    config = tiny_config(root, *FAST)
    write_world(spark, config, {"items": synthetic_world(n_items=28, n_users=4, days=2)["items"]})
    return config


def test_alignment_only_training_without_users_or_purchases(spark, photos_only, caplog):
    from camenn.checkpoint import load_artifact
    from pipeline.train import run_training

    with caplog.at_level(logging.INFO, logger="camenn"):
        result = run_training(spark, photos_only)

    assert "training the alignment tasks ita, tia alone" in caplog.text
    art = load_artifact(result.artifact)
    assert art.metadata["tasks"] == ["ita", "tia"] == list(art.config.tasks)
    assert art.metadata["alignment_only"] is True
    m = result.metrics
    assert "cvr_auc" not in m and m["n_items"] > 0
    for key in ("ita_acc", "tia_acc", "ita_auc", "tia_auc"):
        assert 0.0 <= m[key] <= 1.0, (key, m)
    assert m["epochs_run"] >= 1 and all("valid_loss_cvr" not in h for h in art.metadata["history"])
    # the pinned inputs are the items and their features; there was nothing else to pin
    assert {"users", "events"}.isdisjoint(art.metadata["table_versions"])
    assert art.metadata["example_counts"].get("items_valid") == 28
    # the snapshot the night tells new listings from: every item an alignment item, with the content it was trained on
    snapshot = tables.read_table(spark, photos_only, "training_items", version=art.metadata["table_versions"]["training_items"])
    items = {r.item_id: r.content_hash for r in tables.read_table(spark, photos_only, "items").collect()}
    assert {r.item_id: r.content_hash for r in snapshot.where("home").collect()} == items
    json.dumps(art.metadata)
    assert "cvr_auc" not in result.summary() and "ita_acc" in result.summary()


def test_model_tasks_without_cvr_train_alignment_alone_beside_purchases(spark, tmp_path):
    """model.tasks [ita, tia] on a world with users and purchases: no CVR examples are built."""
    from camenn.checkpoint import load_artifact
    from pipeline.train import run_training

    config = tiny_config(tmp_path, *FAST, "model.tasks=[ita, tia]")
    world = synthetic_world(n_items=24, n_users=6, days=3)
    write_world(spark, config, {k: v for k, v in world.items() if k in ("items", "users", "events")})
    result = run_training(spark, config)
    assert not any(k.startswith(("train_", "valid_", "test_")) for k in result.data.counts), result.data.counts
    assert load_artifact(result.artifact).metadata["tasks"] == ["ita", "tia"]


@pytest.fixture(scope="module")
def catalogue_only(spark, tmp_path_factory):
    """test_nightly's items (20 clean, 5 poison) and a real CameNN with a cvr head; no users, events or candidates."""
    from test_nightly import make_artifact

    config = tiny_config(tmp_path_factory.mktemp("catalogue-only"))
    write_items(spark, config, clean_items(N_CLEAN) + poison_items(100))
    make_artifact(config, Path(config.model_dir), seed=0)
    return config


def test_night_without_users_or_candidates_scores_alignment_and_records_the_skip(spark, catalogue_only, caplog):
    config = catalogue_only
    nightly.check_inputs(spark, config)   # items and a model are all a night needs
    with caplog.at_level(logging.INFO, logger="pipeline"):
        result = nightly.run(spark, config, RUN)

    assert result.status == "succeeded", result.summary()
    c = result.counts
    assert c["items_in"] == c["items_valid"] + c["items_quarantined"] and c["items_scored"] == N_CLEAN
    assert "candidates_in" not in c and "cvr_scores" not in result.outputs
    assert "no `users` table" in result.skipped["cvr"] and "cvr: skipped: no `users` table" in result.summary()
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("4/5 cvr")] == \
        [f"4/5 cvr: skipped: {result.skipped['cvr']}"]
    align = run_record.published(spark, config, "item_alignment", RUN, job=nightly.JOB)
    assert align.count() == N_CLEAN
    row = tables.read_table(spark, config, "runs").where(
        (F.col("run_id") == result.run_id) & (F.col("status") == "succeeded")).first()
    details = json.loads(row.details)
    assert details["skipped"] == {"cvr": result.skipped["cvr"]} and row.counts["cvr_skipped"] == 1
    # the share of items under each threshold, recorded from the flag counts, is the share of the published scores
    thr = details["thresholds"]
    expected = {task: align.where(F.col(f"p_{task}") < thr[task]).count() / N_CLEAN for task in ("ita", "tia")}
    assert details["thresholds"]["share_below"] == pytest.approx(expected, abs=1e-12)


def test_a_recentred_night_moves_its_thresholds_to_its_own_median_and_records_the_move(spark, catalogue_only):
    """scoring.thresholds.recentre with absolute thresholds and their centres: the night takes the median of
    its own scores, moves each threshold by its logit distance from the centre, flags by the moved ones
    and records both."""
    import numpy as np

    from pipeline.report.advice import FlagRule

    root, night = Path(catalogue_only.data.root).parent, RUN + dt.timedelta(days=1)
    config = tiny_config(root, "scoring.thresholds.ita=0.6", "scoring.thresholds.tia=0.6", "scoring.thresholds.recentre=true",
                         "scoring.thresholds.centre_ita=0.999", "scoring.thresholds.centre_tia=0.001")
    result = nightly.run(spark, config, night)
    assert result.status == "succeeded", result.summary()
    align = run_record.published(spark, config, "item_alignment", night, job=nightly.JOB).toPandas()
    thr = run_record.published_details(spark, config, run_record.SCORING_JOB, night)["thresholds"]
    logit = lambda p: np.log(p / (1 - p))                                                   # noqa: E731
    for task, centre in (("ita", 0.999), ("tia", 0.001)):
        scores = np.sort(align[f"p_{task}"].to_numpy())
        assert thr["night_median"][task] == pytest.approx(scores[(len(scores) - 1) // 2])   # the lower middle, as Spark's
        assert thr["before_recentre"][task] == 0.6
        shift = min(0.0, logit(thr["night_median"][task]) - logit(centre))                  # down only
        assert logit(thr[task]) == pytest.approx(logit(0.6) + shift)
        assert thr["share_below"][task] == pytest.approx((scores < thr[task]).mean())
    under = (align["p_ita"] < thr["ita"]) | (align["p_tia"] < thr["tia"])
    assert (align["flag"] == under).all()
    assert thr["night_median"]["ita"] < 0.999 and thr["ita"] < 0.6         # a night under its centre: moved down
    assert thr["night_median"]["tia"] > 0.001 and thr["tia"] == 0.6        # one over it: not moved up
    assert "moved down from ITA 0.600 / TIA 0.600" in FlagRule.of(thr, config.scoring.thresholds).summary()
    unmoved = {**thr, "ita": 0.6, "tia": 0.6}
    assert ", not moved: tonight's median listing" in FlagRule.of(unmoved, config.scoring.thresholds).summary()
    # the artifact pins no training snapshot: nothing tells new listings from trained ones, so the median is all of them
    assert thr["recentred_over"]["listings"] == "all" and thr["recentred_over"]["n"] == N_CLEAN
    assert thr["recentred_over"]["why"].startswith("the model pins no training_items version")


def snapshot_of(spark, config, home: dict[str, str | None], referenced: list[str]) -> int:
    """A training_items version whose alignment (home) rows are ``home`` (item_id -> the content hash it was
    trained on, None in a table from before the column) and whose other rows are ``referenced`` (items a CVR
    example named, never an alignment item); the features are placeholders the night never reads."""
    rows = [(k % 2, item_id, is_home, "c", 1.0, b"t", 1, b"i", None, content)
            for k, (item_id, is_home, content) in enumerate([(i, True, h) for i, h in home.items()]
                                                            + [(i, False, None) for i in referenced])]
    tables.overwrite_table(spark, config, "training_items", spark.createDataFrame(rows, tables.schema_of(spark, "training_items")))
    return tables.table_version(spark, config, "training_items")


def test_a_recentred_night_takes_its_median_over_the_listings_new_to_the_model(spark, catalogue_only, tmp_path):
    """The model pins a training snapshot holding 12 of the 20 listings as alignment items, one of them with other
    content than it has now: the night's median is the other 9's. Fewer new listings than min_new_listings, or no
    readable snapshot, take the whole night's, and the runs row says which and why."""
    import numpy as np
    from test_nightly import make_artifact

    from camenn.config import ThresholdConfig
    from pipeline.report.advice import FlagRule

    root, night = Path(catalogue_only.data.root).parent, RUN + dt.timedelta(days=2)
    ids = [f"i{i:03d}" for i in range(N_CLEAN)]
    content = {r.item_id: r.content_hash for r in tables.read_table(spark, catalogue_only, "items").collect()}
    known, edited = ids[:11], ids[11]                    # edited: trained on, its photo or text changed since
    model_dir = tmp_path / "model"
    settings = ("scoring.thresholds.ita=0.6", "scoring.thresholds.tia=0.6", "scoring.thresholds.recentre=true",
                "scoring.thresholds.centre_ita=0.999", "scoring.thresholds.centre_tia=0.999")
    config = tiny_config(root, f"scoring.model_dir={model_dir}", *settings, "scoring.thresholds.min_new_listings=9")
    # one new listing is referenced by a CVR example in the snapshot: not an alignment item, still new
    version = snapshot_of(spark, config, {**{i: content[i] for i in known}, edited: "content-before-the-edit"}, [ids[12]])
    make_artifact(config, model_dir, seed=1, table_versions={"training_items": version})
    result = nightly.run(spark, config, night)
    assert result.status == "succeeded", result.summary()
    published = run_record.published(spark, config, "item_alignment", night, job=nightly.JOB)
    align = published.toPandas().set_index("item_id")
    thr = run_record.published_details(spark, config, run_record.SCORING_JOB, night)["thresholds"]
    assert thr["recentred_over"] == {"listings": "new", "n": N_CLEAN - len(known), "scored": N_CLEAN}
    new = align.drop(index=known)
    logit = lambda p: np.log(p / (1 - p))                                                   # noqa: E731
    for task in ("ita", "tia"):
        scores = np.sort(new[f"p_{task}"].to_numpy())
        assert thr["night_median"][task] == pytest.approx(scores[(len(scores) - 1) // 2])   # the new listings' lower middle
        assert logit(thr[task]) == pytest.approx(logit(0.6) + min(0.0, logit(thr["night_median"][task]) - logit(0.999)))
    everyone = np.sort(align["p_ita"].to_numpy())
    assert thr["night_median"]["ita"] != pytest.approx(everyone[(N_CLEAN - 1) // 2])        # not the whole night's
    assert "the median of tonight's 9 listings new to the model" in FlagRule.of(thr, config.scoring.thresholds).summary()

    # the same scores under the other cases, through the night's own function, with their content as the night has it
    scored = published.join(tables.read_table(spark, config, "items").select("item_id", "content_hash"), "item_id")

    def recentred_over(min_new: int, pinned: dict, scores=scored):
        rule = ThresholdConfig(ita=0.6, tia=0.6, recentre=True, centre_ita=0.999, centre_tia=0.999, min_new_listings=min_new)
        moved, record = flag_rules.night_recentred(spark, config, scores, rule, {"table_versions": pinned})
        over = record["recentred_over"]
        pool = everyone if over["listings"] == "all" else np.sort(align.loc[~align.index.isin(ids[:N_CLEAN - over["n"]]),
                                                                            "p_ita"].to_numpy())
        assert record["night_median"]["ita"] == pytest.approx(pool[(over["n"] - 1) // 2])
        return over

    assert recentred_over(9, {"training_items": version}) == thr["recentred_over"]
    # by id alone, the edited listing is known: scores without their content, or a snapshot without it
    assert recentred_over(8, {"training_items": version}, published)["n"] == 8
    by_id = snapshot_of(spark, config, {i: None for i in ids[:12]}, [ids[12]])
    assert recentred_over(8, {"training_items": by_id}) == {"listings": "new", "n": 8, "scored": N_CLEAN}
    assert recentred_over(10, {"training_items": version}) == {
        "listings": "all", "n": N_CLEAN, "scored": N_CLEAN,
        "why": "9 of 20 listings are new to the model, under scoring.thresholds.min_new_listings 10"}
    assert recentred_over(8, {"training_items": by_id + 7})["why"].startswith(
        f"training_items version {by_id + 7} is not readable at ")
    assert recentred_over(8, {})["why"].startswith("the model pins no training_items version")


def test_cvr_skip_reasons(spark, catalogue_only, tmp_path):
    from camenn.predictor import Predictor

    config = catalogue_only
    model = Predictor.load(config.model_dir, device="cpu")
    assert "no `users` table" in nightly.cvr_skip_reason(spark, config, model)
    tables.overwrite_table(spark, config, "users", spark.createDataFrame([], tables.schema_of(spark, "users")))
    assert nightly.cvr_skip_reason(spark, config, model) == "the `users` table is empty"
    tables.overwrite_table(spark, config, "users", spark.createDataFrame(
        [("u0", "18-25", "single", "north")], tables.schema_of(spark, "users")))
    assert "no `candidates` table" in nightly.cvr_skip_reason(spark, config, model)
    candidates = spark.createDataFrame([(RUN, "u0", "i000")], tables.schema_of(spark, "candidates"))
    assert nightly.cvr_skip_reason(spark, config, model, candidates) is None   # given candidates stand in
    no_cvr = type("M", (), {"tasks": ("ita", "tia"), "version": "v"})()
    assert "has no cvr head" in nightly.cvr_skip_reason(spark, config, no_cvr)


def test_a_calibrated_night_says_when_far_more_items_fall_under_a_threshold_than_held_out_ones_did():
    from camenn.config import ThresholdConfig

    counts = {flag_rules.TEXT_SUSPECT: 10, flag_rules.IMAGE_SUSPECT: 2, flag_rules.BOTH_SUSPECT: 5, None: 83}
    shares = flag_rules.share_below(counts, 100)
    assert shares == pytest.approx({"ita": 0.15, "tia": 0.07})
    two = flag_rules.calibration_warnings(shares, ThresholdConfig(mode="calibrated", quantile=0.02))   # limit 6%
    assert [line.split(" of ")[0] for line in two] == ["calibration: 15.0%", "calibration: 7.0%"]
    assert "under the ITA threshold" in two[0] and "held-out items had 2%" in two[0]
    assert flag_rules.calibration_warnings(shares, ThresholdConfig(mode="calibrated", quantile=0.05)) == []   # 15% = 3 x 5%
    assert flag_rules.calibration_warnings(shares, ThresholdConfig(mode="calibrated", quantile=0.05, warn_ratio=2)) == \
        [flag_rules.calibration_warnings(shares, ThresholdConfig(mode="calibrated", quantile=0.02))[0].replace("2%", "5%")]
    assert flag_rules.calibration_warnings(shares, ThresholdConfig(mode="absolute", ita=0.9)) == []   # no held-out share to compare


def test_a_calibrated_night_says_when_its_thresholds_were_taken_over_other_views():
    from camenn.config import ThresholdConfig

    calibrated = ThresholdConfig(mode="calibrated", quantile=0.02)
    over_4 = {"calibration_views": 4, "calibration_items": 259, "calibration_items_over_views": 259}
    assert flag_rules.views_warnings(calibrated, over_4, 4) == []
    assert flag_rules.views_warnings(ThresholdConfig(mode="absolute"), over_4, 0) == []   # nothing calibrated
    assert flag_rules.views_warnings(calibrated, over_4, 0) == [
        "calibration: the model's thresholds are quantiles of its held-out items scored over their photo and 4 test-time "
        "view(s), and this night scores over the photo and 0: retrain the model with scoring.test_time_views=0 (or set "
        "that back to 4)"]
    # a model from before views were recorded was calibrated on the photo alone
    assert flag_rules.views_warnings(calibrated, {}, 0) == [] and "over their photo and 0 test-time" in \
        flag_rules.views_warnings(calibrated, {}, 4)[0]
    partly = {**over_4, "calibration_items_over_views": 200}
    assert flag_rules.views_warnings(calibrated, partly, 4) == [
        "calibration: only 200 of the model's 259 held-out items were scored over 4 test-time views when its "
        "thresholds were taken, the others on their photo alone: retrain it"]


def test_a_rescaled_night_stretches_its_thresholds_by_its_lower_half_and_records_its_quartiles(spark, catalogue_only):
    """scoring.thresholds.rescale: the night takes the lower quartile beside the median, and each threshold's
    distance under its centre grows by as much as the night's median-to-quartile distance exceeds the centre's."""
    import numpy as np

    from camenn.config import ThresholdConfig
    from camenn.logits import logit
    from pipeline.report.advice import FlagRule

    rng = np.random.default_rng(3)
    p = 1 / (1 + np.exp(-rng.normal(2.0, 3.0, size=(2, 401))))            # (ita/tia, listings), wider than the centres'
    scores = spark.createDataFrame([(f"i{k:03d}", float(p[0, k]), float(p[1, k])) for k in range(401)],
                                   "item_id string, p_ita double, p_tia double")
    rule = ThresholdConfig(ita=0.6, tia=0.6, recentre=True, rescale=True, centre_ita=0.999, centre_tia=0.999,
                           quartile_ita=0.995, quartile_tia=0.998)
    moved, record = flag_rules.night_recentred(spark, catalogue_only, scores, rule, {})   # no snapshot: all listings
    for k, task in enumerate(("ita", "tia")):
        s = np.sort(p[k])
        median, quartile = record["night_median"][task], record["night_quartile"][task]
        assert (median, quartile) == (pytest.approx(s[200]), pytest.approx(s[100]))      # Spark's ranks: the 201st and 101st
        gap = logit(0.6) - logit(0.999)
        stretch = (logit(median) - logit(quartile)) / (logit(0.999) - logit(getattr(rule, f"quartile_{task}")))
        assert stretch > 1
        assert logit(getattr(moved, task)) == pytest.approx(logit(0.999) + min(0.0, logit(median) - logit(0.999)) + gap * stretch)
    assert moved.tia < moved.ita       # the narrower held-out TIA stretches further
    recorded = {**rule.model_dump(), **record, "ita": moved.ita, "tia": moved.tia}
    assert "and further by as much as their lower half" in FlagRule.of(recorded, rule).summary()
    assert "further" not in FlagRule.of({**recorded, "rescale": False}, rule).summary()


def test_a_contrasted_night_flags_each_side_against_the_other_as_the_config_says(spark, catalogue_only):
    """scoring.thresholds.contrast: Spark's flags and sides are ThresholdConfig.below's on the same scores, a listing
    whose two sides are both low is spared where one low side beside a high one is flagged, and the report says so."""
    import numpy as np

    from camenn.config import ThresholdConfig
    from pipeline.report.advice import FlagRule

    rng = np.random.default_rng(5)
    common = rng.normal(0.0, 1.5, size=400)                                  # how unusual the photo is: both sides
    p = 1 / (1 + np.exp(-(2.0 + common + rng.normal(0.0, 0.7, size=(2, 400)))))   # (ita/tia, listings)
    p[0, :20] = 1 / (1 + np.exp(-(2.0 + np.abs(common[:20]) - 4.0)))          # 20 text swaps: ITA low, TIA as it was
    scores = spark.createDataFrame([(f"i{k:03d}", "Apple", float(p[0, k]), float(p[1, k])) for k in range(400)],
                                   "item_id string, category string, p_ita double, p_tia double")
    rule = ThresholdConfig(ita=0.3, tia=0.3, recentre=True, centre_ita=0.95, centre_tia=0.95, contrast=0.3)
    moved, record = flag_rules.night_recentred(spark, catalogue_only, scores, rule, {})
    assert (moved.contrast_ita, moved.contrast_tia) == (record["night_median"]["ita"], record["night_median"]["tia"])
    got = {r.item_id: r.suspect_side for r in flag_rules.alignment_flags(scores, moved).collect()}
    low_ita, low_tia = moved.below(p[0], p[1])
    want = {f"i{k:03d}": ("both" if a and b else "text" if a else "image" if b else None) for k, (a, b) in enumerate(zip(low_ita, low_tia))}
    assert got == want
    alone = {r.item_id: r.suspect_side for r in flag_rules.alignment_flags(scores, moved.model_copy(update={"contrast": 0.0})).collect()}
    spared = [i for i in alone if alone[i] and not got[i]]
    assert spared and all(int(i[1:]) >= 20 for i in spared)                  # only clean listings are spared
    assert sum(bool(got[f"i{k:03d}"]) for k in range(20)) >= sum(bool(alone[f"i{k:03d}"]) for k in range(20))
    empty = scores.limit(0)                                                  # a night with nothing scored: no medians
    kept, none = flag_rules.night_recentred(spark, catalogue_only, empty, rule, {})
    assert (kept.contrast, none) == (0.0, {}) and flag_rules.alignment_flags(empty, kept).count() == 0
    recorded = {**moved.model_dump(), **record}
    assert "each side read against the other" in FlagRule.of(recorded, rule).summary()
    assert "against the other" not in FlagRule.of({**recorded, "contrast": 0.0}, rule).summary()
