"""Where the item pass's time goes outside the model: cProfile of ``Predictor.item_outputs``.

    .venv/bin/python benchmarks/profile_item_pass.py [--items 8192] [--batch-size 1024] [--top 14]

On an H200 the item pass as the UDF runs it was 6-52x slower than the model alone on a batch
already on the device (docs/results/gpu-scoring.md): per-row Python, not the model, is
the ceiling there. This profiles the same call here, on one CPU thread, with the shipped model
over random fp16 encoder blobs (bench_gpu_scoring's pool), and prints the project's functions by
cumulative time (``item_store`` unpacks the blobs, ``gather`` assembles the batch, ``predict`` and
``project_items`` are the model), then every function by its own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_gpu_scoring import rows_of, synthesise_pool  # noqa: E402

from camenn.predictor import Predictor  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(_ROOT / "models" / "demo"))
    p.add_argument("--items", type=int, default=8192)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--top", type=int, default=14)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pred = Predictor.load(args.model)
    rng = np.random.default_rng(0)
    pool = synthesise_pool(pred, 1024, rng)
    rows = rows_of(pool, rng.integers(0, 1024, size=args.items))
    columns = (rows["text"], rows["n_text_tokens"], rows["image"], rows["category"], rows["price"])
    pred.item_outputs(*(c[:256] for c in columns), batch_size=args.batch_size)   # warm-up
    profile = cProfile.Profile()
    profile.runcall(pred.item_outputs, *columns, batch_size=args.batch_size)
    pstats.Stats(profile).sort_stats("cumulative").print_stats("camenn", args.top)
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
