"""POST /webhook: Alertmanager's webhook receiver.

Answers follow Alertmanager's retry rules (it retries 5xx and connection errors, never 4xx):
200 only once the notification is committed; 400 for a body that will never be valid;
401 for bad credentials; 413 over the size limit; 503 when storage is unavailable.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import sqlite3
import time

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from app import metrics
from app.alerts import PayloadError, parse_json, parse_notification
from app.config import Config
from app.db import StorageError
from app.ingest import QUEUED, store_notification
from app.storage import database

log = logging.getLogger("nudge.webhook")
blueprint = Blueprint("webhook", __name__)


@blueprint.post("/webhook")
def receive() -> tuple[Response, int]:
    config: Config = current_app.config["NUDGE"]
    if not authorized(config, request.headers.get("Authorization", "")):
        return _answer(401, "missing or wrong credentials", www_authenticate(config))
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        return _answer(413, f"body larger than webhook.max_body_bytes ({config.max_body_bytes})")
    except ClientDisconnected:
        return _answer(400, "client disconnected before sending the whole body")
    try:
        notification = parse_notification(parse_json(body))
        text = body.decode("utf-8")
    except PayloadError as exc:
        log.warning("rejected notification: %s", exc)
        return _answer(400, str(exc))

    try:
        result = store_notification(
            database(), text, notification, current_app.extensions["nudge_policy"], time.time()
        )
    except (StorageError, sqlite3.Error) as exc:
        log.error("storage unavailable, answering 503 so Alertmanager retries: %s", exc)
        return _answer(503, "storage unavailable, retry later")

    metrics.NOTIFICATIONS.labels(notification.receiver).inc()
    log.info(
        "notification %d from receiver=%s group=%s: %d alerts (%s)",
        result.notification_id,
        notification.receiver,
        notification.group_key,
        len(notification.alerts),
        notification.status,
    )
    if notification.truncated_alerts:
        metrics.TRUNCATED_ALERTS.labels(notification.receiver).inc(notification.truncated_alerts)
        log.warning(
            "Alertmanager dropped %d alerts of group %s (receiver %s has max_alerts set): those "
            "users get no email; remove max_alerts from the Nudge receiver",
            notification.truncated_alerts,
            notification.group_key,
            notification.receiver,
        )
    counts = {"queued": 0, "duplicate": 0, "skipped": 0}
    per_reason: dict[tuple[str, str], int] = {}
    for decision in result.decisions:
        counts[decision.outcome] += 1
        key = (decision.outcome, decision.reason)
        per_reason[key] = per_reason.get(key, 0) + 1
        log.info(
            "decision rule=%s user=%s outcome=%s reason=%s%s: %s",
            decision.rule,
            decision.user_id,
            decision.outcome,
            decision.reason,
            f" delivery={decision.delivery_id}" if decision.outcome == QUEUED else "",
            decision.detail,
        )
    # One increment per (outcome, reason), not per alert: a 1,000-alert group is one update.
    for (outcome, reason), count in per_reason.items():
        metrics.ALERT_DECISIONS.labels(outcome, reason).inc(count)
    return _answer(200, None, notification_id=result.notification_id, **counts)


def authorized(config: Config, header: str) -> bool:
    if not (config.webhook_token or config.webhook_basic_auth):
        return config.allow_unauthenticated
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    credentials = credentials.strip()
    if scheme == "bearer" and config.webhook_token:
        return hmac.compare_digest(credentials.encode(), config.webhook_token.encode())
    if scheme == "basic" and config.webhook_basic_auth:
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return False
        username, password = config.webhook_basic_auth
        expected = f"{username}:{password}".encode()
        return hmac.compare_digest(decoded, expected)
    return False


def www_authenticate(config: Config) -> dict[str, str]:
    schemes = []
    if config.webhook_token:
        schemes.append('Bearer realm="nudge"')
    if config.webhook_basic_auth:
        schemes.append('Basic realm="nudge"')
    return {"WWW-Authenticate": ", ".join(schemes)} if schemes else {}


def _answer(code: int, error: str | None, headers: dict | None = None, **fields):
    metrics.WEBHOOK_REQUESTS.labels(str(code)).inc()
    payload = {"status": "ok", **fields} if error is None else {"status": "error", "error": error}
    response = jsonify(payload)
    response.headers.update(headers or {})
    return response, code
