"""The preference page and categories: what it lists, what stopping does, the headers.

Real SQLite file, real rule files, Flask test client; what a stop stops is shown by what the
real delivery worker then sends into the file outbox.
"""

from __future__ import annotations

import json
import re
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from app.categories import category_key
from app.suppressions import ALL, make_category_token, make_token
from tests.conftest import TOKEN, post_and_decide
from tests.test_unsubscribe import deliver_everything

SECRET = "test-secret-key-of-at-least-32-bytes"  # conftest's config_data secret_key
AUTH = {"Authorization": f"Bearer {TOKEN}"}

RULES = """
groups:
  - name: test
    rules:
      - alert: NoFirstApiCall
        expr: vector(1)
        labels: {email_template: onboarding_first_call}
        annotations: {nudge_category: onboarding, nudge_title: Getting started}
      - alert: FirstSuccessfulCall
        expr: vector(1)
        labels: {email_template: first_call_success}
        annotations: {nudge_category: onboarding}
      - alert: UsageDropped
        expr: vector(1)
        labels: {email_template: usage_drop}
        annotations: {nudge_title: 'Usage <reports> & "tips"'}
      - alert: QuotaNearlyExhausted
        expr: vector(1)
        labels: {email_template: quota_warning}
      - alert: PaymentFailed
        expr: vector(1)
        labels: {email_template: payment_failed}
      - alert: InternalOnlyNoEmail
        expr: vector(1)
"""
ALERT_NAMES = ["NoFirstApiCall", "FirstSuccessfulCall", "UsageDropped", "QuotaNearlyExhausted",
               "PaymentFailed", "InternalOnlyNoEmail"]


@pytest.fixture
def config_data(config_data, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "test.yml").write_text(RULES)
    config_data["rules_dir"] = str(rules)
    return config_data


def choices(html: str) -> dict[str, str | None]:
    """{title as shown: its button's value, or None when shown as stopped}."""
    found = {}
    for title, rest in re.findall(r'<li><span><span class="title">(.*?)</span>(.*?)</li>', html,
                                  re.S):
        value = re.search(r'name="stop" value="([^"]+)"', rest)
        found[title] = value.group(1) if value else None
    return found


def page(client, token: str) -> str:
    response = client.get(f"/unsubscribe/{token}")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def payload(user_id: str, *alerts: tuple[str, str, dict], starts_at="2026-11-22T20:04:34.529Z"):
    return json.dumps({
        "receiver": "nudge", "status": "firing", "version": "4", "groupKey": "{}:{}",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": rule, "email_template": template, "user_id": user_id,
                       "email": f"{user_id}@example.com", "plan": "team"},
            "annotations": {"summary": f"{rule} for {user_id}", **annotations},
            "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph", "fingerprint": f"{rule}-{user_id}",
        } for rule, template, annotations in alerts],
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093", "truncatedAlerts": 0,
    })


ONBOARDING = ("NoFirstApiCall", "onboarding_first_call",
              {"nudge_category": "onboarding", "nudge_title": "Getting started"})
FIRST_CALL = ("FirstSuccessfulCall", "first_call_success", {"nudge_category": "onboarding"})
USAGE = ("UsageDropped", "usage_drop", {"nudge_title": "Usage reports"})


def outbox(config_data) -> list:
    folder = Path(config_data["delivery"]["outbox_dir"])
    return [message_from_bytes(p.read_bytes(), policy=policy.default)
            for p in sorted(folder.glob("*.eml"))]


# --- the page -------------------------------------------------------------------------------


def test_page_lists_categories_by_title_and_never_an_alert_name(client, store):
    html = page(client, make_category_token(SECRET, "u1", "onboarding"))
    found = choices(html)
    # Titles in order, the escaped one included; rules without a title of their own last.
    assert list(found) == ["Getting started", "Usage &lt;reports&gt; &amp; &#34;tips&#34;",
                           "Other emails"]
    assert all(re.fullmatch(r"c[0-9a-f]{16}", found[t]) for t in list(found)[:2])
    assert found["Other emails"] == "other"
    for name in ALERT_NAMES:  # neither in the text nor in the form values
        assert name not in html
    assert "<reports>" not in html  # titles are escaped
    own = re.search(r'<span class="title">([^<]*)</span><br><span class="own">', html)
    assert own and own.group(1) == "Getting started"
    assert store.list_category_suppressions() == [] and store.list_suppressions() == []


def test_page_is_private_unframed_and_posts_only_to_itself(client):
    token = make_category_token(SECRET, "u1", "onboarding")
    response = client.get(f"/unsubscribe/{token}")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "form-action 'self'" in response.headers["Content-Security-Policy"]
    html = response.get_data(as_text=True)
    assert "<script" not in html
    assert set(re.findall(r'(?:action|href)="([^"]+)"', html)) == {f"/unsubscribe/{token}"}


def test_get_never_changes_anything_whatever_its_query(client, store):
    token = make_category_token(SECRET, "u1", "onboarding")
    for query in ("?stop=all", "?stop=other", "?List-Unsubscribe=One-Click"):
        assert client.get(f"/unsubscribe/{token}{query}").status_code == 200
    assert store.list_category_suppressions() == [] and store.list_suppressions() == []


def test_stopping_one_category_on_the_page_confirms_and_stops_only_it(client, store, config_data):
    token = make_category_token(SECRET, "u1", "onboarding")
    key = choices(page(client, token))["Getting started"]
    response = client.post(f"/unsubscribe/{token}", data={"stop": key})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Done: you will not receive “Getting started” emails any more." in html
    assert choices(html)["Getting started"] is None  # now shown as stopped
    assert choices(html)["Other emails"] == "other"
    assert [(r["user_id"], r["category"], r["source"])
            for r in store.list_category_suppressions()] == [("u1", "onboarding", "page")]
    assert store.list_suppressions() == []

    assert post_and_decide(client, payload("u1", ONBOARDING, FIRST_CALL, USAGE),
                           AUTH).json["queued"] == 3
    assert deliver_everything(config_data) == {
        "NoFirstApiCall": "suppressed", "FirstSuccessfulCall": "suppressed", "UsageDropped": "sent"}
    assert [str(m["Subject"]) for m in outbox(config_data)] == ["Your Acme API usage has dropped"]
    (row,) = store.list_deliveries(rule="FirstSuccessfulCall")
    assert row["last_error"] == "user unsubscribed from category 'onboarding'"  # nudge deliveries


def test_stopping_other_emails_stops_every_untitled_category(client, store):
    token = make_category_token(SECRET, "u1", "onboarding")
    response = client.post(f"/unsubscribe/{token}", data={"stop": "other"})
    assert response.status_code == 200
    assert sorted(r["category"] for r in store.list_category_suppressions()) == [
        "PaymentFailed", "QuotaNearlyExhausted"]
    assert "NoFirstApiCall" not in response.get_data(as_text=True)


def test_a_choice_the_page_does_not_offer_changes_nothing(client, store):
    token = make_category_token(SECRET, "u1", "onboarding")
    for value in ("onboarding", "NoFirstApiCall", "c0000000000000000", ""):
        response = client.post(f"/unsubscribe/{token}", data={"stop": value})
        assert response.status_code == 400
        assert "Nothing was changed" in response.get_data(as_text=True)
    assert store.list_category_suppressions() == [] and store.list_suppressions() == []


def test_everything_stopped_shows_so(client, store):
    token = make_category_token(SECRET, "u1", "onboarding")
    client.post(f"/unsubscribe/{token}", data={"stop": "all"})
    html = page(client, token)
    assert "You have stopped all emails from us" in html
    assert [(r["scope"], r["source"]) for r in store.list_suppressions()] == [(ALL, "page")]


def test_an_old_rule_link_marks_its_rules_category_as_the_one_it_came_from(client):
    html = page(client, make_token(SECRET, "u1", "FirstSuccessfulCall"))
    own = re.search(r'<span class="title">([^<]*)</span><br><span class="own">', html)
    assert own and own.group(1) == "Getting started"
    assert "FirstSuccessfulCall" not in html


def test_categories_of_sent_emails_are_listed_after_their_rule_is_gone(client, config_data):
    legacy = ("LegacyNewsletter", "usage_drop",
              {"nudge_category": "newsletter", "nudge_title": "Monthly newsletter"})
    assert post_and_decide(client, payload("u1", legacy), AUTH).json["queued"] == 1
    assert "Monthly newsletter" in choices(page(client, make_category_token(SECRET, "u1", "x")))
    assert "Monthly newsletter" not in choices(page(client, make_category_token(SECRET, "u2", "x")))


# --- the email's own headers and one-click ---------------------------------------------------


def test_email_links_and_list_id_name_its_category_and_one_click_stops_it(client, store,
                                                                         config_data):
    assert post_and_decide(client, payload("u1", ONBOARDING), AUTH).json["queued"] == 1
    deliver_everything(config_data)
    (message,) = outbox(config_data)
    assert message["List-Id"] == '"Getting started" <onboarding.nudge.example.com>'
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = str(message["List-Unsubscribe"]).strip("<>")
    assert link in message.get_body(("plain",)).get_content()  # the body's link is the same
    path = link.removeprefix("https://nudge.example.com")
    assert "Getting started" in page(client, path.removeprefix("/unsubscribe/"))

    response = client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert [(r["category"], r["source"]) for r in store.list_category_suppressions()] == [
        ("onboarding", "one-click")]

    later = "2026-11-29T08:00:00Z"
    assert post_and_decide(client, payload("u1", FIRST_CALL, USAGE, starts_at=later),
                           AUTH).json["queued"] == 2
    statuses = deliver_everything(config_data)
    assert statuses["FirstSuccessfulCall"] == "suppressed" and statuses["UsageDropped"] == "sent"


def test_an_old_rule_suppression_still_stops_its_rule_in_a_category(client, store, config_data):
    store.add_suppression("u1", "NoFirstApiCall", "link", 0)
    assert post_and_decide(client, payload("u1", ONBOARDING, FIRST_CALL), AUTH).json["queued"] == 2
    assert deliver_everything(config_data) == {
        "NoFirstApiCall": "suppressed", "FirstSuccessfulCall": "sent"}
    (row,) = store.list_deliveries(rule="NoFirstApiCall")
    assert row["last_error"] == "user unsubscribed from rule NoFirstApiCall"


# --- by hand ---------------------------------------------------------------------------------


def test_cli_adds_lists_and_removes_a_category_suppression(runner, store):
    added = runner("suppress", "add", "u1", "--category", "onboarding")
    assert added.exit_code == 0 and "suppressed u1 for category onboarding" in added.output
    assert store.suppressed_categories("u1") == {"onboarding"}
    listed = runner("suppress", "list", "--user", "u1")
    assert re.search(r"^u1\s+category:onboarding\s+cli\s", listed.output, re.M), listed.output
    both = runner("suppress", "add", "u1", "--category", "x", "--rule", "y")
    assert both.exit_code != 0 and "not both" in both.output
    removed = runner("suppress", "remove", "u1", "--category", "onboarding")
    assert removed.exit_code == 0, removed.output
    assert store.suppressed_categories("u1") == set()
    again = runner("suppress", "remove", "u1", "--category", "onboarding")
    assert again.exit_code == 1 and "not suppressed for category onboarding" in again.output


def test_one_click_on_an_untitled_category_stops_only_it_and_names_no_alert(client, store):
    token = make_category_token(SECRET, "u1", "QuotaNearlyExhausted")
    response = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Done: you will not receive these emails any more." in html
    assert "QuotaNearlyExhausted" not in html
    assert store.suppressed_categories("u1") == {"QuotaNearlyExhausted"}


def test_the_page_templates_are_installed_with_nudge():
    """`pip install` ships only the package data pyproject.toml names: every page template
    must match it, or an installed Nudge answers the link with an error."""
    import tomllib

    from tests.conftest import ROOT

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["app"]
    templates = [p.relative_to(ROOT / "app") for p in (ROOT / "app" / "templates").rglob("*")
                 if p.is_file()]
    assert templates
    assert [t for t in templates if not any(t.match(p) for p in patterns)] == []


# --- undoing a stop --------------------------------------------------------------------------


def test_a_recipient_can_resume_a_category_they_stopped(client, store):
    token = make_category_token(SECRET, "u1", "onboarding")
    key = choices(page(client, token))["Getting started"]
    client.post(f"/unsubscribe/{token}", data={"stop": key})
    html = page(client, token)
    assert f'name="resume" value="{key}"' in html
    response = client.post(f"/unsubscribe/{token}", data={"resume": key})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Done: you will receive “Getting started” emails again." in html
    assert choices(html)["Getting started"] == key  # offered to stop again
    assert store.list_category_suppressions() == []


def test_an_operators_suppression_is_not_the_recipients_to_undo(client, store, runner):
    assert runner("suppress", "add", "u1", "--category", "onboarding").exit_code == 0
    token = make_category_token(SECRET, "u1", "onboarding")
    html = page(client, token)
    assert choices(html)["Getting started"] is None and 'name="resume"' not in html
    key = re.search(r'<li><span><span class="title">Getting started.*?</li>', html, re.S)
    assert key and "Stopped" in key.group(0)
    response = client.post(f"/unsubscribe/{token}", data={"resume": category_key("onboarding")})
    assert response.status_code == 400
    assert store.suppressed_categories("u1") == {"onboarding"}


def test_everything_stopped_by_the_recipient_can_be_resumed_by_them_only(client, store, runner):
    token = make_category_token(SECRET, "u1", "onboarding")
    client.post(f"/unsubscribe/{token}", data={"stop": "all"})
    assert 'id="resume-all"' in page(client, token)
    response = client.post(f"/unsubscribe/{token}", data={"resume": "all"})
    assert response.status_code == 200
    assert "Done: you will receive our emails again." in response.get_data(as_text=True)
    assert store.list_suppressions() == []

    assert runner("suppress", "add", "u1").exit_code == 0  # the operator's "all"
    html = page(client, token)
    assert "Please contact us" in html and 'id="resume-all"' not in html
    assert client.post(f"/unsubscribe/{token}", data={"resume": "all"}).status_code == 400
    assert [r["scope"] for r in store.list_suppressions()] == [ALL]


def test_preview_shows_the_list_id_the_email_will_carry(runner):
    result = runner("preview", "onboarding_first_call", "--format", "eml")
    assert result.exit_code == 0, result.output
    assert 'List-Id: "Getting started" <onboarding.nudge.example.com>' in result.output
