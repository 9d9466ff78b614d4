"""The decider on a real SQLite file: batches, bad notifications, and the journal's order."""

from __future__ import annotations

import json
import logging
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


def test_a_burst_logs_one_info_line_per_batch_and_each_notification_at_debug(store, caplog):
    first = append(store, body("NoFirstApiCall", ["a", "b"]), 2)
    append(store, body("NoFirstApiCall", ["a"]))  # the same episode again: a duplicate
    last = append(store, body("NoFirstApiCall", ["c"]))
    with caplog.at_level(logging.INFO, logger="nudge.decider"):
        Decider(store, AlertPolicy()).decide_all()

    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (f"decided 3 notifications ({first} to {last}), 4 alerts: 3 queued, "
                    "1 duplicate, 0 skipped")

    caplog.clear()
    alone = append(store, body("NoFirstApiCall", ["d"]))
    more = [append(store, body("NoFirstApiCall", [user])) for user in ("e", "f")]
    with caplog.at_level(logging.DEBUG, logger="nudge.decider"):
        decider = Decider(store, AlertPolicy())
        decider.decide_batch(max_notifications=1)
        decider.decide_all()
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    # Decided alone, a notification keeps its own line at INFO.
    assert info[0].startswith(f"notification {alone} from receiver=nudge")
    assert info[0].endswith("1 alerts (firing): 1 queued, 0 duplicate, 0 skipped")
    assert info[1].startswith("decided 2 notifications")
    assert [m for m in debug if m.startswith("notification ")] == [
        m for n in more for m in debug if m.startswith(f"notification {n} from")]
    assert len([m for m in debug if m.startswith("notification ")]) == 2


def test_on_sqlite_every_statement_of_a_decision_batch_finds_its_rows_through_an_index(store):
    """Deciding must not slow down as users accumulate. Written as `(rule, user_id) IN
    (VALUES ...)`, the cooldown lookup scanned the whole table in every batch: at 600,000
    users the decider ran at a quarter of its speed on an empty database."""
    decider = Decider(store, AlertPolicy())
    append(store, body("NoFirstApiCall", [f"early{n}" for n in range(20)]), 20)
    decider.decide_batch()  # cooldowns and deliveries now have rows a scan would read
    append(store, body("NoFirstApiCall", [f"later{n}" for n in range(20)]), 20)
    append(store, body("NoFirstApiCall", [f"early{n}" for n in range(5)]), 5)  # repeats
    conn = store._connection().conn  # the store's own connection in this thread
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        decider.decide_batch()
    finally:
        conn.set_trace_callback(None)
    assert any("cooldowns" in s for s in statements), statements
    scans = {}
    for statement in statements:
        if not statement.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
            continue
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement)]
        for step in plan:
            # A scan of a table that grows with users; constant rows and the pairs themselves
            # (a VALUES list or a subquery's result) are fine.
            # So is the partial index that holds only the undecided notifications.
            if step.endswith("USING INDEX notifications_pending"):
                continue
            if step.startswith("SCAN ") and step.split()[1] in (
                    "cooldowns", "deliveries", "decisions", "notifications", "c", "d"):
                scans[statement[:120]] = step
    assert scans == {}
