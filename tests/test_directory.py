"""The user directory client against a real HTTP directory on 127.0.0.1."""

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from prometheus_client import REGISTRY

from app.directory import (
    DirectoryClient,
    DirectoryLookup,
    StaticDirectory,
    cache_lifetime,
    directory_headers_from_env,
    stale_usable,
    token_refresh_at,
)
from tests.directory_server import Behaviour, DirectoryServer

ADA = {"user_id": "u1", "email": "ada@example.com", "name": "Ada Lovelace", "plan": "pro"}
GRACE = {
    "user_id": "u2",
    "email": "grace@example.com",
    "name": "Grace Hopper",
    "plan": "free",
    "quota_limit": 1000,
    "quota_used": 930,
}
TIMEOUT = 0.3  # small budget keeps the slow-server tests fast
GENEROUS = 1.5  # upper bound for "fell back within the 0.3 s budget" on a loaded machine
# The other tests' budget: room for a loaded machine's slow round trips on loopback.
ROOMY_TIMEOUT = 2.0

MakeClient = Callable[..., DirectoryClient]


@pytest.fixture
def server() -> Iterator[DirectoryServer]:
    with DirectoryServer({"u1": dict(ADA), "u2": dict(GRACE)}) as running:
        yield running


@pytest.fixture
def make_client(server: DirectoryServer) -> Iterator[MakeClient]:
    """Clients of `server` with test-sized timing; options override the defaults."""
    clients: list[DirectoryClient] = []

    def make(**options: object) -> DirectoryClient:
        settings: dict = {"timeout": ROOMY_TIMEOUT, "backoff": 0.01, "retries": 2} | options
        clients.append(DirectoryClient(server.url_template, **settings))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def timed_lookup(client: DirectoryClient, user_id: str) -> tuple[DirectoryLookup, float]:
    started = time.monotonic()
    result = client.lookup(user_id)
    return result, time.monotonic() - started


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- fetching and caching ----------------------------------------------------------------------


def test_fresh_lookup_returns_the_record_and_email(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    result = make_client().lookup("u2")

    assert result == DirectoryLookup(GRACE, "grace@example.com", "fresh", None)
    assert server.hits("u2") == 1


def test_second_lookup_within_ttl_is_served_from_cache(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    client = make_client()
    client.lookup("u1")
    server.records["u1"]["plan"] = "enterprise"  # the cache must not see this yet

    result = client.lookup("u1")

    assert result.source == "cache"
    assert result.record == ADA
    assert server.hits("u1") == 1


def test_lookup_after_ttl_expiry_fetches_again(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    client = make_client(cache_ttl=0.05)
    client.lookup("u1")
    server.records["u1"]["plan"] = "enterprise"
    time.sleep(0.1)

    result = client.lookup("u1")

    assert result.source == "fresh"
    assert result.record is not None and result.record["plan"] == "enterprise"
    assert server.hits("u1") == 2


def test_invalidate_forces_the_next_lookup_to_fetch(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    client = make_client()
    client.lookup("u1")
    client.invalidate("u1")

    assert client.lookup("u1").source == "fresh"
    assert server.hits("u1") == 2


def test_cache_is_bounded_and_evicts_the_oldest_entry(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    server.records["u3"] = {"email": "u3@example.com"}
    client = make_client(max_cache_entries=2)
    for user_id in ("u1", "u2", "u3"):
        client.lookup(user_id)

    assert client.lookup("u3").source == "cache"
    assert client.lookup("u1").source == "fresh"  # evicted when u3 arrived
    assert server.hits("u1") == 2


def test_returned_records_are_copies_callers_cannot_corrupt_the_cache(
    server: DirectoryServer,
    make_client: MakeClient,
) -> None:
    client = make_client()
    first = client.lookup("u1")
    assert first.record is not None
    first.record["email"] = "mallory@example.com"

    assert client.lookup("u1").email == "ada@example.com"


# --- the cache follows the API's Cache-Control ----------------------------------------------


@pytest.mark.parametrize(
    ("cache_control", "age", "expected"),
    [
        (None, None, 300),  # the API says nothing: directory.cache_ttl
        ("private", None, 300),
        ("max-age=60", None, 60),
        ("private, max-age=60", "20", 40),  # already 20 s old when it arrived
        ("max-age=60", "90", 5),  # older than its max-age: the lower bound
        ("Max-Age=\"45\"", None, 45),
        ("max-age=86400", None, 3600),  # the upper bound
        ("max-age=2", None, 5),  # the lower bound
        ("no-cache", None, 5),  # ask every time, within the bounds
        ("max-age=soon", None, 300),  # malformed: as if absent
        ("max-age=-1", None, 300),
        ("no-store", None, None),  # never kept
        ("max-age=60, no-store", None, None),
    ],
)
def test_cache_lifetime_follows_the_api_within_bounds(cache_control, age, expected) -> None:
    lifetime = cache_lifetime(cache_control, age, default=300, minimum=5, maximum=3600)

    assert lifetime == expected


def test_cache_lifetime_without_a_lower_bound_honours_max_age_zero() -> None:
    assert cache_lifetime("max-age=0", None, default=300) == 0


def test_a_stale_record_is_usable_only_within_max_stale() -> None:
    assert stale_usable(now=1000.0, expired_at=400.0, max_stale=600.0)
    assert not stale_usable(now=1000.1, expired_at=400.0, max_stale=600.0)
    assert not stale_usable(now=1.0, expired_at=0.0, max_stale=0.0)


def test_tokens_are_renewed_a_tenth_of_their_lifetime_early_at_most_a_minute() -> None:
    assert token_refresh_at(100.0, 10.0) == 109.0
    assert token_refresh_at(100.0, 3600.0) == 3640.0  # 60 s early, not 6 min
    assert token_refresh_at(100.0, None) is None  # no lifetime given: until refused


def test_max_age_keeps_a_record_beyond_the_configured_ttl(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    server.cache_control("private, max-age=60")
    client = make_client(cache_ttl=0.0)

    first, second = client.lookup("u1"), client.lookup("u1")

    assert (first.source, second.source) == ("fresh", "cache")
    assert server.hits("u1") == 1


def test_max_age_beyond_the_upper_bound_is_cut_to_it(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    server.cache_control("max-age=86400")
    client = make_client(cache_ttl_max=0.05)
    client.lookup("u1")
    time.sleep(0.1)

    assert client.lookup("u1").source == "fresh"
    assert server.hits("u1") == 2


def test_max_age_below_the_lower_bound_is_raised_to_it(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    server.cache_control("max-age=0")
    client = make_client(cache_ttl_min=60.0)

    client.lookup("u1")

    assert client.lookup("u1").source == "cache"
    assert server.hits("u1") == 1


def test_no_store_asks_every_time_and_keeps_no_fallback(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    server.cache_control("no-store")
    client = make_client(cache_ttl=300.0)
    first, second = client.lookup("u1"), client.lookup("u1")
    server.fail(503)

    third = client.lookup("u1")

    assert (first.source, second.source) == ("fresh", "fresh")
    assert server.hits("u1") == 2 + 3  # the outage lookup made 1 + 2 retries
    assert third.source == "unavailable" and third.record is None  # nothing was kept


def test_no_store_drops_a_record_cached_before(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    client = make_client(cache_ttl=0.0)
    client.lookup("u1")  # cached (as a fallback) under the default rules
    server.cache_control("no-store", times=1)
    client.lookup("u1")
    server.fail(503)

    assert client.lookup("u1").source == "unavailable"


def test_cache_control_on_a_404_sets_how_long_it_is_remembered(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    server.cache_control("no-store")
    client = make_client(negative_ttl=60.0)

    client.lookup("ghost")
    client.lookup("ghost")

    assert server.hits("ghost") == 2


def test_stale_record_older_than_max_stale_is_not_used(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    client = make_client(cache_ttl=0.0, max_stale=0.1)
    client.lookup("u2")
    time.sleep(0.2)
    server.fail(503)
    stale_before = metric("nudge_directory_cache_lookups_total", result="stale")

    result = client.lookup("u2")

    assert result.source == "unavailable"
    assert result.record is None and result.email is None
    assert result.error is not None and "longer than max_stale" in result.error
    assert metric("nudge_directory_cache_lookups_total", result="stale") == stale_before


def test_stale_record_within_max_stale_is_used(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    client = make_client(cache_ttl=0.0, max_stale=60.0)
    client.lookup("u2")
    server.fail(503)

    result = client.lookup("u2")

    assert (result.source, result.email) == ("stale", "grace@example.com")


# --- credentials and URL safety ----------------------------------------------------------------


def test_bearer_token_and_api_key_reach_the_directory(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    env = {"NUDGE_DIRECTORY_TOKEN": "s3cret", "NUDGE_DIRECTORY_API_KEY": "key-42"}
    client = make_client(headers=directory_headers_from_env(env, "X-Product-Key"))

    client.lookup("u1")

    headers = server.last_request.headers
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["X-Product-Key"] == "key-42"


def test_headers_from_env_ignore_unset_and_blank_values() -> None:
    assert directory_headers_from_env({}) == {}
    assert directory_headers_from_env({"NUDGE_DIRECTORY_TOKEN": "  "}) == {}
    assert directory_headers_from_env({"NUDGE_DIRECTORY_API_KEY": "k"}) == {"X-API-Key": "k"}


@pytest.mark.parametrize("user_id", ["../admin", "a/b?x=1", "x#frag", "%2F", "jos\u00e9 1"])
def test_user_ids_are_encoded_into_one_path_segment(
    server: DirectoryServer, make_client: MakeClient, user_id: str
) -> None:
    server.records[user_id] = {"email": "odd@example.com"}

    result = make_client().lookup(user_id)

    assert result.email == "odd@example.com"
    seen = server.last_request
    assert seen.path == "/users/" + quote(user_id, safe="")
    assert seen.user_id == user_id  # the server decoded exactly one segment back to the id


@pytest.mark.parametrize("user_id", ["", ".", ".."])
def test_ids_that_would_change_the_path_are_not_requested(
    server: DirectoryServer, make_client: MakeClient, user_id: str
) -> None:
    result = make_client().lookup(user_id)

    assert result.source == "not_found"
    assert server.requests == []


def test_redirects_are_not_followed(server: DirectoryServer, make_client: MakeClient) -> None:
    server.behave(Behaviour(status=302, headers={"Location": server.url + "/users/u2"}))

    result = make_client().lookup("u1")

    assert result.source == "unavailable"
    assert result.error is not None and "302" in result.error
    assert server.path_counts() == {"/users/u1": 1}


@pytest.mark.parametrize(
    "template", ["http://directory/users", "ftp://directory/{user_id}", "/users/{user_id}"]
)
def test_bad_url_templates_are_rejected(template: str) -> None:
    with pytest.raises(ValueError, match="url_template"):
        DirectoryClient(template)


# --- latency budget and fallbacks --------------------------------------------------------------


def test_slow_directory_without_cache_is_unavailable_within_the_budget(
    server: DirectoryServer,
    make_client: MakeClient,
) -> None:
    server.slow(5.0)

    result, elapsed = timed_lookup(make_client(timeout=TIMEOUT), "u1")

    assert result.source == "unavailable"
    assert result.record is None
    assert result.error is not None and "timed out after 0.3s" in result.error
    assert elapsed < GENEROUS


def test_slow_directory_falls_back_to_the_stale_record(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    client = make_client(cache_ttl=0.05, timeout=TIMEOUT)
    client.lookup("u2")
    time.sleep(0.1)
    server.slow(5.0)
    stale_before = metric("nudge_directory_cache_lookups_total", result="stale")

    result, elapsed = timed_lookup(client, "u2")

    assert result.source == "stale"
    assert result.email == "grace@example.com"
    assert result.error is not None and "timed out" in result.error
    assert elapsed < GENEROUS
    assert metric("nudge_directory_cache_lookups_total", result="stale") == stale_before + 1


def test_transient_503_is_retried_and_then_fresh(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    server.fail(503, times=1)

    result = make_client(timeout=2.0).lookup("u1")

    assert result.source == "fresh"
    assert result.email == "ada@example.com"
    assert server.hits("u1") == 2


def test_dropped_connection_is_retried(server: DirectoryServer, make_client: MakeClient) -> None:
    server.drop_connection(times=1)

    result = make_client(timeout=2.0).lookup("u1")

    assert result.source == "fresh"
    assert server.hits("u1") == 2


def test_429_retry_after_zero_is_honoured_instead_of_the_backoff(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    server.fail(429, times=1, retry_after="0")
    # A 5 s backoff could never fit the 2 s budget: only Retry-After: 0 allows the retry.
    client = make_client(timeout=2.0, backoff=5.0)

    result = client.lookup("u1")

    assert result.source == "fresh"
    assert server.hits("u1") == 2


def test_retry_after_beyond_the_budget_falls_back_at_once(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    server.fail(429, retry_after="30")

    result, elapsed = timed_lookup(make_client(timeout=TIMEOUT), "u1")

    assert result.source == "unavailable"
    assert result.error is not None and "429" in result.error
    assert server.hits("u1") == 1
    assert elapsed < GENEROUS


def test_persistent_500_is_unavailable_after_retries_plus_one_requests(
    server: DirectoryServer,
    make_client: MakeClient,
) -> None:
    server.fail(500)
    errors_before = metric("nudge_directory_request_duration_seconds_count", outcome="error")

    result = make_client(timeout=2.0, retries=2).lookup("u1")

    assert result.source == "unavailable"
    assert result.error is not None and result.error.startswith("directory answered 500")
    assert server.hits("u1") == 3
    after = metric("nudge_directory_request_duration_seconds_count", outcome="error")
    assert after == errors_before + 3


def test_unreachable_directory_is_unavailable() -> None:
    with DirectoryServer() as gone:
        template = gone.url_template  # port is free again once the server is closed

    with DirectoryClient(template, timeout=TIMEOUT, backoff=0.01) as client:
        result = client.lookup("u1")

    assert result.source == "unavailable"
    assert result.error is not None and "directory unreachable" in result.error


# --- what the directory answered ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected_error"),
    [
        ("{not json", "invalid JSON"),
        ('[{"email": "ada@example.com"}]', "JSON list"),
        ('"ada@example.com"', "JSON str"),
        ("null", "JSON null"),
    ],
)
def test_wrong_json_is_invalid_and_not_retried(
    server: DirectoryServer, make_client: MakeClient, body: str, expected_error: str
) -> None:
    server.answer_raw(body)

    result = make_client().lookup("u1")

    assert result.source == "invalid"
    assert result.record is None and result.email is None
    assert result.error is not None and expected_error in result.error
    assert server.hits("u1") == 1


def test_wrong_json_falls_back_to_the_stale_record(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    client = make_client(cache_ttl=0.0)
    client.lookup("u1")
    server.answer_raw("<html>maintenance</html>", content_type="text/html")

    result = client.lookup("u1")

    assert result.source == "stale"
    assert result.email == "ada@example.com"


@pytest.mark.parametrize("email", [None, "", "   ", 42])
def test_record_without_a_usable_email_is_returned_with_email_none(
    server: DirectoryServer, make_client: MakeClient, email: object
) -> None:
    record = {"user_id": "u9", "name": "No Mail"}
    if email is not None:
        record["email"] = email
    server.records["u9"] = record

    result = make_client().lookup("u9")

    assert result.source == "fresh"
    assert result.record == record
    assert result.email is None


def test_custom_email_field(server: DirectoryServer, make_client: MakeClient) -> None:
    server.records["u9"] = {"contact": {"x": 1}, "billing_email": "billing@example.com"}

    assert make_client(email_field="billing_email").lookup("u9").email == ("billing@example.com")


def test_404_is_not_found_and_negatively_cached(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    client = make_client(negative_ttl=60.0)

    first = client.lookup("ghost")
    second = client.lookup("ghost")

    assert (first.source, second.source) == ("not_found", "not_found")
    assert first.record is None and first.email is None
    assert server.hits("ghost") == 1


def test_negative_cache_expires(server: DirectoryServer, make_client: MakeClient) -> None:
    client = make_client(negative_ttl=0.05)
    assert client.lookup("late").source == "not_found"
    server.records["late"] = {"email": "late@example.com"}
    time.sleep(0.1)

    assert client.lookup("late").email == "late@example.com"


# --- concurrency -------------------------------------------------------------------------------


def test_concurrent_lookups_of_one_user_agree_and_share_one_request(
    server: DirectoryServer,
    make_client: MakeClient,
) -> None:
    server.slow(0.2, times=1)  # keep the first fetch in flight while the others arrive
    client = make_client(timeout=2.0)
    start = threading.Barrier(8)
    results: list[DirectoryLookup] = []

    def look() -> None:
        start.wait()
        results.append(client.lookup("u2"))

    threads = [threading.Thread(target=look) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert len(results) == 8
    assert {r.email for r in results} == {"grace@example.com"}
    assert all(r.record == GRACE for r in results)
    assert server.hits("u2") == 1


def test_concurrent_lookups_of_many_users_each_get_their_own_record(
    server: DirectoryServer,
    make_client: MakeClient,
) -> None:
    users = {f"c{n}": f"c{n}@example.com" for n in range(6)}
    for user_id, email in users.items():
        server.records[user_id] = {"user_id": user_id, "email": email}
    client = make_client(timeout=2.0, cache_ttl=0.0)  # every lookup hits the server
    mismatches: list[tuple[str, str | None]] = []

    def look(offset: int) -> None:
        for n in range(12):
            user_id = f"c{(n + offset) % len(users)}"
            email = client.lookup(user_id).email
            if email != users[user_id]:
                mismatches.append((user_id, email))

    threads = [threading.Thread(target=look, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    assert mismatches == []
    assert sum(server.path_counts().values()) >= len(users)


# --- static directory --------------------------------------------------------------------------


def test_static_directory_loads_yaml_with_shorthand(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(
        "u1:\n  email: ada@example.com\n  name: Ada\n  plan: pro\nu2: grace@example.com\n"
    )
    directory = StaticDirectory(path)

    ada = directory.lookup("u1")
    grace = directory.lookup("u2")

    assert (ada.source, ada.email) == ("fresh", "ada@example.com")
    assert ada.record is not None and ada.record["name"] == "Ada"
    assert grace.record == {"user_id": "u2", "email": "grace@example.com"}
    assert directory.lookup("u3").source == "not_found"


def test_static_directory_loads_json(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text('{"u1": {"mail": "ada@example.com", "plan": "pro"}}')

    result = StaticDirectory(path, email_field="mail").lookup("u1")

    assert result.email == "ada@example.com"
    assert result.record is not None and result.record["plan"] == "pro"


@pytest.mark.parametrize(
    "text",
    [
        "- ada@example.com\n",  # a list, not a map
        "123: ada@example.com\n",  # unquoted numeric id
        "u1: 42\n",  # entry neither address nor mapping
        "u1: [a, b]\n",
        "u1: {email: [unclosed\n",  # not YAML at all
    ],
)
def test_static_directory_rejects_malformed_files_naming_them(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken-users.yaml"
    path.write_text(text)

    with pytest.raises(ValueError, match="broken-users.yaml"):
        StaticDirectory(path)


def test_static_directory_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nowhere.yaml"):
        StaticDirectory(tmp_path / "nowhere.yaml")
