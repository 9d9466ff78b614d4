"""Who asked not to be emailed: per user, for one rule or for everything (scope "*")."""

from __future__ import annotations

from typing import Any

import sqlite_utils
from itsdangerous import BadData, URLSafeSerializer

from app.clock import iso
from app.db import transaction

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


def suppression_scopes(db: sqlite_utils.Database, user_id: str) -> set[str]:
    rows = db.execute("SELECT scope FROM suppressions WHERE user_id = ?", (user_id,))
    return {row[0] for row in rows}


def add_suppression(db: sqlite_utils.Database, user_id: str, scope: str, source: str) -> bool:
    """True when this is new; unsubscribing twice is harmless."""
    with transaction(db):
        cursor = db.execute(
            "INSERT OR IGNORE INTO suppressions (user_id, scope, source, created_at) "
            "VALUES (?, ?, ?, ?)",
            (user_id, scope, source, iso()),
        )
    return cursor.rowcount == 1


def remove_suppression(db: sqlite_utils.Database, user_id: str, scope: str) -> bool:
    with transaction(db):
        cursor = db.execute(
            "DELETE FROM suppressions WHERE user_id = ? AND scope = ?", (user_id, scope)
        )
    return cursor.rowcount > 0


def list_suppressions(db: sqlite_utils.Database, user_id: str | None = None) -> list[dict[str, Any]]:
    if user_id is None:
        return list(db.query("SELECT * FROM suppressions ORDER BY created_at"))
    return list(
        db.query("SELECT * FROM suppressions WHERE user_id = ? ORDER BY created_at", [user_id])
    )
