"""Ship a trained model with the repository: the quick demo's model, trained on the 20k-item world.

    python -m pipeline.jobs.ship_model [SOURCE] [TARGET]     # make ship-demo-model
    (defaults: artifacts/demo-full/model -> models/demo)

Copies a verified artifact (safetensors weights, config.json with its training config and
held-out metrics, manifest.json) to TARGET, stamped with the fingerprint of the model code it
was trained with (camenn.checkpoint.MODEL_CODE). `make demo` scores with it while that code,
the model and featurizer settings and the encoder weights stay what they were; otherwise
`train --if-missing` trains on the quick world instead (pipeline.train.shipped_artifact_problem).

An artifact trained before the fingerprint was recorded is stamped only when git shows that
MODEL_CODE is unchanged since the commit it records. Exit status 2 = nothing shippable.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from camenn.checkpoint import MODEL_CODE, ArtifactError, code_fingerprint, load_artifact, write_artifact
from camenn.config import project_root


def _unchanged_since(commit: str | None) -> bool:
    if not commit:
        return False
    files = [f"camenn/{name}" for name in MODEL_CODE]
    out = subprocess.run(["git", "diff", "--quiet", commit, "--", *files], cwd=project_root(), capture_output=True)
    return out.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", default="artifacts/demo-full/model")
    parser.add_argument("target", nargs="?", default="models/demo")
    args = parser.parse_args(argv)
    root = project_root()
    try:
        art = load_artifact(root / args.source)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = dict(art.metadata)
    stamped = meta.get("code_fingerprint")
    if stamped is None and _unchanged_since(meta.get("git_commit")):
        meta["code_fingerprint"] = code_fingerprint()
    if meta.get("code_fingerprint") != code_fingerprint():
        print(f"error: {args.source} was trained with other model code than this checkout's; retrain it "
              f"(make train CONF=conf/demo-full.yaml) before shipping", file=sys.stderr)
        return 2
    target = write_artifact(root / args.target, art.model, meta, overwrite=True)
    metrics = meta.get("metrics", {})
    print(f"shipped {args.source} (version {art.version}) to {target}: CVR AUC {metrics.get('cvr_auc', float('nan')):.3f}, "
          f"ITA {metrics.get('ita_acc', float('nan')):.3f}, TIA {metrics.get('tia_acc', float('nan')):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
