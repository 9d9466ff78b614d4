"""Poison deliveries: whatever goes wrong in one delivery, the retry policy holds (it ends
`dead` with a one-line reason, never stays `sending`, is never claimed forever) and the other
deliveries go out.

Real parts: a SQLite file, an aiosmtpd relay, an HTTP directory answering `Retry-After: nan`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from app import create_app
from app.directory import DirectoryClient, _retry_after_seconds
from app.store import open_store
from app.transports import SmtpTransport, parse_smtp_url
from tests.directory_server import DirectoryServer
from tests.smtp_servers import RecordingServer
from tests.test_delivery import (
    RunningWorker,
    attempt_log,
    build_config,
    make_alert,
    make_payload,
    post,
    wait_for_statuses,
)

FAST = {"max_attempts": 2, "retry_backoff": "0.05s"}


@pytest.mark.parametrize("value", [
    "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1", "-0", "1.5", "+5", "0x10",
    "1_000", "５", "²", "", " ", "\x00", "soon", "5s", "Wed, 99 Oct 2015 07:28:00 GMT",
    "Mon, 01 Jan 99999 00:00:00 GMT", "Thu, 01 Jan 1970 00:00:00 +9999",
])
def test_hostile_retry_after_values_are_ignored(value):
    assert _retry_after_seconds(value) is None


@pytest.mark.parametrize("value, expected", [
    ("0", 0.0), ("7", 7.0), (" 120 ", 120.0), ("9" * 5000, 1e12),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: now
])
def test_delta_seconds_and_http_dates_are_honoured(value, expected):
    assert _retry_after_seconds(value) == expected


def test_a_future_http_date_is_the_seconds_until_then():
    when = datetime.now(UTC) + timedelta(seconds=90)
    assert 85 < _retry_after_seconds(format_datetime(when, usegmt=True)) <= 90


def test_directory_answering_retry_after_nan_falls_back_within_its_budget():
    with DirectoryServer({"u1": {"email": "ada@example.com"}}) as server:
        server.fail(503, retry_after="nan")
        with DirectoryClient(server.url_template, timeout=1.0, retries=2, backoff=0.01) as client:
            started = time.monotonic()
            lookup = client.lookup("u1")

        assert lookup.source == "unavailable" and "503" in lookup.error
        assert time.monotonic() - started < 1.5
        assert server.hits("u1") == 3  # retried with the normal backoff


def test_retry_after_nan_from_the_directory_ends_dead_and_the_others_are_sent(config_data):
    with RecordingServer() as relay, DirectoryServer({}) as directory:
        directory.fail(503, retry_after="nan")
        config = build_config(config_data, smtp={"url": relay.url}, delivery=FAST,
                              directory={"url": directory.url_template, "retries": 1})
        client = create_app(config).test_client()
        post(client, make_payload(make_alert("u1"),
                                  make_alert("u2", labels={"email": "bob@example.com"})))
        with RunningWorker(config):
            rows = wait_for_statuses(config, {1: "dead", 2: "sent"}, timeout=20)

    assert rows[0]["attempts"] == 2
    assert "directory answered 503" in rows[0]["last_error"]
    assert [a["outcome"] for a in attempt_log(config, 1)] == ["retry", "dead"]
    assert relay.wait_for(1)[0].rcpt_tos == ("bob@example.com",)


class BuggyTransport(SmtpTransport):
    """A real SMTP transport with a bug that strikes for one recipient."""

    def send(self, message):
        if message["To"] == "poison@example.com":
            raise RuntimeError("boom\nsecond line")
        super().send(message)


def test_an_unexpected_error_counts_as_an_attempt_and_ends_dead_with_one_line(config_data):
    with RecordingServer() as relay:
        config = build_config(config_data, smtp={"url": relay.url}, delivery=FAST)
        client = create_app(config).test_client()
        post(client, make_payload(make_alert("u1", labels={"email": "poison@example.com"}),
                                  make_alert("u2", labels={"email": "bob@example.com"})))
        running = RunningWorker(config)
        settings = parse_smtp_url(relay.url)
        running.worker.new_transport = lambda: BuggyTransport(settings)
        with running:
            rows = wait_for_statuses(config, {1: "dead", 2: "sent"}, timeout=20)

    poisoned = rows[0]
    assert poisoned["attempts"] == 2
    assert poisoned["last_error"] == "unexpected error: RuntimeError: boom second line"
    assert [a["outcome"] for a in attempt_log(config, 1)] == ["retry", "dead"]
    assert relay.wait_for(1)[0].rcpt_tos == ("bob@example.com",)


def test_claims_that_never_finished_still_end_dead_at_max_attempts(config_data):
    """Workers killed mid-send again and again (e.g. a message that crashes the process)."""
    with RecordingServer() as relay:
        config = build_config(config_data, smtp={"url": relay.url}, delivery=FAST)
        client = create_app(config).test_client()
        post(client, make_payload(make_alert("u1", labels={"email": "ada@example.com"})))
        store = open_store(config.database)
        try:
            for _ in range(2):  # two claims whose lease ran out without an outcome
                assert store.claim_due(time.time(), lease=0.01)
                time.sleep(0.02)
        finally:
            store.close()
        with RunningWorker(config):
            (row,) = wait_for_statuses(config, {1: "dead"}, timeout=20)

    assert "ended without an outcome" in row["last_error"]
    assert [a["outcome"] for a in attempt_log(config, 1)] == ["abandoned", "abandoned", "dead"]
    assert relay.messages == []
