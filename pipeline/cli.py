"""What every spark-submit entry point in jobs/ shares: its common flags, config, session and exit codes.

A job stays a thin ``main``::

    def main(argv=None) -> int:
        args = job_parser(__doc__, run_date="default: the config's world.run_date").parse_args(argv)
        return run_job(lambda: score(args))

    def score(args) -> int:
        config = job_config(args)
        spark = job_session(config, "score-catalog")
        ...

Exit status, the same for every job (Airflow retries on any non-zero status):
0 done; 1 the run failed (its ``runs`` row says why, where the job writes one); 2 nothing was
done: bad configuration, a missing input table, or an environment problem (no Java, no Delta jar).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable

from camenn.config import AppConfig, ConfigError, default_config_path, load_config
from camenn.logs import setup_logging

EXIT_OK, EXIT_FAILED, EXIT_NOTHING_DONE = 0, 1, 2



def job_parser(doc: str, *, run_date: str | None = None, conf_default: str | None = str(default_config_path())
               ) -> argparse.ArgumentParser:
    """A parser with --conf and --set, and --run-date when ``run_date`` (its help text) is given."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0], epilog=_usage_of(doc),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conf", default=conf_default, help="YAML config (default conf/demo.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set scoring.batch_size=512 (repeatable)")
    if run_date is not None:
        parser.add_argument("--run-date", type=dt.date.fromisoformat, metavar="YYYY-MM-DD", help=run_date)
    return parser


def _usage_of(doc: str) -> str:
    lines = doc.strip().splitlines()
    return "\n".join(lines[1:]).strip()


def job_config(args: argparse.Namespace, conf: str | None = None) -> AppConfig:
    return load_config(conf or args.conf, args.set)


def job_session(config: AppConfig, job: str):
    """The job's SparkSession. Its Python workers import the installed package (``pip install .``), as the driver does."""
    from pipeline.session import get_spark

    return get_spark(config, app_name=f"{config.spark.app_name}-{job}")


def _nothing_done_errors() -> tuple[type[BaseException], ...]:
    from pipeline.ingest import IngestError
    from pipeline.nightly import MissingInput
    from pipeline.report import ReportError
    from pipeline.session import EnvironmentProblem
    from pipeline.tables import MissingTable

    return ConfigError, EnvironmentProblem, MissingTable, MissingInput, IngestError, ReportError


def run_job(body: Callable[[], int | None]) -> int:
    """Run a job's body; a known problem becomes one line on stderr and exit status 2."""
    setup_logging()
    try:
        status = body()
    except Exception as problem:  # noqa: BLE001 - sorted into the two statuses below
        if isinstance(problem, _nothing_done_errors()):
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_NOTHING_DONE
        raise
    return EXIT_OK if status is None else int(status)


__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_NOTHING_DONE", "job_parser", "job_config", "job_session", "run_job"]
