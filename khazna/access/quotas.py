"""Quotas: requests per minute and download bytes per day, per token (or per address).

The counters live in this process. One hub process (the embedded default) counts exactly;
several API processes each count on their own, so the effective limit is N times the
setting until the counters move to a shared store (e.g. Redis or the metadata database).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from khazna.errors import OverQuota

MINUTE = 60.0


def _seconds_to_midnight_utc(now: float) -> int:
    moment = datetime.fromtimestamp(now, UTC)
    midnight = datetime.combine(moment.date() + timedelta(days=1), datetime.min.time(), UTC)
    return max(1, math.ceil((midnight - moment).total_seconds()))


@dataclass
class _Window:
    start: float
    count: int = 0


class Reservation:
    """Bytes set aside for one download; what was not sent goes back at the end."""

    def __init__(self, quotas: Quotas, key: str, day: str, length: int) -> None:
        self._quotas, self._key, self._day = quotas, key, day
        self.reserved = length
        self.sent = 0

    def add(self, n: int) -> None:
        self.sent += n

    def finish(self) -> None:
        unsent, self.reserved = self.reserved - self.sent, self.sent
        if unsent > 0:
            self._quotas._give_back(self._key, self._day, unsent)


class Quotas:
    def __init__(
        self,
        per_minute: int,
        daily_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.per_minute = per_minute
        self.daily_bytes = daily_bytes
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._downloaded: dict[tuple[str, str], int] = {}  # (key, UTC day) -> bytes

    def hit(self, key: str) -> None:
        """Count one request; OverQuota past the per-minute limit (0: no limit)."""
        if self.per_minute <= 0:
            return
        now = self.clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window.start >= MINUTE:
                if len(self._windows) > 100_000:  # forget idle callers
                    self._windows = {
                        k: w for k, w in self._windows.items() if now - w.start < MINUTE
                    }
                window = self._windows[key] = _Window(now)
            if window.count >= self.per_minute:
                retry = max(1, math.ceil(window.start + MINUTE - now))
                raise OverQuota(
                    f"rate limit: at most {self.per_minute} requests per minute "
                    f"(KHAZNA_RATE_LIMIT_PER_MINUTE) for {_who(key)}; retry in {retry} s",
                    rule="rate_limit",
                    limit=self.per_minute,
                    retry_after=retry,
                )
            window.count += 1

    def download(self, key: str, length: int) -> Reservation:
        """Set ``length`` bytes aside from today's volume; OverQuota if they do not fit."""
        now = self.clock()
        day = datetime.fromtimestamp(now, UTC).date().isoformat()
        with self._lock:
            used = self._downloaded.get((key, day), 0)
            if self.daily_bytes > 0 and used + length > self.daily_bytes:
                retry = _seconds_to_midnight_utc(now)
                raise OverQuota(
                    f"daily download volume: at most {self.daily_bytes} bytes a day "
                    f"(KHAZNA_DAILY_DOWNLOAD_BYTES) for {_who(key)}; {used} used today, "
                    f"this download is {length}; retry after midnight UTC, in {retry} s",
                    rule="daily_download_bytes",
                    limit=self.daily_bytes,
                    used=used,
                    retry_after=retry,
                )
            for old in [k for k in self._downloaded if k[1] != day]:
                del self._downloaded[old]
            self._downloaded[(key, day)] = used + length
        return Reservation(self, key, day, length)

    def downloaded_today(self, key: str) -> int:
        day = datetime.fromtimestamp(self.clock(), UTC).date().isoformat()
        with self._lock:
            return self._downloaded.get((key, day), 0)

    def _give_back(self, key: str, day: str, n: int) -> None:
        with self._lock:
            if (key, day) in self._downloaded:
                self._downloaded[(key, day)] -= n


def _who(key: str) -> str:
    kind, _, value = key.partition(":")
    return {"token": "this token", "address": f"anonymous callers from {value}"}.get(kind, key)
