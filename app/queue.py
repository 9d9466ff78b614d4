"""The delivery queue in SQLite: claim with a lease, record every attempt, settle the outcome.

A claimed delivery is `sending` until its lease runs out; a worker killed mid-send leaves it
to be claimed again once the lease expires, so nothing queued is ever lost. Each claim opens
an `attempts` row before sending and closes it after, so the log shows every try.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from app.alerts import parse_time
from app.clock import iso
from app.db import transaction

QUEUED, SENDING, SENT, FAILED, DEAD, SUPPRESSED = (
    "queued",
    "sending",
    "sent",
    "failed",
    "dead",
    "suppressed",
)
STATUSES = (QUEUED, SENDING, SENT, FAILED, DEAD, SUPPRESSED)
WAITING = (QUEUED, SENDING)


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
    created_at: str
    attempt_id: int | None = None
    lease_until: float | None = None  # identifies this claim: a later claim has a later lease

    @property
    def created_epoch(self) -> float:
        return parse_time(self.created_at).timestamp()


@dataclass(frozen=True)
class QueueStats:
    depth: int
    oldest_age: float


def claim_due_deliveries(
    db: sqlite_utils.Database, now: float, lease: float, limit: int = 1
) -> list[Delivery]:
    """Claim up to `limit` deliveries that are due, or whose previous claim's lease expired."""
    with transaction(db):
        rows = db.execute(
            # Two index range scans (status, next_attempt_at), each stopping at `limit`: an OR
            # over both made SQLite sort every due row under the write lock (14 ms per claim
            # with 100,000 queued; this takes 0.02 ms).
            "UPDATE deliveries SET status = 'sending', lease_until = ?, attempts = attempts + 1, "
            "updated_at = ? WHERE id IN (SELECT id FROM ("
            "SELECT id, next_attempt_at FROM (SELECT id, next_attempt_at FROM deliveries "
            "WHERE status = 'queued' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?) "
            "UNION ALL SELECT id, next_attempt_at FROM (SELECT id, next_attempt_at FROM deliveries "
            "WHERE status = 'sending' AND lease_until <= ? ORDER BY next_attempt_at LIMIT ?)) "
            "ORDER BY next_attempt_at LIMIT ?) "
            "RETURNING id, rule, user_id, template, kind, status, attempts, alert, external_url, "
            "created_at",
            (now + lease, iso(now), now, limit, now, limit, limit),
        ).fetchall()
        if not rows:
            return []
        ids = [row[0] for row in rows]
        marks = ",".join("?" * len(ids))
        # A previous claim whose lease ran out never finished: say so in its attempt row.
        db.execute(
            f"UPDATE attempts SET outcome = 'abandoned', finished_at = ?, "
            f"error = 'worker stopped before finishing; lease expired' "
            f"WHERE delivery_id IN ({marks}) AND outcome = 'sending'",
            (iso(now), *ids),
        )
        claimed = []
        for row in rows:
            attempt_id = db.execute(
                "INSERT INTO attempts (delivery_id, attempt, started_at, outcome) "
                "VALUES (?, ?, ?, 'sending')",
                (row[0], row[6], iso(now)),
            ).lastrowid
            claimed.append(
                Delivery(
                    id=row[0],
                    rule=row[1],
                    user_id=row[2],
                    template=row[3],
                    kind=row[4],
                    status=row[5],
                    attempts=row[6],
                    alert=json.loads(row[7]),
                    external_url=row[8],
                    created_at=row[9],
                    attempt_id=attempt_id,
                    lease_until=now + lease,
                )
            )
    claimed.sort(key=lambda delivery: delivery.id)
    return claimed


def settle(
    db: sqlite_utils.Database,
    delivery: Delivery,
    status: str,
    now: float,
    *,
    recipient: str | None = None,
    error: str | None = None,
    retry_at: float | None = None,
) -> bool:
    """Record how this attempt ended: sent, queued again (retry_at), failed, dead, suppressed.

    Only while this claim is still the delivery's current one; False when the lease ran out
    and another claim took over (its outcome is the one that counts)."""
    attempt_outcome = "retry" if status == QUEUED else status
    with transaction(db):
        current = db.execute(
            "UPDATE deliveries SET status = ?, lease_until = NULL, updated_at = ?, "
            "recipient = COALESCE(?, recipient), last_error = ?, "
            "next_attempt_at = COALESCE(?, next_attempt_at), "
            "sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END "
            "WHERE id = ? AND status = 'sending' AND lease_until = ?",
            (status, iso(now), recipient, error, retry_at, status, iso(now), delivery.id,
             delivery.lease_until),
        ).rowcount
        if not current:
            attempt_outcome = f"{attempt_outcome} (after its lease expired)"
        if delivery.attempt_id is not None:
            db.execute(
                "UPDATE attempts SET outcome = ?, finished_at = ?, recipient = ?, error = ? "
                "WHERE id = ?",
                (attempt_outcome, iso(now), recipient, error, delivery.attempt_id),
            )
    return bool(current)


def release(db: sqlite_utils.Database, delivery: Delivery, now: float) -> None:
    """Give back a claimed delivery untouched (shutting down before sending it)."""
    with transaction(db):
        db.execute(
            "UPDATE deliveries SET status = 'queued', lease_until = NULL, "
            "attempts = attempts - 1, updated_at = ? "
            "WHERE id = ? AND status = 'sending' AND lease_until = ?",
            (iso(now), delivery.id, delivery.lease_until),
        )
        if delivery.attempt_id is not None:
            db.execute("DELETE FROM attempts WHERE id = ?", (delivery.attempt_id,))


def next_due_at(db: sqlite_utils.Database) -> float | None:
    """When the next delivery becomes due (a retry, or an expiring lease); None when idle."""
    row = db.execute(
        "SELECT MIN(t) FROM ("
        "SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE status = 'queued' "
        "UNION ALL SELECT MIN(lease_until) FROM deliveries WHERE status = 'sending')"
    ).fetchone()
    return row[0]


def queue_stats(db: sqlite_utils.Database, now: float) -> QueueStats:
    depth, oldest = db.execute(
        "SELECT COUNT(*), MIN(created_at) FROM deliveries WHERE status IN ('queued', 'sending')"
    ).fetchone()
    if not oldest:
        return QueueStats(depth, 0.0)
    return QueueStats(depth, max(0.0, now - parse_time(oldest).timestamp()))


def list_deliveries(
    db: sqlite_utils.Database,
    *,
    user: str | None = None,
    rule: str | None = None,
    status: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    where, params = [], []
    for column, value in (("user_id", user), ("rule", rule), ("status", status)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    sql = (
        "SELECT id, created_at, rule, user_id, template, kind, status, attempts, recipient, "
        "next_attempt_at, last_error, sent_at, starts_at FROM deliveries"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY id DESC"
        + (f" LIMIT {int(limit)}" if limit else "")
    )
    rows = list(db.query(sql, params))
    for row in rows:
        row["next_attempt_at"] = iso(row["next_attempt_at"]) if row["status"] == QUEUED else None
    return rows


def list_decisions(
    db: sqlite_utils.Database, *, user: str | None = None, rule: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    where, params = [], []
    for column, value in (("user_id", user), ("rule", rule)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    sql = (
        "SELECT id, created_at, notification_id, rule, user_id, alert_status, starts_at, "
        "outcome, reason, detail, delivery_id FROM decisions"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY id DESC"
        + (f" LIMIT {int(limit)}" if limit else "")
    )
    return list(db.query(sql, params))


def list_attempts(db: sqlite_utils.Database, delivery_id: int) -> list[dict[str, Any]]:
    return list(
        db.query(
            "SELECT attempt, started_at, finished_at, outcome, recipient, error FROM attempts "
            "WHERE delivery_id = ? ORDER BY id",
            [delivery_id],
        )
    )
