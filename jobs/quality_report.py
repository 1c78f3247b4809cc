"""Write the per-merchant listing-quality report of one run date.

    spark-submit jobs/quality_report.py --conf conf/demo.yaml [--run-date YYYY-MM-DD] [--set key=value ...]

Reads item_alignment (the scoring job's flags), items and item_features; writes
<report.out_dir>/<run date>/index.html, one HTML page and one CSV per merchant with flagged
items under merchants/, flag_rate_by_category.png, the run date's quality_flags rows and a
runs row. The library is pipeline/report.py. The last line printed is the index page's path.
Exit status 2 = nothing to report from (no scoring output for the date, bad config),
1 = the run failed (a runs row with status=failed says why).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import traceback
import uuid
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from camenn.config import ConfigError, default_config_path, load_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conf", default=str(default_config_path()), help="YAML config (default conf/demo.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--run-date", type=dt.date.fromisoformat,
                        help="YYYY-MM-DD (default: the config's world.run_date)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pipeline.report import ReportError, build_report, record_run
    from pipeline.session import EnvironmentProblem, get_spark
    from pipeline.tables import MissingTable

    try:
        config = load_config(args.conf, args.set)
        # Python workers (the merchant pages are rendered there) get the executor environment,
        # not the driver's sys.path: a spark-submit started outside the repository needs this.
        spark_conf = {"spark.executorEnv.PYTHONPATH": _ROOT, **config.spark.conf}
        config = config.model_copy(update={"spark": config.spark.model_copy(update={"conf": spark_conf})})
        spark = get_spark(config, app_name="camenn-quality-report")
    except (ConfigError, EnvironmentProblem) as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    run_date = args.run_date or config.world.run_date
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    run_id = f"quality_report-{run_date.isoformat()}-{uuid.uuid4().hex[:8]}"
    try:
        result = build_report(spark, config, run_date)
    except (ReportError, MissingTable) as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - recorded, then the job fails
        traceback.print_exc()
        try:
            record_run(spark, config, None, run_id=run_id, run_date=run_date, started_at=started, status="failed",
                       error=f"{type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001
            pass
        return 1
    record_run(spark, config, result, run_id=run_id, run_date=run_date, started_at=started, status="ok")
    print(result.summary())
    print(result.index_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
