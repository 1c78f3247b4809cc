"""Train CameNN: refresh the item feature cache, write training_examples, train, save the artifact.

    spark-submit jobs/train.py --conf conf/demo.yaml [--set training.epochs=4] [--if-missing]
                               [--run-date YYYY-MM-DD] [--seed N]
    camenn-train --conf conf/demo.yaml [--set training.epochs=4] [--if-missing]
                 [--run-date YYYY-MM-DD] [--seed N]

--if-missing: leave a valid artifact that was trained from this configuration alone (make demo
is idempotent); else, when training.shipped_artifact is set and fits this config and code
(pipeline.train.shipped_artifact_problem), copy it to training.artifact_dir instead of training.
training.num_processes > 1 trains with TorchDistributor (DDP, local processes).
Each training writes a new immutable version under training.artifact_dir (local or s3a://...;
LATEST names the newest), which records the table versions it was trained from and its
held-out metrics; the run (params, per-epoch metrics) is logged to MLflow (tracking.uri) and
the version registered as a version of tracking.registered_model (the first one becomes the
champion). Exit status 2 = bad configuration, environment or missing input tables, or a
shipped artifact that does not verify once copied (one line naming the folder and what to do),
1 = training failed.
"""

from __future__ import annotations

import sys
import time

from pipeline.cli import EXIT_NOTHING_DONE, job_config, job_parser, job_session, run_job


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__, run_date="date of the feature-cache update (default today)")
    parser.add_argument("--if-missing", action="store_true", help="skip when a valid artifact for this config exists")
    parser.add_argument("--seed", type=int, help="model seed (default: the first of training.seeds)")
    args = parser.parse_args(argv)

    def train() -> int | None:
        from camenn.checkpoint import ArtifactError

        try:
            return train_or_reuse()
        except ArtifactError as problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_NOTHING_DONE

    def train_or_reuse() -> None:
        from pipeline.train import current_artifact, run_training, shipped_artifact_problem, use_shipped_artifact

        config = job_config(args)
        if args.if_missing:  # decided before Spark starts: a no-op run costs nothing
            art = current_artifact(config)
            if art is not None:
                print(f"artifact {art.path} (version {art.version}) is current for {config.name}; training skipped")
                return track(config, art.path, "trained")
            if config.training.shipped_artifact:
                problem = shipped_artifact_problem(config)
                if problem is None:
                    art = use_shipped_artifact(config)
                    m = art.metadata.get("metrics", {})
                    print(f"using the shipped model {config.training.shipped_artifact} (version {art.version}, trained on "
                          f"{art.metadata.get('config_name')} {str(art.metadata.get('trained_at'))[:10]}: held-out CVR AUC "
                          f"{m.get('cvr_auc', float('nan')):.3f}, ITA {m.get('ita_acc', float('nan')):.3f}, TIA "
                          f"{m.get('tia_acc', float('nan')):.3f}) as {art.path}; training skipped")
                    return track(config, art.path, "shipped")
                print(f"the shipped model {config.training.shipped_artifact} does not fit: {problem}; training on {config.name}")
        # a model the registry would refuse (another catalogue's registered model) is refused before it trains
        from pipeline import tracking
        from pipeline.feature_cache import featurizer_config, featurizer_fingerprint

        tracking.check_registrable(config, tracking.model_kind(featurizer_fingerprint(featurizer_config(config))))
        t0 = time.perf_counter()
        result = run_training(job_session(config, "train"), config, run_date=args.run_date,
                              if_missing=args.if_missing, seed=args.seed)
        print(result.summary())
        if result.data is not None:
            print(f"data: examples from {result.data.source}, table versions {result.data.versions}, counts {result.data.counts}")
        print(f"total {time.perf_counter() - t0:.0f}s")
        if result.artifact:
            track(config, result.artifact, "trained", result.seconds)

    def track(config, artifact: str, origin: str, seconds: dict | None = None) -> None:
        from pipeline import tracking

        registered = tracking.log_training(config, artifact, origin=origin, seconds=seconds)
        if registered is not None:
            print(f"registered as {registered} -> {registered.source}\n{tracking.ui_hint(config)}")

    return run_job(train)


if __name__ == "__main__":
    raise SystemExit(main())
