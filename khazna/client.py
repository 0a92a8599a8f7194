"""Python client for a Khazna hub; the CLI's client-side commands are built on it.

from khazna.client import Client
hub = Client("http://127.0.0.1:8000", token="kz_...")
hub.push("demo/budget", ["budget-2026.csv"])
hub.pull("demo/budget", "out/")
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx

from khazna.checksums import file_sha256

DEFAULT_URL = "http://127.0.0.1:8000"
CHUNK = 16 * 1024 * 1024
READ = 1024 * 1024
BUSY_RETRIES = 50  # a few minutes of patience for the hub to notice a dead request
JOB_WAIT_S = 30.0  # one long poll of a job: well within the HTTP read timeout

# Called as progress(file_name, bytes_done, bytes_total) while a file moves.
Progress = Callable[[str, int, int], None]


class KhaznaClientError(Exception):
    """The hub answered with an error, or could not be reached."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{message} ({status} {code})" if status else message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


class IntegrityError(KhaznaClientError):
    """Downloaded bytes do not hash to the SHA-256 the hub announced."""


def split_ref(ref: str) -> tuple[str, str]:
    org, sep, name = ref.partition("/")
    if not sep or not org or not name or "/" in name:
        raise ValueError(f"expected ORG/DATASET, got {ref!r}")
    return org, name


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "khazna"


class Client:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        transport: httpx.BaseTransport | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.url = (url or os.environ.get("KHAZNA_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("KHAZNA_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries = retries
        self.state_dir = state_dir or _cache_dir()
        self._http = httpx.Client(
            base_url=self.url + "/api/v1", headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # plumbing ------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise KhaznaClientError(
                0, "unreachable", f"cannot reach the hub at {self.url}: {exc}"
            ) from exc
        _raise_for_error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The hub's JSON answer; every answer of the API is an object."""
        body: dict[str, Any] = self._request(method, path, **kwargs).json()
        return body

    # catalog -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health")

    def me(self) -> dict[str, Any]:
        return self._json("GET", "/me")

    def create_organization(
        self, name: str, title: Any = None, description: Any = None
    ) -> dict[str, Any]:
        return self._json(
            "POST",
            "/organizations",
            json={"name": name, "title": title, "description": description},
        )

    def create_dataset(
        self,
        org: str,
        name: str,
        *,
        title: Any = None,
        description: Any = None,
        tags: list[str] | None = None,
        license: str | None = None,
        access: str = "public",
    ) -> dict[str, Any]:
        body = {
            "org": org,
            "name": name,
            "title": title,
            "description": description,
            "tags": tags,
            "license": license,
            "access": access,
        }
        return self._json("POST", "/datasets", json=body)

    def dataset(self, ref: str) -> dict[str, Any]:
        org, name = split_ref(ref)
        return self._json("GET", f"/datasets/{org}/{name}")

    def ensure_dataset(self, ref: str, **fields: Any) -> dict[str, Any]:
        """The dataset, created first (with its organization if needed) when missing."""
        org, name = split_ref(ref)
        try:
            return self.dataset(ref)
        except KhaznaClientError as exc:
            if exc.status != 404:
                raise
        try:
            self.create_organization(org)
        except KhaznaClientError as exc:
            if exc.status != 409:  # it exists, we may just not see the dataset
                raise
        return self.create_dataset(org, name, **{k: v for k, v in fields.items() if v is not None})

    def versions(self, ref: str) -> list[dict[str, Any]]:
        org, name = split_ref(ref)
        history: list[dict[str, Any]] = self._json("GET", f"/datasets/{org}/{name}/versions")[
            "versions"
        ]
        return history

    def search(self, q: str = "", **filters: Any) -> dict[str, Any]:
        params = {"q": q, **{k: v for k, v in filters.items() if v is not None}}
        return self._json("GET", "/search", params=params)

    # tokens and access requests -----------------------------------------------------

    def create_token(
        self,
        *,
        label: str = "",
        scope: str = "read-write",
        expires_at: str | None = None,
        ttl: int | None = None,
        datasets: list[str] | None = None,
        organizations: list[str] | None = None,
    ) -> dict[str, Any]:
        """A new token for the caller; its secret is in ``token``, this once."""
        body: dict[str, Any] = {"label": label, "scope": scope}
        extra = {
            "expires_at": expires_at,
            "ttl": ttl,
            "datasets": datasets,
            "organizations": organizations,
        }
        body.update({k: v for k, v in extra.items() if v is not None})
        return self._json("POST", "/tokens", json=body)

    def tokens(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._json("GET", "/tokens")["tokens"]
        return found

    def revoke_token(self, token_id: int) -> None:
        self._request("DELETE", f"/tokens/{token_id}")

    def request_access(self, ref: str, purpose: str) -> dict[str, Any]:
        org, name = split_ref(ref)
        return self._json(
            "POST", f"/datasets/{org}/{name}/access-requests", json={"purpose": purpose}
        )

    def access_requests(self, ref: str | None = None, state: str | None = None) -> list[Any]:
        """Requests for one dataset, or for every dataset the caller publishes."""
        params = {} if state is None else {"state": state}
        if ref is None:
            path = "/access-requests"
        else:
            org, name = split_ref(ref)
            path = f"/datasets/{org}/{name}/access-requests"
        found: list[Any] = self._json("GET", path, params=params)["requests"]
        return found

    def my_access_requests(self, state: str | None = None) -> list[Any]:
        params = {} if state is None else {"state": state}
        found: list[Any] = self._json("GET", "/me/access-requests", params=params)["requests"]
        return found

    def approve_access(self, ref: str, user: str, until: str | None = None) -> dict[str, Any]:
        org, name = split_ref(ref)
        return self._json(
            "POST",
            f"/datasets/{org}/{name}/access-requests/{quote(user)}/approve",
            json={"until": until},
        )

    def refuse_access(self, ref: str, user: str, reason: str) -> dict[str, Any]:
        org, name = split_ref(ref)
        return self._json(
            "POST",
            f"/datasets/{org}/{name}/access-requests/{quote(user)}/refuse",
            json={"reason": reason},
        )

    # tables --------------------------------------------------------------------------

    def query(self, sql: str, *, limit: int | None = None) -> dict[str, Any]:
        """Run read-only SQL; ``{columns, rows, truncated, elapsed_ms}``."""
        return self._json("POST", "/sql", json={"sql": sql, "limit": limit})

    def query_to(self, sql: str, dest: str | Path | BinaryIO, fmt: str) -> None:
        """Stream a query's result as ``csv``, ``parquet`` or ``arrow`` to a file."""
        media = {
            "csv": "text/csv",
            "parquet": "application/vnd.apache.parquet",
            "arrow": "application/vnd.apache.arrow.stream",
        }[fmt]
        try:
            with self._http.stream(
                "POST", "/sql", json={"sql": sql}, headers={"Accept": media}
            ) as response:
                if response.is_error:
                    response.read()
                    _raise_for_error(response)
                if isinstance(dest, (str, Path)):
                    with open(dest, "wb") as out:
                        for chunk in response.iter_bytes(READ):
                            out.write(chunk)
                else:
                    for chunk in response.iter_bytes(READ):
                        dest.write(chunk)
        except httpx.TransportError as exc:
            raise KhaznaClientError(0, "unreachable", f"query failed: {exc}") from exc

    def rows(self, ref: str, file_name: str, **params: Any) -> dict[str, Any]:
        """Rows of a table: ``limit, offset, sort, next`` and ``col`` / ``col__op`` filters."""
        org, name = split_ref(ref)
        return self._json("GET", f"/tables/{org}/{name}/{quote(file_name)}/rows", params=params)

    def job(self, job_id: int, wait: float = 0) -> dict[str, Any]:
        """The job; with ``wait`` (seconds, at most 60), once it is done or failed, or when
        ``wait`` has passed."""
        params = {"wait": f"{wait:g}"} if wait > 0 else None
        return self._json("GET", f"/jobs/{job_id}", params=params)

    def wait_for_job(self, job_id: int, timeout: float = 600.0) -> dict[str, Any]:
        """The job once it is done or failed (the hub answers when it ends), or its state
        after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            job = self.job(job_id, wait=min(max(left, 0), JOB_WAIT_S))
            if job["state"] in ("done", "failed") or left <= 0:
                return job

    # upload --------------------------------------------------------------------------

    def put_file(
        self,
        ref: str,
        file_name: str,
        content: bytes | Iterable[bytes] | BinaryIO,
        *,
        sha256: str | None = None,
    ) -> dict[str, Any]:
        """One request, streamed; makes a new version with this file."""
        org, name = split_ref(ref)
        headers = {"X-Content-SHA256": sha256} if sha256 else {}
        body: Any = _iter_file(content) if hasattr(content, "read") else content
        return self._json(
            "PUT",
            f"/datasets/{org}/{name}/files/{quote(file_name)}",
            content=body,
            headers=headers,
        )

    def push(
        self,
        ref: str,
        paths: Iterable[str | Path],
        *,
        message: str = "",
        progress: Progress | None = None,
        chunk_size: int = CHUNK,
        **dataset_fields: Any,
    ) -> dict[str, Any]:
        """Upload files as one new version, through a resumable upload session.

        If the connection breaks, the client asks the hub what arrived and resumes; if
        the process dies, running the same push again resumes the same session.
        """
        files = [Path(p) for p in paths]
        if not files:
            raise ValueError("nothing to push")
        names = [p.name for p in files]
        if len(set(names)) != len(names):
            raise ValueError("two files with the same name cannot go in one version")
        self.ensure_dataset(ref, **dataset_fields)
        org, name = split_ref(ref)
        key = self._resume_key(ref, files)
        session = self._resumable_session(key)
        if session is None:
            announced = [
                {"name": p.name, "size": p.stat().st_size, "sha256": file_sha256(p)} for p in files
            ]
            session = self._json(
                "POST",
                f"/datasets/{org}/{name}/uploads",
                json={"files": announced, "message": message},
            )
            self._remember(key, session["id"])
        for path in files:
            self._send_file(session["id"], path, progress, chunk_size)
        result: dict[str, Any] = self._json("POST", f"/uploads/{session['id']}/commit")
        self._forget(key)
        return result

    def _send_file(
        self, session_id: str, path: Path, progress: Progress | None, chunk_size: int
    ) -> None:
        size = path.stat().st_size
        attempts = busy = 0
        while True:
            try:
                # Asking what arrived is part of the retry: the network may still be down.
                status = self._http.get(f"/uploads/{session_id}")
                _raise_for_error(status)
                received = next(
                    f["received"] for f in status.json()["files"] if f["name"] == path.name
                )
                if progress:
                    progress(path.name, received, size)
                if received >= size:
                    return
                with open(path, "rb") as f:
                    f.seek(received)
                    while received < size:
                        chunk = f.read(min(chunk_size, size - received))
                        answer = self._http.put(
                            f"/uploads/{session_id}/files/{quote(path.name)}",
                            params={"offset": received},
                            content=chunk,
                        )
                        code = _error_code(answer)
                        if code == "offset_mismatch":
                            break  # the hub knows better: ask again
                        if code == "upload_busy":
                            # The hub has not yet noticed our previous, broken request.
                            busy += 1
                            if busy > BUSY_RETRIES:
                                _raise_for_error(answer)
                            time.sleep(0.1 * busy)
                            break
                        _raise_for_error(answer)
                        received = answer.json()["received"]
                        if progress:
                            progress(path.name, received, size)
                        attempts = 0
            except httpx.TransportError as exc:
                attempts += 1
                if attempts > self.retries:
                    raise KhaznaClientError(
                        0, "unreachable", f"upload of {path.name} interrupted: {exc}"
                    ) from exc
                time.sleep(min(0.2 * 2**attempts, 5.0))

    def _resume_key(self, ref: str, files: list[Path]) -> str:
        ident = [self.url, ref] + [
            [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files
        ]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()

    def _state(self) -> dict[str, str]:
        try:
            data = json.loads((self.state_dir / "uploads.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict[str, str]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / "uploads.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_dir / "uploads.json")

    def _remember(self, key: str, session_id: str) -> None:
        self._save_state({**self._state(), key: session_id})

    def _forget(self, key: str) -> None:
        state = self._state()
        state.pop(key, None)
        self._save_state(state)

    def _resumable_session(self, key: str) -> dict[str, Any] | None:
        session_id = self._state().get(key)
        if session_id is None:
            return None
        try:
            status: dict[str, Any] = self._json("GET", f"/uploads/{session_id}")
        except KhaznaClientError as exc:
            if exc.status != 404:
                raise
            status = {"state": "gone"}
        if status["state"] == "open":
            return status
        self._forget(key)
        return None

    # download ------------------------------------------------------------------------

    def download(
        self,
        ref: str,
        file_name: str,
        dest: str | Path,
        *,
        version: int | None = None,
        sha256: str | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """Stream one file to ``dest`` (a file path), verifying its SHA-256."""
        org, name = split_ref(ref)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        params = {"version": version} if version is not None else {}
        h = hashlib.sha256()
        try:
            with self._http.stream(
                "GET", f"/datasets/{org}/{name}/files/{quote(file_name)}", params=params
            ) as response:
                if response.is_error:
                    response.read()
                    _raise_for_error(response)
                expected = sha256 or response.headers.get("etag", "").strip('"')
                total = int(response.headers.get("content-length", 0))
                done = 0
                with open(tmp, "wb") as out:
                    for chunk in response.iter_bytes(READ):
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        if progress:
                            progress(file_name, done, total)
        except httpx.TransportError as exc:
            tmp.unlink(missing_ok=True)
            raise KhaznaClientError(
                0, "unreachable", f"download of {file_name} failed: {exc}"
            ) from exc
        if h.hexdigest() != expected:
            tmp.unlink(missing_ok=True)
            raise IntegrityError(
                0,
                "integrity",
                f"{file_name}: SHA-256 {h.hexdigest()} does not match the hub's {expected}",
            )
        os.replace(tmp, dest)
        return dest

    def pull(
        self,
        ref: str,
        out_dir: str | Path = ".",
        *,
        version: int | None = None,
        progress: Progress | None = None,
    ) -> list[Path]:
        """Download every file of a version (the latest by default) into ``out_dir``.

        Files already there with the right SHA-256 are not downloaded again.
        """
        if version is None:
            info = self.dataset(ref)
            files, number = info["files"], info["version"]
        else:
            match = [v for v in self.versions(ref) if v["version"] == version]
            if not match:
                raise KhaznaClientError(404, "not_found", f"{ref} has no version {version}")
            files, number = match[0]["files"], version
        out = Path(out_dir)
        paths = []
        for f in files:
            dest = out / f["name"]
            if (
                dest.is_file()
                and dest.stat().st_size == f["size"]
                and file_sha256(dest) == f["sha256"]
            ):
                if progress:
                    progress(f["name"], f["size"], f["size"])
            else:
                self.download(
                    ref, f["name"], dest, version=number, sha256=f["sha256"], progress=progress
                )
            paths.append(dest)
        return paths


def _iter_file(f: Any) -> Iterator[bytes]:
    while chunk := f.read(READ):
        yield chunk


def _error_code(response: httpx.Response) -> str | None:
    if not response.is_error:
        return None
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def _raise_for_error(response: httpx.Response) -> None:
    if not response.is_error:
        return
    try:
        err = response.json()["error"]
        code, message = str(err.get("code")), str(err.get("message"))
        details = {k: v for k, v in err.items() if k not in ("code", "message")}
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message, details = "http_error", response.text[:500] or response.reason_phrase, {}
    raise KhaznaClientError(response.status_code, code, message, details)
