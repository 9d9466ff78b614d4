"""Durable acceptance of notifications, with group commit.

`Journal.append` returns once the notification is committed to the store (it survives a
power cut). Requests that arrive while a commit is in progress wait, and the next commit
takes all of them at once: one transaction and one fsync per batch, not per request
(app/group_commit.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from app import metrics
from app.group_commit import GroupCommit
from app.store import JournalEntry, Store


class Journal:
    def __init__(self, store: Store, max_batch: int = 256):
        self.store = store
        self._commits: GroupCommit[JournalEntry, int] = GroupCommit(
            store.append_notifications, max_batch, _count)

    def append(self, entry: JournalEntry) -> int:
        """The notification's id once durably stored; StorageError if it was not stored."""
        return self._commits.submit(entry)


def _count(entries: Sequence[JournalEntry]) -> None:
    """Metrics once per commit, not per request: each increment of a multiprocess metric
    costs a system call."""
    metrics.JOURNAL_COMMIT_SIZE.observe(len(entries))
    metrics.WEBHOOK_REQUESTS.labels("200").inc(len(entries))
    receivers = Counter(entry.receiver for entry in entries)
    for receiver, count in receivers.items():
        metrics.NOTIFICATIONS.labels(receiver).inc(count)
