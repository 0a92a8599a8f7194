"""A sovereign hub contacts nothing but its own database and storage (issue 4, point 8).

The hub runs with the demo data inside a network namespace that has only loopback: any
attempt to reach a CDN, a telemetry endpoint or a package index fails there, so if
anything in the hub depended on one, a step below would fail.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import ON_POSTGRES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="network namespaces need root and iproute2 (CI runs as root)",
    ),
    pytest.mark.skipif(
        ON_POSTGRES or os.environ.get("KHAZNA_TEST_STORAGE") == "s3",
        reason="the embedded hub's case: PostgreSQL and SeaweedFS are outside the namespace",
    ),
]

# Runs inside the namespace: starts `khazna serve --demo`, then uses it as a newcomer would.
_INSIDE = r"""
import hashlib, json, socket, subprocess, sys, time
import httpx

try:
    socket.create_connection(("1.1.1.1", 443), timeout=2).close()
    outside = "reachable"
except OSError as exc:
    outside = exc.errno
home, port = sys.argv[1], int(sys.argv[2])
server = subprocess.Popen(
    [sys.executable, "-m", "khazna", "serve", "--demo", "--port", str(port), "--home", home],
    stdout=subprocess.DEVNULL, stderr=open(home + ".log", "wb"),
)
out = {"outside": outside}
try:
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    deadline = time.monotonic() + 120
    while True:
        try:
            if http.get("/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the hub did not start"
        time.sleep(0.2)
    meta = http.get("/api/v1/datasets/demo/morocco-regions-rgph2024").json()
    table = next(f for f in meta["files"] if f.get("table"))
    sql_name = table["table"]["sql_name"]
    while True:
        r = http.post("/api/v1/sql", json={"sql": f"SELECT sum(population_2024) FROM {sql_name}"})
        if r.status_code == 200:
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    out["population"] = r.json()["rows"][0][0]
    body = http.get(f"/api/v1/datasets/demo/morocco-regions-rgph2024/files/{table['name']}").content
    out["download_matches"] = hashlib.sha256(body).hexdigest() == table["sha256"]
    found = http.get("/api/v1/search", params={"q": "recensement"}).json()
    out["search"] = sorted(r["name"] for r in found["results"])
    out["found_in_arabic"] = "morocco-regions-rgph2024" in [
        r["name"] for r in http.get("/api/v1/search", params={"q": "الإحصاء"}).json()["results"]
    ]
    page = http.get("/?lang=ar")
    out["home"] = [page.status_code, 'dir="rtl"' in page.text]
finally:
    server.terminate()
    server.wait(30)
print(json.dumps(out))
"""


def test_the_hub_works_with_loopback_only(tmp_path: Path) -> None:
    namespace = f"khazna-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        inside = ["ip", "netns", "exec", namespace]
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        done = subprocess.run(
            [*inside, sys.executable, "-c", _INSIDE, str(tmp_path / "hub"), "8000"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=True)
    log = tmp_path / "hub.log"
    assert done.returncode == 0, done.stderr[-3000:] + (
        log.read_text()[-3000:] if log.exists() else ""
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["outside"] == errno.ENETUNREACH  # the namespace really has no way out
    assert out["population"] == 36828330
    assert out["download_matches"] is True
    assert "morocco-regions-rgph2024" in out["search"]
    assert out["found_in_arabic"] is True
    assert out["home"] == [200, True]
