"""Who asked not to be emailed: per user, for one rule or for everything (scope "*")."""

from __future__ import annotations

from itsdangerous import BadData, URLSafeSerializer

ALL = "*"
_SALT = "nudge-unsubscribe"


class InvalidToken(ValueError):
    """The unsubscribe token was forged, tampered with, or signed with another key."""


def make_token(secret_key: str, user_id: str, scope: str) -> str:
    return URLSafeSerializer(secret_key, salt=_SALT).dumps({"u": user_id, "s": scope})


def read_token(secret_key: str, token: str) -> tuple[str, str]:
    try:
        data = URLSafeSerializer(secret_key, salt=_SALT).loads(token)
    except BadData:
        raise InvalidToken("this unsubscribe link is not valid") from None
    if not isinstance(data, dict) or not isinstance(data.get("u"), str) or not isinstance(
        data.get("s"), str
    ):
        raise InvalidToken("this unsubscribe link is not valid")
    return data["u"], data["s"]


def unsubscribe_url(public_url: str, secret_key: str, user_id: str, scope: str) -> str:
    return f"{public_url.rstrip('/')}/unsubscribe/{make_token(secret_key, user_id, scope)}"


def is_suppressed(scopes: set[str], rule: str) -> bool:
    return ALL in scopes or rule in scopes
