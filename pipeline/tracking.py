"""MLflow tracking and model registry: what was trained, from what, how well, and which model is in service.

    log_training(config, artifact)     # jobs/train.py: params, per-epoch and held-out metrics; registers a version
    log_evaluation(config, report)     # jobs/evaluate.py: the comparison table, its charts, the report
    resolve_model(config)              # scoring: scoring.model_dir (a path or models:/camenn@champion) -> one version
    set_alias(config, version)         # pipeline.promote: the champion moves (and moves back: the rollback)

The model's bytes stay where camenn.checkpoint put them (an immutable version folder, local or
on S3); a registered version is a pointer to that folder (its ``source``) plus the run that
made it. The registry's ``champion`` alias names the version the nightly job scores with, so
promoting a model and rolling it back are alias moves, and no artifact is ever rewritten.

The store is ``tracking.uri``: by default a SQLite file under runs/mlflow/ (no server to run;
MLflow 3's plain-file store is in maintenance mode and refuses to start unless told to, and it
has no registry worth the name), in production a tracking server's address. mlflow-skinny is
enough for both: the SQL store needs only SQLAlchemy and Alembic beside it. Every function
here opens its own MlflowClient for the config's URI: no global MLflow state is touched.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from camenn.config import AppConfig, project_root

log = logging.getLogger(__name__)

MODELS_URI = "models:/"
_MAX_PARAM = 6000   # characters MLflow keeps of a parameter's value


@dataclass
class Registered:
    """A registered model version: its registry name and number, where its artifact lies, the run that logged it."""

    name: str
    version: str
    source: str
    run_id: str | None
    champion: bool = False

    def __str__(self) -> str:
        return f"{self.name}/{self.version}" + (" (champion)" if self.champion else "")


# ------------------------------------------------------------------------------ the store


def store_uri(config: AppConfig) -> str:
    """tracking.uri with a relative sqlite path made absolute (against the project root) and its folder created."""
    uri = config.tracking.uri
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = Path(uri[len(prefix):])
    path = path if path.is_absolute() else project_root() / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"{prefix}{path}"


def client(config: AppConfig):
    from mlflow import MlflowClient

    uri = store_uri(config)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifact_location(config: AppConfig) -> str | None:
    """Where a new experiment's run files go: the config's, or mlflow-artifacts/ beside a SQLite store."""
    if config.tracking.artifact_location:
        return config.tracking.artifact_location
    uri = store_uri(config)
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlflow-artifacts").as_uri()
    return None   # a tracking server's own default


def experiment_id(mlf, config: AppConfig) -> str:
    from mlflow.exceptions import MlflowException

    name = config.tracking.experiment
    found = mlf.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlf.create_experiment(name, artifact_location=_artifact_location(config))
    except MlflowException:   # another job created it between the two calls
        return mlf.get_experiment_by_name(name).experiment_id


def ui_hint(config: AppConfig) -> str:
    """How to look at the runs and the registry (the UI is in the full `mlflow` package, not in skinny)."""
    uri = store_uri(config)
    if uri.startswith("http"):
        return f"MLflow UI: {uri}"
    return f"MLflow store {uri}; to browse it: pip install mlflow && mlflow ui --backend-store-uri {uri}"


# ------------------------------------------------------------------------------ logging


def _flatten(prefix: str, value, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[prefix] = text[:_MAX_PARAM]
    return out


def training_params(config: AppConfig) -> dict[str, str]:
    """What decides a trained model, as MLflow params: the model, featurizer and training sections, dotted."""
    sections = {"model": config.model.model_dump(mode="json"), "featurizer": config.featurizer.model_dump(mode="json"),
                "training": config.training.model_dump(mode="json")}
    return _flatten("", sections, {"config": config.name, "config_source": config.source})


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def log_values(mlf, run_id: str, params: dict[str, str] | None = None, metrics: list[tuple[str, float, int]] | None = None):
    """Params and (key, value, step) metrics in batches (MLflow takes at most 100 params and 1000 metrics a call)."""
    from mlflow.entities import Metric, Param

    items = sorted((params or {}).items())
    for i in range(0, len(items), 100):
        mlf.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
    now = int(time.time() * 1000)
    rows = [Metric(k, v, now, step) for k, v, step in metrics or [] if v is not None and not math.isinf(v)]
    for i in range(0, len(rows), 1000):
        mlf.log_batch(run_id, metrics=rows[i:i + 1000])


def history_metrics(history: list[dict], prefix: str = "") -> list[tuple[str, float, int]]:
    """One metric per number of each epoch's record (train_loss, valid_loss, valid_cvr_auc, ...), stepped by epoch."""
    out = []
    for record in history:
        step = int(record.get("epoch", 0))
        out += [(f"{prefix}{k}", _number(v), step) for k, v in record.items() if k != "epoch" and _number(v) is not None]
    return out


def _find_version(mlf, name: str, source: str) -> Registered | None:
    for mv in mlf.search_model_versions(f"name='{name}'"):
        if mv.source == source:
            return Registered(name, str(mv.version), source, mv.run_id)
    return None


# What the versions of one registered model share, so that the promotion gate can compare a candidate
# with the champion and either can serve the same night: the item features they read (the encoder
# fingerprint) and their heads. Each version carries them as tags.
KIND_TAGS = ("encoder_fingerprint", "tasks")


def model_kind(encoder_fingerprint: str | None, tasks=None) -> dict[str, str]:
    """The KIND_TAGS of a model; ``tasks`` None: not known yet (before training, see check_registrable)."""
    kind = {"encoder_fingerprint": str(encoder_fingerprint)}
    if tasks is not None:
        kind["tasks"] = ",".join(sorted(tasks))
    return kind


def check_registrable(config: AppConfig, kind: dict[str, str], mlf=None) -> None:
    """RegistryError (one line) when tracking.registered_model's champion is of another kind than ``kind``.

    Why: a config that registers into another catalogue's registered model (the grocery config
    once registered into the demo's ``camenn``) offers its version as that catalogue's next
    candidate, which the gate can never compare and a night of the other catalogue cannot use. A
    champion registered before the kind tags existed has nothing to compare and passes.
    """
    if not config.tracking.enabled:
        return
    from mlflow.exceptions import MlflowException

    mlf = mlf or client(config)
    name, alias = config.tracking.registered_model, config.tracking.champion_alias
    try:
        champion = mlf.get_model_version_by_alias(name, alias)
    except MlflowException:
        return   # no such registered model or no champion yet: nothing to be comparable with
    differ = [k for k in kind if champion.tags.get(k) is not None and champion.tags[k] != kind[k]]
    if differ:
        said = "; ".join(f"{k} {champion.tags[k][:16]} against this model's {kind[k][:16]}" for k in differ)
        raise RegistryError(f"{name}@{alias} (version {champion.version}) is another kind of model ({said}): register "
                            "this one under a registered model of its own (tracking.registered_model in its config)")


def _register(mlf, config: AppConfig, source: str, run_id: str | None, tags: dict[str, str]) -> Registered:
    from mlflow.exceptions import MlflowException

    name = config.tracking.registered_model
    try:
        mlf.create_registered_model(name, description="CameNN: the item alignment (ITA/TIA) and CVR model")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = mlf.create_model_version(name, source=source, run_id=run_id, tags=tags)
    registered = Registered(name, str(mv.version), source, run_id)
    alias = config.tracking.champion_alias
    if config.tracking.promote_first and alias not in mlf.get_registered_model(name).aliases:
        mlf.set_registered_model_alias(name, alias, registered.version)   # nothing in service yet: nothing to beat
        registered.champion = True
    return registered


def log_training(config: AppConfig, artifact: str, *, origin: str = "trained", seconds: dict | None = None) -> Registered | None:
    """Log the training run that wrote ``artifact`` and register the artifact's version; None when tracking is off.

    ``origin``: "trained" (params are this config's) or "shipped" (a model trained elsewhere,
    copied in: only its own held-out metrics are logged). An artifact already registered (a
    rerun that skipped training) is not registered twice.
    """
    if not config.tracking.enabled:
        return None
    from camenn.checkpoint import load_artifact

    art = load_artifact(artifact)   # verified: what is logged and registered is what scoring will load
    mlf = client(config)
    found = _find_version(mlf, config.tracking.registered_model, art.path)
    if found is not None:
        return found
    meta = art.metadata
    kind = model_kind(meta.get("encoder_fingerprint"), art.config.tasks)
    check_registrable(config, kind, mlf)
    run = mlf.create_run(experiment_id(mlf, config), run_name=f"train {config.name} seed {meta.get('seed')}",
                         tags={"camenn.job": "train", "camenn.origin": origin, "camenn.artifact": art.path,
                               "camenn.model_version": art.version, "camenn.config": config.name})
    run_id = run.info.run_id
    try:
        params = training_params(config) if origin == "trained" else {"shipped_from": str(meta.get("config_name"))}
        params.update(_flatten("artifact", {k: meta.get(k) for k in ("seed", "config_hash", "code_fingerprint",
                                                                       "encoder_fingerprint", "table_versions",
                                                                       "examples_source", "git_commit", "trained_at")}, {}))
        metrics = history_metrics(meta.get("history") or [])
        metrics += [(f"test_{k}", _number(v), 0) for k, v in (meta.get("metrics") or {}).items() if _number(v) is not None]
        metrics += [(f"seconds_{k}", _number(v), 0) for k, v in (seconds or {}).items()]
        log_values(mlf, run_id, params, metrics)
        registered = _register(mlf, config, art.path, run_id, {"model_version": art.version, "origin": origin,
                                                                "config": config.name, **kind})
        mlf.set_tag(run_id, "camenn.registered_version", registered.version)
    except BaseException:
        mlf.set_terminated(run_id, "FAILED")
        raise
    mlf.set_terminated(run_id)
    return registered


def log_evaluation(config: AppConfig, report: dict) -> str | None:
    """Log an evaluation (pipeline.train.run_evaluation's result): the table, per-epoch curves, charts, report; its run id."""
    if not config.tracking.enabled:
        return None
    from camenn.evaluation import slug

    mlf = client(config)
    run_dir = Path(report["run_dir"])
    run = mlf.create_run(experiment_id(mlf, config), run_name=f"evaluate {config.name}",
                         tags={"camenn.job": "evaluate", "camenn.run_dir": str(run_dir), "camenn.config": config.name})
    run_id = run.info.run_id
    try:
        metrics = []
        for row in report.get("comparison") or []:
            name = slug(row["model"])
            metrics += [(f"{name}.{k}", _number(v), 0) for k, v in row.items() if _number(v) is not None]
        for variant, runs in (report.get("runs") or {}).items():
            for r in runs:
                metrics += history_metrics(r.get("history") or [], prefix=f"{slug(variant)}.s{r.get('seed')}.")
        for key in ("bayes", "inputs_ceiling", "mislabel"):
            for k, v in (report.get(key) or {}).items():
                metrics.append((f"{key}.{k}", _number(v), 0))
        log_values(mlf, run_id, {**training_params(config), "seeds": json.dumps(report.get("seeds")),
                           "table_versions": json.dumps(report.get("table_versions"))}, metrics)
        if report.get("comparison"):
            import pandas as pd

            mlf.log_table(run_id, pd.DataFrame(report["comparison"]).drop(columns=["seeds"], errors="ignore"),
                          "comparison.json")
        for path in sorted(run_dir.glob("*")):   # charts, heat maps, report.md, metrics.json; not the models/ folder
            if path.is_file() and path.suffix in (".png", ".md", ".json"):
                mlf.log_artifact(run_id, str(path))
    except BaseException:
        mlf.set_terminated(run_id, "FAILED")
        raise
    mlf.set_terminated(run_id)
    return run_id


# ------------------------------------------------------------------------------ the registry


class RegistryError(ValueError):
    """A models:/ reference that names no version (no such model, version or alias); one line."""


def _parse(reference: str) -> tuple[str, str | None, str | None]:
    """models:/name@alias -> (name, None, alias); models:/name/3 -> (name, "3", None)."""
    body = reference[len(MODELS_URI):].strip("/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, None, alias
    name, _, version = body.partition("/")
    if not name or not version.isdigit():
        raise RegistryError(f"{reference!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    return name, version, None


def lookup(config: AppConfig, reference: str) -> Registered:
    """The version a models:/ reference names, with its artifact location."""
    from mlflow.exceptions import MlflowException

    name, number, alias = _parse(reference)
    mlf = client(config)
    try:
        mv = mlf.get_model_version_by_alias(name, alias) if alias else mlf.get_model_version(name, number)
    except MlflowException as exc:
        raise RegistryError(f"{reference} names no model version in {store_uri(config)} ({exc.error_code}); "
                            f"train and register one (`make train`) or point scoring.model_dir at an artifact") from None
    aliases = set(getattr(mv, "aliases", None) or [])
    return Registered(name, str(mv.version), mv.source, mv.run_id, champion=config.tracking.champion_alias in aliases)


def resolve_model(config: AppConfig) -> AppConfig:
    """The config with scoring.model_dir pinned to one version folder, resolved here on the driver.

    A models:/ reference is looked up in the registry (and the version it named is kept in
    scoring.registered_version, which the runs row records); a root of versions becomes its
    LATEST version. Every worker then loads that one folder, whatever is published meanwhile.
    """
    from camenn.checkpoint import resolve_artifact

    reference, registered = config.model_dir, config.scoring.registered_version
    if reference.startswith(MODELS_URI):
        found = lookup(config, reference)
        reference, registered = found.source, f"{found.name}/{found.version}"
    resolved = resolve_artifact(reference)
    return config.model_copy(update={"scoring": config.scoring.model_copy(
        update={"model_dir": resolved, "registered_version": registered})})


def set_alias(config: AppConfig, version: str, alias: str | None = None, *, reason: str = "") -> str | None:
    """Point ``alias`` (default the champion) at ``version``; returns the version it named before (None if none)."""
    mlf = client(config)
    name, alias = config.tracking.registered_model, alias or config.tracking.champion_alias
    before = mlf.get_registered_model(name).aliases.get(alias)
    mlf.set_registered_model_alias(name, alias, str(version))
    mlf.set_model_version_tag(name, str(version), f"{alias}_since", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if reason:
        mlf.set_model_version_tag(name, str(version), f"{alias}_reason", reason[:_MAX_PARAM])
    return None if before is None else str(before)


__all__ = ["Registered", "RegistryError", "KIND_TAGS", "model_kind", "check_registrable", "store_uri", "client", "ui_hint",
           "training_params", "history_metrics",
           "experiment_id", "log_values", "log_training", "log_evaluation", "lookup", "resolve_model", "set_alias", "MODELS_URI"]
