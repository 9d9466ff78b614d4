"""Holding emails back, in SQL both engines take: the facts the hold policy judges a claimed
delivery by, and the recording of its verdict; and the decider's cancellation of the emails
whose alert resolved.

An engine opens the transaction and takes the per-user lock (SQLite: its single writer;
PostgreSQL: an advisory lock on the user), then hands the connection here with its
parameter placeholder. Inside that transaction the count of the user's recent sends cannot
change under us, so taking a send slot after judging keeps the cap exact across senders,
processes and replicas.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from app.alerts import parse_time
from app.clock import iso
from app.store.base import (
    CANCELLED,
    DEAD,
    FAILED,
    QUEUED,
    SENDING,
    Delivery,
    GateFacts,
    SendGate,
    WaitingRow,
)

HELD, RELEASED = "held", "released"
KEYS_PER_QUERY = 500  # under SQLite's limit on host parameters


def gate_facts(conn: Any, mark: str, delivery: Delivery, now: float, period: float) -> GateFacts:
    row = conn.execute(
        f"SELECT held_since, held_seconds, hold_reason, note, resolved_at FROM deliveries "
        f"WHERE id = {mark} AND status = 'sending' AND claim = {mark}",
        (delivery.id, delivery.attempt_id)).fetchone()
    if row is None:
        return GateFacts(current=False)
    held_since, held_seconds, hold_reason, note, resolved_at = row
    # Sends older than the window never count again.
    conn.execute(f"DELETE FROM send_slots WHERE user_id = {mark} AND sent_at <= {mark}",
                 (delivery.user_id, now - period))
    recent = [t for (t,) in conn.execute(
        f"SELECT sent_at FROM send_slots WHERE user_id = {mark} AND delivery_id <> {mark}",
        (delivery.user_id, delivery.id))]
    waiting = [
        WaitingRow(id=i, rule=rule, annotations=json.loads(alert).get("annotations") or {},
                   created_at=parse_time(created).timestamp(), due_at=due)
        for i, rule, alert, created, due in conn.execute(
            # One that took its send slot is counted among the sends already, not here.
            f"SELECT id, rule, alert, created_at, next_attempt_at FROM deliveries "
            f"WHERE user_id = {mark} AND status IN ('{QUEUED}', '{SENDING}') AND id <> {mark} "
            f"AND NOT EXISTS (SELECT 1 FROM send_slots WHERE delivery_id = deliveries.id)",
            (delivery.user_id, delivery.id))]
    waited = float(held_seconds or 0.0) + (max(0.0, now - held_since) if held_since else 0.0)
    return GateFacts(current=True, recent_sends=recent, waiting=waiting,
                     resolved=resolved_at is not None, waited=waited, hold_reason=hold_reason,
                     note=note, held=held_since is not None)


def add_event(conn: Any, mark: str, delivery_id: int, now: float, event: str, reason: str,
              detail: str) -> None:
    conn.execute(
        f"INSERT INTO delivery_events (delivery_id, created_at, event, reason, detail) "
        f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark})",
        (delivery_id, iso(now), event, reason, detail))


class SQLSendGate(SendGate):
    def __init__(self, conn: Any, mark: str, delivery: Delivery, now: float, facts: GateFacts):
        self.conn, self.mark, self.delivery, self.now, self.facts = (
            conn, mark, delivery, now, facts)

    def send(self, counted: bool, reason: str, detail: str) -> None:
        m = self.mark
        if counted:
            self.conn.execute(
                f"INSERT INTO send_slots (delivery_id, user_id, sent_at) VALUES ({m}, {m}, {m}) "
                f"ON CONFLICT (delivery_id) DO UPDATE SET sent_at = excluded.sent_at",
                (self.delivery.id, self.delivery.user_id, self.now))
        if self.facts.held:
            self.conn.execute(
                f"UPDATE deliveries SET held_seconds = {m}, held_since = NULL, "
                f"hold_reason = NULL, note = {m} WHERE id = {m}",
                (self.facts.waited, detail, self.delivery.id))
            add_event(self.conn, m, self.delivery.id, self.now, RELEASED, reason, detail)

    def hold(self, until: float, reason: str, detail: str) -> None:
        m = self.mark
        # Not an attempt: the claim's attempt row goes, as when a claim is given back.
        self.conn.execute(
            f"UPDATE deliveries SET status = 'queued', lease_until = NULL, claim = NULL, "
            f"attempts = attempts - 1, next_attempt_at = {m}, "
            f"held_since = COALESCE(held_since, {m}), hold_reason = {m}, note = {m}, "
            f"updated_at = {m} WHERE id = {m} AND status = 'sending' AND claim = {m}",
            (until, self.now, reason, detail, iso(self.now), self.delivery.id,
             self.delivery.attempt_id))
        self._forget_attempt()
        if detail != self.facts.note:  # looking again and waiting for the same reason: no news
            add_event(self.conn, m, self.delivery.id, self.now, HELD, reason, detail)

    def finish(self, status: str, reason: str, detail: str) -> None:
        m = self.mark
        self.conn.execute(
            f"UPDATE deliveries SET status = {m}, lease_until = NULL, claim = NULL, "
            f"attempts = attempts - 1, held_seconds = {m}, held_since = NULL, "
            f"hold_reason = {m}, note = {m}, updated_at = {m} "
            f"WHERE id = {m} AND status = 'sending' AND claim = {m}",
            (status, self.facts.waited, reason, detail, iso(self.now), self.delivery.id,
             self.delivery.attempt_id))
        self._forget_attempt()
        add_event(self.conn, m, self.delivery.id, self.now, status, reason, detail)

    def _forget_attempt(self) -> None:
        if self.delivery.attempt_id is not None:
            self.conn.execute(f"DELETE FROM attempts WHERE id = {self.mark}",
                              (self.delivery.attempt_id,))


CANCELLED_DETAIL = "cancelled: alert resolved before sending"


def cancel_resolved(conn: Any, mark: str, firing_keys: Sequence[str], now: float
                    ) -> dict[str, tuple[int, str]]:
    """Cancel the waiting emails holding these dedup keys (their alert resolved); one being
    sent right now is marked, and its send step cancels it. Returns key -> (delivery id,
    its status before) for the keys that have a delivery."""
    found: dict[str, tuple[int, str]] = {}
    keys = list(dict.fromkeys(firing_keys))
    for start in range(0, len(keys), KEYS_PER_QUERY):
        part = keys[start:start + KEYS_PER_QUERY]
        for key, delivery_id, status in conn.execute(
                f"SELECT dedup_key, id, status FROM deliveries WHERE dedup_key IN "
                f"({', '.join([mark] * len(part))})", part).fetchall():
            found[key] = (delivery_id, status)
    for delivery_id, status in found.values():
        if status == QUEUED:
            conn.execute(
                f"UPDATE deliveries SET status = '{CANCELLED}', resolved_at = {mark}, "
                f"note = {mark}, hold_reason = 'alert_resolved', updated_at = {mark}, "
                f"held_seconds = held_seconds + COALESCE({mark} - held_since, 0), "
                f"held_since = NULL WHERE id = {mark}",
                (now, CANCELLED_DETAIL, iso(now), now, delivery_id))
            add_event(conn, mark, delivery_id, now, CANCELLED, "alert_resolved",
                      CANCELLED_DETAIL)
        elif status in (SENDING, FAILED, DEAD):
            # Being sent: its send step cancels it. Failed or dead: `nudge retry` leaves it.
            conn.execute(f"UPDATE deliveries SET resolved_at = {mark} WHERE id = {mark}",
                         (now, delivery_id))
    return found
