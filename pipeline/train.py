"""Training and evaluation orchestration: Spark prepares pinned data, PyTorch trains on it.

    result = run_training(spark, config, if_missing=False)     # jobs/train.py
    report = run_evaluation(spark, config)                     # jobs/evaluate.py

``run_training`` refreshes the item feature cache, writes ``training_examples`` (Spark), builds
a spec (a plain dict: table paths and versions, vocabulary, settings) and runs
``camenn.training.train_fn`` on it: in the driver when ``training.num_processes`` is 1, else
with ``TorchDistributor(num_processes, local_mode=True, use_gpu)``. Rank 0 writes the artifact.

``run_evaluation`` trains the paper's comparison on the same data and seeds (CameNN, MoSE
frame, MMoE frame, CameNN without the alignment tasks, CVR-only single-task transformer),
adds the Bayes-optimal AUC of the synthetic world (``truth_impressions``) on the same test
split, scores mislabel detection against ``truth_items`` and draws the text-image similarity
heat maps; everything goes to ``runs/<config>/<timestamp>/``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from camenn.checkpoint import code_fingerprint
from camenn.config import CALIBRATION_CENTRE, AppConfig, project_root
from pipeline.training_data import TrainingData, prepare_training_data

log = logging.getLogger(__name__)

# The comparison of the paper's ablations: name -> model settings overriding config.model.
VARIANTS: dict[str, dict] = {
    "CameNN": {"frame": "camenn"},
    "MoSE frame (LSTM)": {"frame": "mose"},
    "MMoE frame (MLP)": {"frame": "mmoe"},
    "CameNN w/o ITA+TIA": {"frame": "camenn", "tasks": ["cvr"]},
    "single-task transformer (CVR)": {"frame": "single_task"},
}


# ------------------------------------------------------------------------------ spec


_LATER_MODEL_KEYS = ("alignment_skip",)
_LATER_TRAINING_KEYS = ("hard_negative_share", "hard_negative_kind", "contrastive_weight", "same_category_swaps",
                        "ema_decay", "view_share")


def config_hash(config: AppConfig) -> str:
    """What decides the trained model: model, featurizer, training (but where and how it runs) and the data root.

    The list of seeds is left out: each artifact records its own seed, so an evaluation of
    seeds [0] and a later one of [0, 1, 2] in the same run folder share the seed-0 models.
    """
    training = config.training.model_dump(mode="json",
                                          exclude={"artifact_dir", "num_processes", "use_gpu", "num_threads", "seeds"})
    # settings added later count only when set: at their defaults, earlier artifacts stay current
    for key in _LATER_TRAINING_KEYS:
        if training.get(key) == type(config.training).model_fields[key].default:
            training.pop(key)
    model = config.model.model_dump(mode="json")
    for key in _LATER_MODEL_KEYS:
        if model.get(key) == type(config.model).model_fields[key].default:
            model.pop(key)
    payload = {"name": config.name, "data": config.data.model_dump(mode="json"),
               "model": model, "featurizer": config.featurizer.model_dump(mode="json"),
               "training": training}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def make_spec(config: AppConfig, data: TrainingData, *, seed: int | None = None, model_overrides: dict | None = None,
              artifact_dir: str | None = None) -> dict:
    """The plain-dict input of camenn.training.train_fn (picklable; no Spark objects)."""
    fcfg = config.featurizer.to_featurizer_config()
    model = config.model.model_dump(mode="json")
    model.update(model_overrides or {})
    seed = config.training.seeds[0] if seed is None else seed
    return {
        "config_name": config.name,
        "seed": int(seed),
        "model": model,
        "training": config.training.model_dump(mode="json"),
        "split": config.training.split.model_dump(mode="json"),
        "featurizer": asdict(fcfg),
        "encoder_fingerprint": data.fingerprint,
        "n_patches": fcfg.patch_grid * fcfg.patch_grid,
        # the held-out items' calibration quantiles are taken over the photo and this many views, as the night scores
        "calibration_views": config.scoring.test_time_views,
        "max_text_tokens": fcfg.max_text_tokens,
        "vocab": data.vocab.to_dict(),
        "table_versions": dict(data.versions),
        "paths": {name: config.table(name) for name in ("items", "item_features", "training_examples", "training_items")},
        "n_chunks": len(data.chunks),
        "chunks": {int(c): dict(n) for c, n in data.chunks.items()},
        "artifact_dir": artifact_dir if artifact_dir is not None else config.training.artifact_dir,
        "git_commit": _git_commit(),
        "metadata": {"config_hash": config_hash(config), "code_fingerprint": code_fingerprint(), "examples_source": data.source,
                     "example_counts": data.counts, "dropped_rows": data.drops, "config_source": config.source},
    }


def _git_commit() -> str | None:
    from camenn.training import git_commit

    return git_commit(str(project_root()))


def run_spec(spark, config: AppConfig, spec: dict) -> dict:
    """train_fn(spec) in the driver (1 process) or under TorchDistributor (N local processes, DDP)."""
    from camenn.training import train_fn

    n = config.training.num_processes
    if n == 1:
        return train_fn(spec)
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(num_processes=n, local_mode=True, use_gpu=config.training.use_gpu)
    return distributor.run(train_fn, spec)


# ------------------------------------------------------------------------------ train


@dataclass
class TrainResult:
    artifact: str | None
    model_version: str | None
    metrics: dict
    skipped: bool = False
    data: TrainingData | None = None
    seconds: dict | None = None

    def summary(self) -> str:
        if self.skipped:
            return f"artifact {self.artifact} (version {self.model_version}) is current for this config; training skipped"
        m = self.metrics
        parts = [f"{k}={m[k]:.4f}" for k in ("cvr_auc", "ita_acc", "tia_acc", "ita_auc", "tia_auc",
                                                 "ita_cut", "ita_acc_at_cut", "tia_cut", "tia_acc_at_cut")
                 if isinstance(m.get(k), float)]
        secs = ", ".join(f"{k} {v:.0f}s" for k, v in (self.seconds or {}).items())
        drops = (self.data.drops if self.data else {}) or {"none": 0}
        return (f"trained {self.artifact} (version {self.model_version}): {', '.join(parts)}; "
                f"best epoch {m.get('best_epoch')} of {m.get('epochs_run')}; {secs}\n"
                f"  input rows left out: " + ", ".join(f"{k} ({v})" for k, v in sorted(drops.items())))


def _matching_artifact(path, **wanted):
    """The artifact at path when it loads, verifies and its metadata holds every wanted value; else None."""
    from camenn.checkpoint import ArtifactError, load_artifact

    try:   # a missing folder is an ArtifactError too, on any filesystem
        art = load_artifact(path)
    except (ArtifactError, OSError, ValueError):
        return None
    return art if all(art.metadata.get(k) == v for k, v in wanted.items()) else None


def current_artifact(config: AppConfig, path: str | None = None, seed: int | None = None):
    """The artifact at training.artifact_dir when it loads, verifies and was trained from this config and seed; else None."""
    from pipeline.feature_cache import featurizer_config, featurizer_fingerprint

    seed = config.training.seeds[0] if seed is None else seed
    art = _matching_artifact(path or config.training.artifact_dir, config_hash=config_hash(config), seed=int(seed),
                             encoder_fingerprint=featurizer_fingerprint(featurizer_config(config)))
    required = ("featurizer", "vocab", "max_behaviour", "table_versions", "metrics", "trained_at", "config_name")
    if art is None or not all(k in art.metadata for k in required):
        return None
    # scoring settings are not in the config hash, but calibrated thresholds are only as good as the
    # views they were taken over: a model calibrated over other views than the night's is retrained
    calibrated_over = int(art.metadata["metrics"].get("calibration_views") or 0)
    if config.scoring.thresholds.mode == "calibrated" and calibrated_over != config.scoring.test_time_views:
        return None
    # nor can a model trained before held-out medians were recorded recentre its thresholds
    if config.scoring.thresholds.recentre and config.scoring.thresholds.mode == "calibrated" and any(
            f"{task}_clean_{CALIBRATION_CENTRE}" not in art.metadata["metrics"] for task in ("ita", "tia")):
        return None
    return art


def shipped_artifact_problem(config: AppConfig, path: str | None = None) -> str | None:
    """Why the shipped artifact cannot stand in for training with this config and code; None when it can.

    It can when it verifies and its model settings, featurizer settings, encoder weights and
    model code (camenn.checkpoint.MODEL_CODE) are this config's and this checkout's: the same
    weights then compute the same thing here as where they were trained. Its data and training
    settings may differ (the quick demo ships a model trained on the 20k-item world).
    """
    from camenn.checkpoint import ArtifactError, load_artifact
    from pipeline.feature_cache import featurizer_config, featurizer_fingerprint

    path = path or config.training.shipped_artifact
    if not path:
        return "no training.shipped_artifact configured"
    try:
        art = load_artifact(path)
    except (ArtifactError, OSError, ValueError) as exc:
        return f"{path} does not load: {exc}"
    meta = art.metadata
    if meta.get("code_fingerprint") != code_fingerprint():
        return (f"it was trained with other model code (code fingerprint {meta.get('code_fingerprint')}, this checkout "
                f"{code_fingerprint()}): refresh it with `make ship-demo-model`")
    if meta.get("encoder_fingerprint") != featurizer_fingerprint(featurizer_config(config)):
        return "its item features came from other encoder weights or settings"
    if meta.get("featurizer") != json.loads(json.dumps(asdict(featurizer_config(config)))):
        return "its featurizer settings differ from this config's"
    from camenn.model import frame_config

    wanted = config.model.model_dump(mode="json")
    frame = frame_config(wanted.pop("frame"))
    wanted.update(bottom_type=frame.bottom_type, expert_type=frame.expert_type)
    trained = json.loads(json.dumps(asdict(art.config)))
    differing = sorted(k for k, v in json.loads(json.dumps(wanted)).items() if trained.get(k) != v)
    if differing:
        return f"its model settings differ from this config's: {differing}"
    return None


def use_shipped_artifact(config: AppConfig):
    """Publish the shipped artifact as a new version under training.artifact_dir and load it.

    Call after shipped_artifact_problem said None. The copy is byte for byte (the same manifest,
    so the same version name's hash), and the versions already there are left as they are.
    """
    from camenn.checkpoint import copy_artifact, load_artifact

    return load_artifact(copy_artifact(config.training.shipped_artifact, config.training.artifact_dir))


def run_training(spark, config: AppConfig, *, run_date: dt.date | None = None, if_missing: bool = False,
                 seed: int | None = None) -> TrainResult:
    if if_missing:
        art = current_artifact(config, seed=seed)
        if art is not None:
            return TrainResult(str(art.path), art.version, art.metadata.get("metrics", {}), skipped=True)
    t0 = time.perf_counter()
    run_date = run_date or dt.date.today()
    started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    data = None
    try:
        data = prepare_training_data(spark, config, run_date)
        t1 = time.perf_counter()
        spec = make_spec(config, data, seed=seed)
        spec["metadata"]["data_seconds"] = t1 - t0
        result = run_spec(spark, config, spec)
        t2 = time.perf_counter()
    except BaseException as exc:
        _record_run(spark, config, run_date, started, "failed", data, None, {}, f"{type(exc).__name__}: {exc}")
        raise
    out = TrainResult(result["artifact"], result["model_version"], result["metrics"], data=data,
                      seconds={"data": t1 - t0, "train": t2 - t1})
    _record_run(spark, config, run_date, started, "succeeded", data, out.model_version, out.seconds)
    return out


def _record_run(spark, config: AppConfig, run_date: dt.date, started: dt.datetime, status: str,
                data: TrainingData | None, model_version: str | None, seconds: dict, error: str | None = None) -> None:
    """The training run's ``runs`` row: example counts and every dropped input row counted by reason."""
    from pipeline import tables

    counts = {**(data.counts if data else {}), **(data.drops if data else {})}
    details = {"artifact_dir": config.training.artifact_dir, "config": config.source,
               "dropped_rows": data.drops if data else {}, "n_chunks": len(data.chunks) if data else None}
    if error:
        details["error"] = error[:4000]
    row = tables.runs_row(spark, run_id=os.urandom(16).hex(), job="train", run_date=run_date, model_version=model_version,
                          started_at=started, finished_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
                          status=status, counts=counts, timings=seconds, details=details)
    try:
        tables.append_rows(spark, config, "runs", row)
    except Exception as exc:  # noqa: BLE001 - never hide the run's own error behind the bookkeeping's
        if error is None:
            raise
        log.error(f"could not record the failed run in `runs`: {exc}")


# ------------------------------------------------------------------------------ evaluate


def bayes_auc_on_test_split(spark, config: AppConfig, data: TrainingData) -> dict | None:
    """AUC of the world's true buy probability (truth_impressions.p_buy) on the same test rows; None without truth."""
    from pyspark.sql import functions as F

    from camenn.training import BinnedAUC
    from pipeline import tables

    if data.source != "impressions":
        return None
    try:
        truth = tables.read_table(spark, config, "truth_impressions")
    except tables.MissingTable:
        return None
    test = (tables.read_table(spark, config, "training_examples", version=data.versions["training_examples"])
            .where(F.col("split") == "test").select("user_id", "item_id", "ts", "label"))
    truth = truth.groupBy("user_id", "item_id", "ts").agg(F.avg("p_buy").alias("p_buy"))
    rows = test.join(truth, ["user_id", "item_id", "ts"], "left").select("label", "p_buy")
    # histograms per label in Spark, as the training processes reduce theirs: no test row reaches the driver
    hist = BinnedAUC()
    bins = hist.counts.shape[1]
    at = F.least(F.lit(bins - 1), F.floor(F.col("p_buy") * bins)).cast("int")
    for r in (rows.where(F.col("p_buy").isNotNull()).groupBy("label", at.alias("bin"))
              .agg(F.count(F.lit(1)).alias("n")).collect()):
        hist.counts[int(r["label"]), int(r["bin"])] += r["n"]
    n_test = rows.count()
    return {"bayes_auc": hist.auc(), "n_test": int(n_test), "n_matched": hist.n}


def _world_tags() -> dict[str, str]:
    """Column name -> regex of the synthetic world's tag sentences (synthetic.TAG_SENTENCES)."""
    from synthetic import TAG_SENTENCES as t

    return {"tag_bestseller": re.escape(t["bestseller"]), "tag_local": re.escape(t["local"]),
            "tag_organic": f"{re.escape(t['organic'])}|{re.escape(t['eco'])}"}


def inputs_ceiling(spark, config: AppConfig, data: TrainingData) -> dict | None:
    """CVR AUC of a logistic regression on the world's observable features (camenn.evaluation.logistic_ceiling).

    Spark builds one compact row per training example (target category, price, profile, tag
    words, behaviour items sharing the target's category); those rows (a few numbers each)
    go to the driver for scikit-learn. None when the examples do not come from impressions.
    """
    from pyspark.sql import functions as F

    from camenn.evaluation import logistic_ceiling
    from pipeline import tables

    if data.source != "impressions":
        return None
    v = data.versions
    ex = tables.read_table(spark, config, "training_examples", version=v["training_examples"])
    items = (tables.read_table(spark, config, "items", version=v["items"])
             .dropDuplicates(["item_id"])
             .select("item_id", "category", "price", F.concat_ws(" ", "title", "description").alias("text")))
    rows = (ex.join(items, "item_id")
            .select("example_id", "split", "label", "category", "price", *config.data.profile_fields,
                    *[F.col("text").rlike(rx).alias(name) for name, rx in _world_tags().items()]))
    match = (ex.select("example_id", F.explode("behaviour").alias("b_item"))
             .join(items.select(F.col("item_id").alias("b_item"), F.col("category").alias("b_category")), "b_item")
             .join(rows.select("example_id", "category"), "example_id")
             .groupBy("example_id").agg(F.sum((F.col("b_category") == F.col("category")).cast("int")).alias("match")))
    frame = rows.join(match, "example_id", "left").fillna(0, ["match"]).drop("example_id")
    # scikit-learn fits on the driver: a configured sample of the examples, never all of them
    n = frame.count()
    cap = config.training.ceiling_sample_rows
    if n > cap:
        frame = frame.sample(fraction=min(1.0, 1.05 * cap / n), seed=config.training.split.seed).limit(cap)
    log.info(f"evaluate: inputs ceiling: logistic regression on {min(n, cap)} of {n} examples "
             f"(training.ceiling_sample_rows={cap})")
    return logistic_ceiling(frame.toPandas(), seed=config.training.split.seed, profile_fields=config.data.profile_fields)


def run_evaluation(spark, config: AppConfig, *, out_dir: str | None = None, variants: list[str] | None = None,
                   run_date: dt.date | None = None) -> dict:
    """The comparison table, Bayes ceiling, mislabel detection and heat maps; returns the metrics dict."""
    from camenn import evaluation as ev
    from camenn.checkpoint import load_artifact

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out_dir) if out_dir else project_root() / "runs" / config.name / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = prepare_training_data(spark, config, run_date)
    log.info(f"evaluate: data ready in {time.perf_counter() - t0:.0f}s: training_examples "
             f"v{data.versions['training_examples']} ({data.source}) {data.counts}")
    names = variants or list(VARIANTS)
    if not any(k.startswith("train_") for k in data.counts):
        # no CVR examples (a catalogue without purchases): the variants that only rank CVR have nothing to learn
        names = [n for n in names if set(VARIANTS[n].get("tasks", ("ita", "tia"))) & {"ita", "tia"}
                 and VARIANTS[n].get("frame") != "single_task"]
        log.info(f"evaluate: no CVR examples: ITA/TIA only, variants {names}")
    results: dict[str, list[dict]] = {name: [] for name in names}
    artifacts: dict[str, str] = {}
    # seed by seed, so an evaluation cut short still has whole seeds; a model already in the run
    # folder from this config, data, variant and seed is reused, so rerunning the same --out resumes
    for seed in config.training.seeds:
        for name in names:
            spec = make_spec(config, data, seed=seed, model_overrides=VARIANTS[name],
                             artifact_dir=str(run_dir / "models" / f"{ev.slug(name)}-s{seed}"))
            spec["metadata"]["variant"] = name
            run = finished_run(spec)
            if run is None:
                log.info(f"evaluate: {name}, seed {seed}")
                run = run_spec(spark, config, spec)
            else:
                log.info(f"evaluate: {name}, seed {seed}: reusing the model in {spec['artifact_dir']}")
            results[name].append({"seed": seed, **run["metrics"], "history": run["history"]})
            artifacts.setdefault(name, spec["artifact_dir"])
            _dump(run_dir / "metrics.json", {"partial": True, "runs": results})
    bayes = bayes_auc_on_test_split(spark, config, data)
    ceiling = inputs_ceiling(spark, config, data)
    table = ev.comparison(results, bayes["bayes_auc"] if bayes else None)
    chart = ev.comparison_chart(results, run_dir / "comparison.png", bayes["bayes_auc"] if bayes else None,
                                ceiling["auc"] if ceiling else None)
    curves = ev.learning_curves_chart(results, run_dir / "learning_curves.png", ceiling["auc"] if ceiling else None)

    metrics: dict = {"config": config.name, "config_source": config.source, "created": stamp,
                     "table_versions": data.versions, "examples_source": data.source, "example_counts": data.counts,
                     "seeds": list(config.training.seeds), "bayes": bayes, "inputs_ceiling": ceiling, "comparison": table,
                     "comparison_chart": chart, "learning_curves_chart": curves, "runs": results,
                     "artifacts": artifacts}

    # mislabel detection and heat maps, from the first seed's models
    main = artifacts.get("CameNN")
    if main:
        from pipeline.training_data import load_item_store

        art = load_artifact(main)
        vocab = ev.FeatureVocab.from_dict(art.metadata["vocab"])
        v = data.versions
        store = load_item_store(spark, config.table("item_features"), v["item_features"], config.table("items"), v["items"],
                                data.fingerprint, vocab, art.config.n_patches)
        truth = _truth_items(spark, config)
        split = config.training.split
        if truth is not None:
            thresholds = config.scoring.thresholds.for_model(art.metadata.get("metrics") or {}, art.version)
            metrics["mislabel"] = ev.mislabel_detection(art.model, store, truth, thresholds,
                                                        split.test_fraction, split.valid_fraction, split.seed)
        before = artifacts.get("CameNN w/o ITA+TIA")
        ids = ev.pick_heatmap_items(store, truth, n=8, seed=config.training.seeds[0])
        figs = {}
        if before:
            figs["before"] = ev.similarity_heatmap(load_artifact(before).model, store, ids, run_dir / "fig4_before_alignment.png",
                                                   "before alignment training (CameNN w/o ITA+TIA)")
        figs["after"] = ev.similarity_heatmap(art.model, store, ids, run_dir / "fig5_after_alignment.png",
                                              "after alignment training (CameNN)")
        metrics["heatmaps"] = figs
    metrics["seconds"] = time.perf_counter() - t0
    _dump(run_dir / "metrics.json", metrics)
    (run_dir / "report.md").write_text(ev.report_markdown(metrics))
    return {"run_dir": str(run_dir), **metrics}


def finished_run(spec: dict) -> dict | None:
    """{"metrics", "history"} of the model at spec's artifact_dir if it was trained from this very spec, else None.

    The same keys as train_fn's result, so a reused model and a fresh one enter the evaluation alike.
    """
    art = _matching_artifact(spec["artifact_dir"], config_hash=spec["metadata"]["config_hash"],
                             variant=spec["metadata"]["variant"], seed=spec["seed"],
                             table_versions=spec["table_versions"], encoder_fingerprint=spec["encoder_fingerprint"])
    if art is None:
        return None
    return {"metrics": art.metadata.get("metrics", {}), "history": art.metadata.get("history", [])}


def _truth_items(spark, config: AppConfig):
    from pipeline import tables

    try:
        return tables.read_table(spark, config, "truth_items").select("item_id", "defect").toPandas()
    except tables.MissingTable:
        return None


def _dump(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


__all__ = ["VARIANTS", "config_hash", "make_spec", "run_spec", "run_training", "run_evaluation", "TrainResult",
           "current_artifact", "finished_run", "bayes_auc_on_test_split", "inputs_ceiling"]
