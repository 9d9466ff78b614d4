"""GET/POST /unsubscribe/<token>: confirmation page, RFC 8058 one-click, tampering, scopes.

Real SQLite file and Flask test client; scope tests run the real delivery worker into the
file outbox to show which emails a suppression stops.
"""

from __future__ import annotations

import json
import re
import threading
import time
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from itsdangerous import URLSafeSerializer

from app.config import load_config
from app.store import open_store
from app.suppressions import ALL, Link, make_category_token, make_token, read_link
from app.worker import DeliveryWorker
from tests.conftest import TOKEN, post_and_decide
from tests.processes import wait_until

SECRET = "test-secret-key-of-at-least-32-bytes"  # conftest's config_data secret_key
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def suppressions(app) -> list[dict]:
    return app.extensions["nudge_store"].list_suppressions()


def form_actions(html: str) -> list[str]:
    return re.findall(r'<form method="post" action="([^"]+)"', html)


def tampered(token: str) -> str:
    """The same token with one character of the signed payload changed."""
    index = 3
    replacement = "A" if token[index] != "A" else "B"
    return token[:index] + replacement + token[index + 1:]


@pytest.mark.parametrize("user_id", ["u1", "p-00000042@example.com", "Zoë \"quoted\" \\ 😀",
                                     "", "x" * 200])
def test_links_are_the_ones_itsdangerous_signs_and_read_back(user_id: str) -> None:
    """Links already in mailboxes were signed by itsdangerous itself: Nudge's own signing
    writes the same characters, so old and new links are one format."""
    signer = URLSafeSerializer(SECRET, salt="nudge-unsubscribe")

    token = make_category_token(SECRET, user_id, "onboarding")

    assert token == signer.dumps({"u": user_id, "c": "onboarding"})
    assert read_link(SECRET, token) == Link(user_id, category="onboarding")
    assert make_token(SECRET, user_id, ALL) == signer.dumps({"u": user_id, "s": ALL})


def test_a_link_of_a_long_run_of_one_character_reads_back() -> None:
    """The one case itsdangerous writes otherwise (it compresses the payload)."""
    user_id = "u" * 40

    assert read_link(SECRET, make_category_token(SECRET, user_id, "c")) == Link(user_id, category="c")


def test_an_old_rule_link_opens_the_preference_page_and_records_nothing(client, app):
    token = make_token(SECRET, "u1", "NoFirstApiCall")
    response = client.get(f"/unsubscribe/{token}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<form" in html and 'method="post"' in html
    assert form_actions(html) == [f"/unsubscribe/{token}"]
    assert "Email preferences" in html
    assert "NoFirstApiCall" not in html  # alert names are internal
    assert suppressions(app) == []  # a mail scanner following the link unsubscribes nobody


def test_an_old_pages_form_post_still_records_its_rule_suppression(client, app, runner):
    """Pages served before categories posted an empty form to the rule's link."""
    token = make_token(SECRET, "u1", "NoFirstApiCall")
    response = client.post(f"/unsubscribe/{token}")
    assert response.status_code == 200
    assert "You are unsubscribed" in response.get_data(as_text=True)
    (row,) = suppressions(app)
    assert (row["user_id"], row["scope"], row["source"]) == ("u1", "NoFirstApiCall", "link")

    listed = runner("suppress", "list")
    assert listed.exit_code == 0, listed.output
    assert re.search(r"^u1\s+NoFirstApiCall\s+link\s", listed.output, re.MULTILINE), listed.output

    # Clicking twice is harmless.
    assert client.post(f"/unsubscribe/{token}").status_code == 200
    assert len(suppressions(app)) == 1


def test_rfc8058_one_click_post_of_an_old_all_link(client, app):
    token = make_token(SECRET, "u1", ALL)
    response = client.post(
        f"/unsubscribe/{token}",
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    (row,) = suppressions(app)
    assert (row["user_id"], row["scope"], row["source"]) == ("u1", ALL, "one-click")


@pytest.mark.parametrize("method", ["get", "post"])
def test_tampered_token_is_refused_and_nothing_is_recorded(client, app, method):
    token = make_token(SECRET, "u1", ALL)
    bad = tampered(token)
    assert bad != token
    response = getattr(client, method)(f"/unsubscribe/{bad}", data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 400
    assert "Link not valid" in response.get_data(as_text=True)
    assert "<form" not in response.get_data(as_text=True)
    assert suppressions(app) == []


@pytest.mark.parametrize("method", ["get", "post"])
def test_token_signed_with_another_key_is_refused(client, app, method):
    forged = make_token("some-other-key", "u1", ALL)
    response = getattr(client, method)(f"/unsubscribe/{forged}")
    assert response.status_code == 400
    assert suppressions(app) == []


def test_another_users_id_cannot_be_swapped_into_a_token(client, app):
    token = make_token(SECRET, "u1", ALL)
    _, signature = token.split(".")
    other_payload = make_token(SECRET, "u2", ALL).split(".")[0]
    response = client.post(f"/unsubscribe/{other_payload}.{signature}")
    assert response.status_code == 400
    assert suppressions(app) == []


def test_the_page_offers_all_emails_too(client, app):
    token = make_token(SECRET, "u1", "NoFirstApiCall")
    html = client.get(f"/unsubscribe/{token}").get_data(as_text=True)
    assert "Stop all emails from us" in html
    response = client.post(f"/unsubscribe/{token}", data={"stop": "all"})
    assert response.status_code == 200
    assert "you will not receive any emails from us any more" in response.get_data(as_text=True)
    (row,) = suppressions(app)
    assert (row["user_id"], row["scope"], row["source"]) == ("u1", ALL, "page")


# --- scopes, shown by what the worker sends afterwards --------------------------------------


def two_rule_payload(user_id: str) -> dict:
    def alert(rule: str, template: str) -> dict:
        return {
            "status": "firing",
            "labels": {"alertname": rule, "email_template": template, "user_id": user_id,
                       "email": f"{user_id}@example.com"},
            "annotations": {"summary": f"{rule} for {user_id}"},
            "startsAt": "2026-11-22T20:04:34.529Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": f"{rule}-{user_id}",
        }

    return {
        "receiver": "nudge", "status": "firing", "version": "4", "groupKey": "{}:{}",
        "alerts": [alert("NoFirstApiCall", "onboarding_first_call"),
                   alert("UsageDropped", "usage_drop")],
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093", "truncatedAlerts": 0,
    }


def deliver_everything(config_data) -> dict[str, str]:
    """Run the worker until the queue is empty; {rule: status} of the deliveries."""
    config = load_config(data=config_data, environ={})
    worker = DeliveryWorker(config)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    store = open_store(config.database)

    def settled():
        if store.journal_stats(time.time()).pending:
            return None
        rows = store.list_deliveries()
        return rows if rows and all(x["status"] not in ("queued", "sending") for x in rows) else None

    try:
        rows = wait_until(settled, timeout=30, message="deliveries settled")
    finally:
        worker.stop()
        thread.join(timeout=30)
        store.close()
    return {row["rule"]: row["status"] for row in rows}


def outbox_subjects(config_data) -> list[str]:
    outbox = Path(config_data["delivery"]["outbox_dir"])
    return sorted(
        str(message_from_bytes(path.read_bytes(), policy=policy.default)["Subject"])
        for path in outbox.glob("*.eml")
    )


def test_rule_scoped_unsubscribe_suppresses_only_that_rule(client, config_data):
    assert client.post(f"/unsubscribe/{make_token(SECRET, 'u1', 'NoFirstApiCall')}").status_code == 200
    response = post_and_decide(client, json.dumps(two_rule_payload("u1")), AUTH)
    assert response.json["queued"] == 2
    assert deliver_everything(config_data) == {"NoFirstApiCall": "suppressed", "UsageDropped": "sent"}
    (subject,) = outbox_subjects(config_data)
    assert subject == "Your Acme API usage has dropped"


def test_all_scope_unsubscribe_suppresses_every_rule(client, config_data):
    assert client.post(f"/unsubscribe/{make_token(SECRET, 'u1', ALL)}").status_code == 200
    client.post("/webhook", data=json.dumps(two_rule_payload("u1")), headers=AUTH)
    client.post("/webhook", data=json.dumps(two_rule_payload("u2")), headers=AUTH)
    config = load_config(data=config_data, environ={})
    deliver_everything(config_data)
    store = open_store(config.database)
    statuses = {(r["user_id"], r["rule"]): r["status"] for r in store.list_deliveries()}
    store.close()
    assert statuses == {
        ("u1", "NoFirstApiCall"): "suppressed",
        ("u1", "UsageDropped"): "suppressed",
        ("u2", "NoFirstApiCall"): "sent",
        ("u2", "UsageDropped"): "sent",
    }
    assert len(outbox_subjects(config_data)) == 2
