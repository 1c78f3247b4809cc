"""Evaluate: the paper's comparison table on the same data and seeds, mislabel detection, heat maps.

    spark-submit jobs/evaluate.py --conf conf/demo.yaml [--set training.seeds=[0]]
                                  [--variants "CameNN,MMoE frame (MLP)"] [--out runs/demo/x]
    camenn-evaluate --conf conf/demo.yaml [--set training.seeds=[0]]
                    [--variants "CameNN,MMoE frame (MLP)"] [--out runs/demo/x]

Trains every variant once per seed in training.seeds (CameNN; MoSE frame; MMoE frame; CameNN
without ITA/TIA; the CVR-only single-task transformer) and writes runs/<config>/<timestamp>/
with metrics.json, report.md and the text-image similarity heat maps (PNG), and logs them to
MLflow (tracking.uri) as one run: the comparison table, per-epoch curves, charts and report. A model in the run
folder that does not verify exits 2 with one line naming it and what to do.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.cli import EXIT_NOTHING_DONE, job_config, job_parser, job_session, run_job


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__, run_date="date of the feature-cache update (default today)")
    parser.add_argument("--variants", help="comma-separated subset of the comparison (default: all)")
    parser.add_argument("--out", help="run folder (default runs/<config>/<timestamp>)")
    args = parser.parse_args(argv)

    def evaluate() -> int | None:
        from camenn.checkpoint import ArtifactError
        from camenn.config import ConfigError
        from pipeline.train import VARIANTS, run_evaluation

        config = job_config(args)
        variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
        unknown = [v for v in variants or [] if v not in VARIANTS]
        if unknown:
            raise ConfigError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
        try:
            out = run_evaluation(job_session(config, "evaluate"), config, out_dir=os.path.abspath(args.out) if args.out else None,
                                 variants=variants, run_date=args.run_date)
        except ArtifactError as problem:   # a model of the run folder was changed or cut short on disk
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_NOTHING_DONE
        print((Path(out["run_dir"]) / "report.md").read_text())
        print(f"run folder: {out['run_dir']}")
        from pipeline import tracking

        run_id = tracking.log_evaluation(config, out)
        if run_id:
            print(f"MLflow run {run_id}; {tracking.ui_hint(config)}")
        return None

    return run_job(evaluate)


if __name__ == "__main__":
    raise SystemExit(main())
