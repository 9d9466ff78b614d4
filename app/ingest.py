"""Turn one Alertmanager notification into decisions and queued deliveries, in one transaction.

Everything for a POST commits together or not at all: the raw notification, one decision
row per alert (queued / duplicate / skipped, with the reason) and the new deliveries. The
webhook answers 200 only after that commit.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import sqlite_utils

from app import policy
from app.alerts import Alert, Notification
from app.clock import iso
from app.db import StorageError, transaction
from app.policy import AlertPolicy, Candidate, Skip

QUEUED, DUPLICATE, SKIPPED = "queued", "duplicate", "skipped"


@dataclass(frozen=True)
class Decision:
    rule: str
    user_id: str
    outcome: str
    reason: str
    detail: str
    delivery_id: int | None = None
    template: str | None = None


@dataclass(frozen=True)
class IngestResult:
    notification_id: int
    decisions: list[Decision]


def store_notification(
    db: sqlite_utils.Database,
    body: str,
    notification: Notification,
    alert_policy: AlertPolicy,
    now: float,
) -> IngestResult:
    stamp = iso(now)
    try:
        with transaction(db):
            notification_id = db.execute(
                "INSERT INTO notifications (received_at, receiver, status, group_key, "
                "alert_count, truncated_alerts, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    stamp,
                    notification.receiver,
                    notification.status,
                    notification.group_key,
                    len(notification.alerts),
                    notification.truncated_alerts,
                    body,
                ),
            ).lastrowid
            decisions = [
                _decide_and_queue(db, alert, notification, notification_id, alert_policy, now,
                                  stamp)
                for alert in notification.alerts
            ]
            db.conn.executemany(
                "INSERT INTO decisions (notification_id, created_at, rule, user_id, alert_status, "
                "starts_at, fingerprint, outcome, reason, detail, delivery_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        notification_id,
                        stamp,
                        decision.rule,
                        decision.user_id,
                        alert.status,
                        alert.starts_at,
                        alert.fingerprint,
                        decision.outcome,
                        decision.reason,
                        decision.detail,
                        decision.delivery_id,
                    )
                    for alert, decision in zip(notification.alerts, decisions, strict=True)
                ],
            )
    except sqlite3.Error as exc:
        raise StorageError(f"could not store notification: {exc}") from exc
    return IngestResult(notification_id, decisions)


def _decide_and_queue(
    db: sqlite_utils.Database,
    alert: Alert,
    notification: Notification,
    notification_id: int,
    alert_policy: AlertPolicy,
    now: float,
    stamp: str,
) -> Decision:
    verdict = policy.decide(alert, alert_policy)
    if isinstance(verdict, Skip):
        return Decision(verdict.rule, verdict.user_id, SKIPPED, verdict.reason, verdict.detail)
    candidate: Candidate = verdict

    if candidate.kind == "resolved" and not _exists(db, candidate.firing_key):
        return _skip(candidate, policy.RESOLVED_WITHOUT_FIRING_EMAIL, "no firing email was queued")

    # db.conn directly: these run once per alert, and sqlite3 reuses the prepared statements.
    inserted = db.conn.execute(
        "INSERT OR IGNORE INTO deliveries (dedup_key, notification_id, rule, user_id, template, "
        "kind, status, starts_at, alert, external_url, next_attempt_at, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
        (
            candidate.dedup_key,
            notification_id,
            candidate.rule,
            candidate.user_id,
            candidate.template,
            candidate.kind,
            alert.starts_at,
            alert.to_json(),
            notification.external_url,
            now,
            stamp,
            stamp,
        ),
    )
    if inserted.rowcount == 0:
        (original,) = db.conn.execute(
            "SELECT id FROM deliveries WHERE dedup_key = ?", (candidate.dedup_key,)
        ).fetchone()
        reason, detail = policy.duplicate_reason(candidate, original)
        return Decision(candidate.rule, candidate.user_id, DUPLICATE, reason, detail, original,
                        candidate.template)
    delivery_id = inserted.lastrowid

    if candidate.kind == "firing" and candidate.cooldown:
        # One statement decides and claims the cooldown slot: it only moves forward when the
        # previous email for (rule, user) is older than the cooldown.
        claimed = db.conn.execute(
            "INSERT INTO cooldowns (rule, user_id, last_queued_at) VALUES (?, ?, ?) "
            "ON CONFLICT (rule, user_id) DO UPDATE SET last_queued_at = excluded.last_queued_at "
            "WHERE cooldowns.last_queued_at <= excluded.last_queued_at - ?",
            (candidate.rule, candidate.user_id, now, candidate.cooldown),
        ).rowcount
        if not claimed:
            db.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))
            (last,) = db.execute(
                "SELECT last_queued_at FROM cooldowns WHERE rule = ? AND user_id = ?",
                (candidate.rule, candidate.user_id),
            ).fetchone()
            return _skip(candidate, policy.COOLDOWN, policy.cooldown_detail(candidate, iso(last)))

    return Decision(candidate.rule, candidate.user_id, QUEUED, policy.NEW_EPISODE,
                    f"{candidate.kind} email {candidate.template!r} queued", delivery_id,
                    candidate.template)


def _skip(candidate: Candidate, reason: str, detail: str) -> Decision:
    return Decision(candidate.rule, candidate.user_id, SKIPPED, reason, detail, None,
                    candidate.template)


def _exists(db: sqlite_utils.Database, dedup_key: str) -> bool:
    row = db.execute("SELECT 1 FROM deliveries WHERE dedup_key = ?", (dedup_key,)).fetchone()
    return row is not None
