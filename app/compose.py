"""The one way an email is made: template context from an alert, then subject, bodies and
MIME message. Delivery, `nudge preview`, `nudge send-test` and `nudge check` all come through
here, so what a preview shows is what a user receives."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2

from app.alerts import parse_time
from app.messages import OutgoingEmail, build_message
from app.rendering import RenderedEmail, render_email


def alert_context(
    alert: dict[str, Any],
    *,
    kind: str,
    rule: str,
    user_id: str,
    user: dict[str, Any],
    recipient: str,
    unsubscribe_url: str,
    external_url: str,
    now: datetime,
) -> dict[str, Any]:
    """The template context (README "Template context") for one alert, as stored from the
    webhook (`labels`, `annotations`, `startsAt`, `endsAt`, `generatorURL`, `fingerprint`)."""
    ends_at = alert.get("endsAt")
    return {
        "labels": dict(alert.get("labels", {})),
        "annotations": dict(alert.get("annotations", {})),
        "alert": {
            "status": kind,
            "starts_at": parse_time(alert["startsAt"]),
            "ends_at": parse_time(ends_at) if ends_at and not ends_at.startswith("0001-")
            else None,
            "generator_url": alert.get("generatorURL", ""),
            "fingerprint": alert.get("fingerprint", ""),
        },
        "rule": rule,
        "user_id": user_id,
        "user": user,
        "recipient": recipient,
        "unsubscribe_url": unsubscribe_url,
        "external_url": external_url,
        "now": now,
    }


@dataclass(frozen=True)
class Composed:
    rendered: RenderedEmail
    email: OutgoingEmail

    @property
    def message(self):
        """The message as a mail client parses it (previews)."""
        return self.email.message


def compose(
    env: jinja2.Environment,
    template: str,
    context: dict[str, Any],
    *,
    resolved: bool,
    sender: str,
    message_id: str,
    list_unsubscribe_url: str,
    reply_to: str | None = None,
    list_id: str | None = None,
) -> Composed:
    """Render `template` with `context` and build the message to `context["recipient"]`.

    Raises TemplateError (the template) or ValueError (a header the message cannot carry)."""
    rendered = render_email(env, template, context, resolved=resolved)
    outgoing = build_message(
        sender=sender,
        recipient=context["recipient"],
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=message_id,
        unsubscribe_url=list_unsubscribe_url,
        reply_to=reply_to,
        list_id=list_id,
    )
    return Composed(rendered, outgoing)
