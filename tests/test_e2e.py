"""The real loop: demo API → Prometheus → Alertmanager → `nudge serve` → SMTP.

Real `prometheus` and `alertmanager` binaries on loopback ports, the shipped rules and
Alertmanager config (only ports, paths and timings rewritten: `for:` 2s, repeat_interval 4s),
and an aiosmtpd server. The steps share one running loop and run in order.
"""

from __future__ import annotations

import re
import sqlite3
import time

import pytest
import requests

from demo_api.loop import Loop
from tests.browser import chromium

pytestmark = pytest.mark.e2e

PAYMENT_COOLDOWN = 60  # seconds; PaymentFailed's cooldown in this run (24h in the shipped rule)

EXPECTED = {  # the seeded users' situations: address and subject of the one right email
    "u1": ("ada@example.com", "Make your first call to Acme API"),
    "u2": ("grace@example.com", "of your Acme API quota"),
    "u3": ("linus@example.com", "Acme API requests are failing"),
    "u4": ("margaret@example.com", "deprecated Acme API endpoint"),
    "u5": ("alan@example.com", "Your Acme API payment didn't go through"),
    "u6": ("barbara@example.com", "Your first Acme API call worked"),
}
RESOLVED_SUBJECT = "Your Acme API payment went through, thanks"


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    running = Loop(
        tmp_path_factory.mktemp("loop"),
        for_duration="2s",
        group_wait="1s",
        group_interval="2s",
        repeat_interval="4s",
        annotations={"PaymentFailed": {"nudge_cooldown": f"{PAYMENT_COOLDOWN}s"}},
        scenes=True,  # as `make demo`: u8 and u9 at night in Asia/Kolkata, a cap of 2
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()


def emails(loop, to=None, subject=None):
    return [m for m in loop.mail.snapshot()
            if (to is None or m["To"] == to) and (subject is None or subject in m["Subject"])]


def query(loop, sql, *params):
    db = sqlite3.connect(loop.workdir / "nudge.db", timeout=10)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_each_user_in_a_situation_gets_exactly_the_right_email(loop):
    wait_for(lambda: all(emails(loop, to, s) for to, s in EXPECTED.values()), 150,
             "the six behavioral emails")
    for user, (address, subject) in EXPECTED.items():
        (message,) = emails(loop, to=address)
        assert subject in message["Subject"], user
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # Live directory data is in the email: Grace's quota numbers come from /users/u2.
    (quota,) = emails(loop, to="grace@example.com")
    assert "of the 1,000 requests" in quota.get_body(("plain",)).get_content()
    assert emails(loop, to="ken@example.com") == []  # u7 is healthy


def test_the_demo_holds_night_emails_and_cancels_one_whose_alert_resolved(loop):
    def why(user, rule):
        rows = [d for d in loop.deliveries() if (d["user_id"], d["rule"]) == (user, rule)]
        return rows[0]["why"] if rows else None

    wait_for(lambda: why("u8", "NoFirstApiCall") and why("u9", "QuotaNearlyExhausted"), 60,
             "the night users' emails to be held")
    assert why("u9", "QuotaNearlyExhausted").startswith("waiting: quiet hours until ")
    assert why("u9", "QuotaNearlyExhausted").endswith(" Asia/Kolkata")
    loop.demo("POST", "/v2/messages", headers={"X-User-Id": "u8"}).raise_for_status()
    wait_for(lambda: why("u8", "NoFirstApiCall") == "cancelled: alert resolved before sending",
             60, "Hedy's first-call email to be cancelled after her first call")
    assert emails(loop, "hedy@example.com") == emails(loop, "katherine@example.com") == []


def test_new_episode_sends_again_only_when_the_cooldown_allows(loop):
    loop.demo("POST", "/admin/users/u5/payment", json={"status": "ok"}).raise_for_status()
    wait_for(lambda: emails(loop, "alan@example.com", RESOLVED_SUBJECT), 60,
             "the payment-fixed (resolved) email")
    loop.demo("POST", "/admin/users/u5/payment", json={"status": "failed"}).raise_for_status()

    def skipped_for_cooldown():
        return query(loop, "SELECT 1 FROM decisions WHERE rule = 'PaymentFailed' AND "
                           "user_id = 'u5' AND reason = 'cooldown'")

    wait_for(skipped_for_cooldown, 60, "the new episode to be skipped for the cooldown")
    assert len(emails(loop, "alan@example.com", EXPECTED["u5"][1])) == 1
    # Once the cooldown has passed, the still-firing new episode is emailed on a repeat.
    wait_for(lambda: len(emails(loop, "alan@example.com", EXPECTED["u5"][1])) == 2,
             PAYMENT_COOLDOWN + 60, "the second payment email after the cooldown")


def test_repeats_across_several_repeat_intervals_send_nothing_more(loop):
    time.sleep(4)  # at least one more repeat_interval for everyone
    for user, (address, subject) in EXPECTED.items():
        expected = 2 if user == "u5" else 1
        assert len(emails(loop, to=address, subject=subject)) == expected, user
        # Alertmanager did re-send: as duplicates of the episode (or, for u5's second episode,
        # as skips inside the cooldown), never as a second email.
        repeats = query(loop, "SELECT COUNT(*) FROM decisions WHERE user_id = ? AND "
                              "outcome != 'queued'", user)[0][0]
        assert repeats >= 3, f"Alertmanager should have re-sent {user}'s alert"
    assert emails(loop, to="ken@example.com") == []


def test_nudge_killed_mid_way_loses_nothing_and_sends_no_duplicates(loop):
    before = {m["Message-ID"] for m in loop.mail.snapshot()}
    loop.kill_nudge()
    # While Nudge is down, Ken's payment fails: Alertmanager keeps retrying the webhook.
    loop.demo("POST", "/admin/users/u7/payment", json={"status": "failed"}).raise_for_status()
    time.sleep(8)
    with pytest.raises(requests.ConnectionError):
        requests.get(loop.urls["nudge"] + "/-/healthy", timeout=2)
    loop.start_nudge()
    loop.wait_http("nudge", "/-/ready")
    wait_for(lambda: emails(loop, "ken@example.com", "payment didn't go through"), 90,
             "Ken's payment email after the restart")
    time.sleep(6)  # more repeats after the restart
    messages = loop.mail.snapshot()
    ids = [m["Message-ID"] for m in messages]
    assert len(ids) == len(set(ids)), "a delivery was sent twice"
    assert len(emails(loop, "ken@example.com")) == 1
    new = [m for m in messages if m["Message-ID"] not in before]
    assert [m["To"] for m in new] == ["ken@example.com"]


def test_one_click_unsubscribe_stops_the_emails_category_and_nothing_else(loop):
    (quota,) = emails(loop, to="grace@example.com")
    assert str(quota["List-Id"]).startswith('"Usage and quota" <usage.')
    url = quota["List-Unsubscribe"].strip("<>")
    response = requests.post(url, data="List-Unsubscribe=One-Click", timeout=10,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    assert query(loop, "SELECT category, source FROM category_suppressions WHERE user_id = 'u2'"
                 ) == [("usage", "one-click")]
    # Billing is another category: Grace's failed payment is still emailed.
    loop.demo("POST", "/admin/users/u2/payment", json={"status": "failed"}).raise_for_status()
    wait_for(lambda: emails(loop, "grace@example.com", "payment didn't go through"), 90,
             "Grace's payment email")
    assert len(emails(loop, to="grace@example.com")) == 2


def test_a_category_stopped_in_the_browser_stops_it_and_nothing_else(loop):
    """Ken (his payment failed while Nudge was down) stops "Billing and payments" on the page
    the link in that email opens: the payment-fixed email is not sent, a quota email is."""
    (payment,) = emails(loop, to="ken@example.com")
    body = payment.get_body(("plain",)).get_content()
    (link,) = re.findall(re.escape(loop.urls["nudge"]) + r"/unsubscribe/\S+", body)
    with chromium() as browser:
        browser.get(link)
        browser.find_element("css selector",
                             "button[aria-label='Stop Billing and payments']").click()
        wait_for(lambda: browser.find_elements("id", "confirmation"), 20, "the confirmation")
        assert browser.find_element("id", "confirmation").text == (
            "Done: you will not receive “Billing and payments” emails any more.")

    loop.demo("POST", "/admin/users/u7/payment", json={"status": "ok"}).raise_for_status()
    loop.demo("POST", "/admin/users/u7/quota", json={"used": 100000}).raise_for_status()

    def resolved_suppressed():
        return query(loop, "SELECT 1 FROM deliveries WHERE rule = 'PaymentFailed' AND "
                           "user_id = 'u7' AND kind = 'resolved' AND status = 'suppressed'")

    wait_for(resolved_suppressed, 90, "Ken's payment-fixed email to be suppressed")
    wait_for(lambda: emails(loop, "ken@example.com", "of your Acme API quota"), 90,
             "Ken's quota email (another category)")
    assert emails(loop, "ken@example.com", RESOLVED_SUBJECT) == []
    assert len(emails(loop, to="ken@example.com")) == 2
