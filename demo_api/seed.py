"""The seeded demo users: each one sets off exactly one Nudge alert (u7 sets off none)."""

from __future__ import annotations

from dataclasses import dataclass

from demo_api.directory import MESSAGES_ENDPOINT, PLAN_QUOTAS, Account

DAY = 86_400.0
HOUR = 3_600.0
MINUTE = 60.0


@dataclass(frozen=True)
class SeedUser:
    """A seeded user and the usage history it starts with."""

    user_id: str
    name: str
    email: str
    plan: str
    signed_up_ago: float
    quota_used: int
    card_last4: str
    payment_status: str = "ok"
    last_call_ago: float | None = None
    lifetime_requests: tuple[tuple[str, str, int], ...] = ()  # (endpoint, code, count)
    requests_30d: int = 0
    errors_24h: int = 0
    deprecated_calls_7d: int = 0
    story: str = ""


SEED_USERS: tuple[SeedUser, ...] = (
    SeedUser(
        "u1", "Ada Lovelace", "ada@example.com", "free", 2 * DAY, 0, "1815",
        story="signed up 2 days ago, never called the API -> NoFirstApiCall",
    ),
    SeedUser(
        "u2", "Grace Hopper", "grace@example.com", "free", 90 * DAY, 930, "1906",
        last_call_ago=5 * MINUTE,
        lifetime_requests=((MESSAGES_ENDPOINT, "200", 2_710),),
        requests_30d=930,
        story="93% of the free quota used -> QuotaNearlyExhausted",
    ),
    SeedUser(
        "u3", "Linus Torvalds", "linus@example.com", "pro", 90 * DAY, 21_000, "1969",
        last_call_ago=1 * MINUTE,
        lifetime_requests=((MESSAGES_ENDPOINT, "200", 48_000), (MESSAGES_ENDPOINT, "500", 9_000)),
        requests_30d=21_000,
        errors_24h=640,
        story="~30% of calls return 500 -> IntegrationErrorRateHigh",
    ),
    SeedUser(
        "u4", "Margaret Hamilton", "margaret@example.com", "pro", 90 * DAY, 15_000, "1936",
        last_call_ago=2 * MINUTE,
        lifetime_requests=((MESSAGES_ENDPOINT, "200", 30_000), ("/v1/send", "200", 12_000)),
        requests_30d=15_000,
        deprecated_calls_7d=1_400,
        story="keeps calling the deprecated POST /v1/send -> DeprecatedEndpointInUse",
    ),
    SeedUser(
        "u5", "Alan Turing", "alan@example.com", "team", 90 * DAY, 250_000, "4242",
        payment_status="failed",
        last_call_ago=3 * MINUTE,
        lifetime_requests=((MESSAGES_ENDPOINT, "200", 600_000),),
        requests_30d=250_000,
        story="latest payment failed (card ending 4242) -> PaymentFailed",
    ),
    SeedUser(
        "u6", "Barbara Liskov", "barbara@example.com", "free", 1 * HOUR, 3, "1939",
        last_call_ago=10 * MINUTE,
        lifetime_requests=((MESSAGES_ENDPOINT, "200", 3),),
        requests_30d=3,
        story="signed up 1 hour ago, first successful calls -> FirstSuccessfulCall",
    ),
    SeedUser(
        "u7", "Ken Thompson", "ken@example.com", "pro", 90 * DAY, 20_000, "1943",
        last_call_ago=1 * MINUTE,
        lifetime_requests=((MESSAGES_ENDPOINT, "200", 55_000),),
        requests_30d=20_000,
        story="healthy steady usage -> nothing fires (control user)",
    ),
)


def seeded_accounts(now: float) -> list[Account]:
    """Fresh accounts for the seeded users, with their history placed relative to `now`."""
    return [_account(seed, now) for seed in SEED_USERS]


def _account(seed: SeedUser, now: float) -> Account:
    account = Account(
        user_id=seed.user_id,
        email=seed.email,
        name=seed.name,
        plan=seed.plan,
        signup_at=float(int(now - seed.signed_up_ago)),
        quota_limit=PLAN_QUOTAS[seed.plan],
        quota_used=seed.quota_used,
        payment_status=seed.payment_status,
        card_last4=seed.card_last4,
        last_call_at=None if seed.last_call_ago is None else now - seed.last_call_ago,
    )
    for endpoint, code, count in seed.lifetime_requests:
        account.requests[(endpoint, code)] = count
        if endpoint in account.deprecated:
            account.deprecated[endpoint] += count
    # Recent history lands in the previous clock hour: inside every window, and it ages
    # out of the 24 h / 7 d / 30 d windows as a long-running demo's clock moves on.
    recent = now - HOUR
    account.recent_requests.add(recent, seed.requests_30d)
    account.recent_errors.add(recent, seed.errors_24h)
    account.recent_deprecated.add(recent, seed.deprecated_calls_7d)
    return account
