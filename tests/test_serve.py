"""`nudge serve` as a real gunicorn service on a loopback port."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app.store import open_store
from tests.conftest import TOKEN, fixture_bytes
from tests.processes import NudgeProcess, wait_until

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.fixture
def service(tmp_path, config_data):
    config_data["server"] = {"workers": 4}
    nudge = NudgeProcess(tmp_path, config_data).start()
    yield nudge
    if nudge.process.poll() is None:
        nudge.stop()


def sample(metrics_text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_concurrent_identical_posts_to_several_workers_make_one_delivery(service, config_data):
    body = fixture_bytes("firing-per-user.json")

    def post(_):
        return requests.post(service.url + "/webhook", data=body, headers=AUTH, timeout=30)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(post, range(48)))
    assert [r.status_code for r in responses] == [200] * 48
    assert len({r.json()["notification_id"] for r in responses}) == 48

    store = open_store(config_data["database"])
    decisions = wait_until(lambda: len(d := store.list_decisions()) == 48 and d,
                           message="48 decisions")
    assert sorted(d["outcome"] for d in decisions) == ["duplicate"] * 47 + ["queued"]
    assert len(store.list_deliveries()) == 1
    # The answers came from more than one worker process, and metrics add them all up.
    metrics = requests.get(service.url + "/metrics", timeout=10).text
    assert sample(metrics, "nudge_webhook_requests_total", code="200") == 48
    assert sample(metrics, "nudge_alert_decisions_total", outcome="duplicate",
                  reason="same_episode") == 47


def test_grouped_and_hostile_requests_against_the_real_server(service):
    ok = requests.post(service.url + "/webhook", data=fixture_bytes("grouped-five-users.json"),
                       headers=AUTH, timeout=10)
    assert ok.status_code == 200 and ok.json()["status"] == "accepted"
    bad = requests.post(service.url + "/webhook", data=b"\x00" * 1000, headers=AUTH, timeout=10)
    assert bad.status_code == 400
    unauthorized = requests.post(service.url + "/webhook", data=b"{}", timeout=10)
    assert unauthorized.status_code == 401
    huge = requests.post(service.url + "/webhook", data=b" " * (11 * 1024 * 1024),
                         headers=AUTH, timeout=30)
    assert huge.status_code == 413
    # still serving
    assert requests.get(service.url + "/-/healthy", timeout=10).status_code == 200


def test_sigterm_stops_receiver_and_worker_cleanly(service):
    assert service.group_alive()
    code = service.stop(signal.SIGTERM)
    assert code == 0, service.output
    wait_until(lambda: not service.group_alive(), timeout=30, message="all processes gone")
    assert "Traceback" not in service.output
