"""Label values that senders control (the Alertmanager receiver, template names) are bounded:
a sender cycling through names cannot create unbounded time series."""

from __future__ import annotations

import json

from prometheus_client import REGISTRY

from app import metrics
from tests.conftest import fixture_bytes


def label_values(metric_name: str, label: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == metric_name and label in sample.labels:
                values[sample.labels[label]] = sample.value
    return values


def test_receiver_names_from_payloads_are_capped_and_folded_into_other(client, auth,
                                                                       monkeypatch):
    # As in a fresh process (the cap is per process; other tests' names are kept apart).
    monkeypatch.setattr(metrics.RECEIVERS, "_seen", set())
    notification = json.loads(fixture_bytes("firing-per-user.json"))
    before = label_values("nudge_notifications_received_total", "receiver").get("other", 0)
    names = [f"receiver-{n}" for n in range(metrics.MAX_LABEL_VALUES + 20)]
    names.append("r" * (metrics.MAX_LABEL_LENGTH + 1))  # too long to be a label value at all
    for name in names:
        notification["receiver"] = name
        response = client.post("/webhook", data=json.dumps(notification), headers=auth)
        assert response.status_code == 200
    received = label_values("nudge_notifications_received_total", "receiver")
    assert len([name for name in names if name in received]) == metrics.MAX_LABEL_VALUES
    assert received["other"] - before == 21
    assert "r" * (metrics.MAX_LABEL_LENGTH + 1) not in received
    # A receiver seen before the cap keeps its own series.
    kept = next(name for name in names if name in received)
    count = received[kept]
    notification["receiver"] = kept
    client.post("/webhook", data=json.dumps(notification), headers=auth)
    assert label_values("nudge_notifications_received_total", "receiver")[kept] == count + 1


def test_template_names_are_capped_across_the_email_metrics(monkeypatch):
    monkeypatch.setattr(metrics.TEMPLATES, "_seen", set())
    names = [f"template-{n}" for n in range(metrics.MAX_LABEL_VALUES + 10)]
    for n in range(metrics.MAX_LABEL_VALUES + 10):
        metrics.EMAILS_SENT.labels(f"template-{n}").inc()
        metrics.EMAILS_FAILED.labels(f"template-{n}", "no_recipient").inc()
        metrics.EMAILS_DEAD.labels(template=f"template-{n}").inc()
    for name in ("nudge_emails_sent_total", "nudge_emails_failed_total",
                 "nudge_emails_dead_total"):
        templates = label_values(name, "template")
        assert len([t for t in names if t in templates]) == metrics.MAX_LABEL_VALUES, name
        assert "other" in templates, name
    # Labels that are not sender-controlled pass through unchanged.
    reasons = {s.labels.get("reason") for f in REGISTRY.collect() for s in f.samples
               if s.name == "nudge_emails_failed_total"}
    assert "no_recipient" in reasons and "other" not in reasons
