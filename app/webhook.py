"""POST /webhook: Alertmanager's webhook receiver.

Journal-first: a notification that is whole and valid is appended to the journal and answered
200 once that append is durable; the decider (in the delivery worker) turns its alerts into
decisions and deliveries moments later. Answers follow Alertmanager's retry rules (it
retries 5xx and connection errors, never 4xx): 400 for a body that will never be valid;
401 for bad credentials; 413 over the size limit; 503 when storage is unavailable.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from app import metrics
from app.alerts import PayloadError, check_notification, parse_json
from app.config import Config
from app.store import JournalEntry, StorageError

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
        notification = check_notification(parse_json(body), body)
        try:
            body.decode("utf-8")  # journaled as received, so it must be UTF-8 as it is
        except UnicodeDecodeError:  # raw surrogates, which json.loads lets through
            raise PayloadError("body is not UTF-8 text") from None
    except PayloadError as exc:
        log.warning("rejected notification: %s", exc)
        return _answer(400, str(exc))

    entry = JournalEntry(
        received_at=time.time(),
        receiver=notification.receiver,
        status=notification.status,
        group_key=notification.group_key,
        alert_count=notification.alert_count,
        truncated_alerts=notification.truncated_alerts,
        body=body,
    )
    try:
        notification_id = current_app.extensions["nudge_journal"].append(entry)
    except StorageError as exc:
        log.error("storage unavailable, answering 503 so Alertmanager retries: %s", exc)
        return _answer(503, "storage unavailable, retry later")

    metrics.NOTIFICATIONS.labels(notification.receiver).inc()
    log.debug("accepted notification %d from receiver=%s group=%s: %d alerts (%s)",
              notification_id, notification.receiver, notification.group_key,
              notification.alert_count, notification.status)
    if notification.truncated_alerts:
        metrics.TRUNCATED_ALERTS.labels(notification.receiver).inc(notification.truncated_alerts)
        log.warning(
            "Alertmanager dropped %d alerts of group %s (receiver %s has max_alerts set): those "
            "users get no email; remove max_alerts from the Nudge receiver",
            notification.truncated_alerts,
            notification.group_key,
            notification.receiver,
        )
    return _answer(200, None, notification_id=notification_id)


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
    payload = ({"status": "accepted", **fields} if error is None
               else {"status": "error", "error": error})
    response = jsonify(payload)
    response.headers.update(headers or {})
    return response, code
