"""Retention policy: what is old enough to delete, and what must stay, as plain functions.

Nudge keeps what it received and decided for `retention` (default 90 days), then deletes it:
raw notification bodies, per-alert decisions and send attempts. What decides whether an
email may be sent again is never deleted, so pruning can never cause a re-send: dedup keys,
cooldowns, suppressions, and each (rule, user)'s latest delivery. An older delivery is reduced
to its dedup key (the alert, address and error go), and a notification a delivery refers to
keeps its row without its body. Nothing still waiting (undecided, queued, being sent) is
touched. The store does the deleting (app/store, `prune_batch`); app/pruning.py runs it.
"""

from __future__ import annotations

from app.durations import FOREVER, format_duration, parse_duration
from app.store.base import PruneCounts

DEFAULT_RETENTION = "90d"
# Rows of each kind per transaction: each batch holds the write lock for milliseconds, so
# receivers, the decider and the senders are never held up by pruning.
BATCH_ROWS = 500
MAX_INTERVAL = 3600.0  # the worker prunes hourly (more often for a short retention)
KEPT = ("dedup keys, cooldowns, suppressions, each (rule, user)'s latest delivery, and "
        "everything still waiting")


def parse_retention(value: object) -> float | None:
    """Seconds to keep history; None keeps everything (`forever`, 0 or empty)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", FOREVER)):
        return None
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError(f"expected a duration like 90d, or 'forever', got {value!r}") from None
    return seconds or None


def cutoff(now: float, retention: float | None) -> float | None:
    """Rows older than this go; None when history is kept forever."""
    return None if retention is None else now - retention


def prune_interval(retention: float) -> float:
    """How often the worker prunes: hourly, or ten times per window when it is shorter, so
    nothing outlives its window by more than a tenth."""
    return max(1.0, min(MAX_INTERVAL, retention / 10))


def describe(counts: PruneCounts) -> list[str]:
    """What went (or would go), one line per kind, for people."""
    journal = f"{counts.journal_files}"
    if counts.journal_files:
        journal += f" ({counts.journal_bytes / 1e6:.1f} MB)"
    return [
        f"raw notification bodies  {counts.raw_bodies}",
        f"decisions                {counts.decisions}",
        f"attempts                 {counts.attempts}",
        f"hold log entries         {counts.hold_events}",
        f"frequency-cap entries    {counts.cap_entries}",
        f"deliveries reduced to their dedup key  {counts.deliveries}",
        f"journal files            {journal}",
    ]


def format_window(retention: float | None) -> str:
    return format_duration(retention)
