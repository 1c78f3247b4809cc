"""Scoring throughput on one world and one machine: the nightly run, and its Spark paths against plain PyTorch loops.

    flock /tmp/camenn-heavy.lock .venv/bin/python benchmarks/bench_scoring.py --conf tests/conf/tiny.yaml \
        --set world.n_items=3000 --set world.n_users=1000 --set world.candidates_per_user=10 --item-repeat 4 \
        --json benchmarks/results/bench_scoring.json                 # about 6 minutes on 2 cores
    python benchmarks/bench_scoring.py --conf conf/demo.yaml --root runs/bench/demo
    python benchmarks/bench_scoring.py --conf conf/demo-full.yaml --set world.n_items=50000 \
        --set world.n_users=10000 --root runs/bench/demo-50k --nights-only --event-log runs/bench/demo-50k/events \
        --json benchmarks/results/bench_scoring_demo_50k.json    # the nights alone at 50k items, ~50 minutes

Measures, in one run, on the world of --conf (generated under --root; a world table that is not
this world's, e.g. the items of a previous run's change, is rewritten by pipeline.world.write_world):

1. a full nightly run (``pipeline.nightly.run`` from empty caches: every item encoded, every item
   through the model's item pass, every candidate scored) and a rerun after --changed of the items
   changed (their titles), the next day with the same candidates (CVR of unchanged inputs is
   carried over), the ratio, and the per-stage timings of both (ScoreRun.timings);
2. the item pass: items/s of (a) the Spark path as ``pipeline.model_cache.refresh`` builds it (every
   valid item's blobs: item_features joined to the valid keys, ``udfs.predict.item_outputs_fn`` in a
   mapInPandas, Spark's noop sink; the input checkpointed, so Delta reads and joins are outside the
   timing) and (b) a plain single-process loop of ``Predictor.item_outputs`` over the same rows
   (collected once), same batch size, torch threads = --loop-threads (default 2, then 1 for
   reference); both warm (the second of two passes), and the ratio; --item-repeat k runs both over
   the valid items k times (same rows, same partitions). Its parts: the same rows moved to the
   Python workers and back without the model (mapInPandas returning ids), and read in the JVM only;
3. CVR grouped by user: pairs/s of (a) the Spark path ``nightly.user_rows(...)`` ->
   ``udfs.predict.cvr_users_fn`` -> noop (the cached outputs and the checked candidates
   checkpointed first, as the nightly run persists them; the user_rows joins and groupBy are in the
   timing) and of the same with the user rows themselves checkpointed (scoring only), against (b) a
   plain loop of ``Predictor.score_users`` over the same user rows (toPandas once, outside the
   timing), same batch size and threads, warm; the Arrow batch is the nightly's (users per batch =
   max_records_per_batch / USERS_PER_BATCH_DIVISOR). Its parts: user_rows built alone (noop, no
   Python) and the checkpointed user rows moved to Python and back without the model;
4. FLOPs per item of the model (``camenn.model.count_flops_per_item`` at the items' mean text length;
   per CVR pair without the input projections, which the cache already holds, and also counted with
   FlopCounterMode on one batch of score_users) and of the encoders (_common.encoder_flops:
   FlopCounterMode on one real batch), and the achieved FLOP/s of each path as a share of a dense
   fp32 matmul peak measured in the same run (torch.matmul of two 2048 x 2048, best of a few).

For each Spark path the tasks of its stages are recorded. A stage whose task count is not a
multiple of the cores leaves a core idle in its last wave (7 tasks on 2 cores: 4 waves for 3.5
of work), which a catalogue-sized stage of thousands of tasks does not; the item pass and the
CVR scoring are then also measured on the same rows repartitioned to a whole number of waves
(outside the timing), and both figures are reported. The model is the artifact at the config's model_dir when there is one, else a
real but untrained CameNN of the configured size (same FLOPs; the scores mean nothing).

One file (~510 lines): every ratio it reports is of two paths timed in one run on one world,
so the world, the Spark session and the loops share this process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
import uuid
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from _common import encoder_dims, encoder_flops, matmul_peak, model_flops, save_untrained_model, table_vocab, timed, write_json  # noqa: E402

from camenn.config import load_config  # noqa: E402

CACHES = ("item_features", "item_model_outputs", "item_alignment", "cvr_scores")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "tests" / "conf" / "tiny.yaml"))
    p.add_argument("--root", default=None, help="scratch folder for the world, the outputs and the model "
                                                "(default runs/bench/<config name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--changed", type=float, default=0.01, help="share of items changed for the incremental rerun")
    p.add_argument("--loop-threads", type=int, nargs="+", default=[2, 1],
                   help="torch threads of the plain loops; the first (compared with Spark) is timed warm as the second of "
                        "two passes, the others once after it")
    p.add_argument("--item-repeat", type=int, default=1,
                   help="the item pass measurements run over the valid items this many times (the same rows, repeated, "
                        "in the same number of Spark partitions), so a small world still gives seconds to measure")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--throughput-only", action="store_true",
                   help="skip the full and incremental runs (2.-4. only; needs a world with cached features under --root, "
                        "e.g. a copy of data/demo-full's tables: a night fills the model cache first when it is not this model's)")
    p.add_argument("--event-log", default=None, metavar="DIR",
                   help="also write Spark's event log (plain JSON) under DIR, for benchmarks/profile_event_log.py")
    p.add_argument("--nights-only", action="store_true",
                   help="the full and incremental runs alone (1. only): a world past ~20k items, whose plain loops "
                        "would collect every item's features to one process")
    return p.parse_args(argv)


def say(message: str, t0: float) -> None:
    print(f"[bench_scoring {time.perf_counter() - t0:7.1f}s] {message}", flush=True)


def ensure_model(spark, config, root: Path):
    """The config's artifact, or an untrained CameNN of the configured size saved under root (benchmarks/_common)."""
    from camenn.checkpoint import artifact_present
    from pipeline import feature_cache

    if artifact_present(config.model_dir):   # a version folder, or a root with a LATEST version
        return config, "trained artifact"
    fcfg = feature_cache.featurizer_config(config)
    config = save_untrained_model(config, root / "artifacts" / "untrained-model", table_vocab(spark, config),
                                  *encoder_dims(fcfg), feature_cache.featurizer_fingerprint(fcfg))
    return config, "untrained CameNN of the configured size"


def cached_outputs_of(spark, config, version: str) -> bool:
    """Whether item_model_outputs holds rows of model ``version`` (what 2.-4. read)."""
    from pyspark.sql import functions as F

    from pipeline import model_cache, tables

    path = config.table(model_cache.TABLE)
    if not tables.is_delta(spark, path):
        return False
    return spark.read.format("delta").load(path).where(F.col("model_version") == version).limit(1).count() > 0


def spark_timed(spark, label: str, action) -> tuple[float, list[int]]:
    """Seconds of ``action()`` and the task count of every stage that ran in its jobs (one job group)."""
    sc = spark.sparkContext
    group = f"bench-{uuid.uuid4().hex[:8]}"
    sc.setJobGroup(group, label)
    try:
        _, seconds = timed(action)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setJobDescription(None)
    tracker = sc.statusTracker()
    stages = []
    for job in sorted(tracker.getJobIdsForGroup(group)):
        info = tracker.getJobInfo(job)
        for sid in sorted(info.stageIds if info else []):
            stage = tracker.getStageInfo(sid)
            if stage is not None and stage.numCompletedTasks > 0:   # skipped stages ran nothing
                stages.append(int(stage.numTasks))
    return seconds, stages


def noop(df):
    return lambda: df.write.format("noop").mode("overwrite").save()


def ids_only(batches):
    """A mapInPandas function that only receives its rows: the cost of moving them to Python and back."""
    import pandas as pd

    for pdf in batches:
        yield pd.DataFrame({"id": pdf.iloc[:, 0].to_numpy()})


def arrow_ids_only(batches):
    """ids_only for mapInArrow (the item pass is an Arrow function)."""
    import pyarrow as pa

    for batch in batches:
        yield pa.record_batch([batch.column(0).cast(pa.string())], names=["id"])


def filled(partitions: int, cores: int) -> int:
    """The smallest number of partitions >= ``partitions`` that fills every core in every wave."""
    return max(cores, -(-partitions // cores) * cores)


def plain_loops(fn, threads: list[int]) -> dict[int, list[float]]:
    """Seconds of fn() per torch thread count: two passes at threads[0] (the second is warm), one at each other."""
    import torch

    before = torch.get_num_threads()
    out = {}
    try:
        for i, t in enumerate(threads):
            torch.set_num_threads(t)
            out[t] = [timed(fn)[1] for _ in range(2 if i == 0 else 1)]
    finally:
        torch.set_num_threads(before)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    base = load_config(args.conf, args.set)
    root = Path(args.root or _ROOT / "runs" / "bench" / base.name).resolve()
    config = load_config(args.conf, [f"data.root={root / 'tables'}", f"training.artifact_dir={root / 'artifacts' / 'model'}",
                                     *args.set])
    import numpy as np
    import torch
    from pyspark.sql import functions as F
    from torch.utils.flop_counter import FlopCounterMode

    from camenn.model import count_flops_per_item
    from camenn.predictor import Predictor
    from pipeline import feature_cache, model_cache, nightly, tables
    from pipeline.session import get_spark
    from pipeline.world import write_world
    from udfs.encode import get_featurizer
    from udfs.predict import (
        CVR_SCHEMA,
        ITEM_OUTPUTS_INPUT,
        ITEM_OUTPUTS_SCHEMA,
        PROJECTED_FIELDS,
        cvr_users_fn,
        cvr_users_input,
        item_outputs_fn,
    )

    if args.event_log:   # read when the session's JVM starts, so before get_spark
        Path(args.event_log).mkdir(parents=True, exist_ok=True)
        os.environ["PYSPARK_SUBMIT_ARGS"] = (f"--conf spark.eventLog.enabled=true --conf spark.eventLog.compress=false "
                                             f"--conf spark.eventLog.dir={Path(args.event_log).resolve().as_uri()} pyspark-shell")
    spark = get_spark(config)
    sc = config.scoring
    cores = spark.sparkContext.defaultParallelism
    figures: dict = {
        "config": str(args.conf), "overrides": args.set, "root": str(root), "spark_master": spark.sparkContext.master,
        "cpu_count": os.cpu_count(), "spark_cores": cores, "platform": platform.platform(), "torch": torch.__version__,
        "batch_size": sc.batch_size, "max_records_per_batch": sc.max_records_per_batch,
        "cvr_users_per_arrow_batch": max(8, sc.max_records_per_batch // nightly.USERS_PER_BATCH_DIVISOR),
        "python_worker_reuse": spark.conf.get("spark.python.worker.reuse", None),
        "task_cpus": int(spark.conf.get("spark.task.cpus", "1")),
        "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
        "adaptive": spark.conf.get("spark.sql.adaptive.enabled"), "loop_threads": args.loop_threads[0],
    }
    if not (args.throughput_only and tables.is_delta(spark, config.table("items"))):
        # a full run rewrites a world table that is not this world's (the items of a previous run's
        # change); --throughput-only keeps the scored world as it is, so its features stay current
        _, figures["world_seconds"] = timed(lambda: write_world(spark, config))
    config, figures["model"] = ensure_model(spark, config, root)
    run_date = config.world.run_date
    model = Predictor.load(config.model_dir)
    if args.throughput_only and not cached_outputs_of(spark, config, model.version):
        # a world copied in with its features (say, a demo world's) but not yet scored by this
        # model: one night fills the model cache (no encoding: the features are cached), untimed
        say("no cached item outputs of this model: one night first (untimed)", t0)
        print(nightly.run(spark, config, run_date).summary(), flush=True)

    # 1. a full night from empty caches, then a rerun after `changed` of the items changed
    if not args.throughput_only:
        for name in CACHES:
            path = config.table(name)
            if tables.is_delta(spark, path):
                spark.sql(f"DELETE FROM delta.`{path}`")
        say("full night", t0)
        full, figures["full_run_s"] = timed(lambda: nightly.run(spark, config, run_date))
        print(full.summary(), flush=True)
        items = tables.read_table(spark, config, "items")
        bucket = F.pmod(F.xxhash64("item_id"), F.lit(10_000)) < int(args.changed * 10_000)
        changed = items.withColumn("title", F.when(bucket, F.concat("title", F.lit(" (new pack)"))).otherwise(F.col("title")))
        changed = changed.localCheckpoint()   # the overwrite reads the table it replaces
        tables.overwrite_table(spark, config, "items", changed)
        # the next day: the matching stage proposes the same candidates, nobody bought anything new
        next_day = run_date + dt.timedelta(days=1)
        same = tables.read_table(spark, config, "candidates").where(F.col("run_date") == F.lit(run_date))
        tables.replace_run_date(spark, config, "candidates", same.withColumn("run_date", F.lit(next_day)), next_day)
        say(f"the next night, after {args.changed:.0%} of the titles changed", t0)
        incr, figures["incremental_run_s"] = timed(lambda: nightly.run(spark, config, next_day))
        print(incr.summary(), flush=True)
        figures.update(items=full.counts["items_in"], candidates=full.counts.get("candidates_in", 0),
                       full_counts=full.counts, incremental_counts=incr.counts,
                       full_timings=full.timings, incremental_timings=incr.timings,
                       incremental_over_full=figures["incremental_run_s"] / figures["full_run_s"])
        if args.nights_only:
            figures["measured_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            print(f"\nbench_scoring ({figures['model']}), {cores} Spark cores: full night {figures['full_run_s']:.1f} s, "
                  f"the next night after {args.changed:.0%} changed {figures['incremental_run_s']:.1f} s: ratio "
                  f"{figures['incremental_over_full']:.3f} (target <= 0.05)")
            write_json(args.json, figures)
            spark.stop()
            return 0

    fingerprint = feature_cache.featurizer_fingerprint(feature_cache.featurizer_config(config))
    previous_batch = spark.conf.get(nightly.ARROW_BATCH, None)
    primary = args.loop_threads[0]

    # 2a. the item pass as model_cache.refresh builds it (every valid item stale), warm
    spark.conf.set(nightly.ARROW_BATCH, str(sc.max_records_per_batch))
    valid = feature_cache.valid_items(spark, config, fingerprint).select("item_id", *model_cache.KEY).localCheckpoint()
    blobs = feature_cache.cached_features(spark, config, fingerprint)
    todo = blobs.join(F.broadcast(valid), ["item_id", "content_hash"], "inner").select(*ITEM_OUTPUTS_INPUT)
    todo = todo.localCheckpoint()
    if args.item_repeat > 1:
        once = todo
        for _ in range(args.item_repeat - 1):
            todo = todo.unionAll(once)
        todo = todo.coalesce(once.rdd.getNumPartitions()).localCheckpoint()
    n_items = todo.count()
    figures["item_pass_input_partitions"] = todo.rdd.getNumPartitions()
    figures["item_repeat"] = args.item_repeat
    udf = item_outputs_fn(config.model_dir, model.version, sc.batch_size, sc.autocast)
    item_runs = [spark_timed(spark, "bench: item pass", noop(todo.mapInArrow(udf, ITEM_OUTPUTS_SCHEMA))) for _ in range(2)]
    say(f"item pass, Spark ({figures['item_pass_input_partitions']} input partitions): "
        + ", ".join(f"{s:.1f} s" for s, _ in item_runs), t0)
    # its parts: the same rows only moved to the Python workers and back (no model), and read in the JVM only
    item_transfer = [spark_timed(spark, "bench: item rows to Python", noop(todo.mapInArrow(arrow_ids_only, "id string")))[0]
                     for _ in range(2)]
    item_jvm = [spark_timed(spark, "bench: item rows in the JVM", noop(todo.select(F.length("text_emb"))))[0] for _ in range(2)]
    say(f"item rows to Python and back (no model): {item_transfer[-1]:.1f} s; read in the JVM only: {item_jvm[-1]:.1f} s", t0)
    spread = None
    spread_parts = filled(figures["item_pass_input_partitions"], cores)
    if spread_parts != figures["item_pass_input_partitions"]:
        # the cause, measured: the same rows in a whole number of waves (7 tasks on 2 cores leave
        # one core idle in the last wave; a catalogue-sized stage has thousands of tasks)
        spread_df = todo.repartition(spread_parts).localCheckpoint()
        spread = [spark_timed(spark, "bench: item pass, repartitioned", noop(spread_df.mapInArrow(udf, ITEM_OUTPUTS_SCHEMA)))
                  for _ in range(2)]
        say(f"item pass, Spark, repartitioned to {spread_parts}: " + ", ".join(f"{s:.1f} s" for s, _ in spread), t0)

    # 2b. the plain loop over the same rows
    rows = once.toPandas() if args.item_repeat > 1 else todo.toPandas()
    cols = [list(rows[c]) * args.item_repeat for c in ("text_emb", "n_text_tokens", "image_emb", "category", "price")]
    mean_tokens = float(np.mean(cols[1])) if n_items else 0.0
    item_loops = plain_loops(lambda: model.item_outputs(*cols, batch_size=sc.batch_size), args.loop_threads)
    say("item pass, plain loop: " + "; ".join(f"{t} thread(s) " + ", ".join(f"{s:.1f} s" for s in v)
                                            for t, v in item_loops.items()), t0)
    item_rates = {"spark": n_items / item_runs[-1][0], "plain_loop": n_items / item_loops[primary][-1],
                  **{f"plain_loop_{t}_threads": n_items / v[-1] for t, v in item_loops.items()}}
    # FLOPs of the item pass as it runs, one model batch (FlopCounterMode)
    with FlopCounterMode(display=False) as item_counter:
        model.item_outputs(*[c[:sc.batch_size] for c in cols], batch_size=sc.batch_size)
    item_flops_measured = item_counter.get_total_flops() / max(1, min(sc.batch_size, n_items))
    if spread:
        item_rates["spark_repartitioned"] = n_items / spread[-1][0]
    figures["item_pass_spread_partitions"] = spread_parts if spread else None
    figures["item_pass"] = {
        "items": n_items, "mean_text_tokens": mean_tokens,
        "spark_seconds": [s for s, _ in item_runs], "spark_stage_tasks": item_runs[-1][1],
        "spark_rows_to_python_only_seconds": item_transfer, "spark_jvm_read_only_seconds": item_jvm,
        "spark_repartitioned_seconds": [s for s, _ in spread] if spread else None,
        "loop_seconds": {str(t): v for t, v in item_loops.items()}, "items_per_s": item_rates,
        "spark_over_loop": item_rates["spark"] / item_rates["plain_loop"],
        "spark_repartitioned_over_loop": item_rates["spark_repartitioned"] / item_rates["plain_loop"] if spread else None,
    }

    # 3a. CVR grouped by user: user_rows -> cvr_users_fn -> noop, warm
    tokens = model_cache.token_source(spark, config, model)   # as the nightly job: tokens read by bucket
    outputs = model_cache.current(spark, config, model, valid, tokens).localCheckpoint()
    candidates = tables.read_table(spark, config, "candidates").where(F.col("run_date") == F.lit(run_date))
    users = tables.read_table(spark, config, "users")
    events = tables.read_table(spark, config, "events")
    profile = model.vocab.profile_fields
    good = (nightly.checked_candidates(candidates, outputs.select("item_id"), users, profile)
            .where(F.col("reason").isNull()).drop("reason").localCheckpoint())
    pooled = nightly.pooled_shape(model)   # as the nightly job: pooled behaviour moves as two means an item
    rows_in = nightly.user_rows(good, outputs, events, run_date, model.max_behaviour, profile, pooled=pooled, tokens=tokens)
    cvr_udf = cvr_users_fn(config.model_dir, model.version, sc.batch_size, sc.autocast, pooled_behaviour=pooled is not None)
    spark.conf.set(nightly.ARROW_BATCH, str(figures["cvr_users_per_arrow_batch"]))
    cvr_full = [spark_timed(spark, "bench: user_rows + cvr", noop(rows_in.mapInPandas(cvr_udf, CVR_SCHEMA))) for _ in range(2)]
    say("cvr, Spark user_rows -> cvr_users_fn: " + ", ".join(f"{s:.1f} s" for s, _ in cvr_full), t0)
    build = [spark_timed(spark, "bench: user_rows only", noop(rows_in))[0] for _ in range(2)]
    user_in = rows_in.localCheckpoint()
    n_users = user_in.count()
    figures["cvr_user_rows_partitions"] = user_in.rdd.getNumPartitions()
    cvr_only = [spark_timed(spark, "bench: cvr only", noop(user_in.mapInPandas(cvr_udf, CVR_SCHEMA))) for _ in range(2)]
    say(f"cvr, Spark, checkpointed user rows ({figures['cvr_user_rows_partitions']} partitions): "
        + ", ".join(f"{s:.1f} s" for s, _ in cvr_only), t0)
    cvr_transfer = [spark_timed(spark, "bench: user rows to Python", noop(user_in.mapInPandas(ids_only, "id string")))[0]
                    for _ in range(2)]
    say(f"cvr parts: user_rows built in the JVM only {build[-1]:.1f} s; user rows to Python and back (no model) "
        f"{cvr_transfer[-1]:.1f} s", t0)
    spread_cvr = None
    spread_cvr_parts = filled(figures["cvr_user_rows_partitions"], cores)
    if spread_cvr_parts != figures["cvr_user_rows_partitions"]:
        spread_users = user_in.repartition(spread_cvr_parts).localCheckpoint()
        spread_cvr = [spark_timed(spark, "bench: cvr only, repartitioned", noop(spread_users.mapInPandas(cvr_udf, CVR_SCHEMA)))
                      for _ in range(2)]
        say(f"cvr, Spark, user rows repartitioned to {spread_cvr_parts}: " + ", ".join(f"{s:.1f} s" for s, _ in spread_cvr), t0)

    # 3b. the plain loop over the same user rows
    upd = user_in.select(*cvr_users_input(profile)).toPandas()
    n_pairs = int(sum(len(c) for c in upd["cand_item_id"]))
    beh_lens = [len(b) if hasattr(b, "__len__") else 0 for b in upd["beh_n_text_tokens"]]   # null: no purchases
    cand_counts = [len(c) for c in upd["cand_item_id"]]
    mean_beh = float(np.average(np.minimum(beh_lens, model.max_behaviour), weights=cand_counts)) if n_pairs else 0.0
    cvr_args = ([list(upd["cand_item_id"])] + [list(upd[f"cand_{f}"]) for f in PROJECTED_FIELDS]
                + [list(upd[f"beh_{f}"]) for f in PROJECTED_FIELDS] + [{f: list(upd[f]) for f in profile}])
    cvr_loops = plain_loops(lambda: model.score_users(*cvr_args, batch_size=sc.batch_size,
                                                      pooled_behaviour=pooled is not None), args.loop_threads)
    # FLOPs of score_users as it runs (padding included), on the users of about one model batch
    k, acc = 0, 0
    while k < len(cand_counts) and acc < sc.batch_size:
        acc += cand_counts[k]
        k += 1
    with FlopCounterMode(display=False) as counter:
        model.score_users(*[a[:k] for a in cvr_args[:-1]], {f: v[:k] for f, v in cvr_args[-1].items()},
                          batch_size=sc.batch_size, pooled_behaviour=pooled is not None)
    say("cvr, plain loop: " + "; ".join(f"{t} thread(s) " + ", ".join(f"{s:.1f} s" for s in v)
                                      for t, v in cvr_loops.items()), t0)
    cvr_rates = {"spark_user_rows_and_scoring": n_pairs / cvr_full[-1][0], "spark_scoring_only": n_pairs / cvr_only[-1][0],
                 "plain_loop": n_pairs / cvr_loops[primary][-1],
                 **{f"plain_loop_{t}_threads": n_pairs / v[-1] for t, v in cvr_loops.items()}}
    if spread_cvr:
        cvr_rates["spark_scoring_only_repartitioned"] = n_pairs / spread_cvr[-1][0]
    figures["cvr_spread_partitions"] = spread_cvr_parts if spread_cvr else None
    figures["cvr"] = {
        "users": n_users, "pairs": n_pairs, "mean_behaviour_items_per_pair": mean_beh,
        "spark_user_rows_and_scoring_seconds": [s for s, _ in cvr_full], "spark_user_rows_and_scoring_stage_tasks": cvr_full[-1][1],
        "spark_user_rows_build_only_seconds": build, "spark_rows_to_python_only_seconds": cvr_transfer,
        "spark_scoring_only_seconds": [s for s, _ in cvr_only], "spark_scoring_only_stage_tasks": cvr_only[-1][1],
        "spark_scoring_only_repartitioned_seconds": [s for s, _ in spread_cvr] if spread_cvr else None,
        "loop_seconds": {str(t): v for t, v in cvr_loops.items()}, "pairs_per_s": cvr_rates,
        "spark_over_loop": cvr_rates["spark_user_rows_and_scoring"] / cvr_rates["plain_loop"],
        "spark_scoring_only_over_loop": cvr_rates["spark_scoring_only"] / cvr_rates["plain_loop"],
        "spark_repartitioned_over_loop": (cvr_rates["spark_scoring_only_repartitioned"] / cvr_rates["plain_loop"]
                                          if spread_cvr else None),
        "flops_measured_pairs": acc,
    }
    if previous_batch is not None:
        spark.conf.set(nightly.ARROW_BATCH, previous_batch)
    else:
        spark.conf.unset(nightly.ARROW_BATCH)

    # 4. FLOPs: model and encoders, against the matmul peak
    # each path counted with the towers it runs (_common.model_flops)
    cfg = model.config
    L, beh = round(mean_tokens), round(mean_beh)
    item_tasks = tuple(t for t in cfg.tasks if t in ("ita", "tia"))
    item_flops, pair_flops = model_flops(cfg, L, beh)
    pair_flops_measured = counter.get_total_flops() / max(1, acc)
    fcfg = feature_cache.featurizer_config(config)
    featurizer = get_featurizer(fcfg, "cpu")
    sample = tables.read_table(spark, config, "items").select("title", "description", "image").limit(fcfg.batch_size).toPandas()
    enc = encoder_flops(featurizer, sample["title"], sample["description"], sample["image"])
    peaks = {t: matmul_peak(t) for t in sorted({1, *args.loop_threads, os.cpu_count() or 1})}
    peak = peaks[primary]
    achieved = {
        "item_pass_spark": item_flops * item_rates["spark"], "item_pass_plain_loop": item_flops * item_rates["plain_loop"],
        "cvr_spark": pair_flops * cvr_rates["spark_user_rows_and_scoring"],
        "cvr_spark_scoring_only": pair_flops * cvr_rates["spark_scoring_only"],
        "cvr_plain_loop": pair_flops * cvr_rates["plain_loop"],
    }
    if not args.throughput_only and figures["full_counts"].get("items_encoded"):
        achieved["encoders_full_night_features_stage"] = (enc["per_item_real_batch"] * figures["full_counts"]["items_encoded"]
                                                          / figures["full_timings"]["features"])
    figures["flops"] = {
        "model_per_item": item_flops, "model_per_item_text_tokens": L, "model_per_item_tasks": item_tasks,
        "model_per_item_all_task_towers": count_flops_per_item(cfg, n_behaviour=0, n_text_tokens=L),
        "model_per_item_measured": item_flops_measured,
        "measured_note": "FlopCounterMode on one model batch; it does not count CPU scaled_dot_product_attention",
        "model_per_cvr_pair": pair_flops, "model_per_cvr_pair_behaviour_items": beh,
        "model_per_cvr_pair_measured": pair_flops_measured,
        "encoders": enc, "matmul_peak_flops": {str(t): v for t, v in peaks.items()}, "peak_threads": primary,
        "achieved": achieved, "share_of_peak": {k: v / peak for k, v in achieved.items()},
    }
    figures["measured_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    ip, cv = figures["item_pass"], figures["cvr"]
    print(f"\nbench_scoring ({figures['model']}), master {figures['spark_master']}, {cores} Spark cores, "
          f"batch_size {sc.batch_size}, Arrow batch {sc.max_records_per_batch} rows "
          f"({figures['cvr_users_per_arrow_batch']} users for CVR), plain loops: one process, {primary} torch threads "
          f"(also {args.loop_threads[1:]})")
    if not args.throughput_only:
        def stages(t):
            return ", ".join(f"{k} {v:.1f}s" for k, v in t.items())
        print(f"  full night          {figures['full_run_s']:8.1f} s  ({figures['full_counts']['items_encoded']} items "
              f"encoded, {figures['full_counts'].get('items_model_scored', 0)} through the model, "
              f"{figures['candidates']} candidates)\n      stages: {stages(full.timings)}")
        print(f"  rerun, {args.changed:.0%} changed  {figures['incremental_run_s']:8.1f} s  "
              f"({figures['incremental_counts']['items_encoded']} items encoded, "
              f"{figures['incremental_counts'].get('items_model_scored', 0)} through the model)  "
              f"ratio {figures['incremental_over_full']:.3f} (target <= 0.05)\n      stages: {stages(incr.timings)}")
    print(f"  item pass, Spark    {ip['items_per_s']['spark']:8.1f} items/s  ({n_items} rows = {args.item_repeat} x the items, "
          f"{figures['item_pass_input_partitions']} input partition(s), stage tasks {ip['spark_stage_tasks']})")
    print(f"      of which rows to Python and back (no model) {ip['spark_rows_to_python_only_seconds'][-1]:.1f} s of "
          f"{ip['spark_seconds'][-1]:.1f} s (rows read in the JVM only: {ip['spark_jvm_read_only_seconds'][-1]:.1f} s)")
    if spread:
        print(f"  item pass, Spark repartitioned to {spread_parts}: {ip['items_per_s']['spark_repartitioned']:8.1f} items/s")
    others = "".join(f", {t} thread(s) {ip['items_per_s'][f'plain_loop_{t}_threads']:.1f}" for t in args.loop_threads[1:])
    print(f"  item pass, loop     {ip['items_per_s']['plain_loop']:8.1f} items/s  ({primary} threads{others}) "
          f"-> Spark / loop {ip['spark_over_loop']:.2f}"
          + (f" (repartitioned {ip['spark_repartitioned_over_loop']:.2f})" if spread else "") + " (target >= 0.9)")
    print(f"  cvr, Spark user_rows+score {cvr_rates['spark_user_rows_and_scoring']:8.1f} pairs/s  "
          f"(scoring stage: {cv['spark_user_rows_and_scoring_stage_tasks'][-1]} task(s)); scoring only "
          f"{cvr_rates['spark_scoring_only']:.1f} pairs/s ({figures['cvr_user_rows_partitions']} partition(s))"
          + (f"; repartitioned to {spread_cvr_parts} {cvr_rates['spark_scoring_only_repartitioned']:.1f}" if spread_cvr else ""))
    print(f"      parts: user_rows built (JVM only) {build[-1]:.1f} s, user rows to Python and back (no model) "
          f"{cvr_transfer[-1]:.1f} s, scoring from checkpointed rows {cvr_only[-1][0]:.1f} s; "
          f"user_rows + scoring {cvr_full[-1][0]:.1f} s")
    others = "".join(f", {t} thread(s) {cvr_rates[f'plain_loop_{t}_threads']:.1f}" for t in args.loop_threads[1:])
    print(f"  cvr, loop           {cvr_rates['plain_loop']:8.1f} pairs/s  ({primary} threads{others}; {n_users} users, "
          f"{n_pairs} pairs) -> Spark / loop "
          f"{cv['spark_over_loop']:.2f}, scoring only {cv['spark_scoring_only_over_loop']:.2f}"
          + (f", repartitioned {cv['spark_repartitioned_over_loop']:.2f}" if spread_cvr else "") + " (target >= 0.9)")
    print(f"  FLOPs: model {item_flops / 1e6:.2f} M/item ({L} text tokens, {'+'.join(item_tasks)} towers; measured "
          f"{item_flops_measured / 1e6:.2f} M without CPU attention), {pair_flops / 1e6:.2f} M/CVR pair "
          f"({beh} behaviour items, from projected tokens; measured {pair_flops_measured / 1e6:.2f} M); encoders "
          f"{enc['per_item_real_batch'] / 1e6:.1f} M/item (real batch; {enc['per_item_at_max_tokens'] / 1e6:.1f} M at "
          f"{enc['max_text_tokens']} tokens)")
    print("  matmul peak (fp32 2048^3): " + ", ".join(f"{t} thread(s) {v / 1e9:.1f} GFLOP/s" for t, v in peaks.items()))
    print(f"  achieved (share of the {primary}-thread peak): "
          + ", ".join(f"{k} {v / 1e9:.3f} GFLOP/s = {v / peak:.2%}" for k, v in achieved.items()))
    write_json(args.json, figures)
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
