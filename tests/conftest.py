"""One SparkSession with Delta for the whole suite, and the tiny world's configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TESTS = Path(__file__).resolve().parent
TINY_CONF = TESTS / "conf" / "tiny.yaml"


# Whole files go to the two pytest-xdist workers longest first (the Makefile passes
# --no-loadscope-reorder: xdist would otherwise order files by their number of tests and hand
# test_dag.py, 3 tests and 533 s, out last, leaving one worker idle for minutes; CI of
# 2026-12-04 14:20, where test_dag.py started 23 minutes in). Worker seconds per file from the
# clean-clone CI of 2026-12-06 12:12 (build/test-junit.xml, 3,434 s in all): test_nightly 844,
# test_dag 777, test_training 238, test_test_time_views 212, test_grocery_real 187, ... down to
# test_hard_negatives 31; the files not named here are under 30 s each and follow in collection order.
LONGEST_FIRST = ("test_nightly.py", "test_dag.py", "test_training.py", "test_test_time_views.py", "test_grocery_real.py",
                 "test_planted_defects.py", "test_feature_cache.py", "test_profile_fields.py", "test_report.py",
                 "test_tracking.py", "test_ingest.py", "test_alignment_only.py", "test_notebook.py", "test_tables.py",
                 "test_promote.py", "test_world.py", "test_device_bench.py", "test_hard_negatives.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: each file keeps its order


def pytest_configure(config):
    """Under pytest-xdist each worker gets its share of the cores for torch: two workers each
    running torch on every core would thrash them (CPU time, not wall time, grows)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        share = max(1, (os.cpu_count() or 1) // int(workers))
        torch.set_num_threads(share)
        # and the jobs a test starts (spark-submit, airflow, the job scripts) inherit the share:
        # tests/test_dag.py's training job, with two threads beside the other worker, took 1.5 s a step
        os.environ.setdefault("OMP_NUM_THREADS", str(share))


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pipeline.session import get_spark

    warehouse = tmp_path_factory.mktemp("warehouse")
    from camenn.config import load_config

    config = load_config(TINY_CONF)
    spark_conf = {**config.spark.conf, "spark.sql.warehouse.dir": str(warehouse)}
    config = config.model_copy(update={"spark": config.spark.model_copy(update={"conf": spark_conf})})
    session = get_spark(config)
    yield session
    session.stop()


def machine_speed() -> str:
    """fp32 matmul GFLOP/s on 1 and 2 torch threads: the suite's wall time is only comparable between
    runs at the same speed (this shared 2-core box has measured 91 / 179 and 61 / 113 on different days)."""
    import sys

    sys.path.insert(0, str(TESTS.parent / "benchmarks"))
    from _common import matmul_peak

    return ", ".join(f"{t} thread(s) {matmul_peak(t, n=1024, reps=10) / 1e9:.0f}" for t in (1, 2)) + " GFLOP/s (fp32 matmul)"


def pytest_report_header(config):
    if not hasattr(config, "workerinput"):
        return f"machine speed at the start: {machine_speed()}"


def pytest_terminal_summary(terminalreporter, config):
    if not hasattr(config, "workerinput"):
        terminalreporter.write_line(f"machine speed at the end: {machine_speed()}")


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: with two threads on a busy 2-core box a training step was 20x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_config_path() -> Path:
    return TINY_CONF


def jpeg_with_shapes(background, seed: int, px: int = 64, *, shape: str = "rectangle", n_shapes: int = 3,
                     quality: int = 85) -> bytes:
    """A small real JPEG: a plain background and a few shapes of random colour; the seed varies the bytes."""
    import io
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (px, px), background)
    draw = getattr(ImageDraw.Draw(img), shape)
    for _ in range(n_shapes):
        x, y = rng.randrange(px // 2), rng.randrange(px // 2)
        draw([x, y, x + px // 3, y + px // 3], fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def tiny_config(root: Path, *overrides: str):
    """The tiny test world's config with every path under ``root``."""
    from camenn.config import load_config

    return load_config(TINY_CONF, [
        f"data.root={root / 'tables'}",
        f"training.artifact_dir={root / 'artifacts' / 'model'}",
        f"report.out_dir={root / 'reports'}",
        f"tracking.uri=sqlite:///{root / 'mlflow' / 'mlflow.db'}",   # never the project's own store
        *overrides,
    ])
