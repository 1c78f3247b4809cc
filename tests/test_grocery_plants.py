"""The wrong categories bench_grocery_chain_plants.py plants (``--plant categories``), on the real split of tests/grocery_mini."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

MINI = Path(__file__).parent / "grocery_mini"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_a_planted_wrong_category_moves_the_listing_to_another_class_and_keeps_its_photo_and_text():
    from bench_grocery import read_classes, read_split
    from bench_grocery_flags import plant_categories

    rows = read_split(MINI, "val", read_classes(MINI), None)
    before = [dict(r) for r in rows]
    classes = {r["coarse_class"] for r in rows}
    assert len(rows) == 12 and len(classes) == 3

    planted, damaged = plant_categories(rows, 0.25, np.random.default_rng(0))
    assert rows == before                                                       # the input is not changed
    assert len(damaged) == 2 * round(0.25 * len(rows)) and set(damaged.values()) == {"category"}
    for old, new in zip(before, planted):
        if new["photo_id"] not in damaged:
            assert new == old
            continue
        assert new["coarse_class"] != old["coarse_class"] and new["coarse_class"] in classes
        assert {k: new[k] for k in ("path", "product", "description", "fine_class")} == \
               {k: old[k] for k in ("path", "product", "description", "fine_class")}
        assert new["plant"] == f"category {old['coarse_class']} filed as {new['coarse_class']}"
    again, _ = plant_categories(rows, 0.25, np.random.default_rng(0))
    assert again == planted                                                     # one seed, one set of plants
