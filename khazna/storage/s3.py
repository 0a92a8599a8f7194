"""Content-addressed blobs in an S3-compatible object store (SeaweedFS, MinIO, Ceph, AWS).

Keys: ``PREFIX{namespace}/ab/cd/abcd...`` for blobs (namespace ``blobs``) and derived
Parquet (``derived``); ``PREFIX tmp/upload-<uuid>`` for large uploads in progress.

A blob becomes visible under its hash only when it is complete and its hash is known:
- up to one part (8 MiB) the writer keeps the bytes in memory and PUTs them under the
  hash at commit: a PUT is atomic;
- above that it streams a multipart upload (parts sent by a background thread while the
  next part arrives) to a temporary key, hashing on the way; at commit it completes the
  upload, checks the size and copies the object server-side to its hash key, then
  deletes the temporary. The copy happens inside the store: no byte crosses the network
  twice, and the API node needs no local disk for the upload.

Reads are HTTP range requests (``read_range``), which downloads and DuckDB both use.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import botocore.config
from boto3.s3.transfer import TransferConfig
from botocore import UNSIGNED
from botocore.exceptions import BotoCoreError, ClientError

from khazna.checksums import READ_CHUNK
from khazna.errors import StorageFailure, Unprocessable
from khazna.storage.blobstore import StoredBlob, check_sha256, too_large
from khazna.storage.location import S3Location
from khazna.storage.readonly import RangeCache, ReadOnlyFileSystem

PART_SIZE = 8 * 1024 * 1024
# Parts of one upload in flight at once, while the next one arrives: memory per upload is
# about (this + 1) * PART_SIZE. More did not upload faster here, and with 2 the 1 GiB upload
# test saw the server grow by 45-65 MiB (its limit is 64), with 1 by 35 MiB.
PARTS_IN_FLIGHT = 1
# A temporary object or multipart upload older than this was abandoned by a dead process.
STALE_AFTER_S = 24 * 3600
_TRANSFER = TransferConfig(multipart_threshold=64 * 1024 * 1024, multipart_chunksize=PART_SIZE)
_parts_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="khazna-s3-part")
S3Errors = (BotoCoreError, ClientError)


def make_client(location: S3Location) -> Any:
    """A boto3 client for the location. Credentials come from AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or the profile AWS_PROFILE names; with
    none of them requests go unsigned (a store with auth off, as SeaweedFS by default).
    botocore's full credential chain is not used: it would ask the cloud metadata service,
    and the hub contacts nothing but its database and its storage."""
    options: dict[str, Any] = {
        "retries": {"max_attempts": 3, "mode": "standard"},
        "max_pool_connections": 32,
    }
    if location.endpoint:
        options["s3"] = {"addressing_style": "path"}
    session = boto3.session.Session()
    kwargs: dict[str, Any] = {"region_name": location.region, "endpoint_url": location.endpoint}
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs |= {
            "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
            "aws_session_token": os.environ.get("AWS_SESSION_TOKEN") or None,
        }
    elif os.environ.get("AWS_PROFILE"):
        session = boto3.session.Session(profile_name=os.environ["AWS_PROFILE"])
    else:
        options["signature_version"] = UNSIGNED
    return session.client("s3", config=botocore.config.Config(**options), **kwargs)


def _missing(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


class S3Writer:
    """Receives one blob's bytes; ``commit`` makes it visible, ``abort`` leaves no trace."""

    def __init__(self, store: S3BlobStore, max_bytes: int, hashed: bool = True) -> None:
        self._store = store
        self._max = max_bytes
        # Not hashed when the caller names the blob itself (commit_as) and hashes elsewhere.
        self._hash = hashlib.sha256() if hashed else None
        self.size = 0
        # Chunks not yet sent: joined once into a part (one copy, no growing buffer).
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._tmp_key = store.location.key("tmp", f"upload-{uuid.uuid4().hex}")
        self._upload_id: str | None = None
        self._parts: list[Future[dict[str, Any]]] = []
        self._done = False

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self._max:
            self.abort()
            raise too_large(self._max)
        if self._hash is not None:
            self._hash.update(chunk)
        self.size += len(chunk)
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        try:
            if self._pending_size >= PART_SIZE:
                # A part may exceed PART_SIZE by less than a chunk: S3 only needs >= 5 MiB.
                self._send_part(self._take())
        except S3Errors as exc:
            self.abort()
            raise StorageFailure(f"could not write the upload to storage: {exc}") from exc

    def _take(self) -> bytes:
        data = b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        return data

    def _send_part(self, data: bytes) -> None:
        s = self._store
        if self._upload_id is None:
            started = s.client.create_multipart_upload(Bucket=s.bucket, Key=self._tmp_key)
            self._upload_id = str(started["UploadId"])
        number = len(self._parts) + 1
        upload_id = self._upload_id

        def send(body: bytes) -> dict[str, Any]:
            answer = s.client.upload_part(
                Bucket=s.bucket, Key=self._tmp_key, UploadId=upload_id, PartNumber=number, Body=body
            )
            return {"PartNumber": number, "ETag": answer["ETag"]}

        # Back-pressure: the body is not read faster than the store takes it, and at most
        # PARTS_IN_FLIGHT parts are held in memory.
        while len(flying := [p for p in self._parts if not p.done()]) >= PARTS_IN_FLIGHT:
            flying[0].result()
        self._parts.append(_parts_pool.submit(send, data))
        for p in self._parts:
            if p.done() and p.exception() is not None:
                p.result()  # raises

    def commit(self, expected_sha256: str | None = None) -> StoredBlob:
        if self._hash is None:
            raise RuntimeError("a writer made with hashed=False commits with commit_as")
        digest = self._hash.hexdigest()
        if expected_sha256 is not None and expected_sha256.lower() != digest:
            self.abort()
            raise Unprocessable(
                f"content SHA-256 is {digest}, but the client announced {expected_sha256}"
            )
        return self.commit_as(digest)

    def commit_as(self, name: str) -> StoredBlob:
        digest = check_sha256(name)
        s = self._store
        target = s.key_of(digest)
        try:
            if self._upload_id is None:
                created = not s.exists(digest)
                if created:
                    s.client.put_object(Bucket=s.bucket, Key=target, Body=self._take())
            else:
                created = self._complete_then_copy(digest, target)
            if (stored := s.size(digest)) != self.size:
                raise StorageFailure(
                    f"the store holds {stored} bytes under {digest}, {self.size} were sent"
                )
        except S3Errors as exc:
            self.abort()
            raise StorageFailure(f"could not store the upload: {exc}") from exc
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._pending = []
        return StoredBlob(digest, self.size, created=created)

    def _complete_then_copy(self, digest: str, target: str) -> bool:
        s = self._store
        if self._pending_size or not self._parts:
            self._send_part(self._take())
        parts = sorted((p.result() for p in self._parts), key=lambda p: int(p["PartNumber"]))
        s.client.complete_multipart_upload(
            Bucket=s.bucket,
            Key=self._tmp_key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": parts},
        )
        self._upload_id = None  # completed: what is left to clean is the temporary object
        created = not s.exists(digest)
        if created:
            s.client.copy(
                {"Bucket": s.bucket, "Key": self._tmp_key}, s.bucket, target, Config=_TRANSFER
            )
        s.client.delete_object(Bucket=s.bucket, Key=self._tmp_key)
        return created

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._pending = []
        s = self._store
        for p in self._parts:
            with contextlib.suppress(Exception):
                p.result()
        with contextlib.suppress(*S3Errors):
            if self._upload_id is not None:
                s.client.abort_multipart_upload(
                    Bucket=s.bucket, Key=self._tmp_key, UploadId=self._upload_id
                )
            else:
                s.client.delete_object(Bucket=s.bucket, Key=self._tmp_key)


class S3BlobStore:
    """One namespace (``blobs`` or ``derived``) of a bucket, content-addressed."""

    def __init__(self, location: S3Location, namespace: str, client: Any | None = None) -> None:
        self.location = location
        self.namespace = namespace
        self.bucket = location.bucket
        self.client = client if client is not None else make_client(location)
        self.filesystem = S3ReadFileSystem(self.client)

    def key_of(self, sha256: str) -> str:
        check_sha256(sha256)
        return self.location.key(self.namespace, sha256[:2], sha256[2:4], sha256)

    def url_of(self, sha256: str) -> str:
        """The blob as DuckDB reads it through ``filesystem``."""
        return f"s3://{self.bucket}/{self.key_of(sha256)}"

    def writer(self, max_bytes: int, *, hashed: bool = True) -> S3Writer:
        return S3Writer(self, max_bytes, hashed)

    def link_file(self, path: Path, sha256: str, size: int) -> StoredBlob:
        """Upload a finished local file whose hash is known; the file stays."""
        try:
            if self.exists(sha256):
                return StoredBlob(sha256, size, created=False)
            # Multipart above 64 MB: the object appears only once every part is in.
            self.client.upload_file(str(path), self.bucket, self.key_of(sha256), Config=_TRANSFER)
        except S3Errors as exc:
            raise StorageFailure(f"could not store {path.name}: {exc}") from exc
        return StoredBlob(sha256, size, created=True)

    def place(self, tmp_path: Path, sha256: str, size: int) -> StoredBlob:
        """Store a complete local file under its hash, then remove the local file."""
        stored = self.link_file(tmp_path, sha256, size)
        tmp_path.unlink(missing_ok=True)
        return stored

    def local_file(self, sha256: str, work_dir: Path) -> Path:
        """A local copy of the blob in ``work_dir`` (for tools that need a file)."""
        target = work_dir / sha256
        try:
            self.client.download_file(self.bucket, self.key_of(sha256), str(target))
        except S3Errors as exc:
            raise StorageFailure(f"could not read blob {sha256}: {exc}") from exc
        return target

    def _head(self, sha256: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self.key_of(sha256)))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise

    def exists(self, sha256: str) -> bool:
        return self._head(sha256) is not None

    def size(self, sha256: str) -> int:
        head = self._head(sha256)
        if head is None:
            raise FileNotFoundError(f"no blob {sha256}")
        return int(head["ContentLength"])

    def read_range(self, sha256: str, start: int, length: int) -> Iterator[bytes]:
        if length <= 0:
            return
        answer = self.client.get_object(
            Bucket=self.bucket, Key=self.key_of(sha256), Range=f"bytes={start}-{start + length - 1}"
        )
        body = answer["Body"]
        try:
            yield from body.iter_chunks(READ_CHUNK)
        finally:
            body.close()

    def rehash(self, sha256: str) -> str:
        h = hashlib.sha256()
        body = self.client.get_object(Bucket=self.bucket, Key=self.key_of(sha256))["Body"]
        try:
            for chunk in body.iter_chunks(READ_CHUNK):
                h.update(chunk)
        finally:
            body.close()
        return h.hexdigest()

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            yield from page.get("Contents", [])

    def iter_hashes(self) -> Iterator[str]:
        for obj in self._objects(self.location.key(self.namespace, "")):
            name = str(obj["Key"]).rsplit("/", 1)[-1]
            with contextlib.suppress(ValueError):
                yield check_sha256(name)

    def clear_stale_temporaries(self, older_than_s: float = STALE_AFTER_S) -> int:
        """Remove temporary objects and multipart uploads a dead process left; returns how
        many. Age, not a lock, tells them apart from uploads in progress in other processes."""
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than_s)
        prefix = self.location.key("tmp", "upload-")
        removed = 0
        try:
            for obj in self._objects(prefix):
                if obj["LastModified"] <= cutoff:
                    self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])
                    removed += 1
            answer = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
            for upload in answer.get("Uploads", []):
                if upload["Initiated"] <= cutoff:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        except S3Errors as exc:
            raise StorageFailure(f"could not list temporary uploads: {exc}") from exc
        return removed


class S3Marker:
    """An object at the prefix's root (``PREFIX/NAME``): the encryption marker lives with
    the files it describes, where every hub process sharing the bucket finds it."""

    def __init__(self, store: S3BlobStore, name: str) -> None:
        self.store = store
        self.key = store.location.key(name)
        self.where = f"s3://{store.bucket}/{self.key}"

    def read(self) -> bytes | None:
        try:
            body = self.store.client.get_object(Bucket=self.store.bucket, Key=self.key)["Body"]
            data: bytes = body.read()
        except ClientError as exc:
            if _missing(exc):
                return None
            raise StorageFailure(f"could not read {self.where}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageFailure(f"could not read {self.where}: {exc}") from exc
        return data

    def write(self, data: bytes) -> None:
        try:
            self.store.client.put_object(Bucket=self.store.bucket, Key=self.key, Body=data)
        except S3Errors as exc:
            raise StorageFailure(f"could not write {self.where}: {exc}") from exc


class S3ReadFileSystem(ReadOnlyFileSystem):
    """Read-only ``s3://bucket/key`` files for DuckDB (``register_filesystem``), whose wheel
    has no httpfs. Every read is one ranged GET of exactly the bytes DuckDB asks for (no
    read-ahead cache): DuckDB reads only the footer and the column chunks a query needs,
    and the ranges read are kept (a RangeCache of READ_CACHE_BYTES; objects are
    content-addressed, so a kept range never goes stale): without this every query would
    fetch its column chunks again."""

    protocol = ("s3",)
    read_block = PART_SIZE
    refusal = "tables in object storage are read-only here"

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client
        self._lock = threading.Lock()
        self._ranges = RangeCache()
        self._sizes: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.requests = 0  # GETs sent, and the bytes they brought: what tests measure
        self.bytes_fetched = 0

    def fetch(self, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object: from the cache, or one ranged GET."""
        key = (path, start, end)
        if (hit := self._ranges.get(key)) is not None:
            return hit
        bucket, name = self.split(path)
        answer = self.client.get_object(Bucket=bucket, Key=name, Range=f"bytes={start}-{end - 1}")
        data: bytes = answer["Body"].read()
        with self._lock:
            self.requests += 1
            self.bytes_fetched += len(data)
        self._ranges.put(key, data)
        return data

    def split(self, path: str) -> tuple[str, str]:
        bucket, _, key = self._strip_protocol(path).partition("/")
        return bucket, key

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        bucket, key = self.split(path)
        name = f"{bucket}/{key}"
        with self._lock:
            if (known := self._sizes.get(name)) is not None:
                return known  # an object, once there, never changes
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(path) from exc
            raise
        found = {
            "name": name,
            "size": int(head["ContentLength"]),
            "type": "file",
            "LastModified": head["LastModified"],
        }
        with self._lock:
            self._sizes[name] = found
            if len(self._sizes) > 10_000:
                self._sizes.popitem(last=False)
        return found

    def modified(self, path: str) -> dt.datetime:
        when: dt.datetime = self.info(path)["LastModified"]
        return when

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        # Listing is never needed to read a named table; refusing it closes a side door.
        raise PermissionError("listing object storage is not allowed")
