"""The Spark side of inference: pandas UDFs that load models once per Python worker.

Spark keeps Python workers alive between tasks (``spark.python.worker.reuse``), so anything
cached in a module-level dict here survives from one task to the next on the same worker:
the featurizer's encoders (``udfs.encode``) and the CameNN model (``udfs.predict``) are
loaded once per worker and per device, not once per task or per Arrow batch.

The helpers below decide where a task runs: the GPU Spark assigned to the task when there is
one (``spark.task.resource.gpu.amount`` > 0 and a discovery script on the executors), the
CPU otherwise, with as many torch threads as the task was given CPUs.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

log = logging.getLogger("camenn.udfs")

__all__ = ["pick_device", "task_device", "configure_task_threads", "autocast_dtype", "memory_logged", "MEMORY_LOG"]

# the prefix of memory_logged's stderr lines, which benchmarks/bench_scale.py reads back
MEMORY_LOG = "camenn-udf-memory"


def _addresses(resource: Any) -> list[str]:
    """ResourceInformation (``.addresses``), or a plain list of addresses."""
    if resource is None:
        return []
    addresses = getattr(resource, "addresses", resource)
    return [str(a) for a in addresses]


def pick_device(resources: Mapping[str, Any] | None, *, cuda_available: bool | None = None,
                device_count: int | None = None) -> str:
    """The torch device for a task, from ``TaskContext.resources()``.

    ``resources`` maps a resource name to a ResourceInformation (or a list of addresses).
    A task that was assigned a GPU gets ``cuda:<address>``; the address Spark hands out is
    the ordinal the discovery script reported. Where the cluster manager already narrowed
    ``CUDA_VISIBLE_DEVICES`` to the task's GPU (Kubernetes device plugin, YARN with GPU
    isolation) the process sees a single device 0, so an address beyond the visible count
    maps to ``cuda:0``. No GPU assigned, or CUDA not usable in this worker: ``cpu``.
    """
    gpus = _addresses((resources or {}).get("gpu"))
    if not gpus:
        return "cpu"
    if cuda_available is None or device_count is None:
        import torch

        cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
        device_count = torch.cuda.device_count() if device_count is None else device_count
    if not cuda_available or device_count < 1:
        log.warning("Spark assigned GPU %s to this task but CUDA is not usable in this worker; using the CPU", gpus)
        return "cpu"
    try:
        ordinal = int(gpus[0])
    except ValueError:
        ordinal = 0
    if not 0 <= ordinal < device_count:
        ordinal = 0
    return f"cuda:{ordinal}"


def task_device() -> str:
    """The device for the running Spark task (``cpu`` outside a task)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return pick_device(ctx.resources() if ctx is not None else None)


def task_cpus() -> int:
    """The running Spark task's CPUs (spark.task.cpus); the machine's outside a task."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return max(1, int(ctx.cpus() if ctx is not None else (os.cpu_count() or 1)))


def configure_task_threads(device: str) -> int:
    """On CPU, give torch as many threads as the task has CPUs (spark.task.cpus); returns it."""
    import torch

    if device != "cpu":
        return torch.get_num_threads()
    cpus = task_cpus()
    if torch.get_num_threads() != cpus:
        torch.set_num_threads(cpus)
    return cpus


def autocast_dtype(setting: str | None, device: str):
    """torch dtype for ``scoring.autocast`` on this device; None on CPU or for "none"."""
    import torch

    if not setting or setting == "none" or not str(device).startswith("cuda"):
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def memory_logged(name: str) -> Callable[[Callable], Callable]:
    """Wrap a mapInArrow / mapInPandas function: one stderr line per task with its worker's memory.

    A Python worker's peak RSS is a scale target, but an RSS sampled from outside cannot say
    which function grew it: workers are reused across tasks and stages. The worker's peak
    (``ru_maxrss``) before and after a task can: when it grew, it grew in this task. The line is
    ``MEMORY_LOG`` and a JSON object (name, pid, stage, partition, rows, batches, seconds,
    rss_start, rss_end, peak_start, peak_end in MiB); it lands in the executor's stderr log.
    Cost: two reads of /proc per task.
    """

    def wrap(fn: Callable[[Iterator], Iterator]) -> Callable[[Iterator], Iterator]:
        @functools.wraps(fn)
        def run(batches: Iterator) -> Iterator:
            from pyspark import TaskContext

            t0, rss0, peak0 = time.time(), _rss_mib(), _peak_mib()
            rows = n = 0
            try:
                for out in fn(batches):
                    rows, n = rows + (out.num_rows if hasattr(out, "num_rows") else len(out)), n + 1
                    yield out
            finally:
                ctx = TaskContext.get()
                line = {"name": name, "pid": os.getpid(), "t": round(t0, 3),
                        "stage": ctx.stageId() if ctx else None, "partition": ctx.partitionId() if ctx else None,
                        "rows": rows, "batches": n, "seconds": round(time.time() - t0, 3),
                        "rss_start": round(rss0, 1), "rss_end": round(_rss_mib(), 1),
                        "peak_start": round(peak0, 1), "peak_end": round(_peak_mib(), 1)}
                print(f"{MEMORY_LOG} {json.dumps(line)}", file=sys.stderr, flush=True)

        return run

    return wrap
