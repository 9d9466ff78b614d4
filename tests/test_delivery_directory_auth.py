"""Deliveries when the directory is behind OAuth 2.0 and its token endpoint is down, and when
the only record left is older than directory.max_stale: real worker, SMTP and servers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app import create_app
from tests.directory_server import TOKEN_ENDPOINT, DirectoryServer, TokenIssuer
from tests.processes import wait_until
from tests.smtp_servers import RecordingServer
from tests.test_delivery import (
    ADA,
    RunningWorker,
    build_config,
    deliveries,
    make_alert,
    make_payload,
    post,
    text_part,
    wait_for_statuses,
    wait_settled,
)


@pytest.fixture
def smtp():
    with RecordingServer() as server:
        yield server


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer("nudge", "client-secret", expires_in=300)


@pytest.fixture
def directory(issuer: TokenIssuer):
    with DirectoryServer({"u1": dict(ADA)}, issuer=issuer) as server:
        yield server


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "directory-client-secret"
    path.write_text("client-secret\n")
    return path


def oauth_directory(directory: DirectoryServer, token_url: str, secret_file: Path) -> dict:
    return {"url": directory.url_template, "retries": 0, "timeout": "0.5s",
            "oauth": {"token_url": token_url, "client_id": "nudge",
                      "client_secret_file": str(secret_file)}}


def test_token_endpoint_down_a_known_address_is_sent_with_an_empty_record(
    config_data, smtp, directory, issuer, secret_file
):
    with DirectoryServer(issuer=issuer) as tokens:
        token_url = tokens.token_url  # closed below: nothing answers there any more
    config = build_config(config_data, smtp={"url": smtp.url},
                          directory=oauth_directory(directory, token_url, secret_file))
    client = create_app(config).test_client()
    post(client, make_payload(make_alert("u1", labels={"email": "ada@example.com"})))
    with RunningWorker(config):
        (delivery,) = wait_settled(config, 1)
        (received,) = smtp.wait_for(1, timeout=30)
    assert delivery["status"] == "sent"
    assert received.rcpt_tos == ("ada@example.com",)
    assert "Hi there," in text_part(received.message)  # no live record to personalise with
    assert directory.hits("u1") == 0  # no token, so the directory was never asked


def test_token_endpoint_down_an_unknown_address_waits_until_it_is_back(
    config_data, smtp, directory, secret_file
):
    directory.fail(503, TOKEN_ENDPOINT)
    config = build_config(config_data, smtp={"url": smtp.url},
                          directory=oauth_directory(directory, directory.token_url, secret_file),
                          delivery={"retry_backoff": "0.1s"})
    client = create_app(config).test_client()
    post(client, make_payload(make_alert("u1")))
    with RunningWorker(config):
        def retried_twice():
            (row,) = deliveries(config)
            return row if row["status"] == "queued" and row["attempts"] >= 2 else None

        waiting = wait_until(retried_twice, timeout=30, message="two failed attempts")
        assert "token endpoint answered 503" in waiting["last_error"]
        assert smtp.messages == []  # never sent to nobody

        directory.reset()  # the token endpoint is back
        wait_for_statuses(config, {1: "sent"})
        (received,) = smtp.wait_for(1, timeout=30)
    assert received.rcpt_tos == ("ada@example.com",)
    assert "Hi Ada Lovelace," in text_part(received.message)


def test_a_record_older_than_max_stale_is_not_used_the_delivery_waits(
    config_data, smtp, directory, secret_file
):
    settings = oauth_directory(directory, directory.token_url, secret_file)
    config = build_config(config_data, smtp={"url": smtp.url}, alerts={"cooldown": "0s"},
                          directory={**settings, "cache_ttl": "0s", "max_stale": "0.3s"},
                          delivery={"retry_backoff": "0.1s"})
    client = create_app(config).test_client()
    with RunningWorker(config):
        post(client, make_payload(make_alert("u1")))
        wait_for_statuses(config, {1: "sent"})
        directory.fail(503)
        time.sleep(0.4)  # the cached record is now older than max_stale
        post(client, make_payload(make_alert("u1", starts_at="2026-11-23T08:00:00Z")))

        def retried():
            rows = deliveries(config)
            waiting = len(rows) == 2 and rows[1]["status"] == "queued" and rows[1]["attempts"] >= 2
            return rows if waiting else None

        first, second = wait_until(retried, timeout=30, message="the second delivery retried")
        assert "longer than max_stale" in second["last_error"]
        assert len(smtp.messages) == 1  # not sent to an address the directory may have dropped
