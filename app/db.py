"""The SQLite database: connections, WAL, and schema migrations.

`migrate` runs once before gunicorn forks (two workers racing to switch a fresh file to
WAL fail with "database is locked"); every other process only `connect`s.
"""

from __future__ import annotations

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
    return sqlite_utils.Database(conn)


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
    """BEGIN IMMEDIATE: takes the write lock up front, so every read in it is race-free."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _statements(script: str) -> Iterator[str]:
    for statement in script.split(";"):
        if statement.strip():
            yield statement
