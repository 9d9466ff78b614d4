"""/unsubscribe/<token>: the recipient's preference page, and RFC 8058 one-click unsubscribe.

GET shows the page and never changes anything (mail scanners follow links). Changes are
POSTs to the same signed URL: the token is the only authority (no login, no cookie), so a
page elsewhere cannot make a browser change someone's preferences without the link itself,
which is what RFC 8058's one-click POST relies on too. The page posts plain HTML forms (no
JavaScript), names categories by opaque keys (category names can be alertnames, which the
page never shows), and links only to itself.

POST bodies:
- `List-Unsubscribe=One-Click` (a mail client): stop what the link is about, the email's
  category (or, for a link sent before categories, its rule or "all");
- `stop=<key>` (the page): stop that category, the "Other emails" group, or `all`;
- empty (the confirmation form of pages served before categories): as one-click.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, current_app, render_template, request, url_for

from app.categories import (
    OTHER_KEY,
    OTHER_TITLE,
    Choice,
    KnownCategory,
    category_of,
    known_categories,
    preference_choices,
)
from app.category_catalog import CategoryCatalog
from app.storage import store
from app.store import StorageError
from app.suppressions import ALL, InvalidToken, Link, read_link

log = logging.getLogger("nudge.unsubscribe")
blueprint = Blueprint("unsubscribe", __name__, template_folder="templates")

# Suppressions a recipient made, and may undo on the page; others (`nudge suppress`, "cli")
# are the operator's.
RECIPIENT_SOURCES = ("page", "link", "one-click")

HEADERS = {
    "Cache-Control": "no-store",
    # The URL is the user's key: no Referer with it, no framing, forms only to ourselves.
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


def _catalog() -> CategoryCatalog:
    catalog = current_app.extensions.get("nudge_category_catalog")
    if catalog is None:
        catalog = current_app.extensions["nudge_category_catalog"] = CategoryCatalog(
            current_app.config["NUDGE"])
    return catalog


def _render(token: str | None, heading: str, status: int = 200, **context):
    action = url_for("unsubscribe.preferences", token=token) if token else None
    context.setdefault("choices", None)
    html = render_template("unsubscribe/page.html", heading=heading, action=action, **context)
    return html, status, HEADERS


def _invalid_link():
    return _render(None, "Link not valid", 400,
                   problem="This link is broken or was altered. Use the link from the email "
                           "exactly as it was sent.")


def _unavailable(link: Link, exc: StorageError):
    log.error("preference page for user=%s: the database is unavailable: %s", link.user_id, exc)
    return _render(None, "Please try again", 503,
                   problem="We could not load or record your choice just now. "
                           "Please try again in a minute.")


def _own_category(link: Link, known_pairs: list[tuple[str, dict[str, str]]]) -> str | None:
    """The category the link is about: its own, or (an old link) that of its rule."""
    if link.category is not None:
        return link.category
    if link.scope in (None, ALL):
        return None
    for rule, values in known_pairs:
        if rule == link.scope:
            return category_of(rule, values)
    return link.scope  # a rule no longer known: its default category


def _state(link: Link):
    """(choices, all stopped?) of the page for this link's user."""
    db = store()
    pairs = _catalog().for_user(db, link.user_id)
    own = _own_category(link, pairs)
    known = known_categories(pairs)
    if own is not None and own not in known:
        known[own] = KnownCategory(own, None)
    rows = db.list_category_suppressions(link.user_id)
    stopped = {row["category"] for row in rows}
    theirs = {row["category"] for row in rows if row["source"] in RECIPIENT_SOURCES}
    everything = [row for row in db.list_suppressions(link.user_id) if row["scope"] == ALL]
    all_stopped = None
    if everything:
        all_stopped = "theirs" if everything[0]["source"] in RECIPIENT_SOURCES else "operator"
    return preference_choices(known, stopped, own, theirs), all_stopped


def _read(token: str) -> Link | None:
    try:
        return read_link(current_app.config["SECRET_KEY"], token)
    except InvalidToken:
        return None


@blueprint.get("/unsubscribe/<token>")
def preferences(token: str):
    link = _read(token)
    if link is None:
        return _invalid_link()
    try:
        choices, all_stopped = _state(link)
    except StorageError as exc:
        return _unavailable(link, exc)
    return _render(token, "Email preferences", choices=choices, all_stopped=all_stopped)


@blueprint.post("/unsubscribe/<token>")
def unsubscribe(token: str):
    link = _read(token)
    if link is None:
        return _invalid_link()
    key = request.form.get("stop")
    resume = request.form.get("resume")
    one_click = request.form.get("List-Unsubscribe") == "One-Click"
    try:
        if resume is not None:
            words = _resume_chosen(link, resume)
            confirmation = f"Done: you will receive {words} again."
        elif key is None:
            words = _stop_own(link, "one-click" if one_click else "link")
            confirmation = f"Done: you will not receive {words} any more."
        else:
            words = _stop_chosen(link, key)
            confirmation = f"Done: you will not receive {words} any more."
        if words is None:
            choices, all_stopped = _state(link)
            return _render(token, "Email preferences", 400, choices=choices,
                           all_stopped=all_stopped,
                           problem="That choice is no longer offered. Nothing was changed: "
                                   "choose again below.")
        choices, all_stopped = _state(link)
    except StorageError as exc:
        return _unavailable(link, exc)
    heading = "Email preferences" if resume is not None else "You are unsubscribed"
    return _render(token, heading, choices=choices, all_stopped=all_stopped,
                   confirmation=confirmation)


def _stop_own(link: Link, source: str) -> str:
    """One-click (or a pre-category page's form): stop what the link itself is about."""
    now = time.time()
    if link.category is not None:
        store().add_category_suppression(link.user_id, link.category, source, now)
        log.info("unsubscribed user=%s category=%s via %s", link.user_id, link.category, source)
        return _category_words(link)
    store().add_suppression(link.user_id, link.scope, source, now)
    log.info("unsubscribed user=%s scope=%s via %s", link.user_id, link.scope, source)
    return "any emails from us" if link.scope == ALL else "these emails"


def _category_words(link: Link) -> str:
    # Under "Other emails" the link stopped one category of several: name none of them.
    for choice in _state(link)[0]:
        if choice.own and choice.key != OTHER_KEY:
            return f"“{choice.title}” emails"
    return "these emails"


def _stop_chosen(link: Link, key: str) -> str | None:
    """A button of the page: `all`, or the key of one of the choices it offers."""
    now = time.time()
    if key == "all":
        store().add_suppression(link.user_id, ALL, "page", now)
        log.info("unsubscribed user=%s scope=%s via page", link.user_id, ALL)
        return "any emails from us"
    choices, _ = _state(link)
    chosen: Choice | None = next((c for c in choices if c.key == key), None)
    if chosen is None:
        return None
    for category in chosen.categories:
        store().add_category_suppression(link.user_id, category, "page", now)
    log.info("unsubscribed user=%s categories=%s via page", link.user_id,
             ",".join(chosen.categories))
    return f"“{chosen.title}” emails" if chosen.title != OTHER_TITLE else "the other emails"



def _resume_chosen(link: Link, key: str) -> str | None:
    """Undo a stop the recipient made: `all`, or a stopped choice the page offers to resume."""
    choices, all_stopped = _state(link)
    if key == "all":
        if all_stopped != "theirs":
            return None
        store().remove_suppression(link.user_id, ALL)
        log.info("resubscribed user=%s scope=%s via page", link.user_id, ALL)
        return "our emails"
    chosen = next((c for c in choices if c.key == key and c.resumable), None)
    if chosen is None:
        return None
    for category in chosen.categories:
        store().remove_category_suppression(link.user_id, category)
    log.info("resubscribed user=%s categories=%s via page", link.user_id,
             ",".join(chosen.categories))
    return f"“{chosen.title}” emails"
