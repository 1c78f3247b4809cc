"""What storing the cached projected tokens in 16 bits would cost in CVR scores, and save in bytes.

    make demo                      # the quick world, scored with the shipped model
    python benchmarks/bench_projected_dtype.py --json benchmarks/results/bench_projected_dtype.json

``item_model_outputs`` keeps each item's projected tokens as float32 blobs, and the CVR input
moves them once per candidate (docs/architecture.md). Half the bytes would meet issue 13's 20x
target for bytes shuffled per candidate, but the same issue asks for CVR scores within 1e-5 of
the float32 path. This measures that trade-off on the quick demo world with the shipped model:
the user rows of the first --users users of the run date (``nightly.user_rows``, the nightly
CVR input), scored by ``Predictor.score_users`` as stored and with every projected token rounded
to float16 and to bfloat16 (then widened back, which is what a 16-bit cache would hand the
model); the absolute CVR differences, and the mean blob bytes per item at each width.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from _common import write_json  # noqa: E402

from camenn.config import load_config  # noqa: E402

WIDTHS = ("float16", "bfloat16")


def rounded(blob: bytes, width: str) -> bytes:
    """A float32 token blob after a round trip through ``width``."""
    import torch

    tokens = torch.from_numpy(np.frombuffer(blob, dtype="<f4").copy())
    return tokens.to(getattr(torch, width)).float().numpy().astype("<f4").tobytes()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "conf" / "demo.yaml"))
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from pyspark.sql import functions as F

    from camenn.predictor import Predictor
    from pipeline import model_cache, nightly, tables, tracking
    from pipeline.session import get_spark
    from udfs.predict import PROJECTED_FIELDS

    config = tracking.resolve_model(load_config(args.conf, []))
    spark = get_spark(config)
    model = Predictor.load(config.model_dir)
    run_date = config.world.run_date
    outputs = tables.read_table(spark, config, model_cache.TABLE).where(F.col("model_version") == model.version)
    if outputs.limit(1).count() == 0:
        raise SystemExit(f"no {model_cache.TABLE} rows of model {model.version} under {config.data.root}: run `make demo` first")
    candidates = tables.read_table(spark, config, "candidates").where(F.col("run_date") == F.lit(run_date))
    profile = model.vocab.profile_fields
    good = (nightly.checked_candidates(candidates, outputs.select("item_id"), tables.read_table(spark, config, "users"),
                                       profile)
            .where(F.col("reason").isNull()).drop("reason"))
    rows = nightly.user_rows(good, outputs, tables.read_table(spark, config, "events"), run_date,
                             model.max_behaviour, profile).orderBy("user_id").limit(args.users).toPandas()

    def score(frame):
        return model.score_users(list(frame["cand_item_id"]), *(list(frame[f"cand_{f}"]) for f in PROJECTED_FIELDS),
                                 *(list(frame[f"beh_{f}"]) for f in PROJECTED_FIELDS),
                                 {f: list(frame[f]) for f in profile})[2]

    base = score(rows)
    blob_bytes = float(np.mean([len(t) + len(i) for ts, is_ in zip(rows["cand_text_proj"], rows["cand_image_proj"])
                                for t, i in zip(ts, is_)]))
    figures = {"config": args.conf, "model_version": model.version, "users": len(rows), "pairs": len(base),
               "cvr_mean": float(base.mean()), "bytes_per_item": {"float32": blob_bytes}, "cvr_abs_diff": {},
               "platform": platform.platform(), "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    print(f"{len(base)} candidates of {len(rows)} users, model {model.version}; projected tokens "
          f"{blob_bytes:.0f} bytes per item in float32")
    for width in WIDTHS:
        frame = rows.copy()
        for side in ("cand", "beh"):
            for f in ("text_proj", "image_proj"):
                frame[f"{side}_{f}"] = [[rounded(b, width) for b in seq] if seq is not None else None
                                        for seq in frame[f"{side}_{f}"]]
        diff = np.abs(score(frame) - base)
        figures["bytes_per_item"][width] = blob_bytes / 2
        figures["cvr_abs_diff"][width] = {"max": float(diff.max()), "mean": float(diff.mean()),
                                          "p99": float(np.quantile(diff, 0.99)),
                                          "share_over_1e-5": float((diff > 1e-5).mean())}
        d = figures["cvr_abs_diff"][width]
        print(f"  {width}: {blob_bytes / 2:.0f} bytes per item; CVR moves by max {d['max']:.2e}, mean {d['mean']:.2e}, "
              f"p99 {d['p99']:.2e}; {d['share_over_1e-5']:.1%} of candidates by more than 1e-5")
    write_json(args.json, figures)
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
