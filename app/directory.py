"""The user directory: live per-user data (email, name, plan, quota...) fetched at send time.

`DirectoryClient` asks the product's user API, caches answers for a short window, retries
transient failures within a fixed latency budget and falls back to an expired cached record
when the API is down. `StaticDirectory` serves the same answers from a YAML/JSON file.
"""

import copy
import json
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlsplit

import requests
import yaml
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError

from app.metrics import DIRECTORY_CACHE, DIRECTORY_REQUEST_DURATION

log = logging.getLogger(__name__)

USER_ID_PLACEHOLDER = "{user_id}"
MAX_BODY_BYTES = 1024 * 1024
# A retry is only worth starting if at least this much of the budget is left for it.
MIN_ATTEMPT_SECONDS = 0.05
# Ids that percent-encoding leaves intact but that URL normalisation turns into another path.
UNUSABLE_IDS = frozenset({"", ".", ".."})


@dataclass(frozen=True)
class DirectoryLookup:
    """What the directory said about one user; `source` says where the answer came from."""

    record: dict | None
    email: str | None
    source: str  # fresh | cache | stale | not_found | unavailable | invalid
    error: str | None


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


class _Flight:
    """A fetch in progress that concurrent lookups of the same user wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: DirectoryLookup | None = None


class DirectoryClient:
    """Thread-safe HTTP client for the product's user API with a cache and a latency budget."""

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
        headers: dict[str, str] | None = None,
        max_cache_entries: int = 50_000,
    ) -> None:
        _validate_url_template(url_template)
        if timeout <= 0:
            raise ValueError(f"directory timeout must be > 0 seconds, got {timeout}")
        if retries < 0 or backoff < 0 or cache_ttl < 0 or negative_ttl < 0:
            raise ValueError("directory retries, backoff, cache_ttl and negative_ttl must be >= 0")
        if max_cache_entries < 1:
            raise ValueError(f"directory max_cache_entries must be >= 1, got {max_cache_entries}")
        self.url_template = url_template
        self.email_field = email_field
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.cache_ttl = cache_ttl
        self.negative_ttl = negative_ttl
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

    def __enter__(self) -> "DirectoryClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------------

    def _from_cache(self, user_id: str, entry: _Entry) -> DirectoryLookup:
        if entry.record is None:
            return DirectoryLookup(None, None, "not_found", f"directory has no user {user_id!r}")
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
        if attempt.kind == "record":
            assert attempt.record is not None
            self._store(user_id, _Entry(attempt.record, now + self.cache_ttl))
            record = copy.deepcopy(attempt.record)
            return DirectoryLookup(record, email_of(record, self.email_field), "fresh", None)
        if attempt.kind == "not_found":
            self._store(user_id, _Entry(None, now + self.negative_ttl))
            return DirectoryLookup(None, None, "not_found", f"directory has no user {user_id!r}")

        error = attempt.error or "directory lookup failed"
        if attempts > 1:
            error = f"{error} (after {attempts} attempts)"
        with self._lock:
            entry = self._cache.get(user_id)
            stale = copy.deepcopy(entry.record) if entry and entry.record is not None else None
        if stale is not None:
            DIRECTORY_CACHE.labels(result="stale").inc()
            log.warning("directory lookup for %r failed, using stale record: %s", user_id, error)
            return DirectoryLookup(stale, email_of(stale, self.email_field), "stale", error)
        log.warning("directory lookup for %r failed: %s", user_id, error)
        source = "invalid" if attempt.kind == "invalid" else "unavailable"
        return DirectoryLookup(None, None, source, error)

    def _store(self, user_id: str, entry: _Entry) -> None:
        with self._lock:
            self._cache[user_id] = entry
            self._cache.move_to_end(user_id)
            while len(self._cache) > self.max_cache_entries:
                self._cache.popitem(last=False)

    def _fetch(self, url: str) -> tuple[_Attempt, int]:
        """Request `url`, retrying transient failures, all within `timeout` seconds."""
        deadline = time.monotonic() + self.timeout
        attempts = 0
        while True:
            attempt = self._request_once(url, deadline)
            attempts += 1
            if not attempt.retryable or attempts > self.retries:
                return attempt, attempts
            delay = self._retry_delay(attempts - 1, attempt.retry_after)
            if time.monotonic() + delay + MIN_ATTEMPT_SECONDS > deadline:
                return attempt, attempts  # waiting would blow the budget: fall back now
            time.sleep(delay)

    def _retry_delay(self, retry_number: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        delay = self.backoff * 2**retry_number
        return delay + random.uniform(0, delay / 10)

    def _request_once(self, url: str, deadline: float) -> _Attempt:
        remaining = max(deadline - time.monotonic(), 0.001)
        started = time.monotonic()
        try:
            # Redirects are refused: following one could hand the credentials to another host.
            with self._session.get(
                url, timeout=remaining, stream=True, allow_redirects=False
            ) as response:
                status = response.status_code
                body = _read_body(response, deadline) if 200 <= status < 300 else b""
                retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
        except _BodyTooLarge:
            attempt = _Attempt("invalid", error="directory answer is larger than 1 MiB")
        except requests.RequestException as exc:
            if _is_timeout(exc):
                error = f"directory timed out after {self.timeout}s"
            else:
                error = f"directory unreachable: {_short_reason(exc)}"
            attempt = _Attempt("failed", error=error, retryable=True)
        else:
            attempt = _classify(status, body, retry_after)
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
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


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
