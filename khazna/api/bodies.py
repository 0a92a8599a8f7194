"""Reading request bodies as streams, with an idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import unquote

from fastapi import Request

from khazna.errors import RequestTimeout


async def body_chunks(request: Request, idle_timeout_s: float) -> AsyncIterator[bytes]:
    """The body's chunks; RequestTimeout if the client sends nothing for ``idle_timeout_s``."""
    stream = request.stream().__aiter__()
    while True:
        try:
            # A timer handle per chunk; asyncio.wait_for would start a task for each.
            async with asyncio.timeout(idle_timeout_s):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise RequestTimeout(
                f"the request body stalled: nothing arrived for {idle_timeout_s:g} s"
            ) from exc
        if chunk:
            yield chunk


def header_text(raw: str) -> str:
    """A free-text header: UTF-8 sent raw (as curl does) or percent-encoded.

    HTTP hands header bytes over as Latin-1; re-read them as the UTF-8 they almost always are.
    """
    with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
        raw = raw.encode("latin-1").decode("utf-8")
    return unquote(raw)
