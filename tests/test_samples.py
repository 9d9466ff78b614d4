"""Sample alerts come from the rules and sample.yml, never from code that knows a template."""

from __future__ import annotations

import re
import textwrap
from datetime import UTC, datetime

import pytest

from app.rules import load_rule_set
from app.samples import (
    build_sample,
    load_sample_data,
    plausible_value,
    render_annotation,
    samples_for,
)
from tests.conftest import ROOT

NOW = datetime(2026, 11, 22, 20, 4, tzinfo=UTC)
SHIPPED_TEMPLATES = sorted(p.name for p in (ROOT / "email_templates").iterdir()
                           if not p.name.startswith("_"))


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_no_code_names_a_shipped_template():
    for path in (ROOT / "app").rglob("*.py"):
        text = path.read_text()
        for name in SHIPPED_TEMPLATES:
            assert not re.search(rf"\b{name}\b", text), f"{path} names {name}"


@pytest.mark.parametrize("expr, value", [
    ("max by (user_id) (app_user_quota_used_ratio) > 0.9", 0.9333),
    ("(time() - max by (user_id) (x)) / 86400 > 1 < 14", 7.5),
    ("sum by (user_id) (x) > 0 and on (user_id) (y < 7 * 86400)", 1.0),
    ("a / b < 0.2 and on (user_id) (b >= 1000)", 0.1),
    ("max by (user_id) (app_user_payment_failed) == 1", 1.0),
    ("sum by (user_id) (x) > 1000", 1500.0),
    ("absent(x)", 1.0),
])
def test_the_value_comes_from_the_rules_threshold(expr, value):
    assert plausible_value(expr) == value


@pytest.mark.parametrize("text, expected", [
    ("User {{ $labels.user_id }} ({{ $labels.plan }} plan)", "User u9 (pro plan)"),
    ("{{ $value }}", "0.9333"),
    ("{{ $value | humanizePercentage }}", "93.33%"),
    ('{{ printf "%.1f" $value }} days', "0.9 days"),
    ('{{ printf "%.0f" $value }}', "1"),
    ("{{ .Labels.user_id }} {{ .Value }}", "u9 0.9333"),
    ("{{ $labels.missing }}", "<no value>"),
    ("{{- $labels.user_id -}}  !", "u9!"),
    ("{{ 1234567 | humanize }}", "1.235M"),
    ("{{ 90061 | humanizeDuration }}", "1d 1h 1m 1s"),
])
def test_annotation_templates_are_expanded_as_prometheus_does(text, expected):
    assert render_annotation(text, {"user_id": "u9", "plan": "pro"}, 0.9333) == expected


def test_an_annotation_that_queries_is_left_to_sample_yml(tmp_path):
    rules_dir = tmp_path / "rules"
    write(rules_dir / "r.yml", """\
        groups:
          - name: g
            rules:
              - alert: Deprecated
                expr: sum by (user_id) (increase(x[1h])) > 0
                labels: {email_template: t}
                annotations:
                  endpoint: '{{ with query "x" }}{{ . | first | label "endpoint" }}{{ end }}'
                  calls: '{{ printf "%.0f" $value }}'
        """)
    rules = load_rule_set(rules_dir)
    templates = tmp_path / "templates"
    (templates / "t").mkdir(parents=True)
    (sample,), problems = samples_for("t", templates, rules, user_label="user_id",
                                      template_label="email_template", now=NOW)
    assert problems == []
    assert sample.alert["annotations"] == {"calls": "1"}
    assert "annotation 'endpoint' of Deprecated uses `with`" in sample.notes[0]
    assert "t/sample.yml" in sample.notes[0]

    write(templates / "t" / "sample.yml", "annotations:\n  endpoint: /v1/send\n")
    (sample,), _ = samples_for("t", templates, rules, user_label="user_id",
                               template_label="email_template", now=NOW)
    assert sample.alert["annotations"] == {"calls": "1", "endpoint": "/v1/send"}
    assert sample.notes == ()


def test_the_sample_alert_is_what_the_rule_would_send(tmp_path):
    rules_dir = tmp_path / "rules"
    write(rules_dir / "r.yml", """\
        groups:
          - name: g
            rules:
              - alert: QuotaHalfway
                expr: max by (user_id) (q) > 0.5 * on (user_id) group_left (plan) info
                labels: {email_template: halfway, team: growth}
                annotations:
                  summary: "{{ $labels.user_id }} on {{ $labels.plan }} at {{ $value }}"
        """)
    templates = tmp_path / "templates"
    write(templates / "halfway" / "sample.yml", """\
        user: {name: Grace, signup_at: now-2d, nested: {seen: now+1h}}
        labels: {plan: pro, user_id: u2}
        value: 0.61
        """)
    (sample,), problems = samples_for("halfway", templates, load_rule_set(rules_dir),
                                      user_label="user_id", template_label="email_template",
                                      resolved=True, now=NOW)
    assert problems == []
    assert sample.alert["labels"] == {"alertname": "QuotaHalfway", "user_id": "u2",
                                      "email_template": "halfway", "team": "growth",
                                      "plan": "pro"}
    assert sample.alert["annotations"] == {"summary": "u2 on pro at 0.61"}
    assert sample.alert["status"] == "resolved" and sample.alert["endsAt"]
    assert sample.user == {"name": "Grace", "signup_at": "2026-11-20T20:04:00Z",
                           "nested": {"seen": "2026-11-22T21:04:00Z"}}
    assert sample.user_id == "u2"


def test_a_template_no_rule_uses_gets_a_generic_sample(tmp_path):
    sample = build_sample("trial_ending", None, load_sample_data(tmp_path, "trial_ending")[0],
                          user_label="user_id", template_label="email_template", now=NOW)
    assert sample.rule == "TrialEnding"
    assert sample.alert["labels"]["email_template"] == "trial_ending"
    assert sample.user["name"] == "Jane Doe"


def test_sample_yml_problems_are_one_line_each(tmp_path):
    write(tmp_path / "t" / "sample.yml", "user: [1]\ncolour: blue\nvalue: lots\n")
    _, problems = load_sample_data(tmp_path, "t")
    path = tmp_path / "t" / "sample.yml"
    assert problems == [
        f"{path}: colour: unknown key (allowed: user, labels, annotations, value)",
        f"{path}: user: expected a mapping (the user's directory record)",
        f"{path}: value: expected a number (the alert's $value), got 'lots'",
    ]
