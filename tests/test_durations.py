"""Durations as operators write them in nudge.yml and in rule annotations."""

from __future__ import annotations

import pytest

from app.durations import format_duration, parse_cooldown, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("7d", 604800.0),
        ("2w", 1209600.0),
        ("1h30m", 5400.0),
        ("1d12h", 129600.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("0s", 0.0),
        ("  5M  ", 300.0),
    ],
)
def test_parse_duration_units(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("value", "seconds"), [("90", 90.0), ("0", 0.0), (45, 45.0), (2.5, 2.5)])
def test_bare_numbers_are_seconds(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "garbage",
    ["banana", "-5m", "5x", "", "   ", "m", "5m-", "1h 30m", "5mm", True, False, None, -1,
     [5], {"m": 5}],
)
def test_parse_duration_rejects_garbage(garbage):
    with pytest.raises(ValueError):
        parse_duration(garbage)


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_parse_duration_rejects_non_finite_numbers(value):
    # YAML `.nan` loads as a float; a NaN max_age or backoff would make every comparison false.
    with pytest.raises(ValueError):
        parse_duration(value)


def test_garbage_message_shows_an_example_and_the_value():
    with pytest.raises(ValueError) as excinfo:
        parse_duration("banana")
    message = str(excinfo.value)
    assert "banana" in message
    assert "5m" in message


@pytest.mark.parametrize("text", ["forever", "FOREVER", "Forever", "  forever  "])
def test_cooldown_forever_is_none(text):
    assert parse_cooldown(text) is None


@pytest.mark.parametrize(("text", "seconds"), [("24h", 86400.0), ("7d", 604800.0), ("0s", 0.0),
                                                (60, 60.0)])
def test_cooldown_accepts_durations(text, seconds):
    assert parse_cooldown(text) == seconds


@pytest.mark.parametrize("garbage", ["banana", "for ever", "-1h", "", None, True])
def test_cooldown_garbage_message_mentions_forever(garbage):
    with pytest.raises(ValueError) as excinfo:
        parse_cooldown(garbage)
    assert "forever" in str(excinfo.value)
    assert repr(garbage) in str(excinfo.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (30, "30s"), (300, "5m"), (5400, "1h30m"), (86400, "1d"), (90061, "1d1h1m1s"),
     (None, "forever")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "text", ["0s", "30s", "5m", "24h", "7d", "2w", "1h30m", "1d12h", "90m", "3661s"]
)
def test_format_then_parse_round_trips(text):
    seconds = parse_duration(text)
    formatted = format_duration(seconds)
    assert parse_duration(formatted) == seconds
    # Formatting is canonical: formatting the re-parsed value gives the same text.
    assert format_duration(parse_duration(formatted)) == formatted


@pytest.mark.parametrize("text", ["24h", "7d", "forever", "1h30m"])
def test_cooldown_round_trips_through_format(text):
    assert parse_cooldown(format_duration(parse_cooldown(text))) == parse_cooldown(text)

