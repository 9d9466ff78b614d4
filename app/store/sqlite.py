"""The SQLite engine: one database file in WAL mode, shared by every Nudge process on a host.

Every write is a BEGIN IMMEDIATE transaction, committed with synchronous=FULL (a commit
survives a power cut). Correctness does not rest on SQLite admitting one writer at a time:
claims and settles are conditional updates, dedup is a UNIQUE key, the cooldown is a
conditional upsert, and a decider re-checks under the transaction which notifications are
still undecided. The writer lock (below) only orders writers for fairness.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.alerts import parse_time
from app.clock import iso
from app.store import journal_files, send_gates, wakeups
from app.store.base import (
    DEAD,
    FAILED,
    QUEUED,
    SENT,
    TABLES,
    ChangeWatcher,
    DecisionBatch,
    DecisionRecord,
    Delivery,
    Facts,
    JournalEntry,
    JournalStats,
    NewDelivery,
    Outcome,
    PendingNotification,
    PruneCounts,
    QueueStats,
    SchemaMismatch,
    SendGate,
    StorageError,
    StorageUnavailable,
    Store,
    chunks,
    requeue_note,
    storable_text,
)
from app.store.listings import Listings
from app.store.wakeups import Listener, WakeupBoard

BUSY_TIMEOUT_MS = 10_000
# SQLite allows 999 host parameters per statement in old builds: stay under it.
MAX_PARAMS = 900

MIGRATIONS: list[str] = [
    # 1: notifications, decisions, deliveries, cooldowns, attempts, suppressions
    """
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY,
        received_at TEXT NOT NULL,
        receiver TEXT NOT NULL,
        status TEXT NOT NULL,
        group_key TEXT NOT NULL,
        alert_count INTEGER NOT NULL,
        truncated_alerts INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        dedup_key TEXT NOT NULL UNIQUE,
        notification_id INTEGER NOT NULL REFERENCES notifications(id),
        rule TEXT NOT NULL,
        user_id TEXT NOT NULL,
        template TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        starts_at TEXT NOT NULL,
        alert TEXT NOT NULL,
        external_url TEXT NOT NULL,
        recipient TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_until REAL,
        last_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        sent_at TEXT
    );
    CREATE INDEX deliveries_due ON deliveries(status, next_attempt_at);
    CREATE INDEX deliveries_user ON deliveries(user_id, rule);
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        notification_id INTEGER NOT NULL REFERENCES notifications(id),
        created_at TEXT NOT NULL,
        rule TEXT NOT NULL,
        user_id TEXT NOT NULL,
        alert_status TEXT NOT NULL,
        starts_at TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        delivery_id INTEGER REFERENCES deliveries(id)
    );
    CREATE INDEX decisions_user ON decisions(user_id, rule);
    CREATE TABLE cooldowns (
        rule TEXT NOT NULL,
        user_id TEXT NOT NULL,
        last_queued_at REAL NOT NULL,
        PRIMARY KEY (rule, user_id)
    );
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
        attempt INTEGER NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        outcome TEXT NOT NULL,
        recipient TEXT,
        error TEXT
    );
    CREATE INDEX attempts_delivery ON attempts(delivery_id);
    CREATE TABLE suppressions (
        user_id TEXT NOT NULL,
        scope TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (user_id, scope)
    );
    """,
    # 2: the journal. Notifications are decided after the webhook's 200, by the decider;
    # everything stored before this version was decided inside the request.
    """
    ALTER TABLE notifications ADD COLUMN decided_at TEXT;
    UPDATE notifications SET decided_at = received_at;
    CREATE INDEX notifications_pending ON notifications(id) WHERE decided_at IS NULL;
    CREATE INDEX decisions_notification ON decisions(notification_id);
    """,
    # 3: a claim is identified by its attempt row (its lease can be renewed while sending).
    """
    ALTER TABLE deliveries ADD COLUMN claim INTEGER;
    UPDATE deliveries SET claim = (SELECT MAX(id) FROM attempts WHERE delivery_id = deliveries.id)
        WHERE status = 'sending';
    """,
    # 4: receivers append to journal files (journal_files.py); the decider moves what it
    # decides into `notifications` and records how far it read each file.
    """
    CREATE TABLE journal_offsets (file TEXT PRIMARY KEY, offset INTEGER NOT NULL);
    CREATE TABLE journal_ids (next INTEGER NOT NULL);
    INSERT INTO journal_ids (next) SELECT COALESCE(MAX(id), 0) + 1 FROM notifications;
    """,
    # requeue (`nudge retry`) restarts a delivery's max_age clock; retention prunes old rows
    # in small batches (the indexes find the oldest without scanning) and reduces old
    # deliveries to their dedup key.
    """
    ALTER TABLE deliveries ADD COLUMN requeued_at TEXT;
    ALTER TABLE deliveries ADD COLUMN pruned_at TEXT;
    CREATE INDEX deliveries_notification ON deliveries(notification_id);
    CREATE INDEX deliveries_prunable ON deliveries(updated_at) WHERE pruned_at IS NULL;
    CREATE INDEX decisions_created ON decisions(created_at);
    CREATE INDEX attempts_finished ON attempts(finished_at);
    CREATE INDEX notifications_with_body ON notifications(decided_at) WHERE body <> '';
    """,
    # Suppressions by category (a rule's `nudge_category`), beside those by rule and "all".
    """
    CREATE TABLE category_suppressions (
        user_id TEXT NOT NULL,
        category TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (user_id, category)
    );
    """,
    # Holding emails back (app/holds.py): how long each waited and why, the sends that
    # count toward the frequency cap, and every hold, release, drop and cancellation.
    """
    ALTER TABLE deliveries ADD COLUMN held_since REAL;
    ALTER TABLE deliveries ADD COLUMN held_seconds REAL NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN hold_reason TEXT;
    ALTER TABLE deliveries ADD COLUMN note TEXT;
    ALTER TABLE deliveries ADD COLUMN resolved_at REAL;
    CREATE INDEX deliveries_user_status ON deliveries(user_id, status);
    CREATE TABLE send_slots (
        delivery_id INTEGER PRIMARY KEY REFERENCES deliveries(id),
        user_id TEXT NOT NULL,
        sent_at REAL NOT NULL
    );
    CREATE INDEX send_slots_user ON send_slots(user_id, sent_at);
    CREATE TABLE delivery_events (
        id INTEGER PRIMARY KEY,
        delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
        created_at TEXT NOT NULL,
        event TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX delivery_events_delivery ON delivery_events(delivery_id);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class WriterLock:
    """Writers take turns on an OS lock (flock on `<database>-writer.lock`) before BEGIN IMMEDIATE.

    SQLite's own busy handler polls: a writer that finds the database locked sleeps 1, 2, 5,
    ... up to 100 ms between tries, so under load writers lose most of their time asleep while
    the lock is free, and a steady stream of ingest transactions starves the delivery worker.
    Blocked in flock, a waiting writer is woken by the kernel the moment the lock is released.
    SQLite's locking still guards the data and nothing relies on this lock for correctness;
    it only orders the writers. If the lock file cannot be opened, SQLite's locking alone is
    used. One lock per connection (flock locks belong to an open file), reopened after fork.
    """

    def __init__(self, database: Path):
        self.path = Path(f"{database}-writer.lock")
        self._fd: int | None = None
        self._pid = 0

    def _descriptor(self) -> int | None:
        if self._fd is None or self._pid != os.getpid():
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._pid = os.getpid()
            except OSError:
                self._fd = None
        return self._fd

    def acquire(self) -> bool:
        fd = self._descriptor()
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return True
        except OSError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and self._pid == os.getpid():
            os.close(fd)


class _Connection:
    """One sqlite3 connection and its writer lock, owned by one thread of one process."""

    def __init__(self, path: Path):
        try:
            self.conn = sqlite3.connect(
                str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                check_same_thread=False,
            )
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # FULL: a 200 to Alertmanager means the alert survives a power cut, not just a crash.
            self.conn.execute("PRAGMA synchronous = FULL")
            self.conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {path}: {exc}") from exc
        self.lock = WriterLock(path)
        self.pid = os.getpid()

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            self.lock.close()


def _storage_error(what: str, exc: sqlite3.Error) -> StorageError:
    if isinstance(exc, sqlite3.OperationalError):
        return StorageUnavailable(f"{what}: {exc}")
    return StorageError(f"{what}: {exc}")


class SQLiteStore(Listings, Store):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.description = f"SQLite {self.path}"
        self._local = threading.local()
        # Not "<database>-journal": SQLite itself uses that name for its rollback journal.
        self.journal_folder = Path(f"{self.path}-incoming")
        self._journal_writer = journal_files.JournalWriter(self.journal_folder, self._reserve_ids)
        self.wakeups = WakeupBoard(Path(f"{self.path}-wakeups"))
        # Journal records handed to a decider by pending_notifications, by id.
        self._positions: dict[int, journal_files.Record | None] = {}

    # -- connections and transactions ------------------------------------------------------
    def _connection(self) -> _Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None or connection.pid != os.getpid():
            connection = _Connection(self.path)
            self._local.connection = connection
        return connection

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None and connection.pid == os.getpid():
            connection.close()

    @contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        try:
            yield self._connection().conn
        except sqlite3.Error as exc:
            raise _storage_error(what, exc) from exc

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: takes the write lock up front, so every read in it is race-free."""
        connection = self._connection()
        conn = connection.conn
        locked = connection.lock.acquire()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise _storage_error(what, exc) from exc
        finally:
            if locked:
                connection.lock.release()

    # -- lifecycle -------------------------------------------------------------------------
    def migrate(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create folder for database {self.path}: {exc}") from exc
        connection = _Connection(self.path)
        conn = connection.conn
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise SchemaMismatch(
                        f"database {self.path} has schema {version}, newer than this Nudge "
                        f"({SCHEMA_VERSION}): upgrade Nudge")
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in script.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return SCHEMA_VERSION
        except sqlite3.Error as exc:
            raise StorageError(f"cannot prepare database {self.path}: {exc}") from exc
        finally:
            connection.close()

    def check_ready(self) -> None:
        with self._read("database unreachable") as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise SchemaMismatch(f"database schema {version}, expected {SCHEMA_VERSION}")

    # -- journal ---------------------------------------------------------------------------
    def append_notifications(self, entries: Sequence[JournalEntry]) -> list[int]:
        # To this process's journal file: no SQLite write lock on the receiver's path.
        metas = [{"received_at": e.received_at, "receiver": e.receiver, "status": e.status,
                  "group_key": e.group_key, "alert_count": e.alert_count,
                  "truncated_alerts": e.truncated_alerts} for e in entries]
        try:
            ids = self._journal_writer.append(metas, [e.body for e in entries])
        except OSError as exc:
            raise StorageUnavailable(f"could not store notification in the journal "
                                     f"{self.journal_folder}: {exc.strerror or exc}") from exc
        self.wakeups.notify(wakeups.JOURNAL)
        return ids

    def _reserve_ids(self, count: int) -> int:
        with self._write("cannot reserve notification ids") as conn:
            (first,) = conn.execute("UPDATE journal_ids SET next = next + ? RETURNING next - ?",
                                    (count, count)).fetchone()
        return first

    def _offsets(self, conn: sqlite3.Connection) -> dict[str, int]:
        return dict(conn.execute("SELECT file, offset FROM journal_offsets"))

    def _journal_heads(self, offsets: dict[str, int], limit: int, max_alerts: int
                       ) -> list[list[journal_files.Record]]:
        return [list(journal_files.read_records(self.journal_folder / name,
                                                offsets.get(name, 0), limit, max_alerts))
                for name in journal_files.journal_names(self.journal_folder)]

    def pending_notifications(self, max_notifications: int, max_alerts: int,
                              received_before: float | None = None
                              ) -> list[PendingNotification]:
        with self._read("cannot read the journal") as conn:
            offsets = self._offsets(conn)
            # Notifications copied in by `nudge copy-database` wait in the table itself.
            table = [(parse_time(r).timestamp(), i, c, b) for i, r, c, b in conn.execute(
                "SELECT id, received_at, alert_count, body FROM notifications "
                "WHERE decided_at IS NULL ORDER BY id LIMIT ?", (max_notifications,))]
        try:
            files = self._journal_heads(offsets, max_notifications, max_alerts)
        except (OSError, ValueError) as exc:
            raise StorageUnavailable(f"cannot read the journal {self.journal_folder}: {exc}"
                                     ) from exc
        # Oldest first across files, but always a prefix of each file: a file's checkpoint
        # can only move past records that were decided.
        chosen: list[PendingNotification] = []
        alerts = 0
        heads = [(records[0].received_at, n, 0) for n, records in enumerate(files) if records]
        table_next = 0
        while len(chosen) < max_notifications:
            candidates = list(heads)
            if table_next < len(table):
                candidates.append((table[table_next][0], -1, table_next))
            if not candidates:
                break
            received_at, source, position = min(candidates)
            if received_before is not None and received_at >= received_before:
                break  # the oldest left is too new: so is every other
            if source == -1:
                _, notification_id, count, body = table[position]
                record = None
                table_next += 1
            else:
                record = files[source][position]
                notification_id, count, body = record.id, record.alert_count, record.body
                heads.remove((received_at, source, position))
                if position + 1 < len(files[source]):
                    following = files[source][position + 1]
                    heads.append((following.received_at, source, position + 1))
            if chosen and alerts + count > max_alerts:
                break
            alerts += count
            self._positions[notification_id] = record
            chosen.append(PendingNotification(notification_id, received_at, body))
        return chosen

    @contextmanager
    def deciding(self, notification_ids: Sequence[int]) -> Iterator[DecisionBatch]:
        wanted = list(notification_ids)
        if any(i not in self._positions for i in wanted):
            self._locate(wanted)
        records = {i: self._positions.get(i) for i in wanted}
        with self._write("could not record decisions") as conn:
            done: set[int] = set()
            undecided_in_table: set[int] = set()
            for part in chunks(wanted, MAX_PARAMS):
                marks = ",".join("?" * len(part))
                for notification_id, decided_at in conn.execute(
                        f"SELECT id, decided_at FROM notifications WHERE id IN ({marks})", part):
                    (undecided_in_table if decided_at is None else done).add(notification_id)
            claimed = {i for i in wanted if i not in done
                       and (i in undecided_in_table or records.get(i) is not None)}
            # Into the table first: decisions and deliveries refer to them.
            conn.executemany(
                "INSERT INTO notifications (id, received_at, receiver, status, group_key, "
                "alert_count, truncated_alerts, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.id, iso(r.received_at), r.receiver, r.status, r.group_key, r.alert_count,
                  r.truncated_alerts, r.body) for i, r in records.items()
                 if i in claimed and i not in undecided_in_table and r is not None])
            batch = _SQLiteDecisionBatch(conn, claimed)
            yield batch
            batch.flush()
            conn.executemany("UPDATE notifications SET decided_at = ? WHERE id = ?",
                             [(iso(), i) for i in sorted(claimed)])
            # Every record handed over moves its file's checkpoint, including ones another
            # decider decided first.
            ends: dict[str, int] = {}
            for record in records.values():
                if record is not None:
                    ends[record.file] = max(ends.get(record.file, 0), record.end)
            conn.executemany(
                "INSERT INTO journal_offsets (file, offset) VALUES (?, ?) ON CONFLICT (file) "
                "DO UPDATE SET offset = MAX(offset, excluded.offset)", list(ends.items()))
        if batch.queued:
            self.wakeups.notify(wakeups.QUEUE)
        for notification_id in wanted:
            self._positions.pop(notification_id, None)
        if ends:
            self._remove_consumed_files()

    def _locate(self, notification_ids: Sequence[int]) -> None:
        """Find records the caller did not get from `pending_notifications` (tests, tools)."""
        wanted = set(notification_ids)
        with self._read("cannot read the journal") as conn:
            offsets = self._offsets(conn)
        for records in self._journal_heads(offsets, 10**9, 10**12):
            for record in records:
                if record.id in wanted:
                    self._positions[record.id] = record

    def _remove_consumed_files(self) -> None:
        """Delete journal files that are fully decided and will never grow again."""
        try:
            self.prune_journal_files()
        except StorageError:
            return

    def prune_journal_files(self, *, dry_run: bool = False) -> PruneCounts:
        counts = PruneCounts()
        names = journal_files.journal_names(self.journal_folder)
        with self._read("cannot read the journal") as conn:
            offsets = self._offsets(conn)
        writers = {}
        for name in names:
            pid, start, seq = name.split(".")[0].split("-")
            writers[(pid, start)] = max(writers.get((pid, start), -1), int(seq))
        for name in names:
            pid, start, seq = name.split(".")[0].split("-")
            path = self.journal_folder / name
            finished = int(seq) < writers[(pid, start)] or not journal_files.writer_alive(name)
            # A finished file with no whole record after its checkpoint is done (anything
            # after it is zeros, or a record cut short that was never acknowledged).
            if not finished or journal_files.scan(path, offsets.get(name, 0))[0]:
                continue
            try:
                size = path.stat().st_size
                if not dry_run:
                    path.unlink()
            except OSError:
                continue
            counts.journal_files += 1
            counts.journal_bytes += size
            if dry_run:
                continue
            try:
                with self._write("cannot clean the journal") as conn:
                    conn.execute("DELETE FROM journal_offsets WHERE file = ?", (name,))
            except StorageError:
                pass
        return counts

    def journal_stats(self, now: float) -> JournalStats:
        with self._read("cannot read the journal") as conn:
            offsets = self._offsets(conn)
            pending, alerts, oldest = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(alert_count), 0), MIN(received_at) "
                "FROM notifications WHERE decided_at IS NULL").fetchone()
            (decided,) = conn.execute(
                "SELECT COUNT(*) FROM notifications WHERE decided_at IS NOT NULL").fetchone()
        oldest_at = parse_time(oldest).timestamp() if oldest else None
        for name in journal_files.journal_names(self.journal_folder):
            records, file_alerts, file_oldest, _ = journal_files.scan(
                self.journal_folder / name, offsets.get(name, 0))
            pending += records
            alerts += file_alerts
            if file_oldest is not None:
                oldest_at = file_oldest if oldest_at is None else min(oldest_at, file_oldest)
        age = max(0.0, now - oldest_at) if oldest_at is not None else 0.0
        return JournalStats(pending, alerts, age, decided)

    def watch(self) -> ChangeWatcher:
        return _DataVersionWatcher(self.path, self.journal_folder,
                                   self.wakeups.listen(wakeups.JOURNAL))

    def watch_journal(self) -> ChangeWatcher:
        # Receivers append to the journal files without a commit, so the decider needs only
        # those: the senders' claims and outcomes change data_version many times a second and
        # would wake it for nothing. (What `nudge copy-database` leaves in the table is found
        # by the decider's look after each idle wait.)
        return _DataVersionWatcher(self.path, self.journal_folder,
                                   self.wakeups.listen(wakeups.JOURNAL), commits=False)

    def watch_queue(self) -> ChangeWatcher:
        # Deliveries change by commits only: no need to look at the journal files.
        return _DataVersionWatcher(self.path, None, self.wakeups.listen(wakeups.QUEUE))

    # -- delivery queue --------------------------------------------------------------------
    def claim_due(self, now: float, lease: float, limit: int = 1) -> list[Delivery]:
        # The conditions in the UPDATE's subqueries are its claim: a row is taken only while it
        # is queued and due, or its previous claim's lease has run out.
        with self._write("cannot claim deliveries") as conn:
            rows = conn.execute(
                # Two index range scans (status, next_attempt_at), each stopping at `limit`: an
                # OR over both made SQLite sort every due row under the write lock.
                "UPDATE deliveries SET status = 'sending', lease_until = ?, "
                "attempts = attempts + 1, updated_at = ? WHERE id IN (SELECT id FROM ("
                "SELECT id, next_attempt_at FROM (SELECT id, next_attempt_at FROM deliveries "
                "WHERE status = 'queued' AND next_attempt_at <= ? ORDER BY next_attempt_at "
                "LIMIT ?) UNION ALL SELECT id, next_attempt_at FROM (SELECT id, next_attempt_at "
                "FROM deliveries WHERE status = 'sending' AND lease_until <= ? "
                "ORDER BY next_attempt_at LIMIT ?)) ORDER BY next_attempt_at LIMIT ?) "
                "RETURNING id, rule, user_id, template, kind, status, attempts, alert, "
                "external_url, COALESCE(requeued_at, created_at), resolved_at IS NOT NULL",
                (now + lease, iso(now), now, limit, now, limit, limit),
            ).fetchall()
            if not rows:
                return []
            ids = [row[0] for row in rows]
            # A previous claim whose lease ran out never finished: say so in its attempt row.
            conn.execute(
                f"UPDATE attempts SET outcome = 'abandoned', finished_at = ?, "
                f"error = 'worker stopped before finishing; lease expired' "
                f"WHERE delivery_id IN ({','.join('?' * len(ids))}) AND outcome = 'sending'",
                (iso(now), *ids),
            )
            claimed = []
            for row in rows:
                attempt_id = conn.execute(
                    "INSERT INTO attempts (delivery_id, attempt, started_at, outcome) "
                    "VALUES (?, ?, ?, 'sending')",
                    (row[0], row[6], iso(now)),
                ).lastrowid
                conn.execute("UPDATE deliveries SET claim = ? WHERE id = ?", (attempt_id, row[0]))
                claimed.append(Delivery(
                    id=row[0], rule=row[1], user_id=row[2], template=row[3], kind=row[4],
                    status=row[5], attempts=row[6], alert=json.loads(row[7]),
                    external_url=row[8], created_at=row[9], attempt_id=attempt_id,
                    lease_until=now + lease, resolved=bool(row[10]),
                ))
        claimed.sort(key=lambda delivery: delivery.id)
        return claimed

    def settle_many(self, outcomes: Sequence[Outcome], now: float) -> list[bool]:
        if not outcomes:
            return []
        stamp = iso(now)
        results = []
        with self._write("cannot record the outcome of a delivery") as conn:
            for outcome in outcomes:
                delivery, status = outcome.delivery, outcome.status
                recipient, error = storable_text(outcome.recipient), storable_text(outcome.error)
                attempt_outcome = "retry" if status == QUEUED else status
                # Only while this claim is still the delivery's current one.
                current = conn.execute(
                    "UPDATE deliveries SET status = ?, lease_until = NULL, claim = NULL, "
                    "updated_at = ?, recipient = COALESCE(?, recipient), last_error = ?, "
                    "next_attempt_at = COALESCE(?, next_attempt_at), "
                    "sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END "
                    "WHERE id = ? AND status = 'sending' AND claim = ?",
                    (status, stamp, recipient, error, outcome.retry_at, status, stamp,
                     delivery.id, delivery.attempt_id),
                ).rowcount
                if not current:
                    attempt_outcome = f"{attempt_outcome} (after its lease expired)"
                if status != SENT:  # a send slot taken for this attempt is given back
                    conn.execute("DELETE FROM send_slots WHERE delivery_id = ?", (delivery.id,))
                if delivery.attempt_id is not None:
                    conn.execute(
                        "UPDATE attempts SET outcome = ?, finished_at = ?, recipient = ?, "
                        "error = ? WHERE id = ?",
                        (attempt_outcome, stamp, recipient, error, delivery.attempt_id),
                    )
                results.append(bool(current))
        return results

    def release(self, delivery: Delivery, now: float, retry_at: float | None = None) -> None:
        with self._write("cannot release a delivery") as conn:
            released = conn.execute(
                "UPDATE deliveries SET status = 'queued', lease_until = NULL, claim = NULL, "
                "attempts = attempts - 1, updated_at = ?, "
                "next_attempt_at = COALESCE(?, next_attempt_at) "
                "WHERE id = ? AND status = 'sending' AND claim = ?",
                (iso(now), retry_at, delivery.id, delivery.attempt_id),
            ).rowcount
            if released:
                conn.execute("DELETE FROM attempts WHERE id = ?", (delivery.attempt_id,))
                # Not sent: a send slot it took (app/holds.py) is given back.
                conn.execute("DELETE FROM send_slots WHERE delivery_id = ?", (delivery.id,))
        if released and retry_at is None:
            self.wakeups.notify(wakeups.QUEUE)

    def renew_leases(self, deliveries: Sequence[Delivery], until: float) -> set[int]:
        if not deliveries:
            return set()
        with self._write("cannot renew leases") as conn:
            return {
                delivery.id for delivery in deliveries
                if conn.execute(
                    "UPDATE deliveries SET lease_until = ? "
                    "WHERE id = ? AND status = 'sending' AND claim = ?",
                    (until, delivery.id, delivery.attempt_id)).rowcount
            }

    def next_due_at(self) -> float | None:
        with self._read("cannot read the queue") as conn:
            return conn.execute(
                "SELECT MIN(t) FROM ("
                "SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE status = 'queued' "
                "UNION ALL SELECT MIN(lease_until) FROM deliveries WHERE status = 'sending')"
            ).fetchone()[0]

    def queue_stats(self, now: float) -> QueueStats:
        with self._read("cannot read the queue") as conn:
            # Emails held back (quiet hours, the cap) wait on purpose: not a backlog.
            depth, oldest = conn.execute(
                "SELECT COUNT(*), MIN(created_at) FROM deliveries "
                "WHERE status IN ('queued', 'sending') AND held_since IS NULL"
            ).fetchone()
        if not oldest:
            return QueueStats(depth, 0.0)
        return QueueStats(depth, max(0.0, now - parse_time(oldest).timestamp()))

    def _rows(self, sql: str, params: Iterable[Any]) -> list[dict[str, Any]]:
        with self._read("cannot read the database") as conn:
            cursor = conn.execute(sql, list(params))
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # -- requeue (`nudge retry`) -----------------------------------------------------------
    def requeue(self, delivery_ids: Sequence[int], now: float, reason: str) -> list[int]:
        requeued = []
        stamp = iso(now)
        with self._write("cannot requeue deliveries") as conn:
            for delivery_id in sorted(set(delivery_ids)):
                # Under the write lock, only while failed or dead: a delivery being sent, or
                # requeued by someone else meanwhile, is left alone.
                row = conn.execute(
                    "SELECT status, attempts, last_error FROM deliveries WHERE id = ? "
                    "AND status IN (?, ?) AND pruned_at IS NULL AND resolved_at IS NULL",
                    (delivery_id, FAILED, DEAD),
                ).fetchone()
                if row is None:
                    continue
                conn.execute(
                    "UPDATE deliveries SET status = 'queued', attempts = 0, next_attempt_at = ?, "
                    "lease_until = NULL, claim = NULL, last_error = NULL, updated_at = ?, "
                    "requeued_at = ?, held_seconds = 0, held_since = NULL WHERE id = ?",
                    (now, stamp, stamp, delivery_id))
                conn.execute(
                    "INSERT INTO attempts (delivery_id, attempt, started_at, finished_at, outcome, "
                    "error) VALUES (?, 0, ?, ?, 'requeued', ?)",
                    (delivery_id, stamp, stamp, requeue_note(reason, *row)))
                requeued.append(delivery_id)
        if requeued:
            self.wakeups.notify(wakeups.QUEUE)
        return requeued

    # -- retention -------------------------------------------------------------------------
    _PRUNABLE_DELIVERIES = (
        "FROM deliveries AS d WHERE d.pruned_at IS NULL AND d.updated_at < ? "
        "AND d.status IN ('sent', 'failed', 'dead', 'suppressed', 'cancelled', 'dropped') "
        # each (rule, user)'s latest delivery stays whole
        "AND EXISTS (SELECT 1 FROM deliveries AS later WHERE later.user_id = d.user_id "
        "AND later.rule = d.rule AND later.id > d.id)")

    def prunable(self, before: float) -> PruneCounts:
        stamp = iso(before)
        with self._read("cannot read the database") as conn:
            counts = PruneCounts(
                raw_bodies=conn.execute(
                    "SELECT COUNT(*) FROM notifications WHERE decided_at < ? AND body <> ''",
                    (stamp,)).fetchone()[0],
                decisions=conn.execute("SELECT COUNT(*) FROM decisions WHERE created_at < ?",
                                       (stamp,)).fetchone()[0],
                attempts=conn.execute("SELECT COUNT(*) FROM attempts WHERE finished_at < ?",
                                      (stamp,)).fetchone()[0],
                hold_events=conn.execute(
                    "SELECT COUNT(*) FROM delivery_events WHERE created_at < ?",
                    (stamp,)).fetchone()[0],
                cap_entries=conn.execute("SELECT COUNT(*) FROM send_slots WHERE sent_at < ?",
                                         (before,)).fetchone()[0],
                deliveries=conn.execute(f"SELECT COUNT(*) {self._PRUNABLE_DELIVERIES}",
                                        (stamp,)).fetchone()[0],
            )
        counts.add(self.prune_journal_files(dry_run=True))
        return counts

    def prune_batch(self, before: float, limit: int) -> PruneCounts:
        stamp = iso(before)
        limit = max(1, min(limit, MAX_PARAMS))
        counts = PruneCounts()
        # What is deleted is overwritten in the file, not only unlinked from the b-tree:
        # raw bodies may hold addresses.
        with self._read("cannot prune") as conn:
            conn.execute("PRAGMA secure_delete = ON")
            # Found before taking the write lock: the scan passes every (rule, user)'s kept
            # latest delivery, which can be many; the update below re-checks each one.
            deliveries = [row[0] for row in conn.execute(
                f"SELECT d.id {self._PRUNABLE_DELIVERIES} ORDER BY d.updated_at LIMIT ?",
                (stamp, limit))]
        with self._write("cannot prune old rows") as conn:
            counts.decisions = conn.execute(
                "DELETE FROM decisions WHERE id IN (SELECT id FROM decisions "
                "WHERE created_at < ? ORDER BY created_at LIMIT ?)", (stamp, limit)).rowcount
            counts.attempts = conn.execute(
                "DELETE FROM attempts WHERE id IN (SELECT id FROM attempts "
                "WHERE finished_at < ? ORDER BY finished_at LIMIT ?)", (stamp, limit)).rowcount
            # In id order, which is time order: the hold log has no index on its time.
            counts.hold_events = conn.execute(
                "DELETE FROM delivery_events WHERE id IN (SELECT id FROM delivery_events "
                "WHERE created_at < ? ORDER BY id LIMIT ?)", (stamp, limit)).rowcount
            counts.cap_entries = conn.execute(
                "DELETE FROM send_slots WHERE delivery_id IN (SELECT delivery_id FROM send_slots "
                "WHERE sent_at < ? LIMIT ?)", (before, limit)).rowcount
            if deliveries:
                counts.deliveries = conn.execute(
                    "UPDATE deliveries SET alert = '{}', recipient = NULL, last_error = NULL, "
                    "external_url = '', pruned_at = ? WHERE id IN (SELECT d.id "
                    f"{self._PRUNABLE_DELIVERIES} AND d.id IN "
                    f"({','.join('?' * len(deliveries))}))",
                    (iso(), stamp, *deliveries)).rowcount
            ids = [row[0] for row in conn.execute(
                "SELECT id FROM notifications WHERE decided_at < ? AND body <> '' "
                "ORDER BY decided_at LIMIT ?", (stamp, limit))]
            if ids:
                marks = ",".join("?" * len(ids))
                # Its decisions are as old as its decision time: they go with it.
                counts.decisions += conn.execute(
                    f"DELETE FROM decisions WHERE notification_id IN ({marks})", ids).rowcount
                # A notification a delivery refers to keeps its row, without the body.
                conn.execute(
                    f"DELETE FROM notifications WHERE id IN ({marks}) AND NOT EXISTS "
                    f"(SELECT 1 FROM deliveries WHERE notification_id = notifications.id)", ids)
                conn.execute(f"UPDATE notifications SET body = '' WHERE id IN ({marks})", ids)
                counts.raw_bodies = len(ids)
        return counts

    @contextmanager
    def send_gate(self, delivery: Delivery, now: float, period: float) -> Iterator[SendGate]:
        # BEGIN IMMEDIATE: the only writer, so the user's sends cannot change meanwhile.
        with self._write("cannot check the user's recent emails") as conn:
            facts = send_gates.gate_facts(conn, "?", delivery, now, period)
            yield send_gates.SQLSendGate(conn, "?", delivery, now, facts)

    # -- suppressions ----------------------------------------------------------------------
    def suppression_scopes(self, user_id: str) -> set[str]:
        with self._read("cannot read suppressions") as conn:
            rows = conn.execute("SELECT scope FROM suppressions WHERE user_id = ?", (user_id,))
            return {row[0] for row in rows}

    def add_suppression(self, user_id: str, scope: str, source: str, now: float) -> bool:
        with self._write("cannot record the unsubscribe") as conn:
            return conn.execute(
                "INSERT OR IGNORE INTO suppressions (user_id, scope, source, created_at) "
                "VALUES (?, ?, ?, ?)", (user_id, scope, source, iso(now)),
            ).rowcount == 1

    def remove_suppression(self, user_id: str, scope: str) -> bool:
        with self._write("cannot remove the suppression") as conn:
            return conn.execute(
                "DELETE FROM suppressions WHERE user_id = ? AND scope = ?", (user_id, scope)
            ).rowcount > 0

    def suppressed_categories(self, user_id: str) -> set[str]:
        with self._read("cannot read suppressions") as conn:
            rows = conn.execute("SELECT category FROM category_suppressions WHERE user_id = ?",
                                (user_id,))
            return {row[0] for row in rows}

    def add_category_suppression(self, user_id: str, category: str, source: str,
                                 now: float) -> bool:
        with self._write("cannot record the unsubscribe") as conn:
            return conn.execute(
                "INSERT OR IGNORE INTO category_suppressions (user_id, category, source, "
                "created_at) VALUES (?, ?, ?, ?)", (user_id, category, source, iso(now)),
            ).rowcount == 1

    def remove_category_suppression(self, user_id: str, category: str) -> bool:
        with self._write("cannot remove the suppression") as conn:
            return conn.execute(
                "DELETE FROM category_suppressions WHERE user_id = ? AND category = ?",
                (user_id, category)).rowcount > 0

    # -- moving an installation ------------------------------------------------------------
    def export_rows(self) -> Iterator[tuple[str, list[str], list[tuple]]]:
        with self._read("cannot read the database") as conn:
            offsets = self._offsets(conn)
            for table, columns in TABLES.items():
                cursor = conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY rowid")
                while rows := cursor.fetchmany(1000):
                    yield table, columns, rows
                if table == "notifications":
                    # Accepted and not decided yet: they travel as undecided notifications.
                    for records in self._journal_heads(offsets, 10**9, 10**12):
                        yield table, columns, [
                            (r.id, iso(r.received_at), r.receiver, r.status, r.group_key,
                             r.alert_count, r.truncated_alerts, r.body, None) for r in records]

    def import_rows(self, chunks: Iterable[tuple[str, list[str], list[tuple]]]) -> dict[str, int]:
        counts = dict.fromkeys(TABLES, 0)
        with self._write("cannot load the copy") as conn:
            for table in TABLES:
                if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
                    raise StorageError(f"{self.description} is not empty (table {table} has "
                                       f"rows): copy only into a new, empty database")
            if any(self._journal_heads(self._offsets(conn), 1, 10**12)):
                raise StorageError(f"{self.description} is not empty (notifications wait in "
                                   f"{self.journal_folder}): copy only into a new, empty database")
            for table, columns, rows in chunks:
                conn.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' * len(columns))})", rows)
                counts[table] += len(rows)
            # New notifications continue after the copied ones.
            conn.execute("UPDATE journal_ids SET next = MAX(next, "
                         "(SELECT COALESCE(MAX(id), 0) + 1 FROM notifications))")
        self._journal_writer.forget_ids()
        return counts


class _SQLiteDecisionBatch(DecisionBatch):
    """Inside BEGIN IMMEDIATE no other writer runs: facts read here stay true until the
    commit, and new deliveries can take ids after the largest one, written in bulk."""

    def __init__(self, conn: sqlite3.Connection, claimed: set[int]):
        self.conn = conn
        self.claimed = claimed
        self._next_id: int | None = None
        self._deliveries: list[tuple] = []
        self._cooldowns: dict[tuple[str, str], float] = {}
        self._stamps: dict[float, str] = {}
        self.queued = 0  # deliveries added: the dispatchers are woken after the commit

    def _stamp(self, now: float) -> str:
        stamp = self._stamps.get(now)
        if stamp is None:
            stamp = self._stamps[now] = iso(now)
        return stamp

    def facts(self, dedup_keys: Iterable[str], pairs: Iterable[tuple[str, str]]) -> Facts:
        facts = Facts()
        for part in chunks(sorted(set(dedup_keys)), MAX_PARAMS):
            facts.deliveries.update(self.conn.execute(
                f"SELECT dedup_key, id FROM deliveries WHERE dedup_key IN "
                f"({','.join('?' * len(part))})", part))
        for part in chunks(sorted(set(pairs)), MAX_PARAMS // 2):
            # CROSS JOIN keeps the pairs as the outer loop, one primary-key lookup each: as
            # `(rule, user_id) IN (VALUES ...)` SQLite scanned the whole table every batch, so
            # deciding slowed down as the number of users grew.
            rows = self.conn.execute(
                f"SELECT c.rule, c.user_id, c.last_queued_at FROM "
                f"(VALUES {','.join(['(?, ?)'] * len(part))}) AS wanted CROSS JOIN cooldowns AS c "
                f"ON c.rule = wanted.column1 AND c.user_id = wanted.column2",
                [value for pair in part for value in pair])
            for rule, user_id, last in rows:
                facts.last_queued[(rule, user_id)] = last
        return facts

    def add_delivery(self, delivery: NewDelivery, now: float) -> int:
        if self._next_id is None:
            (self._next_id,) = self.conn.execute(
                "SELECT COALESCE(MAX(id), 0) + 1 FROM deliveries").fetchone()
        delivery_id = self._next_id
        self._next_id += 1
        self.queued += 1
        stamp = self._stamp(now)
        self._deliveries.append((
            delivery_id, delivery.dedup_key, delivery.notification_id, delivery.rule,
            delivery.user_id, delivery.template, delivery.kind, delivery.starts_at,
            delivery.alert_json, delivery.external_url, now, stamp, stamp))
        if delivery.cooldown is not None:
            self._cooldowns[(delivery.rule, delivery.user_id)] = now
        return delivery_id

    def flush(self) -> None:
        if self._deliveries:
            self.conn.executemany(
                "INSERT INTO deliveries (id, dedup_key, notification_id, rule, user_id, template, "
                "kind, status, starts_at, alert, external_url, next_attempt_at, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                self._deliveries)
            self._deliveries = []
        if self._cooldowns:
            self.conn.executemany(
                "INSERT INTO cooldowns (rule, user_id, last_queued_at) VALUES (?, ?, ?) "
                "ON CONFLICT (rule, user_id) DO UPDATE SET last_queued_at = excluded.last_queued_at",
                [(rule, user, at) for (rule, user), at in self._cooldowns.items()])
            self._cooldowns = {}

    def cancel_resolved(self, firing_keys: Sequence[str], now: float
                        ) -> dict[str, tuple[int, str]]:
        return send_gates.cancel_resolved(self.conn, "?", firing_keys, now)

    def add_decisions(self, decisions: Sequence[DecisionRecord], now: float) -> None:
        self.flush()  # decisions refer to the deliveries
        stamp = self._stamp(now)
        self.conn.executemany(
            "INSERT INTO decisions (notification_id, created_at, rule, user_id, alert_status, "
            "starts_at, fingerprint, outcome, reason, detail, delivery_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(d.notification_id, stamp, d.rule, d.user_id, d.alert_status, d.starts_at,
              d.fingerprint, d.outcome, d.reason, d.detail, d.delivery_id) for d in decisions],
        )


class _DataVersionWatcher(ChangeWatcher):
    """`PRAGMA data_version` changes when another connection commits, and the journal files
    grow when a receiver appends: both are cheap to check, so the watcher polls them.

    Every few milliseconds while work comes and goes; the longer nothing has changed, the
    longer between looks (a tenth of the time since the last change, up to MAX_INTERVAL), so
    that an idle worker and its sender processes do not keep a core busy looking. Between
    looks it waits on its wake-up socket (app/store/wakeups.py), so a journal append or queued
    deliveries end a quiet spell at once; what notifies nobody (another tool's commit) waits
    at most a tenth of the quiet spell longer to be noticed."""

    INTERVAL = 0.005
    MAX_INTERVAL = 0.1

    def __init__(self, path: Path, journal_folder: Path | None, listener: Listener | None,
                 commits: bool = True):
        self.connection = _Connection(path)
        self.journal_folder = journal_folder
        self.listener = listener  # app/store/wakeups.py: woken at once after those commits
        self.commits = commits  # False: only journal appends count as a change
        self.version = self._read()
        self.journal = self._journal_sizes()
        self.changed_at = time.monotonic()

    def _interval(self, now: float) -> float:
        return min(self.MAX_INTERVAL, max(self.INTERVAL, (now - self.changed_at) / 10))

    def _read(self) -> int | None:
        if not self.commits:
            return None
        try:
            return self.connection.conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return None

    def _journal_sizes(self) -> tuple:
        """Where each journal file's records end. Files are zero-filled ahead of their
        writer, so neither their size nor (at the clock's resolution) their mtime tells of
        an append: the header just past the last record seen does."""
        if self.journal_folder is None:
            return ()
        ends = dict(getattr(self, "journal", ()))
        for name in journal_files.journal_names(self.journal_folder):
            path = self.journal_folder / name
            end = ends.get(name)
            if end is None or journal_files.record_follows(path, end):
                ends[name] = journal_files.scan(path, end or 0)[3]
        return tuple(sorted(ends.items()))

    def wait(self, timeout: float, interrupt: threading.Event | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            version = self._read()
            journal = self._journal_sizes()
            now = time.monotonic()
            if (version is not None and version != self.version) or journal != self.journal:
                self.version, self.journal, self.changed_at = version, journal, now
                return True
            if interrupt is not None and interrupt.is_set():
                return False
            remaining = deadline - now
            if remaining <= 0:
                return False
            pause = min(self._interval(now), remaining)
            if self.listener is not None:
                # The socket, not `interrupt` (one cannot wait on both): the event, set to
                # stop the thread, is seen at the next look, as an idle watcher's changes are.
                self.listener.wait(pause)
            elif interrupt is not None:
                interrupt.wait(pause)
            else:
                time.sleep(pause)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        self.connection.close()
