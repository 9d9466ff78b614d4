"""The decider on a real SQLite file: batches, bad notifications, and the journal's order."""

from __future__ import annotations

import json
import threading
import time

from app.config import RuleOverride
from app.decider import Decider
from app.policy import AlertPolicy
from app.store import JournalEntry
from tests.processes import wait_until


def body(rule: str, users: list[str]) -> str:
    return json.dumps({
        "version": "4", "receiver": "nudge", "status": "firing", "groupKey": "{}:{}",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "truncatedAlerts": 0,
        "externalURL": "http://alertmanager:9093",
        "alerts": [{"status": "firing", "startsAt": "2026-11-22T20:04:34Z",
                    "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": u,
                    "labels": {"alertname": rule, "user_id": u, "email_template": "t"},
                    "annotations": {}} for u in users],
    })


def append(store, text: str, alerts: int = 1) -> int:
    (notification_id,) = store.append_notifications(
        [JournalEntry(time.time(), "nudge", "firing", "{}:{}", alerts, 0, text)])
    return notification_id


class ExplodingOverrides(dict):
    """Per-rule settings whose lookup fails for one rule: stands in for a bug in the policy."""

    def get(self, rule, default=None):
        if rule == "Poison":
            raise RuntimeError("boom")
        return super().get(rule, default)


def test_one_bad_notification_is_recorded_and_never_blocks_the_others(store):
    good_before = append(store, body("NoFirstApiCall", ["u1", "u2"]), 2)
    poison = append(store, body("Poison", ["u3"]))
    not_json = append(store, "{not json")
    good_after = append(store, body("NoFirstApiCall", ["u4"]))
    overrides = ExplodingOverrides({"Other": RuleOverride()})
    decider = Decider(store, AlertPolicy(rule_overrides=overrides))
    stopping = threading.Event()
    thread = threading.Thread(target=decider.run, args=(stopping,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: store.journal_stats(time.time()).pending == 0, timeout=30,
                   message="journal drained")
    finally:
        stopping.set()
        thread.join(timeout=30)
    by_notification = {}
    for decision in store.list_decisions():
        by_notification.setdefault(decision["notification_id"], []).append(decision)
    assert [d["outcome"] for d in by_notification[good_before]] == ["queued", "queued"]
    assert [d["outcome"] for d in by_notification[good_after]] == ["queued"]
    (failed,) = by_notification[poison]
    assert (failed["outcome"], failed["reason"]) == ("skipped", "decider_error")
    assert "boom" in failed["detail"]
    (invalid,) = by_notification[not_json]
    assert invalid["reason"] == "invalid_notification" and "malformed JSON" in invalid["detail"]
    assert sorted(d["user_id"] for d in store.list_deliveries()) == ["u1", "u2", "u4"]


def test_batches_are_bounded_and_the_journal_is_decided_in_order(store):
    ids = [append(store, body("NoFirstApiCall", [f"u{n}-{k}" for k in range(10)]), 10)
           for n in range(12)]
    decider = Decider(store, AlertPolicy(), max_notifications=5, max_alerts=25)
    sizes = []
    while (report := decider.decide_batch()) is not None:
        sizes.append(report.notifications)
    assert sizes == [2] * 6  # 25 alerts per batch: two notifications of ten
    decisions = sorted(store.list_decisions(), key=lambda d: d["id"])
    assert [d["notification_id"] for d in decisions][::10] == ids
