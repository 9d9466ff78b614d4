"""Whether a claimed email goes out now: frequency cap, priorities, quiet hours, cancellation.

Pure functions over plain data, like app/policy.py: the time, the user's recent sends, the
user's other waiting emails and the settings go in; a verdict (send, hold until when, drop,
cancel) and the sentence that explains it come out. The delivery step (app/holding.py) asks
the store for the facts under a per-user lock and records the verdict in the same
transaction, so several senders, processes or replicas never let more through than the cap.

- Frequency cap: at most `per_user` non-essential emails to one user in any rolling `period`.
  The emails that count are the ones sent (a send slot is taken just before the SMTP
  conversation and given back if the send fails).
- Priorities: when several emails of one user wait, the highest `nudge_priority` goes first
  (ties: the oldest), so an email waits while the ones ranked before it fill the room left.
- Quiet hours: a window of the user's local time (their record's time zone, DST-correct via
  zoneinfo); an email due inside it waits until the first instant the local clock leaves the
  window, plus a spread of up to a minute so a whole time zone's emails do not leave at once.
- Essential rules (`nudge_essential: "true"`) skip both and do not count toward the cap.
- An email held longer than `max_wait` in total is dropped as stale.
- A firing email whose alert resolved while it waited is cancelled, unless the rule says
  `nudge_cancel_on_resolve: "false"`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.durations import format_duration

PRIORITY_ANNOTATION = "nudge_priority"
ESSENTIAL_ANNOTATION = "nudge_essential"
CANCEL_ON_RESOLVE_ANNOTATION = "nudge_cancel_on_resolve"

# Verdict actions.
SEND, HOLD, DROP, CANCEL = "send", "hold", "drop", "cancel"

# Reasons are metric label values: a small fixed set.
QUIET_HOURS = "quiet_hours"
FREQUENCY_CAP = "frequency_cap"
PRIORITY = "priority"  # room under the cap, but emails ranked first take it
MAX_WAIT = "max_wait"
ALERT_RESOLVED = "alert_resolved"
ESSENTIAL = "essential"
ALLOWED = "allowed"
REASONS = (QUIET_HOURS, FREQUENCY_CAP, PRIORITY, MAX_WAIT, ALERT_RESOLVED, ESSENTIAL, ALLOWED)

# While emails ranked first are about to take the room, look again this soon.
PRIORITY_RECHECK = 5.0
# Quiet hours end for a whole time zone at once: release over this many seconds.
RELEASE_SPREAD = 60.0

_WINDOW = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*-\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuietWindow:
    """Local time of day, as minutes after midnight; `start > end` wraps past midnight."""

    start: int
    end: int

    def contains(self, minute_of_day: float) -> bool:
        if self.start < self.end:
            return self.start <= minute_of_day < self.end
        return minute_of_day >= self.start or minute_of_day < self.end

    @property
    def end_text(self) -> str:
        return f"{self.end // 60:02d}:{self.end % 60:02d}"

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end_text}"


def parse_window(text: object) -> QuietWindow | None:
    """`"21:00-08:00"` (24-hour local times); empty or None means no quiet hours."""
    if text in (None, ""):
        return None
    match = _WINDOW.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"expected a window like 21:00-08:00, got {text!r}")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    window = QuietWindow(h1 * 60 + m1, h2 * 60 + m2)
    if window.start == window.end:
        raise ValueError(f"start and end are the same time, got {text!r}")
    return window


def parse_zone(name: object) -> ZoneInfo:
    """An IANA time zone by name (`Asia/Tokyo`); ValueError for anything else."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"expected an IANA time zone name like Europe/Berlin, got {name!r}")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name like "
                         f"Europe/Berlin)") from None


@dataclass(frozen=True)
class HoldSettings:
    per_user: int = 0  # 0: no cap
    period: float = 86400.0
    max_wait: float = 3 * 86400.0
    quiet: QuietWindow | None = None
    timezone_field: str = "timezone"
    default_timezone: str = "UTC"

    @property
    def active(self) -> bool:
        """Whether emails can be held at all (else the send step skips the check)."""
        return self.per_user > 0 or self.quiet is not None

    @classmethod
    def from_config(cls, config) -> HoldSettings:
        return cls(config.cap_per_user, config.cap_period, config.max_wait,
                   config.quiet_window, config.timezone_field, config.default_timezone)


@dataclass(frozen=True)
class RuleHolds:
    """What one rule's annotations say about holding its emails."""

    priority: int = 0
    essential: bool = False
    cancel_on_resolve: bool = True


def _flag(annotations: Mapping[str, str], name: str, default: bool) -> bool:
    if name not in annotations:
        return default
    value = str(annotations[name]).strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"annotation {name}: expected 'true' or 'false', got "
                         f"{annotations[name]!r}")
    return value == "true"


def rule_holds(annotations: Mapping[str, str]) -> RuleHolds:
    """The rule's hold settings; ValueError naming the bad annotation."""
    priority = 0
    if PRIORITY_ANNOTATION in annotations:
        text = str(annotations[PRIORITY_ANNOTATION]).strip()
        if not re.fullmatch(r"[+-]?\d{1,9}", text):
            raise ValueError(f"annotation {PRIORITY_ANNOTATION}: expected a whole number like "
                             f"10, got {annotations[PRIORITY_ANNOTATION]!r}")
        priority = int(text)
    return RuleHolds(priority, _flag(annotations, ESSENTIAL_ANNOTATION, False),
                     _flag(annotations, CANCEL_ON_RESOLVE_ANNOTATION, True))


def lenient_rule_holds(annotations: Mapping[str, str]) -> RuleHolds:
    """At send time a bad annotation (which `nudge check` reports) falls back to the
    default of that one annotation rather than stopping the email."""
    try:
        return rule_holds(annotations)
    except ValueError:
        pass
    values = {}
    for name in (PRIORITY_ANNOTATION, ESSENTIAL_ANNOTATION, CANCEL_ON_RESOLVE_ANNOTATION):
        try:
            values[name] = rule_holds({name: annotations[name]} if name in annotations else {})
        except ValueError:
            values[name] = RuleHolds()
    return RuleHolds(values[PRIORITY_ANNOTATION].priority,
                     values[ESSENTIAL_ANNOTATION].essential,
                     values[CANCEL_ON_RESOLVE_ANNOTATION].cancel_on_resolve)


def user_zone(record: Mapping | None, field: str, default: str) -> tuple[ZoneInfo, str]:
    """The user's time zone from their directory/static-map record, else the default (also
    for a name that is not a time zone: the mistake is the record's, the email still goes)."""
    value = (record or {}).get(field)
    if isinstance(value, str) and value.strip():
        try:
            return parse_zone(value), value.strip()
        except ValueError:
            pass
    return parse_zone(default), default


# --- quiet hours -------------------------------------------------------------------------


def _local(epoch: float, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(epoch, UTC).astimezone(zone)


def _minute_of_day(moment: datetime) -> float:
    return moment.hour * 60 + moment.minute + moment.second / 60 + moment.microsecond / 6e7


def in_quiet_hours(epoch: float, zone: ZoneInfo, window: QuietWindow) -> bool:
    return window.contains(_minute_of_day(_local(epoch, zone)))


def _first_instant_showing(naive: datetime, zone: ZoneInfo, after: float) -> float:
    """The first instant after `after` at which the local clock reads `naive` or later.

    Usually `naive` itself (its first occurrence when the clocks fall back); when the clocks
    spring forward over it, the moment of the jump."""
    early = naive.replace(tzinfo=zone, fold=0)
    if early.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive:
        if early.timestamp() > after:
            return early.timestamp()
        # Clocks set back: `after` is past the first reading of `naive`; take the second.
        return naive.replace(tzinfo=zone, fold=1).timestamp()
    # In a gap: between the two readings of `naive` the local clock jumps past it.
    low, high = sorted((early.timestamp(), naive.replace(tzinfo=zone, fold=1).timestamp()))
    low = max(low, after)
    while high - low > 0.5:
        middle = (low + high) / 2
        if _local(middle, zone).replace(tzinfo=None) >= naive:
            high = middle
        else:
            low = middle
    return high


def _offset_change(start: float, end: float, zone: ZoneInfo) -> float:
    """The instant (to half a second) in (start, end] where the zone's UTC offset changes;
    real zones change at most once within a day."""
    offset = _local(start, zone).utcoffset()
    low, high = start, end
    while high - low > 0.5:
        middle = (low + high) / 2
        if _local(middle, zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return high


def quiet_hours_end(epoch: float, zone: ZoneInfo, window: QuietWindow) -> float | None:
    """None when `epoch` is outside the window in `zone`; else when the window ends: the
    first instant after `epoch` at which the local clock shows a time outside it."""
    if not in_quiet_hours(epoch, zone, window):
        return None
    moment = epoch
    for _ in range(3):
        end = _next_window_end(moment, zone, window)
        if not in_quiet_hours(end, zone, window):
            return end
        # The clocks jumped over the whole time outside the window that day: go on to the
        # next day's end.
        moment = end
    return end


def _next_window_end(epoch: float, zone: ZoneInfo, window: QuietWindow) -> float:
    local = _local(epoch, zone)
    minute = _minute_of_day(local)
    day = local.date()
    if window.start > window.end and minute >= window.start:
        day += timedelta(days=1)  # late evening: the window ends tomorrow morning
    end = datetime.combine(day, time(window.end // 60, window.end % 60))
    ends = _first_instant_showing(end, zone, epoch)
    # Clocks set back to before the window's start leave it early (for a while).
    if _local(ends, zone).utcoffset() != local.utcoffset():
        change = _offset_change(epoch, ends, zone)
        if change < ends and not in_quiet_hours(change, zone, window):
            return change
    return ends


# --- the verdict -------------------------------------------------------------------------


@dataclass(frozen=True)
class WaitingEmail:
    """Another email of the same user that has not gone out yet (queued, held or sending)."""

    id: int
    rule: str
    annotations: Mapping[str, str]
    created_at: float
    due_at: float  # when it is next due (held or retrying: later than now)

    @property
    def holds(self) -> RuleHolds:
        return lenient_rule_holds(self.annotations)


@dataclass(frozen=True)
class SendFacts:
    """What the store knows about the user and this email, read under the user's lock."""

    recent_sends: Sequence[float]  # when each email counted toward the cap was sent
    waiting: Sequence[WaitingEmail]  # the user's other waiting emails
    resolved: bool  # the alert of this (firing) email resolved since it was queued
    waited: float  # seconds this email has been held back so far
    previous_hold: str | None = None  # reason of the hold it comes back from, if any


@dataclass(frozen=True)
class Email:
    id: int
    rule: str
    kind: str  # firing | resolved
    annotations: Mapping[str, str]
    created_at: float


@dataclass(frozen=True)
class HoldVerdict:
    action: str  # SEND | HOLD | DROP | CANCEL
    reason: str  # one of REASONS
    detail: str  # the sentence `nudge deliveries` shows
    until: float | None = None  # HOLD: when to look again
    counts: bool = False  # SEND: takes a slot under the cap


def ranks_before(a: tuple[int, float, int], b: tuple[int, float, int]) -> bool:
    """(priority, created_at, id): higher priority first, then the older, then lower id."""
    return (-a[0], a[1], a[2]) < (-b[0], b[1], b[2])


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _clock(epoch: float, zone: ZoneInfo) -> str:
    return _local(epoch, zone).strftime("%H:%M")


def judge_send(now: float, email: Email, facts: SendFacts, settings: HoldSettings, *,
               zone: ZoneInfo, zone_name: str, spread: float) -> HoldVerdict:
    """Send now, hold (until when), drop or cancel this email. `spread` in [0, 1) places it
    within the minute after quiet hours (callers derive it from the email's id)."""
    holds = lenient_rule_holds(email.annotations)
    if email.kind == "firing" and facts.resolved and holds.cancel_on_resolve:
        return HoldVerdict(CANCEL, ALERT_RESOLVED, "cancelled: alert resolved before sending")
    if holds.essential:
        return HoldVerdict(SEND, ESSENTIAL, "sent: essential (nudge_essential), no cap or "
                           "quiet hours")
    verdict = _hold_for_quiet_hours(now, settings, zone, zone_name, spread)
    if verdict is None:
        verdict = _hold_for_cap(now, email, holds, facts, settings)
    if verdict is None:
        detail = (f"released after waiting {format_duration(facts.waited)}"
                  if facts.waited >= 1 else "allowed")
        return HoldVerdict(SEND, facts.previous_hold or ALLOWED, detail,
                           counts=settings.per_user > 0)
    # Never hold past max_wait: look again then, and drop it if it still has to wait.
    if facts.waited >= settings.max_wait:
        return HoldVerdict(DROP, MAX_WAIT, f"dropped: waited longer than limits.max_wait "
                           f"({format_duration(settings.max_wait)}); last {verdict.detail}")
    last_chance = now + settings.max_wait - facts.waited
    if verdict.until is not None and verdict.until > last_chance:
        verdict = HoldVerdict(HOLD, verdict.reason, verdict.detail, last_chance)
    return verdict


def _hold_for_quiet_hours(now: float, settings: HoldSettings, zone: ZoneInfo, zone_name: str,
                          spread: float) -> HoldVerdict | None:
    if settings.quiet is None:
        return None
    end = quiet_hours_end(now, zone, settings.quiet)
    if end is None:
        return None
    return HoldVerdict(HOLD, QUIET_HOURS,
                       f"waiting: quiet hours until {_clock(end, zone)} {zone_name}",
                       end + min(max(spread, 0.0), 0.999) * RELEASE_SPREAD)


def _hold_for_cap(now: float, email: Email, holds: RuleHolds, facts: SendFacts,
                  settings: HoldSettings) -> HoldVerdict | None:
    if settings.per_user <= 0:
        return None
    recent = sorted(t for t in facts.recent_sends if now - settings.period < t <= now)
    mine = (holds.priority, email.created_at, email.id)
    ahead = sorted(
        (w for w in facts.waiting
         if w.id != email.id and not w.holds.essential
         and ranks_before((w.holds.priority, w.created_at, w.id), mine)),
        key=lambda w: (-w.holds.priority, w.created_at, w.id))
    if len(recent) + len(ahead) < settings.per_user:
        return None
    sent = (f"waiting: {_count(len(recent), 'email')} sent in the last "
            f"{format_duration(settings.period)} (limit {settings.per_user})")
    if ahead:
        first = ahead[0]
        sent += f"; {first.rule} (priority {first.holds.priority}) goes first"
    if len(recent) >= settings.per_user:
        # Room for one more once enough of the recent sends have left the rolling window.
        room_at = recent[len(recent) - settings.per_user] + settings.period
        return HoldVerdict(HOLD, FREQUENCY_CAP, sent, max(room_at, now + 1.0))
    # There is room, but the emails ranked first take it: look again once they are due.
    recheck = max(now + PRIORITY_RECHECK, max(w.due_at for w in ahead) + 1.0)
    return HoldVerdict(HOLD, PRIORITY, sent, recheck)


def release_spread(delivery_id: int) -> float:
    """A fixed place in [0, 1) per email (golden-ratio steps spread consecutive ids evenly)."""
    return (delivery_id * 0.6180339887498949) % 1.0
