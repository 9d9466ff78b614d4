"""The delivery worker end to end: webhook → SQLite queue → recipient → template → real SMTP.

Everything is real: a SQLite file, aiosmtpd servers on 127.0.0.1, an HTTP user directory,
and for crash and shutdown tests a real `nudge worker` process.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from app import create_app
from app.config import Config, load_config
from app.store import open_store
from app.worker import DeliveryWorker
from tests.conftest import ROOT, TOKEN, fixture_bytes, load_fixture, post_and_decide
from tests.directory_server import DirectoryServer
from tests.processes import NudgeProcess, wait_until
from tests.smtp_servers import DroppingServer, RecordingServer, RejectingServer, SlowServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADA = {
    "user_id": "u1",
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "plan": "free",
    "signup_at": "2026-11-20T10:00:00Z",
}
FIRST_EPISODE = "2026-11-22T20:04:34.529Z"


# --- helpers --------------------------------------------------------------------------------


def merged(base: dict, extra: dict) -> dict:
    result = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def build_config(config_data: dict, **sections) -> Config:
    """config_data plus overrides, with fast retries unless the test says otherwise."""
    data = merged(config_data, {"delivery": {"retry_backoff": "0.05s",
                                             "pause_probe_interval": "0.2s"}})
    return load_config(data=merged(data, sections), environ={})


def make_alert(user_id: str, *, rule: str = "NoFirstApiCall", template: str = "onboarding_first_call",
               starts_at: str = FIRST_EPISODE, labels: dict | None = None,
               annotations: dict | None = None) -> dict:
    return {
        "status": "firing",
        "labels": {"alertname": rule, "email_template": template, "user_id": user_id, **(labels or {})},
        "annotations": {"summary": f"{rule} for {user_id}", **(annotations or {})},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": f"{abs(hash((rule, user_id))):016x}"[:16],
    }


def make_payload(*alerts: dict) -> dict:
    return {
        "receiver": "nudge",
        "status": "firing",
        "alerts": list(alerts),
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
    }


def post(client, payload) -> dict:
    body = payload if isinstance(payload, bytes) else json.dumps(payload)
    response = post_and_decide(client, body, AUTH)
    assert response.status_code == 200, response.json
    return response.json


def deliveries(config: Config, **filters) -> list[dict]:
    store = open_store(config.database)
    try:
        return sorted(store.list_deliveries(**filters), key=lambda row: row["id"])
    finally:
        store.close()


def attempt_log(config: Config, delivery_id: int) -> list[dict]:
    store = open_store(config.database)
    try:
        return store.list_attempts(delivery_id)
    finally:
        store.close()


def outcomes(config: Config, delivery_id: int) -> list[str]:
    return [attempt["outcome"] for attempt in attempt_log(config, delivery_id)]


def wait_for_statuses(config: Config, expected: dict[int, str], timeout: float = 30.0) -> list[dict]:
    """Wait until every delivery id has its expected status; returns all deliveries."""

    def settled():
        rows = deliveries(config)
        by_id = {row["id"]: row["status"] for row in rows}
        return rows if all(by_id.get(i) == s for i, s in expected.items()) else None

    try:
        return wait_until(settled, timeout=timeout, message=f"statuses {expected}")
    except AssertionError:
        raise AssertionError(f"expected {expected}, got {deliveries(config)}") from None


def wait_settled(config: Config, count: int, timeout: float = 30.0) -> list[dict]:
    """Wait until `count` deliveries exist and none is queued or sending."""

    def done():
        rows = deliveries(config)
        busy = [row for row in rows if row["status"] in ("queued", "sending")]
        return rows if len(rows) == count and not busy else None

    try:
        return wait_until(done, timeout=timeout, message=f"{count} settled deliveries")
    except AssertionError:
        raise AssertionError(f"not settled: {deliveries(config)}") from None


class RunningWorker:
    """DeliveryWorker(config).run() in a thread for the duration of a `with` block."""

    def __init__(self, config: Config):
        self.worker = DeliveryWorker(config)
        self.thread = threading.Thread(target=self.worker.run, name="test-worker", daemon=True)

    def __enter__(self) -> RunningWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.worker.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "worker did not stop"


def text_part(message) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def html_part(message) -> str:
    return message.get_body(preferencelist=("html",)).get_content()


@pytest.fixture
def smtp():
    with RecordingServer() as server:
        yield server


@pytest.fixture
def directory():
    with DirectoryServer({"u1": dict(ADA)}) as server:
        yield server


# --- the "done when" ------------------------------------------------------------------


def test_done_when_one_email_no_repeat_and_one_click_unsubscribe_stops_next_episode(
    config_data, smtp, directory
):
    config = build_config(config_data, smtp={"url": smtp.url},
                          directory={"url": directory.url_template}, alerts={"cooldown": "0s"})
    client = create_app(config).test_client()
    with RunningWorker(config):
        assert post(client, fixture_bytes("firing-per-user.json"))["queued"] == 1
        (received,) = smtp.wait_for(1, timeout=30)
        wait_for_statuses(config, {1: "sent"})

        message = received.message
        assert received.rcpt_tos == ("ada@example.com",)
        assert message["To"] == "ada@example.com"
        assert message["From"] == "Nudge <nudge@localhost>"
        assert message["Subject"] == "Make your first call to Acme API"
        assert message["Date"].datetime.tzinfo is not None
        assert message["Message-ID"] == "<nudge-delivery-1@nudge.example.com>"
        unsubscribe = str(message["List-Unsubscribe"])
        assert unsubscribe.startswith("<https://nudge.example.com/unsubscribe/")
        assert unsubscribe.endswith(">")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message.get_content_type() == "multipart/alternative"
        assert [part.get_content_type() for part in message.iter_parts()] == [
            "text/plain", "text/html"
        ]
        assert "Hi Ada Lovelace," in text_part(message)
        assert "Hi Ada Lovelace," in html_part(message)
        assert "ada@example.com" in text_part(message)

        # Alertmanager sends the same episode again (repeat_interval): no second email.
        assert post(client, fixture_bytes("firing-per-user.json"))["duplicate"] == 1
        time.sleep(0.5)
        assert len(smtp.messages) == 1
        assert len(deliveries(config)) == 1

        # The mail client's one-click unsubscribe (RFC 8058).
        path = unsubscribe.strip("<>").removeprefix("https://nudge.example.com")
        response = client.post(path, data={"List-Unsubscribe": "One-Click"})
        assert response.status_code == 200

        # The next episode is recorded as suppressed and nothing is sent.
        payload = load_fixture("firing-per-user.json")
        payload["alerts"][0]["startsAt"] = "2026-11-23T08:00:00Z"
        assert post(client, payload)["queued"] == 1
        rows = wait_for_statuses(config, {1: "sent", 2: "suppressed"})
        assert rows[1]["last_error"] == "user unsubscribed from category 'NoFirstApiCall'"
        time.sleep(0.3)
        assert len(smtp.messages) == 1


# --- recipients -----------------------------------------------------------------------------


def test_recipient_order_label_then_static_map_then_directory(tmp_path, config_data, smtp, directory):
    static_map = tmp_path / "users.yml"
    static_map.write_text(
        "u1: static-ada@example.com\n"
        "u2:\n  email: sam@example.com\n  name: Sam Static\n"
    )
    directory.records["u2"] = {"name": "Samantha Directory"}  # no address: the map's wins
    directory.records["u3"] = {"email": "grace@example.com", "name": "Grace Hopper"}
    config = build_config(config_data, smtp={"url": smtp.url},
                          directory={"url": directory.url_template},
                          recipients={"static_map": str(static_map)})
    client = create_app(config).test_client()
    post(client, make_payload(
        make_alert("u1", labels={"email": "label-ada@example.com"}),  # label wins
        make_alert("u1", rule="FirstSuccessfulCall", template="onboarding_first_call"),  # map
        make_alert("u2"),  # static map, directory record merged over it
        make_alert("u3"),  # directory only
    ))
    with RunningWorker(config):
        rows = wait_settled(config, 4)
        received = smtp.wait_for(4, timeout=30)

    assert [(row["user_id"], row["rule"], row["status"], row["recipient"]) for row in rows] == [
        ("u1", "NoFirstApiCall", "sent", "label-ada@example.com"),
        ("u1", "FirstSuccessfulCall", "sent", "static-ada@example.com"),
        ("u2", "NoFirstApiCall", "sent", "sam@example.com"),
        ("u3", "NoFirstApiCall", "sent", "grace@example.com"),
    ]
    by_recipient = {message.rcpt_tos[0]: text_part(message.message) for message in received}
    # The directory's record is the template's `user` even when the address came from the label.
    assert "Hi Ada Lovelace," in by_recipient["label-ada@example.com"]
    assert "Hi Ada Lovelace," in by_recipient["static-ada@example.com"]
    assert "Hi Samantha Directory," in by_recipient["sam@example.com"]
    assert "Hi Grace Hopper," in by_recipient["grace@example.com"]


def test_no_address_anywhere_fails_and_says_what_was_tried(tmp_path, config_data, smtp, directory):
    static_map = tmp_path / "users.yml"
    static_map.write_text("someone-else: other@example.com\n")
    directory.records["u4"] = {"name": "No Address"}  # a record without an email
    config = build_config(config_data, smtp={"url": smtp.url},
                          directory={"url": directory.url_template},
                          recipients={"static_map": str(static_map)})
    client = create_app(config).test_client()
    # u1's record, with its address, shows the directory's records do hold one: u4's lack of
    # one is u4's (app/circuit.py), not a wrong directory.email_field.
    post(client, make_payload(make_alert("u4"), make_alert("u404"), make_alert("u1")))
    with RunningWorker(config):
        no_email, unknown, ada = wait_settled(config, 3)

    assert no_email["status"] == "failed" and no_email["attempts"] == 1
    assert no_email["last_error"] == (
        "no address: no address label; not in the static map; directory record has no address"
    )
    assert unknown["status"] == "failed" and unknown["attempts"] == 1
    assert "no address label" in unknown["last_error"]
    assert "directory: user not found" in unknown["last_error"]
    assert outcomes(config, unknown["id"]) == ["failed"]
    assert ada["status"] == "sent"
    assert [message.rcpt_tos[0] for message in smtp.messages] == ["ada@example.com"]


def test_directory_outside_the_address_order_being_down_does_not_hold_the_delivery(
    config_data, smtp, directory
):
    # The directory only supplies template data here: its outage cannot produce an address.
    directory.fail(503)
    config = build_config(config_data, smtp={"url": smtp.url},
                          directory={"url": directory.url_template, "retries": 0},
                          recipients={"order": ["label"]})
    client = create_app(config).test_client()
    post(client, make_payload(make_alert("u1")))
    with RunningWorker(config):
        (delivery,) = wait_settled(config, 1)
    assert delivery["status"] == "failed" and delivery["attempts"] == 1
    assert delivery["last_error"] == "no address: no address label"


# --- the directory is slow or down ------------------------------------------------------------


def test_slow_directory_does_not_block_a_known_address(config_data, smtp, directory):
    directory.slow(5.0)
    config = build_config(config_data, smtp={"url": smtp.url},
                          directory={"url": directory.url_template, "timeout": "0.3s", "retries": 0})
    client = create_app(config).test_client()
    post(client, make_payload(make_alert("u1", labels={"email": "ada@example.com"})))
    with RunningWorker(config):
        (delivery,) = wait_settled(config, 1)
        (received,) = smtp.wait_for(1, timeout=30)
    assert delivery["status"] == "sent"
    assert directory.hits("u1") >= 1
    # Rendered with an empty user record: the template falls back to a generic greeting.
    assert "Hi there," in text_part(received.message)
    assert "Ada" not in text_part(received.message)


def test_directory_down_uses_the_stale_cached_record(config_data, smtp, directory):
    config = build_config(config_data, smtp={"url": smtp.url}, alerts={"cooldown": "0s"},
                          directory={"url": directory.url_template, "cache_ttl": "0s", "retries": 0})
    client = create_app(config).test_client()
    with RunningWorker(config):
        post(client, make_payload(make_alert("u1")))
        wait_for_statuses(config, {1: "sent"})
        directory.fail(503)
        hits = directory.hits("u1")
        post(client, make_payload(make_alert("u1", starts_at="2026-11-23T08:00:00Z")))
        wait_for_statuses(config, {1: "sent", 2: "sent"})
        first, second = smtp.wait_for(2, timeout=30)
    assert directory.hits("u1") > hits  # it did ask, and fell back to what it knew
    assert second.rcpt_tos == ("ada@example.com",)
    assert "Hi Ada Lovelace," in text_part(second.message)


def test_directory_down_with_unknown_address_retries_until_it_is_back(config_data, smtp, directory):
    directory.fail(503)
    config = build_config(config_data, smtp={"url": smtp.url},
                          directory={"url": directory.url_template, "retries": 0},
                          delivery={"retry_backoff": "0.1s"})
    client = create_app(config).test_client()
    post(client, make_payload(make_alert("u1")))
    with RunningWorker(config):
        def retried_twice():
            (row,) = deliveries(config)
            return row if row["status"] == "queued" and row["attempts"] >= 2 else None

        waiting = wait_until(retried_twice, timeout=30, message="two failed attempts")
        assert "directory" in waiting["last_error"] and "503" in waiting["last_error"]
        assert smtp.messages == []  # never sent to nobody

        directory.reset()  # the directory is back
        (sent,) = wait_for_statuses(config, {1: "sent"})
        (received,) = smtp.wait_for(1, timeout=30)
    assert received.rcpt_tos == ("ada@example.com",)
    log = outcomes(config, sent["id"])
    assert log[-1] == "sent" and len(log) >= 3
    assert set(log[:-1]) == {"retry"}
    assert all("directory" in a["error"] for a in attempt_log(config, sent["id"])[:-1])


# --- SMTP failures --------------------------------------------------------------------------


def test_temporary_smtp_rejection_is_retried_then_sent(config_data):
    with RejectingServer(451, "4.3.0 try again later", stage="RCPT", times=1) as server:
        config = build_config(config_data, smtp={"url": server.url})
        client = create_app(config).test_client()
        post(client, make_payload(make_alert("u1", labels={"email": "ada@example.com"})))
        with RunningWorker(config):
            (delivery,) = wait_for_statuses(config, {1: "sent"})
            server.wait_for(1, timeout=30)
    assert delivery["attempts"] == 2
    log = attempt_log(config, 1)
    assert [a["outcome"] for a in log] == ["retry", "sent"]
    assert "451" in log[0]["error"]
    assert len(server.messages) == 1


def test_permanent_smtp_rejection_fails_at_once_without_retry(config_data):
    with RejectingServer(550, "5.1.1 user unknown", stage="RCPT") as server:
        config = build_config(config_data, smtp={"url": server.url})
        client = create_app(config).test_client()
        post(client, make_payload(make_alert("u1", labels={"email": "nobody@example.com"})))
        with RunningWorker(config):
            (delivery,) = wait_for_statuses(config, {1: "failed"})
            time.sleep(0.5)  # room for a (wrong) retry to happen
            (delivery,) = deliveries(config)
    assert delivery["status"] == "failed"
    assert delivery["attempts"] == 1
    assert "550" in delivery["last_error"] and "user unknown" in delivery["last_error"]
    assert outcomes(config, 1) == ["failed"]
    assert server.rejected == 1 and server.messages == []


def test_dropped_connection_is_retried_and_sent(config_data):
    with DroppingServer(stage="MAIL", times=1) as server:
        config = build_config(config_data, smtp={"url": server.url})
        client = create_app(config).test_client()
        post(client, make_payload(make_alert("u1", labels={"email": "ada@example.com"})))
        with RunningWorker(config):
            wait_for_statuses(config, {1: "sent"})
            (received,) = server.wait_for(1, timeout=30)
    assert server.dropped == 1
    assert outcomes(config, 1) == ["retry", "sent"]
    assert received.rcpt_tos == ("ada@example.com",)


def test_transient_failures_beyond_max_attempts_make_the_delivery_dead(config_data):
    # 450, not 451 4.7.x: that is the relay asking to slow down (tests/test_relay_throttle.py)
    with RejectingServer(450, "4.2.1 mailbox busy", stage="RCPT") as server:
        config = build_config(config_data, smtp={"url": server.url},
                              delivery={"max_attempts": 3})
        client = create_app(config).test_client()
        post(client, make_payload(make_alert("u1", labels={"email": "ada@example.com"})))
        with RunningWorker(config):
            (delivery,) = wait_for_statuses(config, {1: "dead"})
    assert delivery["attempts"] == 3
    assert "450" in delivery["last_error"] and "mailbox busy" in delivery["last_error"]
    assert outcomes(config, 1) == ["retry", "retry", "dead"]
    assert server.rejected == 3 and server.messages == []


def test_one_rejected_recipient_does_not_stop_the_others(config_data):
    users = [f"u{n}" for n in range(5)]
    with RejectingServer(550, "5.1.1 user unknown", stage="RCPT", times=1) as server:
        config = build_config(config_data, smtp={"url": server.url})
        client = create_app(config).test_client()
        post(client, make_payload(*(make_alert(u, labels={"email": f"{u}@example.com"}) for u in users)))
        with RunningWorker(config):
            rows = wait_settled(config, 5)
            server.wait_for(4, timeout=30)
    statuses = sorted(row["status"] for row in rows)
    assert statuses == ["failed", "sent", "sent", "sent", "sent"]
    (failed,) = [row for row in rows if row["status"] == "failed"]
    delivered = sorted(message.rcpt_tos[0] for message in server.messages)
    assert delivered == sorted(f"{u}@example.com" for u in users if u != failed["user_id"])


# --- templates ------------------------------------------------------------------------------


def test_render_error_fails_that_delivery_and_the_others_are_sent(tmp_path, config_data, smtp):
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "email_templates", templates)
    broken = templates / "broken"
    broken.mkdir()
    (broken / "subject.txt").write_text("Your plan\n")
    (broken / "body.txt").write_text("Hello,\n\nYour plan is {{ labels.no_such_label }}.\n")
    config = build_config(config_data, smtp={"url": smtp.url}, templates_dir=str(templates))
    client = create_app(config).test_client()
    post(client, make_payload(
        make_alert("u1", labels={"email": "u1@example.com"}),
        make_alert("u2", rule="PlanCheck", template="broken", labels={"email": "u2@example.com"}),
        make_alert("u3", labels={"email": "u3@example.com"}),
    ))
    with RunningWorker(config):
        rows = wait_settled(config, 3)
        smtp.wait_for(2, timeout=30)
    assert [row["status"] for row in rows] == ["sent", "failed", "sent"]
    error = rows[1]["last_error"]
    assert error.startswith("template error: broken/body.txt line 3: "), error
    assert "no_such_label" in error
    assert outcomes(config, rows[1]["id"]) == ["failed"]
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == ["u1@example.com", "u3@example.com"]


def test_hostile_label_and_annotation_values_cannot_inject_headers_html_or_code(
    config_data, smtp, directory
):
    config = build_config(config_data, smtp={"url": smtp.url},
                          directory={"url": directory.url_template})
    client = create_app(config).test_client()
    post(client, make_payload(make_alert(
        "u1", rule="DeprecatedEndpointInUse", template="deprecated_endpoint",
        labels={"endpoint": "/v1/old\r\nBcc: evil@example.com"},
        annotations={"replacement": "<script>alert(1)</script> {{ 7*7 }}"},
    )))
    with RunningWorker(config):
        wait_for_statuses(config, {1: "sent"})
        (received,) = smtp.wait_for(1, timeout=30)

    message = received.message
    assert received.rcpt_tos == ("ada@example.com",)
    assert message["Bcc"] is None
    header_block = received.raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in header_block
    assert "\r" not in message["Subject"] and "\n" not in message["Subject"]
    assert "/v1/old" in message["Subject"]
    html = html_part(message)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>" not in html
    text = text_part(message)
    assert "{{ 7*7 }}" in text and "49" not in text
    assert "{{ 7*7 }}" in html


def test_line_breaks_in_the_address_label_fail_the_delivery_instead_of_adding_a_recipient(
    config_data, smtp
):
    config = build_config(config_data, smtp={"url": smtp.url})
    client = create_app(config).test_client()
    post(client, make_payload(
        make_alert("u1", labels={"email": "ada@example.com\r\nBcc: evil@example.com"}),
        make_alert("u2", labels={"email": "u2@example.com"}),
    ))
    with RunningWorker(config):
        hostile, good = wait_settled(config, 2)
        smtp.wait_for(1, timeout=30)
    assert hostile["status"] == "failed"
    assert "cannot build message" in hostile["last_error"]
    assert good["status"] == "sent"
    assert [m.rcpt_tos for m in smtp.messages] == [("u2@example.com",)]


# --- throughput -----------------------------------------------------------------------------


def test_parallel_senders_reuse_at_most_smtp_connections(config_data):
    users = [f"u{n}" for n in range(20)]
    with SlowServer(latency=0.02) as server:
        config = build_config(config_data, smtp={"url": server.url, "connections": 4})
        client = create_app(config).test_client()
        post(client, make_payload(*(make_alert(u, labels={"email": f"{u}@example.com"}) for u in users)))
        with RunningWorker(config):
            received = server.wait_for(20, timeout=60)
            rows = wait_settled(config, 20)
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(f"{u}@example.com" for u in users)
    assert {row["status"] for row in rows} == {"sent"}
    assert 1 <= server.connections <= 4


# --- crashes and shutdown (real `nudge worker` processes) ------------------------------------


def queue_one(config_data: dict, smtp_url: str, **delivery) -> Config:
    data = merged(config_data, {"smtp": {"url": smtp_url}, "delivery": delivery})
    config = load_config(data=data, environ={})
    post(create_app(config).test_client(), make_payload(
        make_alert("u1", labels={"email": "ada@example.com"})
    ))
    return config


def test_worker_killed_mid_send_loses_nothing(tmp_path, config_data):
    with SlowServer(latency=0.5) as slow, RecordingServer() as good:
        # The lease stamped on the claim must outlast spotting the send and killing the
        # worker (else it re-claims its own delivery), but not the test: 6 s. It must also
        # outlast one send at the URL's timeout (6 commands x 0.9 s), or the worker refuses it.
        slow_url = slow.url + "?timeout=0.9"
        config = queue_one(config_data, slow_url, lease="6s")
        first = NudgeProcess(tmp_path, merged(config_data, {
            "smtp": {"url": slow_url}, "delivery": {"lease": "6s"}}), command=("worker",)).start()
        try:
            wait_until(lambda: deliveries(config)[0]["status"] == "sending" and slow.connections >= 1,
                       timeout=30, message=f"a send in flight; log:\n{first.output}")
        finally:
            first.kill_group()
        assert deliveries(config)[0]["status"] == "sending"
        assert outcomes(config, 1) == ["sending"]

        second = NudgeProcess(tmp_path, merged(config_data, {
            "smtp": {"url": good.url + "?timeout=0.3"}, "delivery": {"lease": "2s"}}),
            command=("worker",)).start()
        try:
            (delivery,) = wait_for_statuses(config, {1: "sent"}, timeout=45)
            (received,) = good.wait_for(1, timeout=30)
        finally:
            assert second.stop() == 0, second.output
    assert received.rcpt_tos == ("ada@example.com",)
    assert slow.messages == []
    log = attempt_log(config, 1)
    assert [a["outcome"] for a in log] == ["abandoned", "sent"]
    assert "lease expired" in log[0]["error"]
    assert delivery["attempts"] == 2


def test_sigterm_finishes_the_message_in_flight_and_exits_0(tmp_path, config_data):
    with SlowServer(latency=1.0) as slow:  # a send takes at least 4 s
        config = queue_one(config_data, slow.url)
        worker = NudgeProcess(tmp_path, merged(config_data, {"smtp": {"url": slow.url}}),
                              command=("worker",)).start()
        try:
            wait_until(lambda: deliveries(config)[0]["status"] == "sending" and slow.connections >= 1,
                       timeout=30, message=f"a send in flight; log:\n{worker.output}")
            assert slow.messages == []
            code = worker.stop(signal.SIGTERM)
        finally:
            if worker.process.poll() is None:
                worker.kill_group()
        assert code == 0, worker.output
        (received,) = slow.wait_for(1, timeout=10)
    assert received.rcpt_tos == ("ada@example.com",)
    (delivery,) = deliveries(config)
    assert delivery["status"] == "sent"
    assert outcomes(config, 1) == ["sent"]
    assert "Traceback" not in worker.output


def test_outbox_is_used_when_no_smtp_url_is_configured(config_data, directory):
    config = build_config(config_data, directory={"url": directory.url_template})
    client = create_app(config).test_client()
    post(client, fixture_bytes("firing-per-user.json"))
    with RunningWorker(config):
        wait_for_statuses(config, {1: "sent"})
    files = list(Path(config.outbox_dir).glob("*.eml"))
    assert len(files) == 1
    assert "nudge-delivery-1@nudge.example.com" in files[0].name
    assert b"To: ada@example.com" in files[0].read_bytes()
