"""Timestamps as stored: epoch seconds for queue arithmetic, ISO-8601 UTC text for people."""

import math
import time

# The text of the last whole second formatted: the store stamps many rows per second, and
# strftime is most of what formatting one costs.
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def iso(epoch: float | None = None) -> str:
    """`2026-11-30T20:29:30.123456Z`: what datetime.fromtimestamp(epoch, UTC) would write,
    microseconds rounded the same way."""
    global _last_second
    fraction, whole = math.modf(time.time() if epoch is None else epoch)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1, micros + 1_000_000
    second = int(whole)
    cached_second, text = _last_second
    if cached_second != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return f"{text}.{micros:06d}Z"
