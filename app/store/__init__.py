"""Nudge's storage: every SQL statement, transaction and migration lives in this package.

`open_store(database)` picks the engine from the `database` setting. The rest of Nudge calls
the domain operations of `Store` (see base.py) and catches `StorageError`, never a driver's
exception.
"""

from __future__ import annotations

from pathlib import Path

from app.store.base import (
    CANCELLED,
    DEAD,
    DROPPED,
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
    GateFacts,
    JournalEntry,
    JournalStats,
    NewDelivery,
    Outcome,
    PendingNotification,
    PruneCounts,
    QueueStats,
    RateReservation,
    RetrySelection,
    SchemaMismatch,
    SendGate,
    StorageError,
    StorageUnavailable,
    Store,
)

__all__ = [
    "Outcome",
    "CANCELLED", "DROPPED", "GateFacts", "SendGate",
    "DEAD", "FAILED", "QUEUED", "SENDING", "SENT", "STATUSES", "SUPPRESSED", "WAITING",
    "ChangeWatcher", "DecisionBatch", "DecisionRecord", "Delivery", "Facts", "JournalEntry",
    "JournalStats", "NewDelivery", "PendingNotification", "QueueStats", "RateReservation", "SchemaMismatch",
    "PruneCounts", "RetrySelection",
    "StorageError", "StorageUnavailable", "Store", "is_postgres", "open_store", "store_for",
]

POSTGRES_SCHEMES = ("postgres://", "postgresql://")


def store_for(config, *, pool_size: int = 4) -> Store:
    """The store of a Config (app.config.Config), with its PostgreSQL password file."""
    return open_store(config.database, password_file=config.database_password_file,
                      pool_size=pool_size)


def is_postgres(database: str | Path) -> bool:
    return str(database).startswith(POSTGRES_SCHEMES)


def open_store(database: str | Path, *, password_file: str | Path | None = None,
               pool_size: int = 10) -> Store:
    """The store for the `database` setting: a SQLite file path (the default engine) or a
    PostgreSQL URL. `pool_size`: connections this process may hold (PostgreSQL)."""
    if is_postgres(database):
        try:
            from app.store.postgres import PostgresStore
        except ImportError:
            raise StorageError(
                "database is a PostgreSQL URL but the PostgreSQL driver is not installed: "
                "pip install 'nudge[postgres]'") from None
        return PostgresStore(str(database), password_file=password_file, pool_size=pool_size)
    from app.store.sqlite import SQLiteStore

    return SQLiteStore(Path(database))
