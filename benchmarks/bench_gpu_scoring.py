"""The nightly scoring stages on one GPU, as one prepared run (issue 13): items/s and CVR pairs/s in
bf16, and their share of the device's measured bf16 matmul peak.

    python3 benchmarks/bench_gpu_scoring.py --json "$OUT/bench_gpu_scoring.json"      # on a GPU machine
    .venv/bin/python benchmarks/bench_gpu_scoring.py --device cpu --items 1024 --users 32   # the same code here

The lent GPU machine has no JVM and fetches nothing, so Spark cannot run there; this times what a
Spark task's Python worker does with the batches Spark hands it: ``Predictor.item_outputs`` (the
item pass, ``udfs.predict.item_outputs_fn``) and ``Predictor.score_users`` (the nightly CVR call,
``udfs.predict.cvr_users_fn``), on the device a task with a GPU gets (``udfs.task_device``), with
the scoring config's autocast. The inputs are synthesised at the model's shapes: random fp16
encoder blobs from a pool of distinct items (the FLOPs do not depend on the values), and for
CVR the pool's own projected tokens, as ``item_model_outputs`` holds them.

Each stage is timed twice: the whole call (blobs in, blobs and scores out, as the UDF runs it),
and the model alone on one batch already on the device, repeated for the same rows, so the share
lost to per-row Python (unpacking and packing blobs, host-device copies) shows. Needs torch,
numpy, pyarrow, safetensors, timm and transformers (imported by camenn), all on the device image;
not pyspark, pydantic or a JVM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import device_matmul_peak, model_flops, write_json  # noqa: E402

from camenn.model import CameNNBatch  # noqa: E402
from camenn.predictor import Predictor  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(_ROOT / "models" / "demo"), help="an artifact folder (default: the shipped model)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--autocast", default="bf16", choices=["bf16", "fp16", "none"])
    p.add_argument("--items", type=int, default=200_000, help="items through the item pass")
    p.add_argument("--users", type=int, default=20_000, help="users through the CVR call")
    p.add_argument("--candidates", type=int, default=20, help="candidates per user")
    p.add_argument("--pool", type=int, default=4096, help="distinct synthesised items the rows are drawn from")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_seconds(device: torch.device, fn) -> float:
    """Wall seconds of fn(), the device synchronised before and after (kernels run asynchronously)."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def synthesise_pool(pred: Predictor, n: int, rng: np.random.Generator) -> dict:
    """n distinct items' encoder blobs (fp16, as item_features stores them), categories and prices."""
    text_dim, image_dim, n_patches = pred.dims
    top = int(pred.config.max_text_tokens)
    counts = rng.integers(max(1, top // 2), top + 1, size=n)
    cats = list(pred.vocab.categories) or [None]
    return {
        "text": [rng.standard_normal((int(k), text_dim), dtype=np.float32).astype(np.float16).tobytes() for k in counts],
        "n_text_tokens": [int(k) for k in counts],
        "image": [rng.standard_normal((n_patches, image_dim), dtype=np.float32).astype(np.float16).tobytes()
                  for _ in range(n)],
        "category": [cats[i % len(cats)] for i in range(n)],
        "price": rng.uniform(0.5, 30.0, size=n).tolist(),
    }


def rows_of(pool: dict, idx: np.ndarray) -> dict:
    return {k: [v[i] for i in idx] for k, v in pool.items()}


def item_pass(pred: Predictor, pool: dict, n: int, batch: int, rng: np.random.Generator) -> dict:
    """items/s of item_outputs over n rows, and of the model alone on one device batch repeated."""
    rows = rows_of(pool, rng.integers(0, len(pool["text"]), size=n))
    args = (rows["text"], rows["n_text_tokens"], rows["image"], rows["category"], rows["price"])
    pred.item_outputs(*(a[:batch] for a in args), batch_size=batch)   # warm-up: kernels, allocator
    whole = device_seconds(pred.device, lambda: pred.item_outputs(*args, batch_size=batch))

    store = pred.item_store(*(a[:batch] for a in args))
    items = store.gather(torch.arange(len(args[0][:batch]))).to(pred.device)  # (b, ...) on the device
    reps = max(1, n // batch)

    def model_only():
        with torch.inference_mode(), pred.autocast():
            for _ in range(reps):
                projected = pred.model.project_items(items)
                pred.model.predict(CameNNBatch(target=projected), ("ita", "tia"))

    model_only()
    alone = device_seconds(pred.device, model_only)
    return {"rows": n, "batch_size": batch, "seconds": whole, "items_per_s": n / whole,
            "model_only_items_per_s": reps * batch / alone, "mean_text_tokens": float(np.mean(rows["n_text_tokens"]))}


def projected_pool(pred: Predictor, pool: dict, batch: int) -> dict:
    """The pool's projected tokens (fp32 blobs of d_model), as item_model_outputs holds them."""
    out = pred.item_outputs(pool["text"], pool["n_text_tokens"], pool["image"], pool["category"], pool["price"],
                            batch_size=batch)
    return {"text": out["text_proj"], "n_text_tokens": out["n_text_tokens"], "image": out["image_proj"],
            "category": pool["category"], "price": pool["price"]}


def cvr_pass(pred: Predictor, proj: dict, users: int, cands: int, batch: int, rng: np.random.Generator) -> dict:
    """pairs/s of score_users over users x cands pairs (one row per user), and of the model alone."""
    n_pool, beh = len(proj["text"]), pred.max_behaviour

    def lists(k):
        idx = rng.integers(0, n_pool, size=(users, k))
        return {f: [[v[i] for i in row] for row in idx] for f, v in proj.items()}

    cand, hist = lists(cands), lists(beh)
    profile = {f: [vals[u % len(vals)] if vals else None for u in range(users)]
               for f, vals in pred.vocab.user_values.items()}
    fields = ("text", "n_text_tokens", "image", "category", "price")
    columns = [cand[f] for f in fields] + [hist[f] for f in fields]   # score_users' order: candidates, behaviour
    ids = [[f"i{j}" for j in range(cands)]] * users
    warm = max(1, batch // cands)
    pred.score_users(ids[:warm], *(c[:warm] for c in columns), {f: v[:warm] for f, v in profile.items()},
                     batch_size=batch)
    whole = device_seconds(pred.device, lambda: pred.score_users(ids, *columns, profile, batch_size=batch))

    users_feats = pred.vocab.user_feats(profile)  # (U, Fu)
    one = pred.user_batch([(u // cands, u % cands) for u in range(min(batch, users * cands))], *columns,
                          users_feats).to(pred.device)
    reps = max(1, users * cands // batch)

    def model_only():
        with torch.inference_mode(), pred.autocast():
            for _ in range(reps):
                pred.model.predict(one, ("cvr",))

    model_only()
    alone = device_seconds(pred.device, model_only)
    pairs = users * cands
    return {"users": users, "pairs": pairs, "behaviour_items": beh, "batch_size": batch, "seconds": whole,
            "pairs_per_s": pairs / whole, "model_only_pairs_per_s": reps * one.target.text.shape[0] / alone}


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    device = torch.device(args.device)
    pred = Predictor.load(args.model, device=device, autocast=args.autocast)
    rng = np.random.default_rng(args.seed)
    peak, peak_what = device_matmul_peak(str(device))
    figures: dict = {
        "benchmark": "bench_gpu_scoring", "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(), "torch": torch.__version__, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "autocast": args.autocast if device.type == "cuda" else "none (CPU)", "model": args.model,
        "model_version": pred.version, "d_model": int(pred.config.d_model), "matmul_peak_flops": peak,
        "matmul_peak": peak_what, "item_pass": [], "cvr": [],
    }
    print(f"{figures['device_name']} ({device}), model {pred.version} d_model {pred.config.d_model}, "
          f"matmul peak {peak / 1e12:.2f} TFLOP/s ({peak_what})", flush=True)
    pool = synthesise_pool(pred, args.pool, rng)
    for batch in args.batch_sizes:
        r = item_pass(pred, pool, args.items, batch, rng)
        figures["item_pass"].append(r)
        print(f"item pass, batch {batch}: {r['items_per_s']:,.0f} items/s (model alone {r['model_only_items_per_s']:,.0f})",
              flush=True)
    if "cvr" in pred.tasks:
        proj = projected_pool(pred, pool, max(args.batch_sizes))
        for batch in args.batch_sizes:
            r = cvr_pass(pred, proj, args.users, args.candidates, batch, rng)
            figures["cvr"].append(r)
            print(f"cvr, batch {batch}: {r['pairs_per_s']:,.0f} pairs/s (model alone {r['model_only_pairs_per_s']:,.0f})",
                  flush=True)
    L = round(float(np.mean(pool["n_text_tokens"])))
    item_flops, pair_flops = model_flops(pred.config, L, pred.max_behaviour)
    figures["flops"] = {"per_item": item_flops, "per_pair": pair_flops, "text_tokens": L}
    for key, rows, rate, per in (("item_pass", figures["item_pass"], "items_per_s", item_flops),
                                 ("cvr", figures["cvr"], "pairs_per_s", pair_flops)):
        for r in rows:
            r["share_of_peak"] = per * r[rate] / peak
            r["model_only_share_of_peak"] = per * r[f"model_only_{rate}"] / peak
            print(f"{key}, batch {r['batch_size']}: {per / 1e6:.1f} MFLOP per row, {r['share_of_peak']:.2%} of the peak "
                  f"(model alone {r['model_only_share_of_peak']:.2%})", flush=True)
    figures["seconds"] = time.perf_counter() - t0
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
