"""Alertmanager's webhook payload (version "4"), parsed and checked into plain data.

Unknown fields are ignored (newer Alertmanagers add e.g. `notification_reason`); anything
that is not a v4 payload raises PayloadError with a message naming the offending field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

import msgspec

ZERO_TIME = "0001-01-01T00:00:00Z"
_FRACTION = re.compile(r"\.(\d+)")
# What Alertmanager sends (Go's RFC 3339 in UTC): canonical_time's fast path.
_UTC_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?Z"
)
# One encoder for every alert (json.dumps with options builds a new one per call).
_ALERT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)


class PayloadError(ValueError):
    """The body is not an Alertmanager v4 webhook payload."""


@dataclass(frozen=True)
class Alert:
    status: str  # "firing" | "resolved"
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str  # canonical UTC timestamp, see canonical_time
    ends_at: str | None
    generator_url: str
    fingerprint: str

    def to_json(self) -> str:
        return _ALERT_JSON.encode(
            {
                "status": self.status,
                "labels": self.labels,
                "annotations": self.annotations,
                "startsAt": self.starts_at,
                "endsAt": self.ends_at,
                "generatorURL": self.generator_url,
                "fingerprint": self.fingerprint,
            }
        )


@dataclass(frozen=True)
class Notification:
    receiver: str
    status: str
    group_key: str
    group_labels: dict[str, str]
    external_url: str
    truncated_alerts: int
    alerts: tuple[Alert, ...]


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise PayloadError("body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise PayloadError("malformed JSON: nested too deeply") from None


@dataclass(frozen=True)
class NotificationHead:
    """What the webhook needs of a valid notification to journal it."""

    receiver: str
    status: str
    group_key: str
    alert_count: int
    truncated_alerts: int


class _AlertShape(msgspec.Struct, gc=False):
    """The types `_plainly_valid` accepts in an alert (unknown fields ignored)."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    startsAt: str  # noqa: N815 - Alertmanager's names, as msgspec matches them
    annotations: dict[str, str] | None = None
    endsAt: str | None = None  # noqa: N815
    generatorURL: str | None = None  # noqa: N815
    fingerprint: str | None = None


class _NotificationShape(msgspec.Struct, gc=False):
    """The types `_plainly_valid` accepts in a notification (unknown fields ignored)."""

    version: Literal["4"]
    alerts: list[_AlertShape]
    receiver: str | None = None
    status: str | None = None
    groupKey: str | None = None  # noqa: N815
    externalURL: str | None = None  # noqa: N815
    groupLabels: dict[str, str] | None = None  # noqa: N815
    truncatedAlerts: int = 0  # noqa: N815


_SHAPE = msgspec.json.Decoder(_NotificationShape)


def check_body(body: bytes) -> NotificationHead:
    """Check that a body is a whole, valid v4 notification (PayloadError if not).

    The webhook's check. A plain notification is decoded and type-checked in one pass by
    msgspec's C decoder, far cheaper than `json.loads` followed by `check_notification`;
    anything it does not accept as plain goes through `json.loads` and `check_notification`,
    which have the last word and name the problem. Like `json.loads`, msgspec keeps the last
    of duplicate keys, so both read the same notification."""
    if not _risky_escape(body) and (b"\xed" not in body or not _RAW_SURROGATE.search(body)):
        try:
            shape = _SHAPE.decode(body)
        except msgspec.MsgspecError:
            pass  # not plain: the full check names the problem, or accepts it after all
        else:
            alerts = shape.alerts
            if (shape.truncatedAlerts >= 0
                    and all(map(_plain_utc_time, {alert.startsAt for alert in alerts}))
                    and all(map(_plain_end_time, {alert.endsAt for alert in alerts}))):
                return NotificationHead(shape.receiver or "", shape.status or "",
                                        shape.groupKey or "", len(alerts),
                                        shape.truncatedAlerts)
    try:
        # Decoded before parsing: json.loads would guess UTF-16/32 for bytes, and let raw
        # surrogates through.
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("body is not UTF-8 text") from None
    return check_notification(parse_json(text), body)


def _plain_end_time(ends_at: str | None) -> bool:
    return not ends_at or ends_at.startswith("0001-") or _plain_utc_time(ends_at)


def check_notification(data: Any, body: bytes) -> NotificationHead:
    """Check that a parsed body is a whole, valid v4 notification (PayloadError if not).

    The webhook's fast path: the same checks as `parse_notification`, without building an
    Alert per alert. Anything unusual (an escaped character that could be a lone surrogate
    or a NUL, a timestamp with an offset, any problem at all) goes through
    `parse_notification`, which names the problem."""
    if (type(data) is dict and data.get("version") == "4"
            and not _risky_escape(body)
            and (b"\xed" not in body or not _RAW_SURROGATE.search(body))
            and _plainly_valid(data)):
        truncated = data.get("truncatedAlerts", 0)
        return NotificationHead(data.get("receiver") or "", data.get("status") or "",
                                data.get("groupKey") or "", len(data["alerts"]), truncated)
    notification = parse_notification(data)
    return NotificationHead(notification.receiver, notification.status, notification.group_key,
                            len(notification.alerts), notification.truncated_alerts)


# JSON escapes that may decode to a lone surrogate or a NUL (valid pairs match too: rare).
_RISKY_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F][0-9a-fA-F]{2}|0000)")


def _risky_escape(body: bytes) -> bool:
    """Whether the body has an escape that may decode to a lone surrogate or a NUL.

    Backslashes are rare in a notification: finding the first one (a single byte, memchr)
    is far cheaper than searching the whole body for the two bytes \\u."""
    at = body.find(b"\\")
    while at != -1:
        if body[at + 1:at + 2] == b"u":
            return _RISKY_ESCAPE.search(body, at) is not None
        at = body.find(b"\\", at + 2)
    return False


# json.loads decodes bytes with "surrogatepass": a surrogate written raw (as UTF-8 would
# encode it, were it allowed) gets through too.
_RAW_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")


def _plainly_valid(data: dict) -> bool:
    alerts = data.get("alerts")
    truncated = data.get("truncatedAlerts", 0)
    if type(alerts) is not list or type(truncated) is not int or truncated < 0:
        return False
    for key in ("receiver", "status", "groupKey", "externalURL"):
        value = data.get(key)
        if value is not None and type(value) is not str:
            return False
    group_labels = data.get("groupLabels")
    if group_labels is not None and not _all_strings(group_labels):
        return False
    for alert in alerts:
        if type(alert) is not dict:
            return False
        status = alert.get("status")
        if status != "firing" and status != "resolved":  # noqa: PLR1714 - may be unhashable
            return False
        if not _all_strings(alert.get("labels")):
            return False
        annotations = alert.get("annotations")
        if annotations is not None and not _all_strings(annotations):
            return False
        starts_at = alert.get("startsAt")
        if type(starts_at) is not str or not _plain_utc_time(starts_at):
            return False
        ends_at = alert.get("endsAt")
        if ends_at is not None and (type(ends_at) is not str or not _plain_end_time(ends_at)):
            return False
        for key in ("generatorURL", "fingerprint"):
            value = alert.get(key)
            if value is not None and type(value) is not str:
                return False
    return True


def _all_strings(mapping: Any) -> bool:
    if type(mapping) is not dict:
        return False
    for value in mapping.values():
        if type(value) is not str:
            return False
    return True


@lru_cache(maxsize=4096)
def _plain_utc_time(text: str) -> bool:
    """A UTC timestamp as Alertmanager writes it, naming a real instant."""
    match = _UTC_TIME.fullmatch(text)
    if not match or match.group(1) < "1000":
        return False
    try:
        datetime(*(int(field) for field in match.groups()[:6]))
    except ValueError:
        return False
    return True


def parse_notification(data: Any) -> Notification:
    if not isinstance(data, dict):
        raise PayloadError("expected a JSON object (an Alertmanager webhook payload)")
    version = data.get("version")
    if version != "4":
        raise PayloadError(
            f'unsupported payload version {_prefix(version)}: expected "4" (Alertmanager '
            f'webhook_configs)'
        )
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("'alerts' must be a list")
    truncated = data.get("truncatedAlerts", 0)
    if isinstance(truncated, bool) or not isinstance(truncated, int) or truncated < 0:
        raise PayloadError("'truncatedAlerts' must be a whole number >= 0")
    return Notification(
        receiver=_optional_str(data, "receiver"),
        status=_optional_str(data, "status"),
        group_key=_optional_str(data, "groupKey"),
        group_labels=_string_map(data.get("groupLabels"), "groupLabels"),
        external_url=_optional_str(data, "externalURL"),
        truncated_alerts=truncated,
        alerts=tuple(_parse_alert(alert, index) for index, alert in enumerate(alerts)),
    )


def parse_checked_notification(data: dict) -> Notification:
    """A notification the webhook already checked (`check_notification`): the same result as
    `parse_notification`, without checking every field again."""
    return Notification(
        receiver=data.get("receiver") or "",
        status=data.get("status") or "",
        group_key=data.get("groupKey") or "",
        group_labels=data.get("groupLabels") or {},
        external_url=data.get("externalURL") or "",
        truncated_alerts=data.get("truncatedAlerts", 0),
        alerts=tuple(
            Alert(
                status=alert["status"],
                labels=alert["labels"],
                annotations=alert.get("annotations") or {},
                starts_at=_canonical_cached(alert["startsAt"]),
                ends_at=None if not (ends_at := alert.get("endsAt")) or ends_at.startswith("0001-")
                else _canonical_cached(ends_at),
                generator_url=alert.get("generatorURL") or "",
                fingerprint=alert.get("fingerprint") or "",
            )
            for alert in data["alerts"]
        ),
    )


@lru_cache(maxsize=4096)
def _canonical_cached(text: str) -> str:
    return canonical_time(text)


def _parse_alert(data: Any, index: int) -> Alert:
    where = f"alerts[{index}]"
    if not isinstance(data, dict):
        raise PayloadError(f"{where} must be an object")
    status = data.get("status")
    if status not in ("firing", "resolved"):
        raise PayloadError(f"{where}.status must be 'firing' or 'resolved', got {_prefix(status)}")
    if not isinstance(data.get("labels"), dict):
        raise PayloadError(f"{where}.labels must be an object of label names to strings")
    starts_at = data.get("startsAt")
    if not isinstance(starts_at, str):
        raise PayloadError(f"{where}.startsAt must be an RFC 3339 timestamp")
    ends_at = data.get("endsAt")
    if ends_at is not None and not isinstance(ends_at, str):
        raise PayloadError(f"{where}.endsAt must be an RFC 3339 timestamp")
    return Alert(
        status=status,
        labels=_string_map(data["labels"], f"{where}.labels"),
        annotations=_string_map(data.get("annotations"), f"{where}.annotations"),
        starts_at=canonical_time(starts_at, f"{where}.startsAt"),
        ends_at=None
        if not ends_at or ends_at.startswith("0001-")
        else canonical_time(ends_at, f"{where}.endsAt"),
        generator_url=_optional_str(data, "generatorURL"),
        fingerprint=_optional_str(data, "fingerprint"),
    )


def canonical_time(text: str, where: str = "timestamp") -> str:
    """One spelling per instant, so `.529Z` and `.529000Z` dedupe as the same episode."""
    match = _UTC_TIME.fullmatch(text)
    if match and match.group(1) >= "1000":
        # Already UTC: check the fields are a real instant, then respell without the
        # parse-convert-format round trip (the same result, a third of the time).
        year, month, day, hour, minute, second, fraction = match.groups()
        try:
            datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
        except ValueError:
            raise PayloadError(f"{where} is not an RFC 3339 timestamp: {text[:64]!r}") from None
        micros = (fraction or "")[:6].ljust(6, "0")
        return f"{year}-{month}-{day}T{hour}:{minute}:{second}.{micros}Z"
    return parse_time(text, where).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str, where: str = "timestamp") -> datetime:
    # Go may send nanoseconds; Python takes at most microseconds.
    trimmed = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    try:
        value = datetime.fromisoformat(trimmed.replace("Z", "+00:00"))
    except ValueError:
        raise PayloadError(f"{where} is not an RFC 3339 timestamp: {text[:64]!r}") from None
    if value.tzinfo is None:
        raise PayloadError(f"{where} has no time zone: {text[:64]!r}")
    return value.astimezone(UTC)


def _prefix(value: Any, length: int = 40) -> str:
    """A bad value as an error message shows it: its repr, cut to a short prefix (an error
    must never echo back a megabyte a sender chose)."""
    shown = repr(value)
    return shown if len(shown) <= length else shown[:length] + "..."


def _optional_str(data: dict, key: str) -> str:
    value = data.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PayloadError(f"'{key}' must be a string")
    _require_unicode(value, f"'{key}'")
    return value


def _require_unicode(text: str, where: str) -> None:
    # JSON can escape a lone surrogate ("\ud800"), which no UTF-8 text (or SQLite) can hold,
    # and a NUL ("\u0000"), which PostgreSQL's text cannot hold: neither is a real label.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(f"{where} contains invalid Unicode (a lone surrogate)") from None
    if "\x00" in text:
        raise PayloadError(f"{where} contains a NUL character")


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise PayloadError(f"{where} must be an object of names to strings")
    try:  # one check for the whole map; only a failure looks at the items one by one
        names, texts = "".join(value), "".join(value.values())
        names.encode("utf-8")
        texts.encode("utf-8")
        if "\x00" in names or "\x00" in texts:
            raise UnicodeEncodeError("utf-8", "", 0, 1, "NUL")
    except UnicodeEncodeError:
        for name, text in value.items():
            _require_unicode(name, where)
            _require_unicode(text, f"{where}.{name}" if name.isprintable() else where)
    return value
