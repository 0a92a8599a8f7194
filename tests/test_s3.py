"""Blobs and tables in an S3-compatible store: a real SeaweedFS on loopback, checked with boto3.

These run in every suite (the session's SeaweedFS starts on first use). The rest of the suite
runs against S3 too with KHAZNA_TEST_STORAGE=s3.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from khazna.config import Settings
from khazna.errors import BadRequest
from khazna.hub import Hub
from khazna.storage.location import parse_s3_url
from khazna.storage.s3 import PART_SIZE, S3BlobStore
from khazna.tables.query import Column, Sandbox, TableRef, read_rows
from tests.conftest import Api
from tests.seaweedfs import SeaweedFS
from tests.test_query import BIG_SQL, ESCAPES, FILES, NOT_SELECT
from tests.test_tables_api import ORG, REGIONS, REGIONS_SQL, publish

API = "/api/v1"
MiB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_key(digest: str, namespace: str = "blobs") -> str:
    return f"{namespace}/{digest[:2]}/{digest[2:4]}/{digest}"


@pytest.fixture
def bucket(s3_url: str) -> str:
    return parse_s3_url(s3_url).bucket


@pytest.fixture
def hub(
    s3_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Hub]:  # replaces conftest's hub here: this module is about S3 whatever the mode
    monkeypatch.setenv("KHAZNA_STORAGE_URL", s3_url)
    monkeypatch.setenv("KHAZNA_STORAGE_JURISDICTION", "MA")
    h = Hub(Settings.from_env(tmp_path / "hub"))
    yield h
    h.close()


def all_keys(seaweed: SeaweedFS, bucket: str) -> list[str]:
    return seaweed.keys(bucket)


def in_progress(seaweed: SeaweedFS, bucket: str) -> list[str]:
    uploads = seaweed.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return sorted(u["Key"] for u in uploads)


def new_dataset(api: Api, name: str, **fields: object) -> None:
    r = api.http.post(
        f"{API}/datasets", json={"org": ORG, "name": name, **fields}, headers=api.auth(api.editor)
    )
    assert r.status_code == 201, r.text


# ---------------------------------------------------------------------------------------------
# blobs


def test_an_uploaded_file_lands_in_the_bucket_under_its_hash(
    api: Api, seaweed: SeaweedFS, bucket: str
) -> None:
    new_dataset(api, "scenes")
    small = REGIONS.read_bytes()
    large = os.urandom(2 * PART_SIZE + 12345)  # three parts of a multipart upload
    for name, data in (("regions.csv", small), ("scene.bin", large)):
        r = api.http.put(
            f"{API}/datasets/{ORG}/scenes/files/{name}", content=data, headers=api.auth(api.editor)
        )
        assert r.status_code == 200, r.text
        assert (r.json()["sha256"], r.json()["size"]) == (sha(data), len(data))
        got = seaweed.client.get_object(Bucket=bucket, Key=blob_key(sha(data)))
        assert got["Body"].read() == data
    originals = [k for k in all_keys(seaweed, bucket) if not k.startswith("derived/")]
    assert originals == sorted([blob_key(sha(small)), blob_key(sha(large))])  # no tmp/ left
    assert in_progress(seaweed, bucket) == []
    assert not (api.hub.settings.home / "blobs").exists()

    info = api.http.get(f"{API}/datasets/{ORG}/scenes").json()
    assert info["storage"] == {"kind": "s3", "jurisdiction": "MA", "location": f"s3://{bucket}"}


def test_downloads_with_range_read_exact_slices_from_the_bucket(api: Api) -> None:
    new_dataset(api, "ranges")
    data = os.urandom(PART_SIZE + 1000)
    url = f"{API}/datasets/{ORG}/ranges/files/blob.bin"
    assert api.http.put(url, content=data, headers=api.auth(api.editor)).status_code == 200

    whole = api.http.get(url)
    assert (whole.status_code, whole.content) == (200, data)
    part = api.http.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert part.content == data[100:200]
    across = api.http.get(url, headers={"Range": f"bytes={PART_SIZE - 10}-{PART_SIZE + 9}"})
    assert across.content == data[PART_SIZE - 10 : PART_SIZE + 10]
    tail = api.http.get(url, headers={"Range": "bytes=-7"})
    assert (tail.status_code, tail.content) == (206, data[-7:])
    beyond = api.http.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416


def test_a_wrong_announced_hash_stores_nothing(api: Api, seaweed: SeaweedFS, bucket: str) -> None:
    new_dataset(api, "bad")
    for data in (b"small", os.urandom(PART_SIZE + 1)):
        r = api.http.put(
            f"{API}/datasets/{ORG}/bad/files/x.bin",
            content=data,
            headers={**api.auth(api.editor), "X-Content-SHA256": "0" * 64},
        )
        assert r.status_code == 422
    assert all_keys(seaweed, bucket) == []
    assert in_progress(seaweed, bucket) == []


def test_an_aborted_multipart_writer_leaves_nothing(
    hub: Hub, seaweed: SeaweedFS, bucket: str
) -> None:
    writer = hub.blobs.writer(10**9)
    writer.write(os.urandom(PART_SIZE + 5))
    assert len(in_progress(seaweed, bucket)) == 1
    writer.abort()
    assert in_progress(seaweed, bucket) == []
    assert all_keys(seaweed, bucket) == []


def test_abandoned_temporaries_are_cleared_by_age(
    hub: Hub, seaweed: SeaweedFS, bucket: str
) -> None:
    """A process killed mid-upload leaves a multipart upload (or a temporary object). Other
    hub processes may share the bucket, so only age tells them from uploads in progress."""
    writer = hub.blobs.writer(10**9)
    writer.write(os.urandom(PART_SIZE + 5))  # one part sent; then the process "dies"
    seaweed.client.put_object(Bucket=bucket, Key="tmp/upload-left-by-a-crash", Body=b"x")
    assert isinstance(hub.blobs, S3BlobStore)
    assert hub.blobs.clear_stale_temporaries() == 0  # both younger than a day
    assert len(in_progress(seaweed, bucket)) == 1
    assert hub.blobs.clear_stale_temporaries(older_than_s=0) == 2
    assert in_progress(seaweed, bucket) == []
    assert all_keys(seaweed, bucket) == []


def test_two_hubs_sharing_a_bucket_see_the_same_bytes(
    hub: Hub, s3_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = os.urandom(PART_SIZE * 2)
    writer = hub.blobs.writer(10**9)
    writer.write(data)
    first = writer.commit()
    assert first.created

    other = Hub(Settings.from_env(tmp_path / "other"))
    try:
        assert other.blobs.exists(first.sha256)
        assert other.blobs.size(first.sha256) == len(data)
        assert b"".join(other.blobs.read_range(first.sha256, 10, 20)) == data[10:30]
        assert other.blobs.rehash(first.sha256) == first.sha256
        assert list(other.blobs.iter_hashes()) == [first.sha256]
        # The same content written through the other hub is not stored twice.
        again = other.blobs.writer(10**9)
        again.write(data)
        assert again.commit().created is False
    finally:
        other.close()


# ---------------------------------------------------------------------------------------------
# tables


def test_a_table_is_ingested_to_the_bucket_and_queried_there(
    api: Api, seaweed: SeaweedFS, bucket: str
) -> None:
    publish(api, "recensement", (REGIONS.name, REGIONS.read_bytes()))
    parquet = [k for k in all_keys(seaweed, bucket) if k.startswith("derived/")]
    assert len(parquet) == 1
    assert not (api.hub.settings.home / "derived").exists()
    # The job's local copy of the original (and the profile job's of the Parquet) go.
    work = api.hub.settings.home / "work"
    deadline = time.monotonic() + 30
    while list(work.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(work.iterdir()) == []

    r = api.http.post(
        f"{API}/sql",
        json={"sql": f"SELECT count(*) AS n, sum(population_2024) AS p FROM {REGIONS_SQL}"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[12, 36828330]]

    r = api.http.get(
        f"{API}/tables/{ORG}/recensement/{REGIONS.name}/rows",
        params={"limit": 2, "sort": "-population_2024"},
    )
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["total"] == 12
    assert [row[2] for row in page["rows"]] == ["Casablanca-Settat", "Rabat-Salé-Kénitra"]

    # The statistics job read the Parquet from the bucket too.
    meta = api.http.get(f"{API}/datasets/{ORG}/recensement").json()
    assert meta["files"][0]["table"]["status"] == "ready"


def _s3_table(store: S3BlobStore, folder: Path, sql_name: str, select_sql: str) -> TableRef:
    local = folder / f"{sql_name}.parquet"
    con = duckdb.connect()
    con.execute(f"COPY ({select_sql}) TO '{local}' (FORMAT parquet, ROW_GROUP_SIZE 20000)")
    described = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{local}')").fetchall()
    con.close()
    digest = sha(local.read_bytes())
    store.link_file(local, digest, local.stat().st_size)
    return TableRef(
        sql_name,
        store.url_of(digest),
        pq.ParquetFile(local).metadata.num_rows,
        [Column(name, type_name) for name, type_name, *_ in described],
        filesystem=store.filesystem,
    )


@pytest.fixture
def s3_tables(hub: Hub, tmp_path: Path) -> dict[str, TableRef]:
    """Two tables in the bucket: the caller's, and another one it must not reach."""
    store = hub.derived
    assert isinstance(store, S3BlobStore)
    five = "SELECT range AS id, range * 2 AS twice FROM range(5)"
    mine = _s3_table(store, tmp_path, "mine", five)
    theirs = _s3_table(store, tmp_path, "theirs", "SELECT 'secret' AS s")
    return {"mine": mine, "theirs": theirs}


def test_the_sandbox_reads_the_callers_s3_table(s3_tables: dict[str, TableRef]) -> None:
    out = Sandbox({"mine": s3_tables["mine"]}).run(
        "SELECT sum(twice), current_setting('enable_external_access'), "
        "current_setting('lock_configuration') FROM mine"
    )
    assert out.json(10)["rows"] == [[20, False, True]]
    page = read_rows(s3_tables["mine"], limit=2, offset=3)
    assert page["rows"] == [[3, 6], [4, 8]]
    assert page["total"] == 5


S3_ESCAPES = [
    # another object of the same bucket, by its exact URL, a variant of it, or a glob
    ("SELECT * FROM read_parquet('{theirs}')", FILES),
    ("SELECT * FROM read_blob('{theirs}')", FILES),
    ("SELECT * FROM read_text('{theirs}')", FILES),
    ("SELECT * FROM read_parquet(['{mine}', '{theirs}'])", FILES),
    ("SELECT * FROM read_parquet('{theirs_dotted}')", FILES),
    ("SELECT * FROM read_parquet('{theirs_doubled}')", FILES),
    ("SELECT * FROM read_parquet('{mine_upper}')", FILES),
    ("SELECT * FROM read_parquet('{mine}/../{theirs_name}')", FILES),
    ("SELECT * FROM read_parquet('s3://{bucket}/derived/*/*/*')", FILES),
    ("SELECT * FROM read_parquet('s3://{bucket}/**')", FILES),
    ("SELECT * FROM glob('s3://{bucket}/*')", FILES),
    ("SELECT * FROM read_csv('s3://{bucket}/blobs/aa/bb/x')", FILES),
    # another bucket, and the plain local files
    ("SELECT * FROM read_parquet('s3://other-bucket/x.parquet')", FILES),
    ("SELECT * FROM read_csv('/etc/passwd')", FILES),
    ("SELECT * FROM read_parquet('/etc/passwd')", FILES),
    ("SELECT * FROM glob('/*')", FILES),
    ("SELECT * FROM 'https://example.com/data.parquet'", FILES),
    # writing to the bucket, and everything else that is not a SELECT
    ("COPY mine TO 's3://{bucket}/derived/evil.parquet'", f"{NOT_SELECT}, not COPY"),
    ("COPY (SELECT 1) TO '{mine}' (FORMAT parquet)", f"{NOT_SELECT}, not COPY"),
    ("ATTACH 's3://{bucket}/x.db'", f"{NOT_SELECT}, not ATTACH"),
    ("INSTALL httpfs", f"{NOT_SELECT}, not INSTALL or LOAD"),
    ("SET allowed_paths = ['s3://{bucket}/**']", f"{NOT_SELECT}, not SET or RESET"),
    ("SELECT * FROM theirs", "Table with name theirs does not exist"),
]


@pytest.mark.parametrize(("sql", "message"), S3_ESCAPES)
def test_escapes_from_an_s3_table_are_refused(
    s3_tables: dict[str, TableRef], bucket: str, sql: str, message: str
) -> None:
    mine, theirs = str(s3_tables["mine"].parquet), str(s3_tables["theirs"].parquet)
    text = sql.format(
        mine=mine,
        theirs=theirs,
        theirs_name=theirs.rsplit("/", 1)[-1],
        theirs_dotted=theirs.replace("/derived/", "/derived/./"),
        theirs_doubled=theirs.replace("/derived/", "//derived/"),
        mine_upper=mine.replace("s3://", "S3://"),
        bucket=bucket,
    )
    with pytest.raises(BadRequest, match=message.replace("(", r"\(")):
        Sandbox({"mine": s3_tables["mine"]}).run(text).json(10)


@pytest.mark.parametrize(("sql", "message"), ESCAPES)
def test_every_local_escape_is_refused_with_an_s3_table_too(
    hub: Hub, tmp_path: Path, sql: str, message: str
) -> None:
    """tests/test_query.py's whole list, with its table `regions` in the bucket."""
    store = hub.derived
    assert isinstance(store, S3BlobStore)
    regions = _s3_table(store, tmp_path, "regions", "SELECT 1 AS code, 'Tanger' AS capital")
    (tmp_path / "big.parquet").write_bytes(b"")  # what {folder} globs would find
    with pytest.raises(BadRequest, match=message.replace("(", r"\(")):
        Sandbox({"regions": regions}).run(sql.format(folder=tmp_path)).json(10)


def test_the_other_table_is_readable_only_by_a_caller_given_it(
    s3_tables: dict[str, TableRef],
) -> None:
    # The refusals above are about the path, not a broken filesystem: given the table,
    # the same URL reads.
    out = Sandbox({"theirs": s3_tables["theirs"]}).run("SELECT s FROM theirs").json(10)
    assert out["rows"] == [["secret"]]


def test_a_missing_s3_table_is_a_server_fault_naming_the_table(
    s3_tables: dict[str, TableRef], bucket: str
) -> None:
    gone = TableRef(
        "gone",
        f"s3://{bucket}/derived/00/00/" + "0" * 64,
        1,
        [Column("x", "INTEGER")],
        filesystem=s3_tables["mine"].filesystem,
    )
    with pytest.raises(Exception) as failed:
        Sandbox({"gone": gone}).run("SELECT 1")
    assert not isinstance(failed.value, BadRequest)
    assert bucket not in str(failed.value)


def test_a_query_on_one_column_fetches_only_its_bytes(hub: Hub, tmp_path: Path) -> None:
    """DuckDB reads the footer and the needed column chunks with ranged GETs, not the file."""
    store = hub.derived
    assert isinstance(store, S3BlobStore)
    wide = (
        "SELECT range AS id, md5(range::VARCHAR) || md5((range + 1)::VARCHAR) AS filler "
        "FROM range(200000)"
    )
    table = _s3_table(store, tmp_path, "wide", wide)
    size = store.size(str(table.parquet).rsplit("/", 1)[-1])
    fs = store.filesystem
    before = fs.bytes_fetched
    out = Sandbox({"wide": table}).run("SELECT sum(id) FROM wide").json(10)
    assert out["rows"] == [[sum(range(200000))]]
    fetched = fs.bytes_fetched - before
    # id is about a tenth of the file; filler (two md5 texts a row) the rest.
    assert 0 < fetched < size // 4, (fetched, size)
    # Objects never change: a second query on the same column is served from memory.
    before, requests = fs.bytes_fetched, fs.requests
    out = Sandbox({"wide": table}).run("SELECT avg(id) FROM wide").json(10)
    assert out["rows"] == [[99_999.5]]
    assert (fs.bytes_fetched - before, fs.requests - requests) == (0, 0)
    # The other column is fetched when a query needs it, and it is most of the file.
    before = fs.bytes_fetched
    out = Sandbox({"wide": table}).run("SELECT sum(length(filler)) FROM wide").json(10)
    assert out["rows"] == [[200_000 * 64]]
    assert fs.bytes_fetched - before > size // 2


def test_a_big_table_pages_from_s3_like_from_disk(hub: Hub, tmp_path: Path) -> None:
    store = hub.derived
    assert isinstance(store, S3BlobStore)
    table = _s3_table(store, tmp_path, "big", BIG_SQL)
    page = read_rows(table, limit=3, offset=150_000)
    assert [r[0] for r in page["rows"]] == [150_000, 150_001, 150_002]
    filtered = read_rows(table, limit=2, filters=[("grp", "eq", "g3")], sort="-id")
    assert [r[0] for r in filtered["rows"]] == [199_993, 199_986]
    assert filtered["total"] == len([i for i in range(200_000) if i % 7 == 3])


# ---------------------------------------------------------------------------------------------
# residency


def test_a_residency_refusal_leaves_no_object_behind(
    api: Api, seaweed: SeaweedFS, bucket: str
) -> None:
    """The hub's bucket is under MA law; a dataset that must stay in FR is refused, whole."""
    new_dataset(api, "hors-sol", residency="FR")
    data = os.urandom(PART_SIZE + 10)
    r = api.http.put(
        f"{API}/datasets/{ORG}/hors-sol/files/x.bin", content=data, headers=api.auth(api.editor)
    )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "residency"
    assert r.json()["error"]["message"] == (
        f"dataset {ORG}/hors-sol requires its data to stay in FR, but this hub's storage (s3) "
        "is in MA; nothing was stored"
    )
    r = api.http.post(
        f"{API}/datasets/{ORG}/hors-sol/uploads",
        json={"files": [{"name": "x.bin", "size": len(data)}]},
        headers=api.auth(api.editor),
    )
    assert (r.status_code, r.json()["error"]["code"]) == (403, "residency")
    assert all_keys(seaweed, bucket) == []
    assert in_progress(seaweed, bucket) == []
    info = api.http.get(f"{API}/datasets/{ORG}/hors-sol").json()
    assert (info["residency"], info["version"]) == ("FR", 0)
    assert info["storage"] == {"kind": "s3", "jurisdiction": "MA", "location": f"s3://{bucket}"}


def test_a_matching_residency_is_stored(api: Api, seaweed: SeaweedFS, bucket: str) -> None:
    new_dataset(api, "sur-sol", residency="ma")
    r = api.http.put(
        f"{API}/datasets/{ORG}/sur-sol/files/x.bin", content=b"ok", headers=api.auth(api.editor)
    )
    assert r.status_code == 200, r.text
    assert all_keys(seaweed, bucket) == [blob_key(sha(b"ok"))]
    assert api.http.get(f"{API}/datasets/{ORG}/sur-sol").json()["residency"] == "MA"


def test_storage_urls_are_checked_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    for url, message in [
        ("s3://UPPER?endpoint=http://127.0.0.1:1", "invalid bucket"),
        ("s3://key:secret@bucket", "must not hold credentials"),
        ("s3://bucket?endpoint=ftp://x", "endpoint must be an http"),
        ("s3://bucket?acl=public", "unknown parameter acl"),
        ("file:///tmp/x", "must start with s3://"),
    ]:
        monkeypatch.setenv("KHAZNA_STORAGE_URL", url)
        with pytest.raises(ValueError, match=message):
            Settings.from_env("/tmp/unused")
    monkeypatch.setenv("KHAZNA_STORAGE_URL", "s3://data-hub/prod/v1?endpoint=http://10.0.0.5:8333")
    monkeypatch.setenv("KHAZNA_STORAGE_JURISDICTION", "ma")
    storage = Settings.from_env("/tmp/unused").storage
    assert storage.as_dict() == {
        "kind": "s3",
        "jurisdiction": "MA",
        "location": "s3://data-hub/prod/v1",
    }
    assert storage.s3 is not None and storage.s3.key("blobs", "ab") == "prod/v1/blobs/ab"
    monkeypatch.setenv("KHAZNA_STORAGE_JURISDICTION", "Morocco")
    with pytest.raises(ValueError, match="two-letter country code"):
        Settings.from_env("/tmp/unused")
