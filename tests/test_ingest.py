"""Uploaded tables become typed Parquet: real Moroccan census files and generated edge cases."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from khazna.tables import ingest as ingest_module
from khazna.tables.ingest import (
    Column,
    IngestOptions,
    IngestResult,
    NotATable,
    Problem,
    ingest,
    is_table,
    profile,
)
from tests.conftest import DATA

TABLES = DATA / "tables"
REGIONS = TABLES / "morocco_regions_rgph2024.csv"
REGIONS_CP1256 = TABLES / "morocco_regions_rgph2024.cp1256.csv"
PROVINCES = TABLES / "morocco_provinces_rgph2024.csv"
NATIONAL_POPULATION = 36_828_330
ARRONDISSEMENTS = "prefecture_of_arrondissements"  # the type value used in the file


def run(path: Path, work: Path, name: str | None = None, **options: Any) -> IngestResult:
    result = ingest(path, name or path.name, work, IngestOptions(**options))
    # The SHA-256 computed while DuckDB wrote the Parquet is the file's (every test checks,
    # whatever the format and however many times the COPY ran).
    assert result.parquet_sha256 == hashlib.sha256(result.parquet.read_bytes()).hexdigest()
    return result


def rows(result: IngestResult, sql: str = "SELECT * FROM t") -> list[tuple[Any, ...]]:
    """Query the written Parquet file as table t."""
    con = duckdb.connect()
    try:
        con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{result.parquet}')")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def types(result: IngestResult) -> dict[str, str]:
    return {c.name: c.type for c in result.columns}


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- which files are tables ---------------------------------------------------------------


def test_tables_are_known_by_extension_and_stac_metadata_is_not_one() -> None:
    assert is_table("regions.CSV") and is_table("data.tsv") and is_table("book.xlsx")
    assert is_table("rows.json") and is_table("rows.ndjson") and is_table("rows.jsonl")
    assert is_table("part-0.parquet")
    assert not is_table("item.stac.json") and not is_table("ITEM.STAC.JSON")
    assert not is_table("scan.tif") and not is_table("notes.txt") and not is_table("csv")


# --- the real census files ----------------------------------------------------------------


def test_regions_csv_becomes_twelve_typed_rows_that_add_up_to_the_national_population(
    tmp_path: Path,
) -> None:
    before = sha256(REGIONS)
    result = run(REGIONS, tmp_path)
    assert result.parquet.parent == tmp_path and result.parquet.is_file()
    assert result.rows == 12
    assert result.columns == [
        Column("code", "VARCHAR"),
        Column("code_digits", "VARCHAR"),
        Column("name_fr", "VARCHAR"),
        Column("name_ar", "VARCHAR"),
        Column("population_2024", "BIGINT"),
        Column("households_2024", "BIGINT"),
        Column("provinces", "BIGINT"),
        Column("communes", "BIGINT"),
    ]
    assert (result.encoding, result.delimiter) == ("utf-8", ",")
    assert (result.problems, result.problem_count) == ([], 0)
    assert rows(result, "SELECT sum(population_2024), count(*) FROM t") == [
        (NATIONAL_POPULATION, 12)
    ]
    assert rows(result, "SELECT name_ar, name_fr FROM t WHERE code = '01'") == [
        ("طنجة-تطوان-الحسيمة", "Tanger-Tétouan-Al Hoceima")
    ]
    assert pq.ParquetFile(result.parquet).metadata.num_rows == 12
    assert sha256(REGIONS) == before  # the source is only read
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]  # no spill, no copies


def test_province_codes_stay_text_exactly_as_written_and_populations_add_up(
    tmp_path: Path,
) -> None:
    result = run(PROVINCES, tmp_path)
    assert result.rows == 83
    assert types(result) == {
        "code": "VARCHAR",
        "code_digits": "VARCHAR",
        "name_fr": "VARCHAR",
        "name_ar": "VARCHAR",
        "type": "VARCHAR",
        "region_code": "VARCHAR",
        "population_2024": "BIGINT",
        "households_2024": "BIGINT",
        "cercles": "BIGINT",
        "communes": "BIGINT",
    }
    with PROVINCES.open(encoding="utf-8", newline="") as f:
        written = [(r["code"], r["code_digits"], r["region_code"]) for r in csv.DictReader(f)]
    assert rows(result, "SELECT code, code_digits, region_code FROM t") == written
    codes = {code for code, _, _ in written}
    assert {"01.511", "06.141.01.00"} <= codes
    assert rows(result, "SELECT code_digits, region_code FROM t WHERE code = '01.511'") == [
        ("01511", "01")
    ]
    assert rows(
        result, f"SELECT sum(population_2024) FROM t WHERE type <> '{ARRONDISSEMENTS}'"
    ) == [(NATIONAL_POPULATION,)]
    assert rows(
        result, f"SELECT count(*), sum(population_2024) FROM t WHERE type = '{ARRONDISSEMENTS}'"
    ) == [(8, 3_215_935)]


def test_arabic_windows_1256_file_is_detected_and_matches_the_utf8_original(
    tmp_path: Path,
) -> None:
    before = sha256(REGIONS_CP1256)
    arabic = run(REGIONS_CP1256, tmp_path / "cp1256")
    original = run(REGIONS, tmp_path / "utf8")
    assert arabic.encoding == "windows-1256"
    assert arabic.columns == original.columns
    assert rows(arabic) == rows(original)
    assert rows(arabic, "SELECT name_ar FROM t WHERE code = '01'") == [("طنجة-تطوان-الحسيمة",)]
    assert sha256(REGIONS_CP1256) == before
    assert not (tmp_path / "cp1256" / "source.utf-8.csv").exists()  # the transcoded copy


def test_profile_of_the_regions_table(tmp_path: Path) -> None:
    result = run(REGIONS, tmp_path)
    stats = profile(result.parquet, result.columns)
    assert list(stats) == [c.name for c in result.columns]
    assert stats["provinces"] | {"histogram": None} == {
        "histogram": None,  # tested below
        "nulls": 0,
        "distinct_estimate": 7,
        "min": 2,
        "max": 9,
        "top": [
            {"value": 8, "count": 3},
            {"value": 4, "count": 2},
            {"value": 5, "count": 2},
            {"value": 9, "count": 2},
            {"value": 2, "count": 1},
        ],
    }
    code = stats["code"]
    assert (code["nulls"], code["min"], code["max"]) == (0, "01", "12")
    assert code["top"] == [{"value": f"0{n}", "count": 1} for n in range(1, 6)]
    population = stats["population_2024"]
    assert (population["min"], population["max"]) == (219_965, 7_688_967)
    assert stats["name_fr"]["min"] == "Béni Mellal-Khénifra"
    assert stats["name_fr"]["max"] == "Tanger-Tétouan-Al Hoceima"
    assert json.loads(json.dumps(stats)) == stats


def test_profile_gives_dates_as_iso_strings_and_counts_nulls(tmp_path: Path) -> None:
    src = write(tmp_path / "d.csv", "day,at\n2024-03-01,\n2024-01-15,2024-01-15 08:00:00\n,\n")
    result = run(src, tmp_path / "w")
    stats = profile(result.parquet, result.columns)
    assert stats["day"]["nulls"] == 1
    assert (stats["day"]["min"], stats["day"]["max"]) == ("2024-01-15", "2024-03-01")
    assert stats["at"]["nulls"] == 2
    assert stats["at"]["top"] == [{"value": "2024-01-15T08:00:00", "count": 1}]
    assert json.loads(json.dumps(stats)) == stats


def _bins_by_hand(values: list[int], bins: int = 10) -> list[dict[str, int]]:
    """Equal-width integer bins as the profile documents them, counted one value at a time."""
    low, high = min(values), max(values)
    width = -(-(high - low + 1) // bins)  # ceil
    edges = []
    start = low
    while start <= high:
        edges.append((start, min(start + width - 1, high)))
        start += width
    return [{"from": a, "to": b, "count": sum(a <= v <= b for v in values)} for a, b in edges]


def test_profile_histograms_of_the_provinces_table(tmp_path: Path) -> None:
    result = run(PROVINCES, tmp_path)
    stats = profile(result.parquet, result.columns)
    with PROVINCES.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    population = [int(r["population_2024"]) for r in rows]
    histogram = stats["population_2024"]["histogram"]
    assert histogram == _bins_by_hand(population)
    # The real figures: 83 prefectures and provinces, Casablanca's 3.2 million alone on top.
    assert len(population) == sum(b["count"] for b in histogram) == 83
    assert histogram[0]["from"] == min(population)
    assert histogram[-1] == {"from": histogram[-1]["from"], "to": 3_218_036, "count": 1}
    cercles = [int(r["cercles"]) for r in rows]
    assert stats["cercles"]["histogram"] == _bins_by_hand(cercles)
    # Text columns have no histogram; the other fields are as before.
    assert "histogram" not in stats["name_fr"]
    assert set(stats["cercles"]) == {"nulls", "distinct_estimate", "min", "max", "top", "histogram"}


def test_profile_histogram_of_the_regions_provinces_column(tmp_path: Path) -> None:
    stats = profile(*(lambda r: (r.parquet, r.columns))(run(REGIONS, tmp_path)))
    # 2 to 9 provinces: eight bins of one value each, empty ones included.
    assert stats["provinces"]["histogram"] == [
        {"from": n, "to": n, "count": c}
        for n, c in [(2, 1), (3, 0), (4, 2), (5, 2), (6, 1), (7, 1), (8, 3), (9, 2)]
    ]


def test_profile_histograms_of_dates_timestamps_and_doubles_leave_nulls_out(
    tmp_path: Path,
) -> None:
    src = write(
        tmp_path / "h.csv",
        "day,at,x\n2024-01-01,,1.5\n2024-01-10,2024-01-15 08:00:00,2.5\n,,\n2024-01-02,,2.0\n",
    )
    result = run(src, tmp_path / "w")
    stats = profile(result.parquet, result.columns)
    assert [c.type for c in result.columns] == ["DATE", "TIMESTAMP", "DOUBLE"]
    # Ten days, ten bins of a day; the null left out.
    days = stats["day"]["histogram"]
    assert len(days) == 10
    assert days[0] == {"from": "2024-01-01", "to": "2024-01-01", "count": 1}
    assert days[1] == {"from": "2024-01-02", "to": "2024-01-02", "count": 1}
    assert days[9] == {"from": "2024-01-10", "to": "2024-01-10", "count": 1}
    assert sum(b["count"] for b in days) == 3
    assert stats["at"]["histogram"] == [
        {"from": "2024-01-15T08:00:00", "to": "2024-01-15T08:00:00", "count": 1}
    ]
    doubles = stats["x"]["histogram"]
    assert [b["count"] for b in doubles] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert (doubles[0]["from"], doubles[-1]["to"]) == (1.5, 2.5)
    assert doubles[5]["from"] == pytest.approx(2.0)
    assert json.loads(json.dumps(stats)) == stats


# --- encodings ------------------------------------------------------------------------------

FRENCH = "nom;ville;note\nÉlodie;Fès;très bien\nAndré;Salé;à revoir\nFrançois;Kénitra;passable\n"


def test_latin1_french_file_is_read_as_windows_1252(tmp_path: Path) -> None:
    # Detection reports windows-1252, the superset of Latin-1 that French files really use
    # (it has œ and the curly quotes); for Latin-1's letters the two agree.
    src = write(tmp_path / "fr.csv", FRENCH, "latin-1")
    result = run(src, tmp_path / "w")
    assert (result.encoding, result.delimiter) == ("windows-1252", ";")
    assert rows(result, "SELECT nom, ville FROM t") == [
        ("Élodie", "Fès"),
        ("André", "Salé"),
        ("François", "Kénitra"),
    ]


def test_utf8_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    src = write(tmp_path / "bom.csv", "\ufeffcode,nom\n01,Tétouan\n")
    result = run(src, tmp_path / "w")
    assert [c.name for c in result.columns] == ["code", "nom"]
    assert result.encoding == "utf-8"
    assert rows(result) == [("01", "Tétouan")]


def test_declared_encoding_is_honoured(tmp_path: Path) -> None:
    src = write(tmp_path / "fr.csv", FRENCH, "latin-1")
    result = run(src, tmp_path / "w", encoding="latin-1")
    assert result.encoding == "latin-1"
    assert rows(result, "SELECT ville FROM t") == [("Fès",), ("Salé",), ("Kénitra",)]
    arabic = run(REGIONS_CP1256, tmp_path / "ar", encoding="cp1256")
    assert arabic.encoding == "windows-1256"
    assert rows(arabic, "SELECT name_ar FROM t WHERE code = '02'") == [("الشرق",)]


def test_declared_utf8_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    src = write(tmp_path / "fr.csv", FRENCH, "latin-1")
    with pytest.raises(NotATable, match="not valid utf-8"):
        run(src, tmp_path / "w", encoding="utf-8")
    with pytest.raises(NotATable, match="unknown encoding 'klingon'"):
        run(src, tmp_path / "w2", encoding="klingon")


def test_utf16_with_byte_order_mark_is_transcoded(tmp_path: Path) -> None:
    src = write(tmp_path / "u16.csv", "code\tnom\n01\tطنجة\n", "utf-16")
    result = run(src, tmp_path / "w")
    assert (result.encoding, result.delimiter) == ("utf-16", "\t")
    assert rows(result) == [("01", "طنجة")]


# --- types ----------------------------------------------------------------------------------


def numbers_with_a_stray_na(path: Path, n: int, bad_line: int) -> Path:
    """id,amount,code: ``n`` rows; line ``bad_line`` has amount "N/A" (the header is line 1)."""
    lines = ["id,amount,code"]
    for i in range(1, n + 1):
        amount = "N/A" if i + 1 == bad_line else str(i * 7)
        lines.append(f"{i},{amount},{i % 90 + 1:03d}")
    return write(path, "\n".join(lines) + "\n")


def test_a_stray_na_deep_in_a_numeric_column_becomes_null_and_one_problem(
    tmp_path: Path,
) -> None:
    src = numbers_with_a_stray_na(tmp_path / "amounts.csv", 10_000, bad_line=5000)
    result = run(src, tmp_path / "w")
    assert result.rows == 10_000
    assert types(result) == {"id": "BIGINT", "amount": "BIGINT", "code": "VARCHAR"}
    assert result.problem_count == 1
    assert result.problems == [
        Problem(
            "bad_value",
            5000,
            "amount",
            "N/A",
            "line 5000: 'N/A' is not a BIGINT in column amount; stored as null",
        )
    ]
    assert rows(result, "SELECT id, amount FROM t WHERE id BETWEEN 4998 AND 5000") == [
        (4998, 4998 * 7),
        (4999, None),
        (5000, 5000 * 7),
    ]
    assert rows(result, "SELECT code FROM t WHERE id = 9") == [("010",)]


def test_a_misfit_past_the_sample_is_found_by_the_optimistic_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a small sample the column looks clean; the COPY meets "N/A" at line 3000,
    # stops, counts the whole column and copies again with the value as null.
    monkeypatch.setattr(ingest_module, "SAMPLE_ROWS", 100)
    src = numbers_with_a_stray_na(tmp_path / "amounts.csv", 5000, bad_line=3000)
    result = run(src, tmp_path / "w")
    assert result.rows == 5000
    assert types(result)["amount"] == "BIGINT"
    assert [(p.line, p.value) for p in result.problems] == [(3000, "N/A")]
    assert rows(result, "SELECT count(amount) FROM t") == [(4999,)]


def test_rows_past_the_sample_that_duckdb_cannot_read_are_found_by_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sample (100 rows) reads cleanly; the COPY's rejects hold the ragged row, or the
    # Latin-1 byte that sends the file to be transcoded.
    monkeypatch.setattr(ingest_module, "SAMPLE_ROWS", 100)
    lines = ["id,city"] + [f"{i},Rabat" for i in range(1, 3001)]
    lines[2000] = "2000,Rabat,extra"
    ragged = run(write(tmp_path / "ragged.csv", "\n".join(lines) + "\n"), tmp_path / "r")
    assert ragged.rows == 2999
    assert [(p.kind, p.line, p.value) for p in ragged.problems] == [
        ("ragged_row", 2001, "2000,Rabat,extra")
    ]
    lines[2000] = "2000,Fès"
    latin = tmp_path / "latin.csv"
    latin.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    result = run(latin, tmp_path / "l")
    assert (result.encoding, result.rows, result.problem_count) == ("windows-1252", 3000, 0)
    assert rows(result, "SELECT city FROM t WHERE id = 2000") == [("Fès",)]


def test_a_column_that_is_text_in_the_sample_but_numbers_overall_is_numeric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_module, "SAMPLE_ROWS", 100)
    lines = ["id,score"] + [f"{i},{'pending' if i <= 30 else i}" for i in range(1, 5001)]
    src = write(tmp_path / "late.csv", "\n".join(lines) + "\n")
    result = run(src, tmp_path / "w")
    assert types(result) == {"id": "BIGINT", "score": "BIGINT"}
    assert result.problem_count == 30
    assert [p.line for p in result.problems] == list(range(2, 32))
    assert rows(result, "SELECT sum(score) FROM t") == [(sum(range(31, 5001)),)]


def test_columns_past_the_sample_are_settled_by_a_longer_prefix_or_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 20,000 rows; a sample of 100, a prefix of 1,000.
    # - "late" and "brief" are text in the sample, which cannot rule numbers out for so many
    #   rows (100 failures are 0.5 %). "late" is text for 1,000 rows: the prefix shows 5 %
    #   failures, so text it stays with no census of the whole file. "brief" is text for
    #   150 rows (0.75 %): only the whole file tells, and it is BIGINT with 150 problems.
    # - "sparse" is empty in the sample: the prefix, not the whole file, shows its numbers
    #   before the COPY, which then checks the rest.
    monkeypatch.setattr(ingest_module, "SAMPLE_ROWS", 100)
    monkeypatch.setattr(ingest_module, "TEXT_SAMPLE_ROWS", 1000)
    censuses: list[tuple[bool, list[int]]] = []  # (over a prefix, columns)
    census = ingest_module._census

    def watched(con: Any, source_sql: str, cols: Any, *, prefix: bool = False) -> Any:
        assert prefix == ("LIMIT" in source_sql)
        censuses.append((prefix, list(cols)))
        return census(con, source_sql, cols, prefix=prefix)

    monkeypatch.setattr(ingest_module, "_census", watched)
    lines = ["id,late,brief,sparse"]
    for i in range(1, 20_001):
        late, brief = "n/a" if i <= 1000 else i, "pending" if i <= 150 else i * 2
        lines.append(f"{i},{late},{brief},{'' if i <= 150 else i * 3}")
    result = run(write(tmp_path / "late.csv", "\n".join(lines) + "\n"), tmp_path / "w")
    assert types(result) == {"id": "BIGINT", "late": "VARCHAR", "brief": "BIGINT",
                             "sparse": "BIGINT"}  # fmt: skip
    assert censuses == [(True, [0, 1, 2, 3]), (True, [3]), (True, [1, 2]), (False, [2])]
    assert result.problem_count == 150
    assert [p.line for p in result.problems] == list(range(2, 152))
    assert rows(result, "SELECT late, brief FROM t WHERE id IN (1000, 1001) ORDER BY id") == [
        ("n/a", 2000),
        ("1001", 2002),
    ]
    assert rows(result, "SELECT count(brief), sum(brief), count(sparse), sum(sparse) FROM t") == [
        (19_850, sum(i * 2 for i in range(151, 20_001)), 19_850,
         sum(i * 3 for i in range(151, 20_001))),
    ]  # fmt: skip


def test_identifiers_with_leading_zeros_stay_text(tmp_path: Path) -> None:
    lines = ["code,dotted,digits,amount"]
    lines += [f"{i:02d},{i:02d}.{i:03d},{i:05d},{i}" for i in range(1, 500)]
    src = write(tmp_path / "codes.csv", "\n".join(lines) + "\n")
    result = run(src, tmp_path / "w")
    assert types(result) == {
        "code": "VARCHAR",
        "dotted": "VARCHAR",
        "digits": "VARCHAR",
        "amount": "BIGINT",
    }
    assert rows(result, "SELECT code, dotted, digits FROM t WHERE amount = 1") == [
        ("01", "01.001", "00001")
    ]
    assert result.problem_count == 0


def test_a_lone_leading_zero_value_in_a_numeric_column_is_a_problem_not_a_number(
    tmp_path: Path,
) -> None:
    lines = ["n"] + [str(i) for i in range(1, 500)] + ["007"]
    result = run(write(tmp_path / "n.csv", "\n".join(lines) + "\n"), tmp_path / "w")
    assert types(result) == {"n": "BIGINT"}
    assert [(p.line, p.value) for p in result.problems] == [(501, "007")]


def test_a_column_that_is_mostly_text_stays_text_with_its_numbers_as_written(
    tmp_path: Path,
) -> None:
    values = ["12", "Rabat", "7.5", "Fès", "003", "Oujda"] * 50
    src = write(tmp_path / "mixed.csv", "place\n" + "\n".join(values) + "\n")
    result = run(src, tmp_path / "w")
    assert types(result) == {"place": "VARCHAR"}
    assert rows(result, "SELECT place FROM t LIMIT 6") == [(v,) for v in values[:6]]
    assert result.problem_count == 0


def test_booleans_dates_timestamps_and_doubles_are_recognised(tmp_path: Path) -> None:
    src = write(
        tmp_path / "kinds.csv",
        "flag,day,at,utc,ratio,big,phone\n"
        "true,2024-01-31,2024-01-31 10:15:00,2024-01-31T10:15:00Z,0.25,12345678901234567,+212661\n"
        "FALSE,2024-02-01,2024-02-01T08:00:00.5,2024-02-01 08:00:00+01:00,-3,2,+212662\n"
        ",,,,1e3,,\n",
    )
    result = run(src, tmp_path / "w")
    assert types(result) == {
        "flag": "BOOLEAN",
        "day": "DATE",
        "at": "TIMESTAMP",
        "utc": "TIMESTAMP",
        "ratio": "DOUBLE",
        "big": "BIGINT",
        "phone": "VARCHAR",
    }
    assert rows(result) == [
        (
            True,
            dt.date(2024, 1, 31),
            dt.datetime(2024, 1, 31, 10, 15),
            dt.datetime(2024, 1, 31, 10, 15),
            0.25,
            12345678901234567,
            "+212661",
        ),
        (
            False,
            dt.date(2024, 2, 1),
            dt.datetime(2024, 2, 1, 8, 0, 0, 500000),
            dt.datetime(2024, 2, 1, 7, 0),  # +01:00 converted to UTC
            -3.0,
            2,
            "+212662",
        ),
        (None, None, None, None, 1000.0, None, None),
    ]


def test_a_wide_csv_types_each_of_its_120_columns(tmp_path: Path) -> None:
    # Wide files (statistics offices publish tables of hundreds of columns) make the census
    # and the COPY long SQL; every column still gets its own type and values.
    header = [f"{kind}{k}" for k in range(40) for kind in ("n", "x", "s")]
    lines = [",".join(header)]
    for r in range(3000):
        lines.append(",".join(f"{r * k},{r + k / 4},w{(r + k) % 7}" for k in range(40)))
    result = run(write(tmp_path / "wide.csv", "\n".join(lines) + "\n"), tmp_path / "w")
    assert (result.rows, result.problem_count) == (3000, 0)
    expected = {"n": "BIGINT", "x": "DOUBLE", "s": "VARCHAR"}
    assert types(result) == {name: expected[name[0]] for name in header}
    assert rows(result, "SELECT sum(n39), sum(x39), count(DISTINCT s39), max(s0) FROM t") == [
        (39 * sum(range(3000)), sum(r + 39 / 4 for r in range(3000)), 7, "w6")
    ]


def test_parquet_keeps_dictionaries_for_repeated_values_only(tmp_path: Path) -> None:
    # Twelve regions make a dictionary; 20,000 distinct ids and 7,000 distinct prices,
    # past PARQUET_OPTIONS' limit, are written plain.
    regions = [f"region-{k}" for k in range(12)]
    lines = ["id,region,price"]
    lines += [f"{i},{regions[i % 12]},{i % 7000}.25" for i in range(20_000)]
    result = run(write(tmp_path / "prices.csv", "\n".join(lines) + "\n"), tmp_path / "w")
    assert types(result) == {"id": "BIGINT", "region": "VARCHAR", "price": "DOUBLE"}
    con = duckdb.connect()
    encodings = con.execute(
        "SELECT path_in_schema, encodings FROM parquet_metadata(?) ORDER BY column_id",
        [str(result.parquet)],
    ).fetchall()
    con.close()
    assert encodings == [("id", "PLAIN"), ("region", "PLAIN_DICTIONARY"), ("price", "PLAIN")]
    assert rows(result, "SELECT count(DISTINCT region), sum(price) FROM t") == [
        (12, sum(i % 7000 + 0.25 for i in range(20_000)))
    ]


def test_integers_and_decimals_together_make_a_double_column(tmp_path: Path) -> None:
    lines = ["x"] + [str(i) for i in range(300)] + ["2.5"]
    result = run(write(tmp_path / "x.csv", "\n".join(lines) + "\n"), tmp_path / "w")
    assert types(result) == {"x": "DOUBLE"}
    assert result.problem_count == 0
    assert rows(result, "SELECT sum(x) FROM t") == [(sum(range(300)) + 2.5,)]


def test_census_and_copy_convert_every_value_alike() -> None:
    # The census counts with a cheap first test in front; the COPY leaves it out. Both must
    # turn the same text into the same value, or the counts would lie.
    samples = [
        "0", "-0", "01", "-01", "42", " 42 ", "+5", "1.5", ".5", "5.", "01.5", "0.5", "1e5",
        "1E-3", "-13.2", "12_34", "0x10", "12345678901234567", "123456789012345678901", "nan",
        "inf", "-inf", "1_000", "true", "False", "TRUE ", "t", "yes", "2024-01-31",
        "2024/01/31", "2024-1-5", "2024-02-30", "2024-01-31 10:00:00", "2024-01-31T10:00:00Z",
        "2024-01-31 10:00 ab", "2024-01-31 10:00:00+01:00", "31/01/2024", "Rabat", "", " ",
        "06.141.01.00", "-5", "-05", "-.5", "-", "9", "1", ":5", "/5", "١٢", "٣.٥", "9" * 16,
        "9" * 17 + ".5", "0.", "-0.5", "-9", "-9.75", "-:5", "-/5", "-é", "--5", "- 5",
        "-" + "9" * 15, "-" + "9" * 16,
    ]  # fmt: skip
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    converted: dict[tuple[str, str], Any] = {}
    # The numbers' cheap tests only shortcut their regular expressions: same answers.
    by_expression = {
        "BIGINT": f"CASE WHEN regexp_full_match(v, '{ingest_module._RE_BIGINT}')"
        " THEN try_cast(v AS BIGINT) END",
        "DOUBLE": f"CASE WHEN regexp_full_match(v, '{ingest_module._RE_DOUBLE}')"
        " THEN try_cast(v AS DOUBLE) END",
    }
    for type_ in ingest_module.CANDIDATES:
        census = ingest_module._convert(type_, "v", census=True)
        copy = ingest_module._convert(type_, "v")
        rule = by_expression.get(type_, copy)
        for value in samples:
            a, b, c = con.execute(
                f"SELECT {census}, {copy}, {rule} FROM (SELECT ? AS v)", [value]
            ).fetchone()
            assert a == b == c, (type_, value)
            converted[type_, value] = a
    # And every short text over the characters the rules look at, in one query per type.
    alphabet = "019-.:/ eE_+Tx\t\f\v"
    short = [""] + ["".join(t) for n in (1, 2, 3) for t in itertools.product(alphabet, repeat=n)]
    con.execute("CREATE TABLE texts (v VARCHAR)")
    con.executemany("INSERT INTO texts VALUES (?)", [(t,) for t in short])
    for type_ in ingest_module.CANDIDATES:
        census = ingest_module._convert(type_, "v", census=True)
        copy = ingest_module._convert(type_, "v")
        rule = by_expression.get(type_, copy)
        differ = con.execute(
            f"SELECT v FROM texts WHERE ({census}) IS DISTINCT FROM ({copy})"
            f" OR ({copy}) IS DISTINCT FROM ({rule})"
        ).fetchall()
        assert differ == [], type_
    kept = con.execute(
        f"SELECT count(*) FROM texts WHERE {ingest_module._convert('DOUBLE', 'v')} IS NOT NULL"
    ).fetchone()
    assert kept is not None and kept[0] > 100  # the texts do reach the conversions
    con.close()
    numbers = {v: converted["BIGINT", v] for v in ("42", " 42 ", "-0", "01", "+5", "1.5", "0x10")}
    assert numbers == {"42": 42, " 42 ": 42, "-0": 0, "01": None, "+5": None, "1.5": None,
                       "0x10": None}  # fmt: skip
    shown = ("-13.2", ".5", "1e5", "01.5", "12_34", "+5", "-9.75", "--5")
    doubles = {v: converted["DOUBLE", v] for v in shown}
    assert doubles == {"-13.2": -13.2, ".5": 0.5, "1e5": 100000.0, "01.5": None, "12_34": None,
                       "+5": None, "-9.75": -9.75, "--5": None}  # fmt: skip
    assert converted["DOUBLE", "12345678901234567"] is None  # an identifier, not a double
    assert converted["DOUBLE", "inf"] is None and converted["DOUBLE", "-inf"] is None
    assert converted["BOOLEAN", "TRUE "] is None and converted["BOOLEAN", "False"] is False
    assert converted["DATE", "2024/01/31"] == dt.date(2024, 1, 31)
    assert converted["DATE", "2024-01-31 10:00:00"] is None  # not truncated to a date
    assert converted["TIMESTAMP", "2024-01-31 10:00 ab"] is None
    assert converted["TIMESTAMP", "2024-01-31T10:00:00Z"] == dt.datetime(2024, 1, 31, 10)


def test_a_prefix_census_of_unnested_values_counts_what_the_census_by_column_counts() -> None:
    values = [
        "0", "-0", "01", "42", " 42 ", "+5", "1.5", ".5", "1e5", "12_34", "nan", "true",
        "False", "TRUE ", "2024-01-31", "2024/01/31", "2024-02-30", "2024-01-31 10:00:00",
        "2024-01-31T10:00:00Z", "2024-01-31 10:00 ab", "Rabat", "", " ", "\t", None, "-",
    ]  # fmt: skip
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE TABLE t (c0 VARCHAR, c1 VARCHAR, c2 VARCHAR, c3 VARCHAR, c4 VARCHAR)")
    n = len(values)
    con.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?, ?)",
        [
            (v, values[n - 1 - k], v if k % 2 else None, None, str(k) if k % 5 else "x")
            for k, v in enumerate(values)
        ],
    )
    cols = [0, 1, 2, 3, 4]
    by_column = ingest_module._census(con, "t", cols)
    unnested = ingest_module._census(con, "(SELECT * FROM t LIMIT 1000)", cols, prefix=True)
    assert unnested == by_column
    rows, counts = unnested
    assert rows == n
    # Of 26, None and the two of white space are no values (a CSV's empty field is None).
    assert counts[0].nonempty == counts[1].nonempty == 23
    # "0", "-0", "42", " 42 "; those and "1.5", ".5", "1e5"; two dates, and as timestamps
    # with "2024-01-31 10:00:00" and "...T10:00:00Z".
    assert counts[0].ok == {"BOOLEAN": 2, "BIGINT": 4, "DOUBLE": 7, "DATE": 2, "TIMESTAMP": 4}
    assert counts[3] == ingest_module._Counts(0, dict.fromkeys(ingest_module.CANDIDATES, 0))
    assert counts[4].nonempty == n and counts[4].ok["BIGINT"] == n - 6
    none = ingest_module._census(con, "(SELECT * FROM t LIMIT 0)", cols, prefix=True)
    assert none == ingest_module._census(con, "(SELECT * FROM t LIMIT 0)", cols)
    assert none[0] == 0 and none[1][2].nonempty == 0
    con.close()


def _near_misses(*texts: str) -> list[str]:
    """``texts`` and what one or two slips of the keyboard make of them: every character
    changed to any ASCII one (and a few others), and over telling characters, every
    insertion, deletion, two changes, or a deletion and an insertion."""
    telling = "0129-:/ T+Z.xé\t\n\v\f\r"
    anything = [chr(c) for c in range(1, 128)] + ["é", "\u00a0"]
    out = set(texts)
    for t in texts:
        for i in range(len(t) + 1):
            out.update(t[:i] + c + t[i:] for c in telling)
        for i in range(len(t)):
            out.update(t[:i] + c + t[i + 1 :] for c in anything)
            for j in range(i + 1, len(t)):
                for c, d in itertools.product(telling, repeat=2):
                    out.add(t[:i] + c + t[i + 1 : j] + d + t[j + 1 :])
            shorter = t[:i] + t[i + 1 :]
            out.add(shorter)
            for j in range(len(shorter) + 1):
                out.update(shorter[:j] + c + shorter[j:] for c in telling)
    return sorted(out)


def test_timestamps_read_by_the_shortcut_are_what_timestamptz_reads() -> None:
    # The TIMESTAMP rule is TIMESTAMPTZ's; its shortcut for plain texts must not read a
    # text that TIMESTAMPTZ refuses, nor read one differently. The COPY computes the
    # shortcut's cast once in a column of its own, the census inline: both are checked.
    texts = _near_misses(
        "2024-01-31 10:00:00", "2024-01-31T10:00:00", "0999-12-31 23:59:59",
        "2024-02-29T00:00:00",
    )  # fmt: skip
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("texts", pa.table({"v": texts}))
    reference = ingest_module._sql(
        f"CASE WHEN {ingest_module._DATE_SHAPE}"
        " THEN CAST(try_cast({v} AS TIMESTAMPTZ) AS TIMESTAMP) END",
        "v",
    )
    prepared = ingest_module._prepared("TIMESTAMP", "v")
    copy = ingest_module._convert("TIMESTAMP", "v", prepared="p")
    census = ingest_module._convert("TIMESTAMP", "v", census=True)
    read = con.execute(
        f"SELECT v, {copy}, {census}, {reference}"
        f" FROM (SELECT v, {prepared} AS p FROM texts) ORDER BY v"
    ).fetchall()
    assert len(read) == len(texts) > 200_000
    differ = [row for row in read if not row[1] == row[2] == row[3]]
    assert differ == []
    by_text = {v: ts for v, ts, _, _ in read}
    assert sum(ts is not None for ts in by_text.values()) > 5_000  # the rule is reached
    assert by_text["2024-01-31T10:00:00"] == dt.datetime(2024, 1, 31, 10)
    assert by_text["0999-12-31 23:59:59"] == dt.datetime(999, 12, 31, 23, 59, 59)
    assert by_text["2024-01-31 10:00:0 "] == dt.datetime(2024, 1, 31, 10)  # as TIMESTAMPTZ
    # A TIMESTAMP cast reads each of these as 10:00 on 31 January; TIMESTAMPTZ refuses them.
    for junk in ("2024-01-31 10:0 :x0", "2024-01-31T10: 0:00", "2024-01-31 10:00: Z"):
        assert con.execute("SELECT try_cast(? AS TIMESTAMP)", [junk]).fetchone() == (
            dt.datetime(2024, 1, 31, 10),
        )
        assert by_text[junk] is None
    con.close()


def test_junk_in_a_timestamp_column_past_the_sample_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the sample, the optimistic COPY meets text that a TIMESTAMP cast would read as
    # 10:00; it is a bad value, in both plain forms.
    monkeypatch.setattr(ingest_module, "SAMPLE_ROWS", 100)
    start = dt.datetime(2024, 1, 1)
    lines = ["id,at,iso"]
    for i in range(1, 3001):
        at = start + dt.timedelta(minutes=i)
        lines.append(f"{i},{at:%Y-%m-%d %H:%M:%S},{at:%Y-%m-%dT%H:%M:%S}")
    lines[2000] = "2000,2024-01-31 10:0 :x0,2024-01-31T10:00:00"
    lines[2500] = "2500,2024-01-31 10:00:00,2024-01-31T10: 0:00"
    result = run(write(tmp_path / "times.csv", "\n".join(lines) + "\n"), tmp_path / "w")
    assert result.rows == 3000
    assert types(result) == {"id": "BIGINT", "at": "TIMESTAMP", "iso": "TIMESTAMP"}
    assert [(p.line, p.column, p.value) for p in result.problems] == [
        (2001, "at", "2024-01-31 10:0 :x0"),
        (2501, "iso", "2024-01-31T10: 0:00"),
    ]
    at_and_iso = 'SELECT id, "at", iso FROM t WHERE id IN (1, 2000, 2500) ORDER BY id'
    assert rows(result, at_and_iso) == [
        (1, dt.datetime(2024, 1, 1, 0, 1), dt.datetime(2024, 1, 1, 0, 1)),
        (2000, None, dt.datetime(2024, 1, 31, 10)),
        (2500, dt.datetime(2024, 1, 31, 10), None),
    ]
    last = 'SELECT count("at"), count(iso), max(iso) FILTER (WHERE id <> 2000) FROM t'
    assert rows(result, last) == [
        (2999, 2999, dt.datetime(2024, 1, 3, 2)),
    ]


def test_first_character_tests_agree_with_ascii() -> None:
    # The rules test a text's first character by comparing bytes; ascii() says the same.
    texts = [chr(c) + tail for c in range(1, 128) for tail in ("", "x", "9")]
    texts += ["", "é", "éa", "١٢", "\u00a0", "\u2003x", "😀", "Ω"]
    sets = ("0123456789", "0123456789 -.", "FTft", "\t\n\r ")
    con = duckdb.connect()
    for chars in sets:
        ours = ingest_module._sql(ingest_module._starts_with_any(*chars), "v")
        codes = ", ".join(str(ord(c)) for c in chars)
        for text in texts:
            a, b = con.execute(
                f"SELECT {ours}, ascii(v) IN ({codes}) FROM (SELECT ? AS v)", [text]
            ).fetchone()
            assert bool(a) == bool(b), (chars, text)
    con.close()


# --- dialects -------------------------------------------------------------------------------


def test_semicolon_and_tab_delimiters_are_sniffed(tmp_path: Path) -> None:
    semi = run(write(tmp_path / "s.csv", "a;b\n1;x\n2;y\n"), tmp_path / "s")
    tab = run(write(tmp_path / "t.tsv", "a\tb\n1\tx\n2\ty\n"), tmp_path / "t")
    for result, delimiter in ((semi, ";"), (tab, "\t")):
        assert result.delimiter == delimiter
        assert types(result) == {"a": "BIGINT", "b": "VARCHAR"}
        assert rows(result) == [(1, "x"), (2, "y")]


def test_quoted_newlines_and_quotes_stay_inside_their_field(tmp_path: Path) -> None:
    src = write(
        tmp_path / "q.csv",
        'id,comment,n\n1,"first line\nsecond, line",10\n2,"say ""hi""",20\n3,plain,30\n',
    )
    result = run(src, tmp_path / "w")
    assert result.rows == 3
    assert rows(result) == [
        (1, "first line\nsecond, line", 10),
        (2, 'say "hi"', 20),
        (3, "plain", 30),
    ]


def test_ragged_rows_are_skipped_and_reported_with_their_physical_lines(tmp_path: Path) -> None:
    text = (
        "id,name,amount\n"  # 1
        '1,"two\nlines",10\n'  # 2-3
        "2,short\n"  # 4: too few
        "3,c,30\n"  # 5
        "\n"  # 6: blank
        "4,d,40,extra\n"  # 7: too many
        "5,e,N/A\n"  # 8
    )
    lines = [text] + [f"{i},n{i},{i}\n" for i in range(6, 200)]
    src = write(tmp_path / "ragged.csv", "".join(lines))
    result = run(src, tmp_path / "w")
    assert result.rows == 197
    assert types(result) == {"id": "BIGINT", "name": "VARCHAR", "amount": "BIGINT"}
    assert result.problem_count == 3
    assert result.problems == [
        Problem(
            "ragged_row",
            4,
            None,
            "2,short",
            "line 4: expected 3 fields, found 2; row skipped",
        ),
        Problem(
            "ragged_row",
            7,
            None,
            "4,d,40,extra",
            "line 7: expected 3 fields, found 4; row skipped",
        ),
        Problem(
            "bad_value",
            8,
            "amount",
            "N/A",
            "line 8: 'N/A' is not a BIGINT in column amount; stored as null",
        ),
    ]
    assert rows(result, "SELECT id FROM t WHERE id <= 5") == [(1,), (3,), (5,)]


def test_no_header_declared_gives_numbered_columns(tmp_path: Path) -> None:
    src = write(tmp_path / "n.csv", "name,city\nali,rabat\nsara,fes\n")
    result = run(src, tmp_path / "w", header=False)
    assert [c.name for c in result.columns] == ["column_1", "column_2"]
    assert rows(result) == [("name", "city"), ("ali", "rabat"), ("sara", "fes")]


def test_declared_delimiter_is_honoured(tmp_path: Path) -> None:
    src = write(tmp_path / "p.csv", "a|b,c\n1|x,y\n")
    result = run(src, tmp_path / "w", delimiter="|")
    assert result.delimiter == "|"
    assert rows(result) == [(1, "x,y")]


def test_blank_and_repeated_header_names_are_made_unique(tmp_path: Path) -> None:
    src = write(tmp_path / "h.csv", " name ,,name,Name,column_2\na,b,c,d,e\n")
    result = run(src, tmp_path / "w")
    assert [c.name for c in result.columns] == [
        "name",
        "column_2",
        "name_2",
        "Name_3",
        "column_2_2",
    ]


# --- other formats --------------------------------------------------------------------------


SEPT_1 = dt.datetime(2024, 9, 1, 8, 30)
SEPT_2 = dt.datetime(2024, 9, 2, 9, 0)


def test_xlsx_first_sheet_is_typed_like_a_csv(tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Recensement"
    tangier = ("01", "Tanger-Assilah", 1494413, 0.25, dt.date(2024, 9, 1), SEPT_1)
    fes = ("02", "Fès", 1256172, 1.5, dt.date(2024, 9, 2), SEPT_2)
    sheet.append(["code", "province", "population", "ratio", "jour", "mesure"])
    sheet.append(list(tangier))
    sheet.append(list(fes))
    sheet.append([None] * 6)  # a blank spreadsheet row
    sheet.append(["03", "طنجة", None, 2, None, None])
    other = book.create_sheet("Autre")
    other.append(["x"])
    other.append([1])
    path = tmp_path / "census.xlsx"
    book.save(path)

    result = run(path, tmp_path / "w")
    assert (result.encoding, result.delimiter) == (None, None)
    assert result.columns == [
        Column("code", "VARCHAR"),
        Column("province", "VARCHAR"),
        Column("population", "BIGINT"),
        Column("ratio", "DOUBLE"),
        Column("jour", "DATE"),
        Column("mesure", "TIMESTAMP"),
    ]
    assert rows(result) == [tangier, fes, ("03", "طنجة", None, 2.0, None, None)]
    assert not (tmp_path / "w" / "sheet.csv").exists()
    second = run(path, tmp_path / "w2", sheet="Autre")
    assert rows(second) == [(1,)]
    with pytest.raises(NotATable, match="no sheet named 'Absent'; sheets: Recensement, Autre"):
        run(path, tmp_path / "w3", sheet="Absent")


def test_xlsx_with_no_rows_is_not_a_table(tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    path = tmp_path / "empty.xlsx"
    book.save(path)
    with pytest.raises(NotATable, match="has no rows"):
        run(path, tmp_path / "w")


def test_json_array_of_objects_with_nested_values_as_json_text(tmp_path: Path) -> None:
    records = [
        {"code": "01", "population": 4030222, "share": 0.109, "tags": ["nord", "côte"]},
        {"code": "02", "population": 2294665, "share": 0.062, "meta": {"capital": "Oujda"}},
    ]
    src = tmp_path / "regions.json"
    src.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    result = run(src, tmp_path / "w")
    assert types(result) == {
        "code": "VARCHAR",
        "population": "BIGINT",
        "share": "DOUBLE",
        "tags": "VARCHAR",
        "meta": "VARCHAR",
    }
    assert rows(result, "SELECT code, population, tags, meta FROM t") == [
        ("01", 4030222, '["nord","côte"]', None),
        ("02", 2294665, None, '{"capital":"Oujda"}'),
    ]


def test_ndjson_records_with_types_from_every_line(tmp_path: Path) -> None:
    lines = [json.dumps({"id": i, "day": f"2024-01-{i:02d}"}) for i in range(1, 21)]
    lines.append(json.dumps({"id": 21, "day": "2024-01-21", "late": True}))
    src = write(tmp_path / "events.jsonl", "\n".join(lines) + "\n")
    result = run(src, tmp_path / "w")
    assert result.rows == 21
    assert types(result) == {"id": "BIGINT", "day": "DATE", "late": "BOOLEAN"}
    assert rows(result, "SELECT count(late) FROM t") == [(1,)]


def test_parquet_input_is_checked_and_rewritten_with_the_hubs_types(tmp_path: Path) -> None:
    table = pa.table(
        {
            "code": pa.array(["01", "02"]),
            "population": pa.array([4030222, 2294665], pa.int32()),
            "area": pa.array([Decimal("15090.50"), Decimal("90130.00")], pa.decimal128(10, 2)),
            "at": pa.array(
                [dt.datetime(2024, 9, 1, 8, tzinfo=dt.UTC), None], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    src = tmp_path / "upload.parquet"
    pq.write_table(table, src)
    result = run(src, tmp_path / "w")
    assert result.parquet != src and result.rows == 2
    assert (result.encoding, result.delimiter) == (None, None)
    assert types(result) == {
        "code": "VARCHAR",
        "population": "BIGINT",
        "area": "DOUBLE",
        "at": "TIMESTAMP",
    }
    assert rows(result) == [
        ("01", 4030222, 15090.5, dt.datetime(2024, 9, 1, 8, 0)),
        ("02", 2294665, 90130.0, None),
    ]


def test_a_csv_mixing_crlf_and_lf_line_ends_reads_whole(tmp_path: Path) -> None:
    """Files edited on two systems end some lines in CRLF and others in LF."""
    lines = [b"id,name,amount\r\n"]
    for i in range(1, 201):
        name = b'"two\r\nlines"' if i == 7 else b"name%d" % i
        amount = b"N/A" if i == 150 else b"%d.5" % i
        lines.append(b"%d,%s,%s%s" % (i, name, amount, b"\r\n" if i % 2 == 0 else b"\n"))
    src = tmp_path / "mixed.csv"
    src.write_bytes(b"".join(lines))
    result = run(src, tmp_path / "w")
    assert result.rows == 200
    assert [(c.name, c.type) for c in result.columns] == [
        ("id", "BIGINT"),
        ("name", "VARCHAR"),
        ("amount", "DOUBLE"),
    ]
    # Row 7's quoted line break makes row 150 start on line 152 (the header is line 1).
    assert [(p.kind, p.line, p.column, p.value) for p in result.problems] == [
        ("bad_value", 152, "amount", "N/A")
    ]
    assert rows(
        result, "SELECT id, name, amount FROM t WHERE id IN (6, 7, 8, 150) ORDER BY id"
    ) == [
        (6, "name6", 6.5),
        (7, "two\r\nlines", 7.5),
        (8, "name8", 8.5),
        (150, "name150", None),
    ]
    assert rows(result, "SELECT sum(amount) FROM t") == [
        (sum(i + 0.5 for i in range(1, 201)) - 150.5,)
    ]


# --- not tables -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.csv", b"", "empty file"),
        ("blank.csv", b"\n\n  \n", "empty file"),
        ("noise.csv", random.Random(7).randbytes(4096), "binary content"),
        ("object.json", b'{"type": "FeatureCollection", "features": []}', "a JSON object"),
        ("numbers.json", b"[1, 2, 3]", "not objects"),
        ("broken.parquet", b"PAR1" + b"\x00" * 64 + b"PAR1", "not a readable Parquet file"),
        ("fake.xlsx", b"name,city\nali,rabat\n", "not a readable XLSX file"),
        ("empty.ndjson", b"", "empty file"),
        ("cut.ndjson", b'{"a": 1}\n{"a": ', 'Malformed JSON in file "the file"'),
    ],
)
def test_files_that_are_not_tables_say_why(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    src = tmp_path / name
    src.write_bytes(content)
    with pytest.raises(NotATable, match=reason) as caught:
        run(src, tmp_path / "w")
    assert str(tmp_path) not in str(caught.value)  # shown on the dataset page


def test_truncated_parquet_is_not_a_table(tmp_path: Path) -> None:
    src = tmp_path / "cut.parquet"
    pq.write_table(pa.table({"a": list(range(1000))}), src)
    src.write_bytes(src.read_bytes()[:-100])
    with pytest.raises(NotATable, match="not a readable Parquet file"):
        run(src, tmp_path / "w")


# --- bounded memory -------------------------------------------------------------------------

_CHILD = """
import json, resource, sys
from pathlib import Path
from khazna.tables.ingest import ingest
r = ingest(Path(sys.argv[1]), "big.csv", Path(sys.argv[2]), memory_limit="512MB", threads=2)
types = [c.type for c in r.columns]
print(json.dumps({"rows": r.rows, "types": types, "problems": r.problem_count}))
"""


@pytest.mark.slow
def test_a_600_mb_csv_converts_within_one_gib_of_memory(tmp_path: Path) -> None:
    n = 7_000_000
    big = tmp_path / "big.csv"
    con = duckdb.connect()
    con.execute(
        f"""COPY (SELECT i AS id,
              TIMESTAMP '2024-01-01' + to_seconds(i * 7) AS timestamp,
              ['Rabat', 'Casablanca', 'Fès', 'Marrakech', 'Tanger', 'Laâyoune'][i % 6 + 1] AS city,
              ['food', 'transport', 'health', 'education'][i % 4 + 1] AS category,
              round((i * 37 % 100000) / 100.0, 2) AS amount,
              round(27.6 + (i % 8000) / 1000.0, 5) AS lat,
              round(-13.2 + (i % 12000) / 1000.0, 5) AS lon,
              'note number ' || (i % 1000) || ' for row ' || i AS note
            FROM range({n}) t(i)) TO '{big}' (HEADER)"""
    )
    con.close()
    assert big.stat().st_size > 600_000_000
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(big), str(tmp_path / "work")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    elapsed = time.monotonic() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = json.loads(out.stdout)
    text, number = "VARCHAR", "DOUBLE"
    assert report == {
        "rows": n,
        "types": ["BIGINT", "TIMESTAMP", text, text, number, number, number, text],
        "problems": 0,
    }
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB in {elapsed:.1f} s"
