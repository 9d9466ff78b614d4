"""The operator commands: deliveries, decisions, suppress, preview, send-test.

Run through click's CliRunner against the same config file and SQLite database the app
uses; deliveries come from real webhook posts and a real worker run into the file outbox.
"""

from __future__ import annotations

import json
import re
import threading
from email import message_from_bytes, message_from_string, policy
from pathlib import Path

import pytest
import yaml

from app.config import load_config
from app.store import open_store
from app.worker import DeliveryWorker
from tests.conftest import FIXTURES, fixture_bytes, post_and_decide
from tests.processes import wait_until
from tests.smtp_servers import RecordingServer, RejectingServer


def post(client, auth, name: str) -> dict:
    response = post_and_decide(client, fixture_bytes(name), auth)
    assert response.status_code == 200, response.json
    return response.json


def drain_queue(config_data: dict) -> None:
    """Run the real worker (file outbox) until nothing is queued or sending."""
    config = load_config(data=config_data, environ={})
    worker = DeliveryWorker(config)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    store = open_store(config.database)
    try:
        wait_until(
            lambda: all(r["status"] not in ("queued", "sending") for r in store.list_deliveries()),
            timeout=30, message="queue drained",
        )
    finally:
        worker.stop()
        thread.join(timeout=30)
        store.close()


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def one_line_error(result) -> str:
    (line,) = lines(result.output)
    return line


@pytest.fixture
def history(client, auth, runner, config_data, tmp_path):
    """u0 unsubscribed; five UsageDropped emails (u0 suppressed, u1-u3 sent, u4 failed: no
    address); a repeat with resolved alerts (duplicates and skips); then one NoFirstApiCall
    for u1 still queued."""
    static_map = tmp_path / "users.yml"
    static_map.write_text("".join(f"u{n}: u{n}@example.com\n" for n in range(4)))
    config_data["recipients"] = {"static_map": str(static_map)}
    assert runner("suppress", "add", "u0").exit_code == 0
    assert post(client, auth, "grouped-five-users.json")["queued"] == 5
    drain_queue(config_data)  # sent before the alerts resolve (else they would be cancelled)
    assert post(client, auth, "grouped-mixed-resolved.json") == {
        "status": "accepted", "notification_id": 2, "queued": 0, "duplicate": 3, "skipped": 2,
    }
    assert post(client, auth, "firing-per-user.json")["queued"] == 1


# --- deliveries -----------------------------------------------------------------------------


def test_deliveries_table_lists_newest_first_with_status_and_error(history, runner):
    result = runner("deliveries")
    assert result.exit_code == 0, result.output
    header, *rows = lines(result.output)
    assert header.split() == ["ID", "CREATED_AT", "RULE", "USER_ID", "TEMPLATE", "KIND", "STATUS",
                              "ATTEMPTS", "RECIPIENT", "NEXT_ATTEMPT_AT", "LAST_ERROR", "WHY"]
    assert [row.split()[0] for row in rows] == ["6", "5", "4", "3", "2", "1"]
    newest = rows[0].split()
    assert newest[2:7] == ["NoFirstApiCall", "u1", "onboarding_first_call", "firing", "queued"]
    oldest = rows[-1]
    assert "u0" in oldest and "suppressed" in oldest and "user unsubscribed" in oldest
    assert "failed" in rows[1] and "no address" in rows[1]
    assert sum(" sent " in row for row in rows) == 3


def test_deliveries_json_includes_the_attempt_log(history, runner):
    result = runner("deliveries", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["id"] for row in rows] == [6, 5, 4, 3, 2, 1]
    by_id = {row["id"]: row for row in rows}
    assert by_id[6]["status"] == "queued" and by_id[6]["attempt_log"] == []
    assert by_id[6]["next_attempt_at"]
    assert by_id[1]["status"] == "suppressed"
    assert [a["outcome"] for a in by_id[1]["attempt_log"]] == ["suppressed"]
    assert (by_id[3]["status"], by_id[3]["recipient"]) == ("sent", "u2@example.com")
    assert [(a["outcome"], a["recipient"]) for a in by_id[3]["attempt_log"]] == [
        ("sent", "u2@example.com")
    ]
    assert by_id[5]["status"] == "failed"
    assert by_id[5]["last_error"] == (
        "no address: no address label; not in the static map; no directory configured"
    )


@pytest.mark.parametrize(
    ("options", "expected_ids"),
    [
        (("--user", "u1"), [6, 2]),
        (("--rule", "UsageDropped"), [5, 4, 3, 2, 1]),
        (("--status", "suppressed"), [1]),
        (("--status", "failed"), [5]),
        (("--status", "sent", "--user", "u3"), [4]),
        (("--rule", "UsageDropped", "--limit", "2"), [5, 4]),
        (("--user", "nobody"), []),
    ],
)
def test_deliveries_filters(history, runner, options, expected_ids):
    result = runner("deliveries", "--json", *options)
    assert result.exit_code == 0, result.output
    assert [row["id"] for row in json.loads(result.output)] == expected_ids


def test_deliveries_empty_result_and_bad_status(history, runner):
    empty = runner("deliveries", "--user", "nobody")
    assert empty.exit_code == 0 and empty.output.strip() == "no deliveries"
    bad = runner("deliveries", "--status", "lost")
    assert bad.exit_code == 2
    assert "Invalid value for '--status'" in bad.output


def test_deliveries_attempts_shows_every_attempt_under_each_delivery(history, runner):
    result = runner("deliveries", "--attempts", "--user", "u0")
    assert result.exit_code == 0, result.output
    header, row, attempt = lines(result.output)
    assert header.split()[0] == "ID" and row.split()[0] == "1"
    assert re.fullmatch(r"\s+attempt 1 \S+ suppressed user unsubscribed from all emails",
                        attempt), attempt

    sent = lines(runner("deliveries", "--attempts", "--user", "u3").output)
    assert re.fullmatch(r"\s+attempt 1 \S+ sent", sent[-1]), sent


# --- decisions ------------------------------------------------------------------------------


def test_decisions_show_duplicates_and_skips_with_reasons(history, runner):
    result = runner("decisions")
    assert result.exit_code == 0, result.output
    header, *rows = lines(result.output)
    assert header.split()[:8] == ["ID", "CREATED_AT", "RULE", "USER_ID", "ALERT_STATUS", "OUTCOME",
                                  "REASON", "DELIVERY_ID"]
    assert len(rows) == 11
    assert sum("duplicate" in r and "same_episode" in r for r in rows) == 3
    assert sum("skipped" in r and "resolved_not_requested" in r for r in rows) == 2
    assert sum("queued" in r and "new_episode" in r for r in rows) == 6

    for_u0 = json.loads(runner("decisions", "--json", "--user", "u0").output)
    assert [(d["alert_status"], d["outcome"], d["reason"]) for d in for_u0] == [
        ("resolved", "skipped", "resolved_not_requested"),
        ("firing", "queued", "new_episode"),
    ]
    assert for_u0[1]["delivery_id"] == 1
    assert for_u0[0]["detail"] == "rule does not ask for a resolved email"


def test_decisions_rule_filter_and_empty(history, runner):
    rows = json.loads(runner("decisions", "--json", "--rule", "NoFirstApiCall").output)
    assert [(d["user_id"], d["outcome"]) for d in rows] == [("u1", "queued")]
    assert runner("decisions", "--rule", "Nope").output.strip() == "no decisions"


# --- suppress -------------------------------------------------------------------------------


def test_suppress_add_list_remove(runner):
    assert runner("suppress", "list").output.strip() == "no suppressions"

    added = runner("suppress", "add", "u1")
    assert added.exit_code == 0 and added.output.strip() == "suppressed u1 for all emails"
    again = runner("suppress", "add", "u1")
    assert again.exit_code == 0 and "(already suppressed)" in again.output
    rule = runner("suppress", "add", "u2", "--rule", "NoFirstApiCall")
    assert rule.output.strip() == "suppressed u2 for rule NoFirstApiCall"

    listed = runner("suppress", "list")
    assert listed.exit_code == 0
    header, *rows = lines(listed.output)
    assert header.split() == ["USER_ID", "SCOPE", "SOURCE", "CREATED_AT"]
    assert sorted(row.split()[:3] for row in rows) == [["u1", "*", "cli"],
                                                       ["u2", "NoFirstApiCall", "cli"]]
    only_u2 = json.loads(runner("suppress", "list", "--user", "u2", "--json").output)
    assert [(s["user_id"], s["scope"]) for s in only_u2] == [("u2", "NoFirstApiCall")]

    removed = runner("suppress", "remove", "u2", "--rule", "NoFirstApiCall")
    assert removed.exit_code == 0, removed.output
    assert removed.output.strip() == "removed suppression of u2 (NoFirstApiCall)"
    assert runner("suppress", "remove", "u1").exit_code == 0
    assert runner("suppress", "list").output.strip() == "no suppressions"


def test_suppress_remove_of_something_not_suppressed_fails_with_one_line(runner):
    runner("suppress", "add", "u1", "--rule", "NoFirstApiCall")
    result = runner("suppress", "remove", "u1")  # only the rule scope exists, not "all"
    assert result.exit_code == 1
    assert one_line_error(result) == "Error: u1 is not suppressed for all emails"
    other = runner("suppress", "remove", "u9", "--rule", "UsageDropped")
    assert other.exit_code == 1
    assert one_line_error(other) == "Error: u9 is not suppressed for rule UsageDropped"
    assert "u1" in runner("suppress", "list").output  # untouched


def test_suppression_added_by_cli_stops_delivery(client, auth, runner, config_data):
    runner("suppress", "add", "u1", "--rule", "NoFirstApiCall")
    post(client, auth, "firing-per-user.json")
    drain_queue(config_data)
    (row,) = json.loads(runner("deliveries", "--json").output)
    assert row["status"] == "suppressed"
    assert not list(Path(config_data["delivery"]["outbox_dir"]).glob("*.eml"))


# --- preview --------------------------------------------------------------------------------


def test_preview_text_html_and_eml(runner):
    text = runner("preview", "onboarding_first_call")
    assert text.exit_code == 0, text.output
    assert text.output.startswith("Subject: Make your first call to Acme API\n\nHi Jane Doe,")

    html = runner("preview", "onboarding_first_call", "--format", "html")
    assert html.exit_code == 0, html.output
    assert html.output.lstrip().startswith("<!DOCTYPE html>")
    assert "Hi Jane Doe," in html.output and "Subject:" not in html.output

    eml = runner("preview", "onboarding_first_call", "--format", "eml")
    assert eml.exit_code == 0, eml.output
    message = message_from_string(eml.output, policy=policy.default)
    assert message["To"] == "jane.doe@example.com"
    assert message["From"] == "Nudge <nudge@localhost>"
    assert message["Subject"] == "Make your first call to Acme API"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.get_content_type() == "multipart/alternative"


def test_preview_with_labels_and_a_user_record(runner, tmp_path):
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"name": "Grace Hopper", "email": "grace@example.com",
                                "card_last4": "1234"}))
    result = runner("preview", "payment_failed", "--label", "plan=enterprise",
                    "--user-json", str(user))
    assert result.exit_code == 0, result.output
    assert "Hi Grace Hopper," in result.output
    assert "(enterprise plan)" in result.output
    assert "card ending in 1234" in result.output

    eml = runner("preview", "payment_failed", "--user-json", str(user), "--format", "eml")
    assert message_from_string(eml.output, policy=policy.default)["To"] == "grace@example.com"

    resolved = runner("preview", "payment_failed", "--resolved")
    assert resolved.exit_code == 0, resolved.output
    assert resolved.output.splitlines()[0] == "Subject: Your Acme API payment went through, thanks"


def test_preview_with_an_alertmanager_payload(runner, tmp_path):
    result = runner("preview", "onboarding_first_call", "--format", "eml",
                    "--alert", str(FIXTURES / "firing-per-user.json"))
    assert result.exit_code == 0, result.output
    message = message_from_string(result.output, policy=policy.default)
    assert "/unsubscribe/u1." in str(message["List-Unsubscribe"])  # user_id u1 from the alert

    alert = tmp_path / "alert.json"
    alert.write_text(json.dumps({
        "labels": {"alertname": "DeprecatedEndpointInUse", "user_id": "u7"},
        "annotations": {"endpoint": "/v1/legacy", "replacement": "/v2/send"},
    }))
    from_alert = runner("preview", "deprecated_endpoint", "--alert", str(alert))
    assert from_alert.exit_code == 0, from_alert.output
    assert "no directory configured" in from_alert.stderr  # it says it fell back
    assert from_alert.stdout.splitlines()[0] == (
        "Subject: You're calling a deprecated Acme API endpoint: /v1/legacy"
    )
    assert "Use /v2/send instead." in from_alert.output


def test_preview_errors_are_one_line(runner, tmp_path):
    unknown = runner("preview", "no_such_template")
    assert unknown.exit_code == 1
    assert one_line_error(unknown) == (
        "Error: no_such_template: no such email template (no no_such_template/subject.txt)"
    )

    bad_label = runner("preview", "onboarding_first_call", "--label", "plan")
    assert bad_label.exit_code == 2
    assert "Invalid value for --label: expected NAME=VALUE, got 'plan'" in bad_label.output

    broken_json = tmp_path / "user.json"
    broken_json.write_text("{not json")
    bad_user = runner("preview", "onboarding_first_call", "--user-json", str(broken_json))
    assert bad_user.exit_code == 1
    assert one_line_error(bad_user).startswith(f"Error: {broken_json}: not valid JSON")

    not_an_address = tmp_path / "odd.json"
    not_an_address.write_text(json.dumps({"email": "not an address"}))
    bad_eml = runner("preview", "onboarding_first_call", "--format", "eml",
                     "--user-json", str(not_an_address))
    assert bad_eml.exit_code == 1
    assert one_line_error(bad_eml).startswith("Error: cannot build message: To ")


# --- send-test ------------------------------------------------------------------------------


def rewrite_config(config_file: Path, config_data: dict, **changes) -> None:
    config_file.write_text(yaml.safe_dump({**config_data, **changes}))


def test_send_test_through_smtp(runner, config_file, config_data):
    with RecordingServer() as server:
        rewrite_config(config_file, config_data, smtp={"url": server.url})
        result = runner("send-test", "payment_failed", "--to", "ops@example.com",
                        "--label", "plan=enterprise")
        assert result.exit_code == 0, result.output
        assert result.output.strip().startswith("sent payment_failed to ops@example.com via SMTP")
        (received,) = server.wait_for(1, timeout=10)
    assert received.rcpt_tos == ("ops@example.com",)
    assert received["To"] == "ops@example.com"
    assert received["Subject"] == "Your Acme API payment didn't go through"
    body = received.message.get_body(preferencelist=("plain",)).get_content()
    assert "(starter plan)" in body  # the sample user's plan wins over the label
    assert received["List-Unsubscribe"]


def test_send_test_rejected_by_smtp_fails_with_one_line(runner, config_file, config_data):
    with RejectingServer(550, "5.1.1 user unknown") as server:
        rewrite_config(config_file, config_data, smtp={"url": server.url})
        result = runner("send-test", "payment_failed", "--to", "nobody@example.com")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert line.startswith("Error: not sent: SMTP 550") and "user unknown" in line


def test_send_test_without_smtp_url_writes_to_the_outbox(runner, config_data):
    result = runner("send-test", "onboarding_first_call", "--to", "dev@example.com")
    assert result.exit_code == 0, result.output
    outbox = Path(config_data["delivery"]["outbox_dir"])
    assert str(outbox) in result.output
    (eml,) = outbox.glob("*.eml")
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert message["To"] == "dev@example.com"
    assert message["Subject"] == "Make your first call to Acme API"


def test_send_test_unknown_template_and_bad_address(runner):
    unknown = runner("send-test", "nope", "--to", "dev@example.com")
    assert unknown.exit_code == 1
    assert one_line_error(unknown) == "Error: nope: no such email template (no nope/subject.txt)"
    bad = runner("send-test", "onboarding_first_call", "--to", "not an address")
    assert bad.exit_code == 1
    assert one_line_error(bad).startswith("Error: not sent: To ")
    missing = runner("send-test", "onboarding_first_call")
    assert missing.exit_code == 2 and "--to" in missing.output
