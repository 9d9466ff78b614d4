"""Durations as ops teams write them in rule files and nudge.yml: `30s`, `5m`, `24h`, `7d`, `1h30m`."""

import math
import re

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")

FOREVER = "forever"


def parse_duration(text: object) -> float:
    """Seconds in a duration like `1h30m`; a bare number means seconds. ValueError otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like 30s, 5m, 24h or 7d, got {text!r}")
    if isinstance(text, int | float):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"a duration cannot be negative, got {text!r}")
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"expected a duration like 30s, 5m, 24h or 7d, got {text!r}")
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    if not value or _PART.sub("", value) != "":
        raise ValueError(f"expected a duration like 30s, 5m, 24h or 7d, got {text!r}")
    return sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(value))


def parse_cooldown(text: object) -> float | None:
    """Seconds between two emails of one rule to one user; None means `forever` (once ever)."""
    if isinstance(text, str) and text.strip().lower() == FOREVER:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        raise ValueError(
            f"expected a duration like 24h or 7d, or 'forever', got {text!r}"
        ) from None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return FOREVER
    seconds = int(seconds)
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)
