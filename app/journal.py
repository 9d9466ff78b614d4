"""Durable acceptance of notifications, with group commit.

`Journal.append` returns once the notification is committed to the store (it survives a
power cut). Requests that arrive while a commit is in progress wait, and the next commit
takes all of them at once: one transaction and one fsync per batch, not per request. There
is no background thread: the first waiting request leads the next commit (so it works the
same after gunicorn forks).
"""

from __future__ import annotations

import threading

from app import metrics
from app.store import JournalEntry, StorageError, Store


class _Slot:
    __slots__ = ("entry", "done", "id", "error")

    def __init__(self, entry: JournalEntry):
        self.entry = entry
        self.done = False
        self.id: int | None = None
        self.error: StorageError | None = None


class Journal:
    def __init__(self, store: Store, max_batch: int = 256):
        self.store = store
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[_Slot] = []
        self._committing = False

    def append(self, entry: JournalEntry) -> int:
        """The notification's id once durably stored; StorageError if it was not stored."""
        slot = _Slot(entry)
        with self._cond:
            self._pending.append(slot)
        while True:
            with self._cond:
                while not slot.done and self._committing:
                    self._cond.wait()
                if slot.done:
                    return self._result(slot)
                # Nobody is committing and our entry is still waiting: lead the next commit.
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                self._committing = True
            self._commit(batch)

    def _commit(self, batch: list[_Slot]) -> None:
        try:
            ids = self.store.append_notifications([s.entry for s in batch])
            for waiting, notification_id in zip(batch, ids, strict=True):
                waiting.id = notification_id
            metrics.JOURNAL_COMMIT_SIZE.observe(len(batch))
        except StorageError as exc:
            for waiting in batch:
                waiting.error = exc
        except BaseException as exc:  # never leave followers waiting on a commit that died
            for waiting in batch:
                waiting.error = StorageError(f"could not store notification: {exc!r}")
            raise
        finally:
            with self._cond:
                for waiting in batch:
                    waiting.done = True
                self._committing = False
                self._cond.notify_all()

    @staticmethod
    def _result(slot: _Slot) -> int:
        if slot.error is not None:
            raise slot.error
        assert slot.id is not None
        return slot.id
