"""The webhook's fast check agrees with the full parser on every payload, valid or not."""

from __future__ import annotations

import copy
import json
import random

import pytest

from app.alerts import PayloadError, check_notification, parse_notification
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
        function(data, body) if function is check_notification else function(data)
        return "valid"
    except PayloadError:
        return "invalid"


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_fast_check_and_full_parse_agree_on_mutated_fixtures(fixture):
    payload = json.loads((FIXTURES / fixture).read_text())
    rng = random.Random(fixture)
    seen = set()
    for _ in range(600):
        body = json.dumps(mutate(payload, rng), ensure_ascii=rng.random() < 0.5).encode(
            "utf-8", "surrogatepass")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            continue
        fast, full = verdict(check_notification, data, body), verdict(parse_notification, data, body)
        assert fast == full, body[:300]
        seen.add(full)
    assert seen == {"valid", "invalid"}


def test_the_fast_check_reads_what_the_webhook_journals():
    body = (FIXTURES / "grouped-five-users.json").read_bytes()
    head = check_notification(json.loads(body), body)
    full = parse_notification(json.loads(body))
    assert (head.receiver, head.status, head.group_key, head.alert_count,
            head.truncated_alerts) == (full.receiver, full.status, full.group_key,
                                       len(full.alerts), full.truncated_alerts)
