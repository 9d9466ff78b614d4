"""Warnings about nudge.yml keys that are each valid but do not fit together: the setup works,
probably not as meant. `nudge check` prints them; `nudge serve` logs them once at start-up.
Each is one line `FILE:LINE: warning: ...` at the key to change (app/config_locations.py).
"""

from __future__ import annotations

from app.config import Config
from app.durations import format_duration

# A quiet window that leaves less than this a day for sending is almost certainly a mistake.
MIN_SENDING_TIME = 3600.0


def _is_set(config: Config, key: str) -> bool:
    return key in config.locations.lines or key in config.locations.env


def _warning(config: Config, keys: tuple[str, ...], message: str) -> str:
    """`message` about `keys`, located at the first of them written in the file (or env)."""
    key = next((key for key in keys if _is_set(config, key)), keys[0])
    return f"{config.locations.where(key)}: warning: {message}"


def config_warnings(config: Config) -> list[str]:
    warnings: list[str] = []
    capped = config.cap_per_user > 0
    holds = capped or config.quiet_window is not None
    period, max_wait = format_duration(config.cap_period), format_duration(config.max_wait)
    if capped and config.max_wait < config.cap_period:
        warnings.append(_warning(
            config, ("limits.max_wait", "limits.period"),
            f"limits.max_wait ({max_wait}) is shorter than limits.period ({period}): an email "
            f"held by the cap may be dropped as stale before the window has room for it"))
    if config.retention is not None and holds:
        retention = format_duration(config.retention)
        if config.retention < config.max_wait:
            warnings.append(_warning(
                config, ("retention", "limits.max_wait"),
                f"retention ({retention}) is shorter than limits.max_wait ({max_wait}): the "
                f"hold log of an email still waiting could be pruned before it is sent or "
                f"dropped"))
        if capped and config.retention < config.cap_period:
            warnings.append(_warning(
                config, ("retention", "limits.period"),
                f"retention ({retention}) is shorter than limits.period ({period}): the sends "
                f"the cap counts could be pruned while still in the window"))
    window = config.quiet_window
    if window is not None:
        quiet_minutes = (window.end - window.start) % (24 * 60)
        sending = (24 * 60 - quiet_minutes) * 60
        if sending < MIN_SENDING_TIME:
            warnings.append(_warning(
                config, ("quiet_hours.window",),
                f"quiet_hours.window leaves only {format_duration(sending)} a day for "
                f"sending: non-essential emails queue up for that gap (or are dropped after "
                f"limits.max_wait, {max_wait})"))
    else:
        for key in ("quiet_hours.timezone_field", "quiet_hours.default_timezone"):
            if _is_set(config, key):
                warnings.append(_warning(
                    config, (key,),
                    f"{key} is set but quiet_hours.window is empty: no quiet hours apply"))
    if not capped and _is_set(config, "limits.period"):
        warnings.append(_warning(
            config, ("limits.period",),
            "limits.period is set but limits.per_user is 0 (no cap): it has no effect"))
    return warnings
