"""Group commit: many threads' writes share one transaction (and one fsync).

`GroupCommit.submit(item)` returns once `item` is committed. Items that arrive while a commit
is in progress wait, and the next commit takes all of them at once. There is no background
thread: the first waiting caller leads the next commit (so it works the same after gunicorn
forks). The webhook's journal appends and the senders' outcomes both go through it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from app.store import StorageError

log = logging.getLogger("nudge.store")

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Slot(Generic[Item, Result]):
    __slots__ = ("item", "done", "result", "error")

    def __init__(self, item: Item):
        self.item = item
        self.done = False
        self.result: Result | None = None
        self.error: StorageError | None = None


class GroupCommit(Generic[Item, Result]):
    """`commit(items)` writes a batch in one transaction and returns one result per item;
    a StorageError it raises is raised to every caller of that batch. `on_commit(items)`
    runs after each successful commit (metrics, once per batch)."""

    def __init__(self, commit: Callable[[Sequence[Item]], Sequence[Result]], max_batch: int,
                 on_commit: Callable[[Sequence[Item]], None] | None = None):
        self._commit_batch = commit
        self.max_batch = max_batch
        self._on_commit = on_commit
        self._cond = threading.Condition()
        self._pending: list[_Slot] = []
        self._committing = False

    def submit(self, item: Item) -> Result:
        """The item's result once committed; StorageError if it was not committed."""
        slot: _Slot = _Slot(item)
        with self._cond:
            self._pending.append(slot)
        while True:
            with self._cond:
                while not slot.done and self._committing:
                    self._cond.wait()
                if slot.done:
                    if slot.error is not None:
                        raise slot.error
                    return slot.result
                # Nobody is committing and our item is still waiting: lead the next commit.
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                self._committing = True
            self._commit(batch)

    def _commit(self, batch: list[_Slot]) -> None:
        try:
            results = self._commit_batch([slot.item for slot in batch])
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
            if self._on_commit is not None:
                try:
                    self._on_commit([slot.item for slot in batch])
                except Exception:  # noqa: BLE001 - committed is committed: never a failure
                    log.exception("after a commit")
        except StorageError as exc:
            for slot in batch:
                slot.error = exc
        except BaseException as exc:  # never leave followers waiting on a commit that died
            for slot in batch:
                slot.error = StorageError(f"could not commit: {exc!r}")
            raise
        finally:
            with self._cond:
                for slot in batch:
                    slot.done = True
                self._committing = False
                self._cond.notify_all()
