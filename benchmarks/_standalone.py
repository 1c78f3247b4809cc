"""A Spark standalone cluster on loopback for a benchmark: a master and one worker from the pyspark install.

In local mode the driver's JVM is also the executor, so its memory mixes the two. On this
cluster the driver and the executor are separate JVMs, and what the driver holds can be
measured alone (``bench_scale.py --standalone``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive_workers(ui_port: int) -> int:
    """The master's count of registered workers, from its web UI's JSON (0 while it is not up)."""
    try:
        with urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as page:
            return int(json.load(page).get("aliveworkers", 0))
    except OSError:
        return 0


@contextlib.contextmanager
def standalone_cluster(log_dir: Path, cores: int, memory: str):
    """Yields the master URL of a master and one worker (``cores`` cores, ``memory``) on 127.0.0.1."""
    import pyspark

    home = Path(pyspark.__file__).parent
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(log_dir),
           "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable)}
    port, ui = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    procs = []

    def start(name: str, *args: str):
        out = open(log_dir / f"{name}.log", "w")
        procs.append(subprocess.Popen([str(home / "bin" / "spark-class"), *args], stdout=out, stderr=subprocess.STDOUT,
                                      env=env, start_new_session=True))

    start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
          "--webui-port", str(ui))
    start("worker", "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", str(cores),
          "--memory", memory, "--webui-port", str(free_port()), "--work-dir", str(log_dir / "work"))
    try:
        deadline = time.monotonic() + 120
        while alive_workers(ui) < 1:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the standalone cluster did not start: see {log_dir}/master.log and worker.log")
            time.sleep(0.5)
        yield url
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=60)
