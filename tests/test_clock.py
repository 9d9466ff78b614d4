"""Stored timestamps read exactly as datetime writes them."""

import random
from datetime import UTC, datetime

from app.clock import iso


def test_iso_matches_datetime_for_any_moment():
    picks = random.Random(7)
    moments = [0.0, 0.5, -0.5, 1.9999995, 1.0000005, 1_796_072_351.999_999_7,
               1_796_072_351.000_000_4, 253_402_300_798.5]
    moments += [picks.uniform(-1e9, 4e9) for _ in range(20_000)]
    moments += [picks.uniform(1.7e9, 1.8e9) for _ in range(20_000)]
    for moment in moments:
        assert iso(moment) == datetime.fromtimestamp(moment, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"), moment
