"""Quotas: requests per minute and download bytes per day, per token (or per address).

Each caller has one counter per rule, for the current window: a minute from the first
request (rate limit), or the UTC day (download volume). The embedded SQLite hub is one
process, which counts in its memory (``Quotas``). On PostgreSQL several hub processes
share one hub, so the counters live in the database (``SharedQuotas``): each check is
one atomic upsert of the caller's row, and every process sees the same counts.

Only the first refusal of a window is meant for the audit log, so that a caller hammering
the hub cannot fill it: the counters also count refusals, and a refusal that is the
first of its window carries how many earlier ones went unlogged (``OverQuota.log_unlogged``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, text

from khazna.errors import OverQuota

MINUTE_MS = 60_000
DAY_MS = 86_400_000
RATE_LIMIT = "rate_limit"
DAILY_BYTES = "daily_download_bytes"


def _midnight_ms(now_ms: int) -> int:
    return now_ms - now_ms % DAY_MS


@dataclass(frozen=True)
class Count:
    """A counter after one attempt."""

    window_start_ms: int
    used: int  # admitted in the window, this attempt included if admitted
    refused: int  # refusals in the window, this attempt included if refused
    unlogged: int  # refusals of earlier windows that were not logged
    admitted: bool


@dataclass
class _Counter:
    start_ms: int
    used: int = 0
    refused: int = 0
    unlogged: int = 0


class Reservation:
    """Bytes set aside for one download; what was not sent goes back at the end."""

    def __init__(self, quotas: Quotas, key: str, window_start_ms: int, length: int) -> None:
        self._quotas, self._key, self._start = quotas, key, window_start_ms
        self.reserved = length
        self.sent = 0

    def add(self, n: int) -> None:
        self.sent += n

    def finish(self) -> None:
        unsent, self.reserved = self.reserved - self.sent, self.sent
        if unsent > 0 and self._quotas.daily_bytes > 0:  # else nothing was counted
            self._quotas._give_back(self._key, DAILY_BYTES, self._start, unsent)


class Quotas:
    """The quotas of one hub process, counted in its memory."""

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
        self._counters: dict[tuple[str, str], _Counter] = {}

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def hit(self, key: str) -> None:
        """Count one request; OverQuota past the per-minute limit (0: no limit)."""
        if self.per_minute <= 0:
            return
        now = self._now_ms()
        count = self._take(key, RATE_LIMIT, 1, self.per_minute, now, now, MINUTE_MS)
        if count.admitted:
            return
        retry = max(1, math.ceil((count.window_start_ms + MINUTE_MS - now) / 1000))
        raise _logged_once(
            OverQuota(
                f"rate limit: at most {self.per_minute} requests per minute "
                f"(KHAZNA_RATE_LIMIT_PER_MINUTE) for {_who(key)}; retry in {retry} s",
                rule=RATE_LIMIT,
                limit=self.per_minute,
                retry_after=retry,
            ),
            count,
        )

    def download(self, key: str, length: int) -> Reservation:
        """Set ``length`` bytes aside from today's volume; OverQuota if they do not fit."""
        now = self._now_ms()
        day = _midnight_ms(now)
        if self.daily_bytes <= 0:
            return Reservation(self, key, day, length)
        count = self._take(key, DAILY_BYTES, length, self.daily_bytes, now, day, DAY_MS)
        if count.admitted:
            return Reservation(self, key, count.window_start_ms, length)
        retry = max(1, math.ceil((day + DAY_MS - now) / 1000))
        raise _logged_once(
            OverQuota(
                f"daily download volume: at most {self.daily_bytes} bytes a day "
                f"(KHAZNA_DAILY_DOWNLOAD_BYTES) for {_who(key)}; {count.used} used today, "
                f"this download is {length}; retry after midnight UTC, in {retry} s",
                rule=DAILY_BYTES,
                limit=self.daily_bytes,
                used=count.used,
                retry_after=retry,
            ),
            count,
        )

    def downloaded_today(self, key: str) -> int:
        now = self._now_ms()
        return self._used(key, DAILY_BYTES, _midnight_ms(now))

    # where the counters are: this process's memory -----------------------------------

    def _take(
        self, key: str, rule: str, amount: int, limit: int, now_ms: int, start_ms: int, span_ms: int
    ) -> Count:
        """Add ``amount`` to the counter if it stays within ``limit``, else count a refusal.
        A window older than ``span_ms`` starts again at ``start_ms``."""
        with self._lock:
            c = self._counters.get((key, rule))
            if c is None or c.start_ms + span_ms <= now_ms:
                carried = 0 if c is None else c.unlogged + max(c.refused - 1, 0)
                if c is None and len(self._counters) > 100_000:
                    self._forget_idle(now_ms)
                c = self._counters[(key, rule)] = _Counter(start_ms, unlogged=carried)
            admitted = c.used + amount <= limit
            if admitted:
                c.used += amount
            else:
                c.refused += 1
            count = Count(c.start_ms, c.used, c.refused, c.unlogged, admitted)
            if not admitted and c.refused == 1:
                c.unlogged = 0  # reported with this refusal
            return count

    def _forget_idle(self, now_ms: int) -> None:
        """Callers idle for a day go, unless they have unlogged refusals to report."""
        self._counters = {
            k: c
            for k, c in self._counters.items()
            if c.start_ms + DAY_MS > now_ms - DAY_MS or c.unlogged or c.refused > 1
        }

    def _give_back(self, key: str, rule: str, start_ms: int, n: int) -> None:
        with self._lock:
            c = self._counters.get((key, rule))
            if c is not None and c.start_ms == start_ms:
                c.used = max(0, c.used - n)

    def _used(self, key: str, rule: str, start_ms: int) -> int:
        with self._lock:
            c = self._counters.get((key, rule))
            return c.used if c is not None and c.start_ms == start_ms else 0


# One statement per check. In ON CONFLICT's SET every ``q.`` is the row as it was, so the
# new values are computed from one consistent old row, under the row's lock.
_TAKE = text(
    """
INSERT INTO quota_counters AS q
    (key, rule, window_start_ms, used, refused, unlogged, admitted)
VALUES (:key, :rule, :start, :fresh_used, :fresh_refused, 0, :fresh_admitted)
ON CONFLICT (key, rule) DO UPDATE SET
    window_start_ms = CASE WHEN q.window_start_ms + :span <= :now
        THEN :start ELSE q.window_start_ms END,
    used = CASE WHEN q.window_start_ms + :span <= :now THEN :fresh_used
        WHEN q.used + :amount <= :limit THEN q.used + :amount ELSE q.used END,
    refused = CASE WHEN q.window_start_ms + :span <= :now THEN :fresh_refused
        WHEN q.used + :amount <= :limit THEN q.refused ELSE q.refused + 1 END,
    unlogged = CASE WHEN q.window_start_ms + :span <= :now
        THEN q.unlogged + greatest(q.refused - 1, 0) ELSE q.unlogged END,
    admitted = CASE WHEN q.window_start_ms + :span <= :now THEN :fresh_admitted
        ELSE q.used + :amount <= :limit END
RETURNING window_start_ms, used, refused, unlogged, admitted
"""
)
_REPORTED = text(
    "UPDATE quota_counters SET unlogged = greatest(unlogged - :n, 0) "
    "WHERE key = :key AND rule = :rule"
)
_GIVE_BACK = text(
    "UPDATE quota_counters SET used = greatest(used - :n, 0) "
    "WHERE key = :key AND rule = :rule AND window_start_ms = :start"
)
_USED = text(
    "SELECT used FROM quota_counters WHERE key = :key AND rule = :rule AND window_start_ms = :start"
)
_FORGET = text(
    "DELETE FROM quota_counters WHERE window_start_ms < :before AND unlogged = 0 AND refused <= 1"
)
_FORGET_EVERY = 10_000  # checks by this process between two clean-ups of idle callers


class SharedQuotas(Quotas):
    """The same quotas, counted in the metadata database (PostgreSQL), so that every hub
    process sharing it counts against one limit."""

    def __init__(
        self,
        engine: Engine,
        per_minute: int,
        daily_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(per_minute, daily_bytes, clock)
        self.engine = engine
        self._checks = 0

    def _take(
        self, key: str, rule: str, amount: int, limit: int, now_ms: int, start_ms: int, span_ms: int
    ) -> Count:
        fits = amount <= limit
        params = {
            "key": key,
            "rule": rule,
            "start": start_ms,
            "now": now_ms,
            "span": span_ms,
            "amount": amount,
            "limit": limit,
            "fresh_used": amount if fits else 0,
            "fresh_refused": 0 if fits else 1,
            "fresh_admitted": fits,
        }
        with self.engine.begin() as conn:
            row = conn.execute(_TAKE, params).one()
            count = Count(
                int(row.window_start_ms),
                int(row.used),
                int(row.refused),
                int(row.unlogged),
                bool(row.admitted),
            )
            if not count.admitted and count.refused == 1 and count.unlogged:
                conn.execute(_REPORTED, {"n": count.unlogged, "key": key, "rule": rule})
        self._checks += 1
        if self._checks % _FORGET_EVERY == 0:
            with self.engine.begin() as conn:
                conn.execute(_FORGET, {"before": now_ms - 2 * DAY_MS})
        return count

    def _give_back(self, key: str, rule: str, start_ms: int, n: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(_GIVE_BACK, {"n": n, "key": key, "rule": rule, "start": start_ms})

    def _used(self, key: str, rule: str, start_ms: int) -> int:
        with self.engine.connect() as conn:
            used = conn.execute(_USED, {"key": key, "rule": rule, "start": start_ms}).scalar()
        return int(used or 0)


def make_quotas(engine: Engine, per_minute: int, daily_bytes: int) -> Quotas:
    """Shared counters where several processes may serve the hub (PostgreSQL)."""
    if engine.dialect.name == "postgresql":
        return SharedQuotas(engine, per_minute, daily_bytes)
    return Quotas(per_minute, daily_bytes)


def _logged_once(exc: OverQuota, count: Count) -> OverQuota:
    """Mark the first refusal of a window for the audit log, with the unlogged before it."""
    if count.refused == 1:
        exc.log_unlogged = count.unlogged
    return exc


def _who(key: str) -> str:
    kind, _, value = key.partition(":")
    return {"token": "this token", "address": f"anonymous callers from {value}"}.get(kind, key)
