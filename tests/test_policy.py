"""The delivery policy and the Alertmanager payload parser, as pure functions: no I/O."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from app.alerts import Alert, PayloadError, canonical_time, parse_notification
from app.config import RuleOverride
from app.policy import (
    INVALID_SETTINGS,
    NO_TEMPLATE,
    NO_USER_LABEL,
    RESOLVED_NOT_REQUESTED,
    AlertPolicy,
    Candidate,
    Skip,
    decide,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "alertmanager"
STARTS = "2026-11-22T20:04:34.529000Z"
LATER = "2026-11-29T08:00:00.000000Z"


def make_alert(
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    *,
    status: str = "firing",
    starts_at: str = STARTS,
    user: str | None = "u1",
    template: str | None = "onboarding_first_call",
    rule: str = "NoFirstApiCall",
) -> Alert:
    all_labels = {"alertname": rule, "plan": "free"}
    if user is not None:
        all_labels["user_id"] = user
    if template is not None:
        all_labels["email_template"] = template
    all_labels.update(labels or {})
    return Alert(
        status=status,
        labels=all_labels,
        annotations=dict(annotations or {}),
        starts_at=starts_at,
        ends_at=None if status == "firing" else "2026-11-22T21:00:00.000000Z",
        generator_url="http://prometheus:9090/graph",
        fingerprint="abc123",
    )


def candidate(alert: Alert, policy: AlertPolicy | None = None) -> Candidate:
    decision = decide(alert, policy or AlertPolicy())
    assert isinstance(decision, Candidate), decision
    return decision


def skip(alert: Alert, policy: AlertPolicy | None = None) -> Skip:
    decision = decide(alert, policy or AlertPolicy())
    assert isinstance(decision, Skip), decision
    return decision


# --- which alerts become emails ------------------------------------------------------------


def test_behavioral_alert_becomes_a_candidate_with_the_label_template():
    result = candidate(make_alert())
    assert result.rule == "NoFirstApiCall"
    assert result.user_id == "u1"
    assert result.template == "onboarding_first_call"
    assert result.kind == "firing"
    assert result.cooldown == 86400.0
    assert result.dedup_key == result.firing_key


def test_template_comes_from_nudge_yml_when_the_label_is_missing():
    policy = AlertPolicy(rule_overrides={"NoFirstApiCall": RuleOverride(template="welcome")})
    assert candidate(make_alert(template=None), policy).template == "welcome"


def test_override_for_another_rule_does_not_apply():
    policy = AlertPolicy(rule_overrides={"UsageDropped": RuleOverride(template="usage_drop")})
    assert skip(make_alert(template=None), policy).reason == NO_TEMPLATE


def test_template_label_wins_over_nudge_yml():
    policy = AlertPolicy(rule_overrides={"NoFirstApiCall": RuleOverride(template="welcome")})
    assert candidate(make_alert(template="from_label"), policy).template == "from_label"


def test_alert_without_user_label_is_skipped():
    result = skip(make_alert(user=None))
    assert result.reason == NO_USER_LABEL
    assert result.rule == "NoFirstApiCall"
    assert "user_id" in result.detail


def test_empty_user_label_is_skipped():
    assert skip(make_alert(user="")).reason == NO_USER_LABEL


def test_alert_without_template_is_skipped():
    result = skip(make_alert(template=None))
    assert result.reason == NO_TEMPLATE
    assert result.user_id == "u1"
    assert "email_template" in result.detail
    assert "NoFirstApiCall" in result.detail


def test_resolved_alert_is_skipped_unless_requested():
    result = skip(make_alert(status="resolved"))
    assert result.reason == RESOLVED_NOT_REQUESTED
    assert result.user_id == "u1"


@pytest.mark.parametrize("value", ["true", "True", " TRUE "])
def test_resolved_alert_with_send_resolved_annotation_follows_up_on_the_firing_email(value):
    annotations = {"nudge_send_resolved": value}
    firing = candidate(make_alert(annotations=annotations))
    resolved = candidate(make_alert(annotations=annotations, status="resolved"))
    assert resolved.kind == "resolved"
    assert resolved.template == "onboarding_first_call"
    assert resolved.firing_key == firing.dedup_key
    assert resolved.dedup_key != firing.dedup_key


def test_send_resolved_from_nudge_yml_and_defaults():
    resolved = make_alert(status="resolved")
    by_rule = AlertPolicy(rule_overrides={"NoFirstApiCall": RuleOverride(send_resolved=True)})
    assert candidate(resolved, by_rule).kind == "resolved"
    assert candidate(resolved, AlertPolicy(default_send_resolved=True)).kind == "resolved"


def test_send_resolved_annotation_false_beats_nudge_yml():
    policy = AlertPolicy(
        default_send_resolved=True,
        rule_overrides={"NoFirstApiCall": RuleOverride(send_resolved=True)},
    )
    alert = make_alert(annotations={"nudge_send_resolved": "false"}, status="resolved")
    assert skip(alert, policy).reason == RESOLVED_NOT_REQUESTED


def test_rule_override_send_resolved_false_beats_default():
    policy = AlertPolicy(
        default_send_resolved=True,
        rule_overrides={"NoFirstApiCall": RuleOverride(send_resolved=False)},
    )
    assert skip(make_alert(status="resolved"), policy).reason == RESOLVED_NOT_REQUESTED


# --- cooldowns --------------------------------------------------------------------------------


def test_cooldown_precedence_annotation_then_override_then_default():
    policy = AlertPolicy(
        default_cooldown=3600.0,
        rule_overrides={"NoFirstApiCall": RuleOverride(cooldown=7 * 86400.0)},
    )
    assert candidate(make_alert(), AlertPolicy(default_cooldown=3600.0)).cooldown == 3600.0
    assert candidate(make_alert(), policy).cooldown == 7 * 86400.0
    annotated = make_alert(annotations={"nudge_cooldown": "30m"})
    assert candidate(annotated, policy).cooldown == 1800.0


def test_override_without_cooldown_keeps_the_default():
    policy = AlertPolicy(
        default_cooldown=3600.0,
        rule_overrides={"NoFirstApiCall": RuleOverride(template="welcome")},
    )
    assert candidate(make_alert(), policy).cooldown == 3600.0


def test_forever_from_nudge_yml_and_annotation():
    by_rule = AlertPolicy(rule_overrides={"NoFirstApiCall": RuleOverride(cooldown=None)})
    assert candidate(make_alert(), by_rule).cooldown is None
    forever = make_alert(annotations={"nudge_cooldown": "Forever"})
    assert candidate(forever).cooldown is None
    # A finite annotation beats a forever override.
    finite = make_alert(annotations={"nudge_cooldown": "1h"})
    assert candidate(finite, by_rule).cooldown == 3600.0


@pytest.mark.parametrize(
    ("annotations", "named"),
    [
        ({"nudge_cooldown": "banana"}, "nudge_cooldown"),
        ({"nudge_cooldown": "-5m"}, "nudge_cooldown"),
        ({"nudge_send_resolved": "yes please"}, "nudge_send_resolved"),
        ({"nudge_send_resolved": ""}, "nudge_send_resolved"),
    ],
)
def test_invalid_annotations_skip_with_the_annotation_named(annotations, named):
    result = skip(make_alert(annotations=annotations))
    assert result.reason == INVALID_SETTINGS
    assert result.user_id == "u1"
    assert named in result.detail


# --- deduplication keys -----------------------------------------------------------------------


def test_forever_cooldown_gives_one_key_for_every_episode():
    forever = AlertPolicy(default_cooldown=None)
    first = candidate(make_alert(starts_at=STARTS), forever)
    second = candidate(make_alert(starts_at=LATER), forever)
    assert first.dedup_key == second.dedup_key


def test_finite_cooldown_gives_one_key_per_episode():
    first = candidate(make_alert(starts_at=STARTS))
    again = candidate(make_alert(starts_at=STARTS))
    second = candidate(make_alert(starts_at=LATER))
    assert first.dedup_key == again.dedup_key
    assert first.dedup_key != second.dedup_key


def test_forever_resolved_email_still_follows_up_on_the_firing_email():
    forever = AlertPolicy(default_cooldown=None, default_send_resolved=True)
    firing = candidate(make_alert(starts_at=STARTS), forever)
    resolved = candidate(make_alert(status="resolved", starts_at=LATER), forever)
    assert resolved.firing_key == firing.dedup_key
    assert resolved.dedup_key != firing.dedup_key


def test_dedup_key_differs_per_user_and_per_rule():
    base = candidate(make_alert())
    other_user = candidate(make_alert(user="u2"))
    other_rule = candidate(make_alert(rule="UsageDropped"))
    assert len({base.dedup_key, other_user.dedup_key, other_rule.dedup_key}) == 3


def test_dedup_key_does_not_depend_on_other_labels_or_annotations():
    base = candidate(make_alert())
    noisy = candidate(make_alert({"plan": "pro", "instance": "api-2:8000"}, {"summary": "x"}))
    assert base.dedup_key == noisy.dedup_key


def test_dedup_key_fields_cannot_run_together():
    # ("ab", "c") and ("a", "bc") must not collide once joined.
    one = candidate(make_alert(rule="Ab", user="c"))
    two = candidate(make_alert(rule="A", user="bc"))
    assert one.dedup_key != two.dedup_key


# --- configurable labels ----------------------------------------------------------------------


def test_custom_user_and_template_labels():
    policy = AlertPolicy(user_label="customer", template_label="nudge_template")
    alert = make_alert(
        {"customer": "c42", "nudge_template": "winback"}, user=None, template=None
    )
    result = candidate(alert, policy)
    assert result.user_id == "c42"
    assert result.template == "winback"


def test_custom_user_label_ignores_the_default_label():
    policy = AlertPolicy(user_label="customer")
    result = skip(make_alert(user="u1"), policy)
    assert result.reason == NO_USER_LABEL
    assert "customer" in result.detail


def test_custom_template_label_ignores_the_default_label():
    policy = AlertPolicy(template_label="nudge_template")
    result = skip(make_alert(template="onboarding_first_call"), policy)
    assert result.reason == NO_TEMPLATE
    assert "nudge_template" in result.detail


# --- the Alertmanager payload -----------------------------------------------------------------


def payload(**alert_fields) -> dict:
    alert = {
        "status": "firing",
        "labels": {"alertname": "NoFirstApiCall", "user_id": "u1",
                   "email_template": "onboarding_first_call"},
        "annotations": {"summary": "User u1 has not called the API yet"},
        "startsAt": "2026-11-22T20:04:34.529Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "1b2c3d",
    }
    alert.update(alert_fields)
    return {
        "version": "4",
        "groupKey": '{}:{alertname="NoFirstApiCall"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "nudge",
        "groupLabels": {"alertname": "NoFirstApiCall"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [alert],
    }


@pytest.mark.parametrize(
    "spelling",
    [
        "2026-11-22T20:04:34.529Z",
        "2026-11-22T20:04:34.529000Z",
        "2026-11-22T20:04:34.529000000Z",
        "2026-11-22T20:04:34.529000123Z",
        "2026-11-22T21:04:34.529+01:00",
        "2026-11-22T20:04:34.529+00:00",
    ],
)
def test_one_instant_has_one_canonical_spelling(spelling):
    assert canonical_time(spelling) == "2026-11-22T20:04:34.529000Z"


def test_different_instants_stay_different():
    assert canonical_time("2026-11-22T20:04:34.529Z") != canonical_time("2026-11-22T20:04:34.53Z")


@pytest.mark.parametrize("text", ["yesterday", "2026-11-22T20:04:34", "", "2026-13-01T00:00:00Z"])
def test_bad_timestamps_are_payload_errors(text):
    with pytest.raises(PayloadError):
        canonical_time(text, "alerts[0].startsAt")


def test_starts_at_spellings_dedupe_as_one_episode():
    keys = set()
    for spelling in ("2026-11-22T20:04:34.529Z", "2026-11-22T20:04:34.529000000Z"):
        (alert,) = parse_notification(payload(startsAt=spelling)).alerts
        keys.add(candidate(alert).dedup_key)
    assert len(keys) == 1


def test_parses_a_v4_payload():
    notification = parse_notification(payload())
    assert notification.receiver == "nudge"
    assert notification.truncated_alerts == 0
    (alert,) = notification.alerts
    assert alert.status == "firing"
    assert alert.labels["user_id"] == "u1"
    assert alert.annotations["summary"].startswith("User u1")
    assert alert.starts_at == "2026-11-22T20:04:34.529000Z"
    assert alert.fingerprint == "1b2c3d"


def test_zero_ends_at_means_none():
    (alert,) = parse_notification(payload(endsAt="0001-01-01T00:00:00Z")).alerts
    assert alert.ends_at is None


def test_resolved_ends_at_is_canonical():
    data = payload(status="resolved", endsAt="2026-11-22T20:10:00.5Z")
    (alert,) = parse_notification(data).alerts
    assert alert.ends_at == "2026-11-22T20:10:00.500000Z"


@pytest.mark.parametrize("version", ["3", 4, None, "5"])
def test_other_versions_are_rejected_naming_the_version(version):
    data = payload()
    data["version"] = version
    with pytest.raises(PayloadError) as excinfo:
        parse_notification(data)
    assert repr(version) in str(excinfo.value)


def test_missing_version_is_rejected():
    data = payload()
    del data["version"]
    with pytest.raises(PayloadError, match="version"):
        parse_notification(data)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("labels", {"alertname": "X", "user_id": 7}, "alerts[0].labels"),
        ("labels", {"alertname": "X", "user_id": None}, "alerts[0].labels"),
        ("labels", ["user_id"], "alerts[0].labels"),
        ("annotations", {"summary": ["a"]}, "alerts[0].annotations"),
        ("status", "pending", "alerts[0].status"),
        ("startsAt", 1732305874, "alerts[0].startsAt"),
        ("startsAt", "not a time", "alerts[0].startsAt"),
    ],
)
def test_malformed_alerts_name_the_field(field, value, named):
    with pytest.raises(PayloadError) as excinfo:
        parse_notification(payload(**{field: value}))
    assert named in str(excinfo.value)


def test_malformed_second_alert_is_named_by_index():
    data = payload()
    second = copy.deepcopy(data["alerts"][0])
    second["labels"]["user_id"] = 2
    data["alerts"].append(second)
    with pytest.raises(PayloadError, match=r"alerts\[1\]\.labels"):
        parse_notification(data)


@pytest.mark.parametrize("data", [[], "4", None, {"version": "4"}, {"version": "4", "alerts": {}}])
def test_non_payloads_are_rejected(data):
    with pytest.raises(PayloadError):
        parse_notification(data)


def test_unknown_fields_are_ignored():
    data = payload(someNewAlertField={"x": 1})
    data["notification_reason"] = "repeat_interval"
    expected = parse_notification(payload())
    assert parse_notification(data) == expected


@pytest.mark.parametrize(
    ("name", "count", "truncated"),
    [
        ("firing-per-user.json", 1, 0),
        ("grouped-five-users.json", 5, 0),
        ("grouped-mixed-resolved.json", 5, 0),
        ("repeat-of-same-episode.json", 1, 0),
        ("truncated-max-alerts.json", 2, 3),
    ],
)
def test_fixture_payloads_parse(name, count, truncated):
    notification = parse_notification(json.loads((FIXTURES / name).read_text()))
    assert len(notification.alerts) == count
    assert notification.truncated_alerts == truncated
    for alert in notification.alerts:
        assert alert.labels["user_id"]
        assert alert.starts_at.endswith("Z")
        assert (alert.ends_at is None) == (alert.status == "firing")


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda path: path.name)
def test_every_fixture_is_a_valid_payload(path):
    notification = parse_notification(json.loads(path.read_text()))
    assert notification.alerts
    assert notification.truncated_alerts >= 0


def test_fixture_mixed_group_decides_per_alert():
    data = json.loads((FIXTURES / "grouped-mixed-resolved.json").read_text())
    decisions = [decide(alert, AlertPolicy()) for alert in parse_notification(data).alerts]
    reasons = [d.reason if isinstance(d, Skip) else d.kind for d in decisions]
    assert reasons == [RESOLVED_NOT_REQUESTED] * 2 + ["firing"] * 3
    assert len({d.dedup_key for d in decisions if isinstance(d, Candidate)}) == 3
