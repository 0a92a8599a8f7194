"""Encryption at rest with the operator's key: what is stored is ciphertext, what is served is
the original, byte for byte; the hub refuses to start without its key, and verify finds a
changed byte. Runs on local disk and, with KHAZNA_TEST_STORAGE=s3, on SeaweedFS."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from khazna import db
from khazna.config import Settings
from khazna.hub import Hub
from khazna.storage.blobstore import LocalBlobStore
from khazna.storage.encryption import CHUNK, HEADER_SIZE, SEALED, EncryptedBlobStore, EncryptionKey
from khazna.storage.location import parse_s3_url
from khazna.storage.s3 import S3BlobStore, make_client
from tests.conftest import S3_MODE, Api, khazna_cmd
from tests.test_tables_api import publish, sql

API = "/api/v1"
ORG = "ministere-sante"
CANARY = "CANARY-7f3a9c-Tafraout"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A key made as an operator would, outside the hub folder."""
    folder = tmp_path / "operator-keys"
    folder.mkdir()
    path = folder / "khazna.key"
    EncryptionKey.new_file(path)
    return path


@pytest.fixture(autouse=True)
def _encrypted(key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every hub these tests make (the `hub` and `api` fixtures too) is encrypted."""
    monkeypatch.setenv("KHAZNA_ENCRYPTION_KEY_FILE", str(key_file))


def sealed_store(api: Api) -> EncryptedBlobStore:
    assert isinstance(api.hub.blobs, EncryptedBlobStore)
    return api.hub.blobs


def raw_files(hub: Hub) -> Iterator[tuple[str, bytes]]:
    """Every stored byte: the files under the hub folder but its metadata database, and in
    S3 mode every object of the bucket."""
    for p in sorted(hub.settings.home.rglob("*")):
        if p.is_file() and not p.name.startswith("khazna.db"):
            yield str(p.relative_to(hub.settings.home)), p.read_bytes()
    url = os.environ.get("KHAZNA_STORAGE_URL")
    if url:
        location = parse_s3_url(url)
        client = make_client(location)
        listing = client.list_objects_v2(Bucket=location.bucket).get("Contents", [])
        for obj in listing:
            body = client.get_object(Bucket=location.bucket, Key=obj["Key"])["Body"].read()
            yield "s3:" + obj["Key"], body


def wait_for_jobs(api: Api) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with api.hub.engine.connect() as conn:
            busy = conn.execute(
                select(db.jobs.c.id).where(db.jobs.c.state.in_(("queued", "running")))
            ).first()
        if busy is None:
            return
        time.sleep(0.05)
    raise AssertionError("jobs still running")


def read_marker(home: Path) -> bytes:
    """The marker, where the hub keeps it: beside its files."""
    url = os.environ.get("KHAZNA_STORAGE_URL")
    if not url:
        return (home / "encryption.json").read_bytes()
    location = parse_s3_url(url)
    answer = make_client(location).get_object(Bucket=location.bucket, Key="encryption.json")
    data: bytes = answer["Body"].read()
    return data


def raw_bytes(store: EncryptedBlobStore, sha: str) -> bytes:
    inner = store.inner
    return b"".join(inner.read_range(sha, 0, inner.size(sha)))


def replace_raw(store: EncryptedBlobStore, sha: str, data: bytes) -> None:
    inner = store.inner
    if isinstance(inner, LocalBlobStore):
        inner.path_of(sha).write_bytes(data)
        return
    assert isinstance(inner, S3BlobStore)
    inner.client.put_object(Bucket=inner.bucket, Key=inner.key_of(sha), Body=data)


def census_csv(rows: int = 3000) -> bytes:
    """A table of more than one chunk, with the canary in it."""
    lines = ["id,region,population,note"]
    regions = ["Souss-Massa", "Oriental", "Draa-Tafilalet"]
    for i in range(rows):
        note = CANARY if i % 100 == 7 else f"ligne {i} du recensement"
        lines.append(f"{i},{regions[i % 3]},{1000 + i},{note}")
    return ("\n".join(lines) + "\n").encode()


# -- at rest -------------------------------------------------------------------------------


def test_a_known_string_is_stored_nowhere_yet_downloads_byte_exact(api: Api) -> None:
    data = census_csv()
    assert len(data) > 2 * CHUNK and data.count(CANARY.encode()) == 30
    answers = publish(api, "recensement", ("regions.csv", data))
    sha = answers["regions.csv"]["sha256"]
    wait_for_jobs(api)  # the profile job's scratch copy is gone with it
    assert sha == hashlib.sha256(data).hexdigest()
    assert answers["regions.csv"]["size"] == len(data)
    info = api.http.get(f"{API}/datasets/{ORG}/recensement").json()
    assert info["files"][0]["table"]["status"] == "ready"

    stored = dict(raw_files(api.hub))
    blob_names = [n for n in stored if sha in n and ("blobs/" in n)]
    assert len(blob_names) == 1  # the original is there, sealed
    parquet = api.hub.tables.known_parquet()
    assert len(parquet) == 1 and any(parquet[0] in n for n in stored)
    for name, content in stored.items():
        assert CANARY.encode() not in content, name
        assert b"Souss-Massa" not in content, name
        assert b"PAR1" not in content[:4], name  # not even the Parquet magic shows
    assert len(stored[blob_names[0]]) == HEADER_SIZE + len(data) + 28 * (-(-len(data) // CHUNK))

    r = api.http.get(f"{API}/datasets/{ORG}/recensement/files/regions.csv")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["etag"] == f'"{sha}"'
    assert r.headers["content-length"] == str(len(data))


def test_the_dataset_says_its_bytes_are_encrypted(api: Api) -> None:
    publish(api, "recensement", ("notes.txt", b"bonjour"))
    storage = api.http.get(f"{API}/datasets/{ORG}/recensement").json()["storage"]
    assert storage == {
        "kind": "s3" if S3_MODE else "local",
        "jurisdiction": None,
        "location": storage["location"],
        "encrypted": True,
    }


@pytest.mark.parametrize(
    ("first", "last"),
    [
        (0, 0),
        (CHUNK - 1, CHUNK - 1),  # the last byte of chunk 0
        (CHUNK - 1, CHUNK),  # across the first boundary
        (CHUNK, 2 * CHUNK - 1),  # exactly chunk 1
        (CHUNK - 10, 3 * CHUNK + 9),  # across three boundaries
        (3 * CHUNK, 3 * CHUNK + 99),  # the short last chunk, whole
        (3 * CHUNK + 99, 3 * CHUNK + 99),  # the very last byte
    ],
)
def test_range_requests_at_and_across_chunk_boundaries(api: Api, first: int, last: int) -> None:
    data = random.Random(7).randbytes(3 * CHUNK + 100)
    publish(api, "images", ("scene.bin", data))
    r = api.http.get(
        f"{API}/datasets/{ORG}/images/files/scene.bin", headers={"Range": f"bytes={first}-{last}"}
    )
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
    assert r.content == data[first : last + 1]


def test_suffix_ranges_and_empty_files(api: Api) -> None:
    data = random.Random(8).randbytes(2 * CHUNK)  # ends exactly on a boundary
    publish(api, "images", ("scene.bin", data), ("empty.bin", b""))
    url = f"{API}/datasets/{ORG}/images/files"
    r = api.http.get(f"{url}/scene.bin", headers={"Range": "bytes=-5"})
    assert (r.status_code, r.content) == (206, data[-5:])
    r = api.http.get(f"{url}/scene.bin", headers={"Range": f"bytes={CHUNK}-"})
    assert (r.status_code, r.content) == (206, data[CHUNK:])
    r = api.http.get(f"{url}/empty.bin")
    assert (r.status_code, r.content) == (200, b"")
    assert sealed_store(api).rehash(hashlib.sha256(b"").hexdigest()) == hashlib.sha256().hexdigest()


def test_a_file_sent_through_an_upload_session_is_sealed_too(api: Api) -> None:
    data = census_csv(500)
    sha = hashlib.sha256(data).hexdigest()
    r = api.http.post(
        f"{API}/datasets", json={"org": ORG, "name": "lots"}, headers=api.auth(api.editor)
    )
    assert r.status_code == 201
    auth = api.auth(api.editor)
    r = api.http.post(
        f"{API}/datasets/{ORG}/lots/uploads",
        json={"files": [{"name": "lot.csv", "size": len(data), "sha256": sha}]},
        headers=auth,
    )
    session = r.json()["id"]
    api.http.put(f"{API}/uploads/{session}/files/lot.csv", content=data, headers=auth)
    assert api.http.post(f"{API}/uploads/{session}/commit", headers=auth).json()["version"] == 1
    assert CANARY.encode() not in raw_bytes(sealed_store(api), sha)
    info = api.http.get(f"{API}/datasets/{ORG}/lots").json()
    assert [(f["name"], f["size"], f["sha256"]) for f in info["files"]] == [
        ("lot.csv", len(data), sha)
    ]
    r = api.http.get(f"{API}/datasets/{ORG}/lots/files/lot.csv")
    assert r.headers["content-length"] == str(len(data))
    assert r.content == data


# -- tables --------------------------------------------------------------------------------


def test_a_table_on_an_encrypted_hub_answers_sql_and_rows_exactly(api: Api) -> None:
    publish(api, "recensement", ("regions.csv", census_csv()))
    name = "ministere_sante_recensement_regions"
    r = sql(
        api,
        f"SELECT region, count(*) AS n, sum(population) AS total FROM {name} "
        "GROUP BY region ORDER BY region",
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [
        ["Draa-Tafilalet", 1000, sum(1000 + i for i in range(3000) if i % 3 == 2)],
        ["Oriental", 1000, sum(1000 + i for i in range(3000) if i % 3 == 1)],
        ["Souss-Massa", 1000, sum(1000 + i for i in range(3000) if i % 3 == 0)],
    ]
    r = sql(api, f"SELECT id FROM {name} WHERE note = '{CANARY}' ORDER BY id LIMIT 3")
    assert r.json()["rows"] == [[7], [107], [207]]
    r = api.http.get(
        f"{API}/tables/{ORG}/recensement/regions.csv/rows",
        params={"limit": 2, "offset": 2998, "sort": "id"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [
        [2998, "Oriental", 3998, "ligne 2998 du recensement"],
        [2999, "Draa-Tafilalet", 3999, "ligne 2999 du recensement"],
    ]
    assert r.json()["total"] == 3000


def test_the_sandbox_refuses_every_way_around_and_never_shows_the_key(
    api: Api, key_file: Path
) -> None:
    publish(api, "recensement", ("regions.csv", census_csv()))
    publish(api, "prive", ("secret.csv", b"a,b\n1,2\n"), access="private")
    name = "ministere_sante_recensement_regions"
    parquet = api.hub.tables.known_parquet()
    assert len(parquet) == 2
    key_text = key_file.read_text().strip()
    secret = base64.b64decode(key_text)
    shown: list[str] = []
    for escape in (
        *(f"SELECT * FROM read_parquet('khazna-encrypted://derived/{p}')" for p in parquet),
        "SELECT * FROM glob('khazna-encrypted://*')",
        "SELECT * FROM read_parquet('khazna-encrypted://derived/*')",
        f"SELECT * FROM read_csv('khazna-encrypted://blobs/{hashlib.sha256(census_csv()).hexdigest()}')",
        f"SELECT count(*) FROM {name}, read_parquet('khazna-encrypted://derived/{parquet[1]}')",
        "SELECT * FROM read_blob('/etc/passwd')",
    ):
        r = sql(api, escape)
        assert r.status_code == 400, (escape, r.text)
        assert r.json()["error"]["code"] == "bad_request"
        shown.append(r.text)
    for probe in (
        "SELECT * FROM duckdb_settings()",
        "SELECT * FROM duckdb_secrets()",
        "SELECT * FROM duckdb_variables()",
        f"SELECT * FROM {name} WHERE id = 'not a number'",
        f"SELECT current_setting('allowed_paths'), * FROM {name} LIMIT 1",
    ):
        shown.append(sql(api, probe).text)
    everything = "\n".join(shown)
    for leak in (key_text, secret.hex(), base64.b64encode(secret).decode()):
        assert leak not in everything
    assert str(api.hub.settings.home) not in everything


# -- starting, and the key ----------------------------------------------------------------


def test_new_key_writes_a_0600_file_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "k" / "hub.key"
    path.parent.mkdir()
    made = subprocess.run(
        khazna_cmd("encryption", "new-key", str(path)), capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(base64.b64decode(path.read_text().strip(), validate=True)) == 32
    assert made.stdout.strip() == EncryptionKey.load(path).fingerprint
    again = subprocess.run(
        khazna_cmd("encryption", "new-key", str(path)), capture_output=True, text=True
    )
    assert again.returncode == 1
    assert again.stderr.strip() == f"error: {path} exists: a key file is never overwritten"


def _start_error(home: Path, env: dict[str, str]) -> str:
    run = subprocess.run(
        khazna_cmd("verify", "--home", str(home)),
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr  # one clear line, no traceback
    return lines[0]


def test_a_start_without_the_key_or_with_another_key_is_refused(
    tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "hub"
    hub = Hub(Settings.from_env(home))
    fingerprint = EncryptionKey.load(key_file).fingerprint
    hub.close()
    marker = json.loads(read_marker(home))
    assert marker["key_fingerprint"] == fingerprint
    assert base64.b64encode(EncryptionKey.load(key_file).secret).decode() not in json.dumps(marker)

    assert _start_error(home, {"KHAZNA_ENCRYPTION_KEY_FILE": ""}) == (
        f"error: this hub's files are encrypted at rest (key {fingerprint}): set "
        "KHAZNA_ENCRYPTION_KEY_FILE to the file holding that key"
    )
    other = tmp_path / "operator-keys" / "other.key"
    other_fingerprint = EncryptionKey.new_file(other).fingerprint
    assert _start_error(home, {"KHAZNA_ENCRYPTION_KEY_FILE": str(other)}) == (
        f"error: KHAZNA_ENCRYPTION_KEY_FILE holds key {other_fingerprint}, but this hub's "
        f"files are encrypted with key {fingerprint}: give the file holding that key"
    )
    missing = tmp_path / "operator-keys" / "gone.key"
    assert _start_error(home, {"KHAZNA_ENCRYPTION_KEY_FILE": str(missing)}) == (
        f"error: KHAZNA_ENCRYPTION_KEY_FILE ({missing}): no such file"
    )
    monkeypatch.delenv("KHAZNA_ENCRYPTION_KEY_FILE")
    with pytest.raises(ValueError, match="encrypted at rest"):
        Hub(Settings.from_env(home))


@pytest.mark.skipif(not S3_MODE, reason="hub folders share files only through a bucket")
def test_a_hub_folder_of_its_own_on_an_encrypted_bucket_is_refused_without_the_key(
    tmp_path: Path, key_file: Path
) -> None:
    Hub(Settings.from_env(tmp_path / "first")).close()
    fingerprint = EncryptionKey.load(key_file).fingerprint
    assert _start_error(tmp_path / "second", {"KHAZNA_ENCRYPTION_KEY_FILE": ""}) == (
        f"error: this hub's files are encrypted at rest (key {fingerprint}): set "
        "KHAZNA_ENCRYPTION_KEY_FILE to the file holding that key"
    )


def test_a_key_file_others_can_read_or_inside_the_hub_folder_is_refused(
    tmp_path: Path, key_file: Path
) -> None:
    home = tmp_path / "hub"
    key_file.chmod(0o644)
    assert _start_error(home, {}) == (
        f"error: KHAZNA_ENCRYPTION_KEY_FILE ({key_file}): other users may read it (mode "
        "0644); make it readable by the hub's user only (chmod 600)"
    )
    inside = home / "hub.key"
    home.mkdir(exist_ok=True)
    EncryptionKey.new_file(inside)
    assert _start_error(home, {"KHAZNA_ENCRYPTION_KEY_FILE": str(inside)}) == (
        f"error: KHAZNA_ENCRYPTION_KEY_FILE ({inside}): the key must be kept outside the "
        f"hub folder {home}, not beside the data it protects"
    )
    garbage = tmp_path / "operator-keys" / "garbage.key"
    fd = os.open(garbage, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key\n")
    os.close(fd)
    assert _start_error(home, {"KHAZNA_ENCRYPTION_KEY_FILE": str(garbage)}) == (
        f"error: KHAZNA_ENCRYPTION_KEY_FILE ({garbage}): not a key: expected the base64 "
        "text of 32 random bytes, as `khazna encryption new-key` writes"
    )


def test_encryption_is_not_turned_on_over_plaintext_files(
    tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "hub"
    monkeypatch.delenv("KHAZNA_ENCRYPTION_KEY_FILE")
    plain = Hub(Settings.from_env(home))
    writer = plain.blobs.writer(1000)
    writer.write(b"en clair")
    writer.commit()
    plain.close()
    assert _start_error(home, {"KHAZNA_ENCRYPTION_KEY_FILE": str(key_file)}) == (
        "error: this hub already holds files stored unencrypted: encryption at rest is "
        "turned on for a new hub only (unset KHAZNA_ENCRYPTION_KEY_FILE, or start a new hub)"
    )


# -- damage ---------------------------------------------------------------------------------


def _verify(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(khazna_cmd("verify", "--home", str(home)), capture_output=True, text=True)


def test_a_flipped_byte_is_found_by_verify_and_refused_to_readers(api: Api) -> None:
    data = random.Random(9).randbytes(3 * CHUNK + 100)
    sha = publish(api, "images", ("scene.bin", data))["scene.bin"]["sha256"]
    store = sealed_store(api)
    assert _verify(api.hub.settings.home).returncode == 0

    raw = bytearray(raw_bytes(store, sha))
    raw[HEADER_SIZE + SEALED + 100] ^= 0x01  # a byte of chunk 1's ciphertext
    replace_raw(store, sha, bytes(raw))
    run = _verify(api.hub.settings.home)
    assert run.returncode == 1
    assert (
        f"DAMAGED blob {sha} is damaged: chunk 1 (plaintext bytes {CHUNK}-{2 * CHUNK - 1}) "
        "fails its authentication tag"
    ) in run.stdout
    assert "1 problem(s)" in run.stdout

    url = f"{API}/datasets/{ORG}/images/files/scene.bin"
    r = api.http.get(url, headers={"Range": f"bytes=0-{CHUNK - 1}"})
    assert (r.status_code, r.content) == (206, data[:CHUNK])  # chunk 0 is intact
    r = api.http.get(url)  # found before the answer starts: an error, not wrong bytes
    assert r.status_code == 507
    assert r.json()["error"]["code"] == "storage_failure"


def test_damage_found_after_the_answer_started_cuts_it_short(api: Api) -> None:
    data = random.Random(10).randbytes(20 * CHUNK)  # answered in 1 MiB pieces: 16 chunks
    sha = publish(api, "images", ("scene.bin", data))["scene.bin"]["sha256"]
    store = sealed_store(api)
    raw = bytearray(raw_bytes(store, sha))
    raw[HEADER_SIZE + 18 * SEALED + 5] ^= 0x80
    replace_raw(store, sha, bytes(raw))
    r = api.http.get(f"{API}/datasets/{ORG}/images/files/scene.bin")
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == len(data)
    assert r.content == data[: 16 * CHUNK]  # what was sound, then the end: never a wrong byte


def test_a_blob_put_in_place_of_another_is_found(api: Api) -> None:
    answers = publish(api, "notes", ("a.txt", b"premier fichier"), ("b.txt", b"seconde fichier"))
    a, b = answers["a.txt"]["sha256"], answers["b.txt"]["sha256"]
    store = sealed_store(api)
    replace_raw(store, b, raw_bytes(store, a))  # same size, valid ciphertext, wrong file
    run = _verify(api.hub.settings.home)
    assert run.returncode == 1
    assert (
        f"DAMAGED blob {b} is damaged: its last chunk (plaintext bytes 0-14) fails its "
        "authentication tag: changed, or not this file's"
    ) in run.stdout
    r = api.http.get(f"{API}/datasets/{ORG}/notes/files/b.txt")
    assert r.status_code == 507
    assert r.json()["error"]["code"] == "storage_failure"


def test_a_raster_on_an_encrypted_hub_gives_its_cog_picture_and_ndvi(api: Api) -> None:
    """The COG, the quick-look and NDVI read the sealed files through the decrypting view."""
    from tests.test_preview import png
    from tests.test_stac import B04, ORG, SCENE, load_scene

    load_scene(api)
    store = sealed_store(api)
    item = api.http.get(f"/stac/collections/{ORG}.s2/items/{SCENE}").json()
    red = api.http.get(item["assets"]["red"]["href"])
    assert red.status_code == 200 and red.content == B04.read_bytes()
    # At rest the band is ciphertext: the plaintext's first 4 KiB are nowhere in it.
    assert B04.read_bytes()[:4096] not in raw_bytes(store, hashlib.sha256(red.content).hexdigest())
    picture = api.http.get(item["assets"]["thumbnail"]["href"])
    assert picture.status_code == 200
    assert png(picture.content).shape == (4, 512, 512)
    r = api.http.post(
        "/api/v1/datasets", json={"org": ORG, "name": "ndvi"}, headers=api.auth(api.editor)
    )
    assert r.status_code == 201
    body = {"index": "ndvi", "collection": f"{ORG}.s2", "target": f"{ORG}/ndvi"}
    r = api.http.post("/api/v1/indices", json=body, headers=api.auth(api.editor))
    assert r.status_code == 202, r.text
    wait_for_jobs(api)
    assert api.hub.jobs.get(r.json()["job"]["id"])["state"] == "done"
