"""Who asked not to be emailed: per user, for one rule, one category or everything ("*").

The links in emails are signed per user (itsdangerous), so they need no login and cannot be
pointed at someone else. Links sent since categories exist carry the email's category
(`{"u": user, "c": category}`); older ones, still in people's mailboxes, carry a rule name or
"*" (`{"u": user, "s": scope}`) and keep working.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache

from itsdangerous import BadData, URLSafeSerializer

ALL = "*"
_SALT = "nudge-unsubscribe"
# Payloads up to this many bytes are signed by `_dumps`; longer ones, which itsdangerous may
# compress, by itsdangerous itself.
_FAST_PAYLOAD_BYTES = 96


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


@lru_cache(maxsize=8)
def _signing_mac(secret_key: str) -> hmac.HMAC:
    """The HMAC that URLSafeSerializer(secret_key, salt=_SALT) signs with, its key derived
    once (itsdangerous' defaults: SHA-1 of salt + "signer" + key, then HMAC-SHA1)."""
    key = hashlib.sha1(_SALT.encode() + b"signer" + secret_key.encode()).digest()
    return hmac.new(key, digestmod=hashlib.sha1)


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _dumps(secret_key: str, data: dict[str, str]) -> str:
    """A token `_serializer(secret_key).loads` reads, at a third of the CPU of its `dumps`: a
    link is made for every email, and itsdangerous derives its key and tries zlib on every
    call. The same characters as `dumps`, except that a short payload is never compressed
    (which itsdangerous does when that saves two bytes: a long run of one character)."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    if len(payload) > _FAST_PAYLOAD_BYTES:
        return _serializer(secret_key).dumps(data)
    value = _b64(payload)
    mac = _signing_mac(secret_key).copy()
    mac.update(value)
    return (value + b"." + _b64(mac.digest())).decode()


def make_token(secret_key: str, user_id: str, scope: str) -> str:
    """An old-style token (a rule name or ALL): what emails carried before categories."""
    return _dumps(secret_key, {"u": user_id, "s": scope})


def make_category_token(secret_key: str, user_id: str, category: str) -> str:
    return _dumps(secret_key, {"u": user_id, "c": category})


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
