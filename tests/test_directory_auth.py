"""Directory credentials against real servers on 127.0.0.1: OAuth 2.0 client credentials from a
token endpoint that issues expiring tokens, and secrets in files rotated while Nudge runs."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from app.checks import directory_checks
from app.cli import main
from app.config import ConfigError, load_config
from app.directory import (
    ClientCredentials,
    CredentialError,
    DirectoryClient,
    DirectoryCredentials,
    DirectoryLookup,
    Secret,
    credentials_from_config,
)
from tests.directory_server import TOKEN_ENDPOINT, TOKEN_PATH, DirectoryServer, TokenIssuer

USERS = {f"u{n}": {"user_id": f"u{n}", "email": f"user{n}@example.com"} for n in range(1, 9)}
SECRET = "first-secret"
GENEROUS = 1.5  # upper bound for "gave up within the 0.3 s budget" on a loaded machine


def write_atomically(path: Path, text: str) -> None:
    """How secrets are rotated in practice (Kubernetes, `install`, editors): a new file
    renamed over the old one."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)


def look_up_together(client: DirectoryClient, user_ids: list[str]) -> list[DirectoryLookup]:
    """One lookup per id, all started at the same moment from their own threads."""
    start = threading.Barrier(len(user_ids))
    results: dict[str, DirectoryLookup] = {}

    def look(user_id: str) -> None:
        start.wait()
        results[user_id] = client.lookup(user_id)

    threads = [threading.Thread(target=look, args=(u,)) for u in user_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    return [results[u] for u in user_ids]


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer("nudge", SECRET, expires_in=300)


@pytest.fixture
def server(issuer: TokenIssuer) -> Iterator[DirectoryServer]:
    with DirectoryServer(USERS, issuer=issuer) as running:
        yield running


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "client-secret"
    path.write_text(SECRET + "\n")
    return path


MakeClient = Callable[..., DirectoryClient]


@pytest.fixture
def make_client(server: DirectoryServer, secret_file: Path) -> Iterator[MakeClient]:
    """Clients of `server` using OAuth 2.0 against `token_url` (the server's by default)."""
    clients: list[DirectoryClient] = []

    def make(*, token_url: str | None = None, scope: str | None = None,
             audience: str | None = None, auth_method: str = "client_secret_basic",
             **options: object) -> DirectoryClient:
        oauth = ClientCredentials(
            token_url or server.token_url, "nudge",
            Secret(what="directory client secret", path=secret_file),
            scope=scope, audience=audience, auth_method=auth_method,
        )
        settings: dict = {"timeout": 2.0, "backoff": 0.01, "retries": 2, "cache_ttl": 0.0,
                          "credentials": DirectoryCredentials(oauth=oauth)} | options
        clients.append(DirectoryClient(server.url_template, **settings))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


# --- OAuth 2.0 client credentials --------------------------------------------------------------


def test_a_token_is_fetched_once_for_many_concurrent_senders(
    server: DirectoryServer, issuer: TokenIssuer, make_client: MakeClient
) -> None:
    client = make_client()

    results = look_up_together(client, list(USERS))

    assert [r.email for r in results] == [u["email"] for u in USERS.values()]
    assert {r.source for r in results} == {"fresh"}
    assert len(issuer.requests) == 1
    (request,) = issuer.requests
    assert (request.client_id, request.auth_method) == ("nudge", "client_secret_basic")
    assert request.form["grant_type"] == "client_credentials"
    assert server.refused() == 0


def test_tokens_are_renewed_before_they_expire_under_concurrent_senders(
    server: DirectoryServer, issuer: TokenIssuer, make_client: MakeClient
) -> None:
    # Renewed 0.4 s before it expires: a renewal that takes 0.3 s (more on a loaded machine)
    # still ends before the current token does.
    issuer.expires_in = 4
    server.slow(0.3, TOKEN_ENDPOINT)  # a token request takes 0.3 s
    client = make_client()
    stop = time.monotonic() + 4.5
    results: list[tuple[DirectoryLookup, float]] = []

    def keep_sending(user_id: str) -> None:
        while time.monotonic() < stop:
            started = time.monotonic()
            result = client.lookup(user_id)
            results.append((result, time.monotonic() - started))
            time.sleep(0.01)

    senders = list(USERS)[:6]
    threads = [threading.Thread(target=keep_sending, args=(u,)) for u in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    assert len(results) > 60 and {r.source for r, _ in results} == {"fresh"}
    assert server.refused() == 0  # never sent a token past its expiry
    assert server.path_counts()[TOKEN_PATH] == 2  # one per lifetime, not one per sender
    # Every sender waited for the first token; for the renewal only the one that fetched it
    # did: the others went on with the current token.
    waited = sum(1 for _, seconds in results if seconds >= 0.25)
    assert len(senders) <= waited <= len(senders) + 2


def test_a_401_after_revocation_refreshes_once_and_succeeds(
    server: DirectoryServer, issuer: TokenIssuer, make_client: MakeClient
) -> None:
    client = make_client()
    client.lookup("u1")
    issuer.revoke_all()

    result = client.lookup("u2")

    assert (result.source, result.email) == ("fresh", "user2@example.com")
    assert len(issuer.requests) == 2
    assert server.refused() == 1
    assert server.hits("u2") == 2


def test_many_senders_refused_at_once_share_one_new_token(
    server: DirectoryServer, issuer: TokenIssuer, make_client: MakeClient
) -> None:
    client = make_client()
    client.lookup("u1")
    issuer.revoke_all()

    results = look_up_together(client, list(USERS))

    assert {r.source for r in results} == {"fresh"}
    assert len(issuer.requests) == 2


def test_a_second_401_is_not_retried_again(
    server: DirectoryServer, issuer: TokenIssuer, make_client: MakeClient
) -> None:
    server.required_headers = {"X-Tenant": "acme"}  # refused whatever the token

    result = make_client().lookup("u1")

    assert result.source == "unavailable"
    assert result.error is not None and "directory answered 401" in result.error
    assert server.hits("u1") == 2  # the request, and one retry with a new token
    assert len(issuer.requests) == 2


def test_a_failed_renewal_keeps_using_the_token_while_it_is_valid(
    server: DirectoryServer, issuer: TokenIssuer, make_client: MakeClient
) -> None:
    # Renewal is due 0.4 s before expiry: room for the failed renewal on a loaded machine.
    issuer.expires_in = 4
    client = make_client()
    client.lookup("u1")
    time.sleep(3.62)  # the token was requested before the sleep: its renewal is now due
    server.fail(503, TOKEN_ENDPOINT)

    result = client.lookup("u2")

    assert result.source == "fresh"
    assert server.path_counts()[TOKEN_PATH] == 2  # it did try to renew
    assert server.refused() == 0


def test_scope_audience_and_form_authentication_are_sent(
    issuer: TokenIssuer, make_client: MakeClient
) -> None:
    client = make_client(scope="users:read", audience="https://api.acme.example",
                         auth_method="client_secret_post")

    assert client.lookup("u1").source == "fresh"
    (request,) = issuer.requests
    assert request.auth_method == "client_secret_post"
    assert request.form["scope"] == "users:read"
    assert request.form["audience"] == "https://api.acme.example"


def test_a_refused_client_is_unavailable_with_the_reason_and_not_retried(
    issuer: TokenIssuer, server: DirectoryServer, make_client: MakeClient
) -> None:
    issuer.client_secret = "not-what-nudge-has"

    result = make_client().lookup("u1")

    assert result.source == "unavailable"
    assert result.error is not None and "invalid_client" in result.error
    assert len(issuer.requests) == 1
    assert server.hits("u1") == 0


def test_the_token_endpoint_counts_inside_the_lookup_budget(
    server: DirectoryServer, make_client: MakeClient
) -> None:
    server.slow(5.0, TOKEN_ENDPOINT)
    client = make_client(timeout=0.3)

    started = time.monotonic()
    result = client.lookup("u1")

    assert time.monotonic() - started < GENEROUS
    assert result.source == "unavailable"
    assert result.error is not None and "token endpoint timed out" in result.error


def test_token_endpoint_down_uses_a_stale_record_and_cannot_find_unknown_ones(
    issuer: TokenIssuer, server: DirectoryServer, make_client: MakeClient
) -> None:
    with DirectoryServer(issuer=issuer) as tokens:
        client = make_client(token_url=tokens.token_url, retries=0)
        assert client.lookup("u1").source == "fresh"
        issuer.revoke_all()  # the next directory request needs a new token...
    # ...and the token endpoint is gone.
    known, unknown = client.lookup("u1"), client.lookup("u2")

    assert (known.source, known.email) == ("stale", "user1@example.com")
    assert unknown.source == "unavailable" and unknown.email is None
    assert unknown.error is not None and "token endpoint unreachable" in unknown.error


def test_the_client_secret_is_never_logged_nor_in_errors(
    issuer: TokenIssuer, secret_file: Path, make_client: MakeClient,
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client()
    assert client.lookup("u1").source == "fresh"
    issuer.client_secret = "rotated-at-the-provider"
    issuer.revoke_all()

    refused = client.lookup("u2")

    assert refused.source == "unavailable"
    assert caplog.records, "nothing was logged: the test would prove nothing"
    for text in (caplog.text, refused.error or "", repr(client.credentials),
                 repr(client.credentials.oauth)):  # type: ignore[union-attr]
        assert SECRET not in text


# --- rotation without restart ------------------------------------------------------------------


def test_a_rotated_client_secret_file_is_used_without_a_restart(
    issuer: TokenIssuer, server: DirectoryServer, secret_file: Path, make_client: MakeClient
) -> None:
    client = make_client()
    assert client.lookup("u1").source == "fresh"
    # The provider rotates the secret and revokes what the old one obtained.
    issuer.client_secret = "second-secret"
    issuer.revoke_all()
    write_atomically(secret_file, "second-secret\n")

    result = client.lookup("u2")

    assert result.source == "fresh"
    assert len(issuer.requests) == 2


def test_a_rotated_token_file_is_used_by_the_next_request(tmp_path: Path) -> None:
    token_file = tmp_path / "directory-token"
    token_file.write_text("token-one\n")
    credentials = DirectoryCredentials(bearer=Secret(what="directory token", path=token_file))
    with DirectoryServer(USERS) as server, DirectoryClient(
        server.url_template, cache_ttl=0.0, credentials=credentials
    ) as client:
        server.required_headers = {"Authorization": "Bearer token-one"}
        assert client.lookup("u1").source == "fresh"
        write_atomically(token_file, "token-two\n")
        server.required_headers = {"Authorization": "Bearer token-two"}

        result = client.lookup("u1")

        assert result.source == "fresh"
        assert server.refused() == 0  # the new token was sent at once, not after a 401
        assert server.last_request.headers["Authorization"] == "Bearer token-two"


def test_an_api_key_file_rewritten_in_place_is_picked_up(tmp_path: Path) -> None:
    key_file = tmp_path / "directory-api-key"
    key_file.write_text("key-aaaa")
    credentials = DirectoryCredentials(
        api_key=Secret(what="directory API key", path=key_file), api_key_header="X-Product-Key")
    with DirectoryServer(USERS) as server, DirectoryClient(
        server.url_template, cache_ttl=0.0, credentials=credentials
    ) as client:
        server.required_headers = {"X-Product-Key": "key-aaaa"}
        assert client.lookup("u1").source == "fresh"
        key_file.write_text("key-bbbb")  # same size, maybe the same mtime tick
        server.required_headers = {"X-Product-Key": "key-bbbb"}

        assert client.lookup("u1").source == "fresh"
        assert server.last_request.headers["X-Product-Key"] == "key-bbbb"


def test_a_secret_file_being_rewritten_keeps_the_value_read_before(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("token-one")
    secret = Secret(what="directory token", path=path)
    assert secret.get() == "token-one"

    path.write_text("")  # truncated, not yet rewritten
    assert secret.get() == "token-one"
    path.unlink()
    assert secret.get() == "token-one"
    write_atomically(path, "token-two")
    assert secret.get() == "token-two"


def test_a_secret_file_missing_from_the_start_is_a_clear_error(tmp_path: Path) -> None:
    secret = Secret(what="directory client secret", path=tmp_path / "nowhere")

    with pytest.raises(CredentialError, match="directory client secret: .*nowhere: file not found"):
        secret.get()


def test_a_missing_secret_file_makes_lookups_unavailable_not_crash(
    server: DirectoryServer, secret_file: Path, make_client: MakeClient
) -> None:
    secret_file.unlink()

    result = make_client().lookup("u1")

    assert result.source == "unavailable"
    assert result.error is not None and "file not found" in result.error


# --- configuration -----------------------------------------------------------------------------


def test_oauth_settings_from_the_environment(tmp_path: Path) -> None:
    environ = {
        "NUDGE_WEBHOOK_TOKEN": "t",
        "NUDGE_DIRECTORY_URL": "http://api.internal/users/{user_id}",
        "NUDGE_DIRECTORY_TOKEN_URL": "https://auth.internal/oauth/token",
        "NUDGE_DIRECTORY_CLIENT_ID": "nudge",
        "NUDGE_DIRECTORY_CLIENT_SECRET": "from-env",
    }
    config = load_config(environ=environ, data={"directory": {"oauth": {"scope": "users:read"}}})

    oauth = config.directory_oauth
    assert oauth is not None
    assert (oauth.token_url, oauth.client_id, oauth.scope) == (
        "https://auth.internal/oauth/token", "nudge", "users:read")
    assert oauth.client_secret_file is None and oauth.auth_method == "client_secret_basic"
    assert "from-env" not in repr(config)
    credentials = credentials_from_config(config, environ)
    assert credentials is not None and credentials.oauth is not None
    credentials.close()


def test_cache_and_stale_settings_load(tmp_path: Path) -> None:
    config = load_config(environ={"NUDGE_WEBHOOK_TOKEN": "t"}, data={"directory": {
        "cache_ttl_min": "10s", "cache_ttl_max": "10m", "max_stale": "30m"}})

    assert (config.directory_cache_ttl_min, config.directory_cache_ttl_max,
            config.directory_max_stale) == (10.0, 600.0, 1800.0)
    defaults = load_config(environ={"NUDGE_WEBHOOK_TOKEN": "t"})
    assert (defaults.directory_cache_ttl, defaults.directory_max_stale) == (300.0, 3600.0)


@pytest.mark.parametrize(
    ("directory", "environ", "problem"),
    [
        ({"oauth": {"client_id": "nudge", "client_secret_file": "s"}}, {},
         "directory.oauth.token_url: required"),
        ({"oauth": {"token_url": "https://auth/token", "client_secret_file": "s"}}, {},
         "directory.oauth.client_id: required"),
        ({"oauth": {"token_url": "https://auth/token", "client_id": "nudge"}}, {},
         "directory.oauth.client_secret_file: required"),
        ({"oauth": {"token_url": "https://auth/token", "client_id": "n", "client_secret_file": "s"}},
         {"NUDGE_DIRECTORY_CLIENT_SECRET": "x"}, "NUDGE_DIRECTORY_CLIENT_SECRET is set too"),
        ({"oauth": {"token_url": "https://auth/token", "client_id": "n", "client_secret_file": "s"},
          "token_file": "t"}, {}, "both would be sent as Authorization"),
        ({"token_file": "t"}, {"NUDGE_DIRECTORY_TOKEN": "x"}, "NUDGE_DIRECTORY_TOKEN is set too"),
        ({"oauth": {"token_url": "ftp://auth/token"}}, {}, "directory.oauth.token_url: expected"),
        ({"oauth": {"auth_method": "private_key_jwt"}}, {}, "directory.oauth.auth_method: expected"),
        ({"cache_ttl_min": "1h", "cache_ttl_max": "5m"}, {}, "directory.cache_ttl_max: must be"),
    ],
)
def test_inconsistent_directory_credentials_are_config_errors(directory, environ, problem) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(environ={"NUDGE_WEBHOOK_TOKEN": "t", **environ}, data={"directory": directory})

    assert problem in str(error.value)


# --- nudge check -------------------------------------------------------------------------------


def checked(directory: dict, environ: dict | None = None) -> tuple[list[str], list[str]]:
    """What `nudge check` says about these directory settings: (problems, notes)."""
    config = load_config(environ={"NUDGE_WEBHOOK_TOKEN": "t", **(environ or {})}, data={
        "directory": {"url": "http://127.0.0.1:9/users/{user_id}", **directory}})
    return directory_checks(config, environ or {})


def oauth_settings(token_url: str, secret_file: Path) -> dict:
    return {"oauth": {"token_url": token_url, "client_id": "nudge",
                      "client_secret_file": str(secret_file)}}


def test_check_reports_a_missing_client_secret_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"

    problems, _ = checked(oauth_settings("http://127.0.0.1:9/oauth/token", missing))

    assert problems == [f"defaults: directory.oauth.client_secret_file: {missing}: file not found"]


def test_check_reports_unreadable_and_empty_secret_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    folder = tmp_path / "a-folder"
    folder.mkdir()

    problems, _ = checked({"token_file": str(empty), "api_key_file": str(folder)})

    assert problems == [
        f"defaults: directory.token_file: {empty}: the file is empty",
        f"defaults: directory.api_key_file: {folder}: cannot read it (Is a directory)",
    ]


def test_check_gets_a_token_from_a_working_endpoint(
    server: DirectoryServer, issuer: TokenIssuer, secret_file: Path
) -> None:
    problems, notes = checked(oauth_settings(server.token_url, secret_file))

    assert problems == []
    assert notes == ["note: the directory token endpoint issued a token to 'nudge'"]
    assert len(issuer.requests) == 1


def test_check_with_the_secret_from_the_environment(
    server: DirectoryServer, issuer: TokenIssuer
) -> None:
    settings = {"oauth": {"token_url": server.token_url, "client_id": "nudge"}}

    problems, notes = checked(settings, {"NUDGE_DIRECTORY_CLIENT_SECRET": SECRET})

    assert (problems, len(notes)) == ([], 1)


def test_check_fails_when_the_token_endpoint_refuses_the_client(
    server: DirectoryServer, issuer: TokenIssuer, secret_file: Path
) -> None:
    issuer.client_secret = "something-else"

    problems, _ = checked(oauth_settings(server.token_url, secret_file))

    (problem,) = problems
    assert "token endpoint refused the request: invalid_client" in problem
    assert SECRET not in problem


def test_nudge_check_warns_about_an_unreachable_token_url_but_passes(
    tmp_path: Path, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("NUDGE_")]:
        monkeypatch.delenv(name)
    with DirectoryServer() as gone:
        token_url = gone.url + "/oauth/token"
    (tmp_path / "rules").mkdir()
    (tmp_path / "templates").mkdir()
    path = tmp_path / "nudge.yml"
    path.write_text(yaml.safe_dump({
        "rules_dir": str(tmp_path / "rules"), "templates_dir": str(tmp_path / "templates"),
        "webhook": {"token": "t"},
        "directory": {"url": "http://127.0.0.1:9/users/{user_id}",
                      **oauth_settings(token_url, secret_file)},
    }))

    result = CliRunner().invoke(main, ["--config", str(path), "check"])

    assert result.exit_code == 0, result.output
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1)
                if "token_url:" in text)
    assert (f"{path}:{line}: warning: directory.oauth.token_url {token_url}: token endpoint "
            f"unreachable") in result.output
    assert "OK:" in result.output
