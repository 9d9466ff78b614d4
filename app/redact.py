"""One way to show a URL that may hold a password (database, SMTP) in logs, errors and output."""

from __future__ import annotations

import re

_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` with its password (user info, or a libpq `password=` parameter) shown as `***`.

    Works on malformed URLs too (a bad port, a missing host), because those are exactly the
    ones that end up in error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return f"{scheme}://{authority}" + _QUERY_PASSWORD.sub(r"\1***", tail)
