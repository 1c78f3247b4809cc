"""Two runs' outputs for one run date, side by side: do the CVR scores and the alignment flags agree?

    python benchmarks/compare_outputs.py /tmp/before/data/demo data/demo --run-date 2026-11-24 \
        [--json benchmarks/results/compare_outputs.json]

Reads ``cvr_scores`` and ``item_alignment`` of both table roots with delta-rs (no Spark) and
prints, per table: rows in each, rows in only one, the largest absolute difference of each
score column and how many rows differ in each other column (run ids always differ). For a
change that must leave the demo's outputs as they were (within 1e-5): run ``make demo`` on
the code before, in a copy of the repository, and after, then compare the two ``data/demo``.
Exits 1 when a row is missing from one side, a score differs by more than --tolerance, or any
other column (a flag, a reason, the model version) differs in a row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

TABLES = {"cvr_scores": ["user_id", "item_id"], "item_alignment": ["item_id"]}
IGNORED = {"run_id"}   # a new run, a new id


def compare(a_root: Path, b_root: Path, run_date: dt.date) -> dict:
    from deltalake import DeltaTable

    out = {}
    for name, key in TABLES.items():
        a, b = (DeltaTable(str(root / name)).to_pandas() for root in (a_root, b_root))
        a, b = (f[f["run_date"] == run_date].drop(columns="run_date") for f in (a, b))
        both = a.merge(b, on=key, suffixes=("_a", "_b"), how="outer", indicator=True)
        table = {"rows": [len(a), len(b)], "only_in_one": int((both["_merge"] != "both").sum()), "columns": {}}
        matched = both[both["_merge"] == "both"]
        for col in a.columns:
            if col in key or col in IGNORED:
                continue
            x, y = matched[f"{col}_a"], matched[f"{col}_b"]
            if np.issubdtype(x.dtype, np.floating):
                table["columns"][col] = {"max_abs_diff": float(np.nanmax(np.abs(x - y))) if len(x) else 0.0}
            else:
                table["columns"][col] = {"rows_differ": int((x.astype(str) != y.astype(str)).sum())}
        out[name] = table
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path, help="table root of the first run, e.g. a copy's data/demo")
    p.add_argument("after", type=Path)
    p.add_argument("--run-date", type=dt.date.fromisoformat, default=dt.date(2026, 11, 24))
    p.add_argument("--tolerance", type=float, default=1e-5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = compare(args.before, args.after, args.run_date)
    ok = True
    for name, table in result.items():
        print(f"{name}: {table['rows'][0]} / {table['rows'][1]} rows, {table['only_in_one']} in one run only")
        ok &= table["only_in_one"] == 0
        for col, c in table["columns"].items():
            if "max_abs_diff" in c:
                print(f"  {col}: largest |difference| {c['max_abs_diff']:.3g}")
                ok &= c["max_abs_diff"] <= args.tolerance
            else:
                print(f"  {col}: {c['rows_differ']} rows differ")
                ok &= c["rows_differ"] == 0
    if args.json:
        Path(args.json).write_text(json.dumps({"before": str(args.before), "after": str(args.after),
                                               "run_date": str(args.run_date), **result}, indent=2))
    print("the same within", args.tolerance if ok else f"NOT the same within {args.tolerance}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
