"""URL + caption tables (LAION parquet, CC12M tsv, DataComp metadata, jsonl) as Arrow tables.

pyarrow reads every format (gzip decompressed by file extension), so no reader is hand-written.
Tables may be local paths or fsspec URLs (gs://, s3://, memory:// ...): remote ones are read
through file objects of curate.fs.
Columns are renamed to img2dataset's names (``url``, ``caption``); every other column is carried
into each sample's json and the shard parquet, renamed ``input_NAME`` where it would overwrite a
column img2dataset writes itself (DataComp's ``sha256``, ``original_width`` ...).
A missing caption (null, NaN) stays null; a caption column that is not text is refused (_caption_text).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from curate import fs
from curate.io import is_shard_name

FORMATS = ("parquet", "csv", "csv.gz", "tsv", "tsv.gz", "jsonl", "jsonl.gz")
# Written by img2dataset's Downloader for every row; an input column of that name would be lost.
RESERVED = frozenset({"key", "caption", "url", "width", "height", "original_width", "original_height",
                      "status", "error_message", "exif", "md5", "sha256", "sha512", "reason"})


class TableError(ValueError):
    """A table that cannot be ingested; the message is one line for the user."""


def table_format(path: str) -> str | None:
    name = path.lower()
    return next((f for f in sorted(FORMATS, key=len, reverse=True) if name.endswith("." + f)), None)


def list_tables(spec: str) -> list[str]:
    """A table file, or a folder of them (sorted by name), local or URL. Raises TableError when there is none."""
    if fs.isdir(spec):
        paths = sorted(p for p in fs.glob(fs.join(spec, "*")) if table_format(p) and fs.isfile(p))
    else:
        paths = [spec] if fs.isfile(spec) and table_format(spec) else []
    if not paths:
        raise TableError(f"no URL table ({', '.join(FORMATS)}) found at {spec!r}")
    return [fs.abspath(p) for p in paths]


def is_url_table(spec: str | None) -> bool:
    """True when ``spec`` names URL tables rather than raw shards (a folder holding .tar, .tar.gz or
    .tgz files is shards, even with img2dataset's NNNNN.parquet beside them)."""
    if spec is None:
        return False
    if fs.isdir(spec):
        names = fs.glob(fs.join(spec, "*"))
        return not any(is_shard_name(p) for p in names) and any(table_format(p) for p in names)
    return table_format(spec) is not None


@contextlib.contextmanager
def _source(path: str, fmt: str):
    """What pyarrow reads: a local path as is (it decompresses .gz by the name); a URL as a file
    object of curate.fs, decompressed here."""
    if fs.is_local(path):
        yield path
        return
    with fs.open(path, "rb") as f:
        yield pa.input_stream(f, compression="gzip") if fmt.endswith(".gz") else f


def _first_line(path: str, fmt: str) -> str:
    with fs.open(path, "rb") as raw:
        binary = gzip.GzipFile(fileobj=raw) if fmt.endswith(".gz") else raw
        with io.TextIOWrapper(binary, encoding="utf-8") as f:
            return f.readline()


def column_names(path: str) -> list[str]:
    """The columns of a table file, read from its header only."""
    fmt = table_format(path)
    try:
        if fmt == "parquet":
            with _source(path, fmt) as src:
                return pq.read_schema(src).names
        if fmt.startswith(("csv", "tsv")):
            with _source(path, fmt) as src:
                return pa_csv.open_csv(src, parse_options=_csv_parse(fmt)).schema.names
        first = _first_line(path, fmt)
        row = json.loads(first) if first.strip() else {}
        if not isinstance(row, dict):
            raise TableError(f"{path}: the first line is not a JSON object")
        return list(row)
    except (OSError, pa.ArrowInvalid, ValueError) as e:
        if isinstance(e, TableError):
            raise
        raise _read_error(path, e) from None


def _read_error(path: str, e: Exception) -> TableError:
    """pyarrow's or Python's reading error as one line naming the table."""
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "invalid UTF8" in message or isinstance(e, UnicodeError):
        message = f"not UTF-8 text ({message}); re-encode the file as UTF-8"
    return TableError(f"cannot read {path}: {message}")


def _csv_parse(fmt: str):
    # Captions hold quotes and newlines; CC12M's tsv has no header quoting rules beyond these.
    return pa_csv.ParseOptions(delimiter="\t" if fmt.startswith("tsv") else ",", newlines_in_values=True)


def check_columns(path: str, url_col: str, caption_col: str | None) -> None:
    names = column_names(path)
    missing = [c for c in (url_col, caption_col) if c is not None and c not in names]
    if missing:
        raise TableError(f"{path}: no column {', '.join(map(repr, missing))}; its columns are: "
                         f"{', '.join(names[:30])}{' ...' if len(names) > 30 else ''} "
                         f"(set ingest.url_col / ingest.caption_col)")


def _json_safe(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """A column as JSON can hold it (into KEY.json): timestamps, dates and decimals as strings,
    binary dropped (None)."""
    t = column.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return None
    if pa.types.is_temporal(t) or pa.types.is_decimal(t) or pa.types.is_dictionary(t):
        return column.cast(pa.string())
    return column


def _caption_text(path: str, name: str, col: pa.ChunkedArray) -> pa.ChunkedArray:
    """The caption column as strings. Missing captions (null, or NaN in a float column) stay null:
    the row is downloaded and its sample gets an empty KEY.txt, as img2dataset writes a missing
    caption. Any other non-text value (a number, a boolean, a list ...) is refused for the whole
    table: the column types of parquet, csv and jsonl are per column (pyarrow refuses a jsonl column
    whose type changes), so a column holding numbers is the wrong column, not odd rows."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    if pa.types.is_floating(col.type):
        col = pa.chunked_array([pc.if_else(pc.is_nan(c), pa.scalar(None, c.type), c) for c in col.chunks],
                               col.type)
    values = col.drop_null()
    if len(values):
        first = pc.index(col, values[0]).as_py()
        raise TableError(f"{path}: caption column {name!r} holds {col.type} values, not text (row {first}: "
                         f"{values[0].as_py()!r}); store captions as strings, or set ingest.caption_col "
                         f"(null = no caption)")
    return pa.chunked_array([pa.nulls(len(c), pa.string()) for c in col.chunks], pa.string())


def _not_utf8(path: str, table: pa.Table) -> None:
    """A csv/tsv column pyarrow could only read as binary holds bytes that are not UTF-8."""
    for name in table.column_names:
        if pa.types.is_binary(table.column(name).type) or pa.types.is_large_binary(table.column(name).type):
            raise TableError(f"{path}: column {name!r} is not UTF-8 text (re-encode the file as UTF-8)")


def read_table(path: str, url_col: str, caption_col: str | None, check_only: bool = False) -> pa.Table:
    """One table file -> columns url, caption (when configured) and the carried others, in file order.

    Raises TableError (one line) for a table whose contents cannot be ingested: not parseable, not
    UTF-8, a jsonl column whose type changes, a caption column that is not text. ``check_only``:
    only what those checks need (a parquet file's url and caption columns; a text table whole).
    """
    check_columns(path, url_col, caption_col)
    fmt = table_format(path)
    text = [c for c in (url_col, caption_col) if c]
    try:
        with _source(path, fmt) as src:
            if fmt == "parquet":
                table = pq.read_table(src, columns=text if check_only else None)
            elif fmt.startswith(("csv", "tsv")):
                table = pa_csv.read_csv(src, parse_options=_csv_parse(fmt), convert_options=pa_csv.ConvertOptions(
                    column_types={c: pa.string() for c in text}, strings_can_be_null=True))
                _not_utf8(path, table)
            else:
                table = pa_json.read_json(src)
    except (OSError, pa.ArrowInvalid, ValueError) as e:
        if isinstance(e, TableError):
            raise
        raise _read_error(path, e) from None
    columns, names = [], []
    for name in table.column_names:
        col = table.column(name)
        if name == url_col:
            # A URL that is not a string (a number ...) becomes its text: bad_url for that row.
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                col = col.cast(pa.string()) if not pa.types.is_nested(col.type) else pa.array(
                    [None] * len(table), pa.string())
            names.append("url")
        elif name == caption_col:
            col = _caption_text(path, name, col)
            names.append("caption")
        else:
            col = _json_safe(col)
            if col is None:
                continue
            names.append(f"input_{name}" if name in RESERVED else name)
        columns.append(col)
    return pa.Table.from_arrays(columns, names=names)
