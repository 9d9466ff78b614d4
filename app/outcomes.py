"""Recording what happened to each send: now (one caller), or in the background (the worker).

A sender must not wait for the database after the relay has answered: the email is out, and
the next one is waiting. `BackgroundOutcomes` takes each outcome from the senders and one
thread writes them in batches, one transaction (one fsync) for everything that finished
within a short window (`gather_window`): most of one send's duration, so that an outcome is
in the database before its connection can have sent another email, and a worker killed at
any moment repeats at most about one email per connection. Until its outcome is written, a
delivery stays claimed (its lease is renewed), so no other worker can send it again
meanwhile. Writing is retried until it succeeds: the outcome happened, and forgetting it
would send the email again once the lease runs out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from app.group_commit import GroupCommit
from app.store import Delivery, Outcome, StorageError, Store

log = logging.getLogger("nudge.delivery")

MAX_BATCH = 256
MAX_RETRY_DELAY = 2.0
# The window in which outcomes gather into one write: SEND_SHARE of a send's recent duration,
# within GATHER and MAX_GATHER; cut short once GATHER_BELOW outcomes are waiting.
GATHER = 0.02
MAX_GATHER = 0.25
SEND_SHARE = 0.75
GATHER_BELOW = 16
# Weight of the newest send in the running estimate of a send's duration.
SEND_WEIGHT = 0.1


def gather_window(send_seconds: float) -> float:
    """How long the writer lets outcomes gather before writing them: three quarters of a send
    (with a relay 20 ms per command away, 45 ms of a 60 ms send), so the outcome of one email
    is written before its connection's next email is out, and never less than GATHER (a
    local relay) or more than MAX_GATHER (a slow one)."""
    return min(MAX_GATHER, max(GATHER, SEND_SHARE * send_seconds))


def report_stale(outcomes: Sequence[Outcome], current: Sequence[bool]) -> None:
    for outcome, still_current in zip(outcomes, current, strict=True):
        if not still_current:
            log.warning("delivery=%s outcome %s recorded only in its attempt log: its lease "
                        "expired and a newer claim owns it", outcome.delivery.id, outcome.status)


class ImmediateOutcomes:
    """Writes each outcome before returning (callers that send one delivery at a time);
    concurrent callers still share commits."""

    def __init__(self, store: Store):
        self._commits: GroupCommit[Outcome, bool] = GroupCommit(
            lambda batch: store.settle_many(batch, time.time()), MAX_BATCH)

    def record(self, outcome: Outcome) -> None:
        delay = 0.1
        while True:
            try:
                current = self._commits.submit(outcome)
                break
            except StorageError as exc:
                log.warning("delivery=%s: cannot record outcome %s yet, retrying in %.1fs: %s",
                            outcome.delivery.id, outcome.status, delay, exc)
                time.sleep(delay)
                delay = min(MAX_RETRY_DELAY, delay * 2)
        report_stale([outcome], [current])

    def unrecorded(self, delivery: Delivery) -> bool:
        return False

    def sent_in(self, seconds: float) -> None:
        """Nothing waits to be gathered here."""

    def close(self) -> None:
        """Nothing is ever left to write."""


class BackgroundOutcomes:
    """Outcomes written by a thread of their own, in batches. `recorded(delivery)` is called
    once a delivery's outcome is in the database (the worker then stops renewing its lease)."""

    def __init__(self, store: Store, recorded: Callable[[Delivery], None]):
        self.store = store
        self._recorded = recorded
        self._cond = threading.Condition()
        self._queue: list[Outcome] = []
        self._unrecorded: set[int] = set()
        self._closing = False
        # A send's duration as sent_in saw them. It starts from nothing and rises: the first
        # sends on new connections also connect, and must not widen the window past a send.
        self._send_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="outcomes", daemon=True)
        self._thread.start()

    def record(self, outcome: Outcome) -> None:
        with self._cond:
            self._unrecorded.add(outcome.delivery.id)
            self._queue.append(outcome)
            # The writer waits for a batch's first outcome, then gathers the next ones until
            # GATHER_BELOW or the end of its window: waking it for each one in between would
            # only put it to sleep again.
            if len(self._queue) == 1 or len(self._queue) >= GATHER_BELOW:
                self._cond.notify()

    def sent_in(self, seconds: float) -> None:
        """A sender's relay took `seconds` to accept an email (a lost update between two
        senders only leaves the estimate a little behind)."""
        self._send_seconds += SEND_WEIGHT * (seconds - self._send_seconds)

    def unrecorded(self, delivery: Delivery) -> bool:
        """Whether this delivery's outcome is still waiting to be written."""
        with self._cond:
            return delivery.id in self._unrecorded

    def close(self) -> None:
        """Write everything recorded so far, then stop (the senders have stopped)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        return
                    # Nobody waits on this write (the lease holds the claim meanwhile): let a
                    # few more sends finish, so one transaction records them all.
                    deadline = time.monotonic() + gather_window(self._send_seconds)
                    while len(self._queue) < GATHER_BELOW and not self._closing:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                    batch = self._queue[:MAX_BATCH]
                    del self._queue[:MAX_BATCH]
                self._write(batch)
        finally:
            self.store.close()

    def _write(self, batch: list[Outcome]) -> None:
        delay = 0.1
        while True:
            try:
                current = self.store.settle_many(batch, time.time())
                break
            except Exception as exc:  # noqa: BLE001 - this thread must never die: retried
                more = f" and {len(batch) - 1} more" if len(batch) > 1 else ""
                log.warning("cannot record outcome %s of delivery=%s%s yet, retrying in %.1fs: "
                            "%s", batch[0].status, batch[0].delivery.id, more, delay, exc,
                            exc_info=not isinstance(exc, StorageError))
                time.sleep(delay)
                delay = min(MAX_RETRY_DELAY, delay * 2)
        report_stale(batch, current)
        for outcome in batch:
            try:
                self._recorded(outcome.delivery)
            except Exception:  # noqa: BLE001 - the outcome is written: go on with the others
                log.exception("delivery=%s: after recording its outcome", outcome.delivery.id)
            finally:
                with self._cond:
                    self._unrecorded.discard(outcome.delivery.id)
