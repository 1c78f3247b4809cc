"""Real photos in CI: the GroceryStore benchmark and its planted-swap night on 42 photos (tests/grocery_mini).

The whole real-data chain at a size CI affords: benchmarks/bench_grocery.py ingests the photos
through jobs/ingest_catalog.py, trains two variants (random and same-class negatives) alignment
only with the real frozen encoders, and scores the validation photos beside the pooled probe;
benchmarks/bench_grocery_flags.py plants a text and an image swap and runs the nightly job on
them. The figures of a few steps on 30 photos mean nothing; what is asserted is what the
pipeline must give on any data: every photo lands, every pair is scored, the same-class pairs
exist, the probe on the real encoders' features ranks random pairs above chance.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

MINI = Path(__file__).parent / "grocery_mini"
BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


# conf/grocery.yaml's variant (Makefile GROCERY_TRAIN_ARGS): both-side labels and the alignment skip,
# so the nightly job below scores with a model whose heads read the pooled cosine
SKIP = "training.hard_negative_share=0.5,training.contrastive_weight=1.0,training.same_category_swaps=both_sides," \
       "model.alignment_skip=true"


@pytest.fixture(scope="module")
def bench(spark, tmp_path_factory):
    sys.path.insert(0, str(BENCH))
    import bench_grocery

    root = tmp_path_factory.mktemp("grocery")
    sets = ["training.epochs=1", "training.steps_per_epoch=3", "training.alignment_batch_size=16",
            "training.split.test_fraction=0.3",   # held-out training photos to calibrate the thresholds on
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}"]
    argv = ["--data", str(MINI), "--root", str(root), "--variant", "baseline", "--variant", "hard",
            "--variant", f"skip:{SKIP}", "--json", str(root / "bench.json")]
    for s in sets:
        argv += ["--set", s]
    return root, sets, bench_grocery.main(argv)


def test_bench_grocery_scores_every_variant_and_the_probe_on_real_photos(bench):
    root, _, figures = bench
    assert figures["photos"] == {"train": 30, "val": 12, "in_store": 42, "products": 6, "coarse_classes": 3}
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
    probe = figures["validation"]["probe"]["random"]
    assert probe["ita"]["auroc"] > 0.6 and probe["tia"]["auroc"] > 0.6, probe
    # the training job reports same-category negatives beside random ones
    held = figures["variants"]["hard"]["training_held_out"]
    assert {"ita_acc", "tia_acc"} <= set(held)


def test_planted_swaps_go_through_the_nightly_job(bench):
    import bench_grocery_flags

    root, sets, _ = bench
    argv = ["--data", str(MINI), "--bench-root", str(root), "--variant", "skip", "--share", "0.1",
            "--json", str(root / "flags.json")]
    for s in sets:
        argv += ["--set", s]
    flags = bench_grocery_flags.main(argv)
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
    assert job["flagged"] == flags["below_the_thresholds"]
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


def test_oracle_precision_is_that_of_the_first_threshold_reaching_the_recall():
    import numpy as np

    sys.path.insert(0, str(BENCH))
    from bench_grocery_flags import oracle_precision

    y = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0], bool)
    suspicion = np.linspace(1, 0, 10)
    assert oracle_precision(y, suspicion, 0.8) == 4 / 7     # 4 of 4 damaged: the 7 most suspect
    assert oracle_precision(y, suspicion, 0.5) == 1.0       # 2 of 4: the first two
    assert oracle_precision(np.zeros(3, bool), suspicion[:3], 0.8) is None
