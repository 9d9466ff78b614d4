"""The SQLite database: connections, WAL, and schema migrations.

`migrate` runs once before gunicorn forks (two workers racing to switch a fresh file to
WAL fail with "database is locked"); every other process only `connect`s.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

BUSY_TIMEOUT_MS = 10_000

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
]


class StorageError(Exception):
    """The database cannot be opened or written: callers answer 503 so senders retry."""


class WriterLock:
    """Writers take turns on an OS lock (flock on `<database>-writer.lock`) before BEGIN IMMEDIATE.

    SQLite's own busy handler polls: a writer that finds the database locked sleeps 1, 2, 5,
    ... up to 100 ms between tries, so under load (receiver workers and delivery senders all
    committing) writers lose most of their time asleep while the lock is free, and a steady
    stream of ingest transactions starves the delivery worker. Blocked in flock, a waiting
    writer is woken by the kernel the moment the lock is released (measured: delivery during
    a 40k-alert burst at 0.34 of its idle rate, against 0.14 when polling the lock every
    few ms). SQLite's locking still guards the data; this only orders the writers. If the
    lock file cannot be opened, SQLite's locking alone is used. One lock per connection (flock
    locks belong to an open file), reopened after fork.
    A writer from outside Nudge (an sqlite3 shell holding a transaction) still makes each
    Nudge writer give up after BUSY_TIMEOUT_MS once its turn comes, one after the other.
    The wait itself is not bounded: a holder that dies releases the lock (the kernel drops
    flock locks with the process), but one that is frozen (SIGSTOP) stalls writers until it
    resumes; the webhook's callers then time out and retry.
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
        """Wait for our turn; False when the lock file is unusable (SQLite's locking alone)."""
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


class Database(sqlite_utils.Database):
    """sqlite_utils.Database plus the writer lock that `transaction` takes."""

    writer_lock: WriterLock | None = None

    def close(self) -> None:
        super().close()
        if self.writer_lock is not None:
            self.writer_lock.close()


def connect(path: str | Path) -> sqlite_utils.Database:
    """A connection in autocommit mode; callers open explicit transactions with `transaction`."""
    try:
        conn = sqlite3.connect(
            str(path),
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # FULL: a 200 to Alertmanager means the alert survives a power cut, not just a crash.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open database {path}: {exc}") from exc
    db = Database(conn)
    if str(path) != ":memory:" and not str(path).startswith("file:"):
        db.writer_lock = WriterLock(Path(path))
    return db


def migrate(path: str | Path) -> int:
    """Create the file and bring its schema up to date; returns the schema version."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create folder for database {path}: {exc}") from exc
    db = connect(path)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        with transaction(db):
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _statements(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
        return len(MIGRATIONS)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot prepare database {path}: {exc}") from exc
    finally:
        db.close()


def schema_version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """BEGIN IMMEDIATE: takes the write lock up front, so every read in it is race-free.

    Writers first queue on the connection's WriterLock (see there), when it has one."""
    lock: WriterLock | None = getattr(db, "writer_lock", None)
    locked = lock is not None and lock.acquire()
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.conn.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        if locked:
            lock.release()


def _statements(script: str) -> Iterator[str]:
    for statement in script.split(";"):
        if statement.strip():
            yield statement
