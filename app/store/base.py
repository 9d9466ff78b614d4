"""The store's interface: the domain operations Nudge needs from its database, and their types.

Nothing outside `app/store/` sees a connection, a cursor or SQL. An engine (SQLite today,
PostgreSQL next) implements `Store`; every engine passes the contract suite in
tests/test_store.py. A `Store` is shared by the threads of one process; engines keep their
connections per thread (and per process, as gunicorn forks) internally.

The guarantees every engine gives, whatever the number of processes or replicas:
- an appended notification is durable when `append_notifications` returns;
- a notification is decided once: claiming a batch excludes it from every other decider, and
  it is marked decided in the same transaction as its decisions and deliveries;
- facts handed to the policy (`DecisionBatch.facts`) stay true until the batch commits (the
  engine locks the (rule, user) pairs they are about), so the verdicts it records are sound;
- a due delivery is claimed by one sender at a time, until its lease runs out.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from app.alerts import parse_time

QUEUED, SENDING, SENT, FAILED, DEAD, SUPPRESSED = (
    "queued",
    "sending",
    "sent",
    "failed",
    "dead",
    "suppressed",
)
# Held back and never sent (app/holds.py): the alert resolved first, or it waited too long.
CANCELLED, DROPPED = "cancelled", "dropped"
STATUSES = (QUEUED, SENDING, SENT, FAILED, DEAD, SUPPRESSED, CANCELLED, DROPPED)
WAITING = (QUEUED, SENDING)


class StorageError(Exception):
    """The database cannot be opened, read or written: callers answer 503 so senders retry."""


class StorageUnavailable(StorageError):
    """The database is there but cannot take this operation now (locked, disk full, down)."""


class SchemaMismatch(StorageError):
    """The database's schema is not the one this version of Nudge expects."""


@dataclass(frozen=True)
class JournalEntry:
    """One Alertmanager notification as received: what the decider needs to decide it later."""

    received_at: float
    receiver: str
    status: str
    group_key: str
    alert_count: int
    truncated_alerts: int
    body: str | bytes  # the body as received; bytes must be UTF-8 (the webhook checks)


@dataclass(frozen=True)
class PendingNotification:
    id: int
    received_at: float
    body: str


@dataclass(frozen=True)
class JournalStats:
    pending: int  # notifications accepted and not yet decided
    pending_alerts: int
    oldest_age: float  # seconds since the oldest pending one was accepted
    decided: int


@dataclass
class Facts:
    """What the policy needs to know about the database to judge a batch of candidates.

    `deliveries` maps a dedup key to the delivery that holds it; `last_queued` maps
    (rule, user) to when its last email was queued (for the cooldown). The decider updates
    both as it queues, so later alerts of the same batch see earlier ones."""

    deliveries: dict[str, int] = field(default_factory=dict)
    last_queued: dict[tuple[str, str], float] = field(default_factory=dict)


@dataclass(frozen=True)
class NewDelivery:
    dedup_key: str
    notification_id: int
    rule: str
    user_id: str
    template: str
    kind: str
    starts_at: str
    alert_json: str
    external_url: str
    cooldown: float | None  # when set (firing emails), the (rule, user) cooldown slot is taken


@dataclass(frozen=True)
class DecisionRecord:
    notification_id: int
    rule: str
    user_id: str
    alert_status: str
    starts_at: str
    fingerprint: str
    outcome: str
    reason: str
    detail: str
    delivery_id: int | None


class DecisionBatch(ABC):
    """A claimed batch of undecided notifications, inside one transaction.

    Everything recorded commits together with the notifications being marked decided when
    the `deciding()` block exits normally; an exception rolls all of it back."""

    claimed: set[int]

    @abstractmethod
    def facts(self, dedup_keys: Iterable[str], pairs: Iterable[tuple[str, str]]) -> Facts:
        """The deliveries holding these keys and the cooldowns of these (rule, user) pairs."""

    @abstractmethod
    def add_delivery(self, delivery: NewDelivery, now: float) -> int:
        """Queue a new delivery (and take its cooldown slot); returns its id."""

    @abstractmethod
    def add_decisions(self, decisions: Sequence[DecisionRecord], now: float) -> None: ...

    @abstractmethod
    def cancel_resolved(self, firing_keys: Sequence[str], now: float
                        ) -> dict[str, tuple[int, str]]:
        """These firing emails' alerts resolved: cancel each one still queued (or held); mark
        one being sent so its send step cancels it. Returns key -> (delivery id, its status
        before) for every key that has a delivery."""


@dataclass(frozen=True)
class Delivery:
    id: int
    rule: str
    user_id: str
    template: str
    kind: str
    status: str
    attempts: int
    alert: dict[str, Any]
    external_url: str
    created_at: str  # when queued, or requeued by `nudge retry`: the max_age clock starts here
    attempt_id: int | None = None  # identifies this claim: its row in the attempt log
    lease_until: float | None = None  # when the claim expires unless renewed
    held_seconds: float = 0.0  # held back so far (quiet hours, the cap): not part of its age
    resolved: bool = False  # its alert resolved while it was being sent or had failed
    # The user's (suppression scopes, suppressed categories), when the claim read them too.
    suppressions: tuple[set[str], set[str]] | None = field(default=None, hash=False,
                                                          compare=False)

    @property
    def created_epoch(self) -> float:
        return parse_time(self.created_at).timestamp()


@dataclass(frozen=True)
class Outcome:
    """How one claimed delivery's attempt ended, to be recorded (Store.settle_many)."""

    delivery: Delivery
    status: str
    recipient: str | None = None
    error: str | None = None
    retry_at: float | None = None


@dataclass(frozen=True)
class WaitingRow:
    """Another email of the same user that has not gone out yet (queued, held or sending)."""

    id: int
    rule: str
    annotations: dict[str, str]
    created_at: float
    due_at: float


@dataclass(frozen=True)
class GateFacts:
    """What the hold policy judges a claimed delivery by, read under the user's lock."""

    current: bool  # False: the claim was taken over; do nothing with it
    recent_sends: list[float] = field(default_factory=list)  # this user's counted sends
    waiting: list[WaitingRow] = field(default_factory=list)
    resolved: bool = False  # its alert resolved while it waited
    waited: float = 0.0  # seconds held back so far, this hold included
    hold_reason: str | None = None  # of the current hold
    note: str | None = None  # the last hold/release sentence
    held: bool = False  # comes back from a hold


class SendGate(ABC):
    """A claimed delivery judged under its user's lock: exactly one of these is called."""

    facts: GateFacts

    @abstractmethod
    def send(self, counted: bool, reason: str, detail: str) -> None:
        """It goes out now: take a send slot when it counts toward the cap (given back by
        `settle` unless the send succeeds), and close its hold if it was held."""

    @abstractmethod
    def hold(self, until: float, reason: str, detail: str) -> None:
        """Back to the queue until `until`; not an attempt (the claim's attempt row goes)."""

    @abstractmethod
    def finish(self, status: str, reason: str, detail: str) -> None:
        """Never sent: CANCELLED or DROPPED, with why."""


@dataclass(frozen=True)
class QueueStats:
    depth: int
    oldest_age: float


@dataclass(frozen=True)
class RetrySelection:
    """Which failed or dead deliveries `nudge retry` puts back in the queue: every filter
    given must match (`since`/`until`: when the delivery failed or went dead, epoch seconds)."""

    ids: tuple[int, ...] = ()
    rule: str | None = None
    user: str | None = None
    statuses: tuple[str, ...] = (FAILED, DEAD)
    since: float | None = None
    until: float | None = None


@dataclass
class PruneCounts:
    """What pruning removed (or, in a dry run, would remove)."""

    raw_bodies: int = 0  # notifications' bodies as received (the row goes too when nothing needs it)
    decisions: int = 0
    attempts: int = 0
    hold_events: int = 0  # the hold log: held, released, dropped, cancelled
    cap_entries: int = 0  # sends the frequency cap counted (send_slots)
    deliveries: int = 0  # reduced to what dedup needs (key, rule, user, status, times)
    journal_files: int = 0
    journal_bytes: int = 0

    def add(self, other: PruneCounts) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def rows(self) -> int:
        return (self.raw_bodies + self.decisions + self.attempts + self.hold_events
                + self.cap_entries + self.deliveries)


class ChangeWatcher(ABC):
    """Wakes a waiting thread when another connection commits (new notifications, deliveries)."""

    # None: the decider waiting on this watcher decides notifications as they arrive. Seconds:
    # another process (a replica) does that, and this one only helps with a backlog, the
    # notifications that have waited at least this long (PostgreSQL's followers).
    backlog_age: float | None = None

    @abstractmethod
    def wait(self, timeout: float, interrupt: threading.Event | None = None) -> bool:
        """Block until a commit elsewhere, `interrupt` is set, or `timeout`; True on a change."""

    @abstractmethod
    def close(self) -> None: ...


class Store(ABC):
    """Nudge's state: the journal of notifications, decisions, the delivery queue, attempts,
    cooldowns and suppressions."""

    description: str  # where the data lives, safe to log (no password)

    # -- lifecycle -------------------------------------------------------------------------
    @abstractmethod
    def migrate(self) -> int:
        """Create or upgrade the schema, exactly once however many processes call it."""

    @abstractmethod
    def check_ready(self) -> None:
        """Raise StorageError (SchemaMismatch for an old or newer schema) unless usable."""

    @abstractmethod
    def close(self) -> None:
        """Close the calling thread's connection (others close when their threads end)."""

    def close_all(self) -> None:
        """Close every connection this process holds (at exit, or when done with the store)."""
        self.close()

    # -- journal ---------------------------------------------------------------------------
    @abstractmethod
    def append_notifications(self, entries: Sequence[JournalEntry]) -> list[int]:
        """Append in one durable commit; returns their ids, in order."""

    @abstractmethod
    def pending_notifications(self, max_notifications: int, max_alerts: int,
                              received_before: float | None = None
                              ) -> list[PendingNotification]:
        """The oldest undecided notifications, read without locking anything: the decider
        parses them and runs the pure policy before it takes any lock (`deciding`). With
        `received_before` (time.time()), only those received before it."""

    @abstractmethod
    def deciding(self, notification_ids: Sequence[int]
                 ) -> AbstractContextManager[DecisionBatch]:
        """Open the transaction that decides these notifications. `batch.claimed` holds those
        still undecided and not being decided by anyone else: decide only those."""

    @abstractmethod
    def journal_stats(self, now: float) -> JournalStats: ...

    @abstractmethod
    def watch(self) -> ChangeWatcher: ...

    def watch_journal(self) -> ChangeWatcher:
        """The decider's watcher. An engine shared by several deciders may wake only one of
        them per append while it keeps up (bigger batches, less CPU per alert); the others
        look now and then, and take over when it goes away."""
        return self.watch()

    def watch_queue(self) -> ChangeWatcher:
        """The dispatcher's watcher: wakes when deliveries are queued, settled or released
        elsewhere (an engine may leave out journal appends, which only the decider needs)."""
        return self.watch()

    # -- delivery queue --------------------------------------------------------------------
    @abstractmethod
    def claim_due(self, now: float, lease: float, limit: int = 1) -> list[Delivery]:
        """Claim up to `limit` due deliveries, or ones whose previous claim's lease expired;
        each claim opens an attempt row."""

    def settle(self, delivery: Delivery, status: str, now: float, *, recipient: str | None = None,
               error: str | None = None, retry_at: float | None = None) -> bool:
        """Record how this attempt ended. False when the lease ran out and a newer claim owns
        the delivery (the outcome is then only in the attempt log)."""
        return self.settle_many([Outcome(delivery, status, recipient, error, retry_at)], now)[0]

    @abstractmethod
    def settle_many(self, outcomes: Sequence[Outcome], now: float) -> list[bool]:
        """Record several attempts' outcomes in one transaction (one commit for many sends);
        for each, whether its claim was still current, as `settle` says."""

    @abstractmethod
    def release(self, delivery: Delivery, now: float, retry_at: float | None = None) -> None:
        """Give back a claimed delivery untouched, its attempt not counted (shutting down
        before sending it, or sending paused); with `retry_at`, not due before then."""

    @abstractmethod
    def renew_leases(self, deliveries: Sequence[Delivery], until: float) -> set[int]:
        """Extend the leases of these claims; returns the ids whose claim is still current."""

    @abstractmethod
    def next_due_at(self) -> float | None:
        """When the next delivery becomes due (a retry, or an expiring lease); None when idle."""

    @abstractmethod
    def queue_stats(self, now: float) -> QueueStats: ...

    @abstractmethod
    def list_deliveries(self, *, user: str | None = None, rule: str | None = None,
                        status: str | None = None, limit: int | None = None
                        ) -> list[dict[str, Any]]: ...

    @abstractmethod
    def list_decisions(self, *, user: str | None = None, rule: str | None = None,
                       limit: int | None = None) -> list[dict[str, Any]]: ...

    @abstractmethod
    def list_attempts(self, delivery_id: int) -> list[dict[str, Any]]: ...

    # -- requeue (`nudge retry`) -----------------------------------------------------------
    @abstractmethod
    def retryable(self, selection: RetrySelection, limit: int | None = None
                  ) -> list[dict[str, Any]]:
        """Failed or dead deliveries matching `selection`, oldest first, as listed by
        `list_deliveries` (deliveries already pruned to their dedup key are not retryable)."""

    @abstractmethod
    def requeue(self, delivery_ids: Sequence[int], now: float, reason: str) -> list[int]:
        """Put these deliveries back in the queue, due now, with a fresh attempt budget and a
        fresh max_age clock, and a row in their attempt log saying `reason`. Only those still
        failed or dead are requeued (never one being sent): returns their ids. Dedup keys and
        cooldowns are untouched, so Alertmanager's repeats stay duplicates."""

    # -- retention -------------------------------------------------------------------------
    @abstractmethod
    def prunable(self, before: float) -> PruneCounts:
        """What `prune_batch` calls would remove for this cutoff (a dry run)."""

    @abstractmethod
    def prune_batch(self, before: float, limit: int) -> PruneCounts:
        """Remove up to `limit` rows of each kind older than `before`, in one short
        transaction: decisions and attempts; raw bodies of decided notifications (a
        notification a delivery refers to keeps its row, without its body); and settled
        deliveries other than each (rule, user)'s latest, which keep only what dedup needs.
        Cooldowns, suppressions, dedup keys and anything waiting are never touched. All
        zeros when nothing is left to prune."""

    @abstractmethod
    def prune_journal_files(self, *, dry_run: bool = False) -> PruneCounts:
        """Delete journal files whose every record is decided (moved into the database) and
        that will never be appended to again (engines without journal files: nothing)."""

    @abstractmethod
    def list_delivery_events(self, delivery_id: int) -> list[dict[str, Any]]:
        """Holds, releases, drops and cancellations of a delivery, oldest first."""

    @abstractmethod
    def send_gate(self, delivery: Delivery, now: float, period: float
                  ) -> AbstractContextManager[SendGate]:
        """Lock the delivery's user, read the facts the hold policy needs (sends in the last
        `period`, the user's other waiting emails, whether its alert resolved) and let the
        caller record one verdict, all in one transaction."""

    def fleet_rate_limiter(self, per_second: float) -> RateReservation | None:
        """A send rate shared by every process on this database, or None when the engine has
        no fleet (SQLite: all senders of a host share one process's limiter)."""
        return None

    # -- suppressions ----------------------------------------------------------------------
    @abstractmethod
    def suppression_scopes(self, user_id: str) -> set[str]: ...

    @abstractmethod
    def add_suppression(self, user_id: str, scope: str, source: str, now: float) -> bool:
        """True when this is new; unsubscribing twice is harmless."""

    @abstractmethod
    def remove_suppression(self, user_id: str, scope: str) -> bool: ...

    @abstractmethod
    def list_suppressions(self, user_id: str | None = None) -> list[dict[str, Any]]: ...

    # A category groups rules for unsubscribing (app/categories.py); stopping one stops every
    # rule in it, whatever suppressions by rule or "all" say.
    @abstractmethod
    def suppressed_categories(self, user_id: str) -> set[str]: ...

    @abstractmethod
    def user_suppressions(self, user_id: str) -> tuple[set[str], set[str]]:
        """(`suppression_scopes`, `suppressed_categories`) in one query: the send path asks
        once per email."""

    @abstractmethod
    def users_suppressions(self, user_ids: Iterable[str]) -> dict[str, tuple[set[str], set[str]]]:
        """`user_suppressions` of several users in one query (the worker asks once per batch
        of claims); every user asked for is a key."""

    @abstractmethod
    def add_category_suppression(self, user_id: str, category: str, source: str,
                                 now: float) -> bool:
        """True when this is new; stopping a category twice is harmless."""

    @abstractmethod
    def remove_category_suppression(self, user_id: str, category: str) -> bool: ...

    @abstractmethod
    def list_category_suppressions(self, user_id: str | None = None) -> list[dict[str, Any]]: ...

    @abstractmethod
    def latest_annotations_by_rule(self, user_id: str) -> dict[str, dict[str, str]]:
        """For each rule that has a delivery to this user, the annotations of its latest one:
        the categories and titles of what this user was sent (or is about to be)."""

    # -- moving an installation ------------------------------------------------------------
    @abstractmethod
    def export_rows(self) -> Iterator[tuple[str, list[str], list[tuple]]]:
        """Every stored row, as (table, columns, rows) chunks, parents before children."""

    @abstractmethod
    def import_rows(self, chunks: Iterable[tuple[str, list[str], list[tuple]]]) -> dict[str, int]:
        """Load `export_rows` output into this empty database in one transaction; returns rows
        per table. StorageError when the database already holds data."""


class RateReservation(ABC):
    @abstractmethod
    def acquire(self) -> None:
        """Block until this process may send one more message."""


# Tables in the order rows are copied between engines (parents first), with their columns.
TABLES: dict[str, list[str]] = {
    "notifications": ["id", "received_at", "receiver", "status", "group_key", "alert_count",
                      "truncated_alerts", "body", "decided_at"],
    "deliveries": ["id", "dedup_key", "notification_id", "rule", "user_id", "template", "kind",
                   "status", "starts_at", "alert", "external_url", "recipient", "attempts",
                   "next_attempt_at", "lease_until", "last_error", "created_at", "updated_at",
                   "sent_at", "claim", "requeued_at", "pruned_at", "held_since",
                   "held_seconds", "hold_reason", "note", "resolved_at"],
    "decisions": ["id", "notification_id", "created_at", "rule", "user_id", "alert_status",
                  "starts_at", "fingerprint", "outcome", "reason", "detail", "delivery_id"],
    "cooldowns": ["rule", "user_id", "last_queued_at"],
    "attempts": ["id", "delivery_id", "attempt", "started_at", "finished_at", "outcome",
                 "recipient", "error"],
    "suppressions": ["user_id", "scope", "source", "created_at"],
    "category_suppressions": ["user_id", "category", "source", "created_at"],
    "send_slots": ["delivery_id", "user_id", "sent_at"],
    "delivery_events": ["id", "delivery_id", "created_at", "event", "reason", "detail"],
}


# What no engine can store in a text column: NUL (PostgreSQL refuses it) and unpaired
# surrogates (no UTF-8 for them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str | None) -> str | None:
    """`text` (an error copied from a relay's reply or an exception) with what no database can
    store replaced by U+FFFD, so that recording an outcome never fails on its wording."""
    return None if text is None else _UNSTORABLE.sub("\ufffd", text)


def requeue_note(reason: str, status: str, attempts: int, last_error: str | None) -> str:
    """The attempt log's line for a requeue: why, and what the delivery had been."""
    plural = "" if attempts == 1 else "s"
    return f"{reason}; was {status} after {attempts} attempt{plural}" + (
        f": {last_error}" if last_error else "")


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
