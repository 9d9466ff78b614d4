"""The store contract for holding emails back (send_gate, cancel_resolved), on both engines:
real SQLite files and a real PostgreSQL cluster (fixtures from tests/test_store.py)."""

from __future__ import annotations

import json
import threading
import time

from app.store import CANCELLED, DEAD, DROPPED, QUEUED, SENDING, SENT
from tests import test_store as contract
from tests.test_store import entry, new_delivery, record

# The contract suite's fixtures: a fresh, migrated database per engine.
database, opened, store = contract.database, contract.opened, contract.store

DAY = 86400.0
KEYS: dict[int, str] = {}  # delivery id -> its dedup key


def queue(store, user="u1", rule="NoFirstApiCall", annotations=None) -> int:
    (notification_id,) = store.append_notifications([entry()])
    delivery = new_delivery(notification_id, user, rule, key=f"{rule}/{user}/{notification_id}")
    if annotations:
        alert = json.loads(delivery.alert_json)
        alert["annotations"] = annotations
        delivery = delivery.__class__(**{**delivery.__dict__, "alert_json": json.dumps(alert)})
    with store.deciding([notification_id]) as batch:
        delivery_id = batch.add_delivery(delivery, time.time())
        batch.add_decisions([record(notification_id, delivery_id=delivery_id, user=user)],
                            time.time())
    KEYS[delivery_id] = delivery.dedup_key
    return delivery_id


def claim(store, delivery_id, now=None):
    now = time.time() if now is None else now
    claimed = {d.id: d for d in store.claim_due(now, 60.0, limit=50)}
    for other in claimed.values():  # only this one
        if other.id != delivery_id:
            store.release(other, now)
    return claimed[delivery_id]


def row(store, delivery_id):
    (found,) = [r for r in store.list_deliveries() if r["id"] == delivery_id]
    return found


def test_a_hold_is_not_an_attempt_and_comes_back_when_due(store):
    delivery_id = queue(store)
    now = time.time()
    delivery = claim(store, delivery_id, now)
    with store.send_gate(delivery, now, DAY) as gate:
        assert gate.facts.current and not gate.facts.held and gate.facts.waited == 0
        gate.hold(now + 30, "quiet_hours", "waiting: quiet hours until 08:00 Asia/Tokyo")
    held = row(store, delivery_id)
    assert (held["status"], held["attempts"]) == (QUEUED, 0)
    assert held["note"] == "waiting: quiet hours until 08:00 Asia/Tokyo"
    assert store.list_attempts(delivery_id) == []
    assert [e["event"] for e in store.list_delivery_events(delivery_id)] == ["held"]
    assert store.claim_due(now + 29, 60.0, limit=5) == []
    assert store.queue_stats(now).depth == 0  # waiting on purpose is not a backlog

    again = claim(store, delivery_id, now + 31)
    assert again.attempts == 1
    with store.send_gate(again, now + 31, DAY) as gate:
        assert gate.facts.held and gate.facts.hold_reason == "quiet_hours"
        assert 30 <= gate.facts.waited <= 32
        # Looking again and waiting for the same reason adds no event.
        gate.hold(now + 60, "quiet_hours", "waiting: quiet hours until 08:00 Asia/Tokyo")
    assert len(store.list_delivery_events(delivery_id)) == 1

    last = claim(store, delivery_id, now + 61)
    with store.send_gate(last, now + 61, DAY) as gate:
        gate.send(True, "quiet_hours", "sent after waiting 1m")
    assert store.settle(last, SENT, now + 62, recipient="ada@example.com")
    events = store.list_delivery_events(delivery_id)
    assert [(e["event"], e["reason"]) for e in events] == [("held", "quiet_hours"),
                                                          ("released", "quiet_hours")]
    assert row(store, delivery_id)["status"] == SENT


def test_sends_that_count_are_seen_by_the_users_next_email_only(store):
    first, second, other = queue(store, "u1", "A"), queue(store, "u1", "B"), queue(store, "u2")
    now = time.time()
    delivery = claim(store, first, now)
    with store.send_gate(delivery, now, DAY) as gate:
        assert gate.facts.recent_sends == []
        assert {w.id for w in gate.facts.waiting} == {second}  # not u2's, not itself
        gate.send(True, "allowed", "sent")
    store.settle(delivery, SENT, now)

    nxt = claim(store, second, now + 1)
    with store.send_gate(nxt, now + 1, DAY) as gate:
        assert gate.facts.recent_sends == [now]
        gate.hold(now + DAY, "frequency_cap", "waiting: 1 email sent in the last 1d (limit 1)")
    theirs = claim(store, other, now + 1)
    with store.send_gate(theirs, now + 1, DAY) as gate:
        assert gate.facts.recent_sends == []
        gate.send(False, "essential", "sent")  # does not count
    store.settle(theirs, SENT, now + 1)
    # Outside the period the send no longer counts.
    later = claim(store, second, now + DAY + 1)
    with store.send_gate(later, now + DAY + 1, DAY) as gate:
        assert gate.facts.recent_sends == []
        gate.send(True, "frequency_cap", "sent after waiting 1d")


def test_a_slot_is_given_back_when_the_send_fails(store):
    first, second = queue(store), queue(store, rule="B")
    now = time.time()
    delivery = claim(store, first, now)
    with store.send_gate(delivery, now, DAY) as gate:
        gate.send(True, "allowed", "sent")
    store.settle(delivery, QUEUED, now, error="421 try later", retry_at=now + 5)
    nxt = claim(store, second, now + 1)
    with store.send_gate(nxt, now + 1, DAY) as gate:
        assert gate.facts.recent_sends == []
        assert [(w.id, w.annotations) for w in gate.facts.waiting] == [(first, {})]


def test_a_slot_is_given_back_when_the_claim_is_released_unsent(store):
    first, second = queue(store), queue(store, rule="B")
    now = time.time()
    delivery = claim(store, first, now)
    with store.send_gate(delivery, now, DAY) as gate:
        gate.send(True, "allowed", "sent")
    store.release(delivery, now)  # e.g. shutting down, or sending paused, before the send
    nxt = claim(store, second, now + 1)
    with store.send_gate(nxt, now + 1, DAY) as gate:
        assert gate.facts.recent_sends == []


def test_the_waiting_emails_carry_their_rules_annotations(store):
    top = queue(store, rule="QuotaNearlyExhausted", annotations={"nudge_priority": "10"})
    mine = queue(store, rule="UsageDrop")
    now = time.time()
    delivery = claim(store, mine, now)
    with store.send_gate(delivery, now, DAY) as gate:
        (waiting,) = gate.facts.waiting
        assert (waiting.id, waiting.rule, waiting.annotations) == (
            top, "QuotaNearlyExhausted", {"nudge_priority": "10"})
        gate.hold(now + 5, "priority", "waiting: QuotaNearlyExhausted (priority 10) goes first")


def test_dropped_and_cancelled_emails_leave_the_queue_with_their_reason(store):
    old, resolved = queue(store), queue(store, rule="B")
    now = time.time()
    delivery = claim(store, old, now)
    with store.send_gate(delivery, now, DAY) as gate:
        gate.finish(DROPPED, "max_wait", "dropped: waited longer than limits.max_wait (3d)")
    dropped = row(store, old)
    assert (dropped["status"], dropped["attempts"]) == (DROPPED, 0)
    assert dropped["note"].startswith("dropped: waited longer")
    assert store.list_attempts(old) == []
    delivery = claim(store, resolved, now)
    with store.send_gate(delivery, now, DAY) as gate:
        gate.finish(CANCELLED, "alert_resolved", "cancelled: alert resolved before sending")
    assert row(store, resolved)["status"] == CANCELLED
    assert store.claim_due(now + DAY, 60.0, limit=5) == []
    assert store.list_deliveries(status=DROPPED)[0]["id"] == old


def test_a_resolved_alert_cancels_a_waiting_email_and_marks_one_being_sent(store):
    waiting, sending, sent = queue(store), queue(store, rule="B"), queue(store, rule="C")
    now = time.time()
    claimed = {d.id: d for d in store.claim_due(now, 60.0, limit=5)}
    store.release(claimed[waiting], now)
    store.settle(claimed[sent], SENT, now)
    keys = {delivery_id: KEYS[delivery_id] for delivery_id in (waiting, sending, sent)}
    (notification_id,) = store.append_notifications([entry()])
    with store.deciding([notification_id]) as batch:
        found = batch.cancel_resolved([*keys.values(), "no/such/key"], now)
        batch.add_decisions([], now)
    assert found == {keys[waiting]: (waiting, QUEUED), keys[sending]: (sending, SENDING),
                     keys[sent]: (sent, SENT)}
    assert row(store, waiting)["status"] == CANCELLED
    assert row(store, waiting)["note"] == "cancelled: alert resolved before sending"
    assert [e["event"] for e in store.list_delivery_events(waiting)] == [CANCELLED]
    assert row(store, sent)["status"] == SENT
    # The one being sent learns it at its send step.
    with store.send_gate(claimed[sending], now, DAY) as gate:
        assert gate.facts.resolved
        gate.finish(CANCELLED, "alert_resolved", "cancelled: alert resolved before sending")
    assert row(store, sending)["status"] == CANCELLED


def test_a_requeued_delivery_starts_with_no_time_held(store):
    """`nudge retry` gives a fresh max_age clock: earlier holds no longer count either."""
    delivery_id = queue(store)
    now = time.time()
    with store.send_gate(claim(store, delivery_id, now), now, DAY) as gate:
        gate.hold(now + 60, "quiet_hours", "waiting: quiet hours until 08:00 UTC")
    again = claim(store, delivery_id, now + 61)
    with store.send_gate(again, now + 61, DAY) as gate:
        assert gate.facts.waited >= 60
        gate.send(True, "quiet_hours", "released after waiting 1m")
    store.settle(again, DEAD, now + 62, error="gave up")
    assert store.requeue([delivery_id], now + 63, "relay fixed") == [delivery_id]
    fresh = claim(store, delivery_id, time.time() + 64)
    with store.send_gate(fresh, time.time(), DAY) as gate:
        assert gate.facts.waited == 0 and not gate.facts.held


def test_a_claim_taken_over_is_not_judged(store):
    delivery_id = queue(store)
    now = time.time()
    first = store.claim_due(now, 1.0)[0]
    store.claim_due(now + 2, 60.0)  # the lease ran out; another sender claims it
    with store.send_gate(first, now + 2, DAY) as gate:
        assert not gate.facts.current
    assert row(store, delivery_id)["status"] == SENDING


def test_two_senders_of_one_user_take_turns_so_the_cap_holds(opened, store):
    first, second = queue(store, rule="A"), queue(store, rule="B")
    now = time.time()
    claimed = {d.id: d for d in store.claim_due(now, 60.0, limit=5)}
    other_process = opened()  # its own connections, as another worker or replica would
    inside = threading.Event()
    seen: list[list[float]] = []

    def slow_sender():
        with store.send_gate(claimed[first], now, DAY) as gate:
            inside.set()
            time.sleep(0.5)  # judging and taking the slot while the other one waits
            gate.send(True, "allowed", "sent")

    thread = threading.Thread(target=slow_sender)
    thread.start()
    assert inside.wait(10)
    with other_process.send_gate(claimed[second], now, DAY) as gate:
        seen.append(list(gate.facts.recent_sends))
        # Being sent with its slot taken: counted as a send, not also as waiting ahead.
        assert gate.facts.waiting == []
        gate.hold(now + DAY, "frequency_cap", "waiting")
    thread.join()
    assert seen == [[now]]
