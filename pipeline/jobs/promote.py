"""Promote: move the champion alias to a candidate version only when it is no worse, or move it back.

    spark-submit jobs/promote.py --conf conf/demo.yaml [--run-date YYYY-MM-DD] [--candidate N] [--evaluate-only]
    spark-submit jobs/promote.py --conf conf/demo.yaml --rollback
    spark-submit jobs/promote.py --conf conf/demo.yaml --to-version N [--reason TEXT]
    camenn-promote ... (the same flags)

The gate measures the candidate (default: the newest registered version of
tracking.registered_model) and the champion (tracking.champion_alias) on the same held-out data
and moves the alias only when each figure of promotion.margins (ITA/TIA accuracy, CVR AUC) is
at least the champion's minus its margin. The figures, the margins and the decision are an
MLflow run (tracking.uri); --evaluate-only records them and moves nothing (the DAG's evaluate
task; its promote task then reuses that run of the same date). The next night scores with
whatever the alias names.

--rollback moves the alias back to the version it left at its last move; --to-version N moves
it to N without the gate (an operator's choice, recorded as such). Exit status 0 also when the
gate refused (the decision is the result); 2 = nothing could be decided: bad configuration, no
such version or champion, models trained on other item features, missing tables.
"""

from __future__ import annotations

import sys

from pipeline.cli import EXIT_NOTHING_DONE, job_config, job_parser, job_session, run_job


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__, run_date="date of the evaluation data (default today); the DAG passes {{ ds }}")
    parser.add_argument("--candidate", help="registry version to evaluate (default: the newest)")
    parser.add_argument("--evaluate-only", action="store_true", help="record the comparison, move nothing")
    moves = parser.add_mutually_exclusive_group()
    moves.add_argument("--rollback", action="store_true", help="move the alias back to the version it last left")
    moves.add_argument("--to-version", metavar="N", help="move the alias to version N without the gate")
    parser.add_argument("--reason", default="", help="why (recorded with --rollback / --to-version)")
    args = parser.parse_args(argv)

    def decide() -> int | None:
        from camenn.checkpoint import ArtifactError
        from pipeline import promote, tracking

        config = job_config(args)

        def session():   # started only when there is something to measure
            return job_session(config, "promote")

        try:
            if args.rollback or args.to_version:
                version = promote.previous_champion(config) if args.rollback else args.to_version
                kind = "rollback" if args.rollback else "moved by hand"
                decision = promote.move_alias(config, version, run_date=args.run_date,
                                              reason=f"{kind}: {args.reason}" if args.reason else kind)
            elif args.evaluate_only:
                decision = promote.evaluate(session, config, args.candidate, args.run_date)
            else:
                decision = promote.promote(session, config, args.candidate, args.run_date)
        except (promote.PromotionError, tracking.RegistryError, ArtifactError) as problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_NOTHING_DONE
        print(decision.summary())
        print(f"{config.tracking.champion_alias}: {config.tracking.registered_model}/{promote.champion_version(config)}; "
              f"{tracking.ui_hint(config)}")
        return None

    return run_job(decide)


if __name__ == "__main__":
    raise SystemExit(main())
