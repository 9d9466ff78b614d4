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

# gunicorn reports a broken chunked encoding (and bad trailers) with its own exceptions.
from gunicorn.http.errors import ParseException as ServerParseError

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
        body = read_body(config.max_body_bytes)
    except BodyTooLarge:
        return _answer(413, f"body larger than webhook.max_body_bytes ({config.max_body_bytes})",
                       CLOSE)
    except BrokenFraming as exc:
        log.warning("rejected request: %s", exc)
        return _answer(400, str(exc), CLOSE)
    try:
        try:
            # Journaled as received, so it must be UTF-8 as it is. Decoded before parsing:
            # json.loads would guess UTF-16/32 for bytes, and let raw surrogates through.
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("body is not UTF-8 text") from None
        notification = check_notification(parse_json(text), body)
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
    metrics.WEBHOOK_REQUESTS.labels("200").inc()
    # The answer to every accepted POST, written directly: jsonify's generic encoder was a
    # measurable share of a one-alert POST's CPU.
    return Response(f'{{"status":"accepted","notification_id":{int(notification_id)}}}\n',
                    mimetype="application/json"), 200


class BodyTooLarge(Exception):
    pass


class BrokenFraming(Exception):
    """The body did not arrive as its framing said (a broken chunked encoding, fewer bytes
    than Content-Length): the request is malformed, never a server error."""


# After a 413 or broken framing the rest of the connection cannot be trusted (or read).
CLOSE = {"Connection": "close"}
READ_STEP = 64 * 1024


def read_body(limit: int) -> bytes:
    """The whole body, at most `limit` bytes, exactly as the client framed it.

    Reads the server's input stream itself instead of Flask's `get_data`, which for a chunked
    body stops silently at the limit (a truncated body that then fails as "malformed JSON")
    and lets framing errors escape as 500s."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge()
    environ = request.environ
    if declared is None and not environ.get("wsgi.input_terminated"):
        return b""  # no length and a server that does not frame bodies: there is no body
    wanted = limit + 1 if declared is None else declared
    stream = environ["wsgi.input"]
    pieces: list[bytes] = []
    received = 0
    try:
        while received < wanted:
            piece = stream.read(min(READ_STEP, wanted - received))
            if not piece:
                break
            pieces.append(piece)
            received += len(piece)
    except (OSError, ValueError, ServerParseError) as exc:
        # gunicorn's messages describe the framing ("Invalid chunk size: ..."): keep them short.
        detail = str(exc)[:80] or type(exc).__name__
        raise BrokenFraming(f"malformed HTTP body ({detail})") from None
    if declared is None and received > limit:
        raise BodyTooLarge()
    if declared is not None and received < declared:
        raise BrokenFraming(f"body shorter than its Content-Length ({received} of {declared} "
                            f"bytes arrived)")
    return b"".join(pieces)


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
