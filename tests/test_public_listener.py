"""server.public_bind: the recipient-facing pages on a listener of their own, in processes of
their own, so that clients on the internet cannot reach /webhook or /metrics, nor stall them."""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack

import pytest
import requests

from app.store import open_store
from app.suppressions import ALL, make_token
from demo_api.loop import free_port
from tests.conftest import TOKEN, fixture_bytes
from tests.processes import NudgeProcess, wait_until

STALLED_CONNECTIONS = 20
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def stall(stack: ExitStack, port: int, count: int) -> None:
    """Open `count` connections that start a request and never finish its headers."""
    for _ in range(count):
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        sock.sendall(b"GET /unsubscribe/x HTTP/1.1\r\nHost: nudge.example.com\r\nX-Slow: ")
    time.sleep(0.5)  # let the server accept them all


def timed_webhook_posts(url: str, count: int = 5, timeout: float = 3.0) -> list[float]:
    took = []
    for _ in range(count):
        started = time.monotonic()
        response = requests.post(url + "/webhook", data=fixture_bytes("firing-per-user.json"),
                                 headers=AUTH, timeout=timeout)
        assert response.status_code == 200
        took.append(time.monotonic() - started)
    return took


@pytest.fixture
def service(tmp_path, config_data):
    public_port = free_port()
    config_data["server"] = {"public_bind": f"127.0.0.1:{public_port}"}
    nudge = NudgeProcess(tmp_path, config_data).start()
    nudge.public_url = f"http://127.0.0.1:{public_port}"

    def public_answers():
        try:
            return requests.get(nudge.public_url + "/unsubscribe/x", timeout=1).status_code == 400
        except requests.RequestException:
            return False

    wait_until(public_answers, timeout=30, message="the public listener answering")
    yield nudge
    if nudge.process.poll() is None:
        nudge.stop()


def test_the_public_listener_serves_unsubscribe_and_nothing_internal(service, config_data):
    token = make_token(config_data["secret_key"], "u-42", ALL)
    page = requests.get(f"{service.public_url}/unsubscribe/{token}", timeout=10)
    assert page.status_code == 200 and "Email preferences" in page.text
    done = requests.post(f"{service.public_url}/unsubscribe/{token}", timeout=10,
                         data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    suppressions = open_store(config_data["database"]).list_suppressions()
    assert [(s["user_id"], s["scope"]) for s in suppressions] == [("u-42", ALL)]

    for method, path in [("POST", "/webhook"), ("GET", "/metrics"), ("GET", "/-/ready"),
                         ("GET", "/-/healthy")]:
        response = requests.request(method, service.public_url + path, headers=AUTH,
                                    data=fixture_bytes("firing-per-user.json"), timeout=10)
        assert response.status_code == 404, (method, path)
    # The internal listener keeps serving all of them.
    assert requests.get(service.url + "/metrics", timeout=10).status_code == 200
    assert requests.get(service.url + "/-/ready", timeout=10).status_code == 200
    assert timed_webhook_posts(service.url, count=1)


def test_every_page_of_the_recipient_facing_module_is_public(config_data, monkeypatch):
    """A page added to app/unsubscribe.py (a preference page, say) is served on the public
    listener without being listed anywhere else."""
    from flask import Blueprint

    from app import create_app, unsubscribe

    extra = Blueprint("preferences_example", __name__)
    extra.add_url_rule("/unsubscribe/<token>/preferences", "preferences",
                       lambda token: f"preferences for {token}")
    monkeypatch.setattr(unsubscribe, "preferences_example", extra, raising=False)
    client = create_app(config_data, public=True).test_client()
    assert client.get("/unsubscribe/abc/preferences").text == "preferences for abc"
    assert client.get("/unsubscribe/not-a-token").status_code == 400  # the existing page
    assert client.post("/webhook", data=b"{}").status_code == 404
    assert client.get("/metrics").status_code == 404


def test_stalled_clients_on_the_public_listener_do_not_delay_the_webhook(service):
    with ExitStack() as stack:
        stall(stack, int(service.public_url.rsplit(":", 1)[1]), STALLED_CONNECTIONS)
        # Stalled, they would wait for ever; the bounds leave room for a loaded machine.
        took = timed_webhook_posts(service.url, timeout=5.0)
        assert max(took) < 2.5, took
        started = time.monotonic()
        assert requests.get(service.url + "/-/ready", timeout=5).status_code == 200
        assert time.monotonic() - started < 2.5


def test_without_a_public_listener_stalled_clients_do_stall_the_webhook(tmp_path, config_data):
    """Why the public listener exists: the same clients on the one listener take every thread
    (this is what the test above would meet without it). One receiver process, so that every
    stalled connection lands in the same process's threads."""
    config_data["server"] = {"workers": 1}
    nudge = NudgeProcess(tmp_path, config_data).start()
    try:
        with ExitStack() as stack:
            stall(stack, nudge.port, STALLED_CONNECTIONS)
            with pytest.raises(requests.exceptions.Timeout):
                timed_webhook_posts(nudge.url, count=1, timeout=2.0)
    finally:
        nudge.stop()
