"""`nudge retry`: failed and dead deliveries go back in the queue after a setup mistake is
fixed, with a fresh attempt budget, recorded in their history, and are sent once."""

from __future__ import annotations

import json
import time

import pytest
import requests

from app.config import load_config
from app.store import open_store
from tests.conftest import TOKEN
from tests.processes import NudgeProcess, wait_until
from tests.smtp_servers import RecordingServer, RejectingServer
from tests.test_delivery import (
    RunningWorker,
    attempt_log,
    build_config,
    make_alert,
    make_payload,
    merged,
    post,
    wait_for_statuses,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def webhook(process: NudgeProcess, payload: dict) -> None:
    response = requests.post(process.url + "/webhook", data=json.dumps(payload), headers={
        **AUTH, "Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 200, response.text


def decision_outcomes(config) -> list[str]:
    store = open_store(config.database)
    try:
        return [row["outcome"] for row in reversed(store.list_decisions())]
    finally:
        store.close()


def test_a_dead_delivery_requeued_by_nudge_retry_arrives_once_and_repeats_stay_duplicates(
        tmp_path, config_data, runner):
    payload = make_payload(make_alert("u1", labels={"email": "ada@example.com"}))
    settings = merged(config_data, {"delivery": {
        "max_attempts": 2, "retry_backoff": "0.05s", "max_age": "3s"}})
    config = load_config(data=settings, environ={})
    # A relay that rejects everyone (a setup mistake), then the fixed one, which still
    # answers one transient 451: the requeued delivery needs its fresh budget and clock.
    with RejectingServer(451, "4.3.0 relay access denied", stage="RCPT") as broken, \
            RejectingServer(451, "4.3.0 try again", stage="RCPT", times=1) as fixed:
        before = NudgeProcess(tmp_path, merged(settings, {"smtp": {"url": broken.url}})).start()
        try:
            webhook(before, payload)
            wait_for_statuses(config, {1: "dead"})
        finally:
            assert before.stop() == 0, before.output
        assert broken.rejected == 2

        after = NudgeProcess(tmp_path, merged(settings, {"smtp": {"url": fixed.url}})).start()
        try:
            webhook(after, payload)  # Alertmanager's repeat: a duplicate, nothing is sent
            wait_until(lambda: decision_outcomes(config) == ["queued", "duplicate"],
                       message="the repeat decided")
            # Older than max_age by now: without a fresh clock the 451 would make it dead.
            time.sleep(max(0.0, 3.5 - (time.time() - config_age_start(config))))

            dry = runner("retry", "--status", "dead", "--dry-run")
            assert dry.exit_code == 0, dry.output
            assert "would requeue 1 delivery" in dry.output
            assert "relay access denied" in dry.output
            wait_for_statuses(config, {1: "dead"}, timeout=1)

            result = runner("retry", "1")
            assert result.exit_code == 0, result.output
            assert "requeued 1 delivery" in result.output

            (delivery,) = wait_for_statuses(config, {1: "sent"})
            (message,) = fixed.wait_for(1, timeout=30)

            webhook(after, payload)  # another repeat after the retry: still a duplicate
            wait_until(lambda: len(decision_outcomes(config)) == 3, message="repeat decided")
            time.sleep(1.0)  # room for a (wrong) second send
        finally:
            assert after.stop() == 0, after.output
    assert message.rcpt_tos == ("ada@example.com",)
    assert len(fixed.messages) == 1 and fixed.rejected == 1
    assert decision_outcomes(config) == ["queued", "duplicate", "duplicate"]
    assert delivery["attempts"] == 2
    log = attempt_log(config, 1)
    assert [a["outcome"] for a in log] == ["retry", "dead", "requeued", "retry", "sent"]
    assert log[2]["error"].startswith("requeued by nudge retry; was dead after 2 attempts: ")
    shown = runner("deliveries", "--attempts")
    assert "requeued by nudge retry" in shown.output


def config_age_start(config) -> float:
    from app.alerts import parse_time

    store = open_store(config.database)
    try:
        return parse_time(store.list_deliveries()[0]["created_at"]).timestamp()
    finally:
        store.close()


@pytest.fixture
def failures(config_data, app):
    """Delivery 1 dead (u1, NoFirstApiCall), 2 failed (u2, NoFirstApiCall), 3 sent (u3,
    UsageDropped)."""
    with RejectingServer(450, "4.2.0 greylisted", stage="RCPT", times=2) as server:
        config = build_config(config_data, smtp={"url": server.url},
                              delivery={"max_attempts": 2})
        client = app.test_client()
        post(client, make_payload(make_alert("u1", labels={"email": "u1@example.com"})))
        with RunningWorker(config):
            wait_for_statuses(config, {1: "dead"})
    with RecordingServer() as server:
        config = build_config(config_data, smtp={"url": server.url})
        post(client, make_payload(make_alert("u2")))  # no address anywhere: failed
        post(client, make_payload(make_alert("u3", labels={"email": "u3@example.com"},
                                             rule="UsageDropped", template="usage_drop")))
        with RunningWorker(config):
            wait_for_statuses(config, {2: "failed", 3: "sent"})
    return config


def statuses(config) -> dict[int, str]:
    store = open_store(config.database)
    try:
        return {row["id"]: row["status"] for row in store.list_deliveries()}
    finally:
        store.close()


def test_retry_needs_a_selection(failures, runner):
    result = runner("retry")
    assert result.exit_code == 2
    assert "say which deliveries" in result.output
    assert statuses(failures) == {1: "dead", 2: "failed", 3: "sent"}


@pytest.mark.parametrize("options, expected", [
    (["--all"], [1, 2]),
    (["--status", "failed"], [2]),
    (["--user", "u1"], [1]),
    (["--rule", "NoFirstApiCall", "--status", "dead", "--status", "failed"], [1, 2]),
    (["--since", "1h"], [1, 2]),
    (["--until", "1h"], []),
    (["--since", "2000-01-01T00:00:00Z", "--until", "2999-01-01"], [1, 2]),
])
def test_dry_run_lists_what_each_selection_would_requeue_and_changes_nothing(
        failures, runner, options, expected):
    result = runner("retry", *options, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert [row["id"] for row in json.loads(result.output)] == expected
    assert statuses(failures) == {1: "dead", 2: "failed", 3: "sent"}


def test_retry_of_a_delivery_that_is_not_failed_or_dead_says_so(failures, runner):
    result = runner("retry", "2", "3")
    assert result.exit_code == 1
    assert "requeued 1 delivery" in result.stdout
    assert "not requeued (no such delivery, not failed or dead" in result.stderr
    assert result.stderr.strip().endswith(": 3")
    assert statuses(failures)[2] == "queued" and statuses(failures)[3] == "sent"


def test_a_bad_time_is_one_clear_error(failures, runner):
    result = runner("retry", "--since", "yesterday-ish")
    assert result.exit_code == 2
    assert "--since" in result.output and "expected a duration ago" in result.output
