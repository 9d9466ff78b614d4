"""The delivery worker: the decider, and one sending thread per SMTP connection.

The decider thread turns journaled notifications into deliveries (app/decider.py) and wakes
the dispatcher as soon as it has queued some. One dispatcher thread claims due deliveries in
batches and hands them to the senders. It notices work queued by other processes through
the store's change watcher instead of polling the table, and sleeps until the next retry is
due when there is nothing to do. Stopping (SIGTERM) finishes the messages being sent and
gives unstarted claims back to the queue.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable

from app.circuit import HOLD
from app.config import Config
from app.decider import Decider
from app.delivery import Deliverer
from app.interrupts import Interrupt
from app.outcomes import BackgroundOutcomes
from app.policy import AlertPolicy
from app.redact import redact_url
from app.store import Delivery, StorageError, store_for
from app.transports import parse_smtp_url, smtp_warnings, transport_factory

log = logging.getLogger("nudge.worker")

MAX_IDLE_SLEEP = 1.0
# The longest the dispatcher waits for one more sender to finish while gathering a claim.
CLAIM_GATHER = 0.05
# The fewest deliveries a claim gathers while the senders have work in hand, however few
# connections this process has: a claim (one transaction) costs the same for 4 emails as for
# 12, so a worker with a small share of the fleet's connections claims as many at a time as a
# big one instead of paying more per email.
MIN_CLAIM_BATCH = 12


class LeaseKeeper:
    """Renews the leases of claimed deliveries until they are settled, so a slow send (or one
    waiting for the rate limit) is never claimed by another worker or replica meanwhile."""

    def __init__(self, store, lease: float):
        self.store = store
        self.lease = lease
        self._lock = threading.Lock()
        self._held: dict[int, Delivery] = {}
        self._expires: dict[int, float] = {}
        self.stopping = threading.Event()

    def hold(self, delivery: Delivery) -> None:
        with self._lock:
            self._held[delivery.id] = delivery
            self._expires[delivery.id] = delivery.lease_until or 0.0

    def drop(self, delivery: Delivery) -> None:
        with self._lock:
            self._held.pop(delivery.id, None)
            self._expires.pop(delivery.id, None)

    def still_claimed(self, delivery: Delivery) -> bool:
        with self._lock:
            return time.time() < self._expires.get(delivery.id, 0.0)

    def run(self) -> None:
        try:
            while not self.stopping.wait(self.lease / 4):
                self.renew()
        finally:
            self.store.close()

    def renew(self) -> None:
        with self._lock:
            held = list(self._held.values())
        if not held:
            return
        until = time.time() + self.lease
        try:
            current = self.store.renew_leases(held, until)
        except StorageError as exc:
            log.warning("cannot renew leases (will try again): %s", exc)
            return
        with self._lock:
            for delivery in held:
                if delivery.id not in self._expires:
                    continue  # settled meanwhile
                if delivery.id in current:
                    self._expires[delivery.id] = until
                else:
                    log.warning("delivery=%d: its claim was taken over; not sending it",
                                delivery.id)
                    self._expires[delivery.id] = 0.0


class ClaimSlots:
    """How many more deliveries the dispatcher may claim: one slot per delivery claimed and not
    yet finished. A sender finishing wakes the dispatcher only when it has what it waits for
    (a whole claim's worth, or the senders running out of work), not once per email."""

    def __init__(self, slots: int):
        self._free = slots
        self._wanted = 1  # the free slots that wake the dispatcher now
        self._freed_at = 0.0  # when a sender last finished
        self._changed = threading.Condition()

    def take(self, allowed: int | None, gather: int, in_hand: Callable[[], bool],
             timeout: float) -> int:
        """Wait up to `timeout` for a free slot, then for `gather` of them while `in_hand()`
        (the senders have claimed work left) and senders keep finishing (one at least every
        CLAIM_GATHER); take what is free, at most `allowed` (None: no limit). 0 when none
        came free."""
        with self._changed:
            try:
                self._wanted = 1
                if not self._changed.wait_for(lambda: self._free > 0, timeout):
                    return 0
                self._wanted = gather
                self._freed_at = time.monotonic()
                # Until no sender has finished for CLAIM_GATHER: that, not a wake-up per
                # finish, tells the dispatcher the senders are slowing down.
                while self._free < gather and in_hand():
                    remaining = self._freed_at + CLAIM_GATHER - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
                taken = self._free if allowed is None else min(self._free, allowed)
                self._free -= taken
                return taken
            finally:
                self._wanted = 1

    def give_back(self, count: int) -> None:
        """Slots taken for a claim that found fewer deliveries."""
        if count:
            with self._changed:
                self._free += count

    def finished(self, idle: bool) -> None:
        """A sender finished a delivery; `idle`: no claimed work is left for the senders."""
        with self._changed:
            self._free += 1
            self._freed_at = time.monotonic()
            if idle or self._free >= self._wanted:
                self._changed.notify()


class DeliveryWorker:
    def __init__(self, config: Config, *, senders: int | None = None, decide: bool = True,
                 send: bool = True):
        """`decide=False`: a sender process (app/sender_processes.py), which only sends;
        `send=False`: the main worker process of sender processes, which only decides."""
        self.config = config
        self.senders = (senders or config.smtp_connections) if send else 0
        self.decide = decide
        # Interrupts, not plain events: the dispatcher and the decider sleep on the database's
        # notifications and must wake at once when stopped or given work.
        self.stopping = Interrupt()
        self.store = store_for(config, pool_size=self.senders + 5)
        self.deliverer = Deliverer(config, self.store)
        self.decider = Decider(self.store, AlertPolicy.from_config(config))
        self.new_work = Interrupt()
        self.leases = LeaseKeeper(self.store, config.lease)
        self.new_transport = transport_factory(config.smtp_url, config.outbox_dir)
        # A claimed delivery and its user's suppressions, read with the claim.
        self.work: queue.Queue[tuple[Delivery, tuple[set[str], set[str]] | None] | None] = \
            queue.Queue()
        # A claim gathers up to claim_batch deliveries, and may claim that many ahead of the
        # senders (slots: claimed and not yet finished), whose leases are renewed meanwhile.
        self.claim_batch = max(MIN_CLAIM_BATCH, self.senders)
        self.slots = ClaimSlots(self.senders + self.claim_batch)
        self.threads: list[threading.Thread] = []

    def run(self, started: Callable[[], None] | None = None) -> None:
        """Run until stop() is called; returns once in-flight messages are finished.
        `started` is called once every thread runs (app/readiness.py)."""
        target = self.config.smtp_url and redact_url(self.config.smtp_url) or self.config.outbox_dir
        if self.senders:
            log.info("%s started: %d sender(s), sending via %s",
                     "delivery worker" if self.decide else "sender process", self.senders, target)
        else:
            log.info("delivery worker started: deciding; its sender processes send via %s",
                     target)
        for warning in smtp_warnings(parse_smtp_url(self.config.smtp_url)) \
                if self.config.smtp_url and self.decide else []:  # once, not in every process
            log.warning("%s", warning)
        self.threads = [
            threading.Thread(target=self._send_loop, name=f"sender-{n}", daemon=True)
            for n in range(self.senders)
        ]
        # Senders hand their outcomes to a writer thread and go on to the next email.
        self.deliverer.outcomes = BackgroundOutcomes(self.store, self.leases.drop)
        for thread in self.threads:
            thread.start()
        decider = threading.Thread(target=self.decider.run, args=(self.stopping, self.new_work.set),
                                   name="decider", daemon=True)
        if self.decide:
            decider.start()
        keeper = threading.Thread(target=self.leases.run, name="lease-keeper", daemon=True)
        keeper.start()
        if started is not None:
            started()
        try:
            if self.senders:
                self._dispatch_loop()
            else:
                while not self.stopping.wait(1.0):
                    pass
        finally:
            if self.decide:
                decider.join()
            self._drain()
            self.deliverer.outcomes.close()
            self.leases.stopping.set()
            keeper.join()
            self.store.close_all()
            self.deliverer.close()
            log.info("%s stopped", "delivery worker" if self.decide else "sender process")

    def stop(self) -> None:
        self.stopping.set()
        self.new_work.set()
        self.deliverer.relay_throttle.stop()

    def _dispatch_loop(self) -> None:
        watcher = None
        try:
            while not self.stopping.is_set():
                if watcher is None:
                    try:
                        watcher = self.store.watch_queue()
                    except StorageError as exc:
                        log.error("cannot watch the database, retrying: %s", exc)
                        self.stopping.wait(1.0)
                        continue
                # While sending is paused, claim only the periodic probe.
                allowed = self.deliverer.gate.claimable()
                if allowed == 0:
                    self.stopping.wait(min(MAX_IDLE_SLEEP, self.deliverer.gate.seconds_to_probe()
                                           or MAX_IDLE_SLEEP))
                    continue
                # Claim only for free senders: block until one finishes (no spinning). While
                # the senders still have claimed work in hand, let more of them finish before
                # claiming, so that one claim (one transaction) serves several; as soon as
                # that work runs out, claim for those that are free.
                free = self.slots.take(
                    allowed, gather=self.claim_batch if allowed is None else 1,
                    in_hand=lambda: not self.work.empty(), timeout=MAX_IDLE_SLEEP)
                if not free:
                    continue
                self.new_work.clear()
                claimed: list[Delivery] = []
                try:
                    claimed = self.store.claim_due(time.time(), self.config.lease, limit=free)
                except StorageError as exc:
                    log.error("cannot claim deliveries, retrying: %s", exc)
                    self.stopping.wait(1.0)
                self.slots.give_back(free - len(claimed))
                suppressions = self._suppressions_of(claimed)
                for delivery in claimed:
                    if allowed is not None:
                        # Paused: this claim is the probe. Taken now, not when a sender gets
                        # to it, so the next turn of this loop claims nothing meanwhile.
                        self.deliverer.gate.admit(delivery.id)
                    self.leases.hold(delivery)
                    self.work.put((delivery, suppressions.get(delivery.user_id)))
                if claimed:
                    continue
                try:
                    self._wait_for_work(watcher)
                except StorageError as exc:
                    log.error("lost the database's change notifications, reconnecting: %s", exc)
                    watcher.close()
                    watcher = None
                    self.stopping.wait(1.0)
        finally:
            if watcher is not None:
                watcher.close()
            self.store.close()

    def _suppressions_of(self, claimed: list[Delivery]) -> dict[str, tuple[set[str], set[str]]]:
        """The claimed users' suppressions: read with the claim (PostgreSQL), or in one query (a
        sender asks itself if this fails)."""
        if not claimed:
            return {}
        if all(delivery.suppressions is not None for delivery in claimed):
            return {delivery.user_id: delivery.suppressions for delivery in claimed}
        try:
            return self.store.users_suppressions(delivery.user_id for delivery in claimed)
        except StorageError:
            return {}

    def _wait_for_work(self, watcher) -> None:
        """Nothing is due: sleep until the decider queues, another process commits, or the
        next retry (or expiring lease) falls due."""
        try:
            due = self.store.next_due_at()
        except StorageError:
            due = None
        timeout = MAX_IDLE_SLEEP
        if due is not None:
            timeout = max(0.0, min(timeout, due - time.time()))
        if self.new_work.is_set():
            return
        watcher.wait(timeout, self.new_work)

    def _send_loop(self) -> None:
        transport = self.new_transport()
        throttle = self.deliverer.relay_throttle
        throttle.take_seat()
        try:
            while True:
                # While the relay makes the pool send on fewer connections, a sender beyond
                # them closes its connection and takes no work (app/relay_throttle.py); an
                # idle one looks again every second.
                throttle.park(lambda idle=transport: _close_quietly(idle))
                try:
                    item = self.work.get(timeout=MAX_IDLE_SLEEP)
                except queue.Empty:
                    continue
                if item is None:
                    return
                delivery, suppressions = item
                gate = self.deliverer.gate
                try:
                    if self.stopping.is_set() or gate.admit(delivery.id) == HOLD:
                        # Shutting down, or sending paused: back to the queue, uncounted.
                        self.store.release(delivery, time.time())
                        continue
                    self.deliverer.deliver(
                        transport, delivery, lambda d=delivery: self.leases.still_claimed(d),
                        suppressions)
                except StorageError as exc:
                    # Nothing was sent (outcomes are retried until recorded): the lease brings
                    # this delivery back once the database answers again.
                    log.warning("delivery=%d not sent, the database is unavailable: %s",
                                delivery.id, exc)
                except Exception as exc:
                    # A bug or an unforeseen answer must neither stop the other deliveries nor
                    # bring this one back forever: it is an attempt like any other failure.
                    log.exception("unexpected error delivering %d", delivery.id)
                    _close_quietly(transport)
                    transport = self.new_transport()
                    self._record_unexpected(delivery, exc)
                finally:
                    gate.finished(delivery.id)
                    if not self.deliverer.outcomes.unrecorded(delivery):
                        self.leases.drop(delivery)  # else once its outcome is written
                    self.slots.finished(idle=self.work.empty())
        finally:
            _close_quietly(transport)
            self.store.close()

    def _record_unexpected(self, delivery: Delivery, exc: Exception) -> None:
        try:
            self.deliverer.unexpected_failure(delivery, exc)
        except Exception:  # noqa: BLE001 - then the lease brings it back, as a last resort
            log.exception("delivery=%d: cannot record its unexpected error either", delivery.id)

    def _drain(self) -> None:
        for _ in self.threads:
            self.work.put(None)
        for thread in self.threads:
            thread.join()


def _close_quietly(transport) -> None:
    try:
        transport.close()
    except Exception:  # noqa: BLE001 - closing a broken connection must not raise
        pass


def watch_parent(worker: DeliveryWorker, parent_pid: int) -> None:
    """Stop when the `nudge serve` process that started us is gone (even after SIGKILL)."""

    def watch():
        while not worker.stopping.wait(0.5):
            if os.getppid() != parent_pid:
                log.warning("parent process %d is gone; stopping", parent_pid)
                worker.stop()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
