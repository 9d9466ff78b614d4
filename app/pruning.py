"""Applying the retention policy (app/retention.py): `nudge prune`, and the delivery worker's
background pruning, both in small batches so pruning never holds the write lock for long."""

from __future__ import annotations

import logging
import threading
import time

from app import retention
from app.store import PruneCounts, StorageError, Store

log = logging.getLogger("nudge.retention")

BATCH_PAUSE = 0.05  # seconds between batches: other writers get the lock in between


def prune(store: Store, before: float, *, batch: int = retention.BATCH_ROWS,
          pause: float = BATCH_PAUSE, stopping: threading.Event | None = None) -> PruneCounts:
    """Delete everything older than `before` that the policy lets go, batch by batch, then
    the journal files that are fully decided; returns what went."""
    total = PruneCounts()
    while stopping is None or not stopping.is_set():
        counts = store.prune_batch(before, batch)
        total.add(counts)
        if not counts.rows:
            break
        if stopping is not None:
            stopping.wait(pause)
        else:
            time.sleep(pause)
    total.add(store.prune_journal_files())
    return total


class RetentionKeeper:
    """Prunes at start and then every `prune_interval`, until `stopping` is set."""

    def __init__(self, store: Store, window: float, stopping: threading.Event):
        self.store = store
        self.window = window
        self.stopping = stopping

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="retention", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        interval = retention.prune_interval(self.window)
        try:
            while not self.stopping.is_set():
                self.prune_once()
                self.stopping.wait(interval)
        finally:
            self.store.close()

    def prune_once(self) -> PruneCounts | None:
        before = retention.cutoff(time.time(), self.window)
        try:
            counts = prune(self.store, before, stopping=self.stopping)
        except StorageError as exc:
            log.warning("pruning history older than %s failed (will try again): %s",
                        retention.format_window(self.window), exc)
            return None
        if counts.rows or counts.journal_files:
            log.info("pruned history older than %s: %s", retention.format_window(self.window),
                     "; ".join(" ".join(line.split()) for line in retention.describe(counts)))
        return counts
