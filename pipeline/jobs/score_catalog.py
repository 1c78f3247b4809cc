"""Score the catalogue for one run date: item features, alignment flags, CVR scores.

    spark-submit jobs/score_catalog.py [--conf conf/demo.yaml] [--run-date YYYY-MM-DD] [--set key=value ...]
    camenn-score [--conf conf/demo.yaml] [--run-date YYYY-MM-DD] [--set key=value ...]

Writes item_features (MERGE), item_alignment and cvr_scores (the date's rows replaced),
quarantine and runs. A rerun of a date replaces that date's rows; a failed run records a
'failed' row in runs and exits 1. Missing inputs (no demo data yet) exit 2 and name the
command that makes them; so does a model artifact that does not verify (no manifest, a
changed byte, a pickle, a forged manifest): one line naming the folder and what to do.
scoring.model_dir may be a folder, a root of versions or a registry reference
(models:/camenn@champion): it is resolved to one version folder before Spark starts, and the
runs row records that folder and the registry version.
"""

from __future__ import annotations

import sys

from pipeline.cli import EXIT_NOTHING_DONE, job_config, job_parser, job_session, run_job


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__, run_date="default: the config's world.run_date").parse_args(argv)

    def score() -> int | None:
        from camenn.checkpoint import ArtifactError, artifact_present, check_artifact
        from pipeline.nightly import run
        from pipeline.tracking import RegistryError, resolve_model

        config = job_config(args)
        try:
            # The registry and an artifact that is there but does not verify are said before Spark
            # starts; a missing folder is left to the run's input check, which names the tables first.
            config = resolve_model(config)
            if artifact_present(config.model_dir, manifest=False):
                check_artifact(config.model_dir)
            result = run(job_session(config, "score-catalog"), config, args.run_date)
        except (ArtifactError, RegistryError) as problem:   # the run (if it started) recorded itself as failed
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_NOTHING_DONE
        print(result.summary())
        return None

    return run_job(score)


if __name__ == "__main__":
    raise SystemExit(main())
