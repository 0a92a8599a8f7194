"""Rows API and SQL sandbox over real Parquet files written here with DuckDB; exact values.

The small table is five Moroccan regions (RGPH 2024 populations); the large one is 200,000
generated rows with ties, NULLs and NaN in its sort columns, so keyset paging is tested where
it is hard.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest

from khazna.errors import BadRequest, KhaznaError
from khazna.tables import query as query_module
from khazna.tables.query import (
    Column,
    Sandbox,
    TableRef,
    parse_filters,
    read_rows,
    referenced_tables,
)

REGIONS_SQL = """
SELECT * FROM (VALUES
  (1, 'Tanger-Tétouan-Al Hoceïma', 'Tanger', 4030222, 15090.0, true,
   DATE '2024-09-01', TIMESTAMP '2024-11-05 10:00:00', 11.07),
  (3, 'Fès-Meknès', 'Fès', 4467911, 40075.0, false,
   DATE '2024-09-01', TIMESTAMP '2024-11-05 10:30:00', 12.27),
  (4, 'Rabat-Salé-Kénitra', 'Rabat', 5132639, NULL, true,
   DATE '2024-09-01', TIMESTAMP '2024-11-06 09:15:00', 14.10),
  (6, 'Casablanca-Settat', 'Casablanca', 7688967, 20166.0, true,
   DATE '2024-09-01', NULL, 21.12),
  (7, 'Marrakech-Safi', 'Marrakech', 4892393, 39167.0, true,
   DATE '2024-09-01', TIMESTAMP '2024-11-04 16:45:00', 13.44)
) AS t(code, name, capital, population, area_km2, coastal, census, updated, share)
"""
REGIONS_TYPES = "code INTEGER, population BIGINT, area_km2 DOUBLE, share DECIMAL(5,2)"

# The rows read_rows must return, JSON-ready, in file order.
REGION_ROWS = [
    [
        1,
        "Tanger-Tétouan-Al Hoceïma",
        "Tanger",
        4030222,
        15090.0,
        True,
        "2024-09-01",
        "2024-11-05T10:00:00",
        11.07,
    ],
    [3, "Fès-Meknès", "Fès", 4467911, 40075.0, False, "2024-09-01", "2024-11-05T10:30:00", 12.27],
    [
        4,
        "Rabat-Salé-Kénitra",
        "Rabat",
        5132639,
        None,
        True,
        "2024-09-01",
        "2024-11-06T09:15:00",
        14.1,
    ],
    [6, "Casablanca-Settat", "Casablanca", 7688967, 20166.0, True, "2024-09-01", None, 21.12],
    [
        7,
        "Marrakech-Safi",
        "Marrakech",
        4892393,
        39167.0,
        True,
        "2024-09-01",
        "2024-11-04T16:45:00",
        13.44,
    ],
]
REGION_COLUMNS = [
    {"name": "code", "type": "INTEGER"},
    {"name": "name", "type": "VARCHAR"},
    {"name": "capital", "type": "VARCHAR"},
    {"name": "population", "type": "BIGINT"},
    {"name": "area_km2", "type": "DOUBLE"},
    {"name": "coastal", "type": "BOOLEAN"},
    {"name": "census", "type": "DATE"},
    {"name": "updated", "type": "TIMESTAMP"},
    {"name": "share", "type": "DECIMAL(5,2)"},
]

BIG_ROWS = 200_000
# val: inexact doubles with many ties, NULL every 11th row, NaN every 13th; ts: ties too.
BIG_SQL = f"""
SELECT range AS id,
       'g' || (range % 7) AS grp,
       CASE WHEN range % 11 = 0 THEN NULL
            WHEN range % 13 = 0 THEN 'nan'::DOUBLE
            ELSE (range * 7919 % 1000) / 10.0 END AS val,
       TIMESTAMP '2024-01-01' + to_seconds(range % 5000) AS ts
FROM range({BIG_ROWS})
"""


def make_table(path: Path, sql_name: str, select_sql: str) -> TableRef:
    con = duckdb.connect()
    con.execute(f"COPY ({select_sql}) TO '{path}' (FORMAT parquet)")
    described = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()
    con.close()
    columns = [Column(name, type_name) for name, type_name, *_ in described]
    return TableRef(sql_name, path, pq.ParquetFile(path).metadata.num_rows, columns)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("query")


@pytest.fixture(scope="module")
def regions(folder: Path) -> TableRef:
    casts = ", ".join(
        f"{c.split()[0]}::{c.split(' ', 1)[1]} AS {c.split()[0]}" for c in REGIONS_TYPES.split(", ")
    )
    typed = f"SELECT * REPLACE ({casts}) FROM ({REGIONS_SQL})"
    return make_table(folder / "regions.parquet", "regions", typed)


@pytest.fixture(scope="module")
def cities(folder: Path) -> TableRef:
    sql = """SELECT * FROM (VALUES (6, 'Casablanca'), (6, 'Mohammedia'), (4, 'Rabat'),
             (4, 'Salé'), (4, 'Kénitra'), (1, 'Tanger')) AS t(region_code, city)"""
    return make_table(folder / "cities.parquet", "cities", sql)


@pytest.fixture(scope="module")
def big(folder: Path) -> TableRef:
    return make_table(folder / "big.parquet", "big", BIG_SQL)


def codes(page: dict[str, Any]) -> list[int]:
    return [row[0] for row in page["rows"]]


def expected_ids(table: TableRef, where: str, order: str) -> list[int]:
    sql = f"SELECT id FROM read_parquet('{table.parquet}') {where} ORDER BY {order}"
    return [r[0] for r in duckdb.connect().execute(sql).fetchall()]


# ---------------------------------------------------------------------------------------------
# parse_filters


def test_parse_filters_reads_operators_and_skips_reserved_keys():
    params = [
        ("capital", "Fès"),
        ("population__gt", "5"),
        ("limit", "2"),
        ("sort", "-code"),
        ("a__b__eq", "1"),
        ("code__in", "1,7"),
    ]
    assert parse_filters(params, {"limit", "sort", "offset", "next"}) == [
        ("capital", "eq", "Fès"),
        ("population", "gt", "5"),
        ("a__b", "eq", "1"),
        ("code", "in", "1,7"),
    ]


def test_parse_filters_refuses_an_unknown_operator():
    with pytest.raises(BadRequest, match="unknown filter operator 'near' in 'code__near'"):
        parse_filters([("code__near", "1")], set())


# ---------------------------------------------------------------------------------------------
# read_rows: values, filters, sort, offset


def test_first_page_is_every_region_json_ready_in_file_order(regions: TableRef):
    page = read_rows(regions)
    assert page == {"columns": REGION_COLUMNS, "rows": REGION_ROWS, "total": 5, "next": None}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([("capital", "eq", "Fès")], [3]),
        ([("code", "eq", "4")], [4]),
        ([("capital", "ne", "Fès")], [1, 4, 6, 7]),
        # ne is the complement of eq: the region without an area is not 40075 km².
        ([("area_km2", "ne", "40075")], [1, 4, 6, 7]),
        ([("population", "gt", "5000000")], [4, 6]),
        ([("population", "gte", "5132639")], [4, 6]),
        ([("area_km2", "lt", "20166")], [1]),
        ([("area_km2", "lte", "20166")], [1, 6]),
        # Compared as numbers, not text ("6" > "10" as text).
        ([("code", "lt", "10")], [1, 3, 4, 6, 7]),
        ([("name", "contains", "SAL")], [4]),
        ([("name", "contains", "%")], []),
        ([("capital", "in", "Rabat,Fès")], [3, 4]),
        ([("code", "in", "1,7")], [1, 7]),
        ([("area_km2", "isnull", "1")], [4]),
        ([("area_km2", "isnull", "0")], [1, 3, 6, 7]),
        ([("updated", "isnull", "1")], [6]),
        ([("census", "eq", "2024-09-01")], [1, 3, 4, 6, 7]),
        ([("updated", "gt", "2024-11-05 10:00:00")], [3, 4]),
        ([("coastal", "eq", "false")], [3]),
        ([("share", "gte", "14.1")], [4, 6]),
        ([("coastal", "eq", "true"), ("population", "lt", "5000000")], [1, 7]),
    ],
)
def test_filters(regions: TableRef, filters: list[tuple[str, str, str]], expected: list[int]):
    page = read_rows(regions, filters=filters)
    assert codes(page) == expected
    assert page["total"] == len(expected)
    assert page["next"] is None


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        (None, [1, 3, 4, 6, 7]),
        ("population", [1, 3, 7, 4, 6]),
        ("-population", [6, 4, 7, 3, 1]),
        ("capital", [6, 3, 7, 4, 1]),
        # NULLs come last in both directions.
        ("area_km2", [1, 6, 7, 3, 4]),
        ("-area_km2", [3, 7, 6, 1, 4]),
        ("updated", [7, 1, 3, 4, 6]),
        ("-updated", [4, 3, 1, 7, 6]),
        # Ties keep file order.
        ("census", [1, 3, 4, 6, 7]),
        ("-census", [1, 3, 4, 6, 7]),
    ],
)
def test_sort(regions: TableRef, sort: str | None, expected: list[int]):
    assert codes(read_rows(regions, sort=sort)) == expected


def test_offset_with_and_without_sort_and_filters(regions: TableRef):
    assert codes(read_rows(regions, limit=2, offset=1)) == [3, 4]
    assert codes(read_rows(regions, limit=2, offset=4)) == [7]
    assert codes(read_rows(regions, limit=2, offset=9)) == []
    assert codes(read_rows(regions, limit=2, offset=1, sort="-population")) == [4, 7]
    coastal = [("coastal", "eq", "true")]
    page = read_rows(regions, limit=2, offset=2, filters=coastal)
    assert (codes(page), page["total"]) == ([6, 7], 4)


def test_next_is_none_exactly_on_the_last_page(regions: TableRef):
    assert read_rows(regions, limit=5)["next"] is None
    first = read_rows(regions, limit=4)
    assert codes(first) == [1, 3, 4, 6]
    last = read_rows(regions, limit=4, cursor=first["next"])
    assert (codes(last), last["next"], last["total"]) == ([7], None, 5)
    # An offset page also hands out a cursor to continue from.
    middle = read_rows(regions, limit=2, offset=1, sort="-population")
    assert codes(read_rows(regions, limit=9, sort="-population", cursor=middle["next"])) == [
        3,
        1,
    ]


def test_total_without_filters_is_the_metadata_count_not_a_scan(regions: TableRef):
    # This TableRef claims a row count the file does not have. read_rows reports the claim:
    # had it counted the rows it would have said 5. With a filter it must count, and does.
    claimed = TableRef(regions.sql_name, regions.parquet, 123_456_789, regions.columns)
    assert read_rows(claimed, limit=1)["total"] == 123_456_789
    assert read_rows(claimed, filters=[("coastal", "eq", "true")])["total"] == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filters": [("code", "eq", "abc")]}, "'abc' is not a valid INTEGER for column 'code'"),
        ({"filters": [("census", "gt", "soon")]}, "'soon' is not a valid DATE for column 'census'"),
        ({"filters": [("coastal", "eq", "maybe")]}, "'maybe' is not a valid BOOLEAN"),
        ({"filters": [("code", "in", "1,x")]}, "'x' is not a valid INTEGER for column 'code'"),
        ({"filters": [("code", "isnull", "2")]}, "code__isnull takes 1 or 0"),
        ({"filters": [("region", "eq", "x")]}, "unknown column 'region'"),
        ({"filters": [("code", "like", "x")]}, "unknown filter operator 'like'"),
        ({"sort": "-region"}, "cannot sort by unknown column 'region'"),
        ({"limit": 0}, "limit must be between 1 and 1000"),
        ({"limit": 1001}, "limit must be between 1 and 1000"),
        ({"offset": -1}, "offset must be 0 or more"),
    ],
)
def test_bad_parameters_are_400s(regions: TableRef, kwargs: dict[str, Any], message: str):
    with pytest.raises(BadRequest, match=message):
        read_rows(regions, **kwargs)


def test_values_are_bound_never_spliced_into_sql(regions: TableRef):
    quote = [("capital", "eq", "x' OR '1'='1")]
    assert read_rows(regions, filters=quote)["rows"] == []
    assert read_rows(regions, filters=[("name", "contains", "'")])["rows"] == []


def test_a_column_named_file_row_number_is_refused_clearly(folder: Path):
    odd = make_table(folder / "odd.parquet", "odd", "SELECT 1 AS file_row_number")
    with pytest.raises(BadRequest, match="column named file_row_number"):
        read_rows(odd)


# ---------------------------------------------------------------------------------------------
# read_rows: keyset paging


def walk(table: TableRef, **kwargs: Any) -> list[int]:
    """Every id, following `next` from the first page to the last."""
    ids: list[int] = []
    cursor = None
    while True:
        page = read_rows(table, limit=1000, cursor=cursor, **kwargs)
        ids.extend(codes(page))
        cursor = page["next"]
        if cursor is None:
            return ids


def test_cursor_paging_in_file_order_visits_every_row_once(big: TableRef):
    assert walk(big) == list(range(BIG_ROWS))


@pytest.mark.parametrize(
    ("sort", "order"),
    [
        ("val", "val ASC NULLS LAST, id"),
        ("-val", "val DESC NULLS LAST, id"),
    ],
)
def test_cursor_paging_sorted_with_ties_nulls_and_nan(big: TableRef, sort: str, order: str):
    ids = walk(big, sort=sort)
    assert ids == expected_ids(big, "", order)
    assert len(set(ids)) == BIG_ROWS


def test_cursor_paging_sorted_descending_with_a_filter(big: TableRef):
    ids = walk(big, sort="-ts", filters=[("grp", "eq", "g3")])
    assert ids == expected_ids(big, "WHERE grp = 'g3'", "ts DESC NULLS LAST, id")
    assert len(ids) == len(set(ids)) == 28_571


def test_a_deep_cursor_page_is_a_seek(big: TableRef):
    page = read_rows(big, limit=3, offset=199_990)
    assert codes(page) == [199_990, 199_991, 199_992]
    assert codes(read_rows(big, limit=3, cursor=page["next"])) == [199_993, 199_994, 199_995]


def _token(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _payload(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return decoded


def test_tampered_and_foreign_cursors_are_400s(regions: TableRef, big: TableRef):
    by_val = read_rows(big, limit=10, sort="val")["next"]
    assert by_val is not None
    foreign = "belongs to another table, sort or filter"
    with pytest.raises(BadRequest, match=foreign):
        read_rows(big, limit=10, sort="-val", cursor=by_val)
    with pytest.raises(BadRequest, match=foreign):
        read_rows(big, limit=10, sort="val", filters=[("grp", "eq", "g1")], cursor=by_val)
    with pytest.raises(BadRequest, match=foreign):
        read_rows(regions, limit=10, cursor=by_val)
    invalid = "invalid cursor"
    for garbage in ["!!!", "bm90IGpzb24", _token({"f": "x"}), _token({"f": 1, "r": 2, "k": None})]:
        with pytest.raises(BadRequest, match=invalid):
            read_rows(big, limit=10, sort="val", cursor=garbage)
    forged = {**_payload(by_val), "k": "abc"}  # right fingerprint, a key that is no DOUBLE
    with pytest.raises(BadRequest, match=invalid):
        read_rows(big, limit=10, sort="val", cursor=_token(forged))
    with pytest.raises(BadRequest, match="either offset or next"):
        read_rows(big, limit=10, sort="val", cursor=by_val, offset=10)


def test_a_cursor_of_an_older_version_of_the_file_is_refused(regions: TableRef, folder: Path):
    first = read_rows(regions, limit=2)["next"]
    moved = TableRef(regions.sql_name, folder / "regions-v2.parquet", 5, regions.columns)
    with pytest.raises(BadRequest, match="belongs to another table"):
        read_rows(moved, limit=2, cursor=first)


# ---------------------------------------------------------------------------------------------
# Sandbox: what runs


def run_json(tables: dict[str, TableRef], sql: str, row_limit: int = 1000, **kw: Any) -> Any:
    return Sandbox(tables, **kw).run(sql).json(row_limit)


def test_views_work_after_lockdown_and_the_lock_holds(regions: TableRef):
    out = run_json(
        {"regions": regions},
        """SELECT count(*) AS n,
                  current_setting('lock_configuration') AS locked,
                  current_setting('enable_external_access') AS external,
                  current_setting('python_enable_replacements') AS python_vars,
                  current_setting('autoload_known_extensions') AS autoload
           FROM regions""",
    )
    assert out["rows"] == [[5, True, False, False, False]]
    assert out["columns"][0] == {"name": "n", "type": "BIGINT"}
    assert out["truncated"] is False
    assert out["elapsed_ms"] > 0


def test_rows_match_the_rows_api(regions: TableRef):
    out = run_json({"regions": regions}, "SELECT * FROM regions")
    assert out["rows"] == REGION_ROWS
    assert out["columns"] == REGION_COLUMNS


@pytest.mark.usefixtures("both_paths")
def test_a_join_across_two_tables(regions: TableRef, cities: TableRef):
    out = run_json(
        {"regions": regions, "cities": cities},
        """SELECT r.capital, count(*) AS cities FROM regions r
           JOIN cities c ON c.region_code = r.code GROUP BY ALL ORDER BY cities DESC, 1""",
    )
    assert out["rows"] == [["Rabat", 3], ["Casablanca", 2], ["Tanger", 1]]
    using = run_json(
        {"regions": regions, "cities": cities},
        "SELECT count(*) FROM regions JOIN (SELECT region_code AS code FROM cities) USING (code)",
    )
    assert using["rows"] == [[6]]


def test_a_table_absent_from_the_mapping_does_not_exist(regions: TableRef):
    with pytest.raises(BadRequest, match="Table with name cities does not exist"):
        Sandbox({"regions": regions}).run("SELECT * FROM cities")


def test_a_filtered_total_is_counted_once_per_filter(regions: TableRef):
    from khazna.tables import query

    filters = [("population", "gt", "1000")]
    first = read_rows(regions, filters=filters, limit=1)
    cached = len(query._counts)
    assert read_rows(regions, filters=filters, limit=1, offset=1)["total"] == first["total"]
    assert len(query._counts) == cached
    # Another filter is another count.
    read_rows(regions, filters=[("population", "lt", "1000")], limit=1)
    assert len(query._counts) == cached + 1


def test_a_pooled_database_never_shows_a_table_outside_the_callers_set(
    regions: TableRef, cities: TableRef
):
    from khazna.tables import query

    both = {"regions": regions, "cities": cities}
    assert run_json(both, "SELECT count(*) FROM cities", 10)["rows"] == [[cities.rows]]
    pooled = len(query._pool)
    assert run_json(both, "SELECT count(*) FROM regions", 10)["rows"] == [[5]]
    assert len(query._pool) == pooled  # the same set reuses its database
    # A caller allowed only regions gets another database, where cities does not exist.
    with pytest.raises(BadRequest, match="Table with name cities does not exist"):
        Sandbox({"regions": regions}).run("SELECT * FROM cities")


def test_python_variables_are_not_tables(regions: TableRef):
    secret = pa.table({"password": ["hunter2"]})
    assert secret.num_rows == 1
    with pytest.raises(BadRequest, match="Table with name secret does not exist"):
        Sandbox({"regions": regions}).run("SELECT * FROM secret")


def test_json_output_is_truncated_to_the_row_limit(big: TableRef, regions: TableRef):
    out = run_json({"big": big}, "SELECT id FROM big", row_limit=10)
    assert out["rows"] == [[i] for i in range(10)]
    assert out["truncated"] is True
    assert run_json({"regions": regions}, "SELECT code FROM regions", 5)["truncated"] is False
    assert run_json({"regions": regions}, "SELECT code FROM regions", 4)["truncated"] is True
    out = run_json({"big": big}, "SELECT id FROM big WHERE id >= 199000", row_limit=1000)
    assert (len(out["rows"]), out["truncated"]) == (1000, False)


@pytest.fixture(params=["engine", "relations"])
def both_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox runs a statement through the engine call DuckDB's relations use, or, in
    a DuckDB without it, through the public relation API: both must answer alike."""
    if request.param == "relations":
        monkeypatch.setattr(query_module, "_engine_submit", None)
    elif query_module._engine_submit is None:
        pytest.skip("this DuckDB has no engine call: only its relation API is used")


@pytest.mark.usefixtures("both_paths")
def test_values_without_a_plain_json_form(regions: TableRef):
    sql = r"""SELECT [1, 2] AS l, {'a': 1, 'b': 'x'} AS s, '\x00\xff'::BLOB AS b,
                     INTERVAL 3 DAY + INTERVAL 1500 MILLISECOND AS i, 'nan'::DOUBLE AS n,
                     TIMESTAMPTZ '2024-03-01 12:00:00+00' AS tz, 12.5::DECIMAL(4,1) AS d"""
    result = Sandbox({}).run(sql)
    assert [c.type for c in result.columns] == [
        "INTEGER[]",
        "STRUCT(a INTEGER, b VARCHAR)",
        "BLOB",
        "INTERVAL",
        "DOUBLE",
        "TIMESTAMP WITH TIME ZONE",
        "DECIMAL(4,1)",
    ]
    assert result.json(10)["rows"] == [
        [[1, 2], {"a": 1, "b": "x"}, "AP8=", "P0M3DT1.5S", None, "2024-03-01T12:00:00+00:00", 12.5]
    ]
    csv_text = b"".join(Sandbox({}).run(sql).csv()).decode()
    assert list(csv.reader(io.StringIO(csv_text))) == [
        ["l", "s", "b", "i", "n", "tz", "d"],
        [
            "[1, 2]",
            '{"a": 1, "b": "x"}',
            "AP8=",
            "P0M3DT1.5S",
            "nan",
            "2024-03-01 12:00:00.000000+0000",
            "12.5",
        ],
    ]
    back = pq.read_table(io.BytesIO(b"".join(Sandbox({}).run(sql).parquet())))
    assert back.column("l").to_pylist() == [[1, 2]]
    assert back.column("i").to_pylist() == ["P0M3DT1.5S"]


# ---------------------------------------------------------------------------------------------
# Sandbox: what is refused


FILES = "can read only the tables they name, not files, URLs or extensions"
NOT_SELECT = "only read-only SELECT queries can run here"


# Every way out of the sandbox tried so far; tests/test_s3.py tries them on S3 tables too.
ESCAPES = [
    ("SELECT * FROM read_parquet('/etc/passwd')", FILES),
    ("SELECT * FROM read_csv('/etc/passwd')", FILES),
    ("SELECT * FROM read_csv_auto('/etc/passwd')", FILES),
    ("SELECT * FROM read_json('/etc/passwd')", FILES),
    ("SELECT * FROM read_text('/etc/passwd')", FILES),
    ("SELECT * FROM '/etc/passwd'", "Table with name /etc/passwd does not exist"),
    ("SELECT * FROM read_parquet('{folder}/*.parquet')", FILES),
    ("SELECT * FROM read_parquet(['{folder}/regions.parquet', '{folder}/big.parquet'])", FILES),
    ("SELECT * FROM glob('/*')", FILES),
    ("SELECT * FROM glob('{folder}/*')", FILES),
    ("SELECT * FROM 'https://example.com/data.parquet'", FILES),
    ("SELECT * FROM read_csv('http://example.com/data.csv')", FILES),
    ("SELECT * FROM read_parquet('s3://bucket/data.parquet')", FILES),
    ("COPY regions TO '/tmp/out.csv'", f"{NOT_SELECT}, not COPY"),
    ("COPY (SELECT 1) TO '/tmp/out.parquet' (FORMAT parquet)", f"{NOT_SELECT}, not COPY"),
    ("ATTACH '/tmp/other.db'", f"{NOT_SELECT}, not ATTACH"),
    ("INSTALL httpfs", f"{NOT_SELECT}, not INSTALL or LOAD"),
    ("LOAD httpfs", f"{NOT_SELECT}, not INSTALL or LOAD"),
    ("SET threads = 8", f"{NOT_SELECT}, not SET or RESET"),
    ("SET enable_external_access = true", f"{NOT_SELECT}, not SET or RESET"),
    ("RESET memory_limit", f"{NOT_SELECT}, not SET or RESET"),
    ("PRAGMA version", f"{NOT_SELECT}, not PRAGMA"),
    ("CALL pragma_version()", f"{NOT_SELECT}, not CALL"),
    ("EXPLAIN SELECT * FROM regions", f"{NOT_SELECT}, not EXPLAIN"),
    ("CREATE TABLE t AS SELECT 1", f"{NOT_SELECT}, not CREATE"),
    ("CREATE VIEW v AS SELECT * FROM regions", f"{NOT_SELECT}, not CREATE"),
    ("INSERT INTO regions SELECT * FROM regions", f"{NOT_SELECT}, not INSERT"),
    ("UPDATE regions SET code = 0", f"{NOT_SELECT}, not UPDATE"),
    ("DELETE FROM regions", f"{NOT_SELECT}, not DELETE"),
    ("DROP VIEW regions", f"{NOT_SELECT}, not DROP"),
    ("SELECT 1; SELECT 2", "send one SQL statement at a time, not 2"),
    ("SELECT 1; DROP VIEW regions", "send one SQL statement at a time, not 2"),
    ("SELECT * FROM query('COPY regions TO ''/tmp/x.csv''')", "Expected a single SELECT"),
    ("", "no SQL statement given"),
    ("-- nothing", "no SQL statement given"),
    ("SELEC 1", "SQL syntax error"),
]


@pytest.mark.usefixtures("both_paths")
@pytest.mark.parametrize(("sql", "message"), ESCAPES)
def test_escapes_are_refused(regions: TableRef, folder: Path, sql: str, message: str):
    with pytest.raises(BadRequest, match=message.replace("(", r"\(")):
        Sandbox({"regions": regions}).run(sql.format(folder=folder)).json(10)


def test_messages_name_tables_not_the_hubs_file_paths(regions: TableRef, folder: Path):
    # A caller who learns a table's path (current_setting('allowed_paths') shows it) may read
    # that file, but errors still name the table instead of where the hub keeps it.
    with pytest.raises(BadRequest) as caught:
        Sandbox({"regions": regions}).run(f"SELECT * FROM read_csv('{regions.parquet}')")
    assert 'Error when sniffing file "regions"' in caught.value.message
    assert str(folder) not in caught.value.message
    missing = TableRef("gone", folder / "gone.parquet", 1, [Column("x", "INTEGER")])
    with pytest.raises(KhaznaError) as failed:
        Sandbox({"gone": missing}).run("SELECT 1")
    # The hub's own file is missing: a server fault, not a 400.
    assert not isinstance(failed.value, BadRequest)
    assert failed.value.message.startswith("tables could not be opened")
    assert '"gone"' in failed.value.message
    assert str(folder) not in failed.value.message


@pytest.mark.usefixtures("both_paths")
def test_a_long_query_stops_at_the_time_limit(regions: TableRef):
    started = time.monotonic()
    with pytest.raises(BadRequest, match="query exceeded the 1 s time limit"):
        Sandbox({}, timeout_s=1).run("SELECT sum(range) FROM range(10_000_000_000)").json(10)
    assert time.monotonic() - started < 3
    assert run_json({"regions": regions}, "SELECT count(*) FROM regions")["rows"] == [[5]]


@pytest.mark.usefixtures("both_paths")
def test_the_time_limit_also_holds_while_the_caller_streams():
    result = Sandbox({}, timeout_s=1).run("SELECT range FROM range(10_000_000_000)")
    chunks = result.csv()
    assert next(chunks).startswith(b'"range"\n0\n1\n')
    time.sleep(1.2)
    with pytest.raises(BadRequest, match="query exceeded the 1 s time limit"):
        for _ in chunks:
            pass


def test_one_watchdog_thread_keeps_every_deadline_in_order() -> None:
    def watchdogs() -> int:
        return [t.name for t in threading.enumerate()].count("khazna-sql-watchdog")

    before = watchdogs()
    watchdog = query_module._Watchdog()
    called: list[str] = []
    done = threading.Event()

    def note(name: str) -> Callable[[], None]:
        def call() -> None:
            called.append(name)
            if name == "last":
                done.set()

        return call

    def fail() -> None:
        raise RuntimeError("a callback that fails")

    watchdog.call_later(0.30, note("last"))
    watchdog.call_later(0.10, note("second"))
    cancelled = watchdog.call_later(0.05, note("cancelled"))
    watchdog.call_later(0.02, fail)  # the thread goes on after it
    watchdog.call_later(0.01, note("first"))  # added last, earliest: wakes the thread
    watchdog.cancel(cancelled)
    assert done.wait(5)
    assert called == ["first", "second", "last"]
    assert watchdog.pending() == 0
    assert watchdogs() == before + 1  # five deadlines, one thread


def test_a_finished_query_leaves_no_deadline_behind(regions: TableRef) -> None:
    before = query_module._WATCHDOG.pending()
    assert run_json({"regions": regions}, "SELECT count(*) FROM regions")["rows"] == [[5]]
    assert query_module._WATCHDOG.pending() == before


def test_the_memory_limit_is_a_clear_400():
    with pytest.raises(BadRequest, match="query needed more than its 64MB memory limit"):
        run_json({}, "SELECT list(range) FROM range(100_000_000)", memory_limit="64MB")


@pytest.mark.usefixtures("both_paths")
def test_an_error_while_streaming_is_a_400(big: TableRef):
    sql = "SELECT CASE WHEN id = 150000 THEN error('boom at 150000') ELSE id END FROM big"
    with pytest.raises(BadRequest, match="boom at 150000"):
        for _ in Sandbox({"big": big}).run(sql, batch_rows=1000).csv():
            pass


def test_a_result_is_closed_after_rendering_and_close_is_idempotent(regions: TableRef):
    result = Sandbox({"regions": regions}).run("SELECT code FROM regions")
    assert result.json(1)["rows"] == [[1]]
    result.close()
    with pytest.raises(RuntimeError, match="closed"):
        list(result.csv())
    with Sandbox({"regions": regions}).run("SELECT code FROM regions") as unread:
        assert [c.name for c in unread.columns] == ["code"]


# ---------------------------------------------------------------------------------------------
# Sandbox: output formats parse back exactly


def test_csv_parses_back(regions: TableRef):
    body = b"".join(Sandbox({"regions": regions}).run("SELECT * FROM regions").csv())
    assert list(csv.reader(io.StringIO(body.decode()))) == [
        [c["name"] for c in REGION_COLUMNS],
        [
            "1",
            "Tanger-Tétouan-Al Hoceïma",
            "Tanger",
            "4030222",
            "15090",
            "true",
            "2024-09-01",
            "2024-11-05 10:00:00.000000",
            "11.07",
        ],
        [
            "3",
            "Fès-Meknès",
            "Fès",
            "4467911",
            "40075",
            "false",
            "2024-09-01",
            "2024-11-05 10:30:00.000000",
            "12.27",
        ],
        [
            "4",
            "Rabat-Salé-Kénitra",
            "Rabat",
            "5132639",
            "",
            "true",
            "2024-09-01",
            "2024-11-06 09:15:00.000000",
            "14.10",
        ],
        [
            "6",
            "Casablanca-Settat",
            "Casablanca",
            "7688967",
            "20166",
            "true",
            "2024-09-01",
            "",
            "21.12",
        ],
        [
            "7",
            "Marrakech-Safi",
            "Marrakech",
            "4892393",
            "39167",
            "true",
            "2024-09-01",
            "2024-11-04 16:45:00.000000",
            "13.44",
        ],
    ]


def test_arrow_and_parquet_parse_back(regions: TableRef):
    expected = duckdb.connect().sql(f"SELECT * FROM read_parquet('{regions.parquet}')")
    table = expected.to_arrow_table()
    stream = b"".join(Sandbox({"regions": regions}).run("SELECT * FROM regions").arrow_stream())
    assert pa_ipc.open_stream(stream).read_all().equals(table)
    body = b"".join(Sandbox({"regions": regions}).run("SELECT * FROM regions").parquet())
    assert body[:4] == body[-4:] == b"PAR1"
    assert pq.read_table(io.BytesIO(body)).equals(table)


@pytest.mark.usefixtures("both_paths")
def test_empty_results_still_carry_their_columns(regions: TableRef):
    sql = "SELECT code, name FROM regions WHERE false"
    assert b"".join(Sandbox({"regions": regions}).run(sql).csv()) == b'"code","name"\n'
    stream = b"".join(Sandbox({"regions": regions}).run(sql).arrow_stream())
    assert pa_ipc.open_stream(stream).read_all().column_names == ["code", "name"]
    body = b"".join(Sandbox({"regions": regions}).run(sql).parquet())
    assert pq.read_table(io.BytesIO(body)).num_rows == 0


@pytest.mark.usefixtures("both_paths")
def test_large_csv_streams_in_chunks(big: TableRef):
    chunks = list(Sandbox({"big": big}).run("SELECT id, grp FROM big ORDER BY id").csv())
    assert len(chunks) >= 10
    rows = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
    assert rows[0] == ["id", "grp"]
    assert rows[1:] == [[str(i), f"g{i % 7}"] for i in range(BIG_ROWS)]


def test_large_parquet_and_arrow_stream_in_chunks(big: TableRef):
    sql = "SELECT id, val FROM big ORDER BY id"
    chunks = list(Sandbox({"big": big}).run(sql).parquet())
    assert len(chunks) >= 2
    back = pq.read_table(io.BytesIO(b"".join(chunks)))
    assert back.column("id").to_pylist() == list(range(BIG_ROWS))
    chunks = list(Sandbox({"big": big}).run(sql).arrow_stream())
    assert len(chunks) >= 10
    assert pa_ipc.open_stream(b"".join(chunks)).read_all().num_rows == BIG_ROWS


def test_queries_and_pages_run_side_by_side(regions: TableRef, big: TableRef):
    def page(i: int) -> list[int]:
        return codes(read_rows(big, limit=5, offset=i * 1000))

    def query(_: int) -> Any:
        return run_json({"regions": regions}, "SELECT sum(population) FROM regions")["rows"]

    with ThreadPoolExecutor(4) as pool:
        pages = list(pool.map(page, range(8)))
        sums = list(pool.map(query, range(4)))
    assert pages == [list(range(i * 1000, i * 1000 + 5)) for i in range(8)]
    assert sums == [[[26_212_132]]] * 4


# ---------------------------------------------------------------------------------------------
# referenced_tables


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM regions", {"regions"}),
        ("SELECT * FROM Regions r JOIN CITIES c ON c.region_code = r.code", {"regions", "cities"}),
        ("SELECT * FROM regions JOIN cities USING (code)", {"regions", "cities"}),
        ("SELECT * FROM regions NATURAL JOIN cities", {"regions", "cities"}),
        ("WITH r AS (SELECT * FROM regions) SELECT * FROM r", {"regions"}),
        (
            "WITH r AS (SELECT * FROM regions) SELECT * FROM r JOIN cities USING (code)",
            {"regions", "cities"},
        ),
        (
            "SELECT code FROM regions WHERE code IN (SELECT region_code FROM cities)",
            {"regions", "cities"},
        ),
        ("SELECT 42", set()),
        ("SELECT * FROM range(3)", set()),
    ],
)
def test_referenced_tables(sql: str, expected: set[str]):
    assert referenced_tables(sql) == expected


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC * FROM regions", "SQL syntax error"),
        ("SELECT * FROM read_csv('/etc/passwd')", FILES),
        ("SELECT 1; SELECT 2", "single statement"),
    ],
)
def test_referenced_tables_refusals(sql: str, message: str):
    with pytest.raises(BadRequest, match=message):
        referenced_tables(sql)


def test_referenced_tables_of_a_query_sent_again_are_remembered_and_stay_its_own() -> None:
    sql = "SELECT * FROM regions JOIN cities USING (code) -- remembered"
    before = query_module._remembered_names.cache_info()
    first = referenced_tables(sql)
    first.add("changed by the caller")
    assert referenced_tables(sql) == {"regions", "cities"}
    after = query_module._remembered_names.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    # A long query is parsed each time, with the same answer; a refused one is refused again.
    long_sql = "SELECT * FROM regions WHERE code IN (" + ", ".join(["1"] * 2000) + ")"
    assert len(long_sql) > query_module._REMEMBERED_SQL_CHARS
    assert referenced_tables(long_sql) == {"regions"}
    assert query_module._remembered_names.cache_info().misses == after.misses
    for _ in range(2):
        with pytest.raises(BadRequest, match="SQL syntax error"):
            referenced_tables("SELEC 1 -- refused twice")
