"""Who asked not to be emailed: per user, for one rule, one category or everything ("*").

The links in emails are signed per user (itsdangerous), so they need no login and cannot be
pointed at someone else. Links sent since categories exist carry the email's category
(`{"u": user, "c": category}`); older ones, still in people's mailboxes, carry a rule name or
"*" (`{"u": user, "s": scope}`) and keep working.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache

from itsdangerous import BadData, URLSafeSerializer

ALL = "*"
_SALT = "nudge-unsubscribe"


class InvalidToken(ValueError):
    """The unsubscribe token was forged, tampered with, or signed with another key."""


@dataclass(frozen=True)
class Link:
    """What a signed link is about: its user, and either an old-style scope (a rule name or
    ALL) or the category of the email it came from."""

    user_id: str
    scope: str | None = None
    category: str | None = None


@lru_cache(maxsize=8)
def _serializer(secret_key: str) -> URLSafeSerializer:
    """One per key: built once, not for every email."""
    return URLSafeSerializer(secret_key, salt=_SALT)


def make_token(secret_key: str, user_id: str, scope: str) -> str:
    """An old-style token (a rule name or ALL): what emails carried before categories."""
    return _serializer(secret_key).dumps({"u": user_id, "s": scope})


def make_category_token(secret_key: str, user_id: str, category: str) -> str:
    return _serializer(secret_key).dumps({"u": user_id, "c": category})


def read_link(secret_key: str, token: str) -> Link:
    try:
        data = _serializer(secret_key).loads(token)
    except BadData:
        raise InvalidToken("this unsubscribe link is not valid") from None
    if not isinstance(data, dict) or not isinstance(data.get("u"), str):
        raise InvalidToken("this unsubscribe link is not valid")
    if isinstance(data.get("c"), str):
        return Link(data["u"], category=data["c"])
    if isinstance(data.get("s"), str):
        return Link(data["u"], scope=data["s"])
    raise InvalidToken("this unsubscribe link is not valid")


def read_token(secret_key: str, token: str) -> tuple[str, str]:
    """(user, scope) of an old-style token."""
    link = read_link(secret_key, token)
    if link.scope is None:
        raise InvalidToken("this unsubscribe link is not valid")
    return link.user_id, link.scope


def unsubscribe_url(public_url: str, secret_key: str, user_id: str, scope: str) -> str:
    return f"{public_url.rstrip('/')}/unsubscribe/{make_token(secret_key, user_id, scope)}"


def preferences_url(public_url: str, secret_key: str, user_id: str, category: str) -> str:
    """The link of an email of `category`: GET opens the user's preference page, an RFC 8058
    one-click POST stops `category`."""
    return (f"{public_url.rstrip('/')}/unsubscribe/"
            f"{make_category_token(secret_key, user_id, category)}")


def is_suppressed(scopes: set[str], rule: str, categories: Collection[str] = (),
                  category: str | None = None) -> bool:
    """Whether an email of `rule` in `category` is stopped by the user's suppressions: by
    rule or "all" (`scopes`), or by category (`categories`)."""
    return ALL in scopes or rule in scopes or (category is not None and category in categories)


def suppressed_by(scopes: set[str], rule: str, categories: Collection[str],
                  category: str) -> str | None:
    """Which suppression stops an email of `rule` in `category`, in words; None if none."""
    if ALL in scopes:
        return "unsubscribed from all emails"
    if rule in scopes:
        return f"unsubscribed from rule {rule}"
    if category in categories:
        return f"unsubscribed from category {category!r}"
    return None
