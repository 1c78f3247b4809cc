"""One log format for the library, the jobs and the training processes.

    log = logging.getLogger(__name__)    # in each module that reports progress
    setup_logging()                       # once per process: a job's main, a training process

Progress and summaries of camenn, pipeline and udfs go to stderr at INFO; every other logger
(py4j, urllib3, ...) stays at the root's WARNING, so a job shows its own steps and not its
libraries' chatter. Spark's JVM logs through log4j (conf/spark/log4j2.properties, WARN).
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
PACKAGES = ("camenn", "pipeline", "udfs", "synthetic")


def setup_logging(level: int = logging.INFO) -> None:
    """Send the project's loggers to stderr in FORMAT; calling it again changes nothing."""
    root = logging.getLogger()
    if not any(getattr(h, "camenn_handler", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
        handler.camenn_handler = True
        root.addHandler(handler)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)


__all__ = ["FORMAT", "setup_logging"]
