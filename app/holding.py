"""The send step's check before an email goes out: hold it back, drop it, cancel it, or let it
go (app/holds.py decides; the store keeps the cap exact under a per-user lock).

It runs after the recipient is known (the user's time zone is in their directory or
static-map record) and before rendering. A hold is not an attempt: the delivery goes back to
the queue, due when the window has room or quiet hours end, and the time it waits does not
count against `delivery.max_age`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from app import metrics
from app.config import Config
from app.holds import (
    CANCEL,
    DROP,
    HOLD,
    Email,
    HoldSettings,
    SendFacts,
    WaitingEmail,
    judge_send,
    release_spread,
    user_zone,
)
from app.store import CANCELLED, DROPPED, QUEUED, Delivery, Store

log = logging.getLogger("nudge.holds")

EVENTS = {HOLD: "held", DROP: DROPPED, CANCEL: CANCELLED}


class HoldStep:
    def __init__(self, config: Config, store: Store):
        self.settings = HoldSettings.from_config(config)
        self.store = store

    def check(self, delivery: Delivery, user: dict, where: str) -> tuple[str | None, Delivery]:
        """(None, the delivery to send) when it goes out now; else (the status it is left
        in, delivery). StorageError propagates: nothing was sent, the lease brings it back."""
        # Without a cap or quiet hours only a delivery whose alert resolved while it was
        # being sent (then failed and came back) needs the check: it is cancelled.
        if not self.settings.active and not delivery.resolved:
            return None, delivery
        now = time.time()
        zone, zone_name = user_zone(user, self.settings.timezone_field,
                                    self.settings.default_timezone)
        email = Email(delivery.id, delivery.rule, delivery.kind,
                      delivery.alert.get("annotations") or {}, delivery.created_epoch)
        with self.store.send_gate(delivery, now, self.settings.period) as gate:
            stored = gate.facts
            if not stored.current:
                log.warning("%s: its claim was taken over; not sending it", where)
                return QUEUED, delivery
            facts = SendFacts(
                stored.recent_sends,
                [WaitingEmail(w.id, w.rule, w.annotations, w.created_at, w.due_at)
                 for w in stored.waiting],
                stored.resolved, stored.waited, stored.hold_reason)
            verdict = judge_send(now, email, facts, self.settings, zone=zone,
                                 zone_name=zone_name, spread=release_spread(delivery.id))
            if verdict.action == HOLD:
                gate.hold(verdict.until, verdict.reason, verdict.detail)
            elif verdict.action == DROP:
                gate.finish(DROPPED, verdict.reason, verdict.detail)
            elif verdict.action == CANCEL:
                gate.finish(CANCELLED, verdict.reason, verdict.detail)
            else:
                gate.send(verdict.counts, verdict.reason, verdict.detail)
        # Committed: only now do logs and metrics say it happened.
        if verdict.action in EVENTS:
            event = EVENTS[verdict.action]
            if event != "held" or verdict.detail != stored.note:
                metrics.DELIVERY_HOLDS.labels(event, verdict.reason).inc()
            log.info("%s %s", where, verdict.detail)
            return (QUEUED if verdict.action == HOLD else EVENTS[verdict.action]), delivery
        if stored.held:
            metrics.DELIVERY_HOLDS.labels("released", verdict.reason).inc()
            log.info("%s released (%s) %s", where, verdict.reason, verdict.detail)
        return None, replace(delivery, held_seconds=stored.waited)
