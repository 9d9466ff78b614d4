"""The user directory: live per-user data (email, name, plan, quota...) fetched at send time.

`DirectoryClient` asks the product's user API, caches answers for as long as the API's
Cache-Control allows (within configured bounds), retries transient failures within a fixed
latency budget and falls back to an expired cached record, for a bounded time, when the API is
down. `DirectoryCredentials` authenticates the requests: a bearer token or API key (fixed, or
from a file re-read when it changes) or OAuth 2.0 client-credentials tokens (`ClientCredentials`).
`StaticDirectory` serves the same answers from a YAML/JSON file.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote, urlsplit

import requests
import yaml
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError

from app.metrics import DIRECTORY_CACHE, DIRECTORY_REQUEST_DURATION

if TYPE_CHECKING:
    from app.config import Config

log = logging.getLogger(__name__)

USER_ID_PLACEHOLDER = "{user_id}"
MAX_BODY_BYTES = 1024 * 1024
# A retry is only worth starting if at least this much of the budget is left for it.
MIN_ATTEMPT_SECONDS = 0.05
# Ids that percent-encoding leaves intact but that URL normalisation turns into another path.
UNUSABLE_IDS = frozenset({"", ".", ".."})
# An access token is replaced a tenth of its lifetime before it expires, at most this early.
TOKEN_REFRESH_LEEWAY = 60.0
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
# What a Retry-After of more digits than fit any budget is taken to mean (seconds).
MAX_RETRY_AFTER = 1e12


@dataclass(frozen=True)
class DirectoryLookup:
    """What the directory said about one user; `source` says where the answer came from."""

    record: dict | None
    email: str | None
    source: str  # fresh | cache | stale | not_found | unavailable | invalid
    error: str | None
    # The HTTP status behind a not_found or failed answer (404, 401, 403...), when there was
    # one: a wrong URL or credential shows as the same status for every user (app/circuit.py).
    status: int | None = None


class Directory(Protocol):
    """Anything that can look users up: `DirectoryClient` or `StaticDirectory`."""

    def lookup(self, user_id: str) -> DirectoryLookup: ...

    def close(self) -> None: ...


def email_of(record: Mapping, email_field: str = "email") -> str | None:
    """The record's address when it is a non-empty string, else None."""
    value = record.get(email_field)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def directory_headers_from_env(
    environ: Mapping[str, str], api_key_header: str = "X-API-Key"
) -> dict[str, str]:
    """Auth headers for the directory from NUDGE_DIRECTORY_TOKEN / NUDGE_DIRECTORY_API_KEY."""
    headers: dict[str, str] = {}
    token = environ.get("NUDGE_DIRECTORY_TOKEN", "").strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    api_key = environ.get("NUDGE_DIRECTORY_API_KEY", "").strip()
    if api_key:
        headers[api_key_header] = api_key
    return headers


# --- cache rules (pure) --------------------------------------------------------------------------


def cache_lifetime(
    cache_control: str | None,
    age: str | None,
    *,
    default: float,
    minimum: float = 0.0,
    maximum: float = float("inf"),
) -> float | None:
    """Seconds an answer may be reused, from the API's own headers; None: do not keep it at all.

    `no-store`: None. `max-age=N` (less the `Age` the answer already has) or `no-cache` (0):
    that, kept within [minimum, maximum]. No freshness directive: `default`, unbounded."""
    directives = _cache_directives(cache_control)
    if "no-store" in directives:
        return None
    if "no-cache" in directives:
        fresh_for = 0.0
    else:
        max_age = _delta_seconds(directives.get("max-age"))
        if max_age is None:
            return default
        fresh_for = max(max_age - (_delta_seconds(age) or 0), 0)
    return min(max(float(fresh_for), minimum), maximum)


def stale_usable(now: float, expired_at: float, max_stale: float) -> bool:
    """Whether a record whose freshness ended at `expired_at` may still stand in for a live one."""
    return now - expired_at <= max_stale


def token_refresh_at(obtained_at: float, expires_in: float | None) -> float | None:
    """When to replace a token obtained at `obtained_at`: shortly before it expires (a tenth of
    its lifetime early, at most TOKEN_REFRESH_LEEWAY); None when the server gave no lifetime."""
    if expires_in is None:
        return None
    return obtained_at + expires_in - min(expires_in / 10, TOKEN_REFRESH_LEEWAY)


def _cache_directives(value: str | None) -> dict[str, str | None]:
    directives: dict[str, str | None] = {}
    for part in (value or "").split(","):
        name, sep, argument = part.strip().partition("=")
        name = name.strip().lower()
        if name and name not in directives:
            directives[name] = argument.strip().strip('"') if sep else None
    return directives


def _delta_seconds(value: str | None) -> int | None:
    """An HTTP delta-seconds value (a whole number >= 0), or None when absent or malformed."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


# --- credentials ---------------------------------------------------------------------------------


class CredentialError(Exception):
    """No credentials for the directory right now. The message never contains a secret."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def read_secret_file(path: Path) -> str:
    """The stripped content of a secret file; ValueError naming the file when it is unusable."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if not value:
        raise ValueError(f"{path}: the file is empty")
    return value


class Secret:
    """A credential: a fixed value (from the environment), or a file re-read when it changes.

    A file is checked (stat) on every use and read again when it was replaced or modified, so a
    rotated token, key or client secret is used by the next request without a restart. While the
    file is briefly missing or empty (being rewritten), the value read before is kept."""

    def __init__(self, *, what: str, value: str | None = None, path: str | Path | None = None):
        if (value is None) == (path is None):
            raise ValueError("a Secret is either a value or a file")
        self.what = what
        self.path = Path(path) if path is not None else None
        self._value = value.strip() if value is not None else None
        if self.path is None and not self._value:
            raise ValueError(f"{what}: empty value")
        self._seen: tuple | None = None  # the file's identity and times when last read
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        where = f"file {self.path}" if self.path else "a fixed value"
        return f"Secret({self.what}, {where})"

    def get(self, *, reread: bool = False) -> str:
        """The current value; `reread` reads the file even if it looks unchanged."""
        if self.path is None:
            assert self._value is not None
            return self._value
        with self._lock:
            try:
                try:
                    info = os.stat(self.path)
                except FileNotFoundError:
                    raise ValueError(f"{self.path}: file not found") from None
                except OSError as exc:
                    raise ValueError(f"{self.path}: cannot read it ({exc.strerror})") from None
                seen = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
                if reread or seen != self._seen or self._value is None:
                    value = read_secret_file(self.path)
                    if self._value is not None and value != self._value:
                        log.info("%s file %s changed: using the new value", self.what, self.path)
                    self._value, self._seen = value, seen
            except ValueError as exc:
                if self._value is None:
                    raise CredentialError(f"{self.what}: {exc}") from None
                log.warning("%s: %s; still using the value read before", self.what, exc)
            return self._value


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    refresh_at: float | None  # time.monotonic() from which a new token is fetched
    expires_at: float | None  # time.monotonic() after which this one is no longer sent


class ClientCredentials:
    """OAuth 2.0 access tokens by the client-credentials grant (RFC 6749 section 4.4).

    Authlib makes the token request (client authentication, the form, the error responses).
    Here: a token is reused until shortly before it expires; one sender fetches the next one
    while the others keep using the current token if it is still valid, or wait for the new one
    within their own budget. A sender that waited for a fetch that failed gets its error instead
    of trying again, so a burst of senders makes one token request."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: Secret,
        *,
        scope: str | None = None,
        audience: str | None = None,
        auth_method: str = "client_secret_basic",
    ) -> None:
        if auth_method not in TOKEN_AUTH_METHODS:
            raise ValueError(f"token auth method must be one of {', '.join(TOKEN_AUTH_METHODS)}")
        parts = urlsplit(token_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"token URL must be an http:// or https:// URL: {token_url!r}")
        self.token_url = token_url
        self.client_id = client_id
        self.audience = audience
        self._secret = client_secret
        self._session = OAuth2Session(
            client_id=client_id, token_endpoint_auth_method=auth_method, scope=scope
        )
        self._session.headers["User-Agent"] = "nudge"
        self._cond = threading.Condition()
        self._token: _Token | None = None
        self._fetching = False
        self._rounds = 0  # fetches finished, successful or not
        self._last_error: CredentialError | None = None

    def __repr__(self) -> str:
        return f"ClientCredentials({self.token_url}, client_id={self.client_id!r})"

    def access_token(self, deadline: float) -> str:
        """A valid access token, fetched if needed before `deadline` (time.monotonic())."""
        with self._cond:
            while True:
                now = time.monotonic()
                token = self._token
                if token is not None and (token.refresh_at is None or now < token.refresh_at):
                    return token.value
                if not self._fetching:
                    self._fetching = True
                    break
                if self._valid_now():
                    assert token is not None
                    return token.value  # another sender is fetching the next one
                if now >= deadline:
                    raise CredentialError("timed out waiting for an access token", retryable=True)
                rounds = self._rounds
                self._cond.wait(deadline - now)
                error = self._last_error
                if self._rounds != rounds and error is not None and not self._valid_now():
                    raise CredentialError(str(error), retryable=error.retryable)
        try:
            fresh = self._fetch(deadline)
        except CredentialError as exc:
            with self._cond:
                self._fetching, self._last_error = False, exc
                self._rounds += 1
                self._cond.notify_all()
                token = self._token if self._valid_now() else None
            if token is not None:
                log.warning("directory access token not renewed ahead of expiry, still using the "
                            "current one: %s", exc)
                return token.value
            raise
        with self._cond:
            self._token, self._fetching, self._last_error = fresh, False, None
            self._rounds += 1
            self._cond.notify_all()
        return fresh.value

    def _valid_now(self) -> bool:
        token = self._token
        return token is not None and (token.expires_at is None or time.monotonic() < token.expires_at)

    def invalidate(self, access_token: str) -> None:
        """The directory refused this token (revoked): the next request fetches a new one."""
        with self._cond:
            if self._token is not None and self._token.value == access_token:
                self._token = None

    def close(self) -> None:
        self._session.close()

    def _fetch(self, deadline: float) -> _Token:
        remaining = deadline - time.monotonic()
        if remaining < MIN_ATTEMPT_SECONDS:
            raise CredentialError("no time left to request an access token", retryable=True)
        self._session.client_secret = self._secret.get()
        extra = {"audience": self.audience} if self.audience else {}
        started = time.monotonic()
        try:
            answer = self._session.fetch_token(
                self.token_url, grant_type="client_credentials", timeout=remaining,
                allow_redirects=False, **extra,
            )
        except OAuthError as exc:
            detail = f" ({exc.description})" if exc.description else ""
            raise CredentialError(f"token endpoint refused the request: {exc.error}{detail}") from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise CredentialError(f"token endpoint answered {status}",
                                  retryable=status is None or status >= 500 or status == 429) from None
        except requests.RequestException as exc:
            if _is_timeout(exc):
                raise CredentialError(f"token endpoint timed out after {remaining:.2f}s",
                                      retryable=True) from None
            raise CredentialError(f"token endpoint unreachable: {_short_reason(exc)}",
                                  retryable=True) from None
        except ValueError as exc:  # not a JSON object: an HTML page, a redirect...
            raise CredentialError(f"token endpoint did not answer a token: {exc}") from None
        value = answer.get("access_token")
        if not isinstance(value, str) or not value:
            raise CredentialError("token endpoint answered without an access_token")
        token_type = str(answer.get("token_type") or "bearer")
        if token_type.lower() != "bearer":
            raise CredentialError(f"token endpoint issued a {token_type!r} token, not a bearer token")
        expires_in = _lifetime_seconds(answer.get("expires_in"))
        log.info("directory access token obtained from %s (expires in %s)", self.token_url,
                 f"{expires_in:g}s" if expires_in is not None else "an unknown time")
        return _Token(value, token_refresh_at(started, expires_in),
                      started + expires_in if expires_in is not None else None)


def _lifetime_seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


class DirectoryCredentials:
    """What each directory request carries: `Authorization: Bearer` (a fixed or file token, or an
    OAuth 2.0 access token) and/or an API key header. Values are looked up per request."""

    def __init__(
        self,
        *,
        bearer: Secret | None = None,
        oauth: ClientCredentials | None = None,
        api_key: Secret | None = None,
        api_key_header: str = "X-API-Key",
    ) -> None:
        if bearer is not None and oauth is not None:
            raise ValueError("a bearer token and OAuth 2.0 both set Authorization: choose one")
        self.bearer, self.oauth, self.api_key = bearer, oauth, api_key
        self.api_key_header = api_key_header

    def headers(self, deadline: float) -> dict[str, str]:
        """The auth headers for one request; CredentialError when they cannot be had."""
        headers: dict[str, str] = {}
        if self.api_key is not None:
            headers[self.api_key_header] = self.api_key.get()
        if self.oauth is not None:
            headers["Authorization"] = f"Bearer {self.oauth.access_token(deadline)}"
        elif self.bearer is not None:
            headers["Authorization"] = f"Bearer {self.bearer.get()}"
        return headers

    def renew_after_401(self, sent: Mapping[str, str]) -> bool:
        """The directory answered 401 to a request carrying `sent`: drop the refused access
        token and re-read credential files. True when a retry would carry new credentials."""
        renewed = False
        if self.oauth is not None:
            self.oauth.invalidate(sent.get("Authorization", "").removeprefix("Bearer "))
            renewed = True
        for secret, header, prefix in ((self.bearer, "Authorization", "Bearer "),
                                       (self.api_key, self.api_key_header, "")):
            if secret is None or secret.path is None:
                continue
            try:
                value = secret.get(reread=True)
            except CredentialError:
                continue
            renewed |= sent.get(header) != prefix + value
        return renewed

    def close(self) -> None:
        if self.oauth is not None:
            self.oauth.close()


def credentials_from_config(config: Config, environ: Mapping[str, str]) -> DirectoryCredentials | None:
    """The directory credentials that `config` and the environment describe, or None."""
    token = environ.get("NUDGE_DIRECTORY_TOKEN", "").strip()
    api_key = environ.get("NUDGE_DIRECTORY_API_KEY", "").strip()
    bearer = None
    if config.directory_token_file is not None:
        bearer = Secret(what="directory token", path=config.directory_token_file)
    elif token:
        bearer = Secret(what="directory token", value=token)
    key = None
    if config.directory_api_key_file is not None:
        key = Secret(what="directory API key", path=config.directory_api_key_file)
    elif api_key:
        key = Secret(what="directory API key", value=api_key)
    oauth = None
    settings = config.directory_oauth
    if settings is not None:
        if settings.client_secret_file is not None:
            secret = Secret(what="directory client secret", path=settings.client_secret_file)
        else:
            secret = Secret(what="directory client secret",
                            value=environ.get("NUDGE_DIRECTORY_CLIENT_SECRET", ""))
        oauth = ClientCredentials(
            settings.token_url, settings.client_id, secret, scope=settings.scope,
            audience=settings.audience, auth_method=settings.auth_method,
        )
    if bearer is None and key is None and oauth is None:
        return None
    return DirectoryCredentials(bearer=bearer, oauth=oauth, api_key=key,
                                api_key_header=config.directory_api_key_header)


def directory_from_config(config: Config, environ: Mapping[str, str]) -> DirectoryClient:
    """The HTTP directory client `config` describes (config.directory_url must be set)."""
    assert config.directory_url is not None
    return DirectoryClient(
        config.directory_url,
        email_field=config.directory_email_field,
        timeout=config.directory_timeout,
        retries=config.directory_retries,
        cache_ttl=config.directory_cache_ttl,
        cache_ttl_min=config.directory_cache_ttl_min,
        cache_ttl_max=config.directory_cache_ttl_max,
        max_stale=config.directory_max_stale,
        credentials=credentials_from_config(config, environ),
    )


# --- the HTTP directory --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    record: dict | None  # None: the directory answered 404
    expires_at: float  # time.monotonic() after which the entry is only a fallback


@dataclass(frozen=True)
class _Attempt:
    """The outcome of one HTTP request."""

    kind: str  # record | not_found | invalid | failed
    record: dict | None = None
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None
    status: int | None = None
    sent: Mapping[str, str] = field(default_factory=dict, repr=False)  # the auth headers sent
    cache_control: str | None = None
    age: str | None = None


class _Flight:
    """A fetch in progress that concurrent lookups of the same user wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: DirectoryLookup | None = None


class DirectoryClient:
    """Thread-safe HTTP client for the product's user API with a cache and a latency budget.

    `cache_ttl` (`negative_ttl` for 404s) applies when the API's answer has no Cache-Control
    freshness; its `max-age` is kept within [cache_ttl_min, cache_ttl_max]; `no-store` is not
    kept at all. An expired record stands in for a live one while the API cannot be asked, for
    at most `max_stale` seconds after it expired. `credentials` are asked for the auth headers
    of every request (their time counts in the budget); `headers` are sent as they are."""

    def __init__(
        self,
        url_template: str,
        *,
        email_field: str = "email",
        timeout: float = 2.0,
        retries: int = 2,
        backoff: float = 0.2,
        cache_ttl: float = 300.0,
        negative_ttl: float = 60.0,
        cache_ttl_min: float = 0.0,
        cache_ttl_max: float = 3600.0,
        max_stale: float = 3600.0,
        headers: dict[str, str] | None = None,
        credentials: DirectoryCredentials | None = None,
        max_cache_entries: int = 50_000,
    ) -> None:
        _validate_url_template(url_template)
        if timeout <= 0:
            raise ValueError(f"directory timeout must be > 0 seconds, got {timeout}")
        if min(retries, backoff, cache_ttl, negative_ttl, cache_ttl_min, max_stale) < 0:
            raise ValueError("directory retries, backoff, cache_ttl, negative_ttl, cache_ttl_min "
                             "and max_stale must be >= 0")
        if cache_ttl_max < cache_ttl_min:
            raise ValueError("directory cache_ttl_max must be >= cache_ttl_min")
        if max_cache_entries < 1:
            raise ValueError(f"directory max_cache_entries must be >= 1, got {max_cache_entries}")
        self.url_template = url_template
        self.email_field = email_field
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.cache_ttl = cache_ttl
        self.negative_ttl = negative_ttl
        self.cache_ttl_min = cache_ttl_min
        self.cache_ttl_max = cache_ttl_max
        self.max_stale = max_stale
        self.credentials = credentials
        self.max_cache_entries = max_cache_entries
        self._session = requests.Session()
        # Several sending threads share the session: keep enough pooled connections for them.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({"Accept": "application/json", "User-Agent": "nudge"})
        self._session.headers.update(headers or {})
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, _Flight] = {}

    def url_for(self, user_id: str) -> str:
        """The request URL; the id is one percent-encoded path segment (no `/`, `?`, `#`)."""
        return self.url_template.replace(USER_ID_PLACEHOLDER, quote(user_id, safe=""))

    def lookup(self, user_id: str) -> DirectoryLookup:
        """The user's record: cached, fetched within the budget, or the best fallback."""
        if user_id in UNUSABLE_IDS:
            return DirectoryLookup(None, None, "not_found", f"user id {user_id!r} is not usable")
        with self._lock:
            entry = self._cache.get(user_id)
            if entry is not None and entry.expires_at > time.monotonic():
                DIRECTORY_CACHE.labels(result="hit").inc()
                return self._from_cache(user_id, entry)
            flight = self._inflight.get(user_id)
            leader = flight is None
            if flight is None:
                flight = self._inflight[user_id] = _Flight()
        DIRECTORY_CACHE.labels(result="miss").inc()
        if not leader:
            return self._wait_for(flight)
        result: DirectoryLookup | None = None
        try:
            result = self._fetch_and_store(user_id)
            return result
        finally:
            with self._lock:
                del self._inflight[user_id]
            flight.result = _copied(result) if result is not None else None
            flight.done.set()

    def invalidate(self, user_id: str) -> None:
        """Forget the cached answer for one user (the next lookup fetches)."""
        with self._lock:
            self._cache.pop(user_id, None)

    def close(self) -> None:
        self._session.close()
        if self.credentials is not None:
            self.credentials.close()

    def __enter__(self) -> DirectoryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------------

    def _from_cache(self, user_id: str, entry: _Entry) -> DirectoryLookup:
        if entry.record is None:
            return DirectoryLookup(None, None, "not_found", f"directory has no user {user_id!r}",
                                   status=404)
        record = copy.deepcopy(entry.record)
        return DirectoryLookup(record, email_of(record, self.email_field), "cache", None)

    def _wait_for(self, flight: _Flight) -> DirectoryLookup:
        # The leader's fetch is bounded by the budget; the extra second only covers scheduling.
        if not flight.done.wait(self.timeout + 1.0):
            error = "timed out waiting for a concurrent directory lookup"
        elif flight.result is None:
            error = "concurrent directory lookup failed"
        else:
            return _copied(flight.result)
        return DirectoryLookup(None, None, "unavailable", error)

    def _fetch_and_store(self, user_id: str) -> DirectoryLookup:
        attempt, attempts = self._fetch(self.url_for(user_id))
        now = time.monotonic()
        if attempt.kind in ("record", "not_found"):
            lifetime = cache_lifetime(
                attempt.cache_control, attempt.age,
                default=self.cache_ttl if attempt.kind == "record" else self.negative_ttl,
                minimum=self.cache_ttl_min, maximum=self.cache_ttl_max,
            )
            if lifetime is None:  # no-store: not even kept as a fallback
                self.invalidate(user_id)
            else:
                self._store(user_id, _Entry(attempt.record, now + lifetime))
        if attempt.kind == "record":
            assert attempt.record is not None
            record = copy.deepcopy(attempt.record)
            return DirectoryLookup(record, email_of(record, self.email_field), "fresh", None)
        if attempt.kind == "not_found":
            return DirectoryLookup(None, None, "not_found", f"directory has no user {user_id!r}",
                                   status=attempt.status)

        error = attempt.error or "directory lookup failed"
        if attempts > 1:
            error = f"{error} (after {attempts} attempts)"
        stale = None
        with self._lock:
            entry = self._cache.get(user_id)
            if entry is not None and entry.record is not None:
                if stale_usable(now, entry.expires_at, self.max_stale):
                    stale = copy.deepcopy(entry.record)
                else:
                    error = (f"{error}; the cached record expired {_seconds(now - entry.expires_at)}"
                             f" ago, longer than max_stale ({_seconds(self.max_stale)})")
        if stale is not None:
            DIRECTORY_CACHE.labels(result="stale").inc()
            log.warning("directory lookup for %r failed, using stale record: %s", user_id, error)
            return DirectoryLookup(stale, email_of(stale, self.email_field), "stale", error)
        log.warning("directory lookup for %r failed: %s", user_id, error)
        source = "invalid" if attempt.kind == "invalid" else "unavailable"
        return DirectoryLookup(None, None, source, error, status=attempt.status)

    def _store(self, user_id: str, entry: _Entry) -> None:
        with self._lock:
            self._cache[user_id] = entry
            self._cache.move_to_end(user_id)
            while len(self._cache) > self.max_cache_entries:
                self._cache.popitem(last=False)

    def _fetch(self, url: str) -> tuple[_Attempt, int]:
        """Request `url`, retrying transient failures, all within `timeout` seconds.

        A 401 is retried once, at once, when the credentials have something new to offer
        (a new access token, a changed file); that retry is not one of `retries`."""
        deadline = time.monotonic() + self.timeout
        attempts = retried = 0
        renewed = False
        while True:
            attempt = self._request_once(url, deadline)
            attempts += 1
            if (attempt.status == 401 and not renewed and self.credentials is not None
                    and time.monotonic() + MIN_ATTEMPT_SECONDS < deadline
                    and self.credentials.renew_after_401(attempt.sent)):
                renewed = True
                continue
            if not attempt.retryable or retried >= self.retries:
                return attempt, attempts
            retried += 1
            delay = self._retry_delay(retried - 1, attempt.retry_after)
            if not 0 <= delay <= self.timeout:  # also false for NaN: never reaches sleep()
                return attempt, attempts
            if time.monotonic() + delay + MIN_ATTEMPT_SECONDS > deadline:
                return attempt, attempts  # waiting would blow the budget: fall back now
            time.sleep(delay)

    def _retry_delay(self, retry_number: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        delay = self.backoff * 2**retry_number
        return delay + random.uniform(0, delay / 10)

    def _request_once(self, url: str, deadline: float) -> _Attempt:
        sent: dict[str, str] = {}
        if self.credentials is not None:
            try:
                sent = self.credentials.headers(deadline)
            except CredentialError as exc:
                return _Attempt("failed", error=str(exc), retryable=exc.retryable)
        remaining = max(deadline - time.monotonic(), 0.001)
        started = time.monotonic()
        try:
            # Redirects are refused: following one could hand the credentials to another host.
            with self._session.get(
                url, headers=sent or None, timeout=remaining, stream=True, allow_redirects=False
            ) as response:
                status = response.status_code
                body = _read_body(response, deadline) if 200 <= status < 300 else b""
                retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
                cache_control = response.headers.get("Cache-Control")
                age = response.headers.get("Age")
        except _BodyTooLarge:
            attempt = _Attempt("invalid", error="directory answer is larger than 1 MiB")
        except requests.RequestException as exc:
            if _is_timeout(exc):
                error = f"directory timed out after {self.timeout}s"
            else:
                error = f"directory unreachable: {_short_reason(exc)}"
            attempt = _Attempt("failed", error=error, retryable=True)
        else:
            attempt = replace(_classify(status, body, retry_after), status=status,
                              cache_control=cache_control, age=age)
        attempt = replace(attempt, sent=sent)
        outcome = {"record": "ok", "not_found": "not_found"}.get(attempt.kind, "error")
        DIRECTORY_REQUEST_DURATION.labels(outcome=outcome).observe(time.monotonic() - started)
        return attempt


class _BodyTooLarge(Exception):
    pass


def _read_body(response: requests.Response, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=16384):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BodyTooLarge()
        if time.monotonic() > deadline:
            raise requests.Timeout("directory answer arrived too slowly")
        chunks.append(chunk)
    return b"".join(chunks)


def _classify(status: int, body: bytes, retry_after: float | None) -> _Attempt:
    if status == 404:
        return _Attempt("not_found")
    if status == 429 or status >= 500:
        error = f"directory answered {status}"
        return _Attempt("failed", error=error, retryable=True, retry_after=retry_after)
    if not 200 <= status < 300:
        # 3xx, 401, 403, 400...: retrying won't help; usually a misconfigured URL or credential.
        return _Attempt("failed", error=f"directory answered {status}")
    try:
        document = json.loads(body)
    except ValueError:  # also covers UnicodeDecodeError
        return _Attempt("invalid", error="directory answered invalid JSON")
    if not isinstance(document, dict):
        kind = type(document).__name__ if document is not None else "null"
        return _Attempt("invalid", error=f"directory answered a JSON {kind}, not an object")
    return _Attempt("record", record=document)


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds (digits only) or an HTTP date; None for anything
    else (`nan`, `inf`, `-1`, `1.5`, garbage), which is ignored as if it were absent."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]+", value):
        # int() of thousands of digits is slow (and refused past 4300): any long number is
        # "later than any budget" anyway.
        return float(value) if len(value) <= 12 else MAX_RETRY_AFTER
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _is_timeout(exc: requests.RequestException) -> bool:
    # A read timeout while streaming the body surfaces as a ConnectionError wrapping urllib3's.
    return isinstance(exc, requests.Timeout) or any(
        isinstance(arg, ReadTimeoutError) for arg in exc.args
    )


def _short_reason(exc: requests.RequestException) -> str:
    reason = exc.args[0] if exc.args else exc
    reason = getattr(reason, "reason", reason)  # urllib3 MaxRetryError -> underlying error
    text = str(reason)
    return text if len(text) <= 200 else text[:197] + "..."


def _seconds(value: float) -> str:
    return f"{value:.1f}s" if value < 10 else f"{value:.0f}s"


def _copied(result: DirectoryLookup) -> DirectoryLookup:
    """The same answer with its own record, so callers can't mutate each other's data."""
    if result.record is None:
        return result
    return replace(result, record=copy.deepcopy(result.record))


def _validate_url_template(url_template: str) -> None:
    if USER_ID_PLACEHOLDER not in url_template:
        raise ValueError(
            f"directory url_template must contain {USER_ID_PLACEHOLDER}: {url_template!r}"
        )
    parts = urlsplit(url_template.replace(USER_ID_PLACEHOLDER, "x"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"directory url_template must be an http:// or https:// URL: {url_template!r}"
        )


class StaticDirectory:
    """Users from a YAML/JSON file: {user_id: {email: ..., name: ...}} or {user_id: "addr"}."""

    def __init__(self, path: str | Path, *, email_field: str = "email") -> None:
        self.path = Path(path)
        self.email_field = email_field
        self._records = _load_static_map(self.path, email_field)

    def lookup(self, user_id: str) -> DirectoryLookup:
        record = self._records.get(user_id)
        if record is None:
            error = f"user {user_id!r} is not in {self.path}"
            return DirectoryLookup(None, None, "not_found", error)
        record = copy.deepcopy(record)
        return DirectoryLookup(record, email_of(record, self.email_field), "fresh", None)

    def close(self) -> None:
        """Nothing to release; present so both directories can be used the same way."""


def _load_static_map(path: Path, email_field: str) -> dict[str, dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"user directory file {path}: cannot read it ({exc.strerror})") from exc
    try:
        document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"user directory file {path}: not valid YAML/JSON ({exc})") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ValueError(
            f"user directory file {path}: expected a mapping of user id to entry, "
            f"got {type(document).__name__}"
        )
    records: dict[str, dict] = {}
    for user_id, entry in document.items():
        if not isinstance(user_id, str):
            raise ValueError(
                f"user directory file {path}: user id {user_id!r} must be a string (quote it)"
            )
        if isinstance(entry, str):
            records[user_id] = {"user_id": user_id, email_field: entry}
        elif isinstance(entry, dict):
            records[user_id] = {"user_id": user_id, **entry}
        else:
            raise ValueError(
                f"user directory file {path}: entry for {user_id!r} must be an email address "
                f"or a mapping, got {type(entry).__name__}"
            )
    return records
