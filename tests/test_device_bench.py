"""The prepared GPU run (benchmarks/bench_gpu_scoring.py) works here on CPU, with what the GPU machine has.

That machine has torch but no pyspark, pydantic or JVM; the bundle (photos, tokenizer, shapes) is
written here as it is before a device call, and the script is then run the way it will be run
there, in a fresh interpreter in which those imports fail, at a tiny size: the demo encoders on
real GroceryStore photos (tests/grocery_mini: CI has no ../shared), the shipped model, and an
untrained model of production's shape.
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
    bundle, out = tmp_path / "bundle", tmp_path / "gpu.json"
    made = subprocess.run([sys.executable, str(SCRIPT), "--make-bundle", str(bundle), "--photos", "6",
                           "--grocery", str(ROOT / "tests" / "grocery_mini")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    assert len(list((bundle / "photos").glob("*.jpg"))) == 6 and (bundle / "tokenizer" / "vocab.txt").is_file()

    proc = subprocess.run([sys.executable, "-c", BLOCK, str(SCRIPT), "--bundle", str(bundle), "--device", "cpu",
                           "--encoder-shapes", "demo", "--encoder-items", "8", "--encoder-batch-sizes", "4",
                           "--flops-items", "4", "--prepare-threads", "1", "2", "--pipeline-items", "8",
                           "--items", "96", "--users", "6", "--candidates", "4", "--pool", "24",
                           "--batch-sizes", "16", "64", "--production-items", "16", "--production-users", "1",
                           "--production-batch-sizes", "4", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["matmul_peak_flops"] > 0

    [encoders] = figures["encoders"]
    assert encoders["shape"] == "demo" and encoders["image_arch"] == "tf_efficientnet_lite0"
    assert encoders["flops"]["per_item_real_batch"] > 1e8   # MiniLM + 9 EfficientNet-Lite0 patches: ~1.2 GFLOP
    [run] = encoders["runs"]
    assert run["rows"] == 8 and run["prepare_items_per_s"] > 0 and 0 < run["encode_share_of_peak"] < 1, run
    assert [(r["prepare_threads"], r["rows"]) for r in encoders["pipeline"]] == [(1, 8), (2, 8)]

    demo, production = figures["models"]
    assert (demo["d_model"], production["d_model"]) == (32, 256)   # production.yaml's model, untrained
    assert [r["batch_size"] for r in demo["item_pass"]] == [16, 64]
    assert [r["batch_size"] for r in demo["cvr"]] == [16, 64]   # the shipped model has a cvr head
    for r in demo["item_pass"]:
        assert r["rows"] == 96 and r["items_per_s"] > 0 and 0 < r["share_of_peak"] < 1, r
    for r in demo["cvr"]:
        assert r["pairs"] == 24 and r["pairs_per_s"] > 0 and 0 < r["share_of_peak"] < 1, r
    assert [r["pairs"] for r in production["cvr"]] == [4]
    assert production["flops"]["per_pair"] > 100 * demo["flops"]["per_pair"]
