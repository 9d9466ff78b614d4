"""Fill a Nudge database with queued deliveries, and render the same emails without Nudge.

`prefill` goes through Nudge's own journal and decider, exactly what POST /webhook
commits, so the delivery worker finds the queue a burst of webhooks would leave.
`render_messages` builds the messages the delivery worker would send for those deliveries
(same template, context, headers), flattened to the bytes smtplib puts on the wire.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from app.alerts import parse_time
from app.config import load_config
from app.decider import Decider
from app.messages import build_message, message_id_for
from app.policy import AlertPolicy
from app.rendering import build_environment, render_email
from app.store import JournalEntry, open_store
from app.suppressions import ALL, unsubscribe_url
from benchmarks import payloads

CHUNK = 1000


def prefill(config: dict, prefix: str, count: int) -> None:
    """Queue `count` deliveries (distinct users) in the database of `config`: a SQLite file
    or a PostgreSQL URL."""
    nudge = load_config(data=config, environ={})
    store = open_store(nudge.database)
    store.migrate()
    decider = Decider(store, AlertPolicy.from_config(nudge))
    try:
        for start in range(0, count, CHUNK):
            users = [payloads.user_id(prefix, start // CHUNK, index)
                     for index in range(min(CHUNK, count - start))]
            notification = payloads.notification(users)
            store.append_notifications([JournalEntry(
                time.time(), notification["receiver"], notification["status"],
                notification["groupKey"], len(users), 0, json.dumps(notification))])
            decider.decide_all()
    finally:
        store.close_all()  # PostgreSQL: the pool's connections too


def render_messages(config: dict, prefix: str, count: int) -> list[tuple[str, str, bytes]]:
    """(sender, recipient, wire bytes) for the emails Nudge would send after `prefill`."""
    nudge = load_config(data=config, environ={})
    env = build_environment(nudge.templates_dir)
    key = nudge.resolved_secret_key()
    domain = "127.0.0.1"
    out = []
    for number in range(count):
        user = payloads.user_id(prefix, number // CHUNK, number % CHUNK)
        alert = payloads.alert(user)
        recipient = payloads.email_for(user)
        context = {
            "labels": alert["labels"],
            "annotations": alert["annotations"],
            "alert": {"status": "firing", "starts_at": parse_time(alert["startsAt"]),
                      "ends_at": None, "generator_url": alert["generatorURL"],
                      "fingerprint": alert["fingerprint"]},
            "rule": payloads.RULE,
            "user_id": user,
            "user": {},
            "recipient": recipient,
            "unsubscribe_url": unsubscribe_url(nudge.public_url, key, user, payloads.RULE),
            "external_url": "http://alertmanager:9093",
            "now": datetime.now(UTC),
        }
        rendered = render_email(env, payloads.TEMPLATE, context)
        message = build_message(
            sender=nudge.smtp_from, recipient=recipient, subject=rendered.subject,
            text=rendered.text, html=rendered.html,
            message_id=message_id_for(number + 1, domain),
            unsubscribe_url=unsubscribe_url(nudge.public_url, key, user, ALL),
        )
        out.append((message.sender, message.recipient, message.data))
    return out


def database_path(config: dict) -> Path:
    return Path(config["database"])
