"""`nudge copy-database`: moving an installation from SQLite to PostgreSQL keeps its memory."""

from __future__ import annotations

import json
import threading

from app import create_app
from app.config import load_config
from app.store import open_store
from app.worker import DeliveryWorker
from tests.conftest import TOKEN, fixture_bytes, load_fixture, post_and_decide
from tests.processes import wait_until

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_after_the_move_repeats_are_duplicates_and_unsubscribes_hold(
        client, runner, config_data, postgres_server, tmp_path):
    # History on SQLite: u1's onboarding email, five UsageDropped emails, u2 unsubscribed.
    assert post_and_decide(client, fixture_bytes("firing-per-user.json"), AUTH).json["queued"] == 1
    assert post_and_decide(client, fixture_bytes("grouped-five-users.json"),
                           AUTH).json["queued"] == 5
    assert runner("suppress", "add", "u2").exit_code == 0
    target = postgres_server.create_database()

    result = runner("copy-database", target)
    assert result.exit_code == 0, result.output
    assert "6 deliveries" in result.output and "1 suppressions" in result.output
    assert "pg-test-secret" not in result.output and ":***@" in result.output

    again = runner("copy-database", target)
    assert again.exit_code == 1
    assert "not empty" in again.output and len(again.output.strip().splitlines()) == 1

    moved = {**config_data, "database": target,
             "delivery": {"outbox_dir": str(tmp_path / "outbox-pg")}}
    app = create_app(moved)
    pg_client = app.test_client()
    # The same episode again: a duplicate of the delivery made before the move.
    repeat = post_and_decide(pg_client, fixture_bytes("firing-per-user.json"), AUTH).json
    assert (repeat["queued"], repeat["duplicate"]) == (0, 1)
    # A new episode within the cooldown: skipped, the cooldown came along too.
    payload = load_fixture("firing-per-user.json")
    payload["alerts"][0]["startsAt"] = "2026-11-23T08:00:00Z"
    later = post_and_decide(pg_client, json.dumps(payload), AUTH).json
    assert later["skipped"] == 1

    # The queue came along: the worker on PostgreSQL sends it, except to unsubscribed u2.
    config = load_config(data=moved, environ={})
    worker = DeliveryWorker(config)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    store = open_store(target)
    try:
        rows = wait_until(lambda: (r := store.list_deliveries()) and all(
            x["status"] not in ("queued", "sending") for x in r) and r, timeout=30,
            message="queue drained")
    finally:
        worker.stop()
        thread.join(timeout=30)
    statuses = {(r["user_id"], r["rule"]): r["status"] for r in rows}
    assert statuses[("u2", "UsageDropped")] == "suppressed"
    assert [k for k, v in statuses.items() if v == "suppressed"] == [("u2", "UsageDropped")]
    store.close_all()
    app.extensions["nudge_store"].close_all()
