"""Model artifacts: a directory of config.json, model.safetensors and manifest.json, on any filesystem.

Weights travel only as safetensors: a pickle can run code when it is loaded, and the nightly
job loads whatever artifact the training job left behind, on every Spark worker.

Artifacts are immutable versions under a root (``training.artifact_dir``)::

    <root>/versions/20261201T021500123456Z-3f2a9c1d0b7e/{config.json, model.safetensors, manifest.json}
    <root>/LATEST          # one line: the name of the version that loading <root> resolves to

A version's name is its UTC save time (so a listing is a history) and the first 12 hex digits
of the sha-256 of its manifest, which vouches for every other byte: a version is never written
twice, and loading checks that the manifest still hashes to the name. ``save_artifact`` writes
a new version and then moves LATEST; ``load_artifact`` takes a root, a version folder, or a
plain folder written by ``write_artifact`` (the shipped demo model).

Files go through ``pyarrow.fs``, so a location is a local path or a URI: ``file://``, ``s3://``
(``s3a://`` as Spark spells it: the same bucket), ``hdfs://``. S3 credentials and endpoint come
from the usual AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...). On a local disk
a version is written to a temporary folder and renamed into place; an object store has no
rename, so there the manifest is written last: a version without one is a save that did not
finish, and the loader says so.

One file (~540 lines): writing, verifying and resolving a version are one format, and a reader
checks what the loader trusts against what the writer wrote without leaving the page; the model
code's fingerprint lives here because the artifact carries it.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from camenn.model import CameNN, CameNNConfig, create_model_from_config

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
VERSIONS = "versions"
LATEST = "LATEST"
_VERSION_NAME = re.compile(r"\d{8}T\d{12}Z-([0-9a-f]{12})")   # UTC to the microsecond, then the hash
_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")   # a scheme of two letters or more: not a Windows drive
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
RESERVED_KEYS = ("model", "format_version")
# The code whose meaning a set of weights depends on: the layers, how inputs become tensors and
# how items become features. A change to any of them may change what the same weights compute
# (a change to their docstrings or comments does not: code_meaning).
MODEL_CODE = ("model.py", "inputs.py", "featurizer.py", "encoders.py")


def code_meaning(source: str, name: str = "<model code>") -> str:
    """A module as Python reads it, without its docstrings: what a fingerprint of the code hashes.

    Comments, docstrings, blank lines and line breaks change nothing the weights compute, so a
    fix to a docstring does not make every trained model stale (a retrain and re-ship of the demo
    model takes 20-45 minutes on 2 cores). Every other string stays: a string can carry meaning
    (an activation's name, a key). The dump is Python's own AST, so a new Python minor version
    may change it: the stack pins 3.11.
    """
    tree = ast.parse(source, filename=name)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_fingerprint(package: Path | None = None) -> str:
    """sha-256 (16 hex digits) of the meaning (code_meaning) of the camenn modules in MODEL_CODE, as installed."""
    package = package or Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in MODEL_CODE:
        meaning = code_meaning((package / name).read_text(encoding="utf-8"), name)
        digest.update(name.encode() + b"\0" + meaning.encode() + b"\0")
    return digest.hexdigest()[:16]


# What to do about an artifact that does not load; every ArtifactError ends with one of these.
RETRAIN = "train a new one (`make train`) or restore the whole folder from a good copy"
REFUSED = ("the folder must hold only config.json, model.safetensors and manifest.json as save_artifact writes them: "
           "train a new one (`make train`) or restore the folder from a good copy")
MISSING_FOLDER = "train one (`make train`) or point the config at an existing artifact folder"
NO_POINTER = (f"point the config at one of its {VERSIONS}/<name> folders, or train a new version (`make train`), "
              f"which writes {LATEST} again")
UNREADABLE = "check that the store is reachable and that these credentials may read it"
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
    path: str = ""  # the folder it was loaded from: a version folder when a root was asked for


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ places


@dataclass(frozen=True)
class _Place:
    """A file or folder on some filesystem, and the name messages give it (the location as written)."""

    fs: pafs.FileSystem
    path: str  # inside fs
    name: str

    def __str__(self) -> str:
        return self.name

    def child(self, part: str) -> _Place:
        return _Place(self.fs, f"{self.path.rstrip('/')}/{part}", f"{self.name.rstrip('/')}/{part}")

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def kind(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def is_file(self) -> bool:
        return self.kind() == pafs.FileType.File

    def read(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def write(self, data: bytes) -> None:
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)

    def listing(self, recursive: bool) -> list[tuple[str, pafs.FileType]]:
        """(name relative to this folder, type) of what is below it."""
        base = self.path.rstrip("/") + "/"
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=recursive))
        return sorted((i.path[len(base):], i.type) for i in infos if i.path.startswith(base))


def _locate(location) -> _Place:
    """A local path or a filesystem URI as a _Place; s3a:// and s3n:// (Hadoop's names) read as s3://."""
    text = os.fspath(location)
    match = _URI.match(text)
    if match is None:
        return _Place(pafs.LocalFileSystem(), os.path.abspath(text), str(Path(text)))
    rest = text[match.end():]
    uri = f"s3://{rest}" if match.group(1).lower() in ("s3a", "s3n") else text
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as exc:   # unknown scheme, no such bucket, no credentials
        raise ArtifactError(f"artifact {text}: {_brief(exc)}", UNREADABLE) from None
    return _Place(fs, path, text.rstrip("/"))


@contextmanager
def _reading(place):
    """The filesystem's OSError (permissions, network, a vanished file) as a one-line ArtifactError."""
    try:
        yield
    except OSError as exc:
        raise ArtifactError(f"artifact {place}: cannot be read ({_brief(exc)})", UNREADABLE) from None


def _version_of(place: _Place) -> _Place:
    """The folder that loading ``place`` reads: itself when it holds a manifest, else the version LATEST names."""
    if place.child(MANIFEST).is_file():
        return place
    pointer = place.child(LATEST)
    if not pointer.is_file():
        if place.child(VERSIONS).kind() == pafs.FileType.Directory:
            raise ArtifactError(f"artifact {place}: holds {VERSIONS}/ but no {LATEST} pointer", NO_POINTER)
        return place   # _check_layout says what is wrong with it
    name = pointer.read().decode("utf-8", "replace").strip()
    if not _VERSION_NAME.fullmatch(name):
        raise ArtifactError(f"artifact {place}: {LATEST} names {name[:80]!r}, which is not a version name", NO_POINTER)
    return place.child(VERSIONS).child(name)


def _open(location) -> _Place:
    place = _locate(location)
    with _reading(place):
        return _version_of(place)


def resolve_artifact(location) -> str:
    """The folder that loading ``location`` would read: a root resolves to its LATEST version, once.

    Jobs resolve on the driver before they start, so that every Spark worker loads the same
    version even when a training publishes a new one mid-run.
    """
    return str(_open(location))


def artifact_present(location, manifest: bool = True) -> bool:
    """Something is where loading ``location`` would look: a manifest (a whole save landed), or with
    ``manifest=False`` the folder at all. Nothing is verified."""
    try:
        place = _open(location)
        with _reading(place):
            return (place.child(MANIFEST) if manifest else place).kind() != pafs.FileType.NotFound
    except ArtifactError:
        return False


def list_versions(root) -> list[str]:
    """The version folders under ``root``, oldest first (a name starts with its UTC save time)."""
    folder = _locate(root).child(VERSIONS)
    with _reading(folder):
        if folder.kind() != pafs.FileType.Directory:
            return []
        return [str(folder.child(n)) for n, t in folder.listing(recursive=False)
                if t == pafs.FileType.Directory and _VERSION_NAME.fullmatch(n)]


# ------------------------------------------------------------------------------ writing


def _artifact_files(model: CameNN, metadata: dict | None) -> dict[str, bytes]:
    """config.json, model.safetensors and manifest.json as bytes, the manifest last."""
    metadata = dict(metadata or {})
    clash = [k for k in RESERVED_KEYS if k in metadata]
    if clash:
        raise ValueError(f"metadata must not use the reserved key(s) {clash}")
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
    return files


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


def _put_local(path: Path, files: dict[str, bytes], overwrite: bool) -> None:
    """Write into a temporary folder beside ``path`` and rename it into place: a crash leaves no artifact or a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    old = None
    try:
        for name, data in files.items():
            _write(tmp / name, data)
        _fsync_dir(tmp)
        if path.exists() and overwrite:  # a directory cannot be renamed over a non-empty one
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


def _put(place: _Place, files: dict[str, bytes], overwrite: bool = False) -> None:
    if place.local:
        _put_local(Path(place.path), files, overwrite)
        return
    # an object store has no rename: the manifest goes last, so a reader sees a whole version or none
    if overwrite:
        place.fs.delete_dir_contents(place.path, missing_dir_ok=True)
    for name in [n for n in files if n != MANIFEST] + [MANIFEST]:
        place.child(name).write(files[name])


def _point(pointer: _Place, name: str) -> None:
    """Write LATEST whole: a rename on a local disk, one PUT (atomic per object) on an object store."""
    data = f"{name}\n".encode()
    if not pointer.local:
        pointer.write(data)
        return
    path = Path(pointer.path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    _write(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _publish(root: _Place, files: dict[str, bytes]) -> str:
    now = dt.datetime.now(dt.UTC)   # to the microsecond: two saves in one second still list in order
    name = f"{now:%Y%m%dT%H%M%S%f}Z-{_sha256(files[MANIFEST])[:12]}"
    target = root.child(VERSIONS).child(name)
    # the name is the content: a version already there (the same bytes in the same microsecond) is left as it is
    if not target.child(MANIFEST).is_file():
        _put(target, files)
    _point(root.child(LATEST), name)
    return str(target)


def save_artifact(root, model: CameNN, metadata: dict | None = None) -> str:
    """Write a new immutable version under ``root``, point ``root``/LATEST at it and return the version's location.

    ``root`` is a local path or a URI (s3://, s3a://, hdfs://, file://). Earlier versions are
    never touched: going back to one is pointing the config (or the registry) at it.
    """
    return _publish(_locate(root), _artifact_files(model, metadata))


def write_artifact(path, model: CameNN, metadata: dict | None = None, overwrite: bool = False) -> str:
    """Write the artifact as the plain folder ``path`` (no versions, no LATEST): a model shipped in the repository.

    An existing ``path`` is an error unless ``overwrite=True``.
    """
    files = _artifact_files(model, metadata)
    place = _locate(path)
    if place.kind() != pafs.FileType.NotFound and not overwrite:
        raise FileExistsError(f"artifact {place} already exists (pass overwrite=True to replace it)")
    _put(place, files, overwrite)
    return str(place)


def copy_artifact(source, root) -> str:
    """Verify the artifact at ``source`` and publish its very bytes as a new version under ``root``; returns the version."""
    src = _open(source)
    with _reading(src):
        _, blobs, manifest = _verified_blobs(src)
    _parse_config(src, blobs[CONFIG])
    return _publish(_locate(root), {**blobs, MANIFEST: manifest})


# ------------------------------------------------------------------------------ reading


def _looks_like_pickle(head: bytes) -> bool:
    # torch.save writes a zip archive (PK..) holding a pickle; older torch and plain pickle
    # start with the PROTO opcode 0x80
    return head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"


def _check_safetensors(root: _Place, name: str, data: bytes):
    if _looks_like_pickle(data[:4]):
        raise PickleRefusedError(f"artifact {root}: {name} is a pickle (torch.save / pickle format), not safetensors; "
                                 "pickles are refused because loading one can run arbitrary code")
    if len(data) < 9:
        raise ArtifactError(f"artifact {root}: {name} is not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or data[8:9] != b"{":
        raise ArtifactError(f"artifact {root}: {name} is not a safetensors file (bad header)")


def _read_verified(root: _Place, name: str, entry: dict, present: set[str]) -> bytes:
    if name not in present:
        raise ArtifactError(f"artifact {root}: {name} is listed in {MANIFEST} but missing")
    data = root.child(name).read()
    if name == WEIGHTS:  # sniff before hashing: "this is a pickle" is the more useful error
        _check_safetensors(root, name, data)
    if len(data) != entry.get("size") or _sha256(data) != entry.get("sha256"):
        raise ArtifactError(f"artifact {root}: {name} does not match {MANIFEST} "
                            f"(size {len(data)} vs {entry.get('size')}, sha256 mismatch); "
                            "the file is corrupt or was changed after saving")
    return data


def _check_layout(root: _Place) -> list[str]:
    """The folder exists, holds no pickle and has a manifest; returns its files (relative names). Nothing is read."""
    kind = root.kind()
    if kind == pafs.FileType.NotFound:
        raise ArtifactError(f"artifact {root}: no such folder", MISSING_FOLDER)
    if kind != pafs.FileType.Directory:
        raise ArtifactError(f"artifact {root}: not a directory (expected {CONFIG}, {WEIGHTS}, {MANIFEST})")
    everything = root.listing(recursive=True)
    pickles = sorted(n.rsplit("/", 1)[-1] for n, _ in everything if Path(n).suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise PickleRefusedError(f"artifact {root}: pickle file(s) {pickles} found; pickles are refused "
                                 f"(weights are read only from {WEIGHTS})")
    files = [n for n, t in everything if t == pafs.FileType.File]
    if MANIFEST not in files:
        present = sorted(n for n, _ in everything if "/" not in n)
        raise ArtifactError(f"artifact {root}: {MANIFEST} is missing (the folder holds {present or 'nothing'})",
                            MISSING_MANIFEST)
    return files


def _verified_blobs(root: _Place) -> tuple[dict, dict[str, bytes], bytes]:
    """(manifest's file entries, each listed file's bytes, the manifest's bytes), every file checked against the manifest."""
    files = _check_layout(root)
    raw = root.child(MANIFEST).read()
    try:
        manifest = json.loads(raw)
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
    present = set(files) - {MANIFEST}
    unlisted = sorted(present - set(listed))
    if unlisted:
        raise ArtifactError(f"artifact {root}: file(s) {unlisted} are not listed in {MANIFEST}")
    # read each file once: what is hashed is exactly what is parsed (no check-then-swap window)
    return listed, {name: _read_verified(root, name, entry, present) for name, entry in listed.items()}, raw


def _check_name(root: _Place, manifest: bytes) -> None:
    """A version's name ends with its manifest's hash: a manifest rewritten to vouch for other bytes shows here."""
    match = _VERSION_NAME.fullmatch(root.path.rstrip("/").rsplit("/", 1)[-1])
    if match and match.group(1) != _sha256(manifest)[:12]:
        raise ArtifactError(f"artifact {root}: {MANIFEST} does not hash to the version's name ({match.group(1)}); "
                            "it was changed after saving")


def _parse_config(root: _Place, data: bytes) -> dict:
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


def _verified(location) -> tuple[_Place, dict, dict[str, bytes], dict]:
    """(the version folder, manifest entries, file bytes, config.json's content) of a location, every check passed."""
    root = _open(location)
    with _reading(root):
        listed, blobs, manifest = _verified_blobs(root)
    config = _parse_config(root, blobs[CONFIG])
    _check_name(root, manifest)
    return root, listed, blobs, config


def check_artifact(path) -> dict:
    """Verify an artifact without building its model: layout, manifest, hashes, headers, config.

    Returns config.json's content. Cheap enough for a job's preflight, so that an artifact
    problem is one line before Spark starts; load_artifact runs the same checks.
    """
    return _verified(path)[3]


def load_artifact(path, device="cpu") -> Artifact:
    """Verify and load an artifact written by save_artifact; the model comes back in eval mode.

    ``path`` is a version folder, a root (its LATEST version is loaded) or a plain artifact
    folder, local or a URI. Every problem with the folder is an ArtifactError, whatever library found it.
    """
    root, listed, blobs, config = _verified(path)
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
                    version=listed[WEIGHTS]["sha256"][:12], path=str(root))


__all__ = ["Artifact", "ArtifactError", "PickleRefusedError", "save_artifact", "write_artifact", "copy_artifact",
           "load_artifact", "check_artifact", "resolve_artifact", "artifact_present", "list_versions", "FORMAT_VERSION"]
