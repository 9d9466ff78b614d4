"""A broken setup is not a recipient's fault: sending pauses, nothing is failed or counted,
and everything goes out by itself once the setup works again.

Real parts: a SQLite file, aiosmtpd relays that refuse our sender or our login, an HTTP user
directory that answers 404 (or 401) for everyone, and the delivery worker in a thread.
"""

from __future__ import annotations

import pytest
import yaml
from prometheus_client import REGISTRY

from app import create_app
from app.config import ConfigError, load_config
from tests.directory_server import DirectoryServer
from tests.processes import wait_until
from tests.smtp_servers import RecordingServer, RejectingServer, StartTlsServer, generate_certificate
from tests.test_delivery import (
    ADA,
    RunningWorker,
    build_config,
    deliveries,
    make_alert,
    make_payload,
    outcomes,
    post,
    wait_for_statuses,
)

USERS = ("u1", "u2", "u3")
# Few attempts and fast retries: were a setup failure blamed on the recipients, every
# delivery would be failed or dead within a second.
FAST = {"max_attempts": 2, "retry_backoff": "0.05s", "pause_probe_interval": "0.3s"}


def paused_gauge(reason: str) -> float | None:
    return REGISTRY.get_sample_value("nudge_sending_paused", {"reason": reason})


def queue_for(config, *, with_address: bool = True) -> None:
    client = create_app(config).test_client()
    alerts = [make_alert(user, labels={"email": f"{user}@example.com"} if with_address else {})
              for user in USERS]
    assert post(client, make_payload(*alerts))["queued"] == len(USERS)


def assert_waiting_uncounted(config) -> None:
    """Every delivery is back in the queue, none failed and no attempt counted."""
    # Looked at between two probes: a probe (or a claim released untouched) is `sending`.
    rows = wait_until(lambda: (r := deliveries(config)) and all(
        row["status"] != "sending" for row in r) and r, timeout=10, message="between probes")
    assert [row["status"] for row in rows] == ["queued"] * len(USERS), rows
    assert [row["attempts"] for row in rows] == [0] * len(USERS), rows


def assert_all_sent_once(config, server) -> None:
    rows = wait_for_statuses(config, {n: "sent" for n in range(1, len(USERS) + 1)})
    received = server.wait_for(len(USERS))
    assert sorted(r.rcpt_tos[0] for r in received) == [f"{u}@example.com" for u in USERS]
    assert [row["attempts"] for row in rows] == [1] * len(USERS)
    for row in rows:
        assert outcomes(config, row["id"]) == ["sent"]


def test_relay_refusing_the_sender_pauses_sending_until_it_is_fixed(config_data, caplog):
    with RejectingServer(553, "5.7.1 sender not allowed", stage="MAIL") as relay:
        config = build_config(config_data, smtp={"url": relay.url}, delivery=FAST)
        queue_for(config)
        with RunningWorker(config):
            # The pause, then at least two probes, each refused again.
            wait_until(lambda: relay.rejected >= 3, timeout=20, message="probes")
            assert_waiting_uncounted(config)
            assert paused_gauge("smtp_sender") == 1
            assert relay.messages == []

            relay.heal()
            assert_all_sent_once(config, relay)
            wait_until(lambda: paused_gauge("smtp_sender") == 0, timeout=5)

    paused = [r.getMessage() for r in caplog.records if "sending paused" in r.getMessage()]
    assert len(paused) == 1, paused  # one clear line, not one per delivery or probe
    assert "smtp_sender" in paused[0] and "553" in paused[0] and "sender not allowed" in paused[0]
    assert any("sending resumed" in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return generate_certificate(tmp_path_factory.mktemp("tls"))


def test_relay_refusing_the_login_pauses_sending_until_the_password_is_right(
    config_data, certificate
):
    with StartTlsServer(certificate, credentials=("nudge", "rotated")) as relay:
        url = f"smtp://nudge:secret@127.0.0.1:{relay.port}?tls_ca={certificate.cert_path}"
        config = build_config(config_data, smtp={"url": url}, delivery=FAST)
        queue_for(config)
        with RunningWorker(config):
            wait_until(lambda: paused_gauge("smtp_auth") == 1, timeout=20, message="paused")
            wait_until(lambda: relay.connections >= 3, timeout=20, message="probes")
            assert_waiting_uncounted(config)

            relay.credentials = ("nudge", "secret")  # the relay's password is fixed
            assert_all_sent_once(config, relay)
            assert paused_gauge("smtp_auth") == 0


def test_directory_answering_404_for_everyone_pauses_sending_until_it_is_fixed(config_data):
    records = {user: {**ADA, "user_id": user, "email": f"{user}@example.com"} for user in USERS}
    with RecordingServer() as relay, DirectoryServer(records) as directory:
        directory.fail(404)  # e.g. the wrong database behind it, or a wrong path prefix
        config = build_config(config_data, smtp={"url": relay.url}, delivery=FAST,
                              directory={"url": directory.url_template})
        queue_for(config, with_address=False)
        with RunningWorker(config):
            wait_until(lambda: paused_gauge("directory_not_found") == 1, timeout=20,
                       message="paused")
            requests_when_paused = len(directory.requests)
            wait_until(lambda: len(directory.requests) >= requests_when_paused + 2, timeout=20,
                       message="probes")
            assert_waiting_uncounted(config)

            directory.reset()
            assert_all_sent_once(config, relay)
            assert paused_gauge("directory_not_found") == 0


def test_directory_refusing_our_credentials_pauses_sending_until_it_accepts_them(config_data):
    records = {user: {**ADA, "user_id": user, "email": f"{user}@example.com"} for user in USERS}
    with RecordingServer() as relay, DirectoryServer(records) as directory:
        directory.fail(401)
        config = build_config(config_data, smtp={"url": relay.url}, delivery=FAST,
                              directory={"url": directory.url_template})
        queue_for(config, with_address=False)
        with RunningWorker(config):
            wait_until(lambda: paused_gauge("directory_auth") == 1, timeout=20, message="paused")
            wait_until(lambda: len(directory.requests) >= 4, timeout=20, message="probes")
            assert_waiting_uncounted(config)

            directory.reset()
            assert_all_sent_once(config, relay)


def test_an_unknown_user_is_still_failed_once_the_directory_has_shown_it_works(config_data):
    records = {"u1": {**ADA, "email": "u1@example.com"}}
    with RecordingServer() as relay, DirectoryServer(records) as directory:
        config = build_config(config_data, smtp={"url": relay.url}, delivery=FAST,
                              directory={"url": directory.url_template})
        client = create_app(config).test_client()
        post(client, make_payload(make_alert("u1"), make_alert("ghost")))
        with RunningWorker(config):
            rows = wait_for_statuses(config, {1: "sent", 2: "failed"})

    ghost = rows[1]
    assert ghost["attempts"] == 1 and "directory: user not found" in ghost["last_error"]
    assert outcomes(config, ghost["id"]) == ["failed"]
    assert paused_gauge("directory_not_found") == 0


def test_directory_records_without_the_configured_field_pause_sending_until_they_have_it(
    config_data, caplog
):
    # directory.email_field says `mail`, the records hold `email`: no user's fault.
    records = {user: {**ADA, "user_id": user, "email": f"{user}@example.com"} for user in USERS}
    with RecordingServer() as relay, DirectoryServer(records) as directory:
        config = build_config(config_data, smtp={"url": relay.url}, delivery=FAST,
                              directory={"url": directory.url_template, "email_field": "mail"})
        queue_for(config, with_address=False)
        with RunningWorker(config):
            wait_until(lambda: paused_gauge("directory_no_address") == 1, timeout=20,
                       message="paused")
            requests_when_paused = len(directory.requests)
            wait_until(lambda: len(directory.requests) >= requests_when_paused + 2, timeout=20,
                       message="probes asking the directory again, not its cache")
            assert_waiting_uncounted(config)
            assert relay.messages == []

            for user, record in directory.records.items():  # the directory now has the field
                record["mail"] = f"{user}@example.com"
            assert_all_sent_once(config, relay)
            assert paused_gauge("directory_no_address") == 0

    paused = [r.getMessage() for r in caplog.records if "sending paused" in r.getMessage()]
    assert len(paused) == 1, paused
    assert "the directory's records have no 'mail' field for 3 users in a row: is " \
        "directory.email_field right?" in paused[0]


def test_one_user_without_an_address_while_others_have_one_fails_only_that_delivery(config_data):
    records = {user: {**ADA, "user_id": user, "mail": f"{user}@example.com"} for user in USERS}
    del records["u2"]["mail"]
    with RecordingServer() as relay, DirectoryServer(records) as directory:
        config = build_config(config_data, smtp={"url": relay.url}, delivery=FAST,
                              directory={"url": directory.url_template, "email_field": "mail"})
        queue_for(config, with_address=False)
        with RunningWorker(config):
            rows = wait_for_statuses(config, {1: "sent", 2: "failed", 3: "sent"})

    nomail = rows[1]
    assert nomail["user_id"] == "u2" and nomail["attempts"] == 1
    assert "directory record has no address" in nomail["last_error"]
    assert outcomes(config, nomail["id"]) == ["failed"]
    assert sorted(m.rcpt_tos[0] for m in relay.messages) == ["u1@example.com", "u3@example.com"]
    assert paused_gauge("directory_no_address") == 0


def test_static_map_entries_without_the_address_pause_sending_instead_of_failing(
    config_data, tmp_path
):
    # `mail:` where the static map's entries hold `email:`; fixing the file needs a restart.
    static_map = tmp_path / "users.yml"
    static_map.write_text(yaml.safe_dump({u: {"mail": f"{u}@example.com"} for u in USERS}))
    with RecordingServer() as relay:
        config = build_config(config_data, smtp={"url": relay.url}, delivery=FAST,
                              recipients={"static_map": str(static_map)})
        queue_for(config, with_address=False)
        with RunningWorker(config):
            wait_until(lambda: paused_gauge("static_map_no_address") == 1, timeout=20,
                       message="paused")
            assert_waiting_uncounted(config)

        static_map.write_text(yaml.safe_dump({u: {"email": f"{u}@example.com"} for u in USERS}))
        with RunningWorker(config):
            assert_all_sent_once(config, relay)


def test_a_recipient_refused_at_rcpt_fails_only_that_delivery_and_never_pauses(config_data):
    with RejectingServer(550, "5.1.1 user unknown", stage="RCPT", times=1) as relay:
        config = build_config(config_data, smtp={"url": relay.url}, delivery=FAST)
        queue_for(config)
        with RunningWorker(config):
            rows = wait_until(lambda: (r := deliveries(config)) and all(
                row["status"] in ("sent", "failed") for row in r) and r, timeout=20)
    assert sorted(row["status"] for row in rows) == ["failed", "sent", "sent"]
    assert paused_gauge("smtp_sender") == 0


# -- a From or Reply-To that no message could carry is refused before anything is queued ------


@pytest.mark.parametrize("key, value", [
    ("from", "nudge@"), ("from", "Acme noreply@acme.com"), ("from", "a@example.com, b@example.com"),
    ("reply_to", "support"), ("reply_to", "a@example.com\r\nBcc: x@example.com"),
])
def test_an_invalid_from_or_reply_to_is_refused_at_start_up(config_data, key, value):
    with pytest.raises(ConfigError) as caught:
        load_config(data={**config_data, "smtp": {key: value}}, environ={})
    (line,) = caught.value.problems
    assert line.startswith(f"defaults: smtp.{key}: ")
    assert "valid email address" in line or "line breaks" in line


def test_nudge_check_reports_an_invalid_from_in_one_line(runner, config_file, config_data):
    config_data["smtp"] = {"from": "Acme <noreply@>"}
    config_file.write_text(yaml.safe_dump(config_data))

    result = runner("check", "--no-promtool")

    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if "smtp.from" in line]
    assert len(lines) == 1, result.output
    assert "not exactly one valid email address: 'Acme <noreply@>'" in lines[0]
