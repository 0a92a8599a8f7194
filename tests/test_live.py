"""Stories against a real `khazna serve` process on a loopback port."""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

from khazna.client import Client, KhaznaClientError
from tests.conftest import DATA_FILES, LiveServer, leftovers, local_disk_only
from tests.proxy import CuttingProxy

MiB = 1024 * 1024


def make_dataset(server: LiveServer, org: str = "haut-commissariat", name: str = "recensement"):
    with server.client() as c:
        if c.get(f"/api/v1/organizations/{org}").status_code == 404:
            assert c.post("/api/v1/organizations", json={"name": org}).status_code == 201
        r = c.post("/api/v1/datasets", json={"org": org, "name": name, "title": "Recensement"})
        assert r.status_code == 201, r.text


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_every_real_fixture_round_trips_byte_exact(live: LiveServer, tmp_path: Path) -> None:
    """A publisher pushes every real file; a consumer pulls them back identical."""
    assert len(DATA_FILES) >= 11
    publisher = Client(live.url, live.token, state_dir=tmp_path / "state")
    result = publisher.push("demo-publisher/fixtures", DATA_FILES, message="all fixtures")
    assert result["version"] == 1
    expected = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in DATA_FILES}
    assert {f["name"]: f["sha256"] for f in result["files"]} == expected

    consumer = Client(live.url, token="")  # anonymous: the dataset is public
    paths = consumer.pull("demo-publisher/fixtures", tmp_path / "out")
    assert sorted(p.name for p in paths) == sorted(expected)
    for original in DATA_FILES:
        assert (tmp_path / "out" / original.name).read_bytes() == original.read_bytes()
    assert leftovers(live.home)["tmp"] == []


def test_a_killed_upload_leaves_nothing_behind(live: LiveServer) -> None:
    make_dataset(live)
    with live.client() as c:
        first = c.put(
            "/api/v1/datasets/haut-commissariat/recensement/files/a.csv", content=b"x,y\n1,2\n"
        )
        assert first.json()["version"] == 1
    before = leftovers(live.home)

    # Announce 20 MiB, send 9 MiB (more than one 8 MiB part of an S3 multipart upload, so
    # something is stored either way), then drop the connection.
    sock = socket.create_connection(("127.0.0.1", int(live.url.rsplit(":", 1)[1])))
    sock.sendall(
        b"PUT /api/v1/datasets/haut-commissariat/recensement/files/a.csv HTTP/1.1\r\n"
        b"Host: x\r\nAuthorization: Bearer " + live.token.encode() + b"\r\n"
        b"Content-Length: " + str(20 * MiB).encode() + b"\r\n\r\n"
    )
    sock.sendall(os.urandom(9 * MiB))
    assert wait_until(lambda: len(leftovers(live.home)["tmp"]) == 1), "upload never started"
    sock.close()

    assert wait_until(lambda: leftovers(live.home)["tmp"] == [])
    assert leftovers(live.home) == before
    with live.client() as c:
        info = c.get("/api/v1/datasets/haut-commissariat/recensement").json()
        assert info["version"] == 1
        assert (
            c.get("/api/v1/datasets/haut-commissariat/recensement/files/a.csv").content
            == b"x,y\n1,2\n"
        )


def test_uploads_over_the_limit_get_413_with_the_limit(live_factory) -> None:
    server = live_factory({"KHAZNA_MAX_UPLOAD_BYTES": str(MiB)})
    make_dataset(server)
    url = "/api/v1/datasets/haut-commissariat/recensement/files/big.bin"
    with server.client() as c:
        # Announced too large: refused before any byte is read.
        r = c.put(url, content=os.urandom(MiB + 1))
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "too_large"
        assert "1.049 MB (1048576 bytes)" in r.json()["error"]["message"]

        # Streamed without a length: refused when the limit is crossed.
        def chunks():
            for _ in range(3):
                yield os.urandom(512 * 1024)

        r = c.put(url, content=chunks())
        assert r.status_code == 413
        assert r.json()["error"]["limit"] == MiB

        # Exactly at the limit is fine.
        ok = c.put(url, content=b"z" * MiB)
        assert ok.status_code == 200 and ok.json()["size"] == MiB

        # A resumable session cannot announce more either.
        r = c.post(
            "/api/v1/datasets/haut-commissariat/recensement/uploads",
            json={"files": [{"name": "huge.bin", "size": MiB + 1}]},
        )
        assert r.status_code == 413
    assert wait_until(lambda: leftovers(server.home)["tmp"] == [])
    assert leftovers(server.home)["blobs"] == [hashlib.sha256(b"z" * MiB).hexdigest()]


def _limit_file_size() -> None:
    # Python ignores SIGXFSZ, so writing past the limit raises OSError(EFBIG): a real
    # disk error from the kernel, the same path as a full disk.
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 * MiB, 4 * MiB))


@local_disk_only  # RLIMIT_FSIZE limits local files; an object store has no such limit
def test_a_disk_error_mid_upload_keeps_the_previous_version(live_factory) -> None:
    server = live_factory(preexec=_limit_file_size)
    make_dataset(server)
    url = "/api/v1/datasets/haut-commissariat/recensement/files/scene.bin"
    with server.client() as c:
        assert c.put(url, content=b"v1").json()["version"] == 1
        before = leftovers(server.home)
        r = c.put(url, content=os.urandom(6 * MiB))
        assert r.status_code == 507
        assert r.json()["error"]["code"] == "storage_failure"
        assert leftovers(server.home) == before
        assert c.get(url).content == b"v1"
        assert c.get("/api/v1/datasets/haut-commissariat/recensement").json()["version"] == 1


@pytest.mark.slow
def test_a_1_gib_upload_streams_in_bounded_memory(live: LiveServer) -> None:
    """The server never holds an upload in memory: RSS stays flat for a 1 GiB body."""
    make_dataset(live)
    server = psutil.Process(live.proc.pid)
    baseline = server.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server.memory_info().rss)
            time.sleep(0.02)

    watcher = threading.Thread(target=sample)
    watcher.start()
    block = os.urandom(MiB)
    expected = hashlib.sha256()
    for _ in range(1024):
        expected.update(block)

    def body():
        for _ in range(1024):
            yield block

    try:
        with live.client(timeout=300) as c:
            r = c.put(
                "/api/v1/datasets/haut-commissariat/recensement/files/big.bin", content=body()
            )
    finally:
        done.set()
        watcher.join()
    assert r.status_code == 200, r.text
    assert r.json()["size"] == 1024 * MiB
    assert r.json()["sha256"] == expected.hexdigest()
    growth = peak[0] - baseline
    assert growth < 64 * MiB, f"server RSS grew by {growth / MiB:.0f} MiB during a 1 GiB upload"


def test_push_resumes_after_a_broken_connection_without_resending(
    live: LiveServer, tmp_path: Path
) -> None:
    data = tmp_path / "scene.bin"
    data.write_bytes(os.urandom(24 * MiB))
    proxy = CuttingProxy(int(live.url.rsplit(":", 1)[1]), cut_after=10 * MiB)
    try:
        client = Client(proxy.url, live.token, state_dir=tmp_path / "state")
        result = client.push("agence-spatiale/scene", [data], chunk_size=4 * MiB)
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert result["version"] == 1
    assert result["files"][0]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    # Everything went up once, plus requests' headers: nothing that arrived was resent.
    assert 24 * MiB <= proxy.bytes_up < 24 * MiB + 256 * 1024


def test_a_second_push_resumes_the_session_a_dead_one_left(
    live: LiveServer, tmp_path: Path
) -> None:
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(os.urandom(6 * MiB))
    second.write_bytes(os.urandom(6 * MiB))
    proxy = CuttingProxy(int(live.url.rsplit(":", 1)[1]), cut_after=9 * MiB)
    try:
        dying = Client(proxy.url, live.token, retries=0, state_dir=tmp_path / "state")
        with pytest.raises(KhaznaClientError) as broken:
            dying.push("agence-spatiale/scenes", [first, second], chunk_size=2 * MiB)
        assert broken.value.code == "unreachable"
        sent_before = proxy.bytes_up
        # The catalog shows nothing of a session that was not committed.
        with live.client() as c:
            assert c.get("/api/v1/datasets/agence-spatiale/scenes").json()["version"] == 0

        again = Client(proxy.url, live.token, state_dir=tmp_path / "state")
        result = again.push("agence-spatiale/scenes", [first, second], chunk_size=2 * MiB)
    finally:
        proxy.close()
    assert result["version"] == 1
    assert sorted(f["name"] for f in result["files"]) == ["a.bin", "b.bin"]
    resent = proxy.bytes_up - sent_before
    assert resent < 3 * MiB + 256 * 1024, f"resent {resent} bytes, more than what was missing"
    with live.client() as c:
        for path in (first, second):
            r = c.get(f"/api/v1/datasets/agence-spatiale/scenes/files/{path.name}")
            assert r.content == path.read_bytes()


def test_chunks_at_the_wrong_offset_are_refused_with_what_arrived(live: LiveServer) -> None:
    make_dataset(live)
    with live.client() as c:
        s = c.post(
            "/api/v1/datasets/haut-commissariat/recensement/uploads",
            json={"files": [{"name": "t.csv", "size": 10}]},
        ).json()
        put = f"/api/v1/uploads/{s['id']}/files/t.csv"
        assert c.put(put, params={"offset": 0}, content=b"12345").json()["received"] == 5
        wrong = c.put(put, params={"offset": 0}, content=b"12345")
        assert wrong.status_code == 409
        assert wrong.json()["error"] == {
            "code": "offset_mismatch",
            "message": (
                "chunk starts at byte 0 but 5 bytes of 't.csv' have arrived; resume from there"
            ),
            "received": 5,
        }
        early = c.post(f"/api/v1/uploads/{s['id']}/commit")
        assert early.status_code == 409 and early.json()["error"]["received"] == 5
        past = c.put(put, params={"offset": 5}, content=b"6789012")
        assert past.status_code == 400
        assert c.put(put, params={"offset": 5}, content=b"67890").json()["received"] == 10
        done = c.post(f"/api/v1/uploads/{s['id']}/commit").json()
        assert done["version"] == 1
        assert (
            c.get("/api/v1/datasets/haut-commissariat/recensement/files/t.csv").content
            == b"1234567890"
        )
        # Someone else's session does not exist for them.
        assert c.get(f"/api/v1/uploads/{s['id']}", headers={"Authorization": ""}).status_code == 404


def test_a_client_that_stalls_mid_upload_is_dropped_and_leaves_nothing(live_factory) -> None:
    """A vanished client that never closes its connection does not hold an upload forever."""
    server = live_factory({"KHAZNA_BODY_IDLE_TIMEOUT_S": "1"})
    make_dataset(server)
    sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    sock.sendall(
        b"PUT /api/v1/datasets/haut-commissariat/recensement/files/a.bin HTTP/1.1\r\n"
        b"Host: x\r\nAuthorization: Bearer " + server.token.encode() + b"\r\n"
        b"Content-Length: 1000\r\n\r\n" + b"x" * 400
    )
    sock.settimeout(10)
    received = b""
    while b"request_timeout" not in received and (data := sock.recv(65536)):
        received += data
    sock.close()
    answer = received.decode()
    assert answer.startswith("HTTP/1.1 408 ")
    assert '"code":"request_timeout"' in answer
    assert "nothing arrived for 1 s" in answer
    assert leftovers(server.home) == {"tmp": [], "blobs": []}


def test_concurrent_uploads_to_one_dataset_lose_nothing(live: LiveServer) -> None:
    """Eight publishers upload at once: eight versions, the last one holds all eight files."""
    make_dataset(live)
    contents = {f"part-{i}.csv": f"id,value\n{i},{i * i}\n".encode() * 1000 for i in range(8)}
    answers: dict[str, int] = {}

    def upload(name: str) -> None:
        with live.client() as c:
            r = c.put(
                f"/api/v1/datasets/haut-commissariat/recensement/files/{name}",
                content=contents[name],
            )
            assert r.status_code == 200, r.text
            answers[name] = r.json()["version"]

    threads = [threading.Thread(target=upload, args=(n,)) for n in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers.values()) == list(range(1, 9))
    with live.client() as c:
        info = c.get("/api/v1/datasets/haut-commissariat/recensement").json()
        assert info["version"] == 8
        assert {f["name"]: f["sha256"] for f in info["files"]} == {
            n: hashlib.sha256(b).hexdigest() for n, b in contents.items()
        }
        # Version N holds exactly the files whose upload answered a version <= N.
        history = c.get("/api/v1/datasets/haut-commissariat/recensement/versions").json()
        for v in history["versions"]:
            expected = sorted(n for n, got in answers.items() if got <= v["version"])
            assert sorted(f["name"] for f in v["files"]) == expected


@local_disk_only  # in a shared bucket only age tells an abandoned upload (tests/test_s3.py)
def test_a_server_killed_mid_upload_restarts_clean(live_factory) -> None:
    from tests.conftest import start_server

    server = live_factory()
    make_dataset(server)
    sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    sock.sendall(
        b"PUT /api/v1/datasets/haut-commissariat/recensement/files/a.bin HTTP/1.1\r\n"
        b"Host: x\r\nAuthorization: Bearer " + server.token.encode() + b"\r\n"
        b"Content-Length: " + str(10 * MiB).encode() + b"\r\n\r\n" + os.urandom(MiB)
    )
    assert wait_until(lambda: len(leftovers(server.home)["tmp"]) == 1)
    server.proc.kill()
    server.proc.wait()
    sock.close()
    assert len(leftovers(server.home)["tmp"]) == 1  # what the dead process left

    (server.home / "server.log").rename(server.home / "first.log")
    restarted = start_server(server.home, token=server.token)
    try:
        assert leftovers(restarted.home) == {"tmp": [], "blobs": []}
        with restarted.client() as c:
            info = c.get("/api/v1/datasets/haut-commissariat/recensement").json()
            assert (info["version"], info["files"]) == (0, [])
    finally:
        restarted.proc.terminate()
        restarted.proc.wait(10)
