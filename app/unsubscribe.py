"""GET/POST /unsubscribe/<token>: a confirmation page, and RFC 8058 one-click unsubscribe."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, current_app, render_template_string, request

from app.storage import store
from app.store import StorageError
from app.suppressions import ALL, InvalidToken, make_token, read_token

log = logging.getLogger("nudge.unsubscribe")
blueprint = Blueprint("unsubscribe", __name__)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{ title }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;
color:#222}button{font-size:1rem;padding:.5rem 1rem;margin:.25rem 0}</style></head>
<body><h1>{{ title }}</h1><p>{{ message }}</p>
{% if forms %}{% for form in forms %}
<form method="post" action="{{ form.action }}"><button type="submit">{{ form.label }}</button></form>
{% endfor %}{% endif %}
</body></html>"""


def _page(title: str, message: str, status: int = 200, forms=()):
    return render_template_string(PAGE, title=title, message=message, forms=forms), status


def _scope_words(scope: str) -> str:
    return "all emails from us" if scope == ALL else f"“{scope}” emails"


@blueprint.get("/unsubscribe/<token>")
def confirm(token: str):
    secret = current_app.config["SECRET_KEY"]
    try:
        user_id, scope = read_token(secret, token)
    except InvalidToken:
        return _page("Link not valid", "This unsubscribe link is broken or was altered. "
                     "Use the link from the email exactly as it was sent.", 400)
    forms = [{"action": request.path, "label": f"Unsubscribe from {_scope_words(scope)}"}]
    if scope != ALL:
        forms.append({
            "action": f"/unsubscribe/{make_token(secret, user_id, ALL)}",
            "label": "Unsubscribe from all emails from us",
        })
    return _page("Unsubscribe", "Confirm that you want to stop receiving these emails.",
                 forms=forms)


@blueprint.post("/unsubscribe/<token>")
def unsubscribe(token: str):
    try:
        user_id, scope = read_token(current_app.config["SECRET_KEY"], token)
    except InvalidToken:
        return _page("Link not valid", "This unsubscribe link is broken or was altered.", 400)
    one_click = request.form.get("List-Unsubscribe") == "One-Click"
    try:
        store().add_suppression(user_id, scope, "one-click" if one_click else "link", time.time())
    except StorageError as exc:
        log.error("could not record unsubscribe of user=%s scope=%s: %s", user_id, scope, exc)
        return _page("Please try again", "We could not record your request just now. "
                     "Please try again in a minute.", 503)
    log.info("unsubscribed user=%s scope=%s via %s", user_id, scope,
             "one-click" if one_click else "link")
    return _page("You are unsubscribed", f"You will not receive {_scope_words(scope)} any more.")
