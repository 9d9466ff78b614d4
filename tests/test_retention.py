"""Retention: old history is deleted (by `nudge prune` and by the worker on its own), the
database stops growing, raw bodies leave the files, and pruning never causes a re-send."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from app.config import ConfigError, load_config
from app.store import journal_files, open_store
from tests.conftest import decide
from tests.processes import NudgeProcess, wait_until
from tests.smtp_servers import RecordingServer
from tests.test_delivery import (
    RunningWorker,
    build_config,
    make_alert,
    make_payload,
    post,
    wait_for_statuses,
)

ADDRESS = "grace.hopper@example.com"


def count(database: Path, table: str, where: str = "1") -> int:
    db = sqlite3.connect(database, timeout=10)
    try:
        return db.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}").fetchone()[0]
    finally:
        db.close()


def disk_bytes(database: Path) -> int:
    """What `du` would say of the database: the file and its write-ahead log."""
    return sum(p.stat().st_size for p in database.parent.glob(database.name + "*") if p.is_file())


def checkpoint(database: Path) -> None:
    db = sqlite3.connect(database, timeout=10)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def files_mentioning(folder: Path, text: str) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


# --- the setting ------------------------------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [
    (None, 90 * 86400), ("30d", 30 * 86400), ("12h", 12 * 3600),
    ("forever", None), (0, None), ("0", None), ("", None),
])
def test_retention_setting(value, seconds):
    data = {} if value is None else {"retention": value}
    assert load_config(data=data, environ={}).retention == seconds


def test_a_bad_retention_is_one_clear_line():
    with pytest.raises(ConfigError) as error:
        load_config(data={"retention": "3 months"}, environ={})
    (line,) = error.value.problems
    assert "retention: expected a duration like 90d, or 'forever'" in line


# --- pruning never causes a re-send -----------------------------------------------------------


def test_pruning_then_replaying_the_same_notifications_sends_nothing_again(
        config_data, client, runner):
    cooldown = {"nudge_cooldown": "1s"}  # the cooldown alone would let both episodes through
    first = make_payload(make_alert("u1", labels={"email": ADDRESS}, annotations=cooldown))
    second = make_payload(make_alert("u1", labels={"email": ADDRESS}, annotations=cooldown,
                                     starts_at="2026-11-23T08:00:00Z"))
    with RecordingServer() as smtp:
        config = build_config(config_data, smtp={"url": smtp.url})
        assert post(client, first)["queued"] == 1
        with RunningWorker(config):
            wait_for_statuses(config, {1: "sent"})
        time.sleep(1.1)
        assert post(client, second)["queued"] == 1
        with RunningWorker(config):
            wait_for_statuses(config, {2: "sent"})
        assert len(smtp.messages) == 2
        time.sleep(1.1)

        result = runner("prune", "--older-than", "1s")
        assert result.exit_code == 0, result.output
        assert "raw notification bodies  2" in result.output
        assert "decisions                2" in result.output
        assert "deliveries reduced to their dedup key  1" in result.output
        assert runner("decisions").output.strip() == "no decisions"

        # Alertmanager repeats both episodes, well past the 1 s cooldown.
        assert post(client, first)["duplicate"] == 1
        assert post(client, second)["duplicate"] == 1
        with RunningWorker(config):
            time.sleep(1.0)  # room for a (wrong) send
    assert len(smtp.messages) == 2
    listed = json.loads(runner("deliveries", "--json").output)
    assert [(d["id"], d["status"]) for d in listed] == [(2, "sent"), (1, "sent")]
    assert listed[0]["recipient"] == ADDRESS  # the latest delivery of (rule, user) stays whole
    decisions = json.loads(runner("decisions", "--json").output)
    assert [(d["outcome"], d["delivery_id"]) for d in decisions] == [
        ("duplicate", 2), ("duplicate", 1)]


# --- the database stops growing, raw bodies leave the files -----------------------------------


def big_notification(n: int) -> dict:
    # ~100 kB a notification, like an alert group with long annotations; no template: skipped.
    alert = make_alert(f"u{n}", labels={"email": ADDRESS, "email_template": ""},
                       annotations={"description": "x" * 100_000})
    return make_payload(alert)


def ingest(client, app, rounds: int) -> None:
    for n in range(rounds):
        response = client.post("/webhook", data=json.dumps(big_notification(n)),
                               headers={"Authorization": "Bearer s3cret"})
        assert response.status_code == 200
    decide(app)


def test_pruned_space_is_reused_and_raw_bodies_leave_the_database(app, client, runner,
                                                                 config_data):
    database = Path(config_data["database"])
    ingest(client, app, 30)
    checkpoint(database)
    full = disk_bytes(database)
    assert full > 3_000_000
    assert count(database, "notifications") == 30

    time.sleep(1.1)
    dry = runner("prune", "--older-than", "1s", "--dry-run")
    assert "would delete history older than 1s" in dry.output
    assert "raw notification bodies  30" in dry.output
    assert count(database, "notifications") == 30
    result = runner("prune", "--older-than", "1s")
    assert result.exit_code == 0, result.output
    assert count(database, "notifications") == 0 and count(database, "decisions") == 0
    checkpoint(database)
    # (the journal file this receiver still appends to is the next test's subject)
    assert [p.name for p in database.parent.glob(database.name + "*")
            if p.is_file() and ADDRESS.encode() in p.read_bytes()] == []

    # The same load again fills the freed pages: the database does not grow.
    ingest(client, app, 30)
    checkpoint(database)
    assert disk_bytes(database) < full * 1.15


def test_journal_files_keep_no_decided_body_and_never_lose_an_undecided_one(
        app, client, config_data, monkeypatch):
    monkeypatch.setattr(journal_files, "ROTATE_SECONDS", 0.0)
    database = Path(config_data["database"])
    incoming = Path(f"{database}-incoming")
    payload = make_payload(make_alert("u1", labels={"email": ADDRESS}))
    assert client.post("/webhook", json=payload,
                       headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert files_mentioning(incoming, ADDRESS)  # journaled, not decided yet
    assert decide(app) == 1

    # This receiver appends again later (an hour later in production): it moves to a new
    # file and the decided one goes.
    undecided = make_payload(make_alert("u2", labels={"email": "still@example.com"}))
    assert client.post("/webhook", json=undecided,
                       headers={"Authorization": "Bearer s3cret"}).status_code == 200
    store = open_store(database)
    try:
        store.prune_journal_files()
        assert files_mentioning(incoming, ADDRESS) == []
        assert files_mentioning(incoming, "still@example.com")  # still being appended
        assert [json.loads(p.body)["alerts"][0]["labels"]["user_id"]
                for p in store.pending_notifications(10, 100)] == ["u2"]
    finally:
        store.close()


# --- the worker applies `retention` by itself -------------------------------------------------


def test_the_worker_prunes_on_its_own(tmp_path, config_data, client):
    database = Path(config_data["database"])
    payload = make_payload(make_alert("u1", labels={"email_template": ""}))  # skipped
    assert client.post("/webhook", json=payload,
                       headers={"Authorization": "Bearer s3cret"}).status_code == 200
    worker = NudgeProcess(tmp_path, {**config_data, "retention": "2s"},
                          command=("worker",)).start()
    try:
        wait_until(lambda: count(database, "decisions") == 1, message="decided")
        wait_until(lambda: count(database, "notifications") == 0
                   and count(database, "decisions") == 0, timeout=15,
                   message=f"pruned; log:\n{worker.output}")
    finally:
        assert worker.stop() == 0, worker.output
    assert "pruned history older than 2s" in worker.output


def test_the_worker_prunes_hourly_or_ten_times_per_shorter_window():
    from app.retention import cutoff, prune_interval

    assert prune_interval(90 * 86400) == 3600
    assert prune_interval(600) == 60
    assert prune_interval(2) == 1  # never busier than once a second
    assert cutoff(1000.0, 10.0) == 990.0
    assert cutoff(1000.0, None) is None
