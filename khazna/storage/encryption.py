"""Encryption at rest with a key the operator holds (``KHAZNA_ENCRYPTION_KEY_FILE``).

``EncryptedBlobStore`` wraps any BlobStore (local disk or S3): what reaches the inner store
is ciphertext, stored under the SHA-256 of the *plaintext*, so names, deduplication, ETags
and ``khazna verify`` mean what they meant before.

A stored file is a 32-byte header, then chunks of 64 KiB of plaintext (the last one may be
shorter; an empty file is one empty chunk), each sealed on its own with AES-256-GCM::

    header  = b"KHZNAE1\\n" | key id (8 bytes) | file id (16 random bytes)
    chunk i = nonce (12 random bytes) | ciphertext | tag (16 bytes)
    key     = HKDF-SHA256(master key, salt=file id, info=b"khazna chunk key v1")
    aad     = header | i (8 bytes, big-endian) | 0x00               (not the last chunk)
              header | i (8 bytes, big-endian) | 0x01 | SHA-256     (the last chunk)

Each file has a key of its own, so GCM's limits on random nonces apply per file, not per
hub. The chunk index in the associated data stops chunks from being swapped; the flag stops
truncation and extension; the plaintext SHA-256 in the last chunk's data binds the file to
its name, so one blob's ciphertext put in place of another's is detected. A reader of a
range decrypts the chunks it needs, plus the last one once per process (that binding).
The plaintext size follows from the ciphertext size: nothing but the chunks needs storing.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from khazna.checksums import READ_CHUNK
from khazna.errors import StorageFailure, Unprocessable
from khazna.storage.blobstore import BlobStore, StoredBlob, check_sha256, too_large
from khazna.storage.readonly import RangeCache, ReadOnlyFileSystem

log = logging.getLogger("khazna.storage")

MAGIC = b"KHZNAE1\n"
HEADER_SIZE = 32
CHUNK = 64 * 1024  # plaintext bytes per chunk
NONCE = 12
TAG = 16
OVERHEAD = NONCE + TAG
SEALED = CHUNK + OVERHEAD  # bytes of one full chunk at rest
KEY_BYTES = 32
MARKER_NAME = "encryption.json"


class DamagedBlob(StorageFailure):
    """A stored file whose ciphertext fails its check: changed, cut, or not this file."""


# -- the key ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncryptionKey:
    secret: bytes

    def __repr__(self) -> str:  # never print the key, even in a traceback
        return f"EncryptionKey({self.fingerprint})"

    @property
    def fingerprint(self) -> str:
        """Names the key without revealing it (a hash of 256 random bits)."""
        digest = hashlib.sha256(b"khazna encryption key fingerprint v1\0" + self.secret)
        return "kz1:" + digest.hexdigest()[:32]

    @property
    def key_id(self) -> bytes:
        """What each file's header carries, so another key is told apart from damage."""
        return bytes.fromhex(self.fingerprint[4:20])

    @classmethod
    def load(cls, path: Path, home: Path | None = None) -> EncryptionKey:
        """The key in ``path`` (base64 of 32 bytes); refused, with the reason, when the file
        is missing, readable by others, inside the hub folder, or holds something else."""
        what = f"KHAZNA_ENCRYPTION_KEY_FILE ({path})"
        try:
            info = path.stat()
        except FileNotFoundError:
            raise ValueError(f"{what}: no such file") from None
        except OSError as exc:
            raise ValueError(f"{what}: cannot read it: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{what}: not a regular file")
        if info.st_mode & 0o077:
            raise ValueError(
                f"{what}: other users may read it (mode {stat.S_IMODE(info.st_mode):04o}); "
                "make it readable by the hub's user only (chmod 600)"
            )
        if home is not None and path.resolve().is_relative_to(home.resolve()):
            raise ValueError(
                f"{what}: the key must be kept outside the hub folder {home}, not beside "
                "the data it protects"
            )
        try:
            text = path.read_text(encoding="ascii").strip()
            secret = base64.b64decode(text, validate=True)
        except (OSError, UnicodeDecodeError, binascii.Error):
            secret = b""
        if len(secret) != KEY_BYTES:
            raise ValueError(
                f"{what}: not a key: expected the base64 text of 32 random bytes, as "
                "`khazna encryption new-key` writes"
            )
        return cls(secret)

    @classmethod
    def new_file(cls, path: Path) -> EncryptionKey:
        """Write a fresh random key to a new file readable by its owner only."""
        key = cls(secrets.token_bytes(KEY_BYTES))
        text = base64.b64encode(key.secret).decode("ascii") + "\n"
        # Created 0600 in one step: the key is never readable by anyone else, not even
        # for a moment; an existing file is never overwritten.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return key


class Marker(Protocol):
    """Where a hub records that its files are encrypted: beside them, so that every hub
    process using them finds it (the hub folder on local disk, the bucket for S3)."""

    where: str

    def read(self) -> bytes | None: ...

    def write(self, data: bytes) -> None: ...


class FileMarker:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def write(self, data: bytes) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)


def check_marker(
    marker: Marker, key: EncryptionKey | None, holds_files: Callable[[], bool]
) -> None:
    """The marker records whether the hub's files are encrypted and with which key (its
    fingerprint); a start with no key, or another key, is refused before anything is read.
    Encryption is turned on for a new hub only: one already holding plaintext files is
    refused, rather than left half encrypted."""
    recorded: str | None = None
    if (data := marker.read()) is not None:
        try:
            recorded = str(json.loads(data)["key_fingerprint"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{marker.where} is unreadable or damaged: {exc}") from None
    if recorded is not None:
        if key is None:
            raise ValueError(
                f"this hub's files are encrypted at rest (key {recorded}): set "
                "KHAZNA_ENCRYPTION_KEY_FILE to the file holding that key"
            )
        if key.fingerprint != recorded:
            raise ValueError(
                f"KHAZNA_ENCRYPTION_KEY_FILE holds key {key.fingerprint}, but this hub's "
                f"files are encrypted with key {recorded}: give the file holding that key"
            )
        return
    if key is None:
        return
    if holds_files():
        raise ValueError(
            "this hub already holds files stored unencrypted: encryption at rest is turned "
            "on for a new hub only (unset KHAZNA_ENCRYPTION_KEY_FILE, or start a new hub)"
        )
    record = {
        "encrypted": True,
        "cipher": "AES-256-GCM",
        "chunk_bytes": CHUNK,
        "format": 1,
        "key_fingerprint": key.fingerprint,
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    marker.write((json.dumps(record, indent=2) + "\n").encode())


# -- the format -------------------------------------------------------------------------------


def sealed_size(plain: int) -> int:
    """Bytes at rest for ``plain`` bytes of plaintext (an empty file is one empty chunk)."""
    chunks = max(1, -(-plain // CHUNK))
    return HEADER_SIZE + plain + chunks * OVERHEAD


def plain_size(sealed: int) -> int:
    body = sealed - HEADER_SIZE
    if body < OVERHEAD:
        raise DamagedBlob(f"it is cut short: {sealed} bytes, too few for an encrypted file")
    chunks = -(-body // SEALED)
    last = body - (chunks - 1) * SEALED
    if last < OVERHEAD or (last == OVERHEAD and chunks > 1):
        raise DamagedBlob(f"it is cut short or extended: {sealed} bytes fit no encrypted file")
    return body - chunks * OVERHEAD


class _Cipher:
    """The chunks of one stored file: its header, its key, its plaintext size."""

    def __init__(self, key: EncryptionKey, sha256: str, header: bytes, sealed: int) -> None:
        if len(header) != HEADER_SIZE or header[:8] != MAGIC:
            raise DamagedBlob("its header is not that of an encrypted file")
        if header[8:16] != key.key_id:
            raise DamagedBlob(
                f"it was encrypted with another key (id {header[8:16].hex()}, this hub's "
                f"is {key.key_id.hex()})"
            )
        self.sha256 = sha256
        self.header = header
        self.sealed_size = sealed
        self.size = plain_size(sealed)
        self.chunks = max(1, -(-self.size // CHUNK))
        self._aead = AESGCM(_file_key(key, header[16:32]))

    def aad(self, index: int) -> bytes:
        position = index.to_bytes(8, "big")
        if index == self.chunks - 1:
            return self.header + position + b"\x01" + bytes.fromhex(self.sha256)
        return self.header + position + b"\x00"

    def open(self, index: int, sealed: bytes | memoryview) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE], sealed[NONCE:], self.aad(index))
        except InvalidTag:
            first = index * CHUNK
            last = min(first + CHUNK, self.size) - 1
            which = "its last chunk" if index == self.chunks - 1 else f"chunk {index}"
            raise DamagedBlob(
                f"{which} (plaintext bytes {first}-{last}) fails its authentication tag"
                + (": changed, or not this file's" if index == self.chunks - 1 else "")
            ) from None

    @staticmethod
    def offset(index: int) -> int:
        return HEADER_SIZE + index * SEALED


def _file_key(key: EncryptionKey, file_id: bytes) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=file_id, info=b"khazna chunk key v1"
    )
    return hkdf.derive(key.secret)


class _Sealer:
    """Seals plaintext chunk by chunk; the last one only once the SHA-256 is known."""

    def __init__(self, key: EncryptionKey) -> None:
        self.header = MAGIC + key.key_id + secrets.token_bytes(16)
        self._aead = AESGCM(_file_key(key, self.header[16:32]))
        self.index = 0

    def seal(self, plain: bytes | bytearray | memoryview, last_of: str | None = None) -> bytes:
        position = self.index.to_bytes(8, "big")
        if last_of is None:
            aad = self.header + position + b"\x00"
        else:
            aad = self.header + position + b"\x01" + bytes.fromhex(last_of)
        nonce = secrets.token_bytes(NONCE)
        self.index += 1
        return nonce + self._aead.encrypt(nonce, plain, aad)


# -- the store --------------------------------------------------------------------------------


class EncryptingWriter:
    """Streams one blob: plaintext in, sealed chunks out to the inner store's writer. Holds
    at most one chunk and the caller's last piece in memory."""

    def __init__(self, store: EncryptedBlobStore, max_bytes: int) -> None:
        self._max = max_bytes
        self._sealer = _Sealer(store.key)
        self._hash = hashlib.sha256()
        self._pending = bytearray()
        self.size = 0
        self._inner = store.inner.writer(sealed_size(max_bytes), hashed=False)
        self._inner.write(self._sealer.header)

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self._max:
            self.abort()
            raise too_large(self._max)
        self._hash.update(chunk)
        self.size += len(chunk)
        self._pending += chunk
        # A full chunk is sealed once a byte after it has arrived: the last chunk, sealed
        # at commit, must know it is the last.
        if len(self._pending) > CHUNK:
            view = memoryview(self._pending)
            done = 0
            sealed: list[bytes] = []
            while len(self._pending) - done > CHUNK:
                sealed.append(self._sealer.seal(view[done : done + CHUNK]))
                done += CHUNK
            view.release()
            del self._pending[:done]
            self._inner.write(b"".join(sealed))

    def commit(self, expected_sha256: str | None = None) -> StoredBlob:
        digest = self._hash.hexdigest()
        if expected_sha256 is not None and expected_sha256.lower() != digest:
            self.abort()
            raise Unprocessable(
                f"content SHA-256 is {digest}, but the client announced {expected_sha256}"
            )
        return self.commit_as(digest)

    def commit_as(self, name: str) -> StoredBlob:
        self._inner.write(self._sealer.seal(self._pending, last_of=check_sha256(name)))
        self._pending = bytearray()
        stored = self._inner.commit_as(name)
        return StoredBlob(name, self.size, created=stored.created)

    def abort(self) -> None:
        self._pending = bytearray()
        self._inner.abort()


class EncryptedBlobStore:
    """Any BlobStore, with every file sealed before it reaches it (see the module's doc)."""

    def __init__(self, inner: BlobStore, key: EncryptionKey, tmp_dir: Path, namespace: str) -> None:
        self.inner = inner
        self.key = key
        self.tmp_dir = tmp_dir
        self.namespace = namespace
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._ciphers: OrderedDict[str, _Cipher] = OrderedDict()
        self.filesystem = DecryptingFileSystem(self)

    def url_of(self, sha256: str) -> str:
        """The file as DuckDB reads it, through ``filesystem``: decrypted in memory."""
        return f"{DecryptingFileSystem.protocol[0]}://{self.namespace}/{check_sha256(sha256)}"

    def writer(self, max_bytes: int, *, hashed: bool = True) -> EncryptingWriter:
        return EncryptingWriter(self, max_bytes)  # always hashes: the plaintext names it

    def link_file(self, path: Path, sha256: str, size: int) -> StoredBlob:
        """Seal a local plaintext file into the store; the file stays."""
        check_sha256(sha256)
        if self.inner.exists(sha256):
            return StoredBlob(sha256, size, created=False)
        sealer = _Sealer(self.key)
        h = hashlib.sha256()
        tmp = self.tmp_dir / f"encrypt-{uuid.uuid4().hex}.part"
        try:
            with open(path, "rb") as src, open(tmp, "xb") as out:
                fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                out.write(sealer.header)
                piece = src.read(CHUNK)
                while True:
                    h.update(piece)
                    following = src.read(CHUNK)
                    if not following:
                        break
                    out.write(sealer.seal(piece))
                    piece = following
                if h.hexdigest() != sha256:
                    raise StorageFailure(f"{path.name} changed while it was being stored")
                out.write(sealer.seal(piece, last_of=sha256))
                out.flush()
                os.fsync(out.fileno())
            stored = self.inner.place(tmp, sha256, tmp.stat().st_size)
        except OSError as exc:
            raise StorageFailure(f"could not store {path.name}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        # The plaintext's size: the inner store answers with the sealed file's.
        return StoredBlob(sha256, size, created=stored.created)

    def place(self, tmp_path: Path, sha256: str, size: int) -> StoredBlob:
        stored = self.link_file(tmp_path, sha256, size)
        tmp_path.unlink(missing_ok=True)
        return stored

    def local_file(self, sha256: str, work_dir: Path) -> Path:
        """A decrypted copy in ``work_dir`` (an ingest's scratch folder, removed after)."""
        target = work_dir / sha256
        c = self.cipher(sha256)
        with open(target, "wb") as f:
            for _, plain in self.chunks(c, 0, c.chunks - 1):
                f.write(plain)
        return target

    def clear_stale_temporaries(self) -> int:
        removed = self.inner.clear_stale_temporaries()
        for part in self.tmp_dir.glob("encrypt-*.part"):
            try:
                with open(part, "rb") as f:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    part.unlink()
                    removed += 1
            except (BlockingIOError, FileNotFoundError):
                continue
        return removed

    def exists(self, sha256: str) -> bool:
        return self.inner.exists(sha256)

    def size(self, sha256: str) -> int:
        return plain_size(self.inner.size(sha256))

    def cipher(self, sha256: str) -> _Cipher:
        """The file's header and key, its last chunk checked (it binds the file to its
        name); raises DamagedBlob when the file is not what its name says.

        Kept once checked: a file is never rewritten, and one replaced behind the hub's
        back has another file id in its header, so every chunk read from it then fails
        its tag anyway."""
        with self._lock:
            if (known := self._ciphers.get(sha256)) is not None:
                self._ciphers.move_to_end(sha256)
                return known
        c = self._check(sha256)
        with self._lock:
            self._ciphers[sha256] = c
            if len(self._ciphers) > 10_000:
                self._ciphers.popitem(last=False)
        return c

    def _check(self, sha256: str) -> _Cipher:
        sealed = self.inner.size(sha256)
        header = b"".join(self.inner.read_range(sha256, 0, HEADER_SIZE))
        c = _Cipher(self.key, sha256, header, sealed)
        last = c.chunks - 1
        c.open(last, self._sealed_chunks(c, last, last, sealed))
        return c

    def _sealed_chunks(self, c: _Cipher, first: int, last: int, sealed: int) -> bytes:
        start = c.offset(first)
        end = min(c.offset(last + 1), sealed)
        return b"".join(self.inner.read_range(c.sha256, start, end - start))

    def chunks(self, c: _Cipher, first: int, last: int) -> Iterator[tuple[int, bytes]]:
        """Decrypted chunks ``first..last``, read from the inner store in one stream."""
        start = c.offset(first)
        end = c.offset(last + 1) if last < c.chunks - 1 else c.sealed_size
        left = b""
        index = first
        for piece in self.inner.read_range(c.sha256, start, end - start):
            data = left + piece if left else piece
            view = memoryview(data)
            at = 0
            while index <= last:
                need = SEALED if index < c.chunks - 1 else end - c.offset(index)
                if len(data) - at < need:
                    break
                yield index, c.open(index, view[at : at + need])
                at += need
                index += 1
            left = data[at:]
        if index <= last:
            raise DamagedBlob(f"chunk {index} could not be read: the file is cut short")

    def read_range(self, sha256: str, start: int, length: int) -> Iterator[bytes]:
        # Not a generator: the file's binding and the first piece of the answer (up to
        # 1 MiB) are checked before the first byte is answered, so damage there is refused
        # with an error status instead of a cut answer.
        if length <= 0:
            return iter(())
        c = self.cipher(sha256)
        end = min(start + length, c.size)
        if start >= end:
            return iter(())
        pieces = self.plain_range(c, start, end)
        first = next(pieces, b"")
        return self._rest(c, first, pieces)

    def _rest(self, c: _Cipher, first: bytes, pieces: Iterator[bytes]) -> Iterator[bytes]:
        yield first
        try:
            yield from pieces
        except DamagedBlob as exc:
            # Past the first byte of an answer there is no error status left to give: the
            # answer ends short of its Content-Length, which every client detects, and the
            # operator is told (khazna verify names it too).
            log.error(
                "%s %s is damaged: %s; its reader got a cut answer", self.namespace, c.sha256, exc
            )

    def plain_range(self, c: _Cipher, start: int, end: int) -> Iterator[bytes]:
        first, last = start // CHUNK, (end - 1) // CHUNK
        batch: list[bytes] = []
        batched = 0
        for index, plain in self.chunks(c, first, last):
            base = index * CHUNK
            piece = plain[max(0, start - base) : end - base]
            batch.append(piece)
            batched += len(piece)
            if batched >= READ_CHUNK:  # answers go out in pieces of about 1 MiB
                yield b"".join(batch)
                batch, batched = [], 0
        if batch:
            yield b"".join(batch)

    def rehash(self, sha256: str) -> str:
        """Decrypt every chunk (each tag checked) and hash the plaintext."""
        c = self.cipher(sha256)
        h = hashlib.sha256()
        for _, plain in self.chunks(c, 0, c.chunks - 1):
            h.update(plain)
        return h.hexdigest()

    def iter_hashes(self) -> Iterator[str]:
        return self.inner.iter_hashes()


# -- DuckDB's view of the derived Parquet -----------------------------------------------------


class DecryptingFileSystem(ReadOnlyFileSystem):
    """Read-only ``khazna-encrypted://NAMESPACE/SHA256`` files for DuckDB: each read
    decrypts the chunks it covers, in memory. DuckDB never sees the key or a ciphertext
    byte; the SQL sandbox's ``allowed_paths`` lists these URLs as it lists local paths.
    Decrypted ranges are kept in memory (a RangeCache); plaintext never goes to disk."""

    protocol = ("khazna-encrypted",)
    read_block = 8 * CHUNK
    refusal = "encrypted tables are read-only here"

    def __init__(self, store: EncryptedBlobStore) -> None:
        super().__init__()
        self.store = store
        self._ranges = RangeCache()

    def _sha(self, path: str) -> str:
        namespace, _, name = self._strip_protocol(path).partition("/")
        if namespace != self.store.namespace:
            raise FileNotFoundError(path)
        try:
            return check_sha256(name)
        except ValueError:
            raise FileNotFoundError(path) from None

    def fetch(self, path: str, start: int, end: int) -> bytes:
        """Plaintext bytes [start, end) of a file: from memory, or decrypted from the chunks
        that cover them. DuckDB asks again for the same ranges (a column chunk, a footer)
        query after query, so ranges are kept as asked, like S3ReadFileSystem's."""
        sha = self._sha(path)
        c = self.store.cipher(sha)
        end = min(end, c.size)
        if start >= end:
            return b""
        key = (sha, start, end)
        if (hit := self._ranges.get(key)) is not None:
            return hit
        data = b"".join(self.store.plain_range(c, start, end))
        self._ranges.put(key, data)
        return data

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        sha = self._sha(path)
        # From the checked header kept in memory: no request to the store per query.
        try:
            size = self.store.cipher(sha).size
        except FileNotFoundError:
            raise FileNotFoundError(path) from None  # not the inner store's path
        return {"name": self._strip_protocol(path), "size": size, "type": "file"}

    def modified(self, path: str) -> dt.datetime:
        self.info(path)
        return dt.datetime(2000, 1, 1, tzinfo=dt.UTC)  # content-addressed: never modified

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        raise PermissionError("listing stored files is not allowed")


def encrypted(
    stores: tuple[BlobStore, BlobStore], key: EncryptionKey, tmp_dir: Path
) -> tuple[BlobStore, BlobStore]:
    """The hub's originals and derived Parquet, each wrapped."""
    blobs, derived = stores
    return (
        EncryptedBlobStore(blobs, key, tmp_dir, "blobs"),
        EncryptedBlobStore(derived, key, tmp_dir, "derived"),
    )
