"""ITA/TIA of trained models on a world's held-out items, with random and with same-category negatives.

    .venv/bin/python benchmarks/bench_demo_alignment.py --conf conf/demo.yaml \
        --model shipped=models/demo --model hard=artifacts/demo/model-hard \
        --json benchmarks/results/bench_demo_alignment.json

The world's cached encoder outputs (``item_features``) and ``items`` are read through a local
Spark session (``load_item_store``: item_features has deletion vectors), and every model is scored by ``camenn.training.alignment_scores``,
the function the training job's held-out metrics use: each held-out item (the config's hash
split, ``item_split`` "test") as it is, and once with another held-out item's text (ITA) or
image (TIA), the other item random or of the same category (``hard``, losses.hard_donors).
Per task: accuracy at 0.5, on the positives and the negatives apart, and at other cuts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from _common import write_json  # noqa: E402

from camenn.config import load_config  # noqa: E402

# where the held-out accuracy would be with another cut than 0.5 (0.75 undoes a 3:1 prior)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "conf" / "demo.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="an artifact folder or root of versions")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    import torch

    from camenn.checkpoint import load_artifact
    from camenn.inputs import FeatureVocab
    from camenn.training import alignment_scores, item_split
    from pipeline.session import get_spark
    from pipeline.training_data import load_item_store

    config = load_config(args.conf, args.set)
    sp = config.training.split
    spark = get_spark(config)
    out: dict = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        art = load_artifact(path)
        store = load_item_store(spark, config.table("item_features"), None, config.table("items"), None,
                                art.metadata["encoder_fingerprint"], FeatureVocab.from_dict(art.metadata["vocab"]),
                                art.config.n_patches)
        held = torch.as_tensor([k for k, i in enumerate(store.item_ids)
                                if item_split(i, sp.test_fraction, sp.valid_fraction, sp.seed) == "test"])
        row = {"path": path, "trained_held_out": {k: v for k, v in art.metadata.get("metrics", {}).items()
                                                  if k.endswith(("_acc", "_auc"))}}
        for kind in ("random", "hard"):
            for task, (y, prob) in alignment_scores(art.model, store, held, 256, "cpu", hard=kind == "hard").items():
                from camenn.metrics import roc_auc

                pos, neg = prob[y == 1], prob[y == 0]
                row[f"{task}_{kind}"] = {"acc": float(((prob >= 0.5) == (y == 1)).mean()), "auroc": float(roc_auc(y, prob)),
                                         "n": int(len(y) // 2),
                                         # a model that learnt the training's 3:1 prior errs on negatives
                                         "pos_acc": float((pos >= 0.5).mean()), "neg_acc": float((neg < 0.5).mean()),
                                         "acc_at": {str(t): float(((prob >= t) == (y == 1)).mean()) for t in THRESHOLDS}}
        out[name] = row
        print(f"{name}: " + ", ".join(f"{k} acc {v['acc']:.3f} (positives {v['pos_acc']:.3f}, negatives "
                                      f"{v['neg_acc']:.3f}) AUROC {v['auroc']:.3f} n {v['n']}"
                                      for k, v in row.items() if isinstance(v, dict) and "acc" in v), flush=True)
    figures = {"benchmark": "bench_demo_alignment", "created": dt.datetime.now().isoformat(timespec="seconds"),
               "command": " ".join(["benchmarks/bench_demo_alignment.py", *(argv if argv is not None else sys.argv[1:])]),
               "machine": {"cpus": os.cpu_count()}, "config": config.source, "models": out,
               "seconds": time.perf_counter() - t0}
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
