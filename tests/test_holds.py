"""The hold policy (app/holds.py) as pure functions: cap, priority, quiet hours, cancel, drop.

No I/O: plain timestamps, lists and settings in, verdicts out; hypothesis explores time zones
and the days their clocks change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.holds import (
    ALERT_RESOLVED,
    CANCEL,
    DROP,
    ESSENTIAL,
    FREQUENCY_CAP,
    HOLD,
    MAX_WAIT,
    PRIORITY,
    QUIET_HOURS,
    SEND,
    Email,
    HoldSettings,
    QuietWindow,
    SendFacts,
    WaitingEmail,
    in_quiet_hours,
    judge_send,
    parse_window,
    quiet_hours_end,
    release_spread,
    rule_holds,
    user_zone,
)

HOUR = 3600.0
DAY = 86400.0
UTC_ZONE = ZoneInfo("UTC")
TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")
NIGHT = parse_window("21:00-08:00")
# Zones with daylight saving time of every shape: 1 h, 30 min (Lord Howe), southern
# hemisphere, clocks changing at midnight (Santiago, Havana), none (Tokyo, Kolkata).
ZONES = ["UTC", "Asia/Tokyo", "Asia/Kolkata", "America/New_York", "Europe/Berlin",
         "Europe/London", "Australia/Sydney", "Australia/Lord_Howe", "Pacific/Chatham",
         "America/Santiago", "America/Havana", "Asia/Tehran", "Pacific/Auckland"]


def at(text: str, zone: ZoneInfo = UTC_ZONE) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def local(epoch: float, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(epoch, UTC).astimezone(zone)


def email(id=1, rule="Rule", annotations=None, created_at=0.0, kind="firing") -> Email:
    return Email(id, rule, kind, annotations or {}, created_at)


def waiting(id, rule, priority, created_at=0.0, due_at=0.0) -> WaitingEmail:
    return WaitingEmail(id, rule, {"nudge_priority": str(priority)}, created_at, due_at)


def judge(now, the_email, facts, settings, zone=UTC_ZONE, zone_name="UTC", spread=0.0):
    return judge_send(now, the_email, facts, settings, zone=zone, zone_name=zone_name,
                      spread=spread)


def facts(recent=(), others=(), resolved=False, waited=0.0, previous=None) -> SendFacts:
    return SendFacts(list(recent), list(others), resolved, waited, previous)


CAP2 = HoldSettings(per_user=2, period=DAY, max_wait=3 * DAY)


# --- settings ---------------------------------------------------------------------------------


def test_windows_are_parsed_and_checked():
    assert parse_window("21:00-08:00") == QuietWindow(21 * 60, 8 * 60)
    assert parse_window(" 9:30 - 17:00 ") == QuietWindow(9 * 60 + 30, 17 * 60)
    assert parse_window("") is None and parse_window(None) is None
    for bad in ("21-08", "25:00-08:00", "21:00-21:00", "21:00", 2100):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_rule_annotations_give_priority_essential_and_cancel_on_resolve():
    assert rule_holds({}) == rule_holds({"nudge_priority": "0"})
    holds = rule_holds({"nudge_priority": "10", "nudge_essential": "true",
                        "nudge_cancel_on_resolve": "false"})
    assert (holds.priority, holds.essential, holds.cancel_on_resolve) == (10, True, False)
    assert rule_holds({"nudge_priority": "-3"}).priority == -3
    for bad in ({"nudge_priority": "high"}, {"nudge_priority": "1.5"},
                {"nudge_essential": "yes please"}, {"nudge_cancel_on_resolve": "no"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            rule_holds(bad)


def test_user_zone_falls_back_to_the_default_for_missing_or_invalid_names():
    assert user_zone({"timezone": "Asia/Tokyo"}, "timezone", "UTC")[1] == "Asia/Tokyo"
    assert user_zone({"tz": "Asia/Tokyo"}, "tz", "UTC")[1] == "Asia/Tokyo"
    assert user_zone({}, "timezone", "Europe/Berlin")[1] == "Europe/Berlin"
    assert user_zone({"timezone": "Mars/Olympus"}, "timezone", "UTC")[1] == "UTC"
    assert user_zone(None, "timezone", "UTC")[1] == "UTC"


# --- frequency cap and priorities -------------------------------------------------------------


def test_under_the_cap_the_email_goes_and_counts():
    verdict = judge(1000.0, email(), facts(recent=[500.0]), CAP2)
    assert (verdict.action, verdict.counts) == (SEND, True)


def test_at_the_cap_the_email_waits_until_the_oldest_send_leaves_the_window():
    now = 10 * HOUR
    verdict = judge(now, email(), facts(recent=[1 * HOUR, 2 * HOUR]), CAP2)
    assert verdict.action == HOLD and verdict.reason == FREQUENCY_CAP
    assert verdict.until == 1 * HOUR + DAY
    assert verdict.detail == "waiting: 2 emails sent in the last 1d (limit 2)"


def test_sends_older_than_the_period_do_not_count():
    assert judge(2 * DAY, email(), facts(recent=[1.0, 2.0, 3.0]), CAP2).action == SEND


def test_the_highest_priority_goes_first_and_the_message_says_which():
    mine = email(id=3, rule="UsageDrop", annotations={"nudge_priority": "1"}, created_at=10.0)
    others = [waiting(1, "QuotaNearlyExhausted", 10, created_at=20.0),
              waiting(2, "FirstCall", 5, created_at=30.0)]
    verdict = judge(100.0, mine, facts(others=others), CAP2)
    assert verdict.action == HOLD and verdict.reason == PRIORITY
    assert verdict.detail == ("waiting: 0 emails sent in the last 1d (limit 2); "
                              "QuotaNearlyExhausted (priority 10) goes first")
    # The two ranked first each fit: one waiting before them is not enough to hold them.
    top = email(id=1, annotations={"nudge_priority": "10"}, created_at=20.0)
    assert judge(100.0, top, facts(others=[others[1], waiting(3, "UsageDrop", 1, 10.0)]),
                 CAP2).action == SEND


def test_the_issue_example_at_the_cap_with_a_higher_priority_waiting():
    mine = email(id=5, rule="UsageDrop")
    verdict = judge(10 * HOUR, mine, facts(recent=[HOUR, 2 * HOUR],
                                           others=[waiting(4, "QuotaNearlyExhausted", 10)]), CAP2)
    assert verdict.detail == ("waiting: 2 emails sent in the last 1d (limit 2); "
                              "QuotaNearlyExhausted (priority 10) goes first")


def test_equal_priorities_go_oldest_first():
    older = waiting(1, "A", 0, created_at=5.0)
    assert judge(100.0, email(id=2, created_at=9.0), facts(recent=[50.0], others=[older]),
                 CAP2).action == HOLD
    newer = waiting(2, "B", 0, created_at=9.0)
    assert judge(100.0, email(id=1, created_at=5.0), facts(recent=[50.0], others=[newer]),
                 CAP2).action == SEND


def test_essential_emails_skip_cap_and_quiet_hours_and_do_not_count():
    settings = HoldSettings(per_user=1, quiet=NIGHT)
    essential = email(annotations={"nudge_essential": "true"})
    verdict = judge(at("2026-01-10T03:00:00"), essential, facts(recent=[at("2026-01-10T01:00")]),
                    settings)
    assert (verdict.action, verdict.reason, verdict.counts) == (SEND, ESSENTIAL, False)
    # Waiting essential emails do not take room from the others either.
    others = [WaitingEmail(9, "Security", {"nudge_essential": "true", "nudge_priority": "99"},
                           0.0, 0.0)]
    assert judge(1000.0, email(), facts(others=others), HoldSettings(per_user=1)).action == SEND


def test_no_cap_means_no_slot():
    verdict = judge(1000.0, email(), facts(recent=[1.0] * 50), HoldSettings())
    assert (verdict.action, verdict.counts) == (SEND, False)


# --- cancel and drop --------------------------------------------------------------------------


def test_a_resolved_alert_cancels_its_waiting_email_unless_the_rule_says_not_to():
    verdict = judge(1000.0, email(), facts(resolved=True), CAP2)
    assert (verdict.action, verdict.reason) == (CANCEL, ALERT_RESOLVED)
    assert verdict.detail == "cancelled: alert resolved before sending"
    keep = email(annotations={"nudge_cancel_on_resolve": "false"})
    assert judge(1000.0, keep, facts(resolved=True), CAP2).action == SEND
    # The resolved email itself is never cancelled by its own resolution.
    assert judge(1000.0, email(kind="resolved"), facts(resolved=True), CAP2).action == SEND


def test_an_email_that_waited_past_max_wait_is_dropped_and_never_held_past_it():
    settings = HoldSettings(per_user=1, period=DAY, max_wait=2 * HOUR)
    full = facts(recent=[900.0], waited=2 * HOUR)
    verdict = judge(1000.0, email(), full, settings)
    assert (verdict.action, verdict.reason) == (DROP, MAX_WAIT)
    assert verdict.detail.startswith("dropped: waited longer than limits.max_wait (2h)")
    # Held for 1h so far: look again when its 2h are up, not when the cap has room (a day).
    verdict = judge(1000.0, email(), facts(recent=[900.0], waited=HOUR), settings)
    assert verdict.action == HOLD and verdict.until == 1000.0 + HOUR


def test_a_released_email_says_how_long_it_waited():
    verdict = judge(1000.0, email(), facts(waited=3 * HOUR, previous=QUIET_HOURS), CAP2)
    assert (verdict.action, verdict.reason, verdict.detail) == (SEND, QUIET_HOURS,
                                                                "released after waiting 3h")


# --- quiet hours ------------------------------------------------------------------------------


def test_quiet_hours_in_tokyo_end_at_eight_local_time():
    settings = HoldSettings(quiet=NIGHT)
    now = at("2026-03-01T02:30:00", TOKYO)
    verdict = judge(now, email(), facts(), settings, TOKYO, "Asia/Tokyo", spread=0.5)
    assert verdict.action == HOLD and verdict.reason == QUIET_HOURS
    assert verdict.detail == "waiting: quiet hours until 08:00 Asia/Tokyo"
    assert verdict.until == at("2026-03-01T08:00:30", TOKYO)
    # Late evening: until tomorrow morning.
    assert quiet_hours_end(at("2026-03-01T22:00", TOKYO), TOKYO, NIGHT) == at(
        "2026-03-02T08:00", TOKYO)
    assert quiet_hours_end(at("2026-03-01T12:00", TOKYO), TOKYO, NIGHT) is None


def test_quiet_hours_across_the_spring_and_autumn_clock_changes():
    # New York springs forward at 02:00 on 2026-03-08: a window ending at 02:30 ends at the
    # jump (03:00 EDT), not an hour late.
    window = parse_window("22:00-02:30")
    end = quiet_hours_end(at("2026-03-08T01:30", NEW_YORK), NEW_YORK, window)
    assert abs(end - datetime(2026, 3, 8, 7, 0, tzinfo=UTC).timestamp()) <= 0.5
    # A window ending at 08:00 on the day clocks change is eight local hours, 7 real ones.
    end = quiet_hours_end(at("2026-03-08T00:00", NEW_YORK), NEW_YORK, NIGHT)
    assert end == datetime(2026, 3, 8, 12, 0, tzinfo=UTC).timestamp()
    # Falling back on 2026-11-01 (02:00 EDT -> 01:00 EST): 01:30 happens twice; the window
    # ends at the first one.
    window = parse_window("23:00-01:30")
    end = quiet_hours_end(at("2026-11-01T00:10", NEW_YORK), NEW_YORK, window)
    assert end == datetime(2026, 11, 1, 5, 30, tzinfo=UTC).timestamp()


def test_a_window_ending_in_the_hour_that_repeats_ends_at_its_second_reading():
    # Sydney falls back at 03:00 AEDT on 2024-04-07 (to 02:00 AEST). At 02:00 AEST, inside
    # 00:00-02:01, the end is the 02:01 still to come, not the one an hour ago (found by
    # hypothesis).
    sydney = ZoneInfo("Australia/Sydney")
    now = datetime(2024, 4, 6, 16, 0, tzinfo=UTC).timestamp()
    end = quiet_hours_end(now, sydney, parse_window("00:00-02:01"))
    assert end == datetime(2024, 4, 6, 16, 1, tzinfo=UTC).timestamp()


def test_when_the_clocks_skip_the_time_outside_the_window_it_lasts_until_the_next_day():
    # Window 02:01-02:00: only 02:00-02:01 is outside, and Sydney skips 02:00-03:00 on
    # 2024-10-06 (found by hypothesis).
    sydney = ZoneInfo("Australia/Sydney")
    now = datetime(2024, 10, 5, 15, 59, 59, tzinfo=UTC).timestamp()  # 01:59:59 AEST
    end = quiet_hours_end(now, sydney, parse_window("02:01-02:00"))
    assert local(end, sydney).strftime("%Y-%m-%d %H:%M") == "2024-10-07 02:00"


def test_clocks_set_back_to_before_the_window_leave_it_early():
    # Window 01:30-05:00; at 02:00 EDT the clocks go back to 01:00, outside the window.
    window = parse_window("01:30-05:00")
    now = datetime(2026, 11, 1, 5, 45, tzinfo=UTC).timestamp()  # 01:45 EDT
    assert in_quiet_hours(now, NEW_YORK, window)
    end = quiet_hours_end(now, NEW_YORK, window)
    assert abs(end - datetime(2026, 11, 1, 6, 0, tzinfo=UTC).timestamp()) <= 0.5


def test_release_is_spread_over_the_first_minute():
    spreads = [release_spread(i) for i in range(1, 200)]
    assert all(0 <= s < 1 for s in spreads)
    assert len({int(s * 60) for s in spreads}) > 50


@st.composite
def moments(draw):
    """An instant, often within a day of a clock change (found per zone and year)."""
    zone = ZoneInfo(draw(st.sampled_from(ZONES)))
    year = draw(st.integers(2024, 2030))
    start = datetime(year, 1, 1, tzinfo=UTC).timestamp()
    epoch = start + draw(st.floats(0, 365 * DAY, allow_nan=False))
    if draw(st.booleans()):
        changes = _offset_changes(zone, year)
        if changes:
            epoch = draw(st.sampled_from(changes)) + draw(st.floats(-DAY, DAY, allow_nan=False))
    return zone, epoch


_CHANGES: dict = {}


def _offset_changes(zone: ZoneInfo, year: int) -> list[float]:
    key = (zone.key, year)
    if key not in _CHANGES:
        found = []
        moment = datetime(year, 1, 1, tzinfo=UTC)
        previous = moment.astimezone(zone).utcoffset()
        while moment.year == year:
            moment += timedelta(hours=1)
            offset = moment.astimezone(zone).utcoffset()
            if offset != previous:
                found.append(moment.timestamp())
                previous = offset
        _CHANGES[key] = found
    return _CHANGES[key]


windows = st.builds(
    lambda a, b: QuietWindow(a, b if b != a else (a + 1) % 1440),
    st.integers(0, 1439), st.integers(0, 1439))


@settings(max_examples=400, deadline=None)
@given(moments(), windows, st.lists(st.floats(0, 1), min_size=1, max_size=5))
def test_quiet_hours_hold_exactly_while_the_local_clock_is_inside_the_window(moment, window,
                                                                              fractions):
    zone, now = moment
    end = quiet_hours_end(now, zone, window)
    if end is None:
        assert not in_quiet_hours(now, zone, window)
        return
    assert in_quiet_hours(now, zone, window)
    # At most a day, or two when the clocks skip the only time outside the window.
    assert now < end <= now + 2 * DAY + 2 * HOUR
    # Just after the end the local clock is outside the window...
    assert not in_quiet_hours(end + 0.5, zone, window) or not in_quiet_hours(end, zone, window)
    # ...and every moment before it is inside: the email never waits longer than needed.
    for fraction in fractions:
        moment_before = now + (end - now) * fraction
        if moment_before < end - 1:
            assert in_quiet_hours(moment_before, zone, window), local(moment_before, zone)


@settings(max_examples=200, deadline=None)
@given(moments(), st.floats(0, 0.999))
def test_a_held_email_is_released_within_a_minute_after_the_window_ends(moment, spread):
    zone, now = moment
    settings = HoldSettings(quiet=NIGHT)
    verdict = judge(now, email(), facts(), settings, zone, zone.key, spread)
    end = quiet_hours_end(now, zone, NIGHT)
    if end is None:
        assert verdict.action == SEND
    else:
        assert verdict.action == HOLD and end <= verdict.until < end + 60
        assert not in_quiet_hours(verdict.until, zone, NIGHT)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5), st.lists(st.floats(0, 3 * DAY), max_size=8),
       st.lists(st.tuples(st.integers(-5, 5), st.floats(0, 100)), max_size=6),
       st.integers(-5, 5), st.floats(0, 100))
def test_the_cap_is_never_exceeded_and_only_the_top_ranked_go(per_user, sends, others,
                                                              priority, created):
    now = 3 * DAY
    settings = HoldSettings(per_user=per_user, period=DAY, max_wait=10 * DAY)
    waiting_emails = [waiting(i + 10, f"R{i}", p, c) for i, (p, c) in enumerate(others)]
    mine = email(id=1, annotations={"nudge_priority": str(priority)}, created_at=created)
    verdict = judge(now, mine, facts(sends, waiting_emails), settings)
    recent = [t for t in sends if now - DAY < t <= now]
    ahead = [w for w in waiting_emails
             if (-w.holds.priority, w.created_at, w.id) < (-priority, created, 1)]
    if verdict.action == SEND:
        assert len(recent) + len(ahead) < per_user
    else:
        assert verdict.action == HOLD and verdict.until > now
        assert len(recent) + len(ahead) >= per_user
        if len(recent) >= per_user:
            # When it looks again, the window has room (one fewer recent send).
            assert len([t for t in recent if t > verdict.until - DAY + 1e-6]) < per_user
