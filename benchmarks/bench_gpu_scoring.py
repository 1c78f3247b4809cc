"""The nightly scoring stages on one GPU, as one prepared run (issue 13): items/s of the encoders
and of the item pass, CVR pairs/s, in bf16, and their share of the device's measured bf16 matmul peak.

    .venv/bin/python benchmarks/bench_gpu_scoring.py --make-bundle .gpu_bundle           # here, once
    python3 benchmarks/bench_gpu_scoring.py --bundle .gpu_bundle --json "$OUT/bench_gpu_scoring.json"  # on the GPU
    .venv/bin/python benchmarks/bench_gpu_scoring.py --bundle .gpu_bundle --device cpu --small   # the same code here

The lent GPU machine has no JVM and fetches nothing, so Spark cannot run there; this times what a
Spark task's Python worker does with the batches Spark hands it, on the device a task with a GPU
gets (``udfs.pick_device`` of a task holding GPU 0), with the scoring config's autocast:

1. **encoders** (``udfs.encode.encode_fn``'s work): ``ItemFeaturizer.prepare`` on real GroceryStore
   photos (JPEG decode, resize, patches, tokenising; CPU, one thread as in a task), ``encode`` on
   prepared batches (host-device copies included), and the two encoders alone on one batch already
   on the device; FLOPs per item with FlopCounterMode. Two shapes: the demo's (all-MiniLM-L6-v2 +
   EfficientNet-Lite0, 3x3 patches of 64 px, 32 tokens) and production's (conf/production.yaml:
   bert-base + inception_v4, 3x3 patches of 299 px, 50 tokens). The machine has neither the
   packaged weights nor network, so the encoders are built from their architectures with random
   weights: the FLOPs and the kernels are the same, the features are not (nothing here reads them).
2. **item pass** (``udfs.predict.item_outputs_fn``): ``Predictor.item_outputs`` over encoder blobs,
   and the model alone on one device batch repeated for the same rows;
3. **CVR** (``udfs.predict.cvr_users_fn``): ``Predictor.score_users`` over one row per user from
   projected tokens, and the model alone.

The item pass and CVR run for the shipped demo model and for an untrained model of production's
shape (conf/production.yaml through training's own spec mapping, written into the bundle here,
since the mapping needs pydantic and the GPU image has none). Model inputs are synthesised at
the model's shapes: random fp16 encoder blobs from a pool of distinct items (the FLOPs do not
depend on the values), and for CVR the pool's own projected tokens, as ``item_model_outputs``
holds them. Each "whole" figure is the call as the UDF runs it (blobs in, blobs and scores out,
per-row Python, host-device copies); "model alone" shows how much of it per-row Python costs.

Needs torch, torchvision, numpy, pyarrow, safetensors, timm, transformers and pillow, all on the
device image; not pyspark, pydantic or a JVM (tests/test_device_bench.py runs it where those
imports fail).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import glob
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import device_matmul_peak, encoder_flops, grocery_descriptions, model_flops, write_json  # noqa: E402

from camenn.checkpoint import write_artifact  # noqa: E402
from camenn.featurizer import FeaturizerConfig, ItemFeaturizer  # noqa: E402
from camenn.model import CameNNBatch, CameNNConfig, create_model_from_config  # noqa: E402
from camenn.predictor import Predictor  # noqa: E402
from udfs import pick_device  # noqa: E402
from udfs.encode import prepared_ahead, thread_featurizers  # noqa: E402

GROCERY = _ROOT.parent / "shared" / "data" / "grocery-store"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--make-bundle", metavar="DIR", help="write the inputs the GPU machine lacks into DIR, then stop")
    p.add_argument("--bundle", metavar="DIR", help="a folder written by --make-bundle")
    p.add_argument("--photos", type=int, default=128, help="GroceryStore photos in the bundle")
    p.add_argument("--grocery", default=str(GROCERY), help="a folder in the GroceryStore layout (default: ../shared's)")
    p.add_argument("--small", action="store_true", help="a few batches of each stage: checks the code, not the device")
    p.add_argument("--model", default=str(_ROOT / "models" / "demo"), help="an artifact folder (default: the shipped model)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--autocast", default="bf16", choices=["bf16", "fp16", "none"])
    p.add_argument("--items", type=int, default=200_000, help="items through the item pass")
    p.add_argument("--users", type=int, default=10_000, help="users through the CVR call")
    p.add_argument("--production-items", type=int, default=50_000, help="items through the production-shaped item pass")
    p.add_argument("--production-users", type=int, default=2_000,
                   help="users through the production-shaped CVR call (27 GFLOP a pair: 1,281 tokens of d_model 256)")
    p.add_argument("--production-batch-sizes", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--candidates", type=int, default=20, help="candidates per user")
    p.add_argument("--pool", type=int, default=4096, help="distinct synthesised items the rows are drawn from")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--encoder-items", type=int, default=4096, help="items through each encoder shape, per batch size")
    p.add_argument("--encoder-batch-sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--encoder-shapes", nargs="*", default=["demo", "production"], choices=["demo", "production"],
                   help="production's encoders are 229 GFLOP an item: minutes on a CPU")
    p.add_argument("--prepare-threads", type=int, nargs="*", default=[1, 4, 8],
                   help="prepare threads of the encode UDF's loop, measured over --pipeline-items")
    p.add_argument("--pipeline-items", type=int, default=1024)
    p.add_argument("--models", nargs="*", default=["demo", "production"], choices=["demo", "production"])
    p.add_argument("--flops-items", type=int, default=32, help="items of the batch the encoders' FLOPs are counted on")
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


# ------------------------------------------------------------------------ the bundle


def make_bundle(out: Path, n_photos: int, grocery: Path = GROCERY) -> None:
    """Everything the GPU machine lacks, from this checkout (which has pydantic and the data).

    photos/ and items.json: n_photos GroceryStore training photos, one per class in turn, with
    the ingest's title (product name) and description (the class's); tokenizer/: all-MiniLM-L6-v2's
    tokenizer and config (no weights); shapes.json: per shape its featurizer settings and text
    encoder config, and for production the model config that training derives from
    conf/production.yaml with the demo model's vocabulary.
    """
    from transformers import BertConfig

    from camenn import encoders
    from camenn.config import load_config
    from camenn.training import model_config_from_spec

    if out.exists():
        shutil.rmtree(out)
    (out / "photos").mkdir(parents=True)
    by_class: dict[str, list[str]] = {}
    for path in sorted(glob.glob(str(grocery / "train" / "**" / "*.jpg"), recursive=True)):
        by_class.setdefault(Path(path).parent.name, []).append(path)
    if not by_class:
        raise SystemExit(f"no GroceryStore photos under {grocery}")
    descriptions = grocery_descriptions(grocery)
    classes, items = sorted(by_class), []
    for i in range(n_photos):
        cls = classes[i % len(classes)]
        source = by_class[cls][(i // len(classes)) % len(by_class[cls])]
        shutil.copyfile(source, out / "photos" / f"{i:04d}.jpg")
        items.append({"file": f"{i:04d}.jpg", "title": cls.replace("-", " ").replace("_", " "),
                      "description": descriptions.get(cls, "")})
    (out / "items.json").write_text(json.dumps(items, indent=1))

    text_dir = encoders.packaged_text_model_dir()
    (out / "tokenizer").mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(text_dir / name, out / "tokenizer" / name)
    minilm = json.loads((text_dir / "config.json").read_text())

    shapes = {}
    for name, conf in (("demo", "conf/demo-full.yaml"), ("production", "conf/production.yaml")):
        config = load_config(_ROOT / conf)
        fcfg = dataclasses.asdict(config.featurizer.to_featurizer_config())
        fcfg["text_model_dir"] = fcfg["image_weights"] = None
        # bert-base-chinese is bert-base with a 21,128-token vocabulary; the bundled tokenizer's
        # ids need MiniLM's 30,522, which changes only the embedding table's size.
        text = minilm if name == "demo" else BertConfig(vocab_size=minilm["vocab_size"]).to_dict()
        shapes[name] = {"conf": conf, "featurizer": fcfg, "text_config": text}
    demo = Predictor.load(_ROOT / "models" / "demo")
    production = load_config(_ROOT / "conf/production.yaml")
    fcfg = production.featurizer.to_featurizer_config()
    image_dim = int(_random_image_encoder(fcfg.image_arch).num_features)
    spec = {"model": production.model.model_dump(mode="json"), "n_patches": fcfg.patch_grid**2,
            "max_text_tokens": fcfg.max_text_tokens}
    model = model_config_from_spec(spec, demo.vocab, int(shapes["production"]["text_config"]["hidden_size"]), image_dim)
    shapes["production"]["model"] = model.to_dict()
    shapes["production"]["vocab"] = demo.vocab.to_dict()
    (out / "shapes.json").write_text(json.dumps(shapes, indent=1, default=str))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"bundle {out}: {n_photos} photos, {len(shapes)} shapes, {size / 2**20:.1f} MiB", flush=True)


def _random_image_encoder(arch: str):
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=0).eval()


def random_featurizer(bundle: Path, shape: dict, device: torch.device) -> ItemFeaturizer:
    """The shape's ItemFeaturizer with encoders of the right architecture and random weights."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bundle / "tokenizer"), local_files_only=True)
    text_config = dict(shape["text_config"])
    text_model = AutoModel.from_config(AutoConfig.for_model(text_config.pop("model_type"), **text_config)).eval()
    cfg = FeaturizerConfig(**shape["featurizer"])
    image_model = _random_image_encoder(cfg.image_arch)
    for p in (*text_model.parameters(), *image_model.parameters()):
        p.requires_grad_(False)
    return ItemFeaturizer(cfg, tokenizer, text_model, image_model, fingerprint="random-weights", device=device)


def bundle_items(bundle: Path) -> tuple[list[str], list[str], list[bytes]]:
    items = json.loads((bundle / "items.json").read_text())
    return ([r["title"] for r in items], [r["description"] for r in items],
            [(bundle / "photos" / r["file"]).read_bytes() for r in items])


def encoder_pass(featurizer: ItemFeaturizer, items, n: int, batch: int, dtype, device: torch.device) -> dict:
    """items/s of prepare (CPU, this thread), of encode on prepared batches, and of the encoders alone."""
    from camenn.images import normalize_patches

    titles, descriptions, images = items
    reps = max(1, n // batch)
    pick = [i % len(titles) for i in range(batch)]
    rows = ([titles[i] for i in pick], [descriptions[i] for i in pick], [images[i] for i in pick])
    featurizer.cfg = dataclasses.replace(featurizer.cfg, batch_size=batch)
    prepared = featurizer.prepare(*rows)
    prepare_s = time.perf_counter()
    featurizer.prepare(*rows)
    prepare_s = time.perf_counter() - prepare_s
    featurizer.encode(prepared, autocast_dtype=dtype)  # warm-up: kernels, allocator, cuDNN's choices
    encode_s = device_seconds(device, lambda: [featurizer.encode(prepared, autocast_dtype=dtype) for _ in range(reps)])

    tok = featurizer.tokenizer.pad({"input_ids": prepared.input_ids, "token_type_ids": prepared.token_type_ids},
                                   padding="longest", return_tensors="pt")
    tok = {k: v.to(device) for k, v in tok.items()}
    pixels = normalize_patches(prepared.patches.to(device).flatten(0, 1), featurizer.image_mean, featurizer.image_std)

    def encoders_alone():
        ctx = torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            for _ in range(reps):
                featurizer.text_model(**tok)
                featurizer.image_model(pixels)

    encoders_alone()
    alone_s = device_seconds(device, encoders_alone)
    return {"batch_size": batch, "rows": reps * batch, "prepare_items_per_s": batch / prepare_s,
            "encode_items_per_s": reps * batch / encode_s, "encoders_alone_items_per_s": reps * batch / alone_s,
            "mean_text_tokens": float(np.mean([len(t) for t in prepared.input_ids]))}


def encode_pipeline(featurizer: ItemFeaturizer, items, n: int, chunk: int, threads: int, dtype,
                    device: torch.device) -> dict:
    """items/s of the encode UDF's loop (udfs.encode.prepared_ahead with ``threads`` preparing, the
    caller encoding) over n items in chunks of ``chunk``, photos in turn."""
    titles, descriptions, images = items
    featurizer.cfg = dataclasses.replace(featurizer.cfg, batch_size=chunk)
    per_thread = thread_featurizers(featurizer) if threads > 1 else (lambda: featurizer)

    def chunks():
        for start in range(0, n, chunk):
            pick = [i % len(titles) for i in range(start, min(n, start + chunk))]
            yield [titles[i] for i in pick], [descriptions[i] for i in pick], [images[i] for i in pick]

    def run():
        for _, prepared in prepared_ahead(chunks(), lambda rows: per_thread().prepare(*rows), threads):
            featurizer.encode(prepared, autocast_dtype=dtype)

    seconds = device_seconds(device, run)
    return {"prepare_threads": threads, "chunk": chunk, "rows": n, "items_per_s": n / seconds}


def encoder_stage(bundle: Path, shapes: dict, args, device: torch.device, dtype, peak: float) -> list[dict]:
    items = bundle_items(bundle)
    out = []
    for name, shape in shapes.items():
        featurizer = random_featurizer(bundle, shape, device)
        k = min(len(items[0]), args.flops_items)
        flops = encoder_flops(featurizer, items[0][:k], items[1][:k], items[2][:k])
        f = shape["featurizer"]
        row = {"shape": name, "conf": shape["conf"], "image_arch": f["image_arch"],
               "text_layers": shape["text_config"].get("num_hidden_layers"),
               "text_hidden": shape["text_config"].get("hidden_size"), "patch_grid": f["patch_grid"],
               "patch_size": f["patch_size"], "max_text_tokens": f["max_text_tokens"], "flops": flops, "runs": []}
        per_item = flops["per_item_real_batch"]
        for batch in args.encoder_batch_sizes:
            r = encoder_pass(featurizer, items, args.encoder_items, batch, dtype, device)
            r["encode_share_of_peak"] = per_item * r["encode_items_per_s"] / peak
            r["encoders_alone_share_of_peak"] = per_item * r["encoders_alone_items_per_s"] / peak
            row["runs"].append(r)
            print(f"encoders {name}, batch {batch}: prepare {r['prepare_items_per_s']:,.0f} items/s (one CPU thread), "
                  f"encode {r['encode_items_per_s']:,.0f} items/s ({r['encode_share_of_peak']:.1%} of the peak), "
                  f"encoders alone {r['encoders_alone_items_per_s']:,.0f} ({r['encoders_alone_share_of_peak']:.1%}); "
                  f"{per_item / 1e9:.2f} GFLOP/item", flush=True)
        row["pipeline"] = []
        for threads in args.prepare_threads:
            r = encode_pipeline(featurizer, items, args.pipeline_items, args.encoder_batch_sizes[0], threads, dtype, device)
            r["share_of_peak"] = per_item * r["items_per_s"] / peak
            row["pipeline"].append(r)
            print(f"encoders {name}, the UDF's loop with {threads} prepare thread(s), chunks of {r['chunk']}: "
                  f"{r['items_per_s']:,.0f} items/s ({r['share_of_peak']:.1%} of the peak)", flush=True)
        out.append(row)
        del featurizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def untrained_predictor(shape: dict, device: torch.device, autocast: str, where: Path) -> Predictor:
    """A Predictor over an untrained model of the shape's config, written as a real artifact."""
    torch.manual_seed(0)
    model = create_model_from_config(CameNNConfig.from_dict(shape["model"]))
    path = where / "production-untrained"
    write_artifact(path, model, {"featurizer": shape["featurizer"], "vocab": shape["vocab"], "metrics": {}},
                   overwrite=True)
    return Predictor.load(path, device=device, autocast=autocast)


# ------------------------------------------------------------------------ the model stages


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


def model_stage(name: str, pred: Predictor, args, rng: np.random.Generator, peak: float, items: int, users: int,
                batch_sizes: list[int]) -> dict:
    """The item pass and CVR of one model over ``items`` items and ``users`` users, per batch size."""
    figures = {"model": name, "model_version": pred.version, "d_model": int(pred.config.d_model),
               "n_experts": int(pred.config.n_experts), "behaviour_tokens": pred.config.behaviour_tokens,
               "max_behaviour": pred.max_behaviour, "dims": list(pred.dims), "item_pass": [], "cvr": []}
    print(f"model {name} ({pred.version}): d_model {pred.config.d_model}, dims {pred.dims}", flush=True)
    pool = synthesise_pool(pred, args.pool, rng)
    for batch in batch_sizes:
        r = item_pass(pred, pool, items, batch, rng)
        figures["item_pass"].append(r)
        print(f"{name} item pass, batch {batch}: {r['items_per_s']:,.0f} items/s "
              f"(model alone {r['model_only_items_per_s']:,.0f})", flush=True)
    if "cvr" in pred.tasks:
        proj = projected_pool(pred, pool, max(batch_sizes))
        for batch in batch_sizes:
            r = cvr_pass(pred, proj, users, args.candidates, batch, rng)
            figures["cvr"].append(r)
            print(f"{name} cvr, batch {batch}: {r['pairs_per_s']:,.0f} pairs/s "
                  f"(model alone {r['model_only_pairs_per_s']:,.0f})", flush=True)
    L = round(float(np.mean(pool["n_text_tokens"])))
    item_flops, pair_flops = model_flops(pred.config, L, pred.max_behaviour)
    figures["flops"] = {"per_item": item_flops, "per_pair": pair_flops, "text_tokens": L}
    for key, rate, per in (("item_pass", "items_per_s", item_flops), ("cvr", "pairs_per_s", pair_flops)):
        for r in figures[key]:
            r["share_of_peak"] = per * r[rate] / peak
            r["model_only_share_of_peak"] = per * r[f"model_only_{rate}"] / peak
            print(f"{name} {key}, batch {r['batch_size']}: {per / 1e6:.1f} MFLOP per row, {r['share_of_peak']:.2%} "
                  f"of the peak (model alone {r['model_only_share_of_peak']:.2%})", flush=True)
    return figures


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.make_bundle:
        make_bundle(Path(args.make_bundle), args.photos, Path(args.grocery))
        return {}
    if not args.bundle:
        raise SystemExit("--bundle DIR is needed (write one with --make-bundle DIR)")
    if args.small:
        args.items, args.users, args.pool, args.batch_sizes = 512, 16, 128, [128]
        args.production_items, args.production_users, args.production_batch_sizes = 128, 2, [128]
        args.encoder_items, args.encoder_batch_sizes, args.flops_items = 32, [16], 16
        args.pipeline_items, args.prepare_threads = 48, [1, 2]
    t0 = time.perf_counter()
    bundle = Path(args.bundle)
    shapes = json.loads((bundle / "shapes.json").read_text())
    # the device a Spark task holding GPU 0 gets (cpu where asked, or where CUDA is not usable)
    device = torch.device(pick_device({"gpu": ["0"]}) if args.device.startswith("cuda") else args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.autocast) if device.type == "cuda" else None
    rng = np.random.default_rng(args.seed)
    peak, peak_what = device_matmul_peak(str(device))
    figures: dict = {
        "benchmark": "bench_gpu_scoring", "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(), "torch": torch.__version__, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "cpu_threads": torch.get_num_threads(), "autocast": args.autocast if device.type == "cuda" else "none (CPU)",
        "matmul_peak_flops": peak, "matmul_peak": peak_what, "small": args.small, "args": vars(args),
    }
    print(f"{figures['device_name']} ({device}), matmul peak {peak / 1e12:.2f} TFLOP/s ({peak_what})", flush=True)
    # the JSON is rewritten after each stage, so a run cut short by its time limit keeps what it measured
    figures["encoders"] = encoder_stage(bundle, {k: shapes[k] for k in args.encoder_shapes}, args, device, dtype, peak)
    write_json(args.json, figures)
    figures["models"] = []
    if "demo" in args.models:
        demo = Predictor.load(args.model, device=device, autocast=args.autocast)
        figures["models"].append(model_stage("demo", demo, args, rng, peak, args.items, args.users, args.batch_sizes))
        write_json(args.json, figures)
    if "production" in args.models:
        with tempfile.TemporaryDirectory() as where:
            production = untrained_predictor(shapes["production"], device, args.autocast, Path(where))
            figures["models"].append(model_stage("production-untrained", production, args, rng, peak,
                                                 args.production_items, args.production_users,
                                                 args.production_batch_sizes))
    figures["seconds"] = time.perf_counter() - t0
    write_json(args.json, figures)
    print(f"done in {figures['seconds']:.0f} s", flush=True)
    return figures


if __name__ == "__main__":
    main()
