"""The demo API product: user directory, product metrics, product/admin endpoints, simulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server

from app.directory import ClientCredentials, DirectoryClient, DirectoryCredentials, Secret
from demo_api import create_app
from demo_api.oauth import OAuthSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORD_KEYS = {
    "user_id", "email", "name", "plan", "signup_at", "quota_limit", "quota_used",
    "requests_30d", "errors_24h", "deprecated_calls_7d", "last_call_at", "payment_status",
    "card_last4", "timezone",
}
ALLOWED_LABELS = {"user_id", "endpoint", "code", "plan"}
SEEDED = {
    "u1": ("Ada Lovelace", "ada@example.com", "free"),
    "u2": ("Grace Hopper", "grace@example.com", "free"),
    "u3": ("Linus Torvalds", "linus@example.com", "pro"),
    "u4": ("Margaret Hamilton", "margaret@example.com", "pro"),
    "u5": ("Alan Turing", "alan@example.com", "team"),
    "u6": ("Barbara Liskov", "barbara@example.com", "free"),
    "u7": ("Ken Thompson", "ken@example.com", "pro"),
}
DAY = 86_400

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def app() -> Iterator[Flask]:
    app = create_app(simulate=False)
    yield app
    app.extensions["demo"].stop()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def scrape(client: FlaskClient) -> tuple[Samples, set[str]]:
    """Samples keyed by (sample name, labels), and the metric family names."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def user_total(samples: Samples, name: str, user_id: str, **labels: str) -> float:
    """Sum of one user's samples of `name` whose labels include `labels`."""
    return sum(
        v for (n, lbls), v in samples.items()
        if n == name and ("user_id", user_id) in lbls and set(labels.items()) <= lbls
    )


def record(client: FlaskClient, user_id: str) -> dict:
    response = client.get(f"/users/{user_id}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def age_seconds(iso: str) -> float:
    return time.time() - datetime.fromisoformat(iso).timestamp()


def post(client: FlaskClient, path: str, user_id: str):
    return client.post(path, headers={"X-User-Id": user_id})


# --- user directory ------------------------------------------------------------------


def test_seeded_users_have_full_directory_records(client: FlaskClient) -> None:
    for user_id, (name, email, plan) in SEEDED.items():
        rec = record(client, user_id)
        assert set(rec) == RECORD_KEYS
        assert (rec["user_id"], rec["name"], rec["email"], rec["plan"]) == (
            user_id, name, email, plan,
        )
        assert rec["signup_at"].endswith("Z")
        assert rec["quota_limit"] == {"free": 1000, "pro": 100_000, "team": 1_000_000}[plan]

    ada = record(client, "u1")
    assert 2 * DAY - 120 < age_seconds(ada["signup_at"]) < 2 * DAY + 120
    assert (ada["requests_30d"], ada["quota_used"], ada["last_call_at"]) == (0, 0, None)
    grace = record(client, "u2")
    assert (grace["quota_used"], grace["quota_limit"]) == (930, 1000)
    assert record(client, "u3")["errors_24h"] > 0
    assert record(client, "u4")["deprecated_calls_7d"] > 0
    alan = record(client, "u5")
    assert (alan["payment_status"], alan["card_last4"]) == ("failed", "4242")
    barbara = record(client, "u6")
    assert 3000 < age_seconds(barbara["signup_at"]) < 3600 + 120
    assert barbara["requests_30d"] > 0 and barbara["last_call_at"] is not None
    for user_id in ("u2", "u3", "u4", "u5", "u7"):
        assert 89 * DAY < age_seconds(record(client, user_id)["signup_at"]) < 91 * DAY
    for user_id in ("u3", "u4", "u6", "u7"):
        rec = record(client, user_id)
        assert rec["quota_used"] / rec["quota_limit"] < 0.5
        assert rec["payment_status"] == "ok"


def test_unknown_user_is_a_json_404(client: FlaskClient) -> None:
    response = client.get("/users/nobody")
    assert response.status_code == 404
    assert response.get_json() == {"error": "unknown user"}


def test_admin_lists_and_creates_users(client: FlaskClient) -> None:
    listed = client.get("/admin/users").get_json()["users"]
    assert [u["user_id"] for u in listed] == sorted(SEEDED)

    new_user = {"user_id": "u8", "email": "edsger@example.com", "name": "Edsger Dijkstra",
                "plan": "pro", "signup_at": "2026-01-02T03:04:05Z"}
    created = client.post("/admin/users", json=new_user)
    assert created.status_code == 201
    rec = record(client, "u8")
    assert rec["signup_at"] == "2026-01-02T03:04:05Z"
    assert (rec["quota_limit"], rec["quota_used"], rec["payment_status"]) == (100_000, 0, "ok")
    samples, _ = scrape(client)
    assert value(samples, "app_user_info", user_id="u8", plan="pro") == 1
    assert value(samples, "app_api_requests_total",
                 user_id="u8", endpoint="/v2/messages", code="200") == 0

    assert client.post("/admin/users", json=new_user).status_code == 409
    assert client.post("/admin/users", json={"user_id": "u9"}).status_code == 400
    bad_plan = {**new_user, "user_id": "u9", "plan": "platinum"}
    assert client.post("/admin/users", json=bad_plan).status_code == 400


# --- metrics ---------------------------------------------------------------------------


def test_metrics_export_every_user_with_only_allowed_labels(client: FlaskClient) -> None:
    samples, families = scrape(client)
    assert {
        "app_user_signup_timestamp_seconds", "app_api_requests", "app_deprecated_requests",
        "app_user_quota_used_ratio", "app_user_payment_failed", "app_user_info",
    } <= families
    for _, labels in samples:
        assert {name for name, _ in labels} <= ALLOWED_LABELS
        assert not any("@" in v for _, v in labels), "no emails in labels"

    for user_id, (_, _, plan) in SEEDED.items():
        rec = record(client, user_id)
        signup = datetime.fromisoformat(rec["signup_at"]).timestamp()
        assert value(samples, "app_user_signup_timestamp_seconds", user_id=user_id) == signup
        assert value(samples, "app_user_info", user_id=user_id, plan=plan) == 1
        assert value(samples, "app_user_quota_used_ratio", user_id=user_id) == pytest.approx(
            rec["quota_used"] / rec["quota_limit"]
        )
        failed = value(samples, "app_user_payment_failed", user_id=user_id)
        assert failed == (1 if user_id == "u5" else 0)
        assert ("app_api_requests_total",
                frozenset({"user_id": user_id, "endpoint": "/v2/messages", "code": "200"}.items())
                ) in samples
        deprecated = value(samples, "app_deprecated_requests_total",
                           user_id=user_id, endpoint="/v1/send")
        assert (deprecated > 0) == (user_id == "u4")

    assert value(samples, "app_user_quota_used_ratio", user_id="u2") == pytest.approx(0.93)
    assert user_total(samples, "app_api_requests_total", "u1") == 0
    assert user_total(samples, "app_api_requests_total", "u7", code="500") == 0
    u3_errors = user_total(samples, "app_api_requests_total", "u3", code="500")
    assert 0.1 < u3_errors / user_total(samples, "app_api_requests_total", "u3") < 0.5


def test_two_apps_in_one_process_keep_separate_metrics() -> None:
    first, second = create_app(simulate=False), create_app(simulate=False)
    assert post(first.test_client(), "/v2/messages", "u1").status_code == 200
    first_samples, _ = scrape(first.test_client())
    second_samples, _ = scrape(second.test_client())
    assert user_total(first_samples, "app_api_requests_total", "u1") == 1
    assert user_total(second_samples, "app_api_requests_total", "u1") == 0


# --- product endpoints ----------------------------------------------------------------


def test_calls_update_counters_and_the_directory_record(client: FlaskClient) -> None:
    ok = post(client, "/v2/messages", "u1")
    assert ok.status_code == 200
    failed = post(client, "/v2/fail", "u1")
    assert failed.status_code == 500

    samples, _ = scrape(client)
    assert value(samples, "app_api_requests_total",
                 user_id="u1", endpoint="/v2/messages", code="200") == 1
    assert value(samples, "app_api_requests_total",
                 user_id="u1", endpoint="/v2/fail", code="500") == 1
    assert value(samples, "app_user_quota_used_ratio", user_id="u1") == pytest.approx(0.002)
    rec = record(client, "u1")
    assert (rec["requests_30d"], rec["errors_24h"], rec["quota_used"]) == (2, 1, 2)
    assert age_seconds(rec["last_call_at"]) < 120


def test_product_calls_need_a_known_user(client: FlaskClient) -> None:
    assert client.post("/v2/messages").status_code == 401
    assert post(client, "/v2/messages", "nobody").status_code == 401


def test_deprecated_endpoint_works_counts_and_says_so(client: FlaskClient) -> None:
    before = record(client, "u7")["deprecated_calls_7d"]
    response = post(client, "/v1/send", "u7")
    assert response.status_code == 200
    assert response.headers["Deprecation"] == "true"
    assert "Deprecation" not in post(client, "/v2/messages", "u7").headers

    samples, _ = scrape(client)
    assert value(samples, "app_deprecated_requests_total", user_id="u7", endpoint="/v1/send") == 1
    assert value(samples, "app_api_requests_total",
                 user_id="u7", endpoint="/v1/send", code="200") == 1
    assert record(client, "u7")["deprecated_calls_7d"] == before + 1


def test_exhausted_quota_returns_429(client: FlaskClient) -> None:
    assert client.post("/admin/users/u2/quota", json={"used": 999}).status_code == 200
    assert post(client, "/v2/messages", "u2").status_code == 200
    response = post(client, "/v2/messages", "u2")
    assert response.status_code == 429
    assert response.get_json() == {"error": "monthly quota exhausted"}

    samples, _ = scrape(client)
    assert value(samples, "app_user_quota_used_ratio", user_id="u2") == 1.0
    assert value(samples, "app_api_requests_total",
                 user_id="u2", endpoint="/v2/messages", code="429") == 1
    assert record(client, "u2")["quota_used"] == 1000

    raised = client.post("/admin/users/u2/quota", json={"limit": 2000}).get_json()
    assert (raised["quota_used"], raised["quota_limit"]) == (1000, 2000)
    assert post(client, "/v2/messages", "u2").status_code == 200
    assert client.post("/admin/users/u2/quota", json={"used": -1}).status_code == 400
    assert client.post("/admin/users/u2/quota", json={}).status_code == 400
    assert client.post("/admin/users/nobody/quota", json={"used": 1}).status_code == 404


def test_admin_payment_toggle_flips_the_gauge(client: FlaskClient) -> None:
    def payment_failed() -> float:
        return value(scrape(client)[0], "app_user_payment_failed", user_id="u7")

    assert payment_failed() == 0
    response = client.post("/admin/users/u7/payment", json={"status": "failed"})
    assert response.status_code == 200
    assert response.get_json()["payment_status"] == "failed"
    assert payment_failed() == 1
    assert record(client, "u7")["payment_status"] == "failed"
    client.post("/admin/users/u7/payment", json={"status": "ok"})
    assert payment_failed() == 0
    assert client.post("/admin/users/u7/payment", json={"status": "maybe"}).status_code == 400
    assert client.post("/admin/users/nobody/payment", json={"status": "ok"}).status_code == 404


def test_recent_usage_counts_age_out_of_their_windows() -> None:
    clock = FakeClock()
    app = create_app(simulate=False, clock=clock)
    client = app.test_client()
    lifetime_before = user_total(scrape(client)[0], "app_api_requests_total", "u3")
    assert record(client, "u3")["errors_24h"] > 0

    clock.now += 2 * DAY
    assert record(client, "u3")["errors_24h"] == 0
    assert record(client, "u3")["requests_30d"] > 0
    assert post(client, "/v2/fail", "u3").status_code == 500
    assert record(client, "u3")["errors_24h"] == 1

    clock.now += 8 * DAY
    assert record(client, "u4")["deprecated_calls_7d"] == 0
    clock.now += 30 * DAY
    assert record(client, "u3")["requests_30d"] == 0
    assert user_total(scrape(client)[0], "app_api_requests_total", "u3") == lifetime_before + 1


# --- token auth ------------------------------------------------------------------------


def test_directory_requires_the_token_when_one_is_configured() -> None:
    client = create_app(simulate=False, token="s3cret").test_client()
    assert client.get("/users/u1").status_code == 401
    assert client.get("/users/u1", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/users/u1", headers={"X-API-Key": "wrong"}).status_code == 401
    by_bearer = client.get("/users/u1", headers={"Authorization": "Bearer s3cret"})
    assert by_bearer.status_code == 200 and by_bearer.get_json()["user_id"] == "u1"
    assert client.get("/users/u1", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/metrics").status_code == 200


def test_token_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_API_TOKEN", "from-env")
    client = create_app(simulate=False).test_client()
    assert client.get("/users/u1").status_code == 401
    assert client.get("/users/u1", headers={"X-API-Key": "from-env"}).status_code == 200


# --- OAuth 2.0 client credentials ---------------------------------------------------------


def get_token(client: FlaskClient, secret: str = "s3cret", **form: str):
    return client.post("/oauth/token", data={"grant_type": "client_credentials", **form},
                       auth=("nudge", secret))


def test_token_endpoint_issues_short_lived_tokens_that_open_the_directory() -> None:
    clock = FakeClock()
    client = create_app(simulate=False, clock=clock,
                        oauth=OAuthSettings("nudge", "s3cret", token_ttl=60)).test_client()
    refused = client.get("/users/u1")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].lower().startswith("bearer")

    issued = get_token(client)
    assert issued.status_code == 200
    assert issued.headers["Cache-Control"] == "no-store"
    token = issued.get_json()
    assert (token["token_type"], token["expires_in"]) == ("Bearer", 60)
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    answer = client.get("/users/u1", headers=bearer)
    assert answer.status_code == 200 and answer.get_json()["name"] == "Ada Lovelace"
    assert answer.headers["Cache-Control"] == "private, max-age=30"

    clock.now += 61
    expired = client.get("/users/u1", headers=bearer)
    assert expired.status_code == 401 and expired.get_json()["error"] == "invalid_token"
    assert client.get("/metrics").status_code == 200  # only the directory is protected


def test_token_endpoint_refuses_wrong_clients_and_grants() -> None:
    client = create_app(simulate=False, oauth=OAuthSettings("nudge", "s3cret")).test_client()
    wrong = get_token(client, secret="guess")
    assert wrong.status_code == 401 and wrong.get_json()["error"] == "invalid_client"
    password = get_token(client, grant_type="password")
    assert password.status_code == 400 and password.get_json()["error"] == "unsupported_grant_type"
    in_form = client.post("/oauth/token", data={"grant_type": "client_credentials",
                                                "client_id": "nudge", "client_secret": "s3cret",
                                                "scope": "users:read admin"})
    assert in_form.status_code == 200 and in_form.get_json()["scope"] == "users:read"


def test_revoked_tokens_are_refused() -> None:
    client = create_app(simulate=False, oauth=OAuthSettings("nudge", "s3cret")).test_client()
    bearer = {"Authorization": f"Bearer {get_token(client).get_json()['access_token']}"}
    assert client.get("/users/u1", headers=bearer).status_code == 200

    assert client.post("/admin/oauth/revoke").get_json() == {"revoked": 1}
    assert client.get("/users/u1", headers=bearer).status_code == 401
    fresh = {"Authorization": f"Bearer {get_token(client).get_json()['access_token']}"}
    assert client.get("/users/u1", headers=fresh).status_code == 200


def test_a_rotated_secret_file_is_used_by_the_next_token_request(tmp_path: Path) -> None:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("first\n")
    client = create_app(simulate=False, oauth=OAuthSettings(
        "nudge", client_secret_file=secret_file)).test_client()
    assert get_token(client, secret="first").status_code == 200

    secret_file.write_text("second\n")

    assert get_token(client, secret="first").status_code == 401
    assert get_token(client, secret="second").status_code == 200


def test_oauth_can_be_configured_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-file\n")
    monkeypatch.setenv("DEMO_API_CLIENT_ID", "nudge")
    monkeypatch.setenv("DEMO_API_CLIENT_SECRET_FILE", str(tmp_path / "secret"))
    monkeypatch.setenv("DEMO_API_TOKEN_TTL", "45")
    client = create_app(simulate=False).test_client()

    issued = get_token(client, secret="from-file")

    assert issued.status_code == 200 and issued.get_json()["expires_in"] == 45
    assert client.get("/users/u1").status_code == 401
    assert "POST /oauth/token" in client.get("/").get_data(as_text=True)


def test_nudge_reads_the_demo_directory_with_oauth_over_real_http(tmp_path: Path) -> None:
    app = create_app(simulate=False, oauth=OAuthSettings("nudge", "s3cret", token_ttl=60))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    (tmp_path / "secret").write_text("s3cret\n")
    oauth = ClientCredentials(base + "/oauth/token", "nudge",
                              Secret(what="client secret", path=tmp_path / "secret"))
    tokens = app.extensions["demo"].oauth.tokens
    try:
        with DirectoryClient(base + "/users/{user_id}", cache_ttl=0.0,
                             credentials=DirectoryCredentials(oauth=oauth)) as directory:
            first = directory.lookup("u2")
            again = directory.lookup("u2")  # max-age=30 from the demo wins over cache_ttl 0
            app.test_client().post("/admin/oauth/revoke")
            after_revocation = directory.lookup("u5")
    finally:
        server.shutdown()
        server.server_close()
    assert (first.source, first.email) == ("fresh", "grace@example.com")
    assert first.record is not None and first.record["quota_used"] == 930
    assert again.source == "cache"
    assert (after_revocation.source, after_revocation.email) == ("fresh", "alan@example.com")
    assert tokens.issued == 2  # one token, then one more after the revocation's 401


# --- simulated traffic -----------------------------------------------------------------


def test_simulator_thread_adds_u3_errors_and_never_touches_u1() -> None:
    app = create_app(simulate=True, simulate_interval=0.01)
    client = app.test_client()
    try:
        start = user_total(scrape(client)[0], "app_api_requests_total", "u3", code="500")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            samples, _ = scrape(client)
            if user_total(samples, "app_api_requests_total", "u3", code="500") >= start + 6:
                break
            time.sleep(0.05)
        else:
            pytest.fail("simulated traffic added no u3 errors")
    finally:
        app.extensions["demo"].stop()
    assert not app.extensions["demo"].simulator.running
    samples, _ = scrape(client)
    assert user_total(samples, "app_api_requests_total", "u1") == 0
    assert user_total(samples, "app_deprecated_requests_total", "u1") == 0
    assert user_total(samples, "app_deprecated_requests_total", "u4") > 12_000
    ada = record(client, "u1")
    assert (ada["last_call_at"], ada["requests_30d"], ada["quota_used"]) == (None, 0, 0)


def test_many_ticks_keep_every_story_true(app: Flask, client: FlaskClient) -> None:
    simulator = app.extensions["demo"].simulator
    before, _ = scrape(client)
    for _ in range(300):
        simulator.tick()
        ratio = app.extensions["demo"].directory.quota("u2")
        assert 0.9 <= ratio[0] / ratio[1] < 1.0
    after, _ = scrape(client)

    def added(user_id: str, **labels: str) -> float:
        return (user_total(after, "app_api_requests_total", user_id, **labels)
                - user_total(before, "app_api_requests_total", user_id, **labels))

    assert 0.9 <= value(after, "app_user_quota_used_ratio", user_id="u2") < 1.0
    assert added("u2", code="200") == 900 and added("u2", code="429") == 0
    assert added("u3", code="500") / added("u3") == pytest.approx(0.3)
    assert added("u4", endpoint="/v1/send") == 600
    assert added("u7") == added("u7", code="200") == 1500
    assert added("u1") == 0
    for user_id in ("u3", "u4", "u6", "u7"):
        assert value(after, "app_user_quota_used_ratio", user_id=user_id) < 0.9


def test_admin_can_pause_and_resume_simulated_traffic(app: Flask, client: FlaskClient) -> None:
    assert client.post("/admin/simulate", json={"enabled": True}).get_json() == {"enabled": True}
    assert app.extensions["demo"].simulator.running
    assert client.post("/admin/simulate", json={"enabled": False}).get_json() == {
        "enabled": False
    }
    assert not app.extensions["demo"].simulator.running
    assert client.post("/admin/simulate", json={"enabled": "yes"}).status_code == 400


def test_index_page_lists_users_and_curl_commands(client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)
    assert "Ada Lovelace" in page and "Ken Thompson" in page
    assert "curl -X POST -H 'X-User-Id: u1' http://localhost/v2/messages" in page


# --- real servers ----------------------------------------------------------------------


def test_real_server_on_a_loopback_port() -> None:
    app = create_app(simulate=False, token="t0ken")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        with requests.Session() as http:
            assert http.get(f"{base}/users/u5", timeout=10).status_code == 401
            rec = http.get(f"{base}/users/u5", headers={"Authorization": "Bearer t0ken"},
                           timeout=10).json()
            assert (rec["email"], rec["payment_status"]) == ("alan@example.com", "failed")
            sent = http.post(f"{base}/v1/send", headers={"X-User-Id": "u1"}, timeout=10)
            assert sent.status_code == 200 and sent.headers["Deprecation"] == "true"
            metrics = http.get(f"{base}/metrics", timeout=10).text
    finally:
        server.shutdown()
        server.server_close()
    assert 'app_deprecated_requests_total{endpoint="/v1/send",user_id="u1"} 1.0' in metrics


def test_python_m_demo_api_serves_and_exits_cleanly_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DEMO_API_TOKEN": "", "DEMO_API_CLIENT_ID": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "demo_api", "--port", "0", "--no-simulate"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("demo API listening on http://127.0.0.1:"), line
        base = line.split()[-1]
        assert requests.get(f"{base}/users/u1", timeout=10).json()["name"] == "Ada Lovelace"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
