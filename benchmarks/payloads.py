"""Alertmanager webhook payloads (version 4) with alerts for distinct users, built cheaply.

A payload is built once as a template whose user ids contain a fixed-width placeholder;
each request swaps in its own sequence number with one `bytes.replace`, so the load
generator spends next to no CPU per request and every alert is for a user never seen before
(every alert is queued, none is a duplicate).
"""

from __future__ import annotations

import json

SEQ = b"@@@@@@@@"  # replaced by an 8-digit sequence number
TEMPLATE = "onboarding_first_call"
RULE = "NoFirstApiCall"
STARTS_AT = "2026-11-22T20:04:34.529Z"
EMAIL_DOMAIN = "example.com"


def user_id(prefix: str, seq: int, index: int) -> str:
    return f"{prefix}-{seq:08d}-{index:04d}"


def email_for(user: str) -> str:
    return f"{user}@{EMAIL_DOMAIN}"


def alert(user: str, *, starts_at: str = STARTS_AT) -> dict:
    """One behavioral alert as Prometheus + Alertmanager produce it for the shipped rules."""
    return {
        "status": "firing",
        "labels": {
            "alertname": RULE,
            "email_template": TEMPLATE,
            "instance": "demo-api:8000",
            "job": "app",
            "plan": "free",
            "user_id": user,
            "email": email_for(user),
        },
        "annotations": {"summary": f"User {user} signed up but has not called the API yet"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=app_user_signup_timestamp_seconds"
                        "&g0.tab=1",
        "fingerprint": "6e7715455903b542",
    }


def notification(users: list[str]) -> dict:
    common = alert(users[0]) if len(users) == 1 else {"labels": {"alertname": RULE}}
    group = {"alertname": RULE, "user_id": users[0]} if len(users) == 1 else {"alertname": RULE}
    return {
        "receiver": "nudge",
        "status": "firing",
        "alerts": [alert(user) for user in users],
        "groupLabels": group,
        "commonLabels": common["labels"],
        "commonAnnotations": common.get("annotations", {}),
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": "{}:" + json.dumps(group, sort_keys=True),
        "truncatedAlerts": 0,
    }


def template(prefix: str, alerts_per_post: int) -> bytes:
    """A payload of `alerts_per_post` alerts whose user ids hold the SEQ placeholder."""
    placeholder = SEQ.decode()
    users = [f"{prefix}-{placeholder}-{index:04d}" for index in range(alerts_per_post)]
    return json.dumps(notification(users), separators=(",", ":")).encode()


def body(template_bytes: bytes, seq: int) -> bytes:
    return template_bytes.replace(SEQ, b"%08d" % seq)
