"""POST /webhook through Flask's test client on a real SQLite file."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.conftest import FIXTURES, fixture_bytes, load_fixture, post_and_decide


def post(client, payload, headers, **kwargs):
    data = payload if isinstance(payload, bytes | str) else json.dumps(payload)
    return post_and_decide(client, data, headers, **kwargs)


def rows(app, table: str) -> list[dict]:
    """What is on disk, read with sqlite3 itself (not through the code under test)."""
    db = sqlite3.connect(app.config["NUDGE"].database)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute(f"SELECT * FROM {table} ORDER BY id")]
    finally:
        db.close()


def list_decisions(app, **filters):
    return app.extensions["nudge_store"].list_decisions(**filters)


def list_deliveries(app, **filters):
    return app.extensions["nudge_store"].list_deliveries(**filters)


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_every_fixture_is_accepted_and_stored(client, app, auth, name):
    response = post(client, fixture_bytes(name), auth)
    assert response.status_code == 200, response.json
    assert response.json["status"] == "accepted"
    payload = load_fixture(name)
    (notification,) = rows(app, "notifications")
    assert notification["body"] == fixture_bytes(name).decode()
    assert notification["alert_count"] == len(payload["alerts"])
    assert notification["truncated_alerts"] == payload["truncatedAlerts"]
    assert len(rows(app, "decisions")) == len(payload["alerts"])


def test_firing_alert_queues_one_delivery_with_what_sending_needs(client, app, auth):
    response = post(client, fixture_bytes("firing-per-user.json"), auth)
    assert response.json == {
        "status": "accepted", "notification_id": 1, "queued": 1, "duplicate": 0, "skipped": 0
    }
    (delivery,) = rows(app, "deliveries")
    assert delivery["status"] == "queued"
    assert (delivery["rule"], delivery["user_id"]) == ("NoFirstApiCall", "u1")
    assert delivery["template"] == "onboarding_first_call"
    assert delivery["kind"] == "firing"
    assert delivery["external_url"] == "http://alertmanager:9093"
    alert = json.loads(delivery["alert"])
    assert alert["labels"]["plan"] == "free"
    assert alert["annotations"]["summary"].startswith("User u1 signed up")
    assert alert["startsAt"] == "2026-11-22T20:04:34.529000Z"


def test_repeat_of_the_same_episode_is_a_duplicate_not_a_second_delivery(client, app, auth):
    body = fixture_bytes("repeat-of-same-episode.json")
    assert post(client, body, auth).json["queued"] == 1
    for _ in range(3):  # repeat_interval, an HA peer, a retried POST
        response = post(client, body, auth)
        assert response.status_code == 200
        assert response.json["queued"] == 0 and response.json["duplicate"] == 1
    assert len(rows(app, "deliveries")) == 1
    decisions = list_decisions(app, user="u2")
    assert [d["outcome"] for d in decisions] == ["duplicate"] * 3 + ["queued"]
    assert decisions[0]["reason"] == "same_episode"
    # Each repeat points at the delivery it repeats, so "why only one email?" has an answer.
    (delivery,) = rows(app, "deliveries")
    assert {d["delivery_id"] for d in decisions} == {delivery["id"]}
    assert f"already has delivery {delivery['id']}" in decisions[0]["detail"]


def test_new_episode_within_cooldown_is_skipped_with_reason(client, app, auth):
    payload = load_fixture("repeat-of-same-episode.json")
    post(client, payload, auth)
    payload["alerts"][0]["startsAt"] = "2026-11-22T21:30:00Z"  # resolved, then fired again
    response = post(client, payload, auth)
    assert response.json["skipped"] == 1
    (latest, _first) = list_decisions(app, user="u2")
    assert latest["reason"] == "cooldown"
    assert "cooldown is 1d" in latest["detail"]
    assert len(rows(app, "deliveries")) == 1


def test_new_episode_after_cooldown_is_queued(config_data, auth):
    from app import create_app

    config_data["alerts"] = {"cooldown": "0s"}
    client = create_app(config_data).test_client()
    payload = load_fixture("repeat-of-same-episode.json")
    assert post(client, payload, auth).json["queued"] == 1
    payload["alerts"][0]["startsAt"] = "2026-11-22T21:30:00Z"
    assert post(client, payload, auth).json["queued"] == 1
    assert post(client, payload, auth).json["duplicate"] == 1


def test_forever_cooldown_from_the_rule_annotation_sends_once_ever(client, app, auth):
    payload = load_fixture("firing-per-user.json")
    payload["alerts"][0]["annotations"]["nudge_cooldown"] = "forever"
    assert post(client, payload, auth).json["queued"] == 1
    payload["alerts"][0]["startsAt"] = "2026-12-25T00:00:00Z"
    response = post(client, payload, auth)
    assert response.json["duplicate"] == 1
    latest = list_decisions(app)[0]
    assert latest["reason"] == "already_sent_once"


def test_grouped_notification_queues_one_delivery_per_user(client, app, auth):
    response = post(client, fixture_bytes("grouped-five-users.json"), auth)
    assert response.json["queued"] == 5
    assert sorted(d["user_id"] for d in rows(app, "deliveries")) == ["u0", "u1", "u2", "u3", "u4"]


def keep_on_resolve(payload: dict) -> dict:
    """The rule keeps its emails when the alert resolves (`nudge_cancel_on_resolve`)."""
    for alert in payload["alerts"]:
        alert["annotations"]["nudge_cancel_on_resolve"] = "false"
    return payload


def test_mixed_resolved_sends_nothing_for_resolved_without_a_resolved_email(client, app, auth):
    post(client, fixture_bytes("grouped-five-users.json"), auth)
    response = post(client, keep_on_resolve(load_fixture("grouped-mixed-resolved.json")), auth)
    assert response.json == {
        "status": "accepted", "notification_id": 2, "queued": 0, "duplicate": 3, "skipped": 2
    }
    skipped = [d for d in list_decisions(app)
               if d["outcome"] == "skipped"]
    assert {d["user_id"] for d in skipped} == {"u0", "u1"}
    assert {d["reason"] for d in skipped} == {"resolved_not_requested"}


def test_resolved_email_when_the_rule_asks_for_one(client, app, auth):
    firing = load_fixture("grouped-five-users.json")
    resolved = load_fixture("grouped-mixed-resolved.json")
    for payload in (firing, resolved):
        for alert in payload["alerts"]:
            alert["annotations"]["nudge_send_resolved"] = "true"
    post(client, firing, auth)
    keep_on_resolve(resolved)
    assert post(client, resolved, auth).json["queued"] == 2
    assert post(client, resolved, auth).json["queued"] == 0  # repeated: duplicates
    kinds = [(d["user_id"], d["kind"]) for d in rows(app, "deliveries") if d["kind"] == "resolved"]
    assert sorted(kinds) == [("u0", "resolved"), ("u1", "resolved")]


def test_an_alert_that_resolves_while_its_email_waits_cancels_it(client, app, auth):
    post(client, fixture_bytes("grouped-five-users.json"), auth)
    response = post(client, fixture_bytes("grouped-mixed-resolved.json"), auth)
    assert response.json == {"status": "accepted", "notification_id": 2, "queued": 0,
                             "duplicate": 3, "skipped": 0, "cancelled": 2}
    cancelled = [d for d in list_decisions(app) if d["outcome"] == "cancelled"]
    assert {d["user_id"] for d in cancelled} == {"u0", "u1"}
    assert {d["reason"] for d in cancelled} == {"alert_resolved"}
    by_id = {d["id"]: d for d in rows(app, "deliveries")}
    for decision in cancelled:
        delivery = by_id[decision["delivery_id"]]
        assert delivery["status"] == "cancelled"
        assert delivery["note"] == "cancelled: alert resolved before sending"
    assert sorted(d["status"] for d in by_id.values()) == ["cancelled"] * 2 + ["queued"] * 3
    # Repeats of the resolved notification change nothing.
    assert post(client, fixture_bytes("grouped-mixed-resolved.json"), auth).json["skipped"] == 2


def test_a_cancelled_firing_email_gets_no_resolved_email_either(client, app, auth):
    firing = load_fixture("grouped-five-users.json")
    resolved = load_fixture("grouped-mixed-resolved.json")
    for payload in (firing, resolved):
        for alert in payload["alerts"]:
            alert["annotations"]["nudge_send_resolved"] = "true"
    post(client, firing, auth)
    first = post(client, resolved, auth).json
    assert (first["queued"], first["cancelled"]) == (0, 2)
    again = post(client, resolved, auth).json
    assert (again["queued"], again["skipped"]) == (0, 2)
    reasons = {d["reason"] for d in list_decisions(app) if d["notification_id"] == 3
               and d["outcome"] == "skipped"}
    assert reasons == {"firing_email_cancelled"}
    assert not [d for d in rows(app, "deliveries") if d["kind"] == "resolved"]


def test_resolved_email_needs_a_firing_email_first(client, app, auth):
    payload = load_fixture("grouped-mixed-resolved.json")
    for alert in payload["alerts"]:
        alert["annotations"]["nudge_send_resolved"] = "true"
    response = post(client, payload, auth)
    assert response.json["queued"] == 3  # the three still firing
    reasons = {d["user_id"]: d["reason"] for d in list_decisions(app) if d["outcome"] == "skipped"}
    assert reasons == {"u0": "resolved_without_firing_email", "u1": "resolved_without_firing_email"}


def test_alerts_that_are_not_behavioral_are_skipped_with_reason(client, app, auth):
    payload = load_fixture("grouped-five-users.json")
    del payload["alerts"][0]["labels"]["user_id"]
    del payload["alerts"][1]["labels"]["email_template"]
    payload["alerts"][2]["annotations"]["nudge_cooldown"] = "fortnight"
    before = metric("nudge_alert_decisions_total", outcome="skipped", reason="no_template")
    response = post(client, payload, auth)
    assert response.json["queued"] == 2 and response.json["skipped"] == 3
    reasons = sorted(d["reason"] for d in list_decisions(app)
                     if d["outcome"] == "skipped")
    assert reasons == ["invalid_settings", "no_template", "no_user_label"]
    after = metric("nudge_alert_decisions_total", outcome="skipped", reason="no_template")
    assert after == before + 1


def test_template_from_nudge_yml_when_the_rule_has_no_label(config_data, auth):
    from app import create_app

    config_data["alerts"] = {"rules": {"UsageDropped": {"template": "usage_drop",
                                                        "cooldown": "forever"}}}
    app = create_app(config_data)
    payload = load_fixture("grouped-five-users.json")
    for alert in payload["alerts"]:
        del alert["labels"]["email_template"]
    assert post(app.test_client(), payload, auth).json["queued"] == 5
    assert {d["template"] for d in rows(app, "deliveries")} == {"usage_drop"}


def test_truncated_alerts_are_logged_and_counted(client, auth, caplog):
    before = metric("nudge_alerts_truncated_total", receiver="truncated")
    with caplog.at_level(logging.WARNING, logger="nudge.webhook"):
        response = post(client, fixture_bytes("truncated-max-alerts.json"), auth)
    assert response.status_code == 200
    assert metric("nudge_alerts_truncated_total", receiver="truncated") == before + 3
    warning = next(r.getMessage() for r in caplog.records if "dropped" in r.getMessage())
    assert 'alertname="TruncateMe"' in warning and "3 alerts" in warning


def test_info_logs_one_line_per_notification_and_decisions_only_at_debug(client, auth, caplog):
    with caplog.at_level(logging.INFO, logger="nudge"):
        post(client, fixture_bytes("grouped-five-users.json"), auth)
    messages = [r.getMessage() for r in caplog.records]
    (line,) = [m for m in messages if m.startswith("notification ")]
    assert "receiver=grouped" in line and "5 alerts" in line and "5 queued" in line
    assert not [m for m in messages if m.startswith("decision ")]

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="nudge"):
        post(client, fixture_bytes("grouped-five-users.json"), auth)
    decisions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decision ")]
    assert len(decisions) == 5
    assert "rule=UsageDropped user=u3 outcome=duplicate" in " ".join(decisions)


# --- authentication ---------------------------------------------------------------------------

def test_basic_auth_is_accepted(client):
    credentials = base64.b64encode(b"alertmanager:pw").decode()
    response = post(client, fixture_bytes("grouped-five-users.json"),
                    {"Authorization": f"Basic {credentials}"})
    assert response.status_code == 200


@pytest.mark.parametrize("header", [
    None,
    "Bearer wrong",
    "Bearer ",
    "Bearer s3cret-and-more",
    "s3cret",
    "Basic " + base64.b64encode(b"alertmanager:wrong").decode(),
    "Basic !!!not-base64!!!",
    "Basic " + base64.b64encode(b"\xff\xfe").decode(),
    "Token s3cret",
])
def test_missing_or_wrong_credentials_get_401_and_store_nothing(client, app, header):
    headers = {"Authorization": header} if header is not None else {}
    response = post(client, fixture_bytes("firing-per-user.json"), headers)
    assert response.status_code == 401
    assert response.json["status"] == "error"
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert rows(app, "notifications") == []


def test_unauthenticated_mode_must_be_explicit(config_data, caplog):
    from app import create_app
    from app.config import ConfigError

    config_data["webhook"] = {}
    with pytest.raises(ConfigError, match="allow_unauthenticated"):
        create_app(config_data)
    config_data["webhook"] = {"allow_unauthenticated": True}
    with caplog.at_level(logging.WARNING):
        client = create_app(config_data).test_client()
    assert any("allow_unauthenticated" in r.getMessage() for r in caplog.records)
    assert post(client, fixture_bytes("firing-per-user.json"), {}).status_code == 200


# --- bad input: 400 / 413, never 500 ----------------------------------------------------------

@pytest.mark.parametrize("body, problem", [
    (b"{", "malformed JSON"),
    (b"", "malformed JSON"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b"[]", "expected a JSON object"),
    (b"null", "expected a JSON object"),
    (b'"text"', "expected a JSON object"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (json.dumps({"alerts": []}).encode(), "version"),
    (json.dumps({"version": 4, "alerts": []}).encode(), "version"),
    (json.dumps({"version": "3", "alerts": []}).encode(), "version"),
    (json.dumps({"version": "4"}).encode(), "'alerts' must be a list"),
    (json.dumps({"version": "4", "alerts": {}}).encode(), "'alerts' must be a list"),
    (json.dumps({"version": "4", "alerts": [1]}).encode(), "alerts[0] must be an object"),
    (json.dumps({"version": "4", "alerts": [{"status": "weird"}]}).encode(), "alerts[0].status"),
    (json.dumps({"version": "4", "alerts": [{"status": "firing", "labels": []}]}).encode(),
     "alerts[0].labels"),
    (json.dumps({"version": "4", "alerts": [{"status": "firing", "labels": {"a": 1},
                 "startsAt": "2026-11-22T20:04:34Z"}]}).encode(), "alerts[0].labels"),
    (json.dumps({"version": "4", "alerts": [{"status": "firing", "labels": {},
                 "startsAt": "yesterday"}]}).encode(), "alerts[0].startsAt"),
    (json.dumps({"version": "4", "alerts": [{"status": "firing", "labels": {},
                 "startsAt": 12}]}).encode(), "alerts[0].startsAt"),
    (json.dumps({"version": "4", "alerts": [], "truncatedAlerts": -1}).encode(), "truncatedAlerts"),
    (b'{"version": "4", "alerts": [{"status": "firing", "startsAt": "2026-11-22T20:04:34Z", '
     b'"labels": {"user_id": "\\ud800"}}]}', "alerts[0].labels.user_id contains invalid Unicode"),
    (b'{"version": "4", "alerts": [], "receiver": "\\udfff"}', "'receiver' contains invalid Unicode"),
    (b'{"version": "4", "alerts": [{"status": "firing", "startsAt": "2026-11-22T20:04:34Z", '
     b'"labels": {"user_id": "a\\u0000b"}}]}', "alerts[0].labels.user_id contains a NUL"),
    (b'{"version": "4", "alerts": [], "groupKey": "\\u0000"}', "'groupKey' contains a NUL"),
    # Other escapes first (an escaped backslash, Go's \u0026 for &): the risky one is still found.
    (b'{"version": "4", "alerts": [], "externalURL": "a\\\\b\\u0026c", "groupKey": "x\\u0000"}',
     "'groupKey' contains a NUL"),
    # Surrogates written raw, as UTF-8 would encode them: not UTF-8, rejected before parsing.
    (b'{"version": "4", "alerts": [], "receiver": "\xed\xa0\x80"}', "body is not UTF-8 text"),
    (json.dumps({"version": "4", "alerts": [], "receiver": ["x"]}).encode(), "'receiver'"),
    (json.dumps({"version": "4", "alerts": [{"status": "firing", "labels": {}, "annotations": 5,
                 "startsAt": "2026-11-22T20:04:34Z"}]}).encode(), "annotations"),
])
def test_bad_payloads_get_400_naming_the_problem(client, app, auth, body, problem):
    response = post(client, body, auth)
    assert response.status_code == 400
    assert problem in response.json["error"]
    assert rows(app, "notifications") == []


def test_unknown_fields_from_newer_alertmanagers_are_ignored(client, auth):
    payload = load_fixture("firing-per-user.json")
    payload["notification_reason"] = "repeat"
    payload["alerts"][0]["something_new"] = {"nested": True}
    assert post(client, payload, auth).status_code == 200


def test_body_over_the_limit_gets_413(config_data, auth):
    from app import create_app

    config_data["webhook"]["max_body_bytes"] = 1000
    app = create_app(config_data)
    response = post(app.test_client(), fixture_bytes("grouped-five-users.json"), auth)
    assert response.status_code == 413
    assert "max_body_bytes" in response.json["error"]
    assert rows(app, "notifications") == []


def test_storage_unavailable_gets_503_so_alertmanager_retries(app, auth):
    database = Path(app.config["NUDGE"].database)
    for path in database.parent.glob(database.name + "*"):
        path.unlink()
    database.mkdir()  # the database path is now a folder: sqlite cannot open it
    try:
        response = post(app.test_client(), fixture_bytes("firing-per-user.json"), auth)
        assert response.status_code == 503
        assert response.json["error"] == "storage unavailable, retry later"
        assert app.test_client().get("/-/ready").status_code == 503
    finally:
        shutil.rmtree(database)


def test_wrong_method_and_unknown_path_are_json_errors(client, auth):
    assert client.get("/webhook", headers=auth).status_code == 405
    assert client.get("/nope").json == {"status": "error", "error": "not found"}


# --- observing ------------------------------------------------------------------------------

def test_health_readiness_and_metrics(client, auth):
    assert client.get("/-/healthy").status_code == 200
    ready = client.get("/-/ready")
    assert ready.status_code == 200 and ready.data == b"Nudge is Ready.\n"
    post(client, fixture_bytes("grouped-five-users.json"), auth)
    text = client.get("/metrics").data.decode()
    assert "nudge_queue_depth 5.0" in text
    assert "nudge_webhook_requests_total" in text
    assert "nudge_alert_decisions_total" in text


def test_deliveries_listing_filters(client, app, auth):
    post(client, fixture_bytes("grouped-five-users.json"), auth)
    post(client, fixture_bytes("firing-per-user.json"), auth)
    assert len(list_deliveries(app)) == 6
    assert [d["rule"] for d in list_deliveries(app, user="u1")] == ["NoFirstApiCall", "UsageDropped"]
    assert len(list_deliveries(app, rule="UsageDropped", status="queued")) == 5
    assert list_deliveries(app, status="sent") == []
