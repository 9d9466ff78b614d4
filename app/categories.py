"""Categories: how recipients see and stop Nudge's emails, as pure functions over plain data.

Per rule, the annotation `nudge_category` (default: the alertname) groups rules for
unsubscribing and `nudge_title` is what recipients read (default: the category). Alertnames
are internal: a title is never taken from one. A category that has only its alertname to go
by (no `nudge_category`, no `nudge_title`) is listed under OTHER_TITLE on the preference page,
together with every other such category.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

CATEGORY_ANNOTATION = "nudge_category"
TITLE_ANNOTATION = "nudge_title"
OTHER_TITLE = "Other emails"
OTHER_KEY = "other"
MAX_CATEGORY_LENGTH = 64
MAX_TITLE_LENGTH = 80


def _one_line(value: object) -> str:
    # Annotations arrive as Prometheus rendered them: a stray line break or run of spaces
    # must not fail an email (a header cannot hold it) nor split one category in two.
    return " ".join(str(value).split())


def category_of(rule: str, annotations: Mapping[str, str]) -> str:
    """The category of an email of `rule`: its `nudge_category`, else the rule's name."""
    return _one_line(annotations.get(CATEGORY_ANNOTATION, "")) or rule


def title_of(rule: str, annotations: Mapping[str, str]) -> str | None:
    """What recipients may read as the category's name; None when only the alertname is
    known (no title, and no category of its own)."""
    title = _one_line(annotations.get(TITLE_ANNOTATION, ""))
    if title:
        return title
    category = category_of(rule, annotations)
    return category if category != rule else None


# --- validation, for `nudge check` --------------------------------------------------------------


def _text_problem(value: str, what: str, limit: int) -> str | None:
    text = value.strip()
    if not text:
        return f"{what} is empty"
    if "{{" in text or "{%" in text:
        return (f"{what} must be fixed text, not a template ({text!r}): the preference page "
                f"lists each rule's {what} before any alert fires")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        return f"{what} must be one line of text without control characters"
    if len(text) > limit:
        return f"{what} is {len(text)} characters long (at most {limit})"
    return None


def category_problem(value: str) -> str | None:
    return _text_problem(value, CATEGORY_ANNOTATION, MAX_CATEGORY_LENGTH)


def title_problem(value: str) -> str | None:
    return _text_problem(value, TITLE_ANNOTATION, MAX_TITLE_LENGTH)


# --- headers ------------------------------------------------------------------------------------


def list_label(category: str) -> str:
    """The category as an RFC 2919 list-label: lower-case letters, digits and hyphens. A
    category that does not fit as it is gets a short hash, so distinct ones stay distinct."""
    slug = re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-")[:40].strip("-")
    if slug and slug == category:
        return slug
    digest = hashlib.sha256(category.encode()).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else f"category-{digest}"


@lru_cache(maxsize=256)  # the same few categories in every email
def list_id(category: str, title: str | None, domain: str) -> str:
    """The List-Id header value (RFC 2919) of a category's emails: `"Title" <label.domain>`.

    A domain that is not a host name (an IP address, or none) gives way to "localhost", as
    RFC 2919 asks of lists without a domain of their own."""
    namespace = domain.lower().strip(".") if _is_host_name(domain) else "localhost"
    value = f"<{list_label(category)}.{namespace}>"
    if not title:
        return value
    title = title[:MAX_TITLE_LENGTH]
    if title.isascii():
        phrase = '"' + title.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        phrase = title  # the message encodes it (RFC 2047), which a quoted-string may not hold
    return f"{phrase} {value}"


def email_list_id(rule: str, annotations: Mapping[str, str], domain: str) -> str:
    """The List-Id of an email of `rule` with these (the alert's) annotations."""
    return list_id(category_of(rule, annotations), title_of(rule, annotations), domain)


@lru_cache(maxsize=64)  # the public URL's host, asked for every email
def _is_host_name(domain: str) -> bool:
    try:
        ipaddress.ip_address(domain)
        return False
    except ValueError:
        return bool(re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", domain or ""))


# --- the preference page ------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownCategory:
    name: str
    title: str | None  # None: shown under OTHER_TITLE


def known_categories(rule_annotations: Iterable[tuple[str, Mapping[str, str]]]
                     ) -> dict[str, KnownCategory]:
    """Categories of (rule, annotations) pairs; where rules of one category disagree on the
    title, the first one given wins (give the sources in order of preference)."""
    known: dict[str, KnownCategory] = {}
    for rule, values in rule_annotations:
        name = category_of(rule, values)
        title = title_of(rule, values)
        current = known.get(name)
        if current is None or (current.title is None and title is not None):
            known[name] = KnownCategory(name, title)
    return known


@dataclass(frozen=True)
class Choice:
    """One line of the preference page: a title and the categories it stops."""

    key: str  # the form value: never a category name (those can be alertnames)
    title: str
    categories: tuple[str, ...]
    stopped: bool
    own: bool  # the category of the email the link came from
    resumable: bool = False  # stopped by the recipient (not by an operator): they may undo it


def category_key(category: str) -> str:
    return "c" + hashlib.sha256(category.encode()).hexdigest()[:16]


def preference_choices(known: Mapping[str, KnownCategory], stopped: set[str],
                       own: str | None, stopped_by_recipient: set[str] = frozenset()
                       ) -> list[Choice]:
    """The page's lines: titled categories by title, then one OTHER_TITLE line for the rest.
    `stopped_by_recipient`: the stopped categories the recipient stopped themselves (an
    operator's `nudge suppress` is not theirs to undo)."""
    def choice(key: str, title: str, names: tuple[str, ...]) -> Choice:
        is_stopped = all(name in stopped for name in names)
        return Choice(key, title, names, is_stopped, own in names,
                      is_stopped and all(name in stopped_by_recipient for name in names))

    titled = sorted((c for c in known.values() if c.title is not None),
                    key=lambda c: (c.title.casefold(), c.name))
    choices = [choice(category_key(c.name), c.title, (c.name,)) for c in titled]
    untitled = tuple(sorted(c.name for c in known.values() if c.title is None))
    if untitled:
        choices.append(choice(OTHER_KEY, OTHER_TITLE, untitled))
    return choices
