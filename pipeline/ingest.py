"""Ingest of a real catalogue: CSV/Parquet exports + image files -> `items`, `events`, `users`,
`candidates`, `quarantine`.

One module (~1,000 lines): the column mapping, the checks behind every quarantine reason (with the
CSV-record and image-path checks that fault handling added) and the writes are one contract
that a reader follows row by row, for items, events, users and candidates alike; split, the
reason orders (ITEM_REASONS, USER_REASONS, ...) would be spread over files that each test part of it.

Users arrive with exports, not with our tables. A column mapping (``IngestConfig.item_map`` /
``event_map`` / ``user_map`` / ``candidate_map``, overridable by flags) says where each contracted field comes from:

* ``"prod_name"``          an export column;
* ``"const:acme"``         a constant for every row (a one-merchant export);
* ``"{article_id:0>10}.jpg"`` (image only) a Python format template over export columns, giving a
  path relative to ``images_root``; a plain column may also hold a relative path, or an absolute
  path / URI under ``images_root``.

Every export row either lands or goes to `quarantine` with one reason (the first that applies,
in the order of :data:`ITEM_REASONS` / :data:`EVENT_REASONS`), so rows in = landed + quarantined.
Image bytes are read by Spark (``binaryFile`` over ``images_root``, joined on the relative path)
and decoded on executors by :func:`camenn.images.decode_image`, the decoder the featurizer uses;
nothing catalogue-sized is collected to the driver. Before any byte is read, image paths are
normalised (a ``../`` cannot leave the root) and, on a local root, every file is resolved with
its symlinks followed: a file that resolves outside the root is quarantined and left out of the
read. What ingest refuses, and why, is in docs/reliability.md ("Ingest refuses").

Reruns are idempotent: with ``mode=overwrite`` the items and events tables are replaced by a
deterministic result of the export; with ``mode=merge`` items are upserted on item_id (a row
is rewritten only when its content changed) and events are inserted only when not present.
This job's quarantine rows are replaced per (run_date, job, source), never appended twice.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import posixpath
import re
import string
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType
from pyspark.sql.window import Window

from camenn.config import AppConfig, IngestConfig, profile_map, project_root, unknown_user_fields
from pipeline import tables

JOB = "ingest"
CONST_PREFIX = "const:"

# Quarantine reasons, in the order they are tested (a row carries the first that applies).
MALFORMED_RECORD = "malformed CSV record"     # wrong column count or an unbalanced quote; payload names the line
MISSING_ITEM_ID = "missing item_id"
DUPLICATE_ITEM_ID = "duplicate item_id"
MISSING_MERCHANT_ID = "missing merchant_id"
EMPTY_TEXT = "empty text (title and description blank)"
INVALID_PRICE = "invalid price"
INVALID_UPDATED_AT = "invalid updated_at"
IMAGE_NO_PATH = "image: no path"
IMAGE_OUTSIDE_ROOT = "image: path outside images_root"
IMAGE_NOT_FOUND = "image: file not found"
IMAGE_EMPTY = "image: empty file"
IMAGE_TOO_LARGE = "image: too large"          # payload image_error: "W×H px > limit px (ingest.max_image_pixels)"
IMAGE_UNDECODABLE = "image: cannot decode"
ITEM_REASONS = (MALFORMED_RECORD, MISSING_ITEM_ID, DUPLICATE_ITEM_ID, MISSING_MERCHANT_ID, EMPTY_TEXT, INVALID_PRICE,
                INVALID_UPDATED_AT, IMAGE_NO_PATH, IMAGE_OUTSIDE_ROOT, IMAGE_NOT_FOUND, IMAGE_EMPTY, IMAGE_TOO_LARGE,
                IMAGE_UNDECODABLE)

MISSING_USER_ID = "missing user_id"
MISSING_EVENT_ITEM_ID = "missing item_id"
MISSING_TS = "missing ts"
INVALID_TS = "invalid ts"
UNKNOWN_ITEM_ID = "unknown item_id"
EVENT_REASONS = (MALFORMED_RECORD, MISSING_USER_ID, MISSING_EVENT_ITEM_ID, MISSING_TS, INVALID_TS, INVALID_PRICE,
                 UNKNOWN_ITEM_ID)
DUPLICATE_USER_ID = "duplicate user_id"
UNKNOWN_USER_ID = "unknown user_id"
USER_REASONS = (MALFORMED_RECORD, MISSING_USER_ID, DUPLICATE_USER_ID)
CANDIDATE_REASONS = (MALFORMED_RECORD, MISSING_USER_ID, MISSING_EVENT_ITEM_ID, UNKNOWN_ITEM_ID, UNKNOWN_USER_ID)
SOURCES = ("items", "users", "events", "candidates")   # in the order they are ingested

# Row provenance, next to the export's own columns: the file, the place in it, the raw text of a
# malformed CSV line (null for a good record) and how many lines of the file the record spans.
_FILE, _POS, _CORRUPT, _SPAN = "__ingest_file", "__ingest_pos", "__ingest_corrupt", "__ingest_span"
_PROVENANCE = (_FILE, _POS, _CORRUPT, _SPAN)
# Files under a local images root that resolve outside it are excluded from the read by name;
# past this many the root is taken as misconfigured (a linked folder) rather than listed.
MAX_ESCAPING_FILES = 10_000
_ADDRESS = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")
_CONTENT = ("merchant_id", "category", "title", "description", "image", "price")


class IngestError(ValueError):
    """An export or mapping that cannot be ingested; one line that says what and what to do."""


@dataclass
class SourceCounts:
    rows_in: int = 0
    landed: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class IngestResult:
    run_id: str
    run_date: dt.date
    status: str
    items: SourceCounts | None = None
    users: SourceCounts | None = None
    events: SourceCounts | None = None
    candidates: SourceCounts | None = None
    timings: dict[str, float] = field(default_factory=dict)
    unmapped_profile: list[str] = field(default_factory=list)   # profile fields the users map leaves null

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in SOURCES:
            part = getattr(self, name)
            if part is not None:
                out.update({f"{name}_in": part.rows_in, f"{name}_landed": part.landed,
                            f"{name}_quarantined": part.quarantined})
        return out

    def summary(self) -> str:
        lines = [f"ingest {self.run_date.isoformat()} ({self.run_id}): {self.status}"]
        for name in SOURCES:
            part = getattr(self, name)
            if part is None:
                continue
            lines.append(f"  {name:<10} rows in {part.rows_in} = landed {part.landed} + quarantined {part.quarantined}")
            if name == "users" and self.unmapped_profile:
                lines.append(f"  users: profile field(s) {self.unmapped_profile} not mapped: null for every user "
                             "(unknown to the model); map them with --user-map FIELD=COLUMN")
            for reason, n in sorted(part.reasons.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"      {n:>8}  {reason}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Configuration: flags over config, paths, mapping resolution (all before any write)


def with_flags(cfg: IngestConfig, *, items_path: str | None = None, images_root: str | None = None,
               events_path: str | None = None, fmt: str | None = None, item_map: list[str] = (),
               event_map: list[str] = (), mode: str | None = None, users_path: str | None = None,
               candidates_path: str | None = None, user_map: list[str] = (),
               candidate_map: list[str] = ()) -> IngestConfig:
    """The config's ingest section with command-line flags applied (``--map field=source``).

    A flag ``--map category=`` (nothing after ``=``) unmaps a field that the config maps.
    """
    def merged(base: dict[str, str], pairs, flag: str) -> dict[str, str]:
        out = dict(base)
        for pair in pairs:
            target, sep, source = pair.partition("=")
            if not sep or not target.strip():
                raise IngestError(f"{flag} {pair!r}: expected FIELD=COLUMN (or FIELD=const:VALUE, or image=TEMPLATE)")
            if source.strip():
                out[target.strip()] = source.strip()
            else:
                out.pop(target.strip(), None)
        return out

    updates = {k: v for k, v in {"items_path": items_path, "images_root": images_root, "events_path": events_path,
                                 "users_path": users_path, "candidates_path": candidates_path,
                                 "format": fmt, "mode": mode}.items() if v is not None}
    updates["item_map"] = merged(cfg.item_map, item_map, "--map")
    updates["event_map"] = merged(cfg.event_map, event_map, "--event-map")
    updates["user_map"] = merged(cfg.user_map, user_map, "--user-map")
    updates["candidate_map"] = merged(cfg.candidate_map, candidate_map, "--candidate-map")
    try:
        return IngestConfig.model_validate({**cfg.model_dump(), **updates})
    except Exception as exc:  # pydantic's message names the field
        raise IngestError(f"ingest flags: {' '.join(str(exc).split())}") from None


def _resolve(path: str | None) -> str | None:
    """Relative paths in the config are relative to the project root, like every other path."""
    if path is None or "://" in path or Path(path).is_absolute():
        return path
    return str((project_root() / path).resolve())


def _hadoop_path(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, fs.makeQualified(jpath)


def _must_exist(spark: SparkSession, path: str, what: str, flag: str) -> str:
    fs, qualified = _hadoop_path(spark, path)
    if not fs.exists(qualified):
        raise IngestError(f"{what} not found: {path} (set {flag} or ingest.{flag.lstrip('-').replace('-', '_')})")
    return qualified.toString()


def _format_of(path: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    name = path.rstrip("/").lower()
    if name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
        return "csv"
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    raise IngestError(f"cannot tell the format of {path} from its name; pass --format csv or --format parquet")


def read_export(spark: SparkSession, cfg: IngestConfig, path: str, what: str, flag: str) -> DataFrame:
    """An export as a DataFrame, with provenance columns: ``_FILE``, ``_POS`` (each row's place in
    the file), ``_CORRUPT`` (the text of a malformed CSV line, else null) and ``_SPAN`` (lines spanned).

    CSV columns stay strings (keys keep their leading zeros). ``_pos`` orders rows as they
    appear in the files: within one file block all rows are in one partition, in file order.
    """
    _must_exist(spark, path, what, flag)
    fmt = _format_of(path, cfg.format)
    try:
        if fmt == "csv":
            return _split_malformed(_read_csv(spark, cfg, path))
        df = spark.read.format(fmt).load(path)
    except AnalysisException as problem:
        if "TIMESTAMP(NANOS" in str(problem):  # pandas 2 / pyarrow write nanoseconds by default
            raise IngestError(
                f"{what} {path} has a nanosecond timestamp column, which Spark cannot read; write the export with "
                "microsecond timestamps (pandas: to_parquet(..., coerce_timestamps='us', "
                "allow_truncated_timestamps=True))") from None
        raise
    return _with_provenance(df).select("*", F.lit(None).cast("string").alias(_CORRUPT), F.lit(1).alias(_SPAN))


def _with_provenance(df: DataFrame, part: Column | None = None) -> DataFrame:
    return df.select(
        "*", F.col("_metadata.file_path").alias(_FILE),
        F.struct(F.col("_metadata.file_path").alias("file"), F.col("_metadata.file_block_start").alias("block"),
                 F.monotonically_increasing_id().alias("row"), F.lit(0).alias("part")).alias(_POS),
    )


def _read_csv(spark: SparkSession, cfg: IngestConfig, path: str) -> DataFrame:
    """The CSV with Spark's PERMISSIVE mode keeping each malformed record's text in ``_CORRUPT``.

    Why this and not FAILFAST or a bare line count: a record whose column count is wrong (an
    extra field, or an unbalanced quote that ran on into the next lines and left the fields
    misaligned) must not land with shifted fields, and one bad line must not stop a catalogue's
    ingest; PERMISSIVE flags exactly those records and the rest parse as before. A line count
    alone cannot tell a swallowed line from a legitimate newline inside a quoted field, which
    ``multiLine`` (on by default: descriptions have newlines) allows. An export known to have
    no newlines in fields is safest with ``multiLine: "false"``: a quote can then never run past
    the end of its line.
    """
    options = {"inferSchema": "false", **cfg.csv_options}
    columns = spark.read.options(**options).csv(path).schema     # the header's names, all strings
    strict = {**options, "mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT}
    df = spark.read.options(**strict).schema(StructType([*columns.fields, StructField(_CORRUPT, StringType())])).csv(path)
    # Lines spanned: 1, plus the newlines kept inside quoted fields (multiLine).
    newlines = [F.coalesce(F.length(_col(df, c)) - F.length(F.regexp_replace(_col(df, c), "\n", "")), F.lit(0))
                for c in columns.fieldNames()]
    return _with_provenance(df).withColumn(_SPAN, sum(newlines, F.lit(1)))


def _split_malformed(df: DataFrame) -> DataFrame:
    """Each malformed record becomes one row per line of its text, with every field null.

    A record that swallowed the next lines (an unbalanced quote under multiLine) stands for as
    many rows of the file: each is quarantined on its own, so rows in counts the file's records.
    One select with posexplode, not a filter and a union: Spark refuses a CSV query that reads
    the corrupt-record column alone, and one scan is cheaper anyway.
    """
    corrupt = F.col(_CORRUPT)
    exports = [c for c in df.columns if c not in _PROVENANCE]
    lines = F.when(corrupt.isNull(), F.array(F.lit(None).cast("string"))).otherwise(F.split(corrupt, "\r?\n"))
    exploded = df.select(*[F.when(corrupt.isNull(), _col(df, c)).alias(c) for c in exports], F.col(_FILE), F.col(_POS),
                         F.col(_SPAN), F.posexplode(lines).alias("_part", "_line"))
    return exploded.select(
        *exports, _FILE,
        F.struct(F.col(f"{_POS}.file").alias("file"), F.col(f"{_POS}.block").alias("block"),
                 F.col(f"{_POS}.row").alias("row"), F.col("_part").alias("part")).alias(_POS),
        F.col("_line").alias(_CORRUPT), F.when(F.col("_line").isNull(), F.col(_SPAN)).otherwise(1).alias(_SPAN))


def _line_numbers(verdict: DataFrame, header_lines: int) -> DataFrame:
    """(_pos, line): each row's first line in its file, counting the header and the lines before it.

    One window over the file (a sort of (_pos, _span) per file), so it runs only when a malformed
    record is there to be named. Blank lines, which Spark skips, are not counted.
    """
    before = Window.partitionBy(F.col("_pos.file")).orderBy("_pos").rowsBetween(Window.unboundedPreceding, -1)
    return verdict.select("_pos", (F.coalesce(F.sum("_span").over(before), F.lit(0)) + header_lines + 1).alias("line"))


def _with_lines(verdict: DataFrame, bad: DataFrame, header_lines: int, counts: SourceCounts) -> DataFrame:
    """The quarantined rows with the file line of each malformed record (null for the other reasons)."""
    if not counts.reasons.get(MALFORMED_RECORD):
        return bad.withColumn("line", F.lit(None).cast("long"))
    lines = _line_numbers(verdict, header_lines)
    return (bad.join(lines, "_pos", "left")
            .withColumn("line", F.when(F.col("reason") == MALFORMED_RECORD, F.col("line")).cast("long")))


@dataclass(frozen=True)
class Source:
    """Where one contracted field comes from: kind is column, const or template."""
    kind: str
    value: str
    fields: tuple[str, ...] = ()


def resolve_mapping(mapping: dict[str, str], columns: list[str], *, what: str, path: str,
                    required: tuple[str, ...], templates: tuple[str, ...] = ()) -> dict[str, Source]:
    """Check a mapping against the export's columns; a miss is one line naming the column."""
    available = [c for c in columns if c not in _PROVENANCE]

    def missing(column: str, target: str) -> IngestError:
        return IngestError(f"{what} {path} has no column {column!r} (mapped to {target}); "
                           f"available columns: {', '.join(available)}")

    out: dict[str, Source] = {}
    for target, spec in mapping.items():
        if spec.startswith(CONST_PREFIX):
            out[target] = Source("const", spec[len(CONST_PREFIX):])
        elif target in templates and "{" in spec:
            try:
                names = tuple(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(spec) if f is not None))
            except ValueError as exc:
                raise IngestError(f"{what} mapping {target}={spec!r}: not a valid template ({exc})") from None
            if not names or any(not n or n.isdigit() or "." in n or "[" in n for n in names):
                raise IngestError(f"{what} mapping {target}={spec!r}: use {{column}} or {{column:format}} fields only")
            for name in names:
                if name not in available:
                    raise missing(name, f"{target} template {spec!r}")
            out[target] = Source("template", spec, names)
        else:
            if spec not in available:
                raise missing(spec, target)
            out[target] = Source("column", spec)
    absent = [t for t in required if t not in out]
    if absent:
        raise IngestError(f"{what} mapping lacks {absent}; map them with --map FIELD=COLUMN (or FIELD=const:VALUE)")
    return out


def _col(df: DataFrame, name: str) -> Column:
    return df[f"`{name.replace('`', '``')}`"]


def _raw(df: DataFrame, source: Source | None) -> Column:
    """A field's value as a trimmed string, null when blank or unmapped."""
    if source is None:
        return F.lit(None).cast("string")
    if source.kind == "const":
        value = F.lit(source.value)
    else:
        value = _col(df, source.value).cast("string")
    return F.nullif(F.trim(value), F.lit(""))


def _text(df: DataFrame, source: Source | None) -> Column:
    if source is None:
        return F.lit(None).cast("string")
    return F.lit(source.value) if source.kind == "const" else _col(df, source.value).cast("string")


def _template_udf(template: str):
    @F.pandas_udf("string")
    def render(values: pd.DataFrame) -> pd.Series:
        formatter = string.Formatter()

        def one(row) -> str | None:
            kwargs = {}
            for name, value in row.items():
                if value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == "":
                    return None
                kwargs[name] = str(value).strip()
            try:
                return formatter.vformat(template, (), kwargs)
            except (ValueError, TypeError):  # a numeric format spec ("{id:010d}") over a string value
                numbers = {}
                for k, v in kwargs.items():
                    try:
                        numbers[k] = int(v)
                    except ValueError:
                        try:
                            numbers[k] = float(v)
                        except ValueError:
                            numbers[k] = v
                try:
                    return formatter.vformat(template, (), numbers)
                except (ValueError, TypeError):
                    return None

        return pd.Series([one(row) for row in values.to_dict("records")], dtype=object)

    return render


def _image_value(df: DataFrame, source: Source) -> Column:
    if source.kind == "template":
        return _template_udf(source.value)(F.struct(*[_col(df, n).cast("string").alias(n) for n in source.fields]))
    return _raw(df, source)


_URI_HEAD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*:(?://[^/]*)?)(.*)$")   # "file:" or "s3a://bucket", then the path


def _relative_to_root(value: str | None, prefix: str) -> tuple[str | None, bool]:
    """(path relative to the root, True when it leaves the root) for one image value.

    Paths are normalised before the test, so ``img/../../etc/passwd`` or ``file:/root/../etc``
    is outside; absolute local paths and ``file:`` URIs take Hadoop's ``file:/...`` form first.
    """
    v = (value or "").strip()
    if not v:
        return None, False
    if v.startswith("file:///"):
        v = "file:/" + v[len("file:///"):]
    elif v.startswith("/"):
        v = "file:" + v
    head = _URI_HEAD.match(v) if (v.startswith("file:") or "://" in v) else None
    if head is None:                                    # relative to the root
        rel = posixpath.normpath(v)
        outside = rel == ".." or rel.startswith("../")
        return (None, True) if outside else (rel, False)
    normal = head.group(1) + posixpath.normpath(head.group(2) or "/")
    return (normal[len(prefix):], False) if normal.startswith(prefix) else (None, True)


def _relative_image_udf(root: str):
    """A UDF giving struct(rel, outside) for image values, against the qualified root."""
    prefix = root.rstrip("/") + "/"

    @F.pandas_udf("struct<rel:string,outside:boolean>")
    def relative(values: pd.Series) -> pd.DataFrame:
        return pd.DataFrame([_relative_to_root(v, prefix) for v in values], columns=["rel", "outside"])

    return relative


def _local_path(path: str) -> str:
    """``file:/a/b`` (Hadoop's form) or ``file:///a/b`` as the local path ``/a/b``."""
    return "/" + path[len("file:"):].lstrip("/")


def _escapes_udf(root: str):
    """A UDF: True for a listed file whose real path (symlinks followed) is not under the root's.

    It runs on executors, where the files are; the root is resolved there too.
    """
    local_root = _local_path(root)

    @F.pandas_udf("boolean")
    def escapes(paths: pd.Series) -> pd.Series:
        base = os.path.realpath(local_root).rstrip("/") + "/"
        return pd.Series([not os.path.realpath(_local_path(p)).startswith(base) for p in paths], dtype=bool)

    return escapes


def _unlisted_udf(root: str):
    """A UDF for paths the listing lacks: "empty" for a 0-byte file (Spark lists no empty file),
    "outside" for one that resolves outside the root, null when there is no such file."""
    local_root = _local_path(root)

    @F.pandas_udf("string")
    def unlisted(rels: pd.Series) -> pd.Series:
        base = os.path.realpath(local_root).rstrip("/") + "/"

        def one(rel: str | None) -> str | None:
            real = os.path.realpath(os.path.join(local_root, rel)) if rel else None
            if real is None or not os.path.isfile(real):
                return None
            return "outside" if not real.startswith(base) else ("empty" if os.path.getsize(real) == 0 else None)

        return pd.Series([one(r) for r in rels], dtype=object)

    return unlisted


@dataclass
class _ImageFiles:
    """The files under the images root: their listing (no bytes) and the files left out of any read."""
    root: str
    listing: DataFrame        # _rel, _length, _escapes
    excluded: list[str]       # _metadata.file_path of the files that resolve outside the root

    def unlisted(self, rel: Column) -> Column:
        """Why a path the listing lacks is not there: "empty", "outside" or null (no file); local roots only."""
        return _unlisted_udf(self.root)(rel) if self.root.startswith("file:") else F.lit(None).cast("string")

    def content(self, spark: SparkSession) -> DataFrame:
        """(_rel, _content) of every file under the root but the excluded ones, read by Spark's binaryFile.

        The exclusion is a filter on ``_metadata.file_path``, which Spark applies to the file
        listing before any file is opened: an excluded file's bytes are never read.
        """
        files = _binary_files(spark, self.root)
        if self.excluded:
            files = files.where(~F.col("_metadata.file_path").isin(self.excluded))
        return files.where(_under(self.root)).select(_rel_of(self.root), F.col("content").alias("_content"))


def _binary_files(spark: SparkSession, root: str) -> DataFrame:
    return spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(root)


def _rel_of(root: str) -> Column:
    return F.col("path").substr(F.lit(len(root.rstrip("/")) + 2), F.lit(1 << 30)).alias("_rel")


def _under(root: str) -> Column:
    return F.col("path").startswith(root.rstrip("/") + "/")


def list_images(spark: SparkSession, root: str) -> _ImageFiles:
    """The root's listing: path and length only (binaryFile opens no file when content is not selected).

    On a local root every file is resolved with its symlinks followed, on executors; the few that
    land outside the root are collected by name (at most MAX_ESCAPING_FILES) to be left out of
    every read. Object stores have no symlinks, and Hadoop does not follow HDFS ones by default.
    """
    files = _binary_files(spark, root).where(_under(root))
    listing = files.select(_rel_of(root), F.col("length").alias("_length"), F.col("path").alias("_path"),
                           F.col("_metadata.file_path").alias("_meta_path"))
    if not root.startswith("file:"):
        return _ImageFiles(root, listing.select("_rel", "_length", F.lit(False).alias("_escapes")), [])
    escaping = listing.where(_escapes_udf(root)(F.col("_path"))).select("_meta_path")
    excluded = [r[0] for r in escaping.limit(MAX_ESCAPING_FILES + 1).collect()]
    if len(excluded) > MAX_ESCAPING_FILES:
        raise IngestError(f"more than {MAX_ESCAPING_FILES} files under images root {root} resolve outside it "
                          "(symlinks to another folder?); pass the folder the links point to as --images-root")
    escapes = F.col("_meta_path").isin(excluded) if excluded else F.lit(False)
    return _ImageFiles(root, listing.select("_rel", "_length", escapes.alias("_escapes")), excluded)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header: Image.open reads the header, not the pixels."""
    from PIL import Image

    try:
        with warnings.catch_warnings():   # Pillow warns above ~89 Mpx; the caller tests the size itself
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.size
    except Image.DecompressionBombError:   # over twice Pillow's own limit: too large, whatever ours is
        raise
    except Exception:  # noqa: BLE001 - an unreadable header is the decoder's to name
        return None


def _image_check_udf(min_size: int | None, max_pixels: int):
    """A UDF giving struct(kind, detail) per image: kind null (fine), "too_large" or "undecodable"."""
    @F.pandas_udf("struct<kind:string,detail:string>")
    def check(content: pd.Series) -> pd.DataFrame:
        # The featurizer's decoder, so ingest accepts exactly the images scoring can decode.
        from camenn.images import ImageDecodeError, decode_image

        def one(data) -> tuple[str | None, str | None]:
            if data is None:
                return None, None
            try:
                size = _header_size(data)
            except Exception as exc:  # noqa: BLE001 - only Pillow's DecompressionBombError gets here
                return "too_large", f"{exc} (ingest.max_image_pixels {max_pixels})"[:300]
            if size is not None and size[0] * size[1] > max_pixels:   # refused before a decode allocates it
                return "too_large", f"{size[0]}×{size[1]} px > {max_pixels} px (ingest.max_image_pixels)"
            try:
                decode_image(data, min_size=min_size)
                return None, None
            except ImageDecodeError as exc:
                # Pillow names the in-memory stream with its address; drop it so reruns agree.
                return "undecodable", _ADDRESS.sub("", exc.reason)[:300]

        return pd.DataFrame([one(d) for d in content], columns=["kind", "detail"])

    return check


def _invalid_price(raw: Column, value: Column) -> Column:
    """A price given but not a finite number >= 0. Spark orders NaN above every number (NaN >= 0
    is true), so NaN is tested apart; "1e309" casts to infinity."""
    return raw.isNotNull() & (value.isNull() | F.isnan(value) | (value == F.lit(float("inf"))) | (value < 0))


# --------------------------------------------------------------------------------------------
# Writes


def replace_quarantine(spark: SparkSession, config: AppConfig, df: DataFrame, run_date: dt.date, source: str) -> None:
    """Replace this job's quarantine rows for (run_date, source); other jobs' rows stay."""
    path = tables.ensure_table(spark, config, "quarantine")
    condition = f"run_date = DATE'{run_date.isoformat()}' AND job = '{JOB}' AND source = '{source}'"
    (tables.conform(df, spark, "quarantine").write.format("delta").mode("overwrite")
        .option("replaceWhere", condition).save(path))


def _last_commit_metric(spark: SparkSession, path: str, names: tuple[str, ...]) -> int | None:
    from delta.tables import DeltaTable

    metrics = DeltaTable.forPath(spark, path).history(1).select("operationMetrics").first()[0] or {}
    for name in names:
        if name in metrics:
            return int(metrics[name])
    return None


def _write_items(spark: SparkSession, config: AppConfig, landed: DataFrame, mode: str, updated_mapped: bool) -> int | None:
    if mode == "overwrite":
        path = tables.overwrite_table(spark, config, "items", landed)
        return _last_commit_metric(spark, path, ("numOutputRows",))
    from delta.tables import DeltaTable

    path = tables.ensure_table(spark, config, "items")
    changed = " OR ".join(f"NOT (t.{c} <=> s.{c})" for c in _CONTENT + (("updated_at",) if updated_mapped else ()))
    (DeltaTable.forPath(spark, path).alias("t")
        .merge(tables.conform(landed, spark, "items").alias("s"), "t.item_id = s.item_id")
        .whenMatchedUpdateAll(condition=changed).whenNotMatchedInsertAll().execute())
    return _last_commit_metric(spark, path, ("numSourceRows",))


def _write_events(spark: SparkSession, config: AppConfig, landed: DataFrame, mode: str) -> int | None:
    if mode == "overwrite":
        path = tables.overwrite_table(spark, config, "events", landed)
        return _last_commit_metric(spark, path, ("numOutputRows",))
    from delta.tables import DeltaTable

    path = tables.ensure_table(spark, config, "events")
    same = " AND ".join(f"t.{c} <=> s.{c}" for c in ("user_id", "item_id", "ts", "event", "price"))
    (DeltaTable.forPath(spark, path).alias("t").merge(tables.conform(landed, spark, "events").alias("s"), same)
        .whenNotMatchedInsertAll().execute())
    return _last_commit_metric(spark, path, ("numSourceRows",))


def _first_reason(*rules: tuple[Column, str]) -> Column:
    out = None
    for condition, reason in rules:
        out = F.when(condition, F.lit(reason)) if out is None else out.when(condition, F.lit(reason))
    return out.otherwise(F.lit(None).cast("string"))


def _tally(verdict: DataFrame) -> SourceCounts:
    rows = verdict.groupBy("reason").count().collect()   # one row per distinct reason: small
    reasons = {r["reason"]: int(r["count"]) for r in rows if r["reason"] is not None}
    landed = next((int(r["count"]) for r in rows if r["reason"] is None), 0)
    quarantined = sum(reasons.values())
    return SourceCounts(rows_in=landed + quarantined, landed=landed, quarantined=quarantined, reasons=reasons)


def _check_written(what: str, written: int | None, counts: SourceCounts) -> None:
    if written is not None and written != counts.landed:
        raise RuntimeError(f"{what}: {counts.landed} rows passed validation but {written} were written; "
                          "did the export or images change during the run? rerun the ingest")


# --------------------------------------------------------------------------------------------
# Items


@dataclass
class _ItemsPlan:
    export: DataFrame
    mapping: dict[str, Source]
    images_root: str       # qualified (file:/..., s3a://..., hdfs://...)
    max_image_pixels: int
    header_lines: int      # lines before the first record (CSV header)


def plan_items(spark: SparkSession, cfg: IngestConfig) -> _ItemsPlan:
    items_path = _resolve(cfg.items_path)
    if not items_path:
        raise IngestError("no items export: pass --items-path (or set ingest.items_path)")
    if "image" not in cfg.item_map:
        raise IngestError("items mapping lacks image: pass --map image=COLUMN or --map 'image={key}.jpg' and --images-root")
    if not cfg.images_root:
        raise IngestError("no image folder: pass --images-root (image paths are relative to it, or URIs under it)")
    images_root = _must_exist(spark, _resolve(cfg.images_root), "images root", "--images-root")
    export = read_export(spark, cfg, items_path, "items export", "--items-path")
    mapping = resolve_mapping(cfg.item_map, export.columns, what="items export", path=items_path,
                              required=("item_id", "merchant_id", "image"), templates=("image",))
    if "title" not in mapping and "description" not in mapping:
        raise IngestError("items mapping has neither title nor description; map at least one (--map title=COLUMN)")
    return _ItemsPlan(export, mapping, images_root, cfg.max_image_pixels, _header_lines(cfg, items_path))


def _header_lines(cfg: IngestConfig, path: str) -> int:
    csv = _format_of(path, cfg.format) == "csv"
    return 1 if csv and str(cfg.csv_options.get("header", "false")).lower() == "true" else 0


def classify_items(spark: SparkSession, config: AppConfig, plan: _ItemsPlan, run_date: dt.date,
                   images: _ImageFiles) -> DataFrame:
    """Every export row with the contracted fields, its image path, and a reason (null = lands).

    Bytes are read only for rows that passed every other test, and only from files that stay
    inside the root; the pixel limit is tested on the header before the decoder runs.
    """
    df, m = plan.export, plan.mapping
    updated_src = m.get("updated_at")
    price_raw, updated_raw = _raw(df, m.get("price")), _raw(df, updated_src)
    image_value = _image_value(df, m["image"])
    rows = df.select(
        _raw(df, m["item_id"]).alias("item_id"), _raw(df, m["merchant_id"]).alias("merchant_id"),
        _raw(df, m.get("category")).alias("category"),
        _text(df, m.get("title")).alias("title"), _text(df, m.get("description")).alias("description"),
        price_raw.alias("price_raw"), price_raw.try_cast("double").alias("price"),
        updated_raw.alias("updated_at_raw"),
        (updated_raw.try_cast("timestamp") if updated_src else
         F.lit(dt.datetime.combine(run_date, dt.time())).cast("timestamp")).alias("updated_at"),
        image_value.alias("image_path"), F.col(_FILE).alias("source_file"), F.col(_POS).alias("_pos"),
        F.col(_CORRUPT).alias("_corrupt"), F.col(_SPAN).alias("_span"),
    )
    where = _relative_image_udf(plan.images_root)(F.col("image_path"))
    rows = rows.withColumn("_rel", where["rel"]).withColumn("_outside", where["outside"])
    # Duplicates: the latest updated_at wins, then the last row in export order (a later row
    # of an export corrects an earlier one); ties cannot remain, so the choice is deterministic.
    order = Window.partitionBy("item_id").orderBy(F.col("updated_at").desc_nulls_last(), F.col("_pos").desc())
    rows = rows.withColumn("_rank", F.when(F.col("item_id").isNotNull(), F.row_number().over(order)))
    blank = lambda c: F.coalesce(F.trim(F.col(c)), F.lit("")) == ""  # noqa: E731
    early = _first_reason(
        (F.col("_corrupt").isNotNull(), MALFORMED_RECORD),
        (F.col("item_id").isNull(), MISSING_ITEM_ID),
        (F.col("_rank") > 1, DUPLICATE_ITEM_ID),
        (F.col("merchant_id").isNull(), MISSING_MERCHANT_ID),
        (blank("title") & blank("description"), EMPTY_TEXT),
        (_invalid_price(F.col("price_raw"), F.col("price")), INVALID_PRICE),
        (F.col("updated_at_raw").isNotNull() & F.col("updated_at").isNull(), INVALID_UPDATED_AT),
        (F.col("image_path").isNull(), IMAGE_NO_PATH),
        (F.col("_outside"), IMAGE_OUTSIDE_ROOT),
    )
    # The listing answers the questions that need no bytes: where the file really is, whether it exists, its size.
    listed = rows.withColumn("_early", early).join(images.listing, on="_rel", how="left")
    unlisted = F.when(F.col("_early").isNull() & F.col("_length").isNull(), images.unlisted(F.col("_rel")))
    listed = listed.withColumn("_unlisted", unlisted)
    before_bytes = (F.when(F.col("_early").isNotNull(), F.col("_early"))
                    .when(F.col("_escapes") | (F.col("_unlisted") == "outside"), F.lit(IMAGE_OUTSIDE_ROOT))
                    .when((F.col("_length") == 0) | (F.col("_unlisted") == "empty"), F.lit(IMAGE_EMPTY))
                    .when(F.col("_length").isNull(), F.lit(IMAGE_NOT_FOUND)))
    joined = listed.withColumn("_before", before_bytes).join(images.content(spark), on="_rel", how="left")
    featurizer = config.featurizer
    check = _image_check_udf(featurizer.patch_grid * featurizer.patch_size, plan.max_image_pixels)
    # Only rows that are still good are looked at; the others pass null (the UDF skips nulls).
    joined = joined.withColumn("_check", check(F.when(F.col("_before").isNull(), F.col("_content"))))
    reason = (F.when(F.col("_before").isNotNull(), F.col("_before"))
              .when(F.col("_check.kind") == "too_large", F.lit(IMAGE_TOO_LARGE))
              .when(F.col("_check.kind") == "undecodable", F.lit(IMAGE_UNDECODABLE)))
    return (joined.withColumn("reason", reason).withColumn("image_error", F.col("_check.detail"))
            .drop("_content", "_early", "_rank", "_outside", "_escapes", "_length", "_unlisted", "_before", "_check"))


def ingest_items(spark: SparkSession, config: AppConfig, cfg: IngestConfig, plan: _ItemsPlan,
                 run_date: dt.date) -> SourceCounts:
    images = list_images(spark, plan.images_root)
    verdict = classify_items(spark, config, plan, run_date, images).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = _tally(verdict)
        # Bytes are read again for the landing rows only (decoding happened once, in the tally).
        good = verdict.where(F.col("reason").isNull()).drop("image_error")
        landed = good.join(images.content(spark), on="_rel", how="inner").withColumnRenamed("_content", "image")
        written = _write_items(spark, config, landed, cfg.mode, "updated_at" in plan.mapping)
        _check_written("items", written, counts)
        bad = _with_lines(verdict, verdict.where(F.col("reason").isNotNull()), plan.header_lines, counts).select(
            "item_id", "merchant_id", "category", "title", "description", F.col("price_raw").alias("price"),
            F.col("updated_at_raw").alias("updated_at"), F.col("image_path").alias("image"), "image_error",
            "source_file", "line", F.col("_corrupt").substr(1, 1000).alias("record"), "reason")
        quarantine = tables.quarantine_rows(bad, run_date=run_date, job=JOB, source="items", key_col="item_id")
        replace_quarantine(spark, config, quarantine, run_date, "items")
        return counts
    finally:
        verdict.unpersist()


# --------------------------------------------------------------------------------------------
# Events


def plan_events(spark: SparkSession, cfg: IngestConfig) -> tuple[DataFrame, dict[str, Source], str]:
    events_path = _resolve(cfg.events_path)
    export = read_export(spark, cfg, events_path, "events export", "--events-path")
    mapping = resolve_mapping(cfg.event_map, export.columns, what="events export", path=events_path,
                              required=("user_id", "item_id", "ts"))
    return export, mapping, events_path


def classify_events(spark: SparkSession, config: AppConfig, cfg: IngestConfig, export: DataFrame,
                    mapping: dict[str, Source]) -> DataFrame:
    df, m = export, mapping
    ts_raw, price_raw = _raw(df, m["ts"]), _raw(df, m.get("price"))
    if m["ts"].kind == "column" and cfg.ts_format is None:
        ts = _col(df, m["ts"].value).try_cast("timestamp")
    elif cfg.ts_format:
        ts = F.try_to_timestamp(ts_raw, F.lit(cfg.ts_format))
    else:
        ts = ts_raw.try_cast("timestamp")
    rows = df.select(
        _raw(df, m["user_id"]).alias("user_id"), _raw(df, m["item_id"]).alias("item_id"),
        ts_raw.alias("ts_raw"), ts.alias("ts"), F.lit("purchase").alias("event"),
        price_raw.alias("price_raw"), price_raw.try_cast("double").alias("price"), F.col(_FILE).alias("source_file"),
        F.col(_POS).alias("_pos"), F.col(_CORRUPT).alias("_corrupt"), F.col(_SPAN).alias("_span"),
    )
    known = F.lit(True)
    if cfg.known_items_only and tables.is_delta(spark, config.table("items")):
        item_ids = tables.read_table(spark, config, "items").select(F.col("item_id").alias("_known"))
        rows = rows.join(item_ids, rows["item_id"] == item_ids["_known"], "left")
        known = F.col("_known").isNotNull()
    reason = _first_reason(
        (F.col("_corrupt").isNotNull(), MALFORMED_RECORD),
        (F.col("user_id").isNull(), MISSING_USER_ID),
        (F.col("item_id").isNull(), MISSING_EVENT_ITEM_ID),
        (F.col("ts_raw").isNull(), MISSING_TS),
        (F.col("ts").isNull(), INVALID_TS),
        (_invalid_price(F.col("price_raw"), F.col("price")), INVALID_PRICE),
        (~known, UNKNOWN_ITEM_ID),
    )
    rows = rows.withColumn("reason", reason)
    return rows.drop("_known") if "_known" in rows.columns else rows


def ingest_events(spark: SparkSession, config: AppConfig, cfg: IngestConfig, export: DataFrame,
                  mapping: dict[str, Source], run_date: dt.date) -> SourceCounts:
    verdict = classify_events(spark, config, cfg, export, mapping).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = _tally(verdict)
        written = _write_events(spark, config, verdict.where(F.col("reason").isNull()), cfg.mode)
        _check_written("events", written, counts)
        # Events have no key of their own: the quarantine key is user|item|ts as exported.
        rejected = verdict.where(F.col("reason").isNotNull())
        bad = _with_lines(verdict, rejected, _header_lines(cfg, cfg.events_path), counts).select(
            F.concat_ws("|", F.coalesce("user_id", F.lit("")), F.coalesce("item_id", F.lit("")),
                        F.coalesce("ts_raw", F.lit(""))).alias("_key"),
            "user_id", "item_id", F.col("ts_raw").alias("ts"), F.col("price_raw").alias("price"), "source_file",
            "line", F.col("_corrupt").substr(1, 1000).alias("record"), "reason")
        quarantine = tables.quarantine_rows(bad, run_date=run_date, job=JOB, source="events", key_col="_key",
                                            payload_cols=["user_id", "item_id", "ts", "price", "source_file", "line", "record"])
        replace_quarantine(spark, config, quarantine, run_date, "events")
        return counts
    finally:
        verdict.unpersist()


# --------------------------------------------------------------------------------------------
# Users and candidates: keyed rows, no images; the same mapping, quarantine and provenance


def plan_keyed(spark: SparkSession, cfg: IngestConfig, what: str,
               profile_fields: tuple[str, ...]) -> tuple[DataFrame, dict[str, Source], str]:
    """``what`` = "users" or "candidates": its export, resolved mapping and path (checked before any write).

    Users map onto user_id and ``profile_fields`` (data.profile_fields of the config)."""
    if what == "users" and unknown_user_fields(cfg.user_map, profile_fields):
        raise IngestError(f"--user-map / ingest.user_map: unknown field(s) {unknown_user_fields(cfg.user_map, profile_fields)}; "
                          f"known: user_id and the config's data.profile_fields {list(profile_fields)}")
    path = _resolve(getattr(cfg, f"{what}_path"))
    export = read_export(spark, cfg, path, f"{what} export", f"--{what}-path")
    mapping = resolve_mapping(profile_map(cfg.user_map, profile_fields) if what == "users" else cfg.candidate_map,
                              export.columns,
                              what=f"{what} export", path=path,
                              required=("user_id",) if what == "users" else ("user_id", "item_id"))
    return export, mapping, path


def _known(spark: SparkSession, config: AppConfig, rows: DataFrame, name: str, key: str) -> tuple[DataFrame, Column]:
    """``rows`` joined with ``name``'s keys, and the test that a row's ``key`` is there (true without the table)."""
    if not tables.is_delta(spark, config.table(name)):
        return rows, F.lit(True)
    keys = tables.read_table(spark, config, name).select(F.col(key).alias(f"_known_{key}")).distinct()
    return rows.join(keys, rows[key] == keys[f"_known_{key}"], "left"), F.col(f"_known_{key}").isNotNull()


def classify_users(export: DataFrame, m: dict[str, Source], profile_fields: tuple[str, ...]) -> DataFrame:
    """Profile rows (user_id + ``profile_fields``) with their quarantine reason; every copy of a duplicated
    user_id after the last one in the export is quarantined (the last row wins, as a later line of an
    append-only export would)."""
    df = export
    rows = df.select(_raw(df, m["user_id"]).alias("user_id"),
                     *(_raw(df, m.get(f)).alias(f) for f in profile_fields),
                     F.col(_FILE).alias("source_file"), F.col(_POS).alias("_pos"), F.col(_CORRUPT).alias("_corrupt"),
                     F.col(_SPAN).alias("_span"))
    rank = F.row_number().over(Window.partitionBy("user_id").orderBy(F.col("_pos").desc()))
    rows = rows.withColumn("_rank", F.when(F.col("user_id").isNotNull(), rank))
    return rows.withColumn("reason", _first_reason(
        (F.col("_corrupt").isNotNull(), MALFORMED_RECORD),
        (F.col("user_id").isNull(), MISSING_USER_ID),
        (F.col("_rank") > 1, DUPLICATE_USER_ID))).drop("_rank")


def classify_candidates(spark: SparkSession, config: AppConfig, cfg: IngestConfig, export: DataFrame,
                        m: dict[str, Source]) -> DataFrame:
    """(user, item) rows with their reason: an item or user the tables do not hold cannot be scored."""
    df = export
    rows = df.select(_raw(df, m["user_id"]).alias("user_id"), _raw(df, m["item_id"]).alias("item_id"),
                     F.col(_FILE).alias("source_file"), F.col(_POS).alias("_pos"), F.col(_CORRUPT).alias("_corrupt"),
                     F.col(_SPAN).alias("_span"))
    known_item = known_user = F.lit(True)
    if cfg.known_items_only:
        rows, known_item = _known(spark, config, rows, "items", "item_id")
        rows, known_user = _known(spark, config, rows, "users", "user_id")
    reason = _first_reason(
        (F.col("_corrupt").isNotNull(), MALFORMED_RECORD),
        (F.col("user_id").isNull(), MISSING_USER_ID),
        (F.col("item_id").isNull(), MISSING_EVENT_ITEM_ID),
        (~known_item, UNKNOWN_ITEM_ID),
        (~known_user, UNKNOWN_USER_ID))
    return rows.withColumn("reason", reason).drop(*(c for c in rows.columns if c.startswith("_known_")))


def ingest_keyed(spark: SparkSession, config: AppConfig, cfg: IngestConfig, what: str, export: DataFrame,
                 mapping: dict[str, Source], run_date: dt.date) -> SourceCounts:
    """Users (overwrite, or merge on user_id) or the run date's candidates (that date's rows replaced)."""
    if what == "users":
        verdict = classify_users(export, mapping, config.data.profile_fields)
    else:
        verdict = classify_candidates(spark, config, cfg, export, mapping)
    verdict = verdict.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = _tally(verdict)
        landed = verdict.where(F.col("reason").isNull())
        if what == "users" and cfg.mode == "merge":
            from delta.tables import DeltaTable

            path = tables.ensure_table(spark, config, "users")
            (DeltaTable.forPath(spark, path).alias("t").merge(tables.conform(landed, spark, "users", config).alias("s"),
                                                              "t.user_id = s.user_id")
                .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
            written = _last_commit_metric(spark, path, ("numSourceRows",))
        elif what == "users":
            written = _last_commit_metric(spark, tables.overwrite_table(spark, config, "users", landed), ("numOutputRows",))
        else:   # one night's candidates: a rerun of the date replaces them, other dates stay
            rows = landed.select(F.lit(run_date).alias("run_date"), "user_id", "item_id").dropDuplicates(["user_id", "item_id"])
            written = _last_commit_metric(spark, tables.replace_run_date(spark, config, "candidates", rows, run_date),
                                          ("numOutputRows",))
            written = None if written is None else written + (counts.landed - rows.count())   # exact duplicates land once
        _check_written(what, written, counts)
        rejected = verdict.where(F.col("reason").isNotNull())
        fields = ["user_id", *(config.data.profile_fields if what == "users" else ["item_id"])]
        bad = _with_lines(verdict, rejected, _header_lines(cfg, getattr(cfg, f"{what}_path")), counts).select(
            F.concat_ws("|", *(F.coalesce(f, F.lit("")) for f in fields[:1 if what == "users" else 2])).alias("_key"),
            *fields, "source_file", "line", F.col("_corrupt").substr(1, 1000).alias("record"), "reason")
        quarantine = tables.quarantine_rows(bad, run_date=run_date, job=JOB, source=what, key_col="_key",
                                            payload_cols=[*fields, "source_file", "line", "record"])
        replace_quarantine(spark, config, quarantine, run_date, what)
        return counts
    finally:
        verdict.unpersist()


# --------------------------------------------------------------------------------------------
# The job


def run_ingest(spark: SparkSession, config: AppConfig, cfg: IngestConfig | None = None,
               run_date: dt.date | None = None) -> IngestResult:
    """Ingest the items export (if any) then the events export (if any); append one `runs` row.

    Every check of paths and mappings happens before the first write: a bad flag or a mapped
    column the export lacks raises :class:`IngestError` and leaves every table as it was.
    """
    cfg = cfg or config.ingest
    run_date = run_date or dt.datetime.now(dt.UTC).date()
    if not (cfg.items_path or cfg.events_path or cfg.users_path or cfg.candidates_path):
        raise IngestError("nothing to ingest: pass --items-path, --events-path, --users-path and/or --candidates-path")
    items_plan = plan_items(spark, cfg) if cfg.items_path else None
    events_plan = plan_events(spark, cfg) if cfg.events_path else None
    keyed_plans = {what: plan_keyed(spark, cfg, what, config.data.profile_fields)
                   for what in ("users", "candidates") if getattr(cfg, f"{what}_path")}

    run_id = f"{JOB}-{run_date.isoformat()}-{uuid.uuid4().hex[:8]}"
    result = IngestResult(run_id=run_id, run_date=run_date, status="running")
    started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    t0 = time.perf_counter()
    error: Exception | None = None
    try:
        if items_plan is not None:
            t = time.perf_counter()
            result.items = ingest_items(spark, config, cfg, items_plan, run_date)
            result.timings["items_s"] = time.perf_counter() - t
        if "users" in keyed_plans:   # before candidates, which are checked against the users
            result.unmapped_profile = [f for f in config.data.profile_fields if f not in keyed_plans["users"][1]]
            t = time.perf_counter()
            result.users = ingest_keyed(spark, config, cfg, "users", *keyed_plans["users"][:2], run_date)
            result.timings["users_s"] = time.perf_counter() - t
        if events_plan is not None:
            t = time.perf_counter()
            result.events = ingest_events(spark, config, cfg, events_plan[0], events_plan[1], run_date)
            result.timings["events_s"] = time.perf_counter() - t
        if "candidates" in keyed_plans:
            t = time.perf_counter()
            result.candidates = ingest_keyed(spark, config, cfg, "candidates", *keyed_plans["candidates"][:2], run_date)
            result.timings["candidates_s"] = time.perf_counter() - t
        result.status = "ok"
    except Exception as exc:  # record the failed run, then let the caller see the error
        result.status, error = "failed", exc
    result.timings["total_s"] = time.perf_counter() - t0
    details = {
        "items_path": cfg.items_path, "images_root": cfg.images_root, "events_path": cfg.events_path,
        "users_path": cfg.users_path, "candidates_path": cfg.candidates_path,
        "mode": cfg.mode, "item_map": cfg.item_map if cfg.items_path else None,
        "event_map": cfg.event_map if cfg.events_path else None,
        "user_map": cfg.user_map if cfg.users_path else None,
        "unmapped_profile_fields": result.unmapped_profile or None,
        "candidate_map": cfg.candidate_map if cfg.candidates_path else None,
        "reasons": {name: getattr(result, name).reasons for name in SOURCES if getattr(result, name)},
    }
    if error is not None:
        details["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    finished = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    tables.append_rows(spark, config, "runs", tables.runs_row(
        spark, run_id=run_id, job=JOB, run_date=run_date, model_version=None, started_at=started,
        finished_at=finished, status=result.status, counts=result.counts(), timings=result.timings,
        details=json.loads(json.dumps(details, default=str))))
    if error is not None:
        raise error
    return result
