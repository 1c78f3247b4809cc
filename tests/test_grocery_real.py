"""Real photos in CI: the GroceryStore benchmark and its planted-swap night on 42 photos (tests/grocery_mini).

The whole real-data chain at a size CI affords: benchmarks/bench_grocery.py ingests the photos
through jobs/ingest_catalog.py, trains two variants (random and same-class negatives) alignment
only with the real frozen encoders, and scores the validation photos beside the pooled probe;
benchmarks/bench_grocery_flags.py plants a text and an image swap and runs the nightly job on
them; bench_grocery_reference.py rescores the same pairs against reference listings, and
bench_grocery_crossfit.py's fold copy of the tables is checked on them. The figures of a few
steps on 30 photos mean nothing; what is asserted is what the
pipeline must give on any data: every photo lands, every pair is scored, the same-class pairs
exist, the probe on the real encoders' features ranks random pairs above chance.

One file (~510 lines) because its tests share the module's trained mini benchmark (minutes to build)
and the committed chain results they read back; split, each file would train it again.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

MINI = Path(__file__).parent / "grocery_mini"
BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


# conf/grocery.yaml's variant (Makefile GROCERY_TRAIN_ARGS): both-side labels and the alignment skip,
# so the nightly job below scores with a model whose heads read the pooled cosine
SKIP = "training.hard_negative_share=0.5,training.contrastive_weight=1.0,training.same_category_swaps=both_sides," \
       "model.alignment_skip=true"


def with_sets(argv: list[str], sets: list[str]) -> list[str]:
    """A bench's command line with the fixture's ``--set`` overrides, as its own run was given them."""
    return [*argv, *(x for s in sets for x in ("--set", s))]


@pytest.fixture(scope="module")
def bench(spark, tmp_path_factory):
    sys.path.insert(0, str(BENCH))
    import bench_grocery

    root = tmp_path_factory.mktemp("grocery")
    sets = ["training.epochs=1", "training.steps_per_epoch=3", "training.alignment_batch_size=16",
            "training.split.test_fraction=0.3",   # held-out training photos to calibrate the thresholds on
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}"]
    return root, sets, bench_grocery.main(with_sets(
        ["--data", str(MINI), "--root", str(root), "--variant", "baseline", "--variant", "hard",
         "--variant", f"skip:{SKIP}", "--val-views", "1", "--json", str(root / "bench.json")], sets))


def test_bench_grocery_scores_every_variant_and_the_probe_on_real_photos(bench):
    root, _, figures = bench
    # 42 photos and one test-time view of each validation photo
    assert figures["photos"] == {"train": 30, "val": 12, "in_store": 54, "products": 6, "coarse_classes": 3}
    assert json.loads((root / "bench.json").read_text())["table"] == figures["table"]
    assert set(figures["variants"]) == {"baseline", "hard", "skip"}
    assert figures["variants"]["hard"]["overrides"] == ["training.hard_negative_share=0.5"]
    # the skip's two scales (ITA, TIA) are the only parameters it adds
    assert figures["variants"]["skip"]["params"] == figures["variants"]["hard"]["params"] + 2
    rows = {**{f"camenn {k}": v for k, v in figures["validation"]["camenn"].items()}, "probe": figures["validation"]["probe"]}
    for name, kinds in rows.items():
        for kind in ("random", "hard"):   # every validation photo has a photo of another product of its class
            for task in ("ita", "tia"):
                m = kinds[kind][task]
                assert m["n"] == 12 and 0.0 <= m["acc"] <= 1.0 and 0.0 <= m["auroc"] <= 1.0, (name, kind, task, m)
    for kinds in figures["validation"]["camenn_cosine"].values():   # the pooled cosine alone, per variant
        assert set(kinds) == {"random", "hard"} and all(0.0 <= m[t]["auroc"] <= 1.0 for m in kinds.values() for t in m)
    # the same 12 pairs again as the mean over each photo and its view, for every variant and the probe
    views = {**figures["validation"]["camenn_views"], "probe": figures["validation"]["probe_views"]}
    assert set(views) == {"baseline", "hard", "skip", "probe"}
    assert all(kinds[kind][task]["n"] == 12 for kinds in views.values() for kind in ("random", "hard") for task in ("ita", "tia"))
    probe = figures["validation"]["probe"]["random"]
    assert probe["ita"]["auroc"] > 0.6 and probe["tia"]["auroc"] > 0.6, probe
    # the training job reports same-category negatives beside random ones
    held = figures["variants"]["hard"]["training_held_out"]
    assert {"ita_acc", "tia_acc"} <= set(held)
    # each variant is also read at its own cut, the one its training recorded from its held-out pairs
    for name, kinds in figures["validation"]["camenn"].items():
        cuts = figures["variants"][name]["training_held_out"]
        for kind in ("random", "hard"):
            for task in ("ita", "tia"):
                m = kinds[kind][task]
                assert m["model_cut"] == cuts[f"{task}_cut"] and 0.0 <= m["acc_at_model_cut"] <= 1.0, (name, kind, task)


def test_planted_swaps_go_through_the_nightly_job(bench):
    import bench_grocery_flags

    root, sets, _ = bench
    flags = bench_grocery_flags.main(with_sets(["--data", str(MINI), "--bench-root", str(root), "--variant", "skip",
                                                "--share", "0.1", "--recentre", "--json", str(root / "flags.json")], sets))
    assert flags["items_scored"] == 12
    assert flags["plants"]["text"] == 1 and flags["plants"]["image"] == 1
    job = flags["job_flags"]
    assert job["n_damaged"] == 2 and job["n_clean"] == 10
    assert 0.0 <= job["auroc"] <= 1.0 and 0.0 <= job["precision"] <= 1.0 and 0.0 <= job["recall"] <= 1.0
    across = [i for i, kind in flags["plants"]["kinds"].items() if "another class" in kind]
    assert (job["right_side_named_across_classes"] is None) == (not across)
    # the calibrated thresholds are quantiles of real scores, and the job flagged by them (not by
    # conf/grocery.yaml's own mode, which it did until 2026-12-03)
    assert 0.0 < flags["thresholds"]["ita"] < 1.0 and 0.0 < flags["thresholds"]["tia"] < 1.0
    # taken over each held-out photo and the night's test-time views (conf/grocery.yaml), as the night scores
    thr = flags["thresholds"]
    assert thr["views"] > 0 and thr["n_over_views"] == thr["n_held_out"] >= 2, thr
    assert job["flagged"] == flags["below_the_thresholds"]
    # other rules, read on the same scores; the held-out quantile at the bench's own quantile is the job's before the move
    assert flags["rules"]["held-out quantile"]["0.02"]["thresholds"] == pytest.approx({"ita": thr["ita"], "tia": thr["tia"]})
    assert all(0.0 <= m["precision"] <= 1.0 and 0.0 <= m["recall"] <= 1.0
               for by_q in flags["rules"].values() for m in by_q.values())
    # --recentre: the job moved the held-out quantiles by its night's median against the held-out photos' median
    applied = flags["applied_thresholds"]
    assert applied["before_recentre"] == {"ita": thr["ita"], "tia": thr["tia"]}
    for task in ("ita", "tia"):
        logit = lambda p: math.log(p / (1 - p))   # noqa: E731
        assert logit(applied[task]) == pytest.approx(logit(thr[task]) + min(0.0, logit(applied["night_median"][task])
                                                                            - logit(thr[f"centre_{task}"])))
    assert job["oracle_precision_at_recall_0.8"] is not None and 0.0 < job["oracle_precision_at_recall_0.8"] <= 1.0
    assert job["flagged"] == sum(v["flagged"] for v in flags["by_plant"].values()) + round(
        job["clean_flagged_share"] * job["n_clean"])


def test_augmented_views_are_new_photos_of_the_same_product(tmp_path):
    sys.path.insert(0, str(BENCH))
    import bench_grocery
    from PIL import Image

    classes = bench_grocery.read_classes(MINI)
    rows = bench_grocery.read_split(MINI, "train", classes, None)[:2]
    views = bench_grocery.augment_photos(rows, MINI, tmp_path / "a", 2, seed=3)
    again = bench_grocery.augment_photos(rows, MINI, tmp_path / "b", 2, seed=3)

    assert [v["photo_id"] for v in views] == [f"{r['photo_id']}-aug{j}" for r in rows for j in (1, 2)]
    for v, w in zip(views, again):
        src = next(r for r in rows if v["photo_id"].startswith(r["photo_id"] + "-"))
        assert {k: v[k] for k in ("product", "description", "coarse_class", "fine_class")} == \
            {k: src[k] for k in ("product", "description", "coarse_class", "fine_class")}
        view, photo = Image.open(tmp_path / "a" / v["path"]), Image.open(MINI / src["path"])
        assert view.size[0] <= photo.size[0] and view.size[1] <= photo.size[1]
        assert (tmp_path / "a" / v["path"]).read_bytes() == (tmp_path / "b" / w["path"]).read_bytes()   # seeded
    assert (tmp_path / "a" / views[0]["path"]).read_bytes() != (tmp_path / "a" / views[1]["path"]).read_bytes()
    # with the training job's split: K views a photo, every one of them in its "train" split
    from camenn.training import item_split

    def in_train(item_id: str) -> bool:
        return item_split(item_id, 0.1, 0.1, 0) == "train"

    kept = bench_grocery.augment_photos(rows, MINI, tmp_path / "c", 3, seed=3, in_train=in_train)
    assert [v["photo_id"].rsplit("-aug", 1)[0] for v in kept] == [r["photo_id"] for r in rows for _ in range(3)]
    assert all(in_train(v["photo_id"]) for v in kept)
    skipped = [f"{r['photo_id']}-aug{j}" for r in rows for j in range(1, 30) if not in_train(f"{r['photo_id']}-aug{j}")]
    assert skipped and not {v["photo_id"] for v in kept} & set(skipped)


def test_a_colour_view_is_the_same_crop_with_other_colours(tmp_path):
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(BENCH))
    import bench_grocery

    row = bench_grocery.read_split(MINI, "train", bench_grocery.read_classes(MINI), None)[0]
    photo = Image.open(MINI / row["path"]).convert("RGB")
    plain = bench_grocery.random_view(photo, np.random.default_rng(7))
    again = bench_grocery.random_view(photo, np.random.default_rng(7), 0.0)
    coloured = bench_grocery.random_view(photo, np.random.default_rng(7), 0.15)
    assert np.array_equal(np.asarray(plain), np.asarray(again))     # colour 0: the views of the runs before it
    assert coloured.size == plain.size                               # the colour draws come after the crop's
    a, b = np.asarray(plain, float).reshape(-1, 3).mean(0), np.asarray(coloured, float).reshape(-1, 3).mean(0)
    assert np.abs(b / a - 1).max() > 0.02 and np.std(b / a) > 0.005, (a, b)   # channels moved, not all alike


def test_test_time_views_average_in_logits():
    import numpy as np

    sys.path.insert(0, str(BENCH))
    from bench_grocery import mean_logit

    run = {"ita": (np.array([0.9, 0.2]), np.array([0.3, 0.6]))}
    same = mean_logit([run, run])["ita"]
    assert np.allclose(same[0], run["ita"][0]) and np.allclose(same[1], run["ita"][1])
    flipped = {"ita": (1 - run["ita"][0], 1 - run["ita"][1])}
    assert np.allclose(mean_logit([run, flipped])["ita"][0], 0.5)       # logits +z and -z
    skewed = mean_logit([{"ita": (np.array([0.99]), np.array([0.5]))}, {"ita": (np.array([0.5]), np.array([0.5]))}])
    z = np.log(0.99 / 0.01) / 2                                           # the mean of logit(0.99) and logit(0.5) = 0
    assert skewed["ita"][0][0] == pytest.approx(1 / (1 + np.exp(-z)))      # 0.909, where the mean of p is 0.745


def test_oracle_precision_is_that_of_the_first_threshold_reaching_the_recall():
    import numpy as np

    sys.path.insert(0, str(BENCH))
    from bench_grocery_flags import oracle_precision

    y = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0], bool)
    suspicion = np.linspace(1, 0, 10)
    assert oracle_precision(y, suspicion, 0.8) == 4 / 7     # 4 of 4 damaged: the 7 most suspect
    assert oracle_precision(y, suspicion, 0.5) == 1.0       # 2 of 4: the first two
    assert oracle_precision(np.zeros(3, bool), suspicion[:3], 0.8) is None


def test_reference_scores_on_real_photos_reproduce_the_benchmarks_own_pairs(bench):
    import bench_grocery_reference

    root, sets, figures = bench
    ref = bench_grocery_reference.main(with_sets(["--data", str(MINI), "--bench-root", str(root), "--variant", "skip",
                                                  "--k", "2", "--json", str(root / "reference.json")], sets))
    assert ref["listings"]["validation"] == 12 and ref["listings"]["held_out"] > 0
    assert {"raw", "centred, any", "softmax, category", "centred, held_out"} <= set(ref["results"])
    # the raw logits at 0 are bench_grocery's probabilities at 0.5 on the same pairs: one model, one answer
    ours, theirs = ref["results"]["raw"]["validation_at_0.5"], figures["validation"]["camenn"]["skip"]
    for kind in ("random", "hard"):
        for task in ("ita", "tia"):
            assert ours[kind][task]["acc"] == theirs[kind][task]["acc"], (kind, task)
            assert ours[kind][task]["auroc"] == pytest.approx(theirs[kind][task]["auroc"], abs=1e-9), (kind, task)
    # the bench's one test-time view a validation photo: a "views" row; the held-out training photos have no
    # views, so that row's cuts (set on them) are raw's, and its validation scores are not
    assert ref["test_time_views"] == 1 and ref["results"]["views"]["cuts"] == ref["results"]["raw"]["cuts"]
    assert ref["results"]["views"]["held_out"] == ref["results"]["raw"]["held_out"]
    assert ref["results"]["views"]["validation"] != ref["results"]["raw"]["validation"]
    for row in ref["results"].values():
        flags = row["validation"]["flags"]
        assert 0.0 <= flags["clean_flagged"] <= 1.0 and 0.0 < flags["best_precision_at_recall_0.8"] <= 1.0


def test_a_fold_copy_of_the_tables_loses_only_the_other_folds_listings(spark, bench, tmp_path):
    import bench_grocery_crossfit

    root, _, _ = bench
    items = lambda path: {r.item_id for r in spark.read.format("delta").load(str(path / "items")).collect()}  # noqa: E731
    before = items(root / "tables")
    val = sorted(i for i in before if i.startswith("val-"))
    folds = [bench_grocery_crossfit.fold_of(i, 2) for i in val]
    assert folds == [bench_grocery_crossfit.fold_of(i, 2) for i in val] and set(folds) == {0, 1}   # stable, both used
    drop = [i for i, f in zip(val, folds) if f == 1]
    bench_grocery_crossfit.fold_tables(spark, root / "tables", tmp_path / "fold-0", drop)
    assert items(tmp_path / "fold-0") == before - set(drop)
    assert items(root / "tables") == before   # the bench's own tables are untouched


def test_the_cut_splits_held_out_pairs_at_the_middle_of_the_ties():
    import numpy as np

    sys.path.insert(0, str(BENCH))
    from bench_grocery_reference import best_cut

    assert best_cut(np.array([5.0, 6.0, 7.0]), np.array([-5.0, -4.0, -3.0])) == 1.0   # the gap's midpoint
    # interleaved scores: two errors whichever cut among 0.5, 2.5 and 4.5; the middle one
    assert best_cut(np.array([1.0, 3.0, 5.0]), np.array([0.0, 2.0, 4.0])) == 2.5


def test_references_never_share_the_listings_text_and_keep_to_its_category_where_they_can():
    import numpy as np

    sys.path.insert(0, str(BENCH))
    from bench_grocery_reference import draw_references

    fine = np.array([0, 0, 1, 2, 3, 4, 5, 6])
    coarse = np.array(["a", "a", "a", "a", "b", "b", "b", "c"])
    pool = np.arange(8)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        refs = draw_references(np.array([0, 4, 7]), np.array([0, 4, 7]), pool, fine, coarse, 2, True, rng)
        assert set(refs[0]) == {2, 3}    # category a without rows 0 and 1, the listing's own product
        assert set(refs[1]) == {5, 6}    # category b without the listing
        assert 7 not in refs[2] and len(set(refs[2])) == 2   # c has no other text: any other product


def test_flag_precision_counts_the_damaged_at_their_share():
    import numpy as np

    sys.path.insert(0, str(BENCH))
    from bench_grocery_reference import flag_metrics

    clean = np.c_[np.r_[-np.ones(10), np.ones(90)], np.ones(100)]        # 10 of 100 clean listings under a cut
    scores = {"clean": clean, "text_swap_random": np.c_[-np.ones(20), np.ones(20)],
              "image_swap_random": np.c_[np.ones(20), -np.ones(20)]}
    m = flag_metrics(scores, np.zeros(2), 0.1)
    assert (m["clean_flagged"], m["swaps_caught"]) == (0.1, 1.0)
    assert m["precision"] == pytest.approx(0.1 / (0.1 + 0.1 * 0.9))
    assert m["side_named"] == {"text_swap_random": 1.0, "image_swap_random": 1.0}


def test_the_candidate_rules_read_the_tail_off_a_fit_and_stretch_it_to_a_wider_night():
    import numpy as np

    sys.path.insert(0, str(BENCH))
    from bench_grocery_chain_plants import candidate_rules

    from camenn.logits import logit, sigmoid

    rng = np.random.default_rng(0)
    held = rng.normal(5.0, 1.0, size=200_001)                      # held-out logits, normal: the fit's own case
    metrics = {f"{t}_clean_q{round(q * 100):02d}": float(sigmoid(np.quantile(held, q)))
               for t in ("ita", "tia") for q in (0.01, 0.02, 0.05, 0.10, 0.25, 0.5)}

    def rules_for(night):
        return candidate_rules(metrics, {t: float(sigmoid(np.median(night))) for t in ("ita", "tia")},
                               {t: sigmoid(night) for t in ("ita", "tia")})

    wide = rng.normal(4.0, 2.0, size=200_001)                      # a night one lower and twice as wide
    rules = rules_for(wide)
    tail = rules["quantile 0.01, logit-normal tail, recentred on the new listings"]
    assert logit(tail["ita"]) == pytest.approx(np.quantile(held, 0.01) - 1.0, abs=0.05)   # the observed 1%, moved
    assert (wide < np.quantile(held, 0.01) - 1.0).mean() > 0.1      # recentred alone: 12% of this night under it
    rescaled = rules["quantile 0.01, recentred and rescaled on the new listings"]
    assert (wide < logit(rescaled["tia"])).mean() == pytest.approx(0.01, abs=0.002)
    # a night narrower than the held-out items keeps the recentred threshold: the rule only widens
    narrow = rules_for(rng.normal(4.0, 0.5, size=200_001))["quantile 0.01, recentred and rescaled on the new listings"]
    assert logit(narrow["ita"]) == pytest.approx(logit(metrics["ita_clean_q01"]) - 1.0, abs=0.02)
    # contrast: the job's recentred thresholds, each side read against the other from the night's medians
    contrast = rules["quantile 0.01, recentred, contrast 0.25"]
    median = float(sigmoid(np.median(wide)))
    assert (contrast["contrast"], contrast["contrast_ita"], contrast["contrast_tia"]) == (0.25, median, median)
    assert logit(contrast["ita"]) == pytest.approx(logit(metrics["ita_clean_q01"]) + logit(median) - logit(metrics["ita_clean_q50"]))
    # a model that records no lower quartile (trained before 2026-12-07) gets the fitted tail alone
    del metrics["ita_clean_q25"]
    assert not any("rescaled" in rule for rule in rules_for(wide))


def test_the_layout_bench_encodes_the_featurizers_own_tokens_and_probes_every_layout_of_them():
    import numpy as np

    sys.path.insert(0, str(BENCH))
    import bench_grocery_image_layout as layout
    from bench_grocery import read_classes, read_split

    from camenn.featurizer import FeaturizerConfig, ItemFeaturizer

    rows = read_split(MINI, "val", read_classes(MINI), None)[:4]
    featurizer = ItemFeaturizer.from_config(FeaturizerConfig(patch_grid=2, patch_size=112))
    featurizer.image_model.eval()
    ours = layout.encode_tokens(featurizer, MINI, rows, 2, 112, False, batch_size=3, t0=0.0)     # (4, 4, Di)
    theirs = featurizer.featurize([r["product"] for r in rows], [r["description"] for r in rows],
                                  [(MINI / r["path"]).read_bytes() for r in rows]).image.numpy()
    assert ours.shape == theirs.shape == (4, 4, featurizer.image_dim)
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()   # what the night caches, not a look-alike

    out = layout.main(["--data", str(MINI), "--tokens", "2x2@112", "1x1@224"])
    assert set(out["layouts"]) == {"2x2@112 mean", "2x2@112 concat", "1x1@224", "2x2@112 mean + 1x1@224",
                                   "2x2@112 concat + 1x1@224"}
    assert out["layouts"]["2x2@112 mean + 1x1@224"]["dims"] == 2 * featurizer.image_dim
    for figures in out["layouts"].values():
        v = figures["validation"]
        assert v["photos"] == 12
        # naming the product among its own class's products only can never be wrong where naming it among all was right
        assert v["within_class_acc"] >= v["product_acc"]


def test_the_seed_summary_reads_each_seeds_views_row_and_refuses_a_seed_twice(tmp_path):
    sys.path.insert(0, str(BENCH))
    import summarise_grocery_seeds as seeds

    results = BENCH / "results"
    inputs = [results / "bench_grocery_reference_test_time_views.json", results / "bench_grocery_reference_seed_1.json"]
    runs = [json.loads(p.read_text()) for p in inputs]
    out = tmp_path / "seeds.json"
    seeds.main([*map(str, inputs), "--json", str(out), "--plot", str(tmp_path / "seeds.png")])
    summary = json.loads(out.read_text())
    assert summary["seeds"] == ["0", "1"]
    hard_ita = summary["figures"]["same class ITA acc"]
    assert hard_ita["per_seed"] == {"0": runs[0]["results"]["views"]["validation"]["hard"]["ita"]["acc"],
                                    "1": runs[1]["results"]["views"]["validation"]["hard"]["ita"]["acc"]}
    assert hard_ita["min"] < hard_ita["mean"] < hard_ita["max"] and hard_ita["sd"] > 0
    assert hard_ita["seeds_at_target"] == sum(v >= 0.90 for v in hard_ita["per_seed"].values())
    assert (tmp_path / "seeds.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="the same seed twice"):
        seeds.main([str(inputs[1]), str(inputs[1])])
    # a run that records its model's seed is read by it, not by its name; an ensemble is no seed
    recorded = tmp_path / "recorded.json"
    recorded.write_text(json.dumps({**runs[1], "model_seeds": [5]}))
    seeds.main([str(inputs[0]), str(recorded), "--json", str(out)])
    assert json.loads(out.read_text())["seeds"] == ["0", "5"]
    recorded.write_text(json.dumps({**runs[1], "model_seeds": [1, 2]}))
    with pytest.raises(SystemExit, match="an ensemble"):
        seeds.main([str(inputs[0]), str(recorded)])


def test_the_seed_summary_sets_two_settings_side_by_side(tmp_path):
    sys.path.insert(0, str(BENCH))
    import summarise_grocery_seeds as seeds

    results = BENCH / "results"
    first = [results / "bench_grocery_reference_test_time_views.json", results / "bench_grocery_reference_seed_1.json"]
    second = [results / f"bench_grocery_reference_seed_{s}.json" for s in (2, 3)]
    seeds.main([*map(str, first), "--setting", "A", "--json", str(tmp_path / "a.json")])
    seeds.main([*map(str, second), "--setting", "B", "--against", str(tmp_path / "a.json"), "--json", str(tmp_path / "b.json"),
                "--plot", str(tmp_path / "b.png")])
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    row = b["comparison"]["figures"]["same class ITA acc"]
    mean_a, mean_b = a["figures"]["same class ITA acc"]["mean"], b["figures"]["same class ITA acc"]["mean"]
    assert row["against_mean"] == mean_a and row["mean"] == mean_b and row["difference"] == pytest.approx(mean_b - mean_a)
    assert (row["welch_t"] > 0) == (mean_b > mean_a)
    assert b["comparison"]["against"] == "A" and len(b["comparison_table"]) == 2 + len(seeds.FIGURES)
    assert (tmp_path / "b.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="not a summarise_grocery_seeds"):
        seeds.main([*map(str, second), "--against", str(first[0])])


def test_no_random_swap_takes_a_twin_over_the_real_training_split():
    sys.path.insert(0, str(BENCH))
    import grocery_twin_donors

    figures = grocery_twin_donors.main(["--data", str(MINI), "--batches", "40"])
    assert figures["twin_share_derangement"] > 0.01   # the old sampler hit twins
    assert figures["twin_share_now"] == 0.0


def test_the_flag_benchs_other_rules_come_from_its_stored_scores_and_never_move_up():
    """bench_grocery_flags' ``rules`` are read again from the scores its JSON stores; a night scoring above the
    held-out photos keeps the held-out quantile under "recentred", as the job's down-only move does."""
    import numpy as np

    sys.path.insert(0, str(BENCH))
    from bench_grocery_flags import threshold_rules

    figures = json.loads((BENCH / "results" / "bench_grocery_flags_recentred.json").read_text())
    held_out = {t: np.array(v) for t, v in figures["scores"]["held_out"].items()}
    night = {t: np.array([r[f"p_{t}"] for r in figures["scores"]["night"]]) for t in ("ita", "tia")}
    rules = threshold_rules(held_out, night)
    for name, by_q in rules.items():
        for q, thresholds in by_q.items():
            assert thresholds == pytest.approx(figures["rules"][name][str(q)]["thresholds"]), (name, q)
    assert rules["recentred"][0.02]["tia"] < rules["held-out quantile"][0.02]["tia"]   # this night scored lower
    higher = threshold_rules(held_out, {t: np.full(9, 0.99999) for t in ("ita", "tia")})
    for q, thresholds in higher["recentred"].items():
        assert thresholds == pytest.approx(higher["held-out quantile"][q]), q


def test_the_chain_benchs_rows_come_from_the_nights_record():
    """bench_grocery_chain_plants' and new_listing_flags' rules: the thresholds before the move, the whole-night move
    (down only, as ThresholdConfig.recentred), and the applied ones; the committed chain result reads back so."""
    sys.path.insert(0, str(BENCH))
    from new_listing_flags import rule_thresholds

    from camenn.config import ThresholdConfig

    recorded = {"ita": 0.3, "tia": 0.1, "centre_ita": 0.99, "centre_tia": 0.9, "before_recentre": {"ita": 0.45, "tia": 0.24}}
    lower = rule_thresholds(recorded, {"ita": 0.95, "tia": 0.95})       # ITA's whole night under its centre, TIA's over
    moved = ThresholdConfig(ita=0.45, tia=0.24, recentre=True, centre_ita=0.99, centre_tia=0.9).recentred(0.95, 0.95)
    assert lower == {"held-out quantile": {"ita": 0.45, "tia": 0.24},
                     "recentred on the whole night": {"ita": moved.ita, "tia": 0.24},
                     "applied": {"ita": 0.3, "tia": 0.1}}
    assert moved.ita < 0.45
    unmoved = {"ita": 0.5, "tia": 0.5}                                   # a night that did not recentre: no centres
    assert rule_thresholds(unmoved, {"ita": 0.1, "tia": 0.1}) == {"held-out quantile": unmoved, "applied": unmoved}

    figures = json.loads((BENCH / "results" / "bench_grocery_chain_plants.json").read_text())
    applied = figures["applied_thresholds"]
    assert figures["rules"]["applied"]["thresholds"] == {t: applied[t] for t in ("ita", "tia")}
    assert figures["rules"]["applied"]["catalogue"]["flagged"] == figures["below_the_applied"]   # the job's flags
    assert figures["rules"] == {k: {**v, "thresholds": rule_thresholds(applied, figures["whole_night_median"])[k]}
                                for k, v in figures["rules"].items()}
    assert applied["recentred_over"] == {"listings": "new", "n": figures["listings"]["new"], "scored": figures["listings"]["scored"]}


def test_every_chain_night_flags_what_its_thresholds_say_and_the_seed_summary_reads_back():
    """Each committed chain result (one per training seed and setting, bench_grocery_chain_seeds.py): the job's flags
    are the listings under the thresholds it recorded; each summary's figures are recomputed from its results."""
    import numpy as np

    sys.path.insert(0, str(BENCH))
    from bench_grocery_chain_seeds import summarise
    from bench_grocery_flags import CONTRAST_RULE

    from camenn.config import ThresholdConfig

    results = sorted([*(BENCH / "results").glob("bench_grocery_chain_plants*.json"),
                      *(BENCH / "results").glob("bench_grocery_chain_seed_*.json"),
                      *(BENCH / "results").glob("bench_grocery_chain_categories_seed_*.json")])   # wrong categories planted
    assert len(results) >= 2
    for path in results:
        figures = json.loads(path.read_text())
        assert figures["rules"]["applied"]["catalogue"]["flagged"] == figures["below_the_applied"], path.name
        assert figures["listings"]["damaged_new"] == figures["listings"]["damaged"] == len(figures["plants"]), path.name
        if "scores" in figures:   # since 2026-12-07 evening: each rule's flags again, from the night's saved scores
            saved = figures["scores"]
            pairs = [(x["p_ita"], x["p_tia"]) for x in saved["new"]] + list(zip(saved["known"]["ita"], saved["known"]["tia"]))
            assert len(pairs) == figures["listings"]["scored"] and sum(x["damaged"] for x in saved["new"]) == len(figures["plants"])
            p_ita, p_tia = (np.array(side) for side in zip(*pairs))
            for rule, r in figures["rules"].items():
                # the job's own rule is the one it recorded (with contrast, since 2026-12-07 night, more than two thresholds)
                t = figures["applied_thresholds"] if rule == "applied" else r["thresholds"]
                # the scores are saved to 7 decimals: a listing within that of a threshold may go either way
                if t.get("contrast"):   # each side read against the other: the other side's error moves it the other way
                    below = ThresholdConfig(recentre=True, **{k: t[k] for k in CONTRAST_RULE}).below
                    surely, maybe = (int((below(p_ita - e, p_tia + e)[0] | below(p_ita + e, p_tia - e)[1]).sum()) for e in (-1e-7, 1e-7))
                else:
                    surely, maybe = (int(((p_ita < t["ita"] + e) | (p_tia < t["tia"] + e)).sum()) for e in (-1e-7, 1e-7))
                assert surely <= r["catalogue"]["flagged"] <= maybe, (path.name, rule)
    summaries = sorted((BENCH / "results").glob("bench_grocery_chain_seeds*.json"))
    assert summaries
    for path in summaries:
        summary = json.loads(path.read_text())
        inputs = [str(BENCH.parent / p) for p in summary["inputs"]]
        settings, plants_seed = summarise(inputs)
        assert settings == summary["settings"], path.name
        assert plants_seed == summary["plants_seed"] == json.loads(Path(inputs[0]).read_text())["setting"].get("plants_seed", 0)


def test_the_seed_summary_refuses_results_of_two_draws_of_plants():
    """A summary compares settings on one draw of plants: results from two draws are refused in one line."""
    sys.path.insert(0, str(BENCH))
    from bench_grocery_chain_seeds import summarise

    one_draw = [str(BENCH / "results" / f"bench_grocery_chain_seed_0_{n}.json") for n in ("views", "views25")]
    assert summarise(one_draw)[1] == 0
    with pytest.raises(SystemExit, match="different seeds \\[0, 1\\]"):
        summarise([one_draw[0], str(BENCH / "results" / "bench_grocery_chain_seed_1_views_plants_1.json")])
