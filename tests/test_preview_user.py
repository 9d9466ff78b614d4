"""`nudge preview --user ID` renders with the user's real record from a real HTTP directory,
and says when it fell back to the sample record."""

from __future__ import annotations

import json
from email import message_from_string, policy

import pytest
import yaml

from tests.conftest import FIXTURES
from tests.directory_server import DirectoryServer

GRACE = {"user_id": "u2", "name": "Grace Hopper", "email": "grace@example.com", "plan": "free",
         "quota_used": 930, "quota_limit": 1000}


@pytest.fixture
def directory(config_file, config_data):
    with DirectoryServer({"u2": GRACE}) as server:
        config_data["directory"] = {"url": server.url_template, "timeout": "1s", "retries": 0}
        config_file.write_text(yaml.safe_dump(config_data))
        yield server


def test_preview_for_a_user_shows_their_directory_record(runner, directory):
    result = runner("preview", "quota_warning", "--user", "u2")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.splitlines()[0] == "Subject: You've used 93% of your Acme API quota"
    assert "Hi Grace Hopper," in result.stdout
    assert "930 of the 1,000 requests in your free plan" in result.stdout
    assert directory.hits("u2") == 1

    eml = runner("preview", "quota_warning", "--user", "u2", "--format", "eml")
    message = message_from_string(eml.stdout, policy=policy.default)
    assert message["To"] == "grace@example.com"
    assert "/unsubscribe/u2." in str(message["List-Unsubscribe"])


def test_an_alert_file_asks_the_directory_for_its_user(runner, directory, tmp_path):
    alert = tmp_path / "alert.json"
    alert.write_text(json.dumps({"labels": {"alertname": "QuotaNearlyExhausted",
                                            "user_id": "u2"},
                                 "annotations": {"quota_used_ratio": "0.97"}}))
    result = runner("preview", "quota_warning", "--alert", str(alert))
    assert result.exit_code == 0, result.output
    assert "Hi Grace Hopper," in result.stdout


def test_an_unknown_user_falls_back_to_the_sample_record_and_says_so(runner, directory):
    result = runner("preview", "quota_warning", "--user", "u404")
    assert result.exit_code == 0, result.output
    assert ("note: user u404: no address label; directory: user not found: showing the "
            "sample user record") in result.stderr
    assert "Hi Jane Doe," in result.stdout


def test_a_directory_that_is_down_falls_back_and_says_why(runner, directory):
    directory.fail(503)
    result = runner("preview", "quota_warning", "--user", "u2")
    assert result.exit_code == 0, result.output
    assert ("note: user u2: no address label; directory unreachable (directory answered 503): "
            "showing the sample user record") in result.stderr
    assert "Hi Jane Doe," in result.stdout


def test_without_a_directory_it_says_there_is_none(runner, monkeypatch):
    monkeypatch.delenv("NUDGE_DIRECTORY_URL", raising=False)
    result = runner("preview", "quota_warning", "--user", "u2")
    assert result.exit_code == 0, result.output
    assert "note: user u2: no directory configured" in result.stderr
    assert "Hi Jane Doe," in result.stdout


def test_the_payload_fixture_still_previews(runner, directory):
    # The alert's user u1 is not in this directory: sample record, and a note.
    result = runner("preview", "onboarding_first_call", "--alert",
                    str(FIXTURES / "firing-per-user.json"))
    assert result.exit_code == 0, result.output
    assert "note: user u1:" in result.stderr
