"""Serving a stored file: single byte ranges, ETag (the SHA-256), conditional requests."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from khazna.access.quotas import Reservation
from khazna.catalog.service import ResolvedFile
from khazna.errors import RangeNotSatisfiable
from khazna.storage.blobstore import BlobStore

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte of a single ``Range``, or None to send everything.

    Multiple ranges and unknown units are ignored (RFC 9110 allows a full answer).
    """
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first_s, last_s = match.groups()
    if first_s == "" and last_s == "":
        return None
    if first_s == "":  # suffix: the last N bytes
        n = int(last_s)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(
                f"range {header!r} is empty for a {size}-byte file", size=size
            )
        return max(0, size - n), size - 1
    first = int(first_s)
    last = size - 1 if last_s == "" else min(int(last_s), size - 1)
    if last_s != "" and int(last_s) < first:
        return None  # syntactically invalid: ignore, as RFC 9110 says
    if first >= size:
        raise RangeNotSatisfiable(
            f"range {header!r} starts at or after the end of the {size}-byte file", size=size
        )
    return first, last


def _etag_matches(header: str, etag: str) -> bool:
    candidates = [c.strip().removeprefix("W/") for c in header.split(",")]
    return "*" in candidates or etag in candidates


def file_response(
    request: Request,
    blobs: BlobStore,
    ref: ResolvedFile,
    *,
    pinned: bool,
    reserve: Callable[[int], Reservation] | None = None,
) -> Response:
    """The file's bytes; ``reserve(length)`` sets the bytes to send aside from a quota (or
    refuses them) before anything is sent."""
    entry = ref.file
    public = ref.access == "public"
    etag = f'"{entry.sha256}"'
    if public and pinned:
        # A version's bytes never change.
        cache = "public, max-age=31536000, immutable"
    else:
        cache = ("public" if public else "private") + ", no-cache"
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": cache,
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(entry.name)}",
        "X-Khazna-Version": str(ref.version),
        # Verbatim: Starlette would add "charset=utf-8" to text/*, wrong for a cp1256 CSV.
        "Content-Type": entry.media_type,
        "Repr-Digest": "sha-256=:" + base64.b64encode(bytes.fromhex(entry.sha256)).decode() + ":",
    }
    inm = request.headers.get("if-none-match")
    if inm is not None and _etag_matches(inm, etag):
        return Response(status_code=304, headers=headers)

    span = None
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if range_header and (if_range is None or if_range.strip() == etag):
        span = parse_range(range_header, entry.size)

    if span is None:
        start, length, status = 0, entry.size, 200
    else:
        start, length, status = span[0], span[1] - span[0] + 1, 206
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{entry.size}"
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    chunks = blobs.read_range(entry.sha256, start, length)
    if reserve is not None:
        chunks = _metered(chunks, reserve(length))
    return StreamingResponse(chunks, status_code=status, headers=headers)


def _metered(chunks: Iterator[bytes], reservation: Reservation) -> Iterator[bytes]:
    """Count what is handed to the server; a download cut short gives the rest back."""
    try:
        for chunk in chunks:
            reservation.add(len(chunk))
            yield chunk
    finally:
        reservation.finish()
