"""The hold step inside delivery: a real SQLite file, a static map with the user's time zone
and a real SMTP server on loopback."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.clock import iso
from app.delivery import Deliverer
from app.store import DecisionRecord, NewDelivery, open_store
from app.transports import transport_factory
from tests.smtp_servers import RecordingServer, RejectingServer
from tests.test_delivery import build_config

TOKYO = ZoneInfo("Asia/Tokyo")


def window_around_now(zone: ZoneInfo, minutes: int = 60) -> str:
    local = datetime.now(UTC).astimezone(zone)
    return (f"{local - timedelta(minutes=minutes):%H:%M}-"
            f"{local + timedelta(minutes=minutes):%H:%M}")


@pytest.fixture
def users(tmp_path):
    path = tmp_path / "users.yml"
    path.write_text("u1: {email: ada@example.com, name: Ada, timezone: Asia/Tokyo}\n")
    return path


def queue_delivery(store, annotations=None) -> int:
    from app.store import JournalEntry

    (notification_id,) = store.append_notifications([JournalEntry(
        time.time(), "nudge", "firing", "{}", 1, 0, "{}")])
    alert = {"labels": {"alertname": "NoFirstApiCall", "user_id": "u1"},
             "annotations": annotations or {}, "startsAt": "2026-11-22T20:04:34Z"}
    with store.deciding([notification_id]) as batch:
        delivery_id = batch.add_delivery(NewDelivery(
            f"key-{notification_id}", notification_id, "NoFirstApiCall", "u1",
            "onboarding_first_call", "firing", "2026-11-22T20:04:34Z", json.dumps(alert),
            "http://alertmanager:9093", None), time.time())
        batch.add_decisions([DecisionRecord(
            notification_id, "NoFirstApiCall", "u1", "firing", "2026-11-22T20:04:34Z", "fp",
            "queued", "new_episode", "", delivery_id)], time.time())
    return delivery_id


def deliver_once(config, store, server, when=None):
    deliverer = Deliverer(config, store)
    transport = transport_factory(config.smtp_url, config.outbox_dir)()
    try:
        (delivery,) = store.claim_due(when or time.time(), 60.0)
        return deliverer.deliver(transport, delivery)
    finally:
        transport.close()
        deliverer.close()


def the_row(store):
    (row,) = store.list_deliveries()
    return row


def test_inside_the_users_quiet_hours_the_email_waits_and_is_no_attempt(config_data, users):
    with RecordingServer() as server:
        config = build_config(config_data, smtp={"url": server.url},
                              recipients={"static_map": str(users)},
                              quiet_hours={"window": window_around_now(TOKYO)})
        store = open_store(config.database)
        store.migrate()
        queue_delivery(store)
        assert deliver_once(config, store, server) == "queued"
        assert server.messages == []
        row = the_row(store)
        assert row["note"].startswith("waiting: quiet hours until ")
        assert row["note"].endswith(" Asia/Tokyo")
        assert (row["status"], row["attempts"]) == ("queued", 0)
        assert store.claim_due(time.time(), 60.0) == []
        store.close()


def test_an_essential_email_goes_out_inside_quiet_hours(config_data, users):
    with RecordingServer() as server:
        config = build_config(config_data, smtp={"url": server.url},
                              recipients={"static_map": str(users)},
                              quiet_hours={"window": window_around_now(TOKYO)},
                              limits={"per_user": 1})
        store = open_store(config.database)
        store.migrate()
        queue_delivery(store, {"nudge_essential": "true"})
        assert deliver_once(config, store, server) == "sent"
        assert [m.rcpt_tos for m in server.messages] == [("ada@example.com",)]
        store.close()


def test_time_held_back_does_not_count_against_max_age(config_data, users):
    """Held for two hours, then the relay answers 451: with delivery.max_age 1h the email is
    retried, not dead, because its age leaves out the time it waited on purpose."""
    with RejectingServer(451, "4.3.2 try again later", stage="MAIL") as server:
        config = build_config(config_data, smtp={"url": server.url},
                              recipients={"static_map": str(users)},
                              limits={"per_user": 5}, delivery={"max_age": "1h"})
        store = open_store(config.database)
        store.migrate()
        delivery_id = queue_delivery(store)
        two_hours_ago = time.time() - 7200
        db = sqlite3.connect(config.database)
        with db:  # queued two hours ago, and held back ever since
            db.execute("UPDATE deliveries SET created_at = ?, held_since = ?, "
                       "hold_reason = 'quiet_hours' WHERE id = ?",
                       (iso(two_hours_ago), two_hours_ago, delivery_id))
        db.close()
        assert deliver_once(config, store, server) == "queued"
        row = the_row(store)
        assert row["last_error"] and "451" in row["last_error"]
        assert row["note"].startswith("released after waiting 2h")
        events = store.list_delivery_events(delivery_id)
        assert [(e["event"], e["reason"]) for e in events] == [("released", "quiet_hours")]
        store.close()


def test_the_cli_says_why_an_email_waits(config_data, users, runner):
    """`nudge deliveries` (WHY, and the hold under --attempts) and `nudge decisions` (NOW)."""
    with RecordingServer() as server:
        config = build_config(config_data, smtp={"url": server.url},
                              recipients={"static_map": str(users)},
                              quiet_hours={"window": window_around_now(TOKYO)})
        store = open_store(config.database)
        store.migrate()
        queue_delivery(store)
        assert deliver_once(config, store, server) == "queued"
        store.close()
    why = the_row(open_store(config.database))["note"]
    listing = runner("deliveries", "--attempts")
    assert listing.exit_code == 0, listing.output
    header, row, hold = listing.output.splitlines()[:3]
    assert header.split()[-1] == "WHY" and row.endswith(why)
    assert hold.strip().startswith("held ") and hold.endswith(why)
    decisions = runner("decisions")
    assert decisions.output.splitlines()[1].endswith(f"queued ({why})"), decisions.output


def resolve(store, delivery_id):
    """What the decider does when the delivery's alert resolves (cancel on resolve)."""
    from app.store import JournalEntry

    (notification_id,) = store.append_notifications([JournalEntry(
        time.time(), "nudge", "resolved", "{}", 1, 0, "{}")])
    with store.deciding([notification_id]) as batch:
        batch.cancel_resolved([f"key-{n}" for n in range(1, notification_id)], time.time())
        batch.add_decisions([], time.time())


def test_an_email_whose_alert_resolved_while_it_was_sent_and_failed_is_not_sent_again(
        config_data, users):
    """No cap and no quiet hours: the alert resolves while the email is being sent, the send
    fails for now; when it comes back it is cancelled, not sent."""
    with RecordingServer() as server:
        config = build_config(config_data, smtp={"url": server.url},
                              recipients={"static_map": str(users)})
        store = open_store(config.database)
        store.migrate()
        delivery_id = queue_delivery(store)
        (sending,) = store.claim_due(time.time(), 60.0)
        resolve(store, delivery_id)
        store.release(sending, time.time())  # as a send that failed for now comes back
        assert deliver_once(config, store, server) == "cancelled"
        assert server.messages == []
        assert the_row(store)["note"] == "cancelled: alert resolved before sending"
        store.close()


def test_nudge_retry_leaves_a_dead_email_whose_alert_resolved_since(config_data, users):
    from app.store import DEAD, RetrySelection

    with RejectingServer(550, "5.1.1 no such user", stage="RCPT") as server:
        config = build_config(config_data, smtp={"url": server.url},
                              recipients={"static_map": str(users)})
        store = open_store(config.database)
        store.migrate()
        delivery_id = queue_delivery(store)
        assert deliver_once(config, store, server) in ("failed", DEAD)
        assert [r["id"] for r in store.retryable(RetrySelection(ids=(delivery_id,)))] == [
            delivery_id]
        resolve(store, delivery_id)
        assert store.retryable(RetrySelection(ids=(delivery_id,))) == []
        assert store.requeue([delivery_id], time.time(), "requeued by nudge retry") == []
        store.close()
