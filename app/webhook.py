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
import json
import logging
import time
from http import HTTPStatus

from flask import Blueprint, Response, current_app, request

# gunicorn reports a broken chunked encoding (and bad trailers) with its own exceptions.
from gunicorn.http.errors import ParseException as ServerParseError

from app import metrics
from app.alerts import PayloadError, check_body
from app.config import Config
from app.store import JournalEntry, StorageError

log = logging.getLogger("nudge.webhook")
blueprint = Blueprint("webhook", __name__)


@blueprint.post("/webhook")
def receive() -> Response:
    """Through Flask (the test client, or an app without the fast path)."""
    status, headers, body = accept(request.environ, current_app.config["NUDGE"],
                                   current_app.extensions["nudge_journal"])
    return Response(body, status, headers)


class FastWebhook:
    """WSGI middleware answering POST /webhook without Flask's routing and request context.

    Alertmanager's one-POST-per-user bursts make the receiver's per-request overhead the limit;
    `accept` needs nothing Flask provides. Everything else (and /webhook's other methods, for
    their 405) goes to the Flask app."""

    def __init__(self, app, wsgi_app):
        self.wsgi_app = wsgi_app
        self.config: Config = app.config["NUDGE"]
        self.journal = app.extensions["nudge_journal"]

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != "/webhook" or environ.get("REQUEST_METHOD") != "POST":
            return self.wsgi_app(environ, start_response)
        try:
            status, headers, body = accept(environ, self.config, self.journal)
        except Exception:  # noqa: BLE001 - as Flask would: a 500, logged, never a dropped socket
            log.exception("webhook request failed")
            status, headers, body = _answer(500, "internal error")
        start_response(f"{status} {HTTPStatus(status).phrase}",
                       [("Content-Type", "application/json"),
                        ("Content-Length", str(len(body))), *headers.items()])
        return [body]


def accept(environ: dict, config: Config, journal) -> tuple[int, dict[str, str], bytes]:
    """Authenticate, read, check and journal one notification: (status, headers, JSON body)."""
    if not authorized(config, environ.get("HTTP_AUTHORIZATION", "")):
        return _answer(401, "missing or wrong credentials", www_authenticate(config))
    try:
        body = read_body(environ, config.max_body_bytes)
    except BodyTooLarge:
        return _answer(413, f"body larger than webhook.max_body_bytes ({config.max_body_bytes})",
                       CLOSE)
    except BrokenFraming as exc:
        log.warning("rejected request: %s", exc)
        return _answer(400, str(exc), CLOSE)
    try:
        # Journaled as received, so it must be UTF-8 as it is (check_body makes sure).
        notification = check_body(body)
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
        notification_id = journal.append(entry)
    except StorageError as exc:
        log.error("storage unavailable, answering 503 so Alertmanager retries: %s", exc)
        return _answer(503, "storage unavailable, retry later")

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
    return 200, {}, b'{"status":"accepted","notification_id":%d}\n' % int(notification_id)


class BodyTooLarge(Exception):
    pass


class BrokenFraming(Exception):
    """The body did not arrive as its framing said (a broken chunked encoding, fewer bytes
    than Content-Length): the request is malformed, never a server error."""


# After a 413 or broken framing the rest of the connection cannot be trusted (or read).
CLOSE = {"Connection": "close"}
READ_STEP = 64 * 1024


def read_body(environ: dict, limit: int) -> bytes:
    """The whole body, at most `limit` bytes, exactly as the client framed it.

    Reads the server's input stream itself instead of Flask's `get_data`, which for a chunked
    body stops silently at the limit (a truncated body that then fails as "malformed JSON")
    and lets framing errors escape as 500s."""
    declared = _content_length(environ)
    if declared is not None and declared > limit:
        raise BodyTooLarge()
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


def _content_length(environ: dict) -> int | None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    return length if length >= 0 else None


def _answer(code: int, error: str, headers: dict | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    metrics.WEBHOOK_REQUESTS.labels(str(code)).inc()
    body = json.dumps({"status": "error", "error": error}).encode() + b"\n"
    return code, dict(headers or {}), body
