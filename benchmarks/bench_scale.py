"""Scale harness for the nightly run: stage costs at N items, 10x apart, without the encoders.

    flock /tmp/camenn-heavy.lock .venv/bin/python benchmarks/bench_scale.py --sizes 2000      # a quick check
    flock /tmp/camenn-heavy.lock .venv/bin/python benchmarks/bench_scale.py \
        --json benchmarks/results/bench_scale.json          # 10k, 100k, 1M: about an hour on 2 cores
    (1M writes ~37 GB of item_features and shuffles ~16 GB in a night: keep ~60 GB free; the old
    per-candidate CVR input, ~150 GB of shuffle at 1M, is skipped when it would not fit)

For each N of --sizes a synthetic world is written IN SPARK under --root/n<N>-s<seed> (and
reused while its marker file says it holds this N, seed and feature shapes): N items whose
``image`` is a few hundred random bytes (never decoded), their ``item_features`` written
directly as random fp16 blobs of the configured shapes, keyed on the items' stored
content_hash and the current encoder fingerprint so a night encodes nothing; N/20 users,
~10 purchases per user before the run date, 20 candidates per user (candidates = N; production's
matching stage proposes about 100 a user, 5 per item: ``--candidates-per-user 100``).
With an untrained CameNN of the config's model size (benchmarks/_common.py) it measures:

1. a full night (``pipeline.nightly.run`` with the model cache emptied: every item goes through
   the item pass), then the next day's night after 1% of the titles changed (a block of item ids,
   by a MERGE through ``tables.conform``; their feature rows are written directly too, as if
   encoded), with the same candidates and no new purchases: the CVR of a candidate whose inputs
   did not change is carried over (pipeline/cvr_cache.py); with ``--price-night`` a third night
   after the same share of prices changed (content unchanged: the item pass rescores them from
   their cached projections and reads no encoder blob);
2. per stage of each night (features, item_pass, alignment, cvr, total): seconds (the
   ScoreRun's timings), rows/s, shuffle bytes read + written (Spark's status REST API; a Spark
   stage counts for the stage of the night during which it was submitted) and peak RSS of the
   driver Python process, the driver JVM and the Python workers (psutil, every 0.2 s); on a
   standalone cluster also, per function of ours, the Python workers' RSS at the end of each
   task and the peak reached in a task that raised its worker's peak (``udfs.memory_logged``'s
   lines in the executors' stderr), so a worker's peak is tied to the function that made it;
3. CVR input bytes per candidate of each design, each consumed by a row hash (``consume``): the old
   per-candidate rows (``nightly.scorable_pairs``: encoder blobs) and the new per-user rows
   (``nightly.user_rows``: cached projected tokens) with the tokens read by bucket (``new``, the
   night's), joined in Spark (``new_spark_join``, before 2026-12-05) and, for a pooled-behaviour
   model, joined with every behaviour token (``new_full_behaviour``, before 2026-12-04), beside
   the theoretical row bytes; after each night, the driver JVM's live heap (``jcmd``);
4. the growth per 10x of N of seconds per item and of peak memory.

The model cache gets ``scoring.token_buckets = ceil(N / --items-per-bucket)`` (24,414 items a
bucket, as conf/production.yaml sizes 8,192 buckets for 200M items): a CVR task holds one bucket's
demand, so a bucket count fixed while N grows would grow a worker's memory with N.

With ``--standalone`` it runs on a Spark standalone cluster on loopback (``_standalone.py``), where
the driver's JVM holds the driver alone: "driver memory flat" is measured there.

One file (~710 lines) because the world it writes, the monitors (RSS sampler, Spark stage log, UDF memory lines)
and the nights share one Spark session and one set of marks; split, they would pass them around.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import platform
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import urlopen

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)

import psutil
from _common import encoder_dims, save_untrained_model, table_vocab
from pyspark.sql import functions as F

from camenn.config import load_config
from pipeline import feature_cache, history, model_cache, nightly, tables

CATEGORIES, ITEMS_PER_USER, PURCHASES_PER_USER, CANDIDATES_PER_USER, MIN_TEXT_TOKENS = 20, 20, 10, 20, 4
STEPS = {"1/5": "features", "2/5": "item_pass", "3/5": "alignment", "4/5": "cvr", "5/5": "runs"}
# conf/production.yaml: 8,192 buckets for 200M items. A task holds one bucket's demand rows, so a
# fixed count would grow a CVR worker's memory with N; a fixed bucket size, as production's, does not
ITEMS_PER_BUCKET = 24_414
STAGES = ("features", "item_pass", "alignment", "cvr", "total")
OUTPUTS = ("item_model_outputs", "item_alignment", "cvr_scores", "quarantine", "runs")
WORDS = ("red", "fresh", "large", "organic", "spicy", "frozen", "classic", "mini", "family", "light")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "conf" / "demo.yaml"), help="model, featurizer and Spark settings")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--root", default=str(_ROOT / "runs" / "bench" / "scale"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--changed", type=float, default=0.01, help="share of items whose title changes before night 2")
    p.add_argument("--price-night", action="store_true",
                   help="a third night after --changed of the prices changed (content unchanged: no blob is read)")
    p.add_argument("--candidates-per-user", type=int, default=CANDIDATES_PER_USER,
                   help="candidates per user (N/20 users): 20 = one per item, the demo's; 100 = production's, 5 per item")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--standalone", action="store_true",
                   help="run on a Spark standalone cluster on loopback (one worker with every core), so the driver's "
                        "JVM is the driver alone and its memory can be told from the executor's")
    p.add_argument("--driver-memory", default="2g", help="with --standalone: the driver JVM's heap")
    p.add_argument("--executor-memory", default="8g", help="with --standalone: the executor JVM's heap")
    p.add_argument("--heap-only", action="store_true",
                   help="the Spark UI off and no CVR input designs: only the nights, their RSS and the driver's live heap "
                        "(the UI's store of every stage would grow the driver's heap with the stages run)")
    p.add_argument("--items-per-bucket", type=int, default=ITEMS_PER_BUCKET,
                   help="scoring.token_buckets = ceil(N / this) at each size, as conf/production.yaml sizes its buckets "
                        "for its catalogue (0: the config's count at every size)")
    p.add_argument("--rss-trace", default=None, help="write every RSS sample (time, MiB per Monitor.KEYS) to this JSON")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def say(message: str, t0: float) -> None:
    print(f"[bench_scale {time.perf_counter() - t0:8.1f}s] {message}", flush=True)


# ------------------------------------------------------------------------ measuring


class Monitor:
    """RSS every 0.2 s of the driver (this Python process, its JVM), of the Python workers and, on a cluster, the executors.

    In local mode the driver's JVM is also the executor and the workers are its children. On a
    standalone cluster the executors are JVMs of their own (CoarseGrainedExecutorBackend): their
    RSS is ``executor_jvm``, their Python workers count as workers, and ``driver_jvm`` (the JVM
    that runs SparkSubmit) is the driver alone. The cluster's own daemons are not counted.
    """

    KEYS = ("driver_python", "driver_jvm", "worker_max", "workers_sum", "executor_jvm")

    def __init__(self, app_id: str | None):
        # local mode has no executor JVMs: any found would be another application's, as would
        # those of a cluster's executors whose command line names another application
        self.app_id = app_id
        self.samples: list[tuple] = []   # time, then one value per KEYS
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _executors(self) -> list:
        found = []
        for p in psutil.process_iter(["name", "cmdline"]):
            cmd = p.info["cmdline"] or ()
            if p.info["name"] == "java" and "CoarseGrainedExecutorBackend" in " ".join(cmd) and self.app_id in cmd:
                found.append(p)
        return found

    def _run(self):
        me = psutil.Process()
        executors, scanned = [], 0.0
        while not self._stop.wait(0.2):
            if self.app_id and time.time() - scanned > 2.0:   # executors come and go with the application, not with tasks
                executors, scanned = self._executors(), time.time()
            jvm, executor, workers, seen = 0, 0, [], set()
            procs = me.children(recursive=True)
            for e in executors:
                try:
                    executor = max(executor, e.memory_info().rss)
                    procs += e.children(recursive=True)
                except psutil.Error:
                    continue
            for p in procs:
                if p.pid in seen:   # an executor we started is also in our own tree
                    continue
                seen.add(p.pid)
                try:
                    name, rss, cmd = p.name(), p.memory_info().rss, " ".join(p.cmdline())
                except psutil.Error:   # a worker that exited between the listing and the read
                    continue
                if name == "java":
                    if "SparkSubmit" in cmd or "CoarseGrainedExecutorBackend" not in cmd and "deploy." not in cmd:
                        jvm = max(jvm, rss)
                elif "python" in name or "pyspark" in cmd:   # pyspark.daemon and the workers it forks
                    workers.append(rss)
            self.samples.append((time.time(), me.memory_info().rss, jvm, max(workers, default=0), sum(workers), executor))

    def peaks(self, t0: float, t1: float) -> dict[str, float]:
        """Peak MiB in [t0, t1]. Forked workers share pages with pyspark.daemon, so workers_sum overcounts."""
        rows = [s for s in self.samples if t0 <= s[0] <= t1] or self.samples[-1:]
        if not rows:
            return {}
        out = {k: max(r[i + 1] for r in rows) / 2**20 for i, k in enumerate(self.KEYS)}
        out["worker_max_at_s"] = max(rows, key=lambda r: r[3])[0] - t0   # when, to find the Spark stage behind it
        return out


class UdfMemory:
    """The executors' per-task memory lines (``udfs.memory_logged``), from a standalone cluster's stderr logs.

    The sampled RSS says how much a Python worker held; these lines say in which of our
    functions its peak grew: per function, the tasks run, the largest RSS at a task's end and
    the largest peak reached in a task that raised its worker's peak.
    """

    def __init__(self, work_dir: Path | None, app_id: str | None):
        self.dir = work_dir / app_id if work_dir and app_id else None

    def lines(self) -> list[dict]:
        from udfs import MEMORY_LOG

        out = []
        for log in sorted(self.dir.glob("*/stderr")) if self.dir else ():
            with open(log, errors="replace") as f:
                out += [json.loads(x.split(" ", 1)[1]) for x in f if x.startswith(MEMORY_LOG)]
        return out

    def in_window(self, lines: list[dict], t0: float, t1: float) -> dict:
        by: dict[str, dict] = {}
        for x in lines:
            if not t0 <= x["t"] <= t1:
                continue
            d = by.setdefault(x["name"], {"tasks": 0, "rows": 0, "rss_end_max_mib": 0.0, "peak_grown_max_mib": None})
            d["tasks"] += 1
            d["rows"] += x["rows"]
            d["rss_end_max_mib"] = max(d["rss_end_max_mib"], x["rss_end"])
            if x["peak_end"] > x["peak_start"]:
                d["peak_grown_max_mib"] = max(d["peak_grown_max_mib"] or 0.0, x["peak_end"])
        return by


def driver_heap_live_mib() -> float | None:
    """The driver JVM's live heap after a full GC (``jcmd GC.class_histogram`` collects first), in MiB.

    RSS follows the heap's limit, not its contents; the live heap after a night is what the
    driver still holds, so "nothing catalogue-sized on the driver" shows as this staying flat in N.
    """
    import subprocess

    jvms = [p for p in psutil.Process().children(recursive=True)
            if p.name() == "java" and "SparkSubmit" in " ".join(p.cmdline())]
    if not jvms or not shutil.which("jcmd"):
        return None
    out = subprocess.run(["jcmd", str(jvms[0].pid), "GC.class_histogram"], capture_output=True, text=True, timeout=300)
    total = [line.split() for line in out.stdout.splitlines() if line.startswith("Total")]
    return int(total[-1][2]) / 2**20 if total else None


class StageLog:
    """Spark's stage metrics from the status REST API of this application's UI."""

    def __init__(self, spark):
        sc = spark.sparkContext
        self.url = sc.uiWebUrl and f"http://localhost:{urlparse(sc.uiWebUrl).port}/api/v1/applications/{sc.applicationId}/stages"

    def totals(self, t0: float, t1: float) -> dict[str, int]:
        """Bytes of the stages submitted in [t0, t1) (wall clock); waits for the listener to catch up first."""
        out = {"stages": 0, "shuffle_read": 0, "shuffle_write": 0, "input": 0, "output": 0}
        if not self.url:   # --heap-only: no UI
            return out
        time.sleep(1.0)
        for s in json.load(urlopen(self.url)):
            if not s.get("submissionTime"):
                continue   # skipped: its shuffle output was reused, it moved nothing
            t = dt.datetime.strptime(s["submissionTime"].replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
            if t0 <= t < t1:
                out["stages"] += 1
                out["shuffle_read"] += s.get("shuffleReadBytes", 0)
                out["shuffle_write"] += s.get("shuffleWriteBytes", 0)
                out["input"] += s.get("inputBytes", 0)
                out["output"] += s.get("outputBytes", 0)
        return out


# ------------------------------------------------------------------------ the synthetic world


def _pick(values, salt: int):
    return F.element_at(F.array(*map(F.lit, values)), (F.pmod(F.xxhash64("id", F.lit(salt)), F.lit(len(values))) + 1).cast("int"))


def _items_fn(seed: int, run_date: dt.date, n_merchants: int):
    def gen(batches):
        import numpy as np
        import pandas as pd
        for pdf in batches:
            ids, k = pdf["id"].to_numpy(), len(pdf)
            if not k:
                continue
            rng = np.random.default_rng([seed, int(ids[0])])
            cat, w1, w2 = rng.integers(0, CATEGORIES, k), rng.integers(0, len(WORDS), k), rng.integers(0, len(WORDS), k)
            sizes = rng.integers(200, 600, k)
            raw, ends = rng.bytes(int(sizes.sum())), np.cumsum(sizes)
            yield pd.DataFrame({
                "item_id": [f"i{i:09d}" for i in ids], "merchant_id": [f"m{i * 7919 % n_merchants:05d}" for i in ids],
                "category": [f"cat{c:02d}" for c in cat],
                "title": [f"{WORDS[a]} {WORDS[b]} item {i}" for a, b, i in zip(w1, w2, ids)],
                "description": [f"{WORDS[b]} cat{c:02d} product, pack of {a + 1}" for a, b, c in zip(w1, w2, cat)],
                "image": [raw[e - s:e] for s, e in zip(sizes, ends)],
                "price": np.round(rng.lognormal(3.0, 1.0, k), 2),
                "updated_at": pd.Timestamp(run_date) - pd.to_timedelta(rng.integers(86400, 365 * 86400, k), unit="s")})
    return gen


def _features_fn(seed: int, text_dim: int, image_dim: int, n_patches: int, max_tokens: int):
    def gen(batches):
        import zlib

        import numpy as np
        import pandas as pd
        for pdf in batches:
            k = len(pdf)
            if not k:
                continue
            rng = np.random.default_rng([seed, zlib.crc32(pdf["item_id"].iloc[0].encode())])
            ntok = rng.integers(MIN_TEXT_TOKENS, max_tokens + 1, k)
            text_len, image_len = ntok * text_dim * 2, n_patches * image_dim * 2
            # random fp16 bit patterns with the top exponent bit cleared: finite values in (-2, 2), no inf/nan
            words = rng.integers(0, 1 << 16, (int(text_len.sum()) + k * image_len) // 2, dtype=np.uint16) & 0xBFFF
            buf, texts, images, at = words.astype("<u2").tobytes(), [], [], 0
            for n in text_len:
                texts.append(buf[at:at + n])
                images.append(buf[at + n:at + n + image_len])
                at += n + image_len
            yield pd.DataFrame({"item_id": pdf["item_id"], "content_hash": pdf["content_hash"], "text_emb": texts,
                                "n_text_tokens": ntok.astype("int32"), "image_emb": images})
    return gen


def feature_rows(spark, keys, seed, shapes, fingerprint):
    """item_features rows for keys (item_id, content_hash): random blobs of the encoders' shapes, as if encoded."""
    rows = keys.mapInPandas(_features_fn(seed, *shapes), "item_id string, content_hash string, text_emb binary, "
                                                         "n_text_tokens int, image_emb binary")
    return (rows.withColumn("encoder_fingerprint", F.lit(fingerprint)).withColumn("updated_at", F.current_timestamp())
            .withColumn("view_image_emb", F.lit(None).cast("binary")).withColumn("n_views", F.lit(None).cast("int")))


def synthesise(spark, config, n: int, seed: int, shapes, fingerprint: str, feature_bytes: float,
               per_user: int = CANDIDATES_PER_USER) -> None:
    run_date = config.world.run_date
    n_users = max(1, n // ITEMS_PER_USER)
    item_parts, feature_parts = max(2, math.ceil(n / 100_000)), max(2, math.ceil(feature_bytes / 256e6))
    items_schema = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in tables.input_schema(spark, "items").fields)
    items = spark.range(n, numPartitions=item_parts).mapInPandas(_items_fn(seed, run_date, max(10, n // 200)), items_schema)
    tables.overwrite_table(spark, config, "items", items)          # conform() stores content_hash and image_size
    keys = (tables.read_table(spark, config, "items").select("item_id", "content_hash")
            .repartitionByRange(feature_parts, "item_id"))   # files by item id, as items' (see change_titles)
    tables.overwrite_table(spark, config, "item_features", feature_rows(spark, keys, seed, shapes, fingerprint))
    users = spark.range(n_users, numPartitions=2).select(
        F.format_string("u%08d", "id").alias("user_id"), _pick(["18-24", "25-34", "35-44", "45-54", "55+"], seed + 1).alias("age_band"),
        _pick(["single", "couple", "family"], seed + 2).alias("household"), _pick([f"z{i}" for i in range(10)], seed + 3).alias("zone"))
    tables.overwrite_table(spark, config, "users", users)
    run_s = int(dt.datetime.combine(run_date, dt.time()).replace(tzinfo=dt.UTC).timestamp())
    h = lambda salt: F.xxhash64("id", F.lit(seed), F.lit(salt))   # a per-column salted hash
    events = spark.range(n_users * PURCHASES_PER_USER, numPartitions=item_parts).select(
        F.format_string("u%08d", F.expr(f"id div {PURCHASES_PER_USER}")).alias("user_id"),
        F.format_string("i%09d", F.pmod(h("item"), F.lit(n))).alias("item_id"),
        F.timestamp_seconds(F.lit(run_s - 1) - F.pmod(h("ts"), F.lit(60 * 86400))).alias("ts"),
        F.lit("purchase").alias("event"), (F.pmod(h("price"), F.lit(10_000)) / 100 + 1).alias("price"))
    tables.overwrite_table(spark, config, "events", events)
    # a stride prime to n walks a permutation of the items: a user's candidates are distinct items
    candidates = spark.range(n_users * per_user, numPartitions=item_parts).select(
        F.lit(run_date).alias("run_date"), F.format_string("u%08d", F.expr(f"id div {per_user}")).alias("user_id"),
        F.format_string("i%09d", F.pmod(F.col("id") * 1_000_003 + seed * 7919, F.lit(n))).alias("item_id"))
    tables.overwrite_table(spark, config, "candidates", candidates)


def change_titles(spark, config, n: int, share: float, seed: int, shapes, fingerprint: str) -> int:
    """MERGE new titles into ``share`` of the items (conform re-derives their hash) and their feature rows.

    The changed items are one block of item ids (a merchant's update), so the feature MERGE touches a
    file or two; both caches have deletion vectors, so even changes spread over the catalogue
    would add deletion vectors rather than rewrite every file.
    """
    from delta.tables import DeltaTable

    salt, k = uuid.uuid4().hex[:8], max(1, int(share * n))
    start = int.from_bytes(bytes.fromhex(salt), "big") % max(1, n - k + 1)
    cols = [f.name for f in tables.input_schema(spark, "items").fields]
    changed = (tables.read_table(spark, config, "items")
               .where(F.col("item_id").between(f"i{start:09d}", f"i{start + k - 1:09d}"))
               .withColumn("title", F.concat("title", F.lit(f" (rev {salt})"))).select(*cols)
               .localCheckpoint())   # the MERGE rewrites the files this was read from
    conformed = tables.conform(changed, spark, "items")
    DeltaTable.forPath(spark, config.table("items")).alias("t").merge(
        conformed.alias("s"), "t.item_id = s.item_id").whenMatchedUpdateAll().execute()
    # as if the encoders had run: night 2 re-runs the model's item pass for these items and encodes nothing
    feats = tables.conform(feature_rows(spark, conformed.select("item_id", "content_hash"), seed + 1, shapes, fingerprint),
                           spark, "item_features")
    DeltaTable.forPath(spark, config.table("item_features")).alias("t").merge(
        feats.alias("s"), "t.item_id = s.item_id").whenMatchedUpdateAll().execute()
    return changed.count()


def change_prices(spark, config, n: int, share: float) -> int:
    """MERGE new prices into ``share`` of the items (a block of ids): their content, so their
    features and cached projections, stay; only the alignment scores are computed again."""
    from delta.tables import DeltaTable

    salt, k = uuid.uuid4().hex[:8], max(1, int(share * n))
    start = int.from_bytes(bytes.fromhex(salt), "big") % max(1, n - k + 1)
    cols = [f.name for f in tables.input_schema(spark, "items").fields]
    changed = (tables.read_table(spark, config, "items")
               .where(F.col("item_id").between(f"i{start:09d}", f"i{start + k - 1:09d}"))
               .withColumn("price", F.round(F.col("price") * 1.1, 2)).select(*cols)
               .localCheckpoint())   # the MERGE rewrites the files this was read from
    DeltaTable.forPath(spark, config.table("items")).alias("t").merge(
        tables.conform(changed, spark, "items").alias("s"), "t.item_id = s.item_id").whenMatchedUpdateAll().execute()
    return changed.count()


def next_night_candidates(spark, config, day: dt.date) -> dt.date:
    """The next day's candidates: the matching stage proposes the same, nobody bought anything new."""
    same = tables.read_table(spark, config, "candidates").where(F.col("run_date") == F.lit(day))
    nxt = day + dt.timedelta(days=1)
    tables.replace_run_date(spark, config, "candidates", same.withColumn("run_date", F.lit(nxt)), nxt)
    return nxt


# ------------------------------------------------------------------------ nights and the CVR input


def run_night(spark, config, label: str, monitor: Monitor, log: StageLog, t0: float, run_date: dt.date,
              udf_memory: UdfMemory | None = None) -> dict:
    """nightly.run with a mark at each of its numbered steps: Spark stages and RSS samples go to the step they fall in."""
    marks, original = [("start", time.time())], nightly._say

    def mark(message: str) -> None:
        original(message)
        step = STEPS.get(message.split(" ", 1)[0])
        if step:
            marks.append((step, time.time()))
            say(f"{label}: {message}", t0)

    nightly._say = mark
    try:
        result = nightly.run(spark, config, run_date)
    finally:
        nightly._say = original
    end = time.time()
    windows = {step: (t, marks[i + 1][1] if i + 1 < len(marks) else end) for i, (step, t) in enumerate(marks) if i}
    windows["total"] = (marks[0][1], end)
    c = result.counts
    rows = {"features": c.get("items_in", 0), "item_pass": c.get("items_model_scored", 0) + c.get("items_model_rescored", 0),
            "alignment": c.get("items_scored", 0), "cvr": c.get("candidates_in", 0), "total": c.get("items_in", 0)}
    stages, lines = {}, udf_memory.lines() if udf_memory else []
    for stage in STAGES:
        seconds = result.timings.get(stage, 0.0)
        w = windows.get(stage, (end, end))
        stages[stage] = {"seconds": seconds, "rows": rows[stage], "rows_per_s": rows[stage] / seconds if seconds else None,
                         "window_s": w[1] - w[0], **log.totals(*w), "peak_rss_mib": monitor.peaks(*w),
                         **({"udf_memory": udf_memory.in_window(lines, *w)} if lines else {})}
    heap = driver_heap_live_mib()
    say(f"{label}: done in {result.timings['total']:.1f}s ({result.status}); driver JVM live heap after it "
        f"{heap or float('nan'):.0f} MiB", t0)
    return {"label": label, "status": result.status, "counts": result.counts, "timings": result.timings, "stages": stages,
            "driver_heap_live_mib": heap}


def consume(df) -> None:
    """Compute every column of every row and keep nothing: the XOR of a hash of each row.

    Spark's noop sink would do, but with Delta 4.4.0 a noop write of a plan that scans a table
    with deletion vectors (the MERGEd caches) fails ("non-pinned table snapshot"); a hash needs
    every column, so the joins and shuffles are the same as a real consumer's.
    """
    df.agg(F.bit_xor(F.xxhash64(*df.columns))).collect()


def cvr_input_bytes(spark, config, log: StageLog, disk_free: float, blob_mean: float, t0: float) -> dict:
    """Shuffle bytes per candidate of the old per-candidate input and of the new per-user one (consumed by a row hash)."""
    run_date = config.world.run_date
    model = nightly.load_model(config)
    fingerprint = feature_cache.featurizer_fingerprint(feature_cache.featurizer_config(config))
    # the valid items and the scorable candidates are common to both designs: computed once, outside the windows
    keys = feature_cache.item_keys(spark, config, fingerprint).localCheckpoint()
    users, events = tables.read_table(spark, config, "users"), tables.read_table(spark, config, "events")
    candidates = tables.read_table(spark, config, "candidates").where(F.col("run_date") == F.lit(run_date))
    profile = model.vocab.profile_fields
    good = (nightly.checked_candidates(candidates, keys.select("item_id"), users, profile)
            .where(F.col("reason").isNull()).drop("reason").localCheckpoint())
    n_cand, n_users = good.count(), good.select("user_id").distinct().count()
    seqs = history.behaviour_at(events, run_date, model.max_behaviour, known_items=keys, users=good)
    mean_beh = seqs.agg(F.avg(F.size("behaviour"))).first()[0] or 0.0
    mean_tok = tables.read_table(spark, config, "item_features").agg(F.avg("n_text_tokens")).first()[0]
    text_dim, image_dim, n_patches = model.dims
    d_model, per_user = int(model.config.d_model), n_cand / max(1, n_users)
    proj_item = (mean_tok + n_patches) * d_model * 4          # fp32 projected tokens of one item
    blob_item = (mean_tok * text_dim + n_patches * image_dim) * 2   # fp16 encoder outputs of one item
    out = {"candidates": n_cand, "users": n_users, "mean_text_tokens": mean_tok, "mean_behaviour": mean_beh,
           "theory_bytes_per_item": {"old": blob_item, "new": proj_item},
           # the rows the UDF receives: every candidate carries its behaviour (old), a user carries it once (new)
           "theory_row_bytes_per_candidate": {"old": blob_item * (1 + mean_beh), "new": proj_item * (1 + mean_beh / per_user)}}
    pooled = nightly.pooled_shape(model)
    tokens = model_cache.token_source(spark, config, model)
    designs = {
        # the night's: the demand rows go to their item's bucket, where the tokens are read from the cache's files
        "new": lambda: nightly.user_rows(good, model_cache.current(spark, config, model, keys, tokens), events, run_date,
                                         model.max_behaviour, profile, pooled=pooled, tokens=tokens),
        # as before 2026-12-05: the tokens joined in Spark, so shuffled to item_id partitions first, then to the user
        "new_spark_join": lambda: nightly.user_rows(good, model_cache.current(spark, config, model, keys, with_tokens=True),
                                                    events, run_date, model.max_behaviour, profile, pooled=pooled)}
    out["theory_row_bytes_per_candidate"]["new_spark_join"] = out["theory_row_bytes_per_candidate"]["new"]
    if pooled is not None:
        # the nightly job's rows for a pooled-behaviour model: a behaviour item is two d_model means
        pooled_item = (min(mean_tok, 1.0) + 1) * d_model * 4
        out["theory_bytes_per_item"]["new_behaviour"] = pooled_item
        out["theory_row_bytes_per_candidate"]["new"] = proj_item + pooled_item * mean_beh / per_user
        out["theory_row_bytes_per_candidate"]["new_spark_join"] = out["theory_row_bytes_per_candidate"]["new"]
        # the Spark join with every behaviour token, as before 2026-12-04
        designs["new_full_behaviour"] = lambda: nightly.user_rows(
            good, model_cache.current(spark, config, model, keys, with_tokens=True), events, run_date, model.max_behaviour,
            profile)
        out["theory_row_bytes_per_candidate"]["new_full_behaviour"] = proj_item * (1 + mean_beh / per_user)
    old_estimate = 4 * n_cand * blob_mean   # target blobs, behaviour grouping and joins: ~4 blob moves per candidate
    if old_estimate > 0.8 * disk_free:
        print(f"old per-candidate CVR input skipped: ~{old_estimate / 1e9:.0f} GB of shuffle > 80% of {disk_free / 1e9:.0f} GB free")
    else:
        designs["old"] = lambda: nightly.scorable_pairs(good, feature_cache.valid_items(spark, config, fingerprint, keys),
                                                        events, run_date, model.max_behaviour, profile)
    for name, make in designs.items():
        w0 = time.time()
        consume(make())
        w1 = time.time()
        sh = log.totals(w0, w1)
        out[name] = {"seconds": w1 - w0, **sh, "shuffle_write_per_candidate": sh["shuffle_write"] / max(1, n_cand),
                     "shuffle_read_per_candidate": sh["shuffle_read"] / max(1, n_cand)}
        say(f"cvr input, {name} design: {out[name]['shuffle_write_per_candidate']:,.0f} shuffle bytes written per "
            f"candidate ({w1 - w0:.1f}s)", t0)
    if "old" in out:
        out["old_over_new"] = out["old"]["shuffle_write_per_candidate"] / max(1.0, out["new"]["shuffle_write_per_candidate"])
    return out


# ------------------------------------------------------------------------ one size, the report


def one_size(spark, args, n: int, monitor: Monitor, log: StageLog, t0: float, udf_memory: UdfMemory | None = None) -> dict:
    wdir = Path(args.root).resolve() / f"n{n}-s{args.seed}"
    buckets = [f"scoring.token_buckets={max(1, math.ceil(n / args.items_per_bucket))}"] if args.items_per_bucket else []
    config = load_config(args.conf, [f"data.root={wdir / 'tables'}", f"training.artifact_dir={wdir / 'artifacts' / 'model'}",
                                     *buckets, *args.set])
    fcfg = feature_cache.featurizer_config(config)
    fingerprint = feature_cache.featurizer_fingerprint(fcfg)
    text_dim, image_dim = encoder_dims(fcfg)
    shapes = (text_dim, image_dim, fcfg.patch_grid ** 2, fcfg.max_text_tokens)
    blob_mean = ((MIN_TEXT_TOKENS + fcfg.max_text_tokens) / 2 * text_dim + shapes[2] * image_dim) * 2
    free = shutil.disk_usage(wdir.parent if wdir.parent.exists() else _ROOT).free
    need = n * blob_mean
    say(f"N={n}: item_features ~{need / 1e9:.2f} GB ({blob_mean / 1e3:.1f} kB/item), {free / 1e9:.0f} GB free", t0)
    marker = wdir / "world.json"
    world = {"n": n, "seed": args.seed, "shapes": shapes, "fingerprint": fingerprint}
    if args.candidates_per_user != CANDIDATES_PER_USER:   # only then: the worlds written before the flag stay reusable
        world["candidates_per_user"] = args.candidates_per_user
    old = json.loads(marker.read_text()) if marker.is_file() else {}
    if {k: old.get(k) for k in world} == json.loads(json.dumps(world)):
        say(f"N={n}: reusing the world at {wdir}", t0)
    else:
        if need > 0.8 * free:
            print(f"N={n} refused: ~{need / 1e9:.1f} GB of item features exceed 80% of the {free / 1e9:.1f} GB free")
            return {"refused": f"feature bytes {need:.0f} > 80% of free {free:.0f}"}
        for sub in ("tables", "artifacts"):   # only ours: other benchmarks may keep folders beside them
            shutil.rmtree(wdir / sub, ignore_errors=True)
        w = time.perf_counter()
        synthesise(spark, config, n, args.seed, shapes, fingerprint, need, args.candidates_per_user)
        world["seconds"] = time.perf_counter() - w
        wdir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(world, indent=2))
        say(f"N={n}: world written in {world['seconds']:.0f}s", t0)
    # an empty model cache and fresh outputs: night 1 is a full night for this model
    for name in OUTPUTS:
        shutil.rmtree(config.table(name), ignore_errors=True)
    shutil.rmtree(f"{config.table('item_features')}_staging", ignore_errors=True)
    config = save_untrained_model(config, wdir / "artifacts" / "untrained-model", table_vocab(spark, config),
                                  text_dim, image_dim, fingerprint)
    day1 = config.world.run_date
    nights = [run_night(spark, config, f"N={n} night 1 (full)", monitor, log, t0, day1, udf_memory)]
    n_changed = change_titles(spark, config, n, args.changed, args.seed, shapes, fingerprint)
    say(f"N={n}: {n_changed} titles changed", t0)
    day2 = next_night_candidates(spark, config, day1)
    nights.append(run_night(spark, config, f"N={n} night 2 ({n_changed} changed)", monitor, log, t0, day2, udf_memory))
    if args.price_night:
        n_repriced = change_prices(spark, config, n, args.changed)
        say(f"N={n}: {n_repriced} prices changed", t0)
        day3 = next_night_candidates(spark, config, day2)
        nights.append(run_night(spark, config, f"N={n} night 3 ({n_repriced} prices changed)", monitor, log, t0, day3, udf_memory))
    free = shutil.disk_usage(wdir).free
    return {"n": n, "world": world, "token_buckets": config.scoring.token_buckets, "feature_bytes_estimate": need,
            "changed": n_changed, "nights": nights,
            **({} if args.heap_only else {"cvr_input": cvr_input_bytes(spark, config, log, free, blob_mean, t0)})}


def growth(results: dict) -> dict:
    """Per 10x of N between consecutive sizes: factor of seconds per item, per stage, and of peak RSS."""
    sizes = sorted(int(n) for n, r in results.items() if "nights" in r)
    out = {}
    for a, b in itertools.pairwise(sizes):
        per10 = 1 / math.log10(b / a)
        g = {}
        for i, night in enumerate(("night1", "night2")):
            sa, sb = results[str(a)]["nights"][i]["stages"], results[str(b)]["nights"][i]["stages"]
            g[night] = {s: ((sb[s]["seconds"] / b) / (sa[s]["seconds"] / a)) ** per10 if sa[s]["seconds"] else None for s in STAGES}
            g[night]["peak_rss"] = {k: (v / sa["total"]["peak_rss_mib"][k]) ** per10
                                    for k, v in sb["total"]["peak_rss_mib"].items() if sa["total"]["peak_rss_mib"][k]}
            ha, hb = results[str(a)]["nights"][i].get("driver_heap_live_mib"), results[str(b)]["nights"][i].get("driver_heap_live_mib")
            g[night]["driver_heap_live"] = (hb / ha) ** per10 if ha and hb else None
        out[f"{a}->{b}"] = g
    return out


def report(r: dict) -> None:
    if "nights" not in r:
        return
    for night in r["nights"]:
        print(f"\n{night['label']}: {night['status']}; driver JVM live heap after it: "
              f"{night.get('driver_heap_live_mib') or float('nan'):.0f} MiB")
        print(f"  {'stage':10} {'seconds':>8} {'rows/s':>9} {'shuffle R+W MB':>15}   peak RSS MiB: driver py / JVM / worker max / sum"
              " / executor JVM (standalone)")
        for stage, s in night["stages"].items():
            rss = s["peak_rss_mib"]
            print(f"  {stage:10} {s['seconds']:8.1f} {s['rows_per_s'] or 0:9.0f} "
                  f"{(s['shuffle_read'] + s['shuffle_write']) / 1e6:15.1f}   {rss.get('driver_python', 0):6.0f} / "
                  f"{rss.get('driver_jvm', 0):6.0f} / {rss.get('worker_max', 0):6.0f} / {rss.get('workers_sum', 0):6.0f}"
                  f" / {rss.get('executor_jvm', 0):6.0f}")
            for name, u in s.get("udf_memory", {}).items():
                grown = u["peak_grown_max_mib"]
                print(f"    {name:14} {u['tasks']:5} tasks: worker RSS at a task's end <= {u['rss_end_max_mib']:6.0f} MiB"
                      + (f", peak raised to {grown:6.0f} MiB" if grown else ", never raised its worker's peak"))
    if "cvr_input" not in r:
        return
    c = r["cvr_input"]
    print(f"  CVR input per candidate ({c['candidates']} candidates, {c['mean_behaviour']:.1f} behaviour items per user):")
    for name in ("old", "new", "new_spark_join", "new_full_behaviour"):
        if name in c:
            item = c["theory_bytes_per_item"].get(name, c["theory_bytes_per_item"]["new"])
            print(f"    {name}: {c[name]['shuffle_write_per_candidate']:10,.0f} B shuffle written, "
                  f"{c[name]['shuffle_read_per_candidate']:10,.0f} B read; theory: {item:8,.0f} B "
                  f"per item, {c['theory_row_bytes_per_candidate'][name]:10,.0f} B of input row per candidate")
    if "old_over_new" in c:
        print(f"    old / new shuffle bytes per candidate: {c['old_over_new']:.1f}")


def _cpu_model() -> str:
    """platform.processor() is empty on most Linux systems; /proc/cpuinfo names the CPU."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return ""


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.standalone:
        return run(args)
    from _standalone import standalone_cluster

    cores = os.cpu_count() or 2
    memory = f"{int(args.executor_memory.rstrip('g')) + 1}g"
    with standalone_cluster(Path(args.root) / "standalone", cores, memory) as url:
        return run(args, master=url, extra={"spark.driver.memory": args.driver_memory,
                                            "spark.executor.memory": args.executor_memory,
                                            "spark.executor.cores": str(cores)})


def run(args, master: str | None = None, extra: dict | None = None) -> int:
    t0 = time.perf_counter()
    base = load_config(args.conf, args.set)
    from pipeline.session import get_spark

    # the UI's REST API is where the shuffle bytes come from; it keeps every stage of the process
    conf = {**base.spark.conf, "spark.ui.enabled": "true", "spark.ui.showConsoleProgress": "false",
            "spark.ui.retainedStages": "100000", "spark.ui.retainedJobs": "100000", **(extra or {})}
    if args.heap_only:
        conf["spark.ui.enabled"] = "false"
    update = {"conf": conf, **({"master": master} if master else {})}
    spark = get_spark(base.model_copy(update={"spark": base.spark.model_copy(update=update)}))
    t0_wall = time.time()
    app_id = spark.sparkContext.applicationId if master else None
    monitor, log = Monitor(app_id), StageLog(spark)
    udf_memory = UdfMemory(Path(args.root).resolve() / "standalone" / "work", app_id) if master else None
    figures = {"date": dt.datetime.now().isoformat(timespec="seconds"),
               "machine": {"processor": platform.processor(), "cpu_model": _cpu_model(), "platform": platform.platform(),
                           "cores": os.cpu_count(),
                           "ram_gib": psutil.virtual_memory().total / 2**30},
               "config": {"source": str(args.conf), "set": args.set, "model": base.model.model_dump(mode="json"),
                          "featurizer": base.featurizer.model_dump(mode="json"),
                          "scoring": base.scoring.model_dump(mode="json"), "spark": conf,
                          "spark_master": spark.sparkContext.master},
               "sizes": args.sizes, "seed": args.seed, "changed": args.changed, "items_per_bucket": args.items_per_bucket,
               "candidates_per_user": args.candidates_per_user, "results": {}}
    for n in args.sizes:
        r = figures["results"][str(n)] = one_size(spark, args, n, monitor, log, t0, udf_memory)
        report(r)
        figures["growth_per_10x"] = growth(figures["results"])
        if args.json:   # after every size, so a long run keeps what it measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    if figures["growth_per_10x"]:
        print("\ngrowth per 10x of N (seconds per item; peak RSS):")
        for pair, g in figures["growth_per_10x"].items():
            for night, v in g.items():
                print(f"  {pair} {night}: " + ", ".join(f"{s} x{v[s]:.2f}" for s in STAGES if v[s])
                      + " | RSS " + ", ".join(f"{k} x{x:.2f}" for k, x in v["peak_rss"].items())
                      + (f" | driver live heap x{v['driver_heap_live']:.2f}" if v.get("driver_heap_live") else ""))
    if args.rss_trace:
        Path(args.rss_trace).write_text(json.dumps({"keys": ["t", *Monitor.KEYS], "t0": t0_wall,
                                                    "samples": [[round(r[0] - t0_wall, 2), *(round(v / 2**20) for v in r[1:])]
                                                                for r in monitor.samples]}))
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
