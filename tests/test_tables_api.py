"""Tables through the API: upload, ingest job, rows, schema, profile, SQL in four formats."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

from tests.conftest import DATA, Api

API = "/api/v1"
ORG = "ministere-sante"
REGIONS = DATA / "tables" / "morocco_regions_rgph2024.csv"
REGIONS_CP1256 = DATA / "tables" / "morocco_regions_rgph2024.cp1256.csv"
PROVINCES = DATA / "tables" / "morocco_provinces_rgph2024.csv"
REGIONS_SQL = "ministere_sante_recensement_morocco_regions_rgph2024"
PROVINCES_SQL = "ministere_sante_recensement_morocco_provinces_rgph2024"


def wait_job(api: Api, job_id: int, token: str | None = None) -> dict[str, Any]:
    headers = api.auth(token or api.editor)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = api.http.get(f"{API}/jobs/{job_id}", headers=headers).json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def publish(
    api: Api, dataset: str, *files: tuple[str, bytes], access: str = "public", query: str = ""
) -> dict[str, dict[str, Any]]:
    """Create the dataset, upload files, wait for their ingest; answers by file name."""
    r = api.http.post(
        f"{API}/datasets",
        json={"org": ORG, "name": dataset, "access": access},
        headers=api.auth(api.editor),
    )
    assert r.status_code in (201, 409), r.text
    answers = {}
    for name, data in files:
        r = api.http.put(
            f"{API}/datasets/{ORG}/{dataset}/files/{name}{query}",
            content=data,
            headers=api.auth(api.editor),
        )
        assert r.status_code == 200, r.text
        answers[name] = r.json()
        if r.json()["job"] is not None:
            assert wait_job(api, r.json()["job"]["id"])["state"] in ("done", "failed")
    return answers


@pytest.fixture
def census(api: Api) -> Api:
    publish(
        api,
        "recensement",
        (REGIONS.name, REGIONS.read_bytes()),
        (PROVINCES.name, PROVINCES.read_bytes()),
    )
    return api


def sql(api: Api, query: str, token: str | None = None, **extra: Any):
    headers = api.auth(token) if token else {}
    return api.http.post(f"{API}/sql", json={"sql": query}, headers={**headers, **extra})


def test_an_uploaded_csv_becomes_a_typed_table(api: Api) -> None:
    answers = publish(api, "recensement", (REGIONS.name, REGIONS.read_bytes()))
    job = wait_job(api, answers[REGIONS.name]["job"]["id"])
    assert (job["state"], job["kind"], job["file"]) == ("done", "ingest_table", REGIONS.name)
    assert job["dataset"] == {"org": ORG, "name": "recensement"}
    assert job["result"]["rows"] == 12

    info = api.http.get(f"{API}/datasets/{ORG}/recensement").json()
    table = info["files"][0]["table"]
    assert table["status"] == "ready"
    assert table["sql_name"] == REGIONS_SQL
    assert table["rows"] == 12
    assert table["columns"] == [
        {"name": "code", "type": "VARCHAR"},
        {"name": "code_digits", "type": "VARCHAR"},
        {"name": "name_fr", "type": "VARCHAR"},
        {"name": "name_ar", "type": "VARCHAR"},
        {"name": "population_2024", "type": "BIGINT"},
        {"name": "households_2024", "type": "BIGINT"},
        {"name": "provinces", "type": "BIGINT"},
        {"name": "communes", "type": "BIGINT"},
    ]
    # The original stays byte-exact.
    original = api.http.get(f"{API}/datasets/{ORG}/recensement/files/{REGIONS.name}")
    assert original.content == REGIONS.read_bytes()


def test_rows_sort_filter_and_page(census: Api) -> None:
    url = f"{API}/tables/{ORG}/recensement/{REGIONS.name}/rows"
    top = census.http.get(url, params={"sort": "-population_2024", "limit": 2}).json()
    assert top["total"] == 12
    assert [r[2] for r in top["rows"]] == ["Casablanca-Settat", "Rabat-Salé-Kénitra"]
    assert [r[4] for r in top["rows"]] == [7688967, 5132639]
    one = census.http.get(url, params={"code": "01"}).json()
    assert one["total"] == 1
    assert one["rows"][0][3] == "طنجة-تطوان-الحسيمة"
    big = census.http.get(url, params={"population_2024__gt": 4000000, "sort": "code"}).json()
    with open(REGIONS, encoding="utf-8") as f:
        expected = sorted(r["code"] for r in csv.DictReader(f) if int(r["population_2024"]) > 4e6)
    assert [r[0] for r in big["rows"]] == expected == ["01", "03", "04", "06", "07"]
    assert big["total"] == 5

    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 5, "sort": "name_fr"}
        if cursor:
            params["next"] = cursor
        page = census.http.get(url, params=params).json()
        seen += [r[2] for r in page["rows"]]
        cursor = page["next"]
        if cursor is None:
            break
    with open(REGIONS, encoding="utf-8") as f:
        assert seen == sorted(row["name_fr"] for row in csv.DictReader(f))

    bad = census.http.get(url, params={"nope": "1"})
    assert bad.status_code == 400
    assert "nope" in bad.json()["error"]["message"]


def test_schema_and_profile(census: Api) -> None:
    base = f"{API}/tables/{ORG}/recensement/{REGIONS.name}"
    schema = census.http.get(base + "/schema").json()
    assert (schema["sql_name"], schema["rows"], schema["encoding"]) == (REGIONS_SQL, 12, "utf-8")
    assert schema["problem_count"] == 0
    # Statistics come from a job of their own, after the table is queryable.
    deadline = time.monotonic() + 30
    while (profile := census.http.get(base + "/profile").json())["status"] != "ready":
        assert profile["status"] == "pending" and profile["columns"] is None
        assert time.monotonic() < deadline
        time.sleep(0.05)
    population = profile["columns"]["population_2024"]
    assert (population["nulls"], population["min"], population["max"]) == (0, 219965, 7688967)


def test_sql_aggregates_and_joins_across_tables(census: Api) -> None:
    r = sql(census, f"SELECT sum(population_2024) AS total FROM {REGIONS_SQL}")
    assert r.status_code == 200, r.text
    # DuckDB sums BIGINTs into a 128-bit HUGEINT; JSON carries it as a plain number.
    assert r.json()["columns"] == [{"name": "total", "type": "HUGEINT"}]
    assert r.json()["rows"] == [[36828330]]
    # Every region's population is the sum of its provinces and prefectures (the 8
    # Casablanca arrondissements are already inside the Casablanca prefecture).
    mismatches = sql(
        census,
        f"""
        SELECT r.code FROM {REGIONS_SQL} r JOIN {PROVINCES_SQL} p ON p.region_code = r.code
        WHERE p.type <> 'prefecture_of_arrondissements'
        GROUP BY r.code, r.population_2024 HAVING sum(p.population_2024) <> r.population_2024
    """,
    )
    assert mismatches.status_code == 200, mismatches.text
    assert mismatches.json()["rows"] == []


def test_sql_streams_csv_arrow_and_parquet(census: Api) -> None:
    query = f"SELECT code, name_ar, population_2024 FROM {REGIONS_SQL} ORDER BY code"
    as_csv = sql(census, query, Accept="text/csv")
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    assert rows[0] == ["code", "name_ar", "population_2024"]
    assert rows[1] == ["01", "طنجة-تطوان-الحسيمة", "4030222"]
    assert len(rows) == 13

    arrow = sql(census, query, Accept="application/vnd.apache.arrow.stream")
    table = pa.ipc.open_stream(arrow.content).read_all()
    assert table.num_rows == 12
    assert table.column("population_2024").to_pylist()[0] == 4030222

    parquet = sql(census, query, Accept="application/vnd.apache.parquet")
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.column("code").to_pylist()[:3] == ["01", "02", "03"]


def test_a_private_table_does_not_exist_for_strangers(api: Api) -> None:
    publish(api, "dossiers", (REGIONS.name, REGIONS.read_bytes()), access="private")
    name = "ministere_sante_dossiers_morocco_regions_rgph2024"
    for token in (None, api.outsider):
        r = sql(api, f"SELECT count(*) FROM {name}", token)
        assert r.status_code == 400
        assert name in r.json()["error"]["message"]
        assert "does not exist" in r.json()["error"]["message"]
        rows = api.http.get(
            f"{API}/tables/{ORG}/dossiers/{REGIONS.name}/rows",
            headers=api.auth(token) if token else {},
        )
        assert rows.status_code == 404
    ok = sql(api, f"SELECT count(*) FROM {name}", api.editor)
    assert ok.json()["rows"] == [[12]]


def test_an_arabic_windows_1256_csv_reads_like_its_utf8_twin(api: Api) -> None:
    publish(
        api,
        "encodages",
        (REGIONS.name, REGIONS.read_bytes()),
        (REGIONS_CP1256.name, REGIONS_CP1256.read_bytes()),
    )
    utf8 = "ministere_sante_encodages_morocco_regions_rgph2024"
    cp1256 = "ministere_sante_encodages_morocco_regions_rgph2024_cp1256"
    r = sql(api, f"SELECT * FROM {utf8} EXCEPT SELECT * FROM {cp1256}")
    assert r.json()["rows"] == []
    r = sql(api, f"SELECT count(*) FROM {cp1256} WHERE name_ar = 'الشرق'")
    assert r.json()["rows"] == [[1]]
    schema = api.http.get(f"{API}/tables/{ORG}/encodages/{REGIONS_CP1256.name}/schema").json()
    assert schema["encoding"] in ("windows-1256", "cp1256")


def test_a_file_that_is_not_a_table_stays_downloadable_and_says_why(api: Api) -> None:
    garbage = bytes(range(256)) * 40
    answers = publish(api, "brut", ("mesures.csv", garbage))
    job = wait_job(api, answers["mesures.csv"]["job"]["id"])
    assert job["state"] == "failed"
    info = api.http.get(f"{API}/datasets/{ORG}/brut").json()
    table = info["files"][0]["table"]
    assert table["status"] == "failed"
    assert table["error"] == job["error"]
    assert api.http.get(f"{API}/datasets/{ORG}/brut/files/mesures.csv").content == garbage
    r = api.http.get(f"{API}/tables/{ORG}/brut/mesures.csv/rows")
    assert r.status_code == 422


def test_identical_uploads_share_one_ingest(census: Api) -> None:
    again = publish(census, "copie", ("regions.csv", REGIONS.read_bytes()))
    assert again["regions.csv"]["job"] is None  # the table exists already
    r = sql(census, "SELECT count(*) FROM ministere_sante_copie_regions")
    assert r.json()["rows"] == [[12]]


def test_declared_reading_options_are_honoured(api: Api) -> None:
    data = "nom;valeur\nété;1\nhiver;2\n".encode("latin-1")
    publish(api, "options", ("saisons.csv", data), query="?encoding=latin-1&delimiter=;")
    r = sql(api, "SELECT nom, valeur FROM ministere_sante_options_saisons ORDER BY valeur")
    assert r.json()["rows"] == [["été", 1], ["hiver", 2]]
    bad = api.http.put(
        f"{API}/datasets/{ORG}/options/files/x.csv?encoding=klingon",
        content=b"a\n1\n",
        headers=api.auth(api.editor),
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "unknown text encoding 'klingon'"


def test_the_same_bytes_read_with_other_options_are_another_table(api: Api) -> None:
    # One file's bytes, two assets: each table is read with its own file's options.
    data = b"nom,valeur\nhiver,1\nete,2\n"
    publish(api, "lu", ("saisons.csv", data))
    publish(api, "brut", ("saisons.csv", data), query="?header=false")
    both = (
        "SELECT (SELECT count(*) FROM ministere_sante_lu_saisons),"
        " (SELECT count(*) FROM ministere_sante_brut_saisons),"
        " (SELECT max(valeur) FROM ministere_sante_lu_saisons)"
    )
    r = sql(api, both)
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[2, 3, 2]]
    r = sql(api, "SELECT * FROM ministere_sante_brut_saisons ORDER BY 2")
    assert r.json()["rows"] == [["hiver", "1"], ["ete", "2"], ["nom", "valeur"]]


def test_a_table_still_being_prepared_is_a_409_then_answers(api: Api) -> None:
    api.hub.stop_workers()
    r = api.http.post(
        f"{API}/datasets", json={"org": ORG, "name": "attente"}, headers=api.auth(api.editor)
    )
    assert r.status_code == 201, r.text
    r = api.http.put(
        f"{API}/datasets/{ORG}/attente/files/lits.csv",
        content=b"hopital,lits\nIbn Sina,1200\n",
        headers=api.auth(api.editor),
    )
    assert r.status_code == 200, r.text
    r = sql(api, "SELECT sum(lits) FROM ministere_sante_attente_lits")
    assert r.status_code == 409
    assert r.json()["error"]["message"] == (
        "table ministere_sante_attente_lits is being prepared; try again soon"
    )
    assert api.hub.runner.run_pending() == 2  # the ingest, then the profile
    r = sql(api, "SELECT sum(lits) FROM ministere_sante_attente_lits")
    assert r.json()["rows"] == [[1200]]


def test_refused_sql_is_a_400_with_the_reason(census: Api) -> None:
    for query in (
        "DROP TABLE x",
        "SELECT * FROM read_csv_auto('/etc/passwd')",
        "COPY (SELECT 1) TO '/tmp/x.csv'",
        "ATTACH '/tmp/x.db'",
        "INSTALL httpfs",
        "SELECT 1; SELECT 2",
        "SET memory_limit='100GB'",
    ):
        r = sql(census, query)
        assert r.status_code == 400, query
        assert r.json()["error"]["code"] == "bad_request"
        assert r.json()["error"]["message"]
