"""The prepared GPU run (benchmarks/bench_gpu_scoring.py) works here on CPU, with what the GPU machine has.

That machine has torch but no pyspark, pydantic or JVM; the script is run the way it will be run
there, in a fresh interpreter in which those imports fail, on the shipped model at a tiny size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_gpu_scoring.py"

# what the device image lacks: importing any of them there is an ImportError
BLOCK = """
import builtins, runpy, sys
_real = builtins.__import__
def _guard(name, *a, **k):
    if name.split(".")[0] in {"pyspark", "pydantic", "delta", "deltalake", "mlflow", "py4j"}:
        raise ImportError(f"{name} is not on the GPU machine")
    return _real(name, *a, **k)
builtins.__import__ = _guard
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_gpu_run_scores_every_stage_on_cpu_without_spark(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-c", BLOCK, str(SCRIPT), "--device", "cpu", "--items", "96",
                           "--users", "6", "--candidates", "4", "--pool", "24", "--batch-sizes", "16", "64",
                           "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["matmul_peak_flops"] > 0
    assert [r["batch_size"] for r in figures["item_pass"]] == [16, 64]
    assert [r["batch_size"] for r in figures["cvr"]] == [16, 64]   # the shipped model has a cvr head
    for r in figures["item_pass"]:
        assert r["rows"] == 96 and r["items_per_s"] > 0 and 0 < r["share_of_peak"] < 1, r
    for r in figures["cvr"]:
        assert r["pairs"] == 24 and r["pairs_per_s"] > 0 and 0 < r["share_of_peak"] < 1, r
    assert figures["flops"]["per_item"] > 0 and figures["flops"]["per_pair"] > 0
