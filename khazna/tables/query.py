"""Reading tables: filtered, sorted, paged rows, and read-only SQL in a locked-down DuckDB.

Two doors onto the same Parquet files:

- `read_rows` runs SQL this module writes itself, with every value a caller sent bound as a
  parameter, so all calls share one DuckDB database and only borrow a cursor each.
- `Sandbox` runs SQL a user wrote. Every query gets a fresh in-memory database that can read
  the Parquet files of the tables it was handed and nothing else: no other file, no URL, no
  extension, no setting, no write; and it stops at a time and a memory limit.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import heapq
import itertools
import json
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as clock
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.csv as pa_csv  # type: ignore[import-untyped]
import pyarrow.ipc as pa_ipc  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from khazna.errors import BadRequest, KhaznaError, OverQuota


def _find_engine_submit() -> Callable[..., Any] | None:
    """DuckDB 2's call that its relations run statements through (see _stream); None in a
    DuckDB without it, which then takes its public relation API."""
    try:
        from duckdb._seam import submit
    except ImportError:  # pragma: no cover - depends on the DuckDB installed
        return None
    return submit


_engine_submit = _find_engine_submit()

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # DuckDB's type name, e.g. BIGINT, VARCHAR, DECIMAL(10,2)


@dataclass(frozen=True)
class TableRef:
    sql_name: str  # the identifier SQL uses for this table, [a-z0-9_]+
    parquet: Path | str  # a local path, or a URL that ``filesystem`` serves
    rows: int  # from the Parquet metadata: known without a scan
    columns: list[Column]
    # An fsspec filesystem DuckDB reads ``parquet`` through (object storage: the DuckDB
    # wheel has no httpfs); None for a local file.
    filesystem: Any = field(default=None, compare=False)

    @property
    def location(self) -> str:
        """What DuckDB opens: an absolute local path, or the URL as is."""
        if self.filesystem is None:
            return os.path.abspath(self.parquet)
        return str(self.parquet)


# (column, operator, raw value from the query string)
Filter = tuple[str, str, str]

OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "contains", "in", "isnull")
MAX_IN_VALUES = 1000
_COMPARISONS = {"eq": "=", "ne": "IS DISTINCT FROM", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
# Statement types as a user would name them (DuckDB files INSTALL under LOAD, RESET under SET).
_KIND_NAMES = {"LOAD": "INSTALL or LOAD", "SET": "SET or RESET", "VARIABLE_SET": "SET VARIABLE"}
_SQL_NAME = re.compile(r"[a-z0-9_]+")
_MEMORY = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B|B)", re.IGNORECASE)
# Rows a Parquet row group gathers before the streamed file gets it: fewer, larger groups read
# faster later than one group per DuckDB batch.
_PARQUET_GROUP_ROWS = 100_000

# Settings every database here starts with. Replacement scans would let SQL read any Python
# variable in the calling frame as a table; auto-install and auto-load would let SQL fetch
# and load extensions, and a user's server may be online.
_SAFE_CONFIG: dict[str, Any] = {
    "python_enable_replacements": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


# ---------------------------------------------------------------------------------------------
# Filters, sort and paging for the rows API


def parse_filters(params: Iterable[tuple[str, str]], reserved: set[str]) -> list[Filter]:
    """`col=v` is an equality, `col__gt=v` a comparison; keys in `reserved` are not filters.

    The operator is what follows the last `__`, so a column whose own name holds `__` is
    filtered as `a__b__eq=v`.
    """
    filters: list[Filter] = []
    for key, value in params:
        if key in reserved:
            continue
        column, op = key, "eq"
        if "__" in key:
            column, _, op = key.rpartition("__")
            if op not in OPERATORS:
                raise BadRequest(
                    f"unknown filter operator {op!r} in {key!r}; use one of {', '.join(OPERATORS)}",
                    field=key,
                )
        if not column:
            raise BadRequest(f"filter {key!r} names no column", field=key)
        filters.append((column, op, value))
    return filters


@dataclass(frozen=True)
class _Sort:
    column: str
    descending: bool


@dataclass(frozen=True)
class _Query:
    """A WHERE clause and its parameters."""

    where: list[str]
    params: list[Any]

    def sql(self) -> str:
        return f"WHERE {' AND '.join(self.where)}" if self.where else ""


def read_rows(
    table: TableRef,
    *,
    limit: int = 100,
    offset: int = 0,
    sort: str | None = None,
    filters: Sequence[Filter] = (),
    cursor: str | None = None,
    max_limit: int = 1000,
) -> dict[str, Any]:
    """One page of a table: `{columns, rows, total, next}`; `next` is None on the last page.

    Rows come in file order unless sorted; ties and nulls (always last) are broken by file
    order, so keyset paging with `next` visits every row exactly once.
    """
    _check_page(limit, offset, max_limit, cursor)
    types = {c.name: c.type for c in table.columns}
    if "file_row_number" in types:
        # The file's own column would hide the row number paging is built on.
        raise BadRequest(f"table {table.sql_name} has a column named file_row_number")
    order = _parse_sort(sort, types)
    query = _filter_query(filters, types)
    fingerprint = _fingerprint(table, order, filters)
    with _reader(table.filesystem) as cur:
        _check_values(cur, filters, types)
        if cursor is not None:
            _add_keyset(cur, query, order, types, _decode_cursor(cursor, fingerprint))
        elif offset and order is None and not filters:
            # In file order without filters, row n is file row n: seek, don't scan past.
            query.where.append("file_row_number >= ?")
            query.params.append(offset)
            offset = 0
        rows, last = _fetch_page(cur, table, order, query, limit, offset)
        total = table.rows if not filters else _count(cur, table, _filter_query(filters, types))
    return {
        "columns": [{"name": c.name, "type": c.type} for c in table.columns],
        "rows": rows,
        "total": total,
        "next": _encode_cursor(fingerprint, last) if last is not None else None,
    }


def _check_page(limit: int, offset: int, max_limit: int, cursor: str | None) -> None:
    if not 1 <= limit <= max_limit:
        raise BadRequest(f"limit must be between 1 and {max_limit}", field="limit")
    if offset < 0:
        raise BadRequest("offset must be 0 or more", field="offset")
    if cursor is not None and offset:
        raise BadRequest("use either offset or next, not both", field="offset")


def _parse_sort(sort: str | None, types: Mapping[str, str]) -> _Sort | None:
    if not sort:
        return None
    # A column whose name starts with "-" is still sortable ascending by its exact name.
    if sort in types:
        return _Sort(sort, descending=False)
    if sort.startswith("-") and sort[1:] in types:
        return _Sort(sort[1:], descending=True)
    raise BadRequest(f"cannot sort by unknown column {sort.lstrip('-')!r}", field="sort")


def _filter_query(filters: Sequence[Filter], types: Mapping[str, str]) -> _Query:
    query = _Query([], [])
    for column, op, value in filters:
        if column not in types:
            raise BadRequest(f"cannot filter on unknown column {column!r}", field=column)
        col, cast = _quote(column), _cast(types[column])
        if op in _COMPARISONS:
            query.where.append(f"{col} {_COMPARISONS[op]} {cast}")
            query.params.append(value)
        elif op == "contains":
            # Case-insensitive substring of the value as text; no LIKE, so % and _ are literal.
            query.where.append(f"contains(lower(CAST({col} AS VARCHAR)), lower(?))")
            query.params.append(value)
        elif op == "in":
            items = _in_values(column, value)
            query.where.append(f"{col} IN ({', '.join([cast] * len(items))})")
            query.params.extend(items)
        elif op == "isnull":
            if value not in ("1", "0"):
                raise BadRequest(f"{column}__isnull takes 1 or 0, not {value!r}", field=column)
            query.where.append(f"{col} IS {'' if value == '1' else 'NOT '}NULL")
        else:
            raise BadRequest(f"unknown filter operator {op!r}", field=column)
    return query


def _in_values(column: str, value: str) -> list[str]:
    items = value.split(",")
    if len(items) > MAX_IN_VALUES:
        raise BadRequest(f"{column}__in takes at most {MAX_IN_VALUES} values", field=column)
    return items


def _check_values(
    cur: duckdb.DuckDBPyConnection, filters: Sequence[Filter], types: Mapping[str, str]
) -> None:
    """Refuse, naming the column, a value that is not of its column's type ("abc" for BIGINT)."""
    for column, op, value in filters:
        if op in _COMPARISONS:
            items = [value]
        elif op == "in":
            items = _in_values(column, value)
        else:
            continue
        for item in items:
            if not _castable(cur, item, types[column]):
                raise BadRequest(
                    f"{item!r} is not a valid {types[column]} for column {column!r}", field=column
                )


def _castable(cur: duckdb.DuckDBPyConnection, value: str, type_name: str) -> bool:
    try:
        cur.execute(f"SELECT {_cast(type_name)}", [value]).fetchall()
    except duckdb.Error:
        return False
    return True


def _add_keyset(
    cur: duckdb.DuckDBPyConnection,
    query: _Query,
    order: _Sort | None,
    types: Mapping[str, str],
    after: tuple[int, str | None],
) -> None:
    """Rows strictly after the last row of the previous page in (sort key, file row) order."""
    row, key = after
    if order is None:
        query.where.append("file_row_number > ?")
        query.params.append(row)
        return
    col = _quote(order.column)
    if key is None:
        # Nulls come last in both directions: after a null only later nulls remain.
        query.where.append(f"({col} IS NULL AND file_row_number > ?)")
        query.params.append(row)
        return
    if not _castable(cur, key, types[order.column]):
        raise BadRequest("invalid cursor; start again from the first page", field="next")
    beyond, cast = "<" if order.descending else ">", _cast(types[order.column])
    query.where.append(
        f"({col} {beyond} {cast} OR ({col} = {cast} AND file_row_number > ?) OR {col} IS NULL)"
    )
    query.params.extend([key, key, row])


def _fetch_page(
    cur: duckdb.DuckDBPyConnection,
    table: TableRef,
    order: _Sort | None,
    query: _Query,
    limit: int,
    offset: int,
) -> tuple[list[list[Any]], tuple[int, str | None] | None]:
    """The page's rows, and the (file row, sort key text) of its last row if more follow."""
    names = ", ".join(_quote(c.name) for c in table.columns)
    source = f"SELECT {names}, file_row_number FROM read_parquet(?, file_row_number=true)"
    params = [table.location, *query.params, limit + 1, offset]
    if order is None:
        sql = f"{source} {query.sql()} ORDER BY file_row_number LIMIT ? OFFSET ?"
    else:
        key = _quote(order.column)
        ordering = f"{key} {'DESC' if order.descending else 'ASC'} NULLS LAST, file_row_number"
        page = f"{source} {query.sql()} ORDER BY {ordering} LIMIT ? OFFSET ?"
        # The key's text (it casts back exactly) is computed on the page only: in the inner
        # SELECT it would be computed for every row the sort reads.
        sql = f"SELECT *, CAST({key} AS VARCHAR) FROM ({page}) ORDER BY {ordering}"
    # One row more than asked says whether a next page exists.
    fetched = cur.execute(sql, params).fetchall()
    width = len(table.columns)
    rows = [[_json_value(v) for v in r[:width]] for r in fetched[:limit]]
    if len(fetched) <= limit:
        return rows, None
    last = fetched[limit - 1]
    return rows, (int(last[width]), last[width + 1] if order is not None else None)


# Filtered totals by (Parquet file, WHERE clause, parameters). A table's Parquet is
# content-addressed and never changes, so a count stays true: paging through a filter
# counts its rows once, not once a page.
COUNT_CACHE_SIZE = 4096
_counts: OrderedDict[tuple[Any, ...], int] = OrderedDict()
_counts_lock = threading.Lock()


def _count(cur: duckdb.DuckDBPyConnection, table: TableRef, query: _Query) -> int:
    key = (str(table.parquet), query.sql(), tuple(str(p) for p in query.params))
    with _counts_lock:
        if (known := _counts.get(key)) is not None:
            _counts.move_to_end(key)
            return known
    sql = f"SELECT count(*) FROM read_parquet(?) {query.sql()}"
    found = cur.execute(sql, [table.location, *query.params]).fetchone()
    total = int(found[0]) if found else 0
    with _counts_lock:
        _counts[key] = total
        if len(_counts) > COUNT_CACHE_SIZE:
            _counts.popitem(last=False)
    return total


def _fingerprint(table: TableRef, order: _Sort | None, filters: Sequence[Filter]) -> str:
    """What a cursor is valid for: this Parquet file (new versions renumber rows), sort, filters."""
    what = [
        str(table.parquet),
        [order.column, order.descending] if order else None,
        sorted(filters),
    ]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]


def _encode_cursor(fingerprint: str, last: tuple[int, str | None]) -> str:
    payload = json.dumps({"f": fingerprint, "r": last[0], "k": last[1]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _decode_cursor(token: str, fingerprint: str) -> tuple[int, str | None]:
    # Not signed: a forged position only moves the page; the fingerprint catches mix-ups.
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("invalid cursor; start again from the first page", field="next") from exc
    if not (
        isinstance(payload, dict)
        and isinstance(payload.get("f"), str)
        and type(payload.get("r")) is int
        and (payload.get("k") is None or isinstance(payload.get("k"), str))
    ):
        raise BadRequest("invalid cursor; start again from the first page", field="next")
    if payload["f"] != fingerprint:
        raise BadRequest(
            "this cursor belongs to another table, sort or filter; start again from the first page",
            field="next",
        )
    return payload["r"], payload["k"]


# The database the rows API shares, one per filesystem the tables are read through (None:
# local files). A registered filesystem answers for its protocol in that whole database.
_rows_databases: OrderedDict[int, tuple[Any, duckdb.DuckDBPyConnection]] = OrderedDict()


def _rows_database(filesystem: Any = None) -> duckdb.DuckDBPyConnection:
    found = _rows_databases.get(id(filesystem))
    if found is None or found[0] is not filesystem:
        con = duckdb.connect(config=_SAFE_CONFIG)
        if filesystem is not None:
            con.register_filesystem(filesystem)
        found = _rows_databases[id(filesystem)] = (filesystem, con)
        if len(_rows_databases) > 8:  # hubs come and go in tests; a server has one
            _rows_databases.popitem(last=False)
    _rows_databases.move_to_end(id(filesystem))
    return found[1]


_rows_lock = threading.Lock()


@contextlib.contextmanager
def _reader(filesystem: Any = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor of its own on the shared database: a cursor serves one thread at a time."""
    with _rows_lock:
        cur = _rows_database(filesystem).cursor()
    try:
        yield cur
    finally:
        cur.close()


@functools.lru_cache(maxsize=256)
def _cast(type_name: str) -> str:
    """`CAST(? AS type)`, the type re-printed by DuckDB's parser so nothing else reaches SQL."""
    with _rows_lock:
        parsed = _rows_database(None).sqltype(type_name)
    return f"CAST(? AS {parsed})"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------------
# Values as JSON


def _json_value(value: Any) -> Any:
    """A value as JSON can carry it: ISO dates and times, floats for decimals, None for NaN."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float | Decimal):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, datetime | date | clock):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _iso_duration(0, value.days, value.seconds * 10**6 + value.microseconds)
    if isinstance(value, pa.MonthDayNano):
        return _iso_duration(value.months, value.days, value.nanoseconds // 1000)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return str(value)


def _iso_duration(months: int, days: int, micros: int) -> str:
    seconds = f"{Decimal(micros) / 10**6:f}".rstrip("0").rstrip(".")
    return f"P{months}M{days}DT{seconds}S"


def _batch_rows(batch: pa.RecordBatch) -> list[list[Any]]:
    # By column, not to_pylist(): that makes dicts and would merge duplicate column names.
    columns = [[_json_value(v) for v in col.to_pylist()] for col in batch.columns]
    return [list(row) for row in zip(*columns, strict=True)]


# ---------------------------------------------------------------------------------------------
# The SQL sandbox


class Sandbox:
    """Runs one user's read-only SELECT over the given tables, and nothing else."""

    def __init__(
        self,
        tables: Mapping[str, TableRef],
        *,
        timeout_s: float = 30.0,
        memory_limit: str = "1GB",
        threads: int = 2,
    ) -> None:
        # Views are named by each TableRef's sql_name; the mapping's keys are not used.
        for t in tables.values():
            if not _SQL_NAME.fullmatch(t.sql_name):
                raise ValueError(f"invalid sql_name {t.sql_name!r}")
        if not _MEMORY.fullmatch(memory_limit):
            raise ValueError(f"invalid memory_limit {memory_limit!r}")
        self._tables = list(tables.values())
        self._timeout_s = timeout_s
        self._memory_limit = memory_limit
        self._threads = threads

    def run(self, sql: str, *, batch_rows: int = 10_000) -> QueryResult:
        """Start the query; refusals and failures to start are BadRequest with the reason."""
        result = QueryResult(self._timeout_s, self._memory_limit)
        try:
            result._start(self._tables, self._threads, sql, batch_rows)
        except BaseException:
            result.close()
            raise
        return result


class _Watchdog:
    """One thread that calls each query's time-limit callback when its deadline passes.

    A threading.Timer per query cost each query a thread: about 0.2 ms of CPU, and up to a
    millisecond of waiting for it to start, on a 2-core machine under load. The standard
    library has nothing shared (``sched`` does not wake for an earlier deadline added from
    another thread), hence this.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # [deadline, tie-breaker, callback or None once cancelled]; cancelled entries stay
        # until their deadline comes up, at most the time limit (30 s by default).
        self._heap: list[list[Any]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> list[Any]:
        """Call ``callback`` (in the watchdog's thread) in ``delay_s``; returns the handle
        that ``cancel`` takes."""
        entry = [time.monotonic() + delay_s, next(self._order), callback]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="khazna-sql-watchdog", daemon=True
                )
                self._thread.start()
            if self._heap[0] is entry:  # the thread waits for a later deadline, or none
                self._cond.notify()
        return entry

    def cancel(self, entry: list[Any]) -> None:
        with self._cond:
            entry[2] = None

    def pending(self) -> int:
        """Callbacks still to be called (for tests)."""
        with self._cond:
            return sum(1 for e in self._heap if e[2] is not None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2] is None:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait_s = self._heap[0][0] - time.monotonic()
                    if wait_s <= 0:
                        callback = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(wait_s)
            try:
                callback()
            except Exception:  # the thread serves every query: it must not die of one
                log.exception("a query's time-limit callback failed")


_WATCHDOG = _Watchdog()


class QueryResult:
    """A running query's rows as a stream of Arrow batches, rendered as JSON, CSV, Arrow or Parquet.

    A watchdog interrupts the query when the time limit passes, whether DuckDB is computing or
    the caller is still reading. Every rendering closes the result when it ends; close() is
    idempotent and frees the connection (and with it DuckDB's memory).
    """

    columns: list[Column]

    def __init__(self, timeout_s: float, memory_limit: str) -> None:
        self.columns = []
        self._started = time.perf_counter()
        self._timeout_s = timeout_s
        self._memory_limit = memory_limit
        self._lock = threading.Lock()
        self._closed = False
        self._timed_out = False
        self._on_close: list[Callable[[], None]] = []
        self._con: duckdb.DuckDBPyConnection | None = None
        self._reader: pa.RecordBatchReader | None = None
        self._names: list[tuple[str, str]] = []  # (path text, what messages show instead)
        self._deadline = _WATCHDOG.call_later(timeout_s, self._interrupt)

    def __enter__(self) -> QueryResult:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- starting -----------------------------------------------------------------------------

    def _start(self, tables: list[TableRef], threads: int, sql: str, batch_rows: int) -> None:
        self._hide_paths(tables)
        try:
            database = _locked_database(tables, threads, self._memory_limit, self._timeout_s)
        except duckdb.Error as exc:
            # The hub's own files failed to open: not the caller's fault.
            # Only the first line: the next ones quote the view's SQL, cut inside the path.
            detail = self._scrub(str(exc)).splitlines()[0]
            raise KhaznaError(f"tables could not be opened: {detail}") from None
        with self._lock:
            # A cursor is this query's own connection to the shared, locked database: its
            # interrupt stops this query only.
            self._con = con = database.cursor()
        if self._timed_out:  # the watchdog fired before there was a connection to interrupt
            raise self._time_limit()
        statement = self._single_select(con, sql)
        try:
            self.columns, self._reader = _stream(con, statement, batch_rows)
        except (duckdb.Error, OSError, pa.ArrowException) as exc:
            raise self._failure(exc) from None

    def _hide_paths(self, tables: list[TableRef]) -> None:
        """Messages name a table's file by the table's name: where the hub keeps its files is
        none of the caller's business. DuckDB may print a path as given or resolved."""
        for t in tables:
            shown_as = {str(t.parquet), t.location}
            if t.filesystem is None:
                shown_as |= {os.path.abspath(t.parquet), os.path.realpath(t.parquet)}
            for shown in shown_as:
                self._names.append((shown, t.sql_name))
        # Longest first, so a path is replaced before any shorter path inside it.
        self._names.sort(key=lambda pair: -len(pair[0]))

    def _single_select(self, con: duckdb.DuckDBPyConnection, sql: str) -> Any:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise BadRequest(f"SQL syntax error: {self._scrub(str(exc))}") from None
        if not statements:
            raise BadRequest("no SQL statement given")
        if len(statements) > 1:
            raise BadRequest(f"send one SQL statement at a time, not {len(statements)}")
        kind = statements[0].type.name
        if kind != "SELECT":
            kind = _KIND_NAMES.get(kind, kind.replace("_", " "))
            raise BadRequest(f"only read-only SELECT queries can run here, not {kind} statements")
        return statements[0]

    # -- the watchdog and errors --------------------------------------------------------------

    def _interrupt(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._timed_out = True
            if self._con is not None:
                self._con.interrupt()

    def _time_limit(self) -> BadRequest:
        return BadRequest(f"query exceeded the {self._timeout_s:g} s time limit")

    def _failure(self, exc: BaseException) -> BadRequest:
        """What to tell the caller about an error DuckDB (or Arrow, while streaming) raised."""
        message = self._scrub(str(exc))
        if self._timed_out or isinstance(exc, duckdb.InterruptException):
            return self._time_limit()
        if isinstance(exc, duckdb.OutOfMemoryException) or message.startswith("Out of Memory"):
            return BadRequest(
                f"query needed more than its {self._memory_limit} memory limit; "
                "aggregate or filter more, or select fewer columns"
            )
        if isinstance(exc, duckdb.PermissionException) or message.startswith("Permission Error"):
            return BadRequest(
                "queries can read only the tables they name, not files, URLs or extensions "
                f"({message.splitlines()[0]})"
            )
        return BadRequest(message)

    def _scrub(self, message: str) -> str:
        for path, name in self._names:
            message = message.replace(path, name)
        return message

    # -- reading ------------------------------------------------------------------------------

    def _batches(self) -> Iterator[pa.RecordBatch]:
        while True:
            if self._timed_out:
                raise self._time_limit()
            if self._closed or self._reader is None:
                return
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                return
            except (duckdb.Error, OSError, pa.ArrowException) as exc:
                raise self._failure(exc) from None
            yield batch

    def _schema(self) -> pa.Schema:
        if self._closed or self._reader is None:
            raise RuntimeError("query result is closed")
        return self._reader.schema

    def json(self, row_limit: int) -> dict[str, Any]:
        """The first `row_limit` rows; `truncated` says whether more were left."""
        try:
            rows: list[list[Any]] = []
            truncated = False
            for batch in self._batches():
                room = row_limit - len(rows)
                if batch.num_rows > room:
                    rows.extend(_batch_rows(batch.slice(0, room)))
                    truncated = True
                    break
                rows.extend(_batch_rows(batch))
            return {
                "columns": [{"name": c.name, "type": c.type} for c in self.columns],
                "rows": rows,
                "truncated": truncated,
                "elapsed_ms": round((time.perf_counter() - self._started) * 1000, 1),
            }
        finally:
            self.close()

    def csv(self) -> Iterator[bytes]:
        """CSV with a header line, one chunk per batch. Values without a CSV form (lists,
        structs, intervals, bytes) appear as their JSON text (bytes as base64)."""
        try:
            schema = _plain_schema(self._schema(), for_parquet=False)
            sink = _Chunks()
            writer = pa_csv.CSVWriter(sink, schema)
            for batch in self._batches():
                writer.write_batch(_plain_batch(batch, schema))
                yield sink.take()
            writer.close()
            if tail := sink.take():
                yield tail
        finally:
            self.close()

    def arrow_stream(self) -> Iterator[bytes]:
        """The Arrow IPC stream format, one message per batch."""
        try:
            sink = _Chunks()
            writer = pa_ipc.new_stream(sink, self._schema())
            for batch in self._batches():
                writer.write_batch(batch)
                yield sink.take()
            writer.close()
            if tail := sink.take():
                yield tail
        finally:
            self.close()

    def parquet(self) -> Iterator[bytes]:
        """A Parquet file, streamed: Parquet is written front to back (the footer goes last),
        so no temporary file is needed; a row group is sent as soon as it is complete."""
        try:
            schema = _plain_schema(self._schema(), for_parquet=True)
            sink = _Chunks()
            writer = pq.ParquetWriter(sink, schema)
            pending: list[pa.RecordBatch] = []
            for batch in self._batches():
                pending.append(_plain_batch(batch, schema))
                if sum(b.num_rows for b in pending) >= _PARQUET_GROUP_ROWS:
                    writer.write_table(pa.Table.from_batches(pending, schema))
                    pending = []
                    yield sink.take()
            if pending:
                writer.write_table(pa.Table.from_batches(pending, schema))
            writer.close()
            yield sink.take()
        finally:
            self.close()

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the result is closed (e.g. to give back a query slot)."""
        self._on_close.append(callback)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _WATCHDOG.cancel(self._deadline)
        try:
            if self._reader is not None:
                with contextlib.suppress(Exception):
                    self._reader.close()
            if self._con is not None:
                with contextlib.suppress(Exception):
                    self._con.close()
        finally:
            for callback in self._on_close:
                callback()


def _stream(
    con: duckdb.DuckDBPyConnection, statement: Any, batch_rows: int
) -> tuple[list[Column], pa.RecordBatchReader]:
    """Run one SELECT statement as a stream of Arrow batches; its columns with DuckDB's types.

    DuckDB's relations bind a statement to describe it, then bind it again to run it: on a
    Parquet table that costs 1-2 ms twice. Where this DuckDB has the engine call its
    relations run through, the statement is run once and its result describes itself.
    """
    if _engine_submit is not None:
        result = _engine_submit(con, statement.query, None, "stream", batch_rows)
        columns = [Column(str(d[0]), str(d[1])) for d in result.description]
        return columns, result.arrow_reader()
    relation = con.sql(statement)
    if relation is None:
        raise BadRequest("only a SELECT query that returns rows can run here")
    columns = [Column(n, str(t)) for n, t in zip(relation.columns, relation.types, strict=True)]
    return columns, relation.to_arrow_reader(batch_rows)


# Locked-down databases by the exact set of tables they show (and their limits). A table's
# Parquet is content-addressed and never changes, so a database stays valid; a caller only
# reaches one whose tables are exactly those it may read. Building one costs ~20 ms, a
# cursor on it under 1 ms. Concurrent queries on one database share its memory limit.
POOL_SIZE = 32
_pool: OrderedDict[tuple[Any, ...], duckdb.DuckDBPyConnection] = OrderedDict()
_pool_lock = threading.Lock()


def _locked_database(
    tables: list[TableRef], threads: int, memory_limit: str, timeout_s: float
) -> duckdb.DuckDBPyConnection:
    paths = [t.location for t in tables]
    filesystems = {id(t.filesystem): t.filesystem for t in tables if t.filesystem is not None}
    key = (
        tuple(sorted(zip((t.sql_name for t in tables), paths, strict=True))),
        tuple(sorted(filesystems)),
        threads,
        memory_limit,
        timeout_s,
    )
    with _pool_lock:
        if (found := _pool.get(key)) is not None:
            _pool.move_to_end(key)
            return found
    config = {**_SAFE_CONFIG, "threads": threads, "memory_limit": memory_limit}
    # No spilling to disk: the memory limit is a hard cap, and nothing is written.
    config["temp_directory"] = ""
    con = duckdb.connect(":memory:", config=config)
    for filesystem in filesystems.values():
        # Object storage: DuckDB opens s3:// URLs through it. allowed_paths (below) still
        # decides which URLs a query may open, exactly as for local files.
        con.register_filesystem(filesystem)
    for table, path in zip(tables, paths, strict=True):
        con.execute(f"CREATE VIEW {table.sql_name} AS SELECT * FROM read_parquet({_literal(path)})")
    _lock_down(con, paths, timeout_s)
    with _pool_lock:
        if (found := _pool.get(key)) is not None:
            con.close()
            return found
        _pool[key] = con
        if len(_pool) > POOL_SIZE:
            # Dropped, not closed: a query may still run on a cursor of it.
            _pool.popitem(last=False)
    return con


def _lock_down(con: duckdb.DuckDBPyConnection, paths: list[str], timeout_s: float) -> None:
    """After the views exist: allow only their files, then freeze every setting.

    allowed_paths only takes effect once set on a running database, and the views must be
    created before external access is off; lock_configuration must come last.
    """
    con.execute(f"SET allowed_paths=[{', '.join(_literal(p) for p in paths)}]")
    con.execute("SET enable_external_access=false")
    con.execute("SET autoinstall_known_extensions=false")
    con.execute("SET autoload_known_extensions=false")
    con.execute("SET enable_progress_bar=false")
    # Footers of the (immutable) Parquet files are read once per database, not per query.
    con.execute("SET parquet_metadata_cache=true")
    # DuckDB's own limit backs up the watchdog, with the same deadline, where DuckDB has one.
    with contextlib.suppress(duckdb.CatalogException):
        con.execute(f"SET max_execution_time={max(1, math.ceil(timeout_s * 1000))}")
    con.execute("SET lock_configuration=true")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class _Chunks:
    """A write-only file whose bytes are taken away chunk by chunk, for streamed writers."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts = []
        return data


def _needs_text(t: pa.DataType, *, for_parquet: bool) -> bool:
    """Types a writer cannot take: Parquet has no month-day-nano interval; CSV has no nesting
    and no bytes."""
    if pa.types.is_interval(t):
        return True
    if for_parquet:
        return False
    return bool(
        pa.types.is_nested(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
    )


def _plain_schema(schema: pa.Schema, *, for_parquet: bool) -> pa.Schema:
    return pa.schema(
        [
            pa.field(f.name, pa.string()) if _needs_text(f.type, for_parquet=for_parquet) else f
            for f in schema
        ]
    )


def _plain_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.equals(schema):
        return batch
    arrays = [
        col if col.type == field.type else pa.array(map(_text, col.to_pylist()), pa.string())
        for col, field in zip(batch.columns, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _text(value: Any) -> str | None:
    plain = _json_value(value)
    if plain is None or isinstance(plain, str):
        return plain
    return json.dumps(plain, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Which tables a query reads


@functools.cache
def _names_database() -> duckdb.DuckDBPyConnection:
    """An empty, locked database to parse and bind against: it opens no file, so asking it
    about `read_csv('/etc/passwd')` reads nothing."""
    con = duckdb.connect(config=_SAFE_CONFIG)
    con.execute("SET enable_external_access=false")
    con.execute("SET lock_configuration=true")
    return con


_names_lock = threading.Lock()


# Queries are often sent again (a dashboard, a notebook re-run): their table names are a
# function of the text alone, so the short ones are remembered. Refused ones are not.
_REMEMBERED_SQL_CHARS = 4096


def referenced_tables(sql: str) -> set[str]:
    """The table names a query reads, lower-cased as SQL folds them (CTE names excluded)."""
    if len(sql) <= _REMEMBERED_SQL_CHARS:
        return set(_remembered_names(sql))
    return _table_names(sql)


@functools.lru_cache(maxsize=512)
def _remembered_names(sql: str) -> frozenset[str]:
    return frozenset(_table_names(sql))


def _table_names(sql: str) -> set[str]:
    with _names_lock:
        cur = _names_database().cursor()
    try:
        try:
            names = cur.get_table_names(sql)
        except duckdb.BinderException as exc:
            # Binding against tables that don't exist trips on USING, NATURAL and ASOF joins;
            # the parse tree still names every table.
            names = _parsed_table_names(cur, sql, exc)
        except duckdb.ParserException as exc:
            raise BadRequest(f"SQL syntax error: {exc}") from None
        except duckdb.PermissionException as exc:
            raise BadRequest(
                "queries can read only the tables they name, not files, URLs or extensions "
                f"({str(exc).splitlines()[0]})"
            ) from None
        except duckdb.Error as exc:
            raise BadRequest(str(exc)) from None
    finally:
        cur.close()
    return {name.lower() for name in names}


def _parsed_table_names(cur: duckdb.DuckDBPyConnection, sql: str, error: duckdb.Error) -> set[str]:
    found = cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    tree = json.loads(found[0]) if found else {"error": True}
    if tree.get("error"):
        raise BadRequest(str(error))
    tables: set[str] = set()
    ctes: set[str] = set()
    _walk(tree, tables, ctes)
    # A name a CTE defines anywhere is not taken for a table: at worst a table the query
    # does read is left out, and then it does not exist for the query.
    return {t for t in tables if t.lower() not in ctes}


def _walk(node: Any, tables: set[str], ctes: set[str]) -> None:
    if isinstance(node, dict):
        if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
            tables.add(node["table_name"])
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            for entry in cte_map.get("map", []):
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    ctes.add(entry["key"].lower())
        for child in node.values():
            _walk(child, tables, ctes)
    elif isinstance(node, list):
        for child in node:
            _walk(child, tables, ctes)


# ---------------------------------------------------------------------------------------------
# How many queries at once


class QuerySlots:
    """At most ``size`` DuckDB queries of callers at once in this process (SQL and rows API):
    each may use up to the SQL memory limit, so the count bounds the memory. Past it a
    caller is told to come back, rather than queued behind queries that may run for long."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = threading.BoundedSemaphore(size)

    def take(self) -> QuerySlot:
        if not self._free.acquire(blocking=False):
            raise OverQuota(
                f"SQL concurrency: at most {self.size} queries at once in this hub process "
                f"(KHAZNA_SQL_CONCURRENCY); retry in 1 s",
                rule="sql_concurrency",
                limit=self.size,
                retry_after=1,
            )
        return QuerySlot(self._free)


class QuerySlot:
    """One taken slot; ``release`` gives it back once (later calls do nothing)."""

    def __init__(self, free: threading.BoundedSemaphore) -> None:
        self._free: threading.BoundedSemaphore | None = free
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            free, self._free = self._free, None
        if free is not None:
            free.release()
