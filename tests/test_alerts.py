"""The webhook's fast checks agree with the full parser on every payload, valid or not."""

from __future__ import annotations

import copy
import json
import random

import pytest

from app.alerts import PayloadError, check_body, check_notification, parse_notification
from tests.conftest import FIXTURES

REPLACEMENTS = [None, 1, 1.5, True, "", "x", [], {}, {"a": 1}, {"a": "b"}, "firing",
                "resolved", "2026-11-22T20:04:34Z", "2026-02-30T20:04:34Z",
                "2026-11-22T20:04:34+02:00", "0001-01-01T00:00:00Z", "0999-01-01T00:00:00Z",
                "2026-11-22T20:04:34.123456789Z", "a\ud800b", "a\x00b", "é", -1, 0, 3]


def mutate(payload: dict, rng: random.Random) -> dict:
    mutated = copy.deepcopy(payload)
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                paths.append(path + [key])
                walk(value, path + [key])
        elif isinstance(node, list):
            for index, value in enumerate(node):
                paths.append(path + [index])
                walk(value, path + [index])

    walk(mutated, [])
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths)
        parent = mutated
        try:
            for step in path[:-1]:
                parent = parent[step]
            if rng.random() < 0.15 and isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent[path[-1]] = copy.deepcopy(rng.choice(REPLACEMENTS))
        except (KeyError, IndexError, TypeError):
            continue
    return mutated


def verdict(function, data, body):
    try:
        if function is check_notification:
            function(data, body)
        elif function is check_body:
            function(body)
        else:
            function(data)
        return "valid"
    except PayloadError:
        return "invalid"


def full_verdict(body: bytes) -> str:
    """What the full parser says of a body as the webhook receives it: UTF-8, as it is."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "invalid"
    return verdict(parse_notification, data, body)


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_fast_check_and_full_parse_agree_on_mutated_fixtures(fixture):
    payload = json.loads((FIXTURES / fixture).read_text())
    rng = random.Random(fixture)
    seen = set()
    for _ in range(600):
        body = json.dumps(mutate(payload, rng), ensure_ascii=rng.random() < 0.5).encode(
            "utf-8", "surrogatepass")
        assert verdict(check_body, None, body) == full_verdict(body), body[:300]
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            continue
        full = verdict(parse_notification, data, body)
        assert verdict(check_notification, data, body) == full, body[:300]
        seen.add(full)
    assert seen == {"valid", "invalid"}


def test_the_fast_check_reads_what_the_webhook_journals():
    body = (FIXTURES / "grouped-five-users.json").read_bytes()
    head = check_notification(json.loads(body), body)
    full = parse_notification(json.loads(body))
    assert (head.receiver, head.status, head.group_key, head.alert_count,
            head.truncated_alerts) == (full.receiver, full.status, full.group_key,
                                       len(full.alerts), full.truncated_alerts)


def head(function, body: bytes):
    got = function(body) if function is check_body else function(json.loads(body), body)
    return (got.receiver, got.status, got.group_key, got.alert_count, got.truncated_alerts)


@pytest.mark.parametrize("body", [
    # Like json.loads, the last of duplicate keys counts, in the notification and in alerts.
    b'{"version":"4","receiver":"a","receiver":"b","alerts":[{"status":"firing",'
    b'"labels":{"user_id":"1"},"startsAt":"2026-11-22T20:04:34Z"}],"alerts":[]}',
    b'{"version":"4","alerts":[],"alerts":[{"status":"resolved","status":"firing",'
    b'"labels":{"user_id":"1"},"startsAt":"x","startsAt":"2026-11-22T20:04:34Z"}]}',
    # Valid for the full parser, though not plain: null fields, an offset, a NaN elsewhere.
    b'{"version":"4","receiver":null,"truncatedAlerts":2,"alerts":[{"status":"firing",'
    b'"labels":{"user_id":"1"},"annotations":null,"startsAt":"2026-11-22T22:04:34+02:00"}]}',
    b'{"version":"4","extra":NaN,"alerts":[]}',
])
def test_the_webhook_check_reads_duplicate_keys_and_unusual_values_as_json_loads_does(body):
    assert head(check_body, body) == head(check_notification, body)


@pytest.mark.parametrize(("body", "problem"), [
    (b'{"version":"4","alerts":[{"status":"firing","labels":{"user_id":"1"},'
     b'"startsAt":"2026-11-22T20:04:34Z"}],"alerts":5}', "alerts"),
    (b'{"version":"4","alerts":[],"truncatedAlerts":-1}', "truncatedAlerts"),
    (b'{"version":"4","alerts":[{"status":"firing","labels":{"user_id":"\\ud800"},'
     b'"startsAt":"2026-11-22T20:04:34Z"}]}'.replace(b"\\\\", b"\\"), "surrogate"),
    (b'\xef\xbb\xbf{"version":"4","alerts":[]}', "BOM"),
    (b'{"version":"4","alerts":[], "receiver":"\xff"}', "UTF-8"),
], ids=["last-alerts-invalid", "negative-truncated", "lone-surrogate", "bom", "not-utf8"])
def test_the_webhook_check_rejects_what_the_full_parser_rejects(body, problem):
    with pytest.raises(PayloadError):
        check_body(body)
