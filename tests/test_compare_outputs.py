"""benchmarks/compare_outputs.py on two small table roots written with delta-rs: it finds what differs."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import compare_outputs  # noqa: E402

DAY = dt.date(2026, 11, 24)


def write_run(root: Path, cvr: list[float], flags: list[bool], run_id: str) -> Path:
    from deltalake import write_deltalake

    write_deltalake(str(root / "cvr_scores"), pd.DataFrame({
        "run_date": [DAY] * 2, "user_id": ["u1", "u2"], "item_id": ["i1", "i1"], "cvr": cvr,
        "model_version": ["m"] * 2, "run_id": [run_id] * 2}))
    write_deltalake(str(root / "item_alignment"), pd.DataFrame({
        "run_date": [DAY] * 2, "item_id": ["i1", "i2"], "p_ita": [0.9, 0.2], "p_tia": [0.8, 0.1], "flag": flags,
        "run_id": [run_id] * 2}))
    return root


@pytest.mark.parametrize("cvr, flags, ok", [
    ([0.5, 0.25 + 4e-7], [False, True], True),     # a rounding difference, the same flags
    ([0.5, 0.25 + 1e-3], [False, True], False),    # a score moved
    ([0.5, 0.25], [True, True], False),            # a flag changed
])
def test_compare_outputs_tells_a_rounding_from_a_change(tmp_path, cvr, flags, ok):
    before = write_run(tmp_path / "before", [0.5, 0.25], [False, True], "r1")
    after = write_run(tmp_path / "after", cvr, flags, "r2")
    result = compare_outputs.compare(before, after, DAY)
    assert result["cvr_scores"]["only_in_one"] == 0 and "run_id" not in result["cvr_scores"]["columns"]
    assert result["item_alignment"]["columns"]["flag"]["rows_differ"] == (0 if flags == [False, True] else 1)
    assert (compare_outputs.main([str(before), str(after)]) == 0) is ok
