"""Nudge's storage: every SQL statement, transaction and migration lives in this package.

`open_store(database)` picks the engine from the `database` setting. The rest of Nudge calls
the domain operations of `Store` (see base.py) and catches `StorageError`, never a driver's
exception.
"""

from __future__ import annotations

from pathlib import Path

from app.store.base import (
    DEAD,
    FAILED,
    QUEUED,
    SENDING,
    SENT,
    STATUSES,
    SUPPRESSED,
    WAITING,
    ChangeWatcher,
    DecisionBatch,
    DecisionRecord,
    Delivery,
    Facts,
    JournalEntry,
    JournalStats,
    NewDelivery,
    PendingNotification,
    QueueStats,
    SchemaMismatch,
    StorageError,
    StorageUnavailable,
    Store,
)

__all__ = [
    "DEAD", "FAILED", "QUEUED", "SENDING", "SENT", "STATUSES", "SUPPRESSED", "WAITING",
    "ChangeWatcher", "DecisionBatch", "DecisionRecord", "Delivery", "Facts", "JournalEntry",
    "JournalStats", "NewDelivery", "PendingNotification", "QueueStats", "SchemaMismatch",
    "StorageError", "StorageUnavailable", "Store", "open_store",
]

POSTGRES_SCHEMES = ("postgres://", "postgresql://")


def open_store(database: str | Path) -> Store:
    """The store for the `database` setting: a SQLite file path (the default engine)."""
    text = str(database)
    if text.startswith(POSTGRES_SCHEMES):
        raise StorageError("PostgreSQL databases are not supported by this version of Nudge; "
                           "set database to a SQLite file path")
    from app.store.sqlite import SQLiteStore

    return SQLiteStore(Path(text))
