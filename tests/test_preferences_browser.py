"""The preference page in a real browser, end to end: a real `nudge serve` sends a real email
to an SMTP server (aiosmtpd); headless chromium (JavaScript off) opens the link from its body,
stops one category and sees the confirmation; then that category is no longer sent and
another one still is."""

from __future__ import annotations

import re

import pytest
import requests
import yaml

from app.store import open_store
from tests.browser import chromium
from tests.conftest import TOKEN
from tests.processes import NudgeProcess, wait_until
from tests.smtp_servers import RecordingServer
from tests.test_preferences import ALERT_NAMES, FIRST_CALL, ONBOARDING, RULES, USAGE, payload

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.fixture
def smtp():
    with RecordingServer() as server:
        yield server


@pytest.fixture
def service(tmp_path, config_data, smtp):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "test.yml").write_text(RULES)
    config_data["rules_dir"] = str(rules)
    config_data["smtp"] = {"url": smtp.url}
    config_data["delivery"].pop("outbox_dir")
    nudge = NudgeProcess(tmp_path, config_data)
    # The links in emails point at this very server.
    written = yaml.safe_load(nudge.config_path.read_text())
    nudge.config_path.write_text(yaml.safe_dump({**written, "public_url": nudge.url}))
    nudge.start()
    yield nudge
    if nudge.process.poll() is None:
        nudge.stop()


def statuses(database: str) -> dict[str, str]:
    store = open_store(database)
    try:
        return {row["rule"]: row["status"] for row in store.list_deliveries()}
    finally:
        store.close()


def test_stop_a_category_from_a_received_email_in_chromium(service, smtp, config_data):
    sent = requests.post(service.url + "/webhook", data=payload("u1", ONBOARDING), headers=AUTH,
                         timeout=10)
    assert sent.status_code == 200, sent.text
    (received,) = smtp.wait_for(1, timeout=60)
    body = received.message.get_body(("plain",)).get_content()
    (link,) = re.findall(re.escape(service.url) + r"/unsubscribe/\S+", body)
    assert str(received["List-Id"]) == '"Getting started" <onboarding.localhost>'

    with chromium() as browser:
        browser.get(link)
        assert browser.title == "Email preferences"
        text = browser.find_element("tag name", "body").text
        assert "Getting started" in text and "Other emails" in text
        assert not [name for name in ALERT_NAMES if name in browser.page_source]
        browser.find_element("css selector", "button[aria-label='Stop Getting started']").click()
        confirmation = wait_until(
            lambda: browser.find_elements("id", "confirmation"), timeout=20,
            message="the confirmation")[0]
        assert confirmation.text == "Done: you will not receive “Getting started” emails any more."
        stopped = browser.find_element("xpath", "//li[.//span[text()='Getting started']]")
        assert "Stopped" in stopped.text

    later = "2026-11-29T08:00:00Z"
    sent = requests.post(service.url + "/webhook", data=payload("u1", FIRST_CALL, USAGE,
                                                                starts_at=later),
                         headers=AUTH, timeout=10)
    assert sent.status_code == 200, sent.text
    final = wait_until(lambda: (s := statuses(config_data["database"])).get("UsageDropped") == "sent"
                       and s.get("FirstSuccessfulCall") == "suppressed" and s, timeout=60,
                       message="the second round settled")
    assert final == {"NoFirstApiCall": "sent", "FirstSuccessfulCall": "suppressed",
                     "UsageDropped": "sent"}
    assert [str(m["Subject"]) for m in smtp.messages] == [
        "Make your first call to Acme API", "Your Acme API usage has dropped"]
