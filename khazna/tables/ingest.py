"""Turn an uploaded table (CSV, TSV, XLSX, JSON, NDJSON, Parquet) into a typed Parquet file.

Everything streams through DuckDB with a memory limit and a spill folder inside the job's
work folder, so a file larger than memory converts in bounded RSS. The source is only read.

CSV types come from the whole file, not a sample. Every value is read as text and a type is
kept when its failures are a small minority: a stray "N/A" deep in a numeric column becomes
null and a `Problem` with its line, instead of aborting or turning the column into text.
A census of every candidate type over every value would cost more than the conversion
itself, so it is spent only where it can change the answer:

1. A census of the first SAMPLE_ROWS rows proposes a type per column. When the file is no
   longer than that, the sample is the whole file and the answer is exact.
2. Columns typed with no failure in the sample are converted optimistically: the COPY raises
   on the first value that does not fit, so a COPY that goes through proves there is none.
   If it raises, those columns get the census over the whole file and the COPY runs again.
3. Columns with failures already in the sample, or no values in it, get the census over the
   whole file before the COPY.
4. Columns that are text in the sample are usually text for good: a type failing on more
   than FAILURE_PERCENT of a file's rows cannot fit, and the sample alone shows that for
   files up to about 100 times its size. Beyond, those columns get a census of the first
   TEXT_SAMPLE_ROWS rows, run beside the COPY (cheap: their values fail the rules' first
   tests), which shows it for files 100 times that size, and past that a census of the
   whole file. The COPY runs again only if one of them turns out typed.

The sample is small because the census holds the COPY back, and a misfit it misses costs
little: one among the first rows stops the optimistic COPY at its start.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import math
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from itertools import count
from pathlib import Path, PurePosixPath
from typing import Any

import charset_normalizer
import duckdb
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import python_calamine

from khazna.checksums import GrowingFileHash, file_sha256

TABLE_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".xlsx": "xlsx",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".parquet": "parquet",
}
# Suffixes that end like a table format but name something else.
_NOT_TABLES = (".stac.json",)

MAX_PROBLEMS = 1000
# A type is kept while at most this share of a column's non-empty values fail it.
FAILURE_PERCENT = 1
SAMPLE_ROWS = 10_000
TEXT_SAMPLE_ROWS = 100_000
_CHUNK = 1 << 20  # 1 MiB: transcoding and scanning buffers
_DETECT_BYTES = 4 << 20  # what charset-normalizer looks at
_HEAD = 64 << 10  # what the binary check looks at
# DuckDB's default of 2 MB is short for CSV files carrying geometries as WKT. Its read
# buffers grow with this (16 lines' worth each by default), so they are set to two lines:
# within a 512 MB limit, 16 MB lines with default buffers run out of memory.
_MAX_LINE = 8 << 20
_READ_BUFFER = 2 * _MAX_LINE
_LINE_OPTIONS = (f"max_line_size={_MAX_LINE}", f"buffer_size={_READ_BUFFER}")
_SHOWN_VALUE = 200  # characters of a value or line quoted in a problem or a profile
# How the Parquet is written. DuckDB's writer builds a dictionary of each column in each row
# group (122,880 rows) until it holds DICTIONARY_SIZE_LIMIT values, and with DuckDB 2.0's
# default it builds one of all 10,000 prices of bench/tables.py's amount column before
# writing it plain anyway. A dictionary of more than a twentieth of a row group's values
# rarely pays: at 6,144 the benchmark's file keeps its encodings and its size (189 MB, 2 KB
# more), and writing it costs a fifth less CPU (about 2.0 against 2.5 s on 5M rows).
PARQUET_OPTIONS = "FORMAT parquet, DICTIONARY_SIZE_LIMIT 6144"
# The Parquet is flushed to disk in steps of this size as DuckDB writes it (by the thread
# that hashes it): storing it then waits for the last step only, not for the whole file
# (0.1-0.25 s for the benchmark's 189 MB).
_FLUSH_EVERY = 32 << 20
_GUARD = "khazna-guard"  # marks the optimistic COPY's deliberate error

# Candidate types in order of preference when two fit equally well.
CANDIDATES = ("BOOLEAN", "BIGINT", "DOUBLE", "DATE", "TIMESTAMP")
VARCHAR = "VARCHAR"


@dataclass(frozen=True)
class IngestOptions:
    encoding: str | None = None  # declared, e.g. "windows-1256", "latin-1", "utf-8"
    delimiter: str | None = None  # declared; else sniffed
    header: bool | None = None  # declared; else sniffed
    sheet: str | None = None  # XLSX sheet name; default first sheet


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # one of "BIGINT", "DOUBLE", "BOOLEAN", "DATE", "TIMESTAMP", "VARCHAR"


@dataclass(frozen=True)
class Problem:
    kind: str  # "bad_value" (value became null) | "ragged_row" (row skipped)
    line: int | None  # 1-based physical line in the file (the header is line 1)
    column: str | None
    value: str | None
    message: str


@dataclass(frozen=True)
class IngestResult:
    parquet: Path
    rows: int
    columns: list[Column]
    problems: list[Problem]  # at most MAX_PROBLEMS, in file order...
    problem_count: int  # ...but all counted
    encoding: str | None  # detected or declared text encoding (None for parquet/xlsx)
    delimiter: str | None
    parquet_sha256: str | None = None


@dataclass(frozen=True)
class Arriving:
    """A source whose bytes are still arriving (an upload in progress, see early.py).

    DuckDB reads it as ``url`` through ``filesystem``, whose reads wait for their bytes;
    ``size`` is its final size, and ``wait`` returns once every byte is on disk (it raises
    if they never will be). Python reads the file at the path given to ``ingest``: its
    head is there before ingest starts, and the rest is waited for where it is read.
    """

    url: str
    filesystem: Any
    size: int
    wait: Callable[[], None]


class NotATable(Exception):
    """The file cannot be read as a table; the message says why, for the dataset page."""


def is_table(file_name: str) -> bool:
    return _kind(file_name) is not None


def _kind(file_name: str) -> str | None:
    lower = file_name.lower()
    if lower.endswith(_NOT_TABLES):
        return None
    return TABLE_FORMATS.get(PurePosixPath(lower).suffix)


def ingest(
    source: Path,
    file_name: str,
    work_dir: Path,
    options: IngestOptions = IngestOptions(),
    *,
    memory_limit: str = "512MB",
    threads: int = 2,
    arriving: Arriving | None = None,
    on_connect: Callable[[Any], None] | None = None,
) -> IngestResult:
    """Convert ``source`` (named ``file_name``) to ``work_dir/table.parquet``.

    ``arriving``: the source is a CSV still being written (see Arriving). ``on_connect``
    is given the DuckDB connection, so that another thread may interrupt it.
    """
    kind = _kind(file_name)
    if kind is None:
        raise NotATable(f"not a table format: {file_name}")
    if arriving is not None and kind != "csv":
        raise ValueError("only CSV files are read while they arrive")
    work_dir.mkdir(parents=True, exist_ok=True)
    size = arriving.size if arriving is not None else source.stat().st_size
    if size == 0:
        raise NotATable("empty file")
    out = work_dir / "table.parquet"
    with _connect(work_dir, memory_limit, threads) as con:
        if arriving is not None:
            con.register_filesystem(arriving.filesystem)
        if on_connect is not None:
            on_connect(con)
        if kind == "csv":
            result = _ingest_text(con, source, work_dir, options, out, size, arriving)
        elif kind == "xlsx":
            result = _ingest_xlsx(con, source, work_dir, options, out)
        elif kind == "parquet":
            result = _ingest_parquet(con, source, out)
        else:
            result = _ingest_json(con, source, out, ndjson=kind == "ndjson")
    # A CSV's Parquet is hashed as DuckDB writes it (reading the file as it grows, since a
    # Python filesystem hashing each write costs more); the others once written.
    return dataclasses.replace(result, parquet_sha256=result.parquet_sha256 or file_sha256(out))


# --- DuckDB -----------------------------------------------------------------------------


@contextlib.contextmanager
def _connect(spill_parent: Path | None, memory_limit: str, threads: int) -> Iterator[Any]:
    """An in-memory DuckDB that spills inside ``spill_parent`` (else the system's temporary
    folder) and never touches the network."""
    spill = Path(tempfile.mkdtemp(prefix="duckdb-spill-", dir=spill_parent))
    con = duckdb.connect(":memory:")
    try:
        for setting, value in (
            ("autoinstall_known_extensions", "false"),
            ("autoload_known_extensions", "false"),
            ("memory_limit", _lit(memory_limit)),
            ("threads", str(int(threads))),
            ("temp_directory", _lit(str(spill))),
            # Rows keep the file's order: problems refer to it and users expect it.
            ("preserve_insertion_order", "true"),
            # Its search for shared subexpressions grows faster than the SQL: for the census
            # of a 100-column CSV it took 1.2 of the 2.2 s spent before reading a row. The
            # conversions share nothing it can lift out of their CASEs (_Rule.prepared does).
            ("disabled_optimizers", "'common_subexpressions'"),
        ):
            con.execute(f"SET {setting} = {value}")
        _set_session(con)
        yield con
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _set_session(con: Any) -> None:
    """Settings each connection (or cursor) of the database has of its own."""
    # Offsets in timestamps are converted to UTC; naive ones are kept as written.
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")


def _one(con: Any, sql: str) -> tuple[Any, ...]:
    """The single row of ``sql``. fetchall, not fetchone: fetchone leaves the query pending,
    and a read's rejects table only appears once its query has finished."""
    rows = con.execute(sql).fetchall()
    return tuple(rows[0]) if rows else ()


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _first_line(exc: BaseException, path: Path | None = None) -> str:
    """The gist of an error, for the dataset page: so it names no server path."""
    lines = str(exc).strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    return line.replace(str(path), "the file") if path is not None else line


def _unique_names(raw: Sequence[str | None]) -> list[str]:
    """Trimmed header names; empty ones become column_<position>, repeats get _2, _3...

    Uniqueness ignores case because DuckDB resolves identifiers without it.
    """
    names: list[str] = []
    taken: set[str] = set()
    for position, name in enumerate(raw, start=1):
        base = (name or "").strip() or f"column_{position}"
        candidate, n = base, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate.lower())
        names.append(candidate)
    return names


# --- text files: encoding ---------------------------------------------------------------

_LABELS = {
    "utf-8": "utf-8",
    "utf-8-sig": "utf-8",
    "cp1256": "windows-1256",
    "cp1252": "windows-1252",
    "iso8859-1": "latin-1",
    "latin-1": "latin-1",
    "utf-16": "utf-16",
}


def _latin1_fallback(err: UnicodeError) -> tuple[str, int]:
    """Bytes windows-1252 leaves undefined decode as Latin-1, as browsers do."""
    if not isinstance(err, UnicodeDecodeError):
        raise err
    return err.object[err.start : err.end].decode("latin-1"), err.end


codecs.register_error("khazna-latin1", _latin1_fallback)


@dataclass(frozen=True)
class _Encoding:
    codec: str  # Python codec name
    label: str  # what the result reports

    @property
    def is_utf8(self) -> bool:
        return self.codec in ("utf-8", "utf-8-sig")

    @property
    def errors(self) -> str:
        return "khazna-latin1" if self.codec == "cp1252" else "strict"


def _declared_encoding(name: str) -> _Encoding:
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        raise NotATable(f"unknown encoding {name!r}") from None
    return _Encoding(codec, _LABELS.get(codec, codec))


def _head_encoding(head: bytes) -> _Encoding | None:
    """UTF-16 announces itself with a byte order mark; it would otherwise look binary."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return _Encoding("utf-16", "utf-16")
    return None


def _check_text(head: bytes, whole: bool) -> None:
    """Refuse binary content and files with nothing but blanks."""
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :]
    if whole and not head.strip():
        raise NotATable("empty file")
    controls = sum(head.count(bytes([b])) for b in range(32) if b not in (9, 10, 12, 13))
    if b"\0" in head or controls * 100 > len(head):
        raise NotATable("binary content, not text")


def _detect_encoding(source: Path, bad_offset: int) -> _Encoding:
    """Not UTF-8: choose between Arabic (windows-1256) and Western (windows-1252) text.

    Looks at a few MB around the first byte that was not UTF-8, where the evidence is.
    """
    start = max(0, bad_offset - _DETECT_BYTES // 4)
    with source.open("rb") as f:
        f.seek(start)
        sample = f.read(_DETECT_BYTES)
    best = charset_normalizer.from_bytes(sample, cp_isolation=["cp1256", "cp1252"]).best()
    codec = best.encoding if best is not None else "cp1252"
    return _Encoding(codec, _LABELS[codec])


def _transcode(source: Path, target: Path, encoding: _Encoding) -> None:
    """Stream ``source`` to UTF-8 (without BOM) in ``target``."""
    decoder = codecs.getincrementaldecoder(encoding.codec)(encoding.errors)
    offset = 0
    with source.open("rb") as src, target.open("w", encoding="utf-8", newline="") as dst:
        first = True
        while True:
            chunk = src.read(_CHUNK)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                raise NotATable(
                    f"not valid {encoding.label}: byte {offset + exc.start + 1} cannot be decoded"
                ) from None
            if first and text.startswith("\ufeff"):
                text = text[1:]
            first = first and not text
            dst.write(text)
            offset += len(chunk)
            if not chunk:
                return


# --- text files: the CSV pipeline --------------------------------------------------------


class _NotUtf8(Exception):
    """DuckDB met bytes that are not UTF-8 (at ``offset`` when known)."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


def _ingest_text(
    con: Any,
    source: Path,
    work_dir: Path,
    options: IngestOptions,
    out: Path,
    size: int,
    arriving: Arriving | None,
) -> IngestResult:
    with source.open("rb") as f:
        head = f.read(_HEAD)
    encoding = _declared_encoding(options.encoding) if options.encoding else _head_encoding(head)
    if encoding is None or encoding.codec != "utf-16":
        _check_text(head, whole=size <= _HEAD)
    utf8 = work_dir / "source.utf-8.csv"  # the transcoded copy, when one is needed
    try:
        text, url = source, arriving.url if arriving is not None else str(source)
        if encoding is not None and not encoding.is_utf8:
            if arriving is not None:
                arriving.wait()
            _transcode(source, utf8, encoding)
            text, url = utf8, str(utf8)
        try:
            table = _csv_to_parquet(con, text, url, options, out)
        except _NotUtf8 as exc:
            if encoding is not None:  # declared (or transcoded) and still not UTF-8
                raise NotATable(f"not valid {encoding.label} near byte {exc.offset + 1}") from None
            if arriving is not None:
                arriving.wait()
            # DuckDB checks UTF-8 as it reads, which spares a pass over the file in Python.
            encoding = _detect_encoding(source, exc.offset)
            _transcode(source, utf8, encoding)
            try:
                table = _csv_to_parquet(con, utf8, str(utf8), options, out)
            except _NotUtf8:  # transcoded text is UTF-8: DuckDB meant something else
                raise NotATable("not a table: DuckDB could not read the text") from None
    finally:
        utf8.unlink(missing_ok=True)
    return IngestResult(
        out,
        table.rows,
        table.columns,
        table.problems,
        table.problem_count,
        (encoding or _Encoding("utf-8", "utf-8")).label,
        table.dialect.delimiter,
        table.parquet_sha256,
    )


@dataclass(frozen=True)
class _Dialect:
    delimiter: str
    quote: str  # "" when the file has no quoting
    escape: str  # "" when none
    header: bool
    skip: int  # lines before the header
    comment: str
    newline: bytes  # b"\r" for old Mac files, else b"\n"
    # False for files mixing CRLF and LF line ends, which DuckDB reads only when not strict.
    strict: bool = True


_READS = count()


@dataclass(frozen=True)
class _Csv:
    """A UTF-8 CSV file, how to parse it, and SQL that reads it as text columns c0, c1...

    DuckDB reads it at ``url`` (its path, or where an arriving file is read), Python at
    ``path``.
    """

    path: Path
    url: str
    dialect: _Dialect
    width: int

    def read(self, *, rejects: str | None = None) -> str:
        d = self.dialect
        columns = ", ".join(f"'c{i}': 'VARCHAR'" for i in range(self.width))
        options = [
            _lit(self.url),
            f"delim={_lit(d.delimiter)}",
            f"quote={_lit(d.quote)}",
            f"escape={_lit(d.escape)}",
            f"header={str(d.header).lower()}",
            f"skip={d.skip}",
            "auto_detect=false",
            f"columns={{{columns}}}",
            *_LINE_OPTIONS,
        ]
        if d.comment:
            options.append(f"comment={_lit(d.comment)}")
        if not d.strict:
            options.append("strict_mode=false")
        if rejects:
            options += ["store_rejects=true", f"rejects_table={_lit(rejects)}"]
            options.append(f"rejects_scan={_lit(rejects + '_scan')}")
        else:
            options.append("ignore_errors=true")
        return f"read_csv({', '.join(options)})"

    def first(self, rows: int, *, rejects: str | None = None) -> str:
        """SQL that reads the first ``rows`` rows (see ``read``)."""
        return f"(SELECT * FROM {self.read(rejects=rejects)} LIMIT {rows})"

    def rejects_table(self) -> str:
        # Unique per process: a retry after transcoding must not find the old rejects.
        return f"khazna_rejects_{next(_READS)}"


@dataclass(frozen=True)
class _Table:
    rows: int
    columns: list[Column]
    problems: list[Problem]
    problem_count: int
    dialect: _Dialect
    parquet_sha256: str | None  # None: hash the file


def _csv_to_parquet(con: Any, path: Path, url: str, options: IngestOptions, out: Path) -> _Table:
    dialect, sniffed_names = _sniff(con, path, url, options)
    names = _header_names(path, dialect, sniffed_names)
    src = _Csv(path, url, dialect, len(names))
    plan = _plan(con, src)
    # The text columns' census of a longer prefix, which their types wait for after the
    # COPY, runs beside it on a cursor of its own: after the COPY it held the end of the
    # ingest back by about a tenth of a second on one core. (The cursor is made here: made
    # in the thread, it would wait for the COPY.)
    with con.cursor() as cur, ThreadPoolExecutor(1, thread_name_prefix="khazna-census") as beside:
        _set_session(cur)
        prefix = None
        if plan.unsettled_text:
            prefix = beside.submit(_prefix_census, cur, src, sorted(plan.unsettled_text))
        rows, rejects, sha256 = _copy_planned(con, src, names, plan, out)
        ragged, ragged_count = _ragged_problems(con, src, rejects)
        if rows == 0 and ragged_count:
            raise NotATable(
                f"not a table: no row has the {len(names)} fields of line 1 ({ragged[0].message})"
            )
        retype = _settle_text(con, src, plan, rows, prefix)
    if retype:
        rows, rejects, sha256 = _copy_csv(con, src, names, plan.types, out, guarded=set())
    bad = _bad_value_problems(con, src, names, plan.types, plan.failures)
    problems = sorted(ragged + bad, key=lambda p: (p.line is None, p.line or 0))
    columns = [Column(n, plan.types[i]) for i, n in enumerate(names)]
    bad_count = sum(plan.failures.values())
    return _Table(rows, columns, problems[:MAX_PROBLEMS], ragged_count + bad_count, dialect, sha256)


def _duck_error(exc: duckdb.Error, path: Path) -> Exception:
    """DuckDB's complaint about a text file, as the exception this module raises.

    The message goes to the dataset page: it names no server path.
    """
    message = str(exc)
    if "Invalid unicode" in message:
        return _NotUtf8(0)
    if "Error when sniffing file" in message:
        reason = "no consistent CSV layout (delimiter, quoting, line endings) was found"
    elif "reached an invalid state" in message:
        reason = "the CSV is malformed (mixed line endings or unbalanced quotes?)"
    else:
        reason = _first_line(exc, path)
    return NotATable(f"not a table: {reason}")


def _sniff(con: Any, path: Path, url: str, options: IngestOptions) -> tuple[_Dialect, list[str]]:
    """DuckDB's sniffer, with the declared delimiter and header honoured: (dialect, names).

    ignore_errors lets it see past ragged rows, which otherwise make it give up on the real
    delimiter. The names are DuckDB's (blanks and repeats renamed its own way).
    """
    strict = not _mixed_line_ends(path)
    args = [_lit(url), "ignore_errors=true", *_LINE_OPTIONS]
    if not strict:
        args.append("strict_mode=false")
    if options.delimiter:
        args.append(f"delim={_lit(options.delimiter)}")
    if options.header is not None:
        args.append(f"header={str(options.header).lower()}")
    sql = (
        "SELECT Delimiter, Quote, Escape, HasHeader, SkipRows, Comment, NewLineDelimiter,"
        f" [c.name FOR c IN Columns] FROM sniff_csv({', '.join(args)})"
    )
    try:
        row = _one(con, sql)
    except duckdb.Error as exc:
        raise _duck_error(exc, path) from None
    delimiter, quote, escape, header, skip, comment, newline, names = row
    if not names:
        raise NotATable("not a table: no columns found")

    def given(value: str) -> str:
        return "" if value == "(empty)" else value

    quote, escape = given(quote), given(escape)
    if not quote and not _has_quote(path):
        # The sniffer saw no quotes, so it chose none; quoted fields further down would then
        # split. RFC 4180 quoting costs nothing where there are none.
        quote = '"'
    dialect = _Dialect(
        delimiter=delimiter,
        quote=quote,
        # Without an escape, a doubled quote inside quotes would end the field.
        escape=escape or quote,
        header=bool(header),
        skip=int(skip),
        comment=given(comment),
        newline=b"\r" if newline == "\\r" else b"\n",
        strict=strict,
    )
    return dialect, [str(n) for n in names]


def _mixed_line_ends(path: Path) -> bool:
    """Whether the file's start has lines ending in CRLF and others in a bare LF (files edited
    on two systems, or concatenated). DuckDB's strict reader finds no layout in them."""
    with path.open("rb") as f:
        head = f.read(_DETECT_BYTES)
    crlf = head.count(b"\r\n")
    return 0 < crlf < head.count(b"\n")


def _has_quote(path: Path) -> bool:
    with path.open("rb") as f:
        return b'"' in f.read(_HEAD)


def _header_names(path: Path, dialect: _Dialect, sniffed: list[str]) -> list[str]:
    """Column names as written in the header row, read with Python's csv module.

    DuckDB's names would do, but it renames blank and repeated names its own way
    ("column2", "a_1"), indistinguishable from a header that says so.
    """
    width = len(sniffed)
    fmt = _python_dialect(dialect)
    if not dialect.header:
        return [f"column_{i}" for i in range(1, width + 1)]
    if fmt is None:
        return _unique_names(sniffed)
    with path.open(encoding="utf-8-sig", newline="") as f:
        for _ in range(dialect.skip):
            f.readline()
        try:
            raw: list[str | None] = list(next(csv.reader(f, **fmt), []))
        except UnicodeDecodeError as exc:
            raise _NotUtf8(exc.start) from None
        except csv.Error:
            return _unique_names(sniffed)
    return _unique_names((raw + [None] * width)[:width])


# --- type inference -----------------------------------------------------------------------

# White space around a value, as DuckDB's casts skip it: tab, newline, vertical tab, form
# feed, carriage return, space (RE2's \s leaves out the vertical tab).
_SPACES = ("\t", "\n", "\v", "\f", "\r", " ")
_S = r"[\t\n\v\f\r ]"

# Numbers as people write them, without leading zeros: "01", "01.511" and "06.141.01.00"
# are identifiers and stay text. No "+" either: "+212661234567" is a phone number.
_RE_BIGINT = rf"{_S}*-?(0|[1-9][0-9]*){_S}*"
# An integer of more than 16 digits is an identifier too (a double would round it).
_RE_DOUBLE = (
    rf"{_S}*-?((0|[1-9][0-9]{{0,15}})|(0|[1-9][0-9]*)\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?{_S}*"
)


def _starts_with_any(*chars: str) -> str:
    """SQL true when the text's first character is one of ``chars`` (ASCII).

    DuckDB compares strings on their bytes, so c <= v < next(c) says "v begins with c" in
    about half the time ascii(v) takes (it decodes UTF-8). A first byte above 127 is never
    an ASCII character, as ascii() would say too (tests/test_ingest.py compares the two).
    """
    runs: list[list[int]] = []  # [first, last] code points of consecutive characters
    for code in sorted({ord(c) for c in chars}):
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])

    def literal(code: int) -> str:
        return f"chr({code})" if code < 32 else _lit(chr(code))

    tests = [f"{{v}} >= {literal(low)} AND {{v}} < {literal(high + 1)}" for low, high in runs]
    return "(" + " OR ".join(tests) + ")"


_DIGIT_START = _starts_with_any(*"0123456789")
_DATE_SHAPE = _DIGIT_START + " AND ({v} LIKE '____-%' OR {v} LIKE '____/%')"
# What every date or timestamp has (see _DATE_SHAPE and the TIMESTAMP rule), at the cost of
# two contains(): a fraction of a LIKE with "_".
_SEPARATED_DIGITS = _DIGIT_START + " AND (contains({v}, '-') OR contains({v}, '/'))"


@dataclass(frozen=True)
class _Rule:
    """How text becomes one candidate type: ``value`` is SQL giving the typed value, or NULL
    when the text is not one.

    Regular expressions state the rules but cost more than the conversion itself, so
    ``value`` first tries a cheap test that decides the common, well-formed values and
    leaves only the rest to the expression. ``first`` is cheaper still and true of every
    value that converts: the census, which also meets text columns, checks it before
    ``value`` so that text costs almost nothing; the COPY does without it. ``prepared``,
    when set, is SQL over the text that ``value`` uses more than once as ``{p}``: the COPY
    computes it once per row in a column of its own, the census (a sample) inline. Same
    values either way (tests/test_ingest.py checks).
    """

    first: str
    value: str
    prepared: str = ""


_NUMBER_START = _starts_with_any(*"0123456789-.", *_SPACES)


def _lacks(*chars: str) -> str:
    """SQL true when the text holds none of ``chars``: a cheap way for the census to pass
    over values of other types (decimals, dates, times) that no number rule accepts."""
    return " AND ".join(f"NOT contains({{v}}, {_lit(c)})" for c in chars)


_RULES = {
    # Only words: 0/1 are counts more often than flags.
    "BOOLEAN": _Rule(
        _starts_with_any(*"FTft"),
        "CASE WHEN length({v}) <= 5 AND lower({v}) IN ('true', 'false')"
        " THEN lower({v}) = 'true' END",
    ),
    # Canonical integers are those that read back the same. The cast is prepared: written
    # twice, DuckDB (without its common-subexpression optimizer, see _connect) computes it
    # twice, 0.1-0.2 CPU-s more per 5M values.
    "BIGINT": _Rule(
        f"{_NUMBER_START} AND {_lacks('.', ':', '/')}",
        "CASE WHEN CAST({p} AS VARCHAR) = {v}"
        f" OR regexp_full_match({{v}}, '{_RE_BIGINT}') THEN {{p}} END",
        prepared="try_cast({v} AS BIGINT)",
    ),
    # A first digit 1-9, "0." or "-" then 1-9, short and without "_": DuckDB's cast accepts
    # such text exactly when the expression does. (Comparing strings, which DuckDB does on
    # bytes, tests a first digit in a third of the time ascii() takes; "-1" <= v < "-:" is
    # "-" then 1-9 without substr's walk over UTF-8.)
    "DOUBLE": _Rule(
        f"{_NUMBER_START} AND {_lacks(':', '/')}",
        "CASE WHEN ({v} >= '1' AND {v} < ':' OR {v} LIKE '0.%'"
        " OR ({v} >= '-1' AND {v} < '-:'))"
        " AND strlen({v}) <= 16 AND NOT contains({v}, '_')"
        f" OR regexp_full_match({{v}}, '{_RE_DOUBLE}') THEN try_cast({{v}} AS DOUBLE) END",
    ),
    # Longer text would be a timestamp, which a DATE cast silently truncates.
    "DATE": _Rule(
        _SEPARATED_DIGITS,
        f"CASE WHEN {_DATE_SHAPE} AND length({{v}}) <= 10 THEN try_cast({{v}} AS DATE) END",
    ),
    # The rule is TIMESTAMPTZ's: unlike a TIMESTAMP cast it rejects trailing junk, and it
    # converts offsets ("Z", "+01:00") to UTC. It costs about four times a TIMESTAMP cast, so
    # plain "YYYY-MM-DD HH:MM:SS" (or with "T") takes the TIMESTAMP cast when the text is
    # exactly how that value is written: then TIMESTAMPTZ reads the same value. The text's
    # shape alone (a LIKE) would not do: "_" matches any character, and the cast reads
    # "2024-01-31 10:0 :x0" or "2024-01-31 10:00:0<TAB>" as 10:00.
    "TIMESTAMP": _Rule(
        _SEPARATED_DIGITS,
        "CASE WHEN strlen({v}) = 19 AND CAST({p} AS VARCHAR) = {v} THEN {p}"
        " WHEN strlen({v}) = 19 AND starts_with({v}, CAST(CAST({p} AS DATE) AS VARCHAR))"
        " AND suffix({v}, CAST(CAST({p} AS TIME) AS VARCHAR)) THEN {p}"
        f" WHEN {_DATE_SHAPE} THEN CAST(try_cast({{v}} AS TIMESTAMPTZ) AS TIMESTAMP) END",
        prepared="try_cast({v} AS TIMESTAMP)",
    ),
}
_BLANK = "(" + _starts_with_any(*_SPACES) + f" AND regexp_full_match({{v}}, '{_S}*'))"


def _sql(template: str, v: str) -> str:
    # str.replace, not str.format: the regular expressions hold braces.
    return template.replace("{v}", v)


def _blank(v: str) -> str:
    return _sql(_BLANK, v)


def _convert(type_: str, v: str, *, census: bool = False, prepared: str | None = None) -> str:
    """SQL for column ``v`` as ``type_``: NULL where the text is not one.

    ``prepared`` names a column that holds the rule's ``prepared`` SQL over ``v`` (see
    _prepared); without it, that SQL is written inline.
    """
    if type_ == VARCHAR:
        return v
    rule = _RULES[type_]
    value = f"CASE WHEN {rule.first} THEN {rule.value} END" if census else rule.value
    if rule.prepared:
        value = value.replace("{p}", prepared or f"({rule.prepared})")
    return _sql(value, v)


def _prepared(type_: str, v: str) -> str | None:
    """SQL over column ``v`` that ``_convert(type_, v, prepared=...)`` expects in a column of
    its own, or None when the type's rule needs none."""
    rule = _RULES.get(type_)
    return _sql(rule.prepared, v) if rule and rule.prepared else None


@dataclass(frozen=True)
class _Counts:
    """One column over some rows: non-empty values, and how many each candidate converts."""

    nonempty: int
    ok: dict[str, int]

    def choice(self) -> tuple[str, int]:
        return _choose(self.nonempty, self.ok)

    def rules_out_types(self, rows: int) -> bool:
        """True when no candidate can fit a file of ``rows`` rows that holds these values.

        A candidate's failures in the file are at least those counted here, and its non-empty
        values at most ``rows``: past FAILURE_PERCENT of ``rows``, it cannot fit.
        """
        return all((self.nonempty - self.ok[t]) * 100 > rows * FAILURE_PERCENT for t in CANDIDATES)


def _choose(nonempty: int, ok: dict[str, int]) -> tuple[str, int]:
    """(type, failures): the candidate with fewest failures among those that fit.

    A type fits when it converts at least one value and fails on at most FAILURE_PERCENT of
    the non-empty ones; ties go to the earlier candidate (BIGINT before DOUBLE, DATE before
    TIMESTAMP). Nothing fits: VARCHAR, which never fails.
    """
    fits = [
        (nonempty - ok[t], rank, t)
        for rank, t in enumerate(CANDIDATES)
        if ok.get(t, 0) > 0 and (nonempty - ok[t]) * 100 <= nonempty * FAILURE_PERCENT
    ]
    if not fits:
        return VARCHAR, 0
    failures, _, type_ = min(fits)
    return type_, failures


def _census(
    con: Any, source_sql: str, cols: Sequence[int], *, prefix: bool = False
) -> tuple[int, dict[int, _Counts]]:
    """(rows, counts per column) over ``source_sql``.

    Over the whole file, each column gets its own expressions: the values are what costs
    there, and DuckDB counts them faster that way. A prefix (``prefix``: up to
    TEXT_SAMPLE_ROWS rows) costs more to plan than to count, about 8 ms per column for
    binding its rules: there the columns' values are unnested into one, so that one set of
    rules is bound however many columns there are (a 100-column sample: 0.75 against
    1.9 s). Same counts either way (tests/test_ingest.py checks).
    """
    if prefix:
        return _census_unnested(con, source_sql, cols)
    parts = ["count(*)"]
    for i in cols:
        parts += _counts_sql(f"c{i}")
    rows, *counts = _one(con, f"SELECT {', '.join(parts)} FROM {source_sql}")
    step = len(CANDIDATES) + 1
    by_column = {}
    for k, i in enumerate(cols):
        nonempty, *oks = counts[k * step : (k + 1) * step]
        by_column[i] = _Counts(nonempty, dict(zip(CANDIDATES, oks, strict=True)))
    return rows, by_column


def _counts_sql(v: str) -> list[str]:
    """Aggregates over text column ``v``: its non-empty values, then how many each
    candidate type converts."""
    nonempty = f"count({v}) - count(CASE WHEN {_blank(v)} THEN 1 END)"
    return [nonempty, *(f"count({_convert(t, v, census=True)})" for t in CANDIDATES)]


def _census_unnested(
    con: Any, source_sql: str, cols: Sequence[int]
) -> tuple[int, dict[int, _Counts]]:
    """_census over one column ``v`` holding every value of ``cols``, grouped by column.

    unnest keeps NULLs, so each group has one row per source row: its count(*) is the
    number of rows. No rows, no groups.
    """
    values = ", ".join(f"c{i}" for i in cols)
    keys = ", ".join(str(i) for i in cols)
    unnested = f"SELECT unnest([{values}]) AS v, unnest([{keys}]) AS k FROM {source_sql}"
    sql = f"SELECT k, count(*), {', '.join(_counts_sql('v'))} FROM ({unnested}) GROUP BY k"
    rows, by_column = 0, {}
    for i, n, nonempty, *oks in con.execute(sql).fetchall():
        rows = n
        by_column[i] = _Counts(nonempty, dict(zip(CANDIDATES, oks, strict=True)))
    empty = _Counts(0, dict.fromkeys(CANDIDATES, 0))
    return rows, {i: by_column.get(i, empty) for i in cols}


@dataclass
class _Plan:
    """Types per column and what is known about them (see the module docstring)."""

    types: dict[int, str]
    failures: dict[int, int]  # exact counts, for columns whose type is settled
    optimistic: set[int]  # typed, no failure in the sample: the COPY checks the rest
    unsettled_text: dict[int, _Counts]  # text in the sample; settled after the COPY

    def settle(self, counts: dict[int, _Counts]) -> None:
        for i, c in counts.items():
            self.types[i], self.failures[i] = c.choice()
            self.optimistic.discard(i)
            self.unsettled_text.pop(i, None)


def _plan(con: Any, src: _Csv) -> _Plan:
    rejects = src.rejects_table()
    sample_sql = src.first(SAMPLE_ROWS, rejects=rejects)
    try:
        sampled, sample = _census(con, sample_sql, range(src.width), prefix=True)
    except duckdb.Error as exc:
        raise _duck_error(exc, src.path) from None
    _raise_if_not_utf8(con, rejects)
    plan = _Plan({i: VARCHAR for i in sample}, {}, set(), {})
    if sampled < SAMPLE_ROWS:  # the sample is the whole file: its census is exact
        plan.settle(sample)
        return plan
    empty = [i for i, counts in sample.items() if not counts.nonempty]
    if empty:  # nothing to go by yet: a longer look before counting the whole file
        more = _look_further(con, src, plan, empty)
        sample = {i: c for i, c in sample.items() if i not in empty} | more
    unsure = {}
    for i, counts in sample.items():
        type_, failures = counts.choice()
        plan.types[i] = type_
        if counts.nonempty and type_ != VARCHAR and not failures:
            plan.optimistic.add(i)
        elif counts.nonempty and type_ == VARCHAR:
            plan.unsettled_text[i] = counts
        else:  # failures already in the sample, or nothing to go by: count them all
            unsure[i] = counts
    if unsure:
        plan.settle(_census(con, src.read(), sorted(unsure))[1])
    return plan


def _look_further(
    con: Any,
    src: _Csv,
    plan: _Plan,
    cols: list[int],
    counted: Future[tuple[int, dict[int, _Counts]]] | None = None,
) -> dict[int, _Counts]:
    """Counts of ``cols`` over the first TEXT_SAMPLE_ROWS rows (``counted``, when that
    census was started already, see _prefix_census). When those rows are the whole file
    the counts are exact: they settle the columns, and nothing is returned."""
    if counted is None:
        seen, counts = _prefix_census(con, src, cols)
    else:
        seen, every = counted.result()
        counts = {i: every[i] for i in cols}
    if seen < TEXT_SAMPLE_ROWS:
        plan.settle(counts)
        return {}
    return counts


def _prefix_census(con: Any, src: _Csv, cols: list[int]) -> tuple[int, dict[int, _Counts]]:
    return _census(con, src.first(TEXT_SAMPLE_ROWS), cols, prefix=True)


def _copy_planned(
    con: Any, src: _Csv, names: list[str], plan: _Plan, out: Path
) -> tuple[int, str, str | None]:
    """The COPY, optimistic first; if an optimistic type met a misfit, count and copy again."""
    try:
        result = _copy_csv(con, src, names, plan.types, out, guarded=plan.optimistic)
    except duckdb.Error as exc:
        if _GUARD not in str(exc):
            raise
        plan.settle(_census(con, src.read(), sorted(plan.optimistic))[1])
        return _copy_csv(con, src, names, plan.types, out, guarded=set())
    for i in plan.optimistic:  # the COPY went through: not one misfit in the whole file
        plan.failures[i] = 0
    plan.optimistic.clear()
    return result


def _settle_text(
    con: Any,
    src: _Csv,
    plan: _Plan,
    rows: int,
    prefix: Future[tuple[int, dict[int, _Counts]]] | None = None,
) -> bool:
    """Confirm the columns left as text from the sample; True if one turns out typed.

    Usually the sample already rules every type out for a file of ``rows`` rows; if not, a
    census of the first TEXT_SAMPLE_ROWS rows does (``prefix``, when it was started beside
    the COPY), and the census over the whole file runs only for the columns where neither
    can.
    """

    def rule_out(counts: dict[int, _Counts]) -> None:
        for i, c in counts.items():
            if c.rules_out_types(rows):
                plan.failures[i] = 0
                del plan.unsettled_text[i]

    rule_out(dict(plan.unsettled_text))
    before = dict(plan.types)
    if plan.unsettled_text:
        rule_out(_look_further(con, src, plan, sorted(plan.unsettled_text), prefix))
    if plan.unsettled_text:
        plan.settle(_census(con, src.read(), sorted(plan.unsettled_text))[1])
    return plan.types != before


def _raise_if_not_utf8(con: Any, rejects: str) -> None:
    """Invalid UTF-8 among a read's rejected rows means the file has another encoding."""
    row = _one(
        con, f"SELECT min(byte_position) FROM {rejects} WHERE error_type = 'INVALID ENCODING'"
    )
    if row[0] is not None:
        raise _NotUtf8(int(row[0]))


def _copy_csv(
    con: Any,
    src: _Csv,
    names: list[str],
    types: dict[int, str],
    out: Path,
    guarded: set[int],
) -> tuple[int, str, str | None]:
    """COPY to Parquet with the chosen types; (rows, the rejects table of that read, the
    Parquet's SHA-256 or None).

    Guarded (optimistic) columns raise on a value their type cannot hold, instead of
    storing null: see the module docstring. The Parquet is hashed as DuckDB writes it.
    """
    exprs, prepared = [], []
    for i, name in enumerate(names):
        v, p = f"c{i}", f"p{i}"
        prep = _prepared(types[i], v)
        if prep:
            prepared.append(f"{prep} AS {p}")
        value = _convert(types[i], v, prepared=p if prep else None)
        if i in guarded:
            # The error's text depends on the row, so DuckDB cannot fold it into a constant.
            alarm = f"error('{_GUARD} ' || {v})"
            value = f"coalesce({value}, CASE WHEN NOT {_blank(v)} THEN {alarm} END)"
        exprs.append(f"{value} AS {_ident(name)}")
    rejects = src.rejects_table()
    source = src.read(rejects=rejects)
    if prepared:  # computed once per row, however often the conversion uses it
        source = f"(SELECT *, {', '.join(prepared)} FROM {source})"
    select = f"SELECT {', '.join(exprs)} FROM {source}"
    sql = f"COPY ({select}) TO {_lit(str(out))}"
    out.unlink(missing_ok=True)  # the hash follows this COPY's file from its first byte
    try:
        with GrowingFileHash(out, flush_every=_FLUSH_EVERY) as growing:
            row = _one(con, f"{sql} ({PARQUET_OPTIONS})")
    except duckdb.Error as exc:
        if _GUARD in str(exc):
            raise
        raise _duck_error(exc, src.path) from None
    _raise_if_not_utf8(con, rejects)
    return int(row[0]), rejects, growing.sha256()


# --- problems -----------------------------------------------------------------------------

_FOUND = re.compile(r"Found: (\d+)")


def _shown(text: str) -> str:
    return text if len(text) <= _SHOWN_VALUE else text[:_SHOWN_VALUE] + "…"


def _ragged_problems(con: Any, src: _Csv, rejects: str) -> tuple[list[Problem], int]:
    """Rows DuckDB skipped (wrong number of fields, broken quoting): listed and counted."""
    total = _one(con, f"SELECT count(DISTINCT line) FROM {rejects}")[0]
    # DuckDB may record a row twice; its line (a record counter) tells them apart.
    rows = con.execute(
        "SELECT DISTINCT ON (line) coalesce(line_byte_position, byte_position, 0),"
        f" error_type, error_message, coalesce(csv_line, '') FROM {rejects}"
        f" ORDER BY line, byte_position LIMIT {MAX_PROBLEMS}"
    ).fetchall()
    starts = [_row_start(src.path, int(r[0]), r[3]) for r in rows]
    lines = _lines_at(src.path, starts, src.dialect.newline)
    problems = []
    for (_, error_type, error_message, csv_line), line in zip(rows, lines, strict=True):
        found = _FOUND.search(error_message or "")
        if error_type in ("TOO MANY COLUMNS", "MISSING COLUMNS") and found:
            why = f"expected {src.width} fields, found {found.group(1)}"
        else:
            why = _first_line(Exception(error_message or error_type)).rstrip(".")
        shown = _shown(csv_line.lstrip("\r\n"))
        problems.append(
            Problem("ragged_row", line, None, shown, f"line {line}: {why}; row skipped")
        )
    return problems, int(total)


def _row_start(path: Path, position: int, csv_line: str) -> int:
    """The byte offset where a rejected row's own text starts.

    DuckDB's position is sometimes 1-based, and after blank lines its line text starts with
    them; the text is looked for at both readings and the blank lines are stepped over.
    """
    text = csv_line.encode("utf-8")
    body = len(text) - len(text.lstrip(b"\r\n"))
    with path.open("rb") as f:
        for offset in (position - 1, position):
            f.seek(max(offset, 0))
            if offset >= 0 and f.read(len(text)) == text:
                return offset + body
    return max(position - 1, 0) + body


def _lines_at(path: Path, offsets: list[int], newline: bytes) -> list[int]:
    """1-based line of each byte offset: the newlines before it, plus one.

    DuckDB's own line count skips newlines inside quotes; a person opening the file in an
    editor counts them, so the physical line is reported.
    """
    wanted = sorted(set(offsets))
    found: dict[int, int] = {}
    newlines, start, k = 0, 0, 0
    with path.open("rb") as f:
        while k < len(wanted):
            chunk = f.read(_CHUNK)
            while k < len(wanted) and (not chunk or wanted[k] < start + len(chunk)):
                found[wanted[k]] = newlines + chunk[: wanted[k] - start].count(newline) + 1
                k += 1
            if not chunk:
                break
            newlines += chunk.count(newline)
            start += len(chunk)
    return [found[o] for o in offsets]


def _bad_value_problems(
    con: Any, src: _Csv, names: list[str], types: dict[int, str], failures: dict[int, int]
) -> list[Problem]:
    """The values that did not fit their column's type and became null, with their lines."""
    cols = [i for i, f in failures.items() if f > 0]
    if not cols:
        return []
    found = _failing_values(con, src, cols, types)
    lines = _record_lines(src, found)
    problems = []
    for (ordinal, i, value), line in zip(found, lines, strict=True):
        where = f"line {line}" if line is not None else f"row {ordinal + 1}"
        message = f"{where}: {_shown(value)!r} is not a {types[i]} in column {names[i]}"
        problems.append(
            Problem("bad_value", line, names[i], _shown(value), message + "; stored as null")
        )
    return problems


def _failing_values(
    con: Any, src: _Csv, cols: list[int], types: dict[int, str]
) -> list[tuple[int, int, str]]:
    """(row ordinal among the rows kept, column, value) of the first MAX_PROBLEMS failures.

    Rows arrive in file order (insertion order is preserved), so counting them gives each
    row's ordinal.
    """
    exprs = []
    for i in cols:
        v = f"c{i}"
        failed = f"{v} IS NOT NULL AND NOT {_blank(v)} AND {_convert(types[i], v)} IS NULL"
        exprs.append(f"CASE WHEN {failed} THEN {v} END")
    reader = con.sql(f"SELECT {', '.join(exprs)} FROM {src.read()}").to_arrow_reader(100_000)
    found: list[tuple[int, int, str]] = []
    ordinal = 0
    for batch in reader:
        for k, i in enumerate(cols):
            column = batch.column(k)
            if column.null_count == len(column):
                continue
            for j in pc.indices_nonzero(pc.is_valid(column)).to_pylist():
                found.append((ordinal + j, i, column[j].as_py()))
        ordinal += batch.num_rows
        if len(found) >= MAX_PROBLEMS:
            break
    reader.close()
    return sorted(found)[:MAX_PROBLEMS]


def _record_lines(src: _Csv, found: list[tuple[int, int, str]]) -> list[int | None]:
    """The physical line where each kept row starts, by reading the file again in Python.

    DuckDB does not say where a row came from, so Python's csv module walks the records,
    skipping what DuckDB skipped (blank lines, rows with the wrong number of fields). Each
    answer is checked against the value DuckDB saw; a mismatch gives None, never a wrong line.
    """
    fmt = _python_dialect(src.dialect)
    rows: dict[int, tuple[int, list[str]]] = {}
    if fmt is not None and found:
        with contextlib.suppress(csv.Error):  # a file the csv module cannot walk: no lines
            _walk_records(src, fmt, {ordinal for ordinal, _, _ in found}, rows)
    lines: list[int | None] = []
    for ordinal, i, value in found:
        line, record = rows.get(ordinal, (None, []))
        lines.append(line if record and record[i] == value else None)
    return lines


def _walk_records(
    src: _Csv, fmt: dict[str, Any], wanted: set[int], rows: dict[int, tuple[int, list[str]]]
) -> None:
    """Fill ``rows`` with (first line, fields) of the kept rows numbered in ``wanted``."""
    # A process-wide setting, only ever raised: records as long as DuckDB accepts.
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_LINE))
    skip = src.dialect.skip
    with src.path.open(encoding="utf-8-sig", newline="") as f:
        for _ in range(skip):
            f.readline()
        reader = csv.reader(f, **fmt)
        if src.dialect.header:
            next(reader, None)
        end = skip + reader.line_num  # the last line read so far
        ordinal = -1
        for record in reader:
            start, end = end + 1, skip + reader.line_num
            if len(record) != src.width or _is_comment(record, src.dialect):
                continue
            ordinal += 1
            if ordinal in wanted:
                rows[ordinal] = (start, record)
                if len(rows) == len(wanted):
                    return


def _is_comment(record: list[str], dialect: _Dialect) -> bool:
    return bool(dialect.comment) and bool(record) and record[0].startswith(dialect.comment)


def _python_dialect(d: _Dialect) -> dict[str, Any] | None:
    """The csv module's reading of DuckDB's dialect; None when it has no equivalent."""
    if len(d.delimiter) != 1 or len(d.quote) > 1 or len(d.escape) > 1:
        return None
    if not d.quote:
        return {"delimiter": d.delimiter, "quoting": csv.QUOTE_NONE}
    fmt: dict[str, Any] = {"delimiter": d.delimiter, "quotechar": d.quote, "doublequote": True}
    if d.escape and d.escape != d.quote:
        fmt.update(escapechar=d.escape, doublequote=False)
    return fmt


# --- XLSX ---------------------------------------------------------------------------------


def _ingest_xlsx(
    con: Any, source: Path, work_dir: Path, options: IngestOptions, out: Path
) -> IngestResult:
    """The sheet as a UTF-8 CSV, then the CSV path, so types are inferred the same way."""
    text = work_dir / "sheet.csv"
    try:
        _sheet_to_csv(source, options.sheet, text)
        options = IngestOptions(delimiter=",", header=True)
        table = _csv_to_parquet(con, text, str(text), options, out)
    finally:
        text.unlink(missing_ok=True)
    return IngestResult(
        out, table.rows, table.columns, table.problems, table.problem_count, None, None
    )


def _sheet_to_csv(source: Path, sheet: str | None, target: Path) -> None:
    try:
        book = python_calamine.CalamineWorkbook.from_path(str(source))
    except Exception as exc:  # calamine raises several unrelated types for a bad file
        raise NotATable(f"not a readable XLSX file: {_first_line(exc, source)}") from None
    try:
        names = book.sheet_names
        if not names:
            raise NotATable("the workbook has no sheet")
        name = sheet if sheet is not None else names[0]
        if name not in names:
            raise NotATable(f"no sheet named {name!r}; sheets: {', '.join(names)}")
        _write_rows(book.get_sheet_by_name(name), name, target)
    finally:
        book.close()


def _write_rows(sheet: Any, name: str, target: Path) -> None:
    width = sheet.width
    written = 0
    with target.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        for cells in sheet.iter_rows():
            texts = [_cell_text(c) for c in cells][:width]
            if not any(texts):  # blank spreadsheet rows are layout, not data
                continue
            writer.writerow(texts + [""] * (width - len(texts)))
            written += 1
    if written == 0:
        raise NotATable(f"sheet {name!r} has no rows")


def _cell_text(value: Any) -> str:
    """A cell as the text a CSV export would hold; dates in ISO 8601."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # Excel stores every number as a float; whole ones are written as integers, within
        # the range where a double holds them exactly.
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    return str(value)


# --- JSON and Parquet ---------------------------------------------------------------------

_INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"}


def _mapped(v: str, duck_type: str) -> tuple[str, str]:
    """(SQL, type) bringing a typed column to one of this module's six types.

    Integers that may not fit BIGINT (UBIGINT, HUGEINT) become text rather than wrong.
    """
    t = duck_type.upper()
    if t.endswith("]") or t.startswith(("STRUCT", "MAP", "UNION")):  # before "TIMESTAMP[]"
        return f"CAST(to_json({v}) AS VARCHAR)", VARCHAR
    if t == "BOOLEAN" or t == "DATE":
        return v, t
    if t in _INTEGERS:
        return f"CAST({v} AS BIGINT)", "BIGINT"
    if t in ("FLOAT", "DOUBLE") or t.startswith("DECIMAL"):
        return f"CAST({v} AS DOUBLE)", "DOUBLE"
    if t.startswith("TIMESTAMP"):  # _S, _MS, _NS and WITH TIME ZONE (to UTC)
        return f"CAST({v} AS TIMESTAMP)", "TIMESTAMP"
    if t == "JSON":  # mixed types: strings unquoted, the rest as JSON text
        return (
            f"CASE WHEN json_type({v}) = 'VARCHAR' THEN {v} ->> '$' ELSE CAST({v} AS VARCHAR) END",
            VARCHAR,
        )
    return f"CAST({v} AS VARCHAR)", VARCHAR


def _copy_typed(con: Any, relation_sql: str, out: Path) -> tuple[int, list[Column]]:
    """COPY a typed relation to Parquet with its columns renamed and mapped."""
    described = con.execute(f"DESCRIBE SELECT * FROM {relation_sql}").fetchall()
    if not described:
        raise NotATable("not a table: no columns")
    names = _unique_names([str(r[0]) for r in described])
    exprs, columns = [], []
    for (raw, duck_type, *_), name in zip(described, names, strict=True):
        sql, type_ = _mapped(_ident(str(raw)), str(duck_type))
        exprs.append(f"{sql} AS {_ident(name)}")
        columns.append(Column(name, type_))
    select = f"SELECT {', '.join(exprs)} FROM {relation_sql}"
    row = _one(con, f"COPY ({select}) TO {_lit(str(out))} ({PARQUET_OPTIONS})")
    return int(row[0]), columns


def _json_start(source: Path) -> bytes:
    """The file's start past a byte order mark and blanks: enough to tell its shape."""
    with source.open("rb") as f:
        head = f.read(_HEAD)
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :]
    return head.lstrip()


def _json_format(source: Path, ndjson: bool) -> str:
    head = _json_start(source)
    if not head:
        raise NotATable("empty file")
    if ndjson:
        return "newline_delimited"
    if head[:1] == b"[":
        return "array"
    first, _, rest = head.partition(b"\n")
    if head[:1] == b"{" and first.rstrip().endswith(b"}") and rest.lstrip()[:1] == b"{":
        return "newline_delimited"  # JSON Lines saved as .json
    if head[:1] == b"{":
        raise NotATable("not a table: a JSON object, not an array of objects")
    raise NotATable("not a table: not JSON (expected an array of objects)")


def _ingest_json(con: Any, source: Path, out: Path, *, ndjson: bool) -> IngestResult:
    fmt = _json_format(source, ndjson)
    # sample_size=-1: the schema comes from every record, not the first ones.
    relation = f"read_json({_lit(str(source))}, format={_lit(fmt)}, records=true, sample_size=-1)"
    try:
        rows, columns = _copy_typed(con, relation, out)
    except duckdb.Error as exc:
        reason = _first_line(exc, source)
        if "expected records" in reason:
            reason = "the JSON holds values that are not objects (or no records at all)"
        raise NotATable(f"not a table: {reason}") from None
    if rows == 0:
        raise NotATable("not a table: no records")
    return IngestResult(out, rows, columns, [], 0, "utf-8", None)


def _ingest_parquet(con: Any, source: Path, out: Path) -> IngestResult:
    """Check the file, then write it again with DuckDB.

    Rewriting (rather than reusing the upload) gives a file whose types are the six this
    hub knows, whose column names are unique, and whose row groups and compression come from
    one writer, whatever produced the upload.
    """
    try:
        expected = pq.ParquetFile(source).metadata.num_rows
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError... for a bad file
        raise NotATable(f"not a readable Parquet file: {_first_line(exc, source)}") from None
    try:
        rows, columns = _copy_typed(con, f"read_parquet({_lit(str(source))})", out)
    except duckdb.Error as exc:
        raise NotATable(f"not a readable Parquet file: {_first_line(exc, source)}") from None
    if rows != expected:
        raise NotATable(f"not a readable Parquet file: {rows} rows read, {expected} declared")
    return IngestResult(out, rows, columns, [], 0, None, None)


# --- profile ------------------------------------------------------------------------------


def profile(
    parquet: Path, columns: list[Column], *, memory_limit: str = "512MB", threads: int = 2
) -> dict[str, dict[str, Any]]:
    """Per column: nulls, distinct_estimate, min, max and the 5 most frequent values, and
    for numbers, dates and timestamps a histogram of equal-width bins (``_histogram``).

        Values are JSON-ready: dates and timestamps as ISO strings, non-finite doubles as null,
        long text cut to 200 characters.
    """
    src = f"read_parquet({_lit(str(parquet))})"
    # Not next to the Parquet file: that folder may be a content-addressed store.
    with _connect(None, memory_limit, threads) as con:
        parts = []
        for c in columns:
            v = _ident(c.name)
            parts += [
                f"count(*) - count({v})",
                f"approx_count_distinct({v})",
                f"min({v})",
                f"max({v})",
            ]
        row = _one(con, f"SELECT {', '.join(parts)} FROM {src}") if parts else ()
        stats: dict[str, dict[str, Any]] = {}
        for k, c in enumerate(columns):
            nulls, distinct, low, high = row[k * 4 : k * 4 + 4]
            stats[c.name] = {
                "nulls": int(nulls),
                "distinct_estimate": int(distinct),
                "min": _jsonable(low),
                "max": _jsonable(high),
                "top": _top(con, src, c.name),
            }
            if c.type in _HISTOGRAM_KEYS:
                stats[c.name]["histogram"] = _histogram(con, src, c)
        return stats


# How many equal-width bins a histogram has at most.
HISTOGRAM_BINS = 10
_EPOCH = date(1970, 1, 1)
# The number a value is binned by: integers and dates (days since 1970) and timestamps
# (microseconds since 1970) are counted exactly on integers; doubles as doubles.
_HISTOGRAM_KEYS = {
    "BIGINT": "CAST({v} AS HUGEINT)",
    "DATE": "CAST(date_diff('day', DATE '1970-01-01', {v}) AS HUGEINT)",
    "TIMESTAMP": "CAST(epoch_us({v}) AS HUGEINT)",
    "DOUBLE": "{v}",
}


def _histogram(con: Any, src: str, c: Column) -> list[dict[str, Any]]:
    """At most HISTOGRAM_BINS equal-width bins over the column's non-null (and finite)
    values, each ``{from, to, count}``.

    Integers, dates and timestamps: ``from`` and ``to`` are both in the bin, each bin
    spans ``ceil((max - min + 1) / bins)`` values, the last one ends at the maximum.
    Doubles: ten bins of ``(max - min) / 10``, ``from`` in, ``to`` out, except in the
    last bin, which holds the maximum. Empty bins are listed with a count of 0.
    """
    key = _HISTOGRAM_KEYS[c.type].format(v=_ident(c.name))
    where = f"{_ident(c.name)} IS NOT NULL" + (
        f" AND isfinite({key})" if c.type == "DOUBLE" else ""
    )
    low, high = _one(con, f"SELECT min({key}), max({key}) FROM {src} WHERE {where}")
    if low is None:
        return []
    if c.type == "DOUBLE":
        width = (high - low) / HISTOGRAM_BINS
        if width == 0:
            bins = 1
            bucket = "0"
        else:
            bins = HISTOGRAM_BINS
            bucket = f"least(CAST(floor(({key} - {low!r}) / {width!r}) AS BIGINT), {bins - 1})"
        edges = [(low + i * width, low + (i + 1) * width) for i in range(bins)]
        if edges:
            edges[-1] = (edges[-1][0], high)
    else:
        low, high = int(low), int(high)
        span = high - low + 1
        step = -(-span // min(HISTOGRAM_BINS, span))
        bins = -(-span // step)
        bucket = f"CAST(({key} - {low}) // {step} AS BIGINT)"
        edges = [(low + i * step, min(low + (i + 1) * step - 1, high)) for i in range(bins)]
    counts = dict(
        con.execute(
            f"SELECT {bucket} AS b, count(*) FROM {src} WHERE {where} GROUP BY b"
        ).fetchall()
    )
    return [
        {
            "from": _histogram_value(c.type, lo),
            "to": _histogram_value(c.type, hi),
            "count": int(counts.get(i, 0)),
        }
        for i, (lo, hi) in enumerate(edges)
    ]


def _histogram_value(kind: str, key: float) -> Any:
    if kind == "DATE":
        return (_EPOCH + timedelta(days=int(key))).isoformat()
    if kind == "TIMESTAMP":
        return (datetime(1970, 1, 1) + timedelta(microseconds=int(key))).isoformat()
    return key


def _top(con: Any, src: str, name: str) -> list[dict[str, Any]]:
    v = _ident(name)
    rows = con.execute(
        f"SELECT {v}, count(*) AS n FROM {src} WHERE {v} IS NOT NULL"
        f" GROUP BY {v} ORDER BY n DESC, {v} LIMIT 5"
    ).fetchall()
    return [{"value": _jsonable(value), "count": int(n)} for value, n in rows]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return _shown(value)
    return value
