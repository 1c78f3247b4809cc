"""Typed application configuration, parsed from YAML.

Every section is a pydantic model that forbids unknown keys, so a typo in a YAML file fails
before Spark starts, with the file, the dotted key and what was expected. Jobs accept
``--set section.key=value`` overrides, parsed as YAML scalars.

One module (~670 lines): each section is short, and a key's type, default and description
are read where the YAML is parsed; split by section, the cross-section checks would span files.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from camenn.logits import logit, sigmoid

TABLE_NAMES = (
    "items", "users", "events", "impressions", "candidates",
    "truth_items", "truth_impressions",
    "item_features", "item_model_outputs", "item_alignment", "cvr_scores", "quarantine", "runs", "quality_flags",
    "training_examples", "training_items",
)


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message says where and why."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# The synthetic world's user profile; a real catalogue names its own (age, membership, region, ...)
DEFAULT_PROFILE_FIELDS = ("age_band", "household", "zone")
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,62}")
# columns of users / training_examples that a profile field must not shadow
_RESERVED_COLUMNS = {"user_id", "example_id", "item_id", "ts", "label", "behaviour", "split", "bucket", "source",
                     "run_id", "reason"}


class DataConfig(Section):
    root: str = Field(description="folder or URI under which every table lives")
    tables: dict[str, str] = Field(default_factory=dict, description="per-table path overrides")
    profile_fields: tuple[str, ...] = Field(
        DEFAULT_PROFILE_FIELDS, description="the users table's profile columns (categorical strings, null = unknown): "
        "the model embeds each one, and a model scores with the fields it was trained with")

    @field_validator("profile_fields")
    @classmethod
    def _profile_columns(cls, fields: tuple[str, ...]) -> tuple[str, ...]:
        bad = [f for f in fields if not _IDENTIFIER.fullmatch(f) or f in _RESERVED_COLUMNS]
        if bad:
            raise ValueError(f"profile field(s) {bad} are not usable column names (lower-case letters, digits and _, "
                             f"not one of {sorted(_RESERVED_COLUMNS)})")
        if len(set(fields)) != len(fields):
            raise ValueError(f"profile fields repeat a name: {list(fields)}")
        return fields

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, tables: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(tables) - set(TABLE_NAMES))
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; known: {list(TABLE_NAMES)}")
        return tables

    def table(self, name: str) -> str:
        if name not in TABLE_NAMES:
            raise KeyError(f"unknown table {name!r}; known: {list(TABLE_NAMES)}")
        return self.tables.get(name) or f"{self.root.rstrip('/')}/{name}"


class DefectRates(Section):
    """Share of items that carry each planted defect (recorded only in truth_items)."""

    text_swap: float = Field(0.03, ge=0, le=1)
    image_swap: float = Field(0.03, ge=0, le=1)
    vague_text: float = Field(0.02, ge=0, le=1)
    blurred_image: float = Field(0.02, ge=0, le=1)
    wrong_category: float = Field(0.02, ge=0, le=1)


class WorldConfig(Section):
    seed: int = 7
    n_merchants: int = Field(40, gt=0)
    n_items: int = Field(2000, gt=0)
    n_users: int = Field(1000, gt=0)
    days: int = Field(60, gt=1, description="days of purchase history before the run date")
    image_px: int = Field(112, ge=32, le=512)
    impressions_per_user: int = Field(40, ge=0)
    candidates_per_user: int = Field(20, ge=0)
    run_date: dt.date = dt.date(2026, 11, 24)
    partitions: int = Field(4, gt=0, description="Spark partitions; one seed per partition")
    defects: DefectRates = DefectRates()


class FeaturizerSettings(Section):
    text_model_dir: str | None = Field(None, description="local HF model folder; null = packaged all-MiniLM-L6-v2")
    image_arch: str = "tf_efficientnet_lite0"
    image_weights: str | None = Field(None, description="local weights file; null = packaged EfficientNet-Lite0")
    max_text_tokens: int = Field(50, gt=2, le=512)
    patch_grid: int = Field(3, gt=0)
    patch_size: int = Field(224, ge=32)
    batch_size: int = Field(64, gt=0)
    unfreeze_last_layers: int = Field(0, ge=0)
    rows_per_task: int = Field(512, gt=0, description="items per Spark encode task: the progress bar's step and a retry's cost")

    def to_featurizer_config(self):
        from camenn.featurizer import FeaturizerConfig

        return FeaturizerConfig(**self.model_dump(exclude={"rows_per_task"}))


def _model_default(name: str):
    """The architecture's default for one knob: CameNNConfig (camenn/model.py) is its one source."""
    from camenn.model import CameNNConfig

    return CameNNConfig.__dataclass_fields__[name].default


class ModelSettings(Section):
    """The architecture knobs a YAML file may set; defaults and meanings are CameNNConfig's.

    Only the bounds a user can get wrong are checked here (before Spark starts); the model's own
    checks (divisibility, top_k range) run again when the model is built.
    """

    frame: Literal["camenn", "mmoe", "mose", "single_task"] = "camenn"
    d_model: int = Field(_model_default("d_model"), gt=0)
    n_heads: int = Field(_model_default("n_heads"), gt=0)
    ffn_mult: int = Field(_model_default("ffn_mult"), gt=0)
    n_bottom_layers: int = Field(_model_default("n_bottom_layers"), ge=1)
    n_experts: int = Field(_model_default("n_experts"), ge=1)
    expert_layers: int = Field(_model_default("expert_layers"), ge=1)
    tower_layers: int = Field(_model_default("tower_layers"), ge=1)
    top_k: int | None = Field(_model_default("top_k"), ge=1)
    gate_balance_weight: float = Field(_model_default("gate_balance_weight"), ge=0)
    max_behaviour: int = Field(_model_default("max_behaviour"), ge=0)
    dropout: float = Field(_model_default("dropout"), ge=0, lt=1)
    attn_dropout: float = Field(_model_default("attn_dropout"), ge=0, lt=1)
    tasks: tuple[Literal["cvr", "ita", "tia"], ...] = _model_default("tasks")
    behaviour_tokens: Literal["full", "pooled"] = _model_default("behaviour_tokens")
    alignment_skip: bool = _model_default("alignment_skip")


class SplitConfig(Section):
    rule: Literal["random_user", "time"] = "random_user"
    test_fraction: float = Field(0.25, gt=0, lt=1)
    valid_fraction: float = Field(0.1, ge=0, lt=1, description="share of all rows (carved from the training side) for early stopping")
    seed: int = Field(0, description="salt of the hash splits and seed of negative sampling")


class TrainingConfig(Section):
    artifact_dir: str = "artifacts/model"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, gt=0)
    alignment_batch_size: int = Field(128, ge=0, description="item-only examples mixed into each batch")
    lr: float = Field(4e-4, gt=0)
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(2, ge=1, description="early stopping: epochs without validation gain")
    negative_ratio: float = Field(4.0, gt=0, description="sampled negatives per purchase when there are no impressions")
    task_weights: dict[Literal["cvr", "ita", "tia"], float] = {"cvr": 1.0, "ita": 1.0, "tia": 1.0}
    attribute_side: bool = True
    hard_negative_share: float = Field(
        0.0, ge=0, le=1, description="share of the alignment negatives whose text or image comes from a hard partner "
                                     "in the batch (hard_negative_kind) instead of a random item; 0 = random only")
    hard_negative_kind: Literal["category", "neighbour"] = Field(
        "category", description="category: another item of the same category (the category field is then the same "
                                "on both sides and cannot decide); neighbour: the nearest item by pooled encoder output")
    contrastive_weight: float = Field(
        0.0, ge=0, description="weight of an InfoNCE loss between the pooled projected text and image of the "
                               "alignment batch's items, before fusion; 0 = none")
    same_category_swaps: Literal["one_side", "both_sides"] = Field(
        "one_side", description="labels of a swapped row whose partner has the item's category (attribute_side): "
                                "one_side = like any swap, the side that was not swapped is labelled a match; "
                                "both_sides = ITA and TIA both 0: the category is the same on both sides, so "
                                "nothing in the listing says which side is wrong, only that they disagree")
    alignment_balance: Literal["none", "weights", "logit_adjustment"] = Field(
        "none", description="the alignment examples come 3 positives to 1 negative per task, the held-out accuracy "
                            "and the flags ask about a 1:1 split. weights: each class weighs half the loss; "
                            "logit_adjustment: the loss adds the batch's log prior odds to the logit, so the "
                            "model's own probability is for a 1:1 prior (camenn.losses.multitask_loss)")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="validate, keep and save an exponential moving average of the weights (this decay "
                                      "a step) instead of the last step's; null = the weights as they are")
    view_share: float = Field(
        0.0, ge=0, lt=1, description="share of the alignment examples of a training item whose image is one of its "
                                     "cached test-time views (scoring.test_time_views: a crop, a mirror, a light) "
                                     "instead of its photo, drawn afresh each time; 0 = the photo always")
    split: SplitConfig = SplitConfig()
    seeds: list[int] = [0, 1, 2]
    num_processes: int = Field(1, ge=1, description="TorchDistributor processes; 1 = train in the driver")
    use_gpu: bool = False
    examples_from: Literal["auto", "impressions", "sampled"] = Field(
        "auto", description="auto = impressions when the table has rows, else negatives sampled from events")
    price_buckets: int = Field(10, ge=1, description="price quantile buckets of the feature vocabulary")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="batches per epoch (between validations); null = one pass over the training examples, "
                                "a number = that many batches from a reshuffled stream, fewer or more than one pass")
    num_threads: int | None = Field(None, ge=1, description="torch threads per training process; null = cores / processes "
                                                        "(one process: at most the threads it already has)")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="per-step lr: constant (the paper) or a cosine from lr down to min_lr_ratio * lr "
                                "over epochs x steps_per_epoch, after warmup_steps of linear warm-up")
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    autocast: Literal["bf16", "fp16", "none"] = Field(
        "bf16", description="mixed precision of training on GPU (fp16 with loss scaling); CPU training stays fp32")
    ceiling_sample_rows: int = Field(
        500_000, gt=0, description="evaluation: examples the driver-side logistic 'inputs ceiling' is fitted on, at most")
    examples_per_chunk: int = Field(
        20_000, gt=0, description="training streams its examples in chunks of about this many, each with the features "
                                   "of just the items it references: a process holds one chunk, whatever the catalogue")
    shipped_artifact: str | None = Field(
        None, description="a model trained elsewhere (the quick demo ships one trained on conf/demo-full.yaml): "
                          "`train --if-missing` copies it to artifact_dir instead of training when its model and "
                          "featurizer settings, encoder weights and model code are this config's and code's")


# quantiles of the held-out items' own ITA / TIA that training records in the artifact (see
# camenn.training.held_out_metrics), for ``thresholds.mode: calibrated``
CALIBRATION_QUANTILES = (0.01, 0.02, 0.05, 0.10)
# and their median (``ita_clean_q50``), the centre ``thresholds.recentre`` moves them from
CALIBRATION_CENTRE = "q50"
# and their lower quartile (``ita_clean_q25``), with the median the spread ``thresholds.rescale`` compares a night's with
CALIBRATION_QUARTILE = "q25"


class ThresholdConfig(Section):
    """When an item is flagged: ITA or TIA below a threshold.

    ``absolute``: the fixed ``ita`` / ``tia``; ``category_quantile``: the ``quantile`` of the night's
    scores in the item's category; ``calibrated``: the ``quantile`` (one of CALIBRATION_QUANTILES)
    of the model's own held-out items, unswapped, as recorded at training, so a new model brings
    its thresholds with it.

    ``recentre`` (calibrated, or absolute with ``centre_ita`` / ``centre_tia``): the night moves each
    threshold down, on the logit scale, by as much as the median of its own scores lies under the
    median of the scores the threshold was taken on (the held-out items' ``*_clean_q50``, or the
    centres given). Why: listings unlike the model's training ones (photos taken in another
    session, a new shop) score lower as a whole, and a held-out quantile then flags a large share
    of clean listings (GroceryStore's validation photos: 30% at a 2% quantile, docs/results/grocery-store.md). Moved, a
    listing is flagged when it lies as far under the catalogue's typical listing as the held-out
    quantile lay under the typical held-out item. Never up: a catalogue made mostly of the model's
    own training listings scores above its held-out items because the model fit them, and raising
    the thresholds on that would flag more of its new listings (`make grocery`, 2026-12-06: 121
    flagged against 95). For the same reason the night's median is taken over its listings new
    to the model, the ones its training snapshot did not hold (pipeline.flag_rules.night_recentred),
    when there are ``min_new_listings`` of them: a new shop among many trained listings barely moves
    the whole night's median. The median holds while fewer than half of those are damaged.

    ``contrast`` (with ``recentre``): each side is read against the other (:meth:`read`): a photo
    unlike the training ones lowers both scores, a damaged side mostly its own. On GroceryStore's
    planted-swap nights it raised precision at the same quantile (docs/results/grocery-store.md,
    "2026-12-07, night"). Any defect that lowers both sides is spared too: the demo model's wrong
    categories (docs/results/demo-model.md, "2026-12-07, late"), while the GroceryStore model's
    raise TIA and are caught more often; measure a model's defects before its config reads with it.
    """

    mode: Literal["absolute", "category_quantile", "calibrated"] = "absolute"
    ita: float = Field(0.5, ge=0, le=1)
    tia: float = Field(0.5, ge=0, le=1)
    quantile: float = Field(0.05, gt=0, lt=1)
    min_category_items: int = Field(
        50, ge=1, description="category_quantile: a category with fewer scored items uses the absolute ita/tia thresholds")
    warn_ratio: float = Field(
        3.0, gt=1, description="calibrated: the night warns when a side's share of items under its threshold is more "
                               "than this many times the quantile (the share the model's held-out items had)")
    recentre: bool = Field(
        False, description="calibrated or absolute: move the thresholds down by as far (logit scale) as the night's "
                           "median score lies under the median of the scores they were taken on")
    centre_ita: float | None = Field(None, gt=0, lt=1, description="recentre, absolute: the median ITA the ita threshold was taken against")
    centre_tia: float | None = Field(None, gt=0, lt=1, description="recentre, absolute: the median TIA the tia threshold was taken against")
    rescale: bool = Field(
        False, description="recentre: also stretch each threshold's distance under its centre (logit scale) by as much "
                           "as the night's lower half (median to lower quartile) is wider than that of the scores the "
                           "thresholds were taken on; never narrower")
    quartile_ita: float | None = Field(None, gt=0, lt=1, description="rescale, absolute: the lower quartile of the ITA "
                                                                     "the ita threshold was taken against")
    quartile_tia: float | None = Field(None, gt=0, lt=1, description="rescale, absolute: the lower quartile of the TIA "
                                                                     "the tia threshold was taken against")
    min_new_listings: int = Field(
        100, ge=1, description="recentre: the median is taken over the listings new to the model (not in its training "
                               "snapshot) when the night has at least this many, else over all its listings")
    contrast: float = Field(
        0.0, ge=0, lt=1, description="recentre: each side's score (logit) is compared with its threshold less this share of "
                                     "how far the other side's lies above the night's median; 0 = each side alone")
    contrast_ita: float | None = Field(None, gt=0, lt=1, description="contrast: the night's median ITA (set by recentred)")
    contrast_tia: float | None = Field(None, gt=0, lt=1, description="contrast: the night's median TIA (set by recentred)")

    @field_validator("quantile")
    @classmethod
    def _recorded_quantile(cls, value: float, info) -> float:
        if info.data.get("mode") == "calibrated" and value not in CALIBRATION_QUANTILES:
            raise ValueError(f"calibrated thresholds are recorded at the quantiles {list(CALIBRATION_QUANTILES)}, got {value}")
        return value

    @model_validator(mode="after")
    def _centred(self) -> ThresholdConfig:
        if self.rescale and not self.recentre:
            raise ValueError("thresholds.rescale stretches thresholds as they are recentred: set thresholds.recentre true")
        if self.contrast and not self.recentre:
            raise ValueError("thresholds.contrast measures the other side from the night's median, which recentring "
                             "takes: set thresholds.recentre true")
        if not self.recentre:
            return self
        if self.mode == "category_quantile":
            raise ValueError("thresholds.recentre moves calibrated or absolute thresholds; category_quantile already "
                             "follows the night's own scores")
        if self.mode == "absolute" and (self.centre_ita is None or self.centre_tia is None):
            raise ValueError("thresholds.recentre with mode absolute needs centre_ita and centre_tia: the median ITA and "
                             "TIA of the scores the thresholds were taken on")
        if self.rescale and self.mode == "absolute" and (self.quartile_ita is None or self.quartile_tia is None):
            raise ValueError("thresholds.rescale with mode absolute needs quartile_ita and quartile_tia: the lower "
                             "quartiles of the ITA and TIA the thresholds were taken on")
        return self

    def for_model(self, metrics: dict, model: str) -> ThresholdConfig:
        """These thresholds for one model: mode ``calibrated`` becomes absolute ones from the model's
        held-out metrics (its artifact's ``metrics``), with the held-out medians as centres when
        ``recentre``; the other modes are returned as they are."""
        if self.mode != "calibrated":
            return self
        key = f"q{round(self.quantile * 100):02d}"
        found = {task: metrics.get(f"{task}_clean_{key}") for task in ("ita", "tia")}
        if any(v is None for v in found.values()):
            raise ValueError(f"model {model} records no held-out {key} of ITA/TIA (trained before calibration, or "
                             "without alignment tasks): retrain it, or use scoring.thresholds.mode absolute")
        centres = {}
        if self.recentre:
            centres = {f"centre_{task}": metrics.get(f"{task}_clean_{CALIBRATION_CENTRE}") for task in ("ita", "tia")}
            if any(v is None for v in centres.values()):
                raise ValueError(f"model {model} records no held-out median of ITA/TIA ({CALIBRATION_CENTRE}, since "
                                 "2026-12-06) to recentre its thresholds on: retrain it, or set thresholds.recentre false")
        if self.rescale:
            centres.update({f"quartile_{task}": metrics.get(f"{task}_clean_{CALIBRATION_QUARTILE}") for task in ("ita", "tia")})
            if any(centres[f"quartile_{task}"] is None for task in ("ita", "tia")):
                raise ValueError(f"model {model} records no held-out lower quartile of ITA/TIA ({CALIBRATION_QUARTILE}, since "
                                 "2026-12-07) to rescale its thresholds on: retrain it, or set thresholds.rescale false")
        return ThresholdConfig(mode="absolute", ita=float(found["ita"]), tia=float(found["tia"]),
                               recentre=self.recentre, rescale=self.rescale, contrast=self.contrast, **centres)

    def recentred(self, night_ita: float, night_tia: float, night_quartiles: dict[str, float] | None = None) -> ThresholdConfig:
        """These absolute thresholds moved down to a night whose median ITA / TIA are these (``recentre``),
        by as much as those lie under the centres; a side whose night median is at or above its centre keeps its threshold.

        With ``rescale`` and the night's lower quartiles (``{"ita", "tia"}``), each threshold's distance under its
        centre is also stretched by the ratio of the night's median-to-quartile distance to the centre's, when
        that is over 1. All on the logit scale; neither move ever raises a threshold.
        """
        if not self.recentre or self.mode != "absolute":
            return self
        moved = {}
        for task, night in (("ita", night_ita), ("tia", night_tia)):
            threshold, centre = logit(getattr(self, task)), logit(getattr(self, f"centre_{task}"))
            stretch = 0.0   # how much further under the centre than the threshold was, as a share of its distance
            if self.rescale and night_quartiles is not None and threshold < centre:
                spread = centre - logit(getattr(self, f"quartile_{task}"))
                stretch = max(0.0, (logit(night) - logit(night_quartiles[task])) / max(float(spread), 1e-6) - 1.0)
            moved[task] = float(sigmoid(threshold + min(0.0, logit(night) - centre) + (threshold - centre) * stretch))
        if self.contrast:
            moved.update(contrast_ita=float(night_ita), contrast_tia=float(night_tia))
        return self.model_copy(update=moved)

    def read(self, p_ita, p_tia):
        """Each side's score as the night compares it with its threshold: its logit, and with ``contrast``
        less ``contrast`` x (the other side's logit - the night's median of it).

        Why: a damaged side lowers its own score and leaves the other's where it was, or raises it (a
        photo with the text of another product scores high on TIA), while a clean photo unlike the
        training ones lowers both; read alone, each side flags those photos too.
        """
        l_ita, l_tia = logit(p_ita), logit(p_tia)
        if not self.contrast:
            return l_ita, l_tia
        if self.contrast_ita is None or self.contrast_tia is None:
            raise ValueError("thresholds.contrast reads the night's medians: recentre the thresholds first (recentred)")
        return (l_ita - self.contrast * (l_tia - logit(self.contrast_tia)),
                l_tia - self.contrast * (l_ita - logit(self.contrast_ita)))

    def below(self, p_ita, p_tia):
        """(ITA under its threshold, TIA under its threshold) for arrays of scores, as the night flags them
        (pipeline.flag_rules.alignment_flags does the same in Spark): each side as :meth:`read` reads it."""
        if not self.contrast:   # the probabilities themselves: no clipping at the ends
            return np.asarray(p_ita) < self.ita, np.asarray(p_tia) < self.tia
        read_ita, read_tia = self.read(p_ita, p_tia)
        return read_ita < logit(self.ita), read_tia < logit(self.tia)


class ScoringConfig(Section):
    model_dir: str | None = Field(
        None, description="the model to score with: an artifact folder, a root of versions (its LATEST), a URI "
                          "(s3a://...), or a registry reference (models:/camenn@champion, models:/camenn/3); "
                          "null = training.artifact_dir. Resolved to one version folder on the driver before a run")
    registered_version: str | None = Field(
        None, description="filled in when model_dir is resolved from the registry (e.g. camenn/3); recorded in runs")
    batch_size: int = Field(256, gt=0)
    max_records_per_batch: int = Field(1024, gt=0)
    autocast: Literal["bf16", "fp16", "none"] = "bf16"
    encoder_autocast: Literal["bf16", "fp16", "none"] = Field(
        "none", description="autocast for the frozen encoders on GPU; cached features then differ slightly from fp32 ones")
    thresholds: ThresholdConfig = ThresholdConfig()
    test_time_views: int = Field(
        0, ge=0, le=16, description="score each item's ITA / TIA over its photo and this many random views of it (a crop, "
                                    "a mirror, a light; camenn.images.random_view, seeded by the content hash), as the "
                                    "mean logit: the night encodes each new or changed photo 1 + this many times and "
                                    "item_features keeps the views' image tokens (this many x the photo's image_emb). "
                                    "CVR reads the photo alone. 0 = the photo alone")
    token_buckets: int = Field(
        16, gt=0, description="item_model_outputs is partitioned by bucket = xxhash64(item_id) mod this; the CVR stage "
                              "reads each bucket's projected tokens from its own files, so the tokens are not shuffled "
                              "to meet the candidates. Size a bucket at ~128 MB: items x projected bytes per item / "
                              "128 MB. A change applies to rows as they are next written; reads follow each row's bucket")
    max_not_finite_share: float = Field(
        0.01, ge=0, le=1, description="a night fails before writing item_alignment (or cvr_scores) when more than this "
                                      "share of its scores is NaN or infinite (a broken model); below it those rows are "
                                      "quarantined as 'score: not finite' / 'cvr: not finite'")
    run_timeout_hours: float = Field(
        12.0, gt=0, description="a run still 'running' after this long is taken as dead (its driver killed) by the next "
                                "run, which records it as failed and deletes its unpublished rows and staging; a "
                                "dead driver on the same host is found at once. Keep it above the longest night")

    @field_validator("max_records_per_batch")
    @classmethod
    def _multiple_of_batch(cls, value: int, info) -> int:
        batch = info.data.get("batch_size")
        if batch and value % batch:
            raise ValueError(f"must be a multiple of scoring.batch_size ({batch}), got {value}")
        return value


class TrackingConfig(Section):
    """MLflow: where training and evaluation runs are logged and models registered (pipeline.tracking)."""

    enabled: bool = Field(True, description="log runs and register trained models; off = artifacts only")
    uri: str = Field("sqlite:///runs/mlflow/mlflow.db",
                     description="MLflow tracking and registry URI: sqlite:///<path> (relative to the project root) "
                                 "or a tracking server's http(s):// address")
    artifact_location: str | None = Field(
        None, description="where a new experiment keeps its runs' files (charts, tables); null = mlflow-artifacts/ "
                          "beside a sqlite store, or the server's default")
    experiment: str = "camenn"
    registered_model: str = Field("camenn", description="every trained model becomes a version of this registered model")
    champion_alias: str = Field("champion", description="the alias naming the version in service (models:/camenn@champion)")
    promote_first: bool = Field(True, description="the first registered version becomes the champion (there is none to beat)")


class PromotionConfig(Section):
    """The promotion gate (jobs/promote.py): a candidate takes the champion alias only when it is no worse.

    A margin is how much lower than the champion's a candidate's held-out figure may be: 0 = at
    least as good; 0.005 forgives the noise of a small test split. Both are measured by
    pipeline.promote on the same held-out data (the current training_examples' test split and
    held-out items, the same swapped negatives).
    """

    margins: dict[Literal["ita_acc", "tia_acc", "cvr_auc"], float] = Field(
        {"ita_acc": 0.005, "tia_acc": 0.005, "cvr_auc": 0.005},
        description="figure -> how much below the champion's the candidate's may be; a figure left out is not gated")

    @field_validator("margins")
    @classmethod
    def _non_negative(cls, margins: dict[str, float]) -> dict[str, float]:
        negative = sorted(k for k, v in margins.items() if v < 0)
        if negative:
            raise ValueError(f"margins must be >= 0 (a negative one would ask for a gain): {negative}")
        return margins


class ReportConfig(Section):
    out_dir: str = "reports"
    thumbnail_px: int = Field(96, ge=16, le=512)
    max_items_per_page: int = Field(
        1000, ge=1, description="worst flagged items on a merchant's page and CSV; quality_flags keeps them all")
    centroid_sample_per_category: int = Field(
        2000, ge=1, description="unflagged items per category (hash sample) behind the suggested-category centroids")


class SparkConfig(Section):
    master: str | None = Field(None, description="null = leave it to spark-submit / spark-defaults.conf")
    app_name: str = "camenn"
    conf: dict[str, str] = Field(default_factory=dict)


ITEM_FIELDS = ("item_id", "merchant_id", "category", "title", "description", "price", "image", "updated_at")
EVENT_FIELDS = ("user_id", "item_id", "ts", "price")
CANDIDATE_FIELDS = ("user_id", "item_id")


def unknown_user_fields(user_map: dict[str, str], profile_fields: tuple[str, ...]) -> list[str]:
    """The user_map keys that are neither user_id nor a profile field. The default map's entries for
    the synthetic profile are let through (ignored) when a config names other profile fields."""
    return sorted(set(user_map) - {"user_id", *profile_fields, *DEFAULT_PROFILE_FIELDS})


def profile_map(user_map: dict[str, str], profile_fields: tuple[str, ...]) -> dict[str, str]:
    """user_map reduced to user_id and ``profile_fields`` (a profile field it does not map is left null)."""
    return {k: v for k, v in user_map.items() if k in ("user_id", *profile_fields)}


class IngestConfig(Section):
    """Ingest of a real catalogue export (jobs/ingest_catalog.py); its flags override these.

    A mapping value is an export column name, ``const:VALUE`` for a constant, or for ``image``
    a path template in Python format syntax over export columns (``"{article_id:0>10}.jpg"``),
    relative to ``images_root``. The defaults fit the H&M export (articles.csv, transactions_train.csv).
    """

    items_path: str | None = Field(None, description="CSV/Parquet file or folder of item rows")
    images_root: str | None = Field(None, description="folder (or URI) holding the image files")
    events_path: str | None = Field(None, description="CSV/Parquet file or folder of purchases")
    users_path: str | None = Field(None, description="CSV/Parquet file or folder of user profiles")
    candidates_path: str | None = Field(None, description="CSV/Parquet file or folder of (user, item) pairs to score "
                                                          "on the ingest's run date")
    format: Literal["csv", "parquet"] | None = Field(None, description="null = from the file extension")
    csv_options: dict[str, str] = {"header": "true", "multiLine": "true", "escape": '"'}
    item_map: dict[str, str] = {
        "item_id": "article_id", "merchant_id": "const:default", "category": "product_type_name",
        "title": "prod_name", "description": "detail_desc", "image": "{article_id:0>10}.jpg",
    }
    event_map: dict[str, str] = {"user_id": "customer_id", "item_id": "article_id", "ts": "t_dat", "price": "price"}
    user_map: dict[str, str] = {"user_id": "customer_id", "age_band": "age", "household": "club_member_status",
                                "zone": "postal_code"}
    candidate_map: dict[str, str] = {"user_id": "customer_id", "item_id": "article_id"}
    ts_format: str | None = Field(None, description="Spark datetime pattern of event timestamps; null = ISO")
    mode: Literal["overwrite", "merge"] = Field(
        "overwrite", description="overwrite: the export is the whole catalogue; merge: upsert on item_id")
    known_items_only: bool = Field(True, description="quarantine events whose item is not in items")
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="images with more pixels (width x height, read from the header) are quarantined: "
        "a decode costs ~3 bytes a pixel, and Pillow's own bomb limit (~179 Mpx) is far above what scoring needs")

    @field_validator("item_map", "event_map", "user_map", "candidate_map")
    @classmethod
    def _known_fields(cls, mapping: dict[str, str], info) -> dict[str, str]:
        if info.field_name == "user_map":   # its profile fields are data.profile_fields: AppConfig checks them
            return mapping
        known = {"item_map": ITEM_FIELDS, "event_map": EVENT_FIELDS, "candidate_map": CANDIDATE_FIELDS}[info.field_name]
        unknown = sorted(set(mapping) - set(known))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; known: {list(known)}")
        return mapping


class AppConfig(Section):
    name: str
    data: DataConfig
    world: WorldConfig = WorldConfig()
    featurizer: FeaturizerSettings = FeaturizerSettings()
    model: ModelSettings = ModelSettings()
    training: TrainingConfig = TrainingConfig()
    scoring: ScoringConfig = ScoringConfig()
    tracking: TrackingConfig = TrackingConfig()
    promotion: PromotionConfig = PromotionConfig()
    report: ReportConfig = ReportConfig()
    spark: SparkConfig = SparkConfig()
    ingest: IngestConfig = IngestConfig()
    source: str = Field("", description="the file this config came from (filled in by load_config)")

    @model_validator(mode="after")
    def _views_to_train_on(self) -> AppConfig:
        if self.training.view_share > 0 and self.scoring.test_time_views < 1:
            raise ValueError(f"training.view_share={self.training.view_share} trains on the cached test-time views, "
                             "and scoring.test_time_views is 0: set it to the number of views to encode (4 in "
                             "conf/grocery.yaml), or view_share to 0")
        return self

    @model_validator(mode="after")
    def _user_map_fields(self) -> AppConfig:
        unknown = unknown_user_fields(self.ingest.user_map, self.data.profile_fields)
        if unknown:
            raise ValueError(f"ingest.user_map: unknown field(s) {unknown}; known: user_id and data.profile_fields "
                             f"{list(self.data.profile_fields)}")
        return self

    def table(self, name: str) -> str:
        return self.data.table(name)

    @property
    def model_dir(self) -> str:
        return self.scoring.model_dir or self.training.artifact_dir


# Keys whose values are paths; relative ones are resolved against the project root so that
# a job behaves the same whatever folder Airflow or a person starts it from.
_PATH_KEYS = (
    ("data", "root"), ("featurizer", "text_model_dir"), ("featurizer", "image_weights"),
    ("training", "artifact_dir"), ("training", "shipped_artifact"), ("scoring", "model_dir"), ("report", "out_dir"),
)


def project_root() -> Path:
    return Path(os.environ.get("CAMENN_HOME", Path(__file__).resolve().parent.parent))


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")   # s3a://, hdfs://, models:/ (not a Windows drive letter)


def _resolve(value: str | None, root: Path) -> str | None:
    if value is None or _SCHEME.match(value) or Path(value).is_absolute():
        return value
    return str((root / value).resolve())


def _set_dotted(raw: dict, dotted: str, value: Any, origin: str) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: cannot set {dotted!r}: {key!r} is not a section")
        node = child
    node[leaf] = value


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "missing":
        return f"{where}: required value is missing"
    return f"{where}: {error['msg']} (got {error.get('input')!r})"


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> AppConfig:
    """Read a YAML config, apply ``key=value`` overrides, validate and resolve paths."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (the jobs take --conf conf/demo.yaml or conf/production.yaml)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(text), origin=f"override {item!r}")
    raw["source"] = str(path)
    try:
        config = AppConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None
    root = project_root()
    updates = {}
    for section, key in _PATH_KEYS:
        part = getattr(config, section)
        resolved = _resolve(getattr(part, key), root)
        if resolved != getattr(part, key):
            updates.setdefault(section, {})[key] = resolved
    for section, values in updates.items():
        config = config.model_copy(update={section: getattr(config, section).model_copy(update=values)})
    return config


DEFAULT_CONFIG = "conf/demo.yaml"


def default_config_path() -> Path:
    return project_root() / DEFAULT_CONFIG
