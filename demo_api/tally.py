"""Event counts kept in hourly buckets, for "in the last N hours" totals."""

from __future__ import annotations

SECONDS_PER_HOUR = 3600


class HourlyTally:
    """Counts events per clock hour and sums the most recent hours.

    A window of N hours covers the current hour and the N - 1 before it, so totals are
    accurate to the hour, which is all a demo directory needs. Buckets older than
    `retain_hours` are dropped.
    """

    def __init__(self, retain_hours: int = 31 * 24) -> None:
        self._retain_hours = retain_hours
        self._buckets: dict[int, int] = {}
        self._newest_hour: int | None = None

    def add(self, at: float, count: int = 1) -> None:
        """Record `count` events at unix time `at`."""
        hour = int(at // SECONDS_PER_HOUR)
        self._buckets[hour] = self._buckets.get(hour, 0) + count
        if self._newest_hour is None or hour > self._newest_hour:
            self._newest_hour = hour
            oldest_kept = hour - self._retain_hours
            for stale in [h for h in self._buckets if h < oldest_kept]:
                del self._buckets[stale]

    def total(self, now: float, hours: int) -> int:
        """Events in the `hours` clock hours ending with the one containing `now`."""
        first = int(now // SECONDS_PER_HOUR) - hours + 1
        return sum(count for hour, count in self._buckets.items() if hour >= first)
