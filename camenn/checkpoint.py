"""Model artifacts: a directory of config.json, model.safetensors and manifest.json.

Weights travel only as safetensors: a pickle can run code when it is loaded, and the nightly
job loads whatever artifact the training job left behind, on every Spark worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from camenn.model import CameNN, CameNNConfig, create_model_from_config

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
RESERVED_KEYS = ("model", "format_version")
# The code whose meaning a set of weights depends on: the layers, how inputs become tensors and
# how items become features. A change to any of them may change what the same weights compute.
MODEL_CODE = ("model.py", "inputs.py", "featurizer.py", "encoders.py")


def code_fingerprint() -> str:
    """sha-256 (16 hex digits) of the camenn modules in MODEL_CODE, as installed."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in MODEL_CODE:
        digest.update(name.encode() + b"\0" + (package / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


# What to do about an artifact that does not load; every ArtifactError ends with one of these.
RETRAIN = "train a new one (`make train`) or restore the whole folder from a good copy"
REFUSED = ("the folder must hold only config.json, model.safetensors and manifest.json as save_artifact writes them: "
           "train a new one (`make train`) or restore the folder from a good copy")
MISSING_FOLDER = "train one (`make train`) or point the config at an existing artifact folder"
MISSING_MANIFEST = ("its save did not finish, or it was not written by camenn.checkpoint.save_artifact; the manifest is "
                    "what vouches for the weights, so do not write one by hand: retrain (`make train`) or restore the "
                    "whole folder from a good copy")
_DETAIL = 400   # characters of a library's own message kept in the one line


class ArtifactError(ValueError):
    """The artifact directory is missing, incomplete, tampered with or of an unknown format.

    Its message is one line (jobs print it as is, with exit status 2): what is wrong with which
    folder, then what to do.
    """

    def __init__(self, message: str, remedy: str = RETRAIN):
        line = " ".join(str(message).split())
        super().__init__(f"{line}; {remedy}" if remedy else line)


def _brief(exc: BaseException) -> str:
    """A library's exception as a short one-line detail."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:_DETAIL]}{'...' if len(text) > _DETAIL else ''}"


class PickleRefusedError(ArtifactError):
    """A pickle was found where only safetensors are accepted."""

    def __init__(self, message: str, remedy: str = REFUSED):
        super().__init__(message, remedy)


@dataclass
class Artifact:
    model: CameNN  # in eval mode, on the requested device
    config: CameNNConfig
    metadata: dict  # everything in config.json but "model" and "format_version"
    version: str  # first 12 hex digits of the weights file's sha256
    path: Path = field(default_factory=Path)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not every platform or filesystem lets a directory be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_artifact(path, model: CameNN, metadata: dict | None = None, overwrite: bool = False) -> Path:
    """Write the artifact at ``path`` (a directory) and return it.

    Everything is written into a temporary directory beside ``path`` and renamed into place,
    so a crash leaves either no artifact or a whole one. An existing ``path`` is an error
    unless ``overwrite=True`` (artifacts are meant to be immutable; the version is their hash).
    """
    path = Path(path)
    metadata = dict(metadata or {})
    clash = [k for k in RESERVED_KEYS if k in metadata]
    if clash:
        raise ValueError(f"metadata must not use the reserved key(s) {clash}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"artifact {path} already exists (pass overwrite=True to replace it)")

    config = {"format_version": FORMAT_VERSION, "model": model.cfg.to_dict(), **metadata}
    config_bytes = json.dumps(config, indent=2).encode("utf-8")  # TypeError here = metadata not JSON-safe
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights_bytes = save_safetensors_bytes(state, metadata={"format": "pt"})
    files = {CONFIG: config_bytes, WEIGHTS: weights_bytes}
    manifest = {
        "format_version": FORMAT_VERSION,
        "files": {name: {"sha256": _sha256(data), "size": len(data)} for name, data in files.items()},
    }
    files[MANIFEST] = json.dumps(manifest, indent=2).encode("utf-8")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    old = None
    try:
        for name, data in files.items():
            _write(tmp / name, data)
        _fsync_dir(tmp)
        if path.exists():  # overwrite: a directory cannot be renamed over a non-empty one
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rename(path, old / path.name)
        os.rename(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.rename(old / path.name, path)  # put the previous artifact back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return path


def _looks_like_pickle(head: bytes) -> bool:
    # torch.save writes a zip archive (PK..) holding a pickle; older torch and plain pickle
    # start with the PROTO opcode 0x80
    return head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"


def _check_safetensors(root: Path, name: str, data: bytes):
    if _looks_like_pickle(data[:4]):
        raise PickleRefusedError(f"artifact {root}: {name} is a pickle (torch.save / pickle format), not safetensors; "
                                 "pickles are refused because loading one can run arbitrary code")
    if len(data) < 9:
        raise ArtifactError(f"artifact {root}: {name} is not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or data[8:9] != b"{":
        raise ArtifactError(f"artifact {root}: {name} is not a safetensors file (bad header)")


def _read_verified(root: Path, name: str, entry: dict) -> bytes:
    p = root / name
    if not p.is_file():
        raise ArtifactError(f"artifact {root}: {name} is listed in {MANIFEST} but missing")
    data = p.read_bytes()
    if name == WEIGHTS:  # sniff before hashing: "this is a pickle" is the more useful error
        _check_safetensors(root, name, data)
    if len(data) != entry.get("size") or _sha256(data) != entry.get("sha256"):
        raise ArtifactError(f"artifact {root}: {name} does not match {MANIFEST} "
                            f"(size {len(data)} vs {entry.get('size')}, sha256 mismatch); "
                            "the file is corrupt or was changed after saving")
    return data


def _check_layout(root: Path) -> None:
    """The folder exists, holds no pickle and has a manifest; cheap, no file is read."""
    if not root.exists():
        raise ArtifactError(f"artifact {root}: no such folder", MISSING_FOLDER)
    if not root.is_dir():
        raise ArtifactError(f"artifact {root}: not a directory (expected {CONFIG}, {WEIGHTS}, {MANIFEST})")
    pickles = sorted(p.name for p in root.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise PickleRefusedError(f"artifact {root}: pickle file(s) {pickles} found; pickles are refused "
                                 f"(weights are read only from {WEIGHTS})")
    if not (root / MANIFEST).is_file():
        present = sorted(p.name for p in root.iterdir())
        raise ArtifactError(f"artifact {root}: {MANIFEST} is missing (the folder holds {present or 'nothing'})",
                            MISSING_MANIFEST)


def check_artifact(path) -> dict:
    """Verify an artifact without building its model: layout, manifest, hashes, headers, config.

    Returns config.json's content. Cheap enough for a job's preflight, so that an artifact
    problem is one line before Spark starts; load_artifact runs the same checks.
    """
    root = Path(path)
    _check_layout(root)
    _, blobs = _verified_blobs(root)
    return _parse_config(root, blobs[CONFIG])


def _verified_blobs(root: Path) -> tuple[dict, dict[str, bytes]]:
    """(manifest's file entries, each listed file's bytes), every file checked against the manifest."""
    try:
        manifest = json.loads((root / MANIFEST).read_bytes())
        listed = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"artifact {root}: {MANIFEST} is not a valid manifest ({_brief(exc)})") from None
    if not isinstance(listed, dict) or not all(isinstance(e, dict) for e in listed.values()):
        raise ArtifactError(f"artifact {root}: {MANIFEST} is not a valid manifest (its files are not name: entry pairs)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"artifact {root}: format_version {manifest.get('format_version')!r} "
                            f"is not supported (expected {FORMAT_VERSION})")
    strays = sorted(n for n in listed if not n or n != Path(n).name or n in (".", ".."))
    if strays:   # a forged manifest must not make the loader read files outside the folder
        raise ArtifactError(f"artifact {root}: {MANIFEST} lists {strays}, which are not file names in the folder")
    for required in (CONFIG, WEIGHTS):
        if required not in listed:
            raise ArtifactError(f"artifact {root}: {required} is not listed in {MANIFEST}")
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {MANIFEST}
    unlisted = sorted(present - set(listed))
    if unlisted:
        raise ArtifactError(f"artifact {root}: file(s) {unlisted} are not listed in {MANIFEST}")
    # read each file once: what is hashed is exactly what is parsed (no check-then-swap window)
    return listed, {name: _read_verified(root, name, entry) for name, entry in listed.items()}


def _parse_config(root: Path, data: bytes) -> dict:
    try:
        config = json.loads(data)
    except ValueError as exc:
        raise ArtifactError(f"artifact {root}: {CONFIG} is not JSON ({_brief(exc)})") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"artifact {root}: {CONFIG} is not a JSON object")
    if config.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"artifact {root}: {CONFIG} format_version {config.get('format_version')!r} "
                            f"is not supported (expected {FORMAT_VERSION})")
    return config


def load_artifact(path, device="cpu") -> Artifact:
    """Verify and load an artifact written by save_artifact; the model comes back in eval mode.

    Every problem with the folder is an ArtifactError, whatever library found it.
    """
    root = Path(path)
    _check_layout(root)
    listed, blobs = _verified_blobs(root)
    config = _parse_config(root, blobs[CONFIG])
    try:
        cfg = CameNNConfig.from_dict(config["model"])
        model = create_model_from_config(cfg)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"artifact {root}: {CONFIG} has no valid 'model' section ({_brief(exc)})") from None
    try:
        state = load_safetensors_bytes(blobs[WEIGHTS])
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError on a bad body
        raise ArtifactError(f"artifact {root}: {WEIGHTS} does not parse as safetensors ({_brief(exc)})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing / unexpected keys or shape mismatches: never half-load
        raise ArtifactError(f"artifact {root}: {WEIGHTS} does not fit the model in {CONFIG}: {_brief(exc)}") from None
    model.to(device).eval()
    metadata = {k: v for k, v in config.items() if k not in RESERVED_KEYS}
    return Artifact(model=model, config=cfg, metadata=metadata,
                    version=listed[WEIGHTS]["sha256"][:12], path=root)


__all__ = ["Artifact", "ArtifactError", "PickleRefusedError", "save_artifact", "load_artifact", "check_artifact",
           "FORMAT_VERSION"]
