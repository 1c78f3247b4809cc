"""Where the report's files go: a pyarrow file system (local, HDFS, S3), whole-file writes, an atomic publish.

A run writes into a staging folder and :func:`publish_folder` replaces the date's folder at the
end, so a reader never sees half a report; no path outside the report folder is ever written.
"""

from __future__ import annotations

import os
import uuid

MERCHANTS_DIR = "merchants"
INDEX = "index.html"
PLOT = "flag_rate_by_category.png"


class ReportError(RuntimeError):
    """The report cannot be built from what is there (no scoring output for the date, ...)."""


def filesystem_for(uri: str):
    """(pyarrow FileSystem, path) for a local folder or a URI; s3a:// (Hadoop's name) is s3://."""
    from pyarrow import fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    if uri.startswith(("s3a://", "s3n://")):
        uri = "s3://" + uri.split("://", 1)[1]
    return pafs.FileSystem.from_uri(uri)


def write_bytes(filesystem, path: str, data: bytes) -> None:
    """Write a file whole: to a temporary name first, then renamed (a retried task overwrites it)."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with filesystem.open_output_stream(tmp) as out:
        out.write(data)
    filesystem.move(tmp, path)


def inside(base: str, path: str) -> str:
    """Refuse any output path outside ``base`` (defence in depth behind merchant_slug)."""
    if os.path.normpath(path) != path.rstrip("/") or not os.path.normpath(path).startswith(base.rstrip("/") + "/"):
        raise ReportError(f"refusing to write outside the report folder: {path!r}")
    return path


def publish_folder(filesystem, staging: str, final: str) -> None:
    """Replace ``final`` with ``staging``: a rename where the file system has one, else copy + delete."""
    from pyarrow import fs as pafs

    old = None
    if filesystem.get_file_info(final).type != pafs.FileType.NotFound:
        old = f"{final}.old-{uuid.uuid4().hex[:8]}"
        filesystem.move(final, old)
    try:
        filesystem.move(staging, final)
    except (OSError, NotImplementedError):   # object stores cannot rename folders
        pafs.copy_files(staging, final, source_filesystem=filesystem, destination_filesystem=filesystem)
        filesystem.delete_dir(staging)
    if old is not None:
        filesystem.delete_dir(old)


def uri_like(original: str, path: str) -> str:
    """A path of the pyarrow file system as ``original`` names it: itself for a local folder, else scheme://path."""
    if "://" not in original:
        return path
    return f"{original.split('://', 1)[0]}://{path}"
