"""Early ingest (khazna/tables/early.py): a CSV converted while its upload arrives gives
exactly what converting the stored file gives, and an upload that fails leaves nothing."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from khazna.config import Settings
from khazna.hub import Hub
from khazna.tables import early as early_mod
from khazna.tables.early import EarlyIngest, EarlyIngests
from khazna.tables.ingest import IngestResult, ingest
from tests.conftest import DATA, S3_MODE, Api
from tests.test_tables_api import API, ORG, REGIONS, publish, sql, wait_job

CITIES = ("Rabat", "Casablanca", "Fès", "Marrakech", "Oujda")
ROWS = 700_000  # about 30 MiB: past START_BYTES, so the conversion starts mid-upload


def write_csv(path: Path) -> None:
    """A CSV with what makes ingest work hard: a quoted newline, ragged rows near the start
    and deep down, and an "N/A" deep in a numeric column (past the 100,000-row sample)."""
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("id,day,city,amount,note\n")
        for i in range(ROWS):
            if i == 5:
                f.write('5,2024-01-06,Rabat,12.5,"deux\nlignes"\n')
            elif i == 7:
                f.write("7,2024-01-08,Fès\n")
            elif i == 150_000:
                f.write("150000,2024-03-01,Oujda,N/A,sans montant\n")
            elif i == 600_000:
                f.write("600000,2024-03-02,Oujda,1.5,x,de trop\n")
            else:
                day = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}"
                f.write(f"{i},{day},{CITIES[i % 5]},{(i * 37) % 100_000 / 100},note {i}\n")


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("early") / "data.csv"
    write_csv(path)
    assert path.stat().st_size > early_mod.START_BYTES + (4 << 20)
    return path


def feed(
    src: Path, target: Path, early: EarlyIngest, stop_after: int | None = None
) -> threading.Thread:
    """Write ``src`` into ``target`` as an upload would, 1 MiB at a time, pausing once the
    conversion could start so that it runs (and waits) while the rest arrives."""

    def run() -> None:
        with src.open("rb") as f, target.open("ab") as out:
            while chunk := f.read(1 << 20):
                if stop_after is not None and early.arrival.written >= stop_after:
                    return
                out.write(chunk)
                out.flush()
                early.wrote(len(chunk))
                if early.arrival.written >= early_mod.START_BYTES:
                    time.sleep(0.02)
        early.complete()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def converted(result: IngestResult) -> tuple[object, ...]:
    return (
        result.rows,
        result.columns,
        result.problems,
        result.problem_count,
        result.encoding,
        result.delimiter,
    )


def test_converting_while_the_bytes_arrive_gives_the_same_table(
    big_csv: Path, tmp_path: Path
) -> None:
    expected = ingest(big_csv, "data.csv", tmp_path / "plain")
    ingests = EarlyIngests(tmp_path / "work", ingest, min_bytes=1)
    upload = tmp_path / "upload.part"
    upload.touch()
    early = ingests.start(upload, big_csv.stat().st_size, "data.csv", {})
    assert early is not None
    writer = feed(big_csv, upload, early)
    ingests.stored(early, "f" * 64, "{}")
    claimed = ingests.claim("f" * 64, "{}")
    assert claimed is early
    result = early.result()
    writer.join()
    assert result is not None
    # It began before the upload had finished.
    assert early.started_at_bytes is not None
    assert early_mod.START_BYTES <= early.started_at_bytes < big_csv.stat().st_size

    assert converted(result) == converted(expected)
    assert result.parquet_sha256 == expected.parquet_sha256 is not None
    assert result.rows == ROWS - 2  # two ragged rows skipped
    assert [c.type for c in result.columns] == ["BIGINT", "DATE", "VARCHAR", "DOUBLE", "VARCHAR"]
    assert [(p.kind, p.line) for p in result.problems] == [
        ("ragged_row", 10),  # line 1 is the header, row 5 spans lines 7 and 8
        ("bad_value", 150_003),
        ("ragged_row", 600_003),
    ]
    assert pq.read_table(result.parquet).equals(pq.read_table(expected.parquet))
    early.remove()
    assert not early.work_dir.exists()


def test_an_upload_that_stops_leaves_nothing(big_csv: Path, tmp_path: Path) -> None:
    ingests = EarlyIngests(tmp_path / "work", ingest, min_bytes=1)
    upload = tmp_path / "upload.part"
    upload.touch()
    early = ingests.start(upload, big_csv.stat().st_size, "data.csv", {})
    assert early is not None
    writer = feed(big_csv, upload, early, stop_after=early_mod.START_BYTES + (2 << 20))
    writer.join()
    ingests.drop(early, "the upload failed")
    assert early.result() is None
    deadline = time.monotonic() + 30
    while early.work_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not early.work_dir.exists()
    assert list((tmp_path / "work").iterdir()) == []
    # The slot is free again.
    assert ingests.start(upload, big_csv.stat().st_size, "data.csv", {}) is not None
    ingests.close()


def test_only_large_csv_uploads_start_early(tmp_path: Path) -> None:
    ingests = EarlyIngests(tmp_path / "work", ingest, min_bytes=1000)
    upload = tmp_path / "upload.part"
    upload.write_bytes(b"a,b\n1,2\n")
    assert ingests.start(upload, 999, "small.csv", {}) is None
    assert ingests.start(upload, 5000, "book.xlsx", {}) is None
    assert ingests.start(upload, 5000, "latin.csv", {"encoding": "latin-1"}) is None
    assert ingests.start(None, 5000, "remote.csv", {}) is None  # no local file (S3)
    assert ingests.start(upload, None, "chunked.csv", {}) is None  # size not announced
    assert (
        EarlyIngests(tmp_path / "w2", ingest, min_bytes=0).start(upload, 5000, "a.csv", {}) is None
    )
    first = ingests.start(upload, 5000, "a.tsv", {})
    assert first is not None
    assert ingests.start(upload, 5000, "b.csv", {}) is None  # its one slot is taken
    ingests.close()


def test_ingest_threads_are_one_per_cpu_unless_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KHAZNA_INGEST_THREADS", raising=False)
    assert Settings.from_env(tmp_path / "a").ingest_threads == (os.cpu_count() or 2)
    monkeypatch.setenv("KHAZNA_INGEST_THREADS", "0")
    with pytest.raises(ValueError, match="KHAZNA_INGEST_THREADS must be more than 0 threads"):
        Settings.from_env(tmp_path / "b")
    monkeypatch.setenv("KHAZNA_INGEST_THREADS", "3")
    h = Hub(Settings.from_env(tmp_path / "c"))
    try:
        assert h.tables.threads == 3
    finally:
        h.close()
    # ...and DuckDB converts with that many.
    seen: list[int] = []
    src = tmp_path / "t.csv"
    src.write_text("a,b\n1,2\n")
    ingest(
        src,
        "t.csv",
        tmp_path / "w",
        threads=3,
        on_connect=lambda con: seen.append(
            con.execute("SELECT current_setting('threads')").fetchone()[0]
        ),
    )
    assert seen == [3]


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub that converts every CSV upload early (the default waits for 64 MiB)."""
    settings = dataclasses.replace(Settings.from_env(tmp_path / "hub"), early_ingest_min_bytes=1)
    h = Hub(settings)
    yield h
    h.close()


def test_an_upload_through_the_api_is_converted_while_it_arrives(api: Api) -> None:
    answers = publish(api, "recensement", (REGIONS.name, REGIONS.read_bytes()))
    job = wait_job(api, answers[REGIONS.name]["job"]["id"])
    assert job["state"] == "done"
    # Object storage has no local file to read as it grows: there the job converts.
    assert job["result"]["converted_while_uploading"] is (not S3_MODE)
    assert job["result"]["rows"] == 12
    r = sql(
        api, "SELECT sum(population_2024) FROM ministere_sante_recensement_morocco_regions_rgph2024"
    )
    assert r.json()["rows"] == [[36_828_330]]
    assert list((api.hub.settings.home / "work").glob("early-*")) == []
    assert (DATA / "tables" / REGIONS.name).read_bytes() == api.http.get(
        f"{API}/datasets/{ORG}/recensement/files/{REGIONS.name}"
    ).content
