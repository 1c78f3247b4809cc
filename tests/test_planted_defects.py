"""Planted defects on the generated tiny world (synthetic), a model trained on it and one nightly run.

A file of its own: its world, training and scoring take about five minutes, and pytest-xdist
hands a file to one worker, so this runs beside test_nightly.py's own world, not after it.
"""

from __future__ import annotations

import pytest
from conftest import tiny_config
from pyspark.sql import functions as F

from pipeline import nightly, tables

DEFECT_OVERRIDES = ("scoring.thresholds.mode=category_quantile", "scoring.thresholds.quantile=0.1",
                    "scoring.thresholds.min_category_items=5",
                    # 240 items are memorised, not generalised from (held-out alignment stays at
                    # chance while the training loss falls): alignment needs items by the thousand
                    "world.n_items=2000", "training.alignment_batch_size=128",
                    # the alignment tasks need a few hundred steps before they take off; the tiny
                    # world has ~10 batches of CVR examples, so epochs are set in steps
                    "training.steps_per_epoch=100", "training.epochs=4", "training.patience=4", "training.lr=1e-3",
                    # early stopping restores the epoch of least validation loss; on 60 users the CVR
                    # part of it overfits from the first epoch and would pick an epoch before alignment
                    "training.task_weights.cvr=0.1")


@pytest.fixture(scope="session")
def trained_world(spark, tmp_path_factory):
    """The generated tiny world (synthetic), a model trained on it (pipeline.train) and one scoring run."""
    from pipeline.train import run_training
    from pipeline.world import write_world as write_generated_world

    config = tiny_config(tmp_path_factory.mktemp("trained"), *DEFECT_OVERRIDES)
    write_generated_world(spark, config, log=None)
    trained = run_training(spark, config, run_date=config.world.run_date)
    print(trained.summary())
    result = nightly.run(spark, config, config.world.run_date)
    print(result.summary())
    return config, trained, result


@pytest.mark.slow
def test_planted_defects_are_flagged_more_often_than_clean_items(spark, trained_world):
    config, trained, result = trained_world
    flags = (tables.read_table(spark, config, "item_alignment").where(F.col("run_date") == F.lit(config.world.run_date))
             .join(tables.read_table(spark, config, "truth_items"), "item_id")
             .groupBy("defect").agg(F.count(F.lit(1)).alias("n"), F.sum(F.col("flag").cast("int")).alias("flagged"),
                                    F.sum(F.col("reason").contains("text").cast("int")).alias("text_side"),
                                    F.sum(F.col("reason").contains("image").cast("int")).alias("image_side"))
             .collect())
    by = {r.defect: r for r in flags}
    total_flagged = sum(r.flagged for r in flags)
    print(f"\n{'defect':<15}{'items':>6}{'flagged':>8}{'recall':>8}{'precision':>10}{'text side':>10}{'image side':>11}")
    for d, r in sorted(by.items()):
        print(f"{d:<15}{r.n:>6}{r.flagged:>8}{r.flagged / r.n:>8.2f}{(r.flagged / total_flagged if total_flagged else 0):>10.2f}"
              f"{r.text_side or 0:>10}{r.image_side or 0:>11}")
    defective = [r for d, r in by.items() if d != "none"]
    precision = sum(r.flagged for r in defective) / max(1, total_flagged)
    print(f"overall: precision {precision:.2f}, recall {sum(r.flagged for r in defective) / sum(r.n for r in defective):.2f}")

    m = trained.metrics
    assert min(m["ita_auc"], m["tia_auc"]) >= 0.65, f"the model did not learn alignment on held-out items: {m}"
    swaps = [by[d] for d in ("text_swap", "image_swap") if d in by]
    swap_rate = sum(r.flagged for r in swaps) / sum(r.n for r in swaps)
    clean_rate = by["none"].flagged / by["none"].n
    assert swap_rate >= 2 * clean_rate, f"swapped items flagged at {swap_rate:.2f}, clean items at {clean_rate:.2f}"
