"""The promotion gate and the rollback: which registered version the champion alias names, and why.

    decision = evaluate(session, config, candidate="7", run_date=d)   # figures of both, the gate's verdict; nothing moves
    decision = promote(session, config, candidate="7", run_date=d)    # the same, and the alias moves when the gate passes
    decision = move_alias(config, "5", reason="rollback ...")       # an operator's move: the rollback, or a pin
    previous_champion(config)                                       # the version the last move took the alias from

The candidate and the champion are measured on the same held-out data by the code training
measures with (``camenn.training.held_out_metrics``): the test split of the current
``training_examples`` (CVR AUC) and the held-out items with the same swapped texts and images
(ITA / TIA accuracy). Each model reads the examples with its own vocabulary and behaviour
length, from the same pinned table versions, so only the weights differ. The data is what
``pipeline.training_data.prepare_training_data`` gives for the run date: right after a
training of the same date it reuses the very versions the candidate was trained and tested on.
The item split is a salted hash of the item id and the CVR split a hash of the user (or time
quantiles), so while ``training.split`` is unchanged the champion has not trained on this test
data either (change the split and the champion's figures may include its own training rows).

The gate (``compare``): the candidate passes when each figure of ``promotion.margins`` is at
least the champion's minus its margin. A figure the champion lacks (an alignment-only champion
has no CVR AUC) is not gated; one the candidate lacks fails it. Every evaluation is an MLflow
run (``camenn.job = promote``) with both models' figures, the margins, the verdict and whether
the alias moved; the candidate's registry version is tagged with the outcome. Moving the alias
is ``pipeline.tracking.set_alias``; the version it took the alias from is kept on the new
champion (tag ``champion_previous``), which is what ``--rollback`` moves it back to.

``session`` is a function that returns the SparkSession: Spark starts only when something is
measured, not for a decision already recorded or a candidate already in service. The evaluation
runs in the driver, one chunk of examples at a time (the chunks training wrote),
so it holds one chunk whatever the catalogue; at catalogue scale it is one pass over the test
rows of every chunk per model, on the driver's GPU when ``training.use_gpu``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from camenn.config import AppConfig
from pipeline import tracking

log = logging.getLogger(__name__)

GATED = ("ita_acc", "tia_acc", "cvr_auc")          # the figures a margin may name (camenn.config.PromotionConfig)
REPORTED = GATED + ("ita_auc", "tia_auc", "n_test", "n_items")
PREVIOUS_TAG = "champion_previous"


class PromotionError(ValueError):
    """Nothing to decide (no such version, no registered model, models that cannot be compared); one line."""


@dataclass
class Decision:
    """One evaluation of a candidate against the champion, or an operator's move of the alias."""

    candidate: str                      # the registry version the alias may move to
    champion: str | None                # the version it named when the decision was taken
    passed: bool                        # the gate's verdict (True for an operator's move)
    moved: bool                         # the alias moved to the candidate
    reason: str
    figures: dict[str, dict] = field(default_factory=dict)   # "candidate" / "champion" -> held-out figures
    checks: list[dict] = field(default_factory=list)         # per gated figure: candidate, champion, margin, passed
    table_versions: dict[str, int] = field(default_factory=dict)
    run_id: str | None = None           # the MLflow run that records it

    def summary(self) -> str:
        lines = [f"candidate {self.candidate}, champion {self.champion}: "
                 + ("promoted" if self.moved else "passed, alias not moved" if self.passed else "refused")
                 + f" ({self.reason})"]
        for c in self.checks:
            lines.append(f"  {c['figure']}: candidate {_f(c['candidate'])}, champion {_f(c['champion'])}, "
                         f"margin {c['margin']:g}: {'ok' if c['passed'] else 'worse'}")
        if self.run_id:
            lines.append(f"  MLflow run {self.run_id}")
        return "\n".join(lines)


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"


# ------------------------------------------------------------------------------ the gate (pure)


def compare(candidate: dict, champion: dict, margins: dict[str, float]) -> tuple[bool, list[dict], str]:
    """(passed, per-figure checks, reason): each margin's figure of the candidate >= the champion's - margin."""
    checks = []
    for figure, margin in margins.items():
        ours, theirs = candidate.get(figure), champion.get(figure)
        if theirs is None:
            continue   # the champion has no such figure (no cvr head): nothing to be worse than
        ok = ours is not None and ours >= theirs - margin - 1e-12
        checks.append({"figure": figure, "candidate": ours, "champion": theirs, "margin": margin, "passed": ok})
    worse = [c["figure"] for c in checks if not c["passed"]]
    if worse:
        return False, checks, "worse than the champion beyond the margin on " + ", ".join(worse)
    if not checks:
        return False, checks, "no gated figure measured for the champion; nothing to compare"
    return True, checks, "no worse than the champion on " + ", ".join(c["figure"] for c in checks)


# ------------------------------------------------------------------------------ the registry side


def _versions(mlf, config: AppConfig) -> list[str]:
    name = config.tracking.registered_model
    found = sorted((int(mv.version) for mv in mlf.search_model_versions(f"name='{name}'")), reverse=True)
    if not found:
        raise PromotionError(f"no version of {name} in {tracking.store_uri(config)}: train one first (`make train`)")
    return [str(v) for v in found]


def champion_version(config: AppConfig) -> str | None:
    mlf = tracking.client(config)
    aliases = mlf.get_registered_model(config.tracking.registered_model).aliases
    found = aliases.get(config.tracking.champion_alias)
    return None if found is None else str(found)


def _candidate(config: AppConfig, wanted: str | None) -> str:
    """The version named, checked to exist; by default the newest registered version."""
    known = _versions(tracking.client(config), config)
    if wanted is None:
        return known[0]
    if str(wanted) not in known:
        raise PromotionError(f"{config.tracking.registered_model} has no version {wanted} (versions: {', '.join(known)})")
    return str(wanted)


def previous_champion(config: AppConfig) -> str:
    """The version the champion alias named before its last move (the rollback's target)."""
    current = champion_version(config)
    if current is None:
        raise PromotionError(f"{config.tracking.registered_model} has no {config.tracking.champion_alias} alias to roll back")
    mv = tracking.client(config).get_model_version(config.tracking.registered_model, current)
    previous = (mv.tags or {}).get(PREVIOUS_TAG)
    if not previous:
        raise PromotionError(f"{config.tracking.champion_alias} ({config.tracking.registered_model}/{current}) has not "
                             "moved since it was first set: no earlier version to roll back to")
    return previous


def _move(config: AppConfig, version: str, reason: str) -> str | None:
    """Point the champion alias at ``version``, keeping the version it leaves on the new champion."""
    before = tracking.set_alias(config, version, reason=reason)
    if before is not None and before != version:
        tracking.client(config).set_model_version_tag(config.tracking.registered_model, version, PREVIOUS_TAG, before)
    return before


# ------------------------------------------------------------------------------ measuring


def held_out_figures(spark, config: AppConfig, versions: dict[str, str], run_date: dt.date | None) -> tuple[dict, dict]:
    """role -> held-out figures of each registered version, all on the same data; and the table versions read.

    ``versions``: role ("candidate", "champion") -> registry version number.
    """
    import torch

    from camenn.checkpoint import load_artifact
    from camenn.chunks import ChunkCache, load_chunk
    from camenn.inputs import FeatureVocab
    from camenn.training import _Dist, held_out_metrics, item_split
    from pipeline.train import make_spec
    from pipeline.training_data import prepare_training_data

    models = {}
    for role, version in versions.items():   # every model verified before any Spark work
        registered = tracking.lookup(config, f"{tracking.MODELS_URI}{config.tracking.registered_model}/{version}")
        models[role] = load_artifact(registered.source)
    # the feature cache is read as it is (training and the nightly job keep it current): no encoding here
    data = prepare_training_data(spark, config, run_date, update_features=False)
    for role, art in models.items():
        if art.metadata.get("encoder_fingerprint") != data.fingerprint:
            raise PromotionError(f"{role} {versions[role]} was trained on other item features (encoder fingerprint "
                                 f"{str(art.metadata.get('encoder_fingerprint'))[:12]}, this config's {data.fingerprint[:12]}): "
                                 "its figures would not be comparable")
    spec = make_spec(config, data)
    split = config.training.split
    device = torch.device("cuda" if config.training.use_gpu and torch.cuda.is_available() else "cpu")
    chunks = sorted(int(c) for c in data.chunks)
    figures = {}
    for role, art in models.items():
        # the same rows for both; each model reads them with its own vocabulary and behaviour length
        model_spec = {**spec, "model": {**spec["model"], "max_behaviour": art.config.max_behaviour}}
        vocab = FeatureVocab.from_dict(art.metadata["vocab"])

        def load(c, model_spec=model_spec, vocab=vocab):
            return load_chunk(model_spec, c, vocab,
                              lambda i: item_split(i, split.test_fraction, split.valid_fraction, split.seed))

        # one process, nothing to reduce (_Dist() is training's single-process world); the seed fixes the swapped negatives
        metrics = held_out_metrics(art.model.to(device), ChunkCache(load), chunks, max(256, config.training.batch_size),
                                   device, split.seed, _Dist())
        figures[role] = {k: float(metrics[k]) for k in REPORTED if metrics.get(k) is not None}
        log.info(f"promote: {role} {versions[role]} on the held-out data: "
                 + ", ".join(f"{k} {figures[role][k]:.4f}" for k in GATED if k in figures[role]))
    return figures, dict(data.versions)


# ------------------------------------------------------------------------------ recording


def _record(config: AppConfig, decision: Decision, run_date: dt.date | None, kind: str) -> str:
    """The decision as an MLflow run of the experiment: figures as metrics, the verdict as tags, decision.json."""
    mlf = tracking.client(config)
    run = mlf.create_run(tracking.experiment_id(mlf, config),
                         run_name=f"promote {config.name}: {decision.candidate} vs {decision.champion}",
                         tags={"camenn.job": "promote", "camenn.kind": kind, "camenn.config": config.name,
                               "camenn.candidate": decision.candidate, "camenn.champion": str(decision.champion),
                               "camenn.run_date": str(run_date or ""), "camenn.passed": str(decision.passed).lower(),
                               "camenn.moved": str(decision.moved).lower(), "camenn.reason": decision.reason[:5000]})
    metrics = [(f"{role}.{k}", v, 0) for role, figs in decision.figures.items() for k, v in figs.items()
               if isinstance(v, float)]
    metrics += [(f"margin.{c['figure']}", float(c["margin"]), 0) for c in decision.checks]
    tracking.log_values(mlf, run.info.run_id, {"margins": json.dumps(config.promotion.margins),
                                               "table_versions": json.dumps(decision.table_versions)}, metrics)
    decision.run_id = run.info.run_id
    mlf.log_dict(run.info.run_id, asdict(decision), "decision.json")
    mlf.set_terminated(run.info.run_id)
    return run.info.run_id


def _mark_moved(config: AppConfig, decision: Decision) -> None:
    mlf = tracking.client(config)
    mlf.set_tag(decision.run_id, "camenn.moved", "true")
    mlf.log_dict(decision.run_id, asdict(decision), "decision.json")


def _tag_candidate(config: AppConfig, decision: Decision) -> None:
    outcome = "promoted" if decision.moved else "passed" if decision.passed else "refused"
    tracking.client(config).set_model_version_tag(config.tracking.registered_model, decision.candidate, "promotion",
                                                  f"{outcome} against {decision.champion} (MLflow run {decision.run_id})")


def _recorded(config: AppConfig, candidate: str, champion: str, run_date: dt.date | None) -> Decision | None:
    """An evaluation already recorded for this candidate, champion and run date (the DAG's evaluate task), else None."""
    mlf = tracking.client(config)
    found = mlf.search_runs([tracking.experiment_id(mlf, config)],
                            filter_string=(f"tags.`camenn.job` = 'promote' AND tags.`camenn.kind` = 'gate' AND "
                                           f"tags.`camenn.candidate` = '{candidate}' AND tags.`camenn.champion` = '{champion}' "
                                           f"AND tags.`camenn.run_date` = '{run_date or ''}'"),
                            order_by=["attributes.start_time DESC"], max_results=1)
    if not found or found[0].info.status != "FINISHED":
        return None
    with tempfile.TemporaryDirectory() as tmp:
        with open(mlf.download_artifacts(found[0].info.run_id, "decision.json", tmp)) as f:
            return Decision(**json.load(f))


# ------------------------------------------------------------------------------ the jobs' entry points


def evaluate(session: Callable, config: AppConfig, candidate: str | None = None, run_date: dt.date | None = None, *,
             reuse: bool = False) -> Decision:
    """Measure the candidate (default the newest version) and the champion on the same data; record; move nothing.

    ``reuse``: take the evaluation already recorded for this candidate, champion and run date, if any.
    """
    candidate = _candidate(config, candidate)
    champion = champion_version(config)
    if champion is None:
        return Decision(candidate, None, True, False, "no champion yet: nothing to beat")
    if champion == candidate:
        return Decision(candidate, champion, True, False, "the candidate is the champion already")
    if reuse:
        found = _recorded(config, candidate, champion, run_date)
        if found is not None:
            log.info(f"promote: using the evaluation recorded in MLflow run {found.run_id}")
            return found
    figures, versions = held_out_figures(session(), config, {"candidate": candidate, "champion": champion}, run_date)
    passed, checks, reason = compare(figures["candidate"], figures["champion"], config.promotion.margins)
    decision = Decision(candidate, champion, passed, False, reason, figures, checks, versions)
    _record(config, decision, run_date, "gate")
    _tag_candidate(config, decision)
    return decision


def promote(session: Callable, config: AppConfig, candidate: str | None = None, run_date: dt.date | None = None) -> Decision:
    """``evaluate`` (reusing the run date's recorded evaluation), then move the alias when the gate passed."""
    decision = evaluate(session, config, candidate, run_date, reuse=True)
    if not decision.passed or decision.champion == decision.candidate:
        return decision
    _move(config, decision.candidate, reason=f"promoted over {decision.champion}: {decision.reason}")
    decision.moved = True
    if decision.run_id is None:   # no champion before: the first one, recorded as such
        _record(config, decision, run_date, "gate")
    else:
        _mark_moved(config, decision)
    _tag_candidate(config, decision)
    return decision


def move_alias(config: AppConfig, version: str, *, reason: str, run_date: dt.date | None = None) -> Decision:
    """An operator's move of the champion alias, without the gate (the rollback, or pinning a version); recorded."""
    version = _candidate(config, version)
    before = champion_version(config)
    if before == version:
        return Decision(version, before, True, False, f"{version} is the champion already")
    _move(config, version, reason=reason)
    decision = Decision(version, before, True, True, reason)
    _record(config, decision, run_date, "manual")
    return decision


__all__ = ["Decision", "PromotionError", "GATED", "compare", "evaluate", "promote", "move_alias", "previous_champion",
           "champion_version", "held_out_figures"]
