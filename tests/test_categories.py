"""Categories as pure functions: defaults, titles never from alert names, List-Id, the page's
choices, and the checks `nudge check` runs on the annotations."""

from __future__ import annotations

import email
import email.policy
import re

import pytest

from app.categories import (
    OTHER_TITLE,
    category_of,
    category_problem,
    known_categories,
    list_id,
    list_label,
    preference_choices,
    title_of,
    title_problem,
)
from app.messages import build_message


def test_category_defaults_to_the_alertname_and_title_to_the_category():
    assert category_of("QuotaNearlyExhausted", {}) == "QuotaNearlyExhausted"
    assert category_of("QuotaNearlyExhausted", {"nudge_category": " usage "}) == "usage"
    assert category_of("QuotaNearlyExhausted", {"nudge_category": "  "}) == "QuotaNearlyExhausted"
    assert title_of("QuotaNearlyExhausted", {"nudge_category": "usage"}) == "usage"
    assert title_of("Q", {"nudge_category": "usage", "nudge_title": "Usage & quota"}) == (
        "Usage & quota")
    # Only an alertname to go by: no title (the page never shows alert names).
    assert title_of("QuotaNearlyExhausted", {}) is None
    assert title_of("QuotaNearlyExhausted", {"nudge_category": "QuotaNearlyExhausted"}) is None


def test_whatever_prometheus_renders_still_makes_a_sendable_email():
    annotations = {"nudge_category": " usage\n and  quota ", "nudge_title": "Usage\r\nand quota" * 30}
    assert category_of("R", annotations) == "usage and quota"
    value = list_id(category_of("R", annotations), title_of("R", annotations), "example.com")
    build_message(sender="a@example.com", recipient="b@example.com", subject="s", text="t",
                  html=None, message_id="<1@example.com>",
                  unsubscribe_url="https://nudge.example.com/unsubscribe/x", list_id=value)


def test_list_label_keeps_simple_names_and_keeps_distinct_ones_distinct():
    assert list_label("billing") == "billing"
    assert list_label("product-news") == "product-news"
    labels = {list_label(c) for c in ("Billing", "billing", "BILLING", "Quota & usage", "ü", "")}
    assert len(labels) == 6
    for label in labels:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", label), label


@pytest.mark.parametrize("title", [None, "Billing", 'Say "hi" \\ there', "Über uns – Neuigkeiten"])
def test_list_id_is_rfc2919_and_survives_a_real_message(title):
    value = list_id("Quota & usage", title, "nudge.example.com")
    assert re.search(r"<quota-usage-[0-9a-f]{8}\.nudge\.example\.com>$", value)
    message = build_message(sender="a@example.com", recipient="b@example.com", subject="s",
                            text="t", html=None, message_id="<1@example.com>",
                            unsubscribe_url="https://nudge.example.com/unsubscribe/x",
                            list_id=value)
    wire = message.as_bytes()
    assert wire.isascii()  # a non-ASCII title travels as RFC 2047 encoded words
    parsed = email.message_from_bytes(wire, policy=email.policy.default)
    header = str(parsed["List-Id"])
    assert header.endswith("<quota-usage-" + value.split("<quota-usage-")[1])
    if title:
        assert title.replace("\\", "").replace('"', "") in header.replace("\\", "").replace(
            '"', "")


def test_list_id_namespace_is_localhost_without_a_host_name():
    assert list_id("billing", None, "127.0.0.1") == "<billing.localhost>"
    assert list_id("billing", None, "") == "<billing.localhost>"


def test_build_message_refuses_a_list_id_that_is_not_one():
    with pytest.raises(ValueError, match="List-Id"):
        build_message(sender="a@example.com", recipient="b@example.com", subject="s", text="t",
                      html=None, message_id="<1@example.com>",
                      unsubscribe_url="https://nudge.example.com/unsubscribe/x",
                      list_id="no angle brackets")


def test_known_categories_prefer_the_first_title_given():
    known = known_categories([
        ("A", {"nudge_category": "onboarding", "nudge_title": "Getting started"}),
        ("B", {"nudge_category": "onboarding", "nudge_title": "Old title"}),
        ("C", {}),
        ("C", {"nudge_title": "Later titled"}),
    ])
    assert known["onboarding"].title == "Getting started"
    assert known["C"].title == "Later titled"  # a title beats none


def test_choices_titled_first_then_one_other_line_for_alertname_only_categories():
    known = known_categories([("Zed", {"nudge_title": "zebra news"}), ("Q", {}), ("P", {}),
                              ("A", {"nudge_category": "Alpha"})])
    choices = preference_choices(known, stopped={"P"}, own="Q")
    assert [c.title for c in choices] == ["Alpha", "zebra news", OTHER_TITLE]
    other = choices[-1]
    assert other.categories == ("P", "Q") and other.own and not other.stopped
    assert preference_choices(known, {"P", "Q"}, None)[-1].stopped
    assert len({c.key for c in choices}) == 3
    for choice in choices:  # keys never carry a category name
        assert not any(name in choice.key for name in ("Zed", "Q", "P", "Alpha"))


@pytest.mark.parametrize("value, problem", [
    ("billing", None),
    ("Getting started", None),
    ("", "is empty"),
    ("{{ $labels.plan }}", "fixed text, not a template"),
    ("a\tb", "control characters"),
    ("x" * 65, "at most 64"),
])
def test_category_problems(value, problem):
    found = category_problem(value)
    assert (found is None) if problem is None else (problem in found)


def test_title_problems():
    assert title_problem("Usage & quota") is None
    assert "at most 80" in title_problem("t" * 81)
    assert "template" in title_problem("Hi {{ $labels.user_id }}")
