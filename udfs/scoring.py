"""CameNN inference inside Spark: mapInPandas functions that load the model once per worker.

    scores = items.mapInPandas(align_fn(model_dir, version, batch_size, autocast), ALIGN_SCHEMA)
    cvr = pairs.mapInPandas(cvr_fn(model_dir, version, batch_size, autocast), CVR_SCHEMA)

Each Arrow batch (``spark.sql.execution.arrow.maxRecordsPerBatch`` rows) is scored in model
batches of ``scoring.batch_size`` rows by :class:`camenn.scoring.ScoringModel`, the same code
a plain PyTorch loop calls. The model is cached in a module-level dict keyed by
(model_dir, version, device): with ``spark.python.worker.reuse`` a worker loads it once, and
the version check makes a worker refuse an artifact that changed under the driver's feet.

Device: the task's GPU when Spark assigned one (``TaskContext.resources()["gpu"]``), with
autocast (``scoring.autocast``); otherwise the CPU with torch threads = the task's CPUs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pandas as pd

from udfs import configure_task_threads, task_device

ALIGN_INPUT = ["item_id", "merchant_id", "category", "price", "text_emb", "n_text_tokens", "image_emb"]
ALIGN_SCHEMA = "item_id string, merchant_id string, category string, p_ita double, p_tia double"

BEHAVIOUR_FIELDS = ["beh_text_emb", "beh_n_text_tokens", "beh_image_emb", "beh_category", "beh_price"]
CVR_INPUT = ["user_id", "item_id", "category", "price", "text_emb", "n_text_tokens", "image_emb",
             *BEHAVIOUR_FIELDS, "age_band", "household", "zone"]
CVR_SCHEMA = "user_id string, item_id string, cvr double"

_MODELS: dict[tuple[str, str, str], object] = {}
_LOCK = threading.Lock()


def get_model(model_dir: str, version: str, device: str, autocast: str | None = None):
    """The worker's ScoringModel for (model_dir, version, device), loaded on first use."""
    key = (str(model_dir), version, device, autocast or "none")
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            from camenn.scoring import ScoringModel

            model = ScoringModel.load(model_dir, device=device, autocast=autocast)
            if model.version != version:
                raise RuntimeError(f"model artifact {model_dir} is version {model.version} on this worker but the driver "
                                   f"planned version {version}: the artifact changed during the run")
            _MODELS[key] = model
    return model


def _worker_model(model_dir: str, version: str, autocast: str | None):
    device = task_device()
    configure_task_threads(device)
    return get_model(model_dir, version, device, autocast)


def align_fn(model_dir: str, version: str, batch_size: int, autocast: str | None = None):
    """(frames of ALIGN_INPUT) -> (frames of ALIGN_SCHEMA): item-only forward, p_ita and p_tia."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = _worker_model(model_dir, version, autocast)
        for pdf in batches:
            p_ita, p_tia = model.score_items(list(pdf["text_emb"]), list(pdf["n_text_tokens"]), list(pdf["image_emb"]),
                                             list(pdf["category"]), list(pdf["price"]), batch_size=batch_size)
            yield pd.DataFrame({"item_id": pdf["item_id"].to_numpy(), "merchant_id": pdf["merchant_id"].to_numpy(),
                                "category": pdf["category"].to_numpy(), "p_ita": p_ita, "p_tia": p_tia})

    return run


def cvr_fn(model_dir: str, version: str, batch_size: int, autocast: str | None = None):
    """(frames of CVR_INPUT) -> (frames of CVR_SCHEMA): full forward with the user's behaviour and profile."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = _worker_model(model_dir, version, autocast)
        for pdf in batches:
            cvr = model.score_pairs(
                list(pdf["text_emb"]), list(pdf["n_text_tokens"]), list(pdf["image_emb"]),
                list(pdf["category"]), list(pdf["price"]),
                *(list(pdf[c]) for c in BEHAVIOUR_FIELDS),
                {f: list(pdf[f]) for f in ("age_band", "household", "zone")},
                batch_size=batch_size)
            yield pd.DataFrame({"user_id": pdf["user_id"].to_numpy(), "item_id": pdf["item_id"].to_numpy(), "cvr": cvr})

    return run
