"""The decider: turns journaled notifications into decisions and queued deliveries, in batches.

The webhook only appends what Alertmanager sent to the journal; this runs in the delivery
worker process and does the rest. Per batch it reads the oldest undecided notifications,
parses them and runs the pure policy with no lock held, then in one transaction takes the
notifications still undecided, asks the store for the facts (existing dedup keys,
cooldowns), records each verdict and marks the notifications decided. A crash anywhere
rolls the whole batch back, so nothing is lost and nothing is decided twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from app import metrics, policy
from app.alerts import (
    Alert,
    Notification,
    PayloadError,
    check_notification,
    parse_checked_notification,
    parse_json,
)
from app.policy import (
    CANCELLED,
    DUPLICATE,
    QUEUED,
    SKIPPED,
    AlertPolicy,
    Candidate,
    Skip,
    Verdict,
)
from app.store import (
    DecisionRecord,
    NewDelivery,
    PendingNotification,
    StorageUnavailable,
    Store,
)

log = logging.getLogger("nudge.decider")

INVALID_NOTIFICATION = "invalid_notification"
DECIDER_ERROR = "decider_error"
# A batch is one transaction: big enough to share its fsync among many notifications, small
# enough that the receivers' appends never wait long for the write lock.
MAX_NOTIFICATIONS = 200
MAX_ALERTS = 2000
IDLE_WAIT = 1.0


@dataclass
class _Prepared:
    """A notification parsed and judged by the parts of the policy that need no facts."""

    pending: PendingNotification
    notification: Notification | None
    error: str = ""
    verdicts: list[tuple[Alert, Skip | Candidate, str]] = field(default_factory=list)
    # Per verdict: the firing email a resolved alert cancels, if still waiting (app/holds.py).
    cancels: list[str | None] = field(default_factory=list)


@dataclass
class BatchReport:
    notifications: int = 0
    alerts: int = 0
    queued: int = 0
    by_reason: Counter = field(default_factory=Counter)


class Decider:
    def __init__(self, store: Store, alert_policy: AlertPolicy, *,
                 max_notifications: int = MAX_NOTIFICATIONS, max_alerts: int = MAX_ALERTS):
        self.store = store
        self.alert_policy = alert_policy
        self.max_notifications = max_notifications
        self.max_alerts = max_alerts
        self._settings_memo: dict = {}

    def decide_batch(self, max_notifications: int | None = None,
                     waited: float | None = None) -> BatchReport | None:
        """Decide the oldest undecided notifications (with `waited`, only those that have
        waited at least that many seconds); None when there were none."""
        pending = self.store.pending_notifications(
            max_notifications or self.max_notifications, self.max_alerts,
            None if waited is None else time.time() - waited)
        if not pending:
            return None
        return self._decide(pending)

    def decide_singly(self, count: int) -> None:
        """After a batch failed for a reason other than the database being unavailable: decide
        the next `count` notifications one at a time, and record one that fails alone as
        undecidable, so a single bad notification never blocks the journal."""
        for _ in range(count):
            pending = self.store.pending_notifications(1, self.max_alerts)
            if not pending:
                return
            try:
                self._decide(pending)
            except StorageUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - recorded as a decision, and logged
                log.exception("notification %d cannot be decided; recording it as skipped",
                              pending[0].id)
                with self.store.deciding([pending[0].id]) as batch:
                    if batch.claimed:
                        batch.add_decisions([DecisionRecord(
                            pending[0].id, "", "", "", "", "", SKIPPED, DECIDER_ERROR,
                            f"the decider failed on this notification: {exc!r}", None)],
                            time.time())
                metrics.ALERT_DECISIONS.labels(SKIPPED, DECIDER_ERROR).inc()

    def _decide(self, pending: list[PendingNotification]) -> BatchReport:
        prepared = [self._prepare(item) for item in pending]
        report = BatchReport()
        logged: list[tuple[_Prepared, Counter]] = []
        with self.store.deciding([item.id for item in pending]) as batch:
            mine = [p for p in prepared if p.pending.id in batch.claimed]
            candidates = [v for p in mine for _, v, _ in p.verdicts if isinstance(v, Candidate)]
            facts = batch.facts(
                [key for c in candidates for key in (c.dedup_key, c.firing_key)],
                [(c.rule, c.user_id) for c in candidates],
            )
            now = time.time()
            cancel_keys = [key for p in mine for key in p.cancels if key]
            waiting = batch.cancel_resolved(cancel_keys, now) if cancel_keys else {}
            records: list[DecisionRecord] = []
            for item in mine:
                counts: Counter = Counter()
                for (alert, verdict, alert_json), cancel in zip(item.verdicts, item.cancels,
                                                                strict=True):
                    decided = (policy.resolved_cancellation(verdict, *waiting[cancel])
                               if cancel in waiting else None)
                    if decided is not None:
                        pass  # the alert resolved while its email waited
                    elif isinstance(verdict, Skip):
                        decided = Verdict(SKIPPED, verdict.reason, verdict.detail)
                    else:
                        decided = policy.judge(verdict, facts, now)
                    delivery_id = decided.delivery_id
                    if decided.outcome == QUEUED:
                        delivery_id = batch.add_delivery(_new_delivery(
                            item, alert, verdict, alert_json), now)
                        policy.remember_queued(facts, verdict, delivery_id, now)
                    records.append(DecisionRecord(
                        item.pending.id, verdict.rule, verdict.user_id, alert.status,
                        alert.starts_at, alert.fingerprint, decided.outcome, decided.reason,
                        decided.detail, delivery_id))
                    counts[decided.outcome] += 1
                    report.by_reason[(decided.outcome, decided.reason)] += 1
                if item.error:
                    records.append(DecisionRecord(
                        item.pending.id, "", "", "", "", "", SKIPPED, INVALID_NOTIFICATION,
                        item.error, None))
                    report.by_reason[(SKIPPED, INVALID_NOTIFICATION)] += 1
                logged.append((item, counts))
            batch.add_decisions(records, now)
        # Committed: only now do logs and metrics say it happened.
        for _item, counts in logged:
            report.notifications += 1
            report.alerts += sum(counts.values())
            report.queued += counts[QUEUED]
        self._log_batch(logged, report)
        for (outcome, reason), count in report.by_reason.items():
            metrics.ALERT_DECISIONS.labels(outcome, reason).inc(count)
            if outcome == CANCELLED:
                metrics.DELIVERY_HOLDS.labels(CANCELLED, reason).inc(count)
        if report.notifications:
            metrics.NOTIFICATIONS_DECIDED.inc(report.notifications)
            metrics.DECISION_LAG.observe(time.time() - min(
                item.pending.received_at for item, _ in logged))
        if log.isEnabledFor(logging.DEBUG):
            for record in records:
                log.debug("decision notification=%d rule=%s user=%s outcome=%s reason=%s%s: %s",
                          record.notification_id, record.rule, record.user_id, record.outcome,
                          record.reason, f" delivery={record.delivery_id}"
                          if record.delivery_id else "", record.detail)
        return report

    def decide_all(self) -> int:
        """Decide until the journal is empty (tests, and catching up); notifications decided."""
        total = 0
        while (report := self.decide_batch()) is not None:
            total += report.notifications
        return total

    def run(self, stopping: threading.Event, on_queued: Callable[[], None] = lambda: None) -> None:
        """Decide as notifications arrive, until `stopping` is set."""
        watcher = None
        failures = 0
        try:
            while not stopping.is_set():
                try:
                    if watcher is None:
                        watcher = self.store.watch_journal()
                    report = self.decide_batch(waited=watcher.backlog_age)
                    if report is None:
                        watcher.wait(IDLE_WAIT, stopping)
                    elif report.queued:
                        on_queued()
                    failures = 0
                except StorageUnavailable as exc:
                    failures += 1
                    delay = min(30.0, 0.25 * 2 ** min(failures, 7))
                    log.error("cannot decide notifications, retrying in %.1fs: %s", delay, exc)
                    if watcher is not None:
                        watcher.close()
                        watcher = None
                    stopping.wait(delay)
                except Exception:  # noqa: BLE001 - a bad notification, or a bug: isolate it
                    log.exception("deciding a batch failed; deciding one at a time")
                    try:
                        self.decide_singly(self.max_notifications)
                    except Exception as exc:  # noqa: BLE001 - the database, most likely
                        log.error("cannot decide notifications, retrying in 1s: %s", exc)
                        stopping.wait(1.0)
        finally:
            if watcher is not None:
                watcher.close()
            self.store.close()

    def _prepare(self, pending: PendingNotification) -> _Prepared:
        try:
            data = parse_json(pending.body.encode())
            # Checked by the webhook before its 200; checked again in full only if the
            # rules changed since (an upgrade) and the quick path no longer accepts it.
            check_notification(data, b"")
            notification = parse_checked_notification(data)
        except PayloadError as exc:
            # The webhook checked it before its 200, so only a change of the rules since (an
            # upgrade) gets here: record why instead of retrying it forever.
            log.error("notification %d cannot be decided: %s", pending.id, exc)
            return _Prepared(pending, None, f"stored notification is not valid: {exc}")
        item = _Prepared(pending, notification)
        for alert in notification.alerts:
            verdict = policy.decide(alert, self.alert_policy, self._settings_memo)
            alert_json = alert.to_json() if isinstance(verdict, Candidate) else ""
            item.verdicts.append((alert, verdict, alert_json))
            item.cancels.append(policy.firing_key_to_cancel(alert, self.alert_policy))
        return item

    @classmethod
    def _log_batch(cls, logged: list[tuple[_Prepared, Counter]], report: BatchReport) -> None:
        """One INFO line per batch: a notification's own line when it was decided alone (as
        when alerts trickle in), else what the batch came to, with each notification's line at
        DEBUG. A line per notification in a burst would be a second line per email beside the
        sender's, and formatting them cost a fifth of the decider's CPU."""
        if len(logged) == 1:
            cls._log(*logged[0], logging.INFO)
            return
        if not logged:
            return
        outcomes: Counter = Counter()
        for (outcome, _reason), count in report.by_reason.items():
            outcomes[outcome] += count
        ids = [item.pending.id for item, _ in logged]
        log.info("decided %d notifications (%d to %d), %d alerts: %d queued, %d duplicate, "
                 "%d skipped%s", report.notifications, min(ids), max(ids), report.alerts,
                 outcomes[QUEUED], outcomes[DUPLICATE], outcomes[SKIPPED],
                 f", {outcomes[CANCELLED]} cancelled" if outcomes[CANCELLED] else "")
        if log.isEnabledFor(logging.DEBUG):
            for item, counts in logged:
                cls._log(item, counts, logging.DEBUG)

    @staticmethod
    def _log(item: _Prepared, counts: Counter, level: int) -> None:
        notification = item.notification
        if notification is None:
            return
        log.log(level, "notification %d from receiver=%s group=%s: %d alerts (%s): %d queued, "
                "%d duplicate, %d skipped", item.pending.id, notification.receiver,
                notification.group_key, len(notification.alerts), notification.status,
                counts[QUEUED], counts[DUPLICATE], counts[SKIPPED])


def _new_delivery(item: _Prepared, alert: Alert, candidate: Candidate, alert_json: str
                  ) -> NewDelivery:
    return NewDelivery(
        dedup_key=candidate.dedup_key,
        notification_id=item.pending.id,
        rule=candidate.rule,
        user_id=candidate.user_id,
        template=candidate.template,
        kind=candidate.kind,
        starts_at=alert.starts_at,
        alert_json=alert_json,
        external_url=item.notification.external_url,
        cooldown=candidate.cooldown if policy.takes_cooldown(candidate) else None,
    )
