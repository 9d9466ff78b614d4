"""The demo product's users and their usage: one thread-safe, in-memory store.

Everything the product knows about a user lives here. The HTTP endpoints, the traffic
simulator and the Prometheus collector all read and change it through `UserDirectory`,
so the user directory records and the exported metrics always agree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from demo_api.tally import HourlyTally

PLAN_QUOTAS: dict[str, int] = {"free": 1_000, "pro": 100_000, "team": 1_000_000}
PAYMENT_STATUSES = ("ok", "failed")
DEPRECATED_ENDPOINTS = frozenset({"/v1/send"})
MESSAGES_ENDPOINT = "/v2/messages"
# Series exported for every user from the first scrape, so rules never see a missing series.
INITIAL_REQUEST_SERIES: tuple[tuple[str, str], ...] = (
    (MESSAGES_ENDPOINT, "200"),
    (MESSAGES_ENDPOINT, "429"),
    (MESSAGES_ENDPOINT, "500"),
)
INITIAL_DEPRECATED_SERIES: tuple[str, ...] = tuple(sorted(DEPRECATED_ENDPOINTS))

HOURS_24H = 24
HOURS_7D = 7 * 24
HOURS_30D = 30 * 24


class UnknownUser(KeyError):
    """No user with that id."""


class UserExists(ValueError):
    """A user with that id already exists."""


def iso_utc(timestamp: float) -> str:
    """Format a unix time as ISO 8601 UTC with a Z suffix, e.g. 2026-11-20T21:00:00Z."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso_utc(text: str) -> float:
    """Parse an ISO 8601 time (naive means UTC) into a unix time."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass
class Account:
    """One user of the product: profile, plan, billing and usage."""

    user_id: str
    email: str
    name: str
    plan: str
    signup_at: float
    quota_limit: int
    quota_used: int = 0
    payment_status: str = "ok"
    card_last4: str | None = None
    last_call_at: float | None = None
    timezone: str | None = None  # IANA name; Nudge's quiet hours go by the user's clock
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    deprecated: dict[str, int] = field(default_factory=dict)
    recent_requests: HourlyTally = field(default_factory=HourlyTally)
    recent_errors: HourlyTally = field(default_factory=HourlyTally)
    recent_deprecated: HourlyTally = field(default_factory=HourlyTally)

    def __post_init__(self) -> None:
        for series in INITIAL_REQUEST_SERIES:
            self.requests.setdefault(series, 0)
        for endpoint in INITIAL_DEPRECATED_SERIES:
            self.deprecated.setdefault(endpoint, 0)

    @property
    def quota_ratio(self) -> float:
        return self.quota_used / self.quota_limit

    def record(self, now: float) -> dict[str, Any]:
        """The user directory JSON record Nudge reads."""
        return {
            "user_id": self.user_id,
            "email": self.email,
            "name": self.name,
            "plan": self.plan,
            "signup_at": iso_utc(self.signup_at),
            "quota_limit": self.quota_limit,
            "quota_used": self.quota_used,
            "requests_30d": self.recent_requests.total(now, HOURS_30D),
            "errors_24h": self.recent_errors.total(now, HOURS_24H),
            "deprecated_calls_7d": self.recent_deprecated.total(now, HOURS_7D),
            "last_call_at": None if self.last_call_at is None else iso_utc(self.last_call_at),
            "timezone": self.timezone,
            "payment_status": self.payment_status,
            "card_last4": self.card_last4,
        }


@dataclass(frozen=True)
class UserMetrics:
    """A consistent copy of one user's metric values, taken for a scrape."""

    user_id: str
    plan: str
    signup_at: float
    quota_ratio: float
    payment_failed: bool
    requests: dict[tuple[str, str], int]
    deprecated: dict[str, int]


class UserDirectory:
    """All accounts, guarded by one lock. `clock` returns the current unix time."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[str, Account] = {}

    def add(self, account: Account) -> dict[str, Any]:
        """Add a new account; raises UserExists if the id is taken."""
        with self._lock:
            if account.user_id in self._accounts:
                raise UserExists(account.user_id)
            self._accounts[account.user_id] = account
            return account.record(self.clock())

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._accounts)

    def record(self, user_id: str) -> dict[str, Any]:
        """The directory record of one user; raises UnknownUser."""
        with self._lock:
            return self._get(user_id).record(self.clock())

    def records(self) -> list[dict[str, Any]]:
        """Every user's directory record, ordered by user id."""
        with self._lock:
            now = self.clock()
            return [self._accounts[uid].record(now) for uid in sorted(self._accounts)]

    def quota(self, user_id: str) -> tuple[int, int]:
        """(quota_used, quota_limit) of a user; raises UnknownUser."""
        with self._lock:
            account = self._get(user_id)
            return account.quota_used, account.quota_limit

    def call(self, user_id: str, endpoint: str, *, server_error: bool = False) -> int:
        """Serve one product API call for a user and return its HTTP status code.

        Quota is checked first (429 once `quota_used` reaches `quota_limit`); otherwise the
        call uses one unit of quota and succeeds (200), or fails with 500 when
        `server_error` is set. Every call counts in the request counters and recent
        usage; calls to deprecated endpoints also count as deprecated calls.
        """
        with self._lock:
            account = self._get(user_id)
            now = self.clock()
            if account.quota_used >= account.quota_limit:
                code = 429
            else:
                account.quota_used += 1
                code = 500 if server_error else 200
            series = (endpoint, str(code))
            account.requests[series] = account.requests.get(series, 0) + 1
            account.recent_requests.add(now)
            if code >= 500:
                account.recent_errors.add(now)
            if endpoint in DEPRECATED_ENDPOINTS:
                account.deprecated[endpoint] = account.deprecated.get(endpoint, 0) + 1
                account.recent_deprecated.add(now)
            account.last_call_at = now
            return code

    def set_payment_status(self, user_id: str, status: str) -> dict[str, Any]:
        """Record the outcome of the latest payment attempt ("ok" or "failed")."""
        if status not in PAYMENT_STATUSES:
            raise ValueError(f"payment status must be one of {', '.join(PAYMENT_STATUSES)}")
        with self._lock:
            account = self._get(user_id)
            account.payment_status = status
            return account.record(self.clock())

    def set_quota(
        self, user_id: str, *, used: int | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """Set quota usage and/or the quota limit of a user."""
        if used is not None and used < 0:
            raise ValueError("used must be >= 0")
        if limit is not None and limit <= 0:
            raise ValueError("limit must be > 0")
        with self._lock:
            account = self._get(user_id)
            if used is not None:
                account.quota_used = used
            if limit is not None:
                account.quota_limit = limit
            return account.record(self.clock())

    def metrics(self) -> list[UserMetrics]:
        """A consistent snapshot of every user's metric values, ordered by user id."""
        with self._lock:
            return [
                UserMetrics(
                    user_id=a.user_id,
                    plan=a.plan,
                    signup_at=a.signup_at,
                    quota_ratio=a.quota_ratio,
                    payment_failed=a.payment_status == "failed",
                    requests=dict(a.requests),
                    deprecated=dict(a.deprecated),
                )
                for a in (self._accounts[uid] for uid in sorted(self._accounts))
            ]

    def add_all(self, accounts: Iterable[Account]) -> None:
        for account in accounts:
            self.add(account)

    def _get(self, user_id: str) -> Account:
        try:
            return self._accounts[user_id]
        except KeyError:
            raise UnknownUser(user_id) from None


def account_from_json(data: Any, now: float) -> Account:
    """Build a new Account from an admin JSON body; raises ValueError when it is invalid.

    Required: user_id, email, name. Optional: plan (free), signup_at (now), quota_limit
    (the plan's), quota_used (0), payment_status (ok), card_last4 (null), timezone (null).
    """
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    for key in ("user_id", "email", "name"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ValueError(f"{key} is required and must be a non-empty string")
    plan = data.get("plan", "free")
    if plan not in PLAN_QUOTAS:
        raise ValueError(f"plan must be one of {', '.join(PLAN_QUOTAS)}")
    signup_at = now
    if data.get("signup_at") is not None:
        if not isinstance(data["signup_at"], str):
            raise ValueError("signup_at must be an ISO 8601 string")
        signup_at = parse_iso_utc(data["signup_at"])
    quota_limit = _int_field(data, "quota_limit", PLAN_QUOTAS[plan], minimum=1)
    quota_used = _int_field(data, "quota_used", 0, minimum=0)
    payment_status = data.get("payment_status", "ok")
    if payment_status not in PAYMENT_STATUSES:
        raise ValueError(f"payment_status must be one of {', '.join(PAYMENT_STATUSES)}")
    card_last4 = data.get("card_last4")
    if card_last4 is not None and not isinstance(card_last4, str):
        raise ValueError("card_last4 must be a string")
    timezone = data.get("timezone")
    if timezone is not None and not isinstance(timezone, str):
        raise ValueError("timezone must be a string (an IANA name like Europe/Berlin)")
    return Account(
        user_id=data["user_id"].strip(),
        email=data["email"].strip(),
        name=data["name"].strip(),
        plan=plan,
        signup_at=signup_at,
        quota_limit=quota_limit,
        quota_used=quota_used,
        payment_status=payment_status,
        timezone=timezone,
        card_last4=card_last4,
    )


def _int_field(data: dict[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}")
    return value
