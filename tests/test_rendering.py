"""Email templates: the shipped ones render, errors name file and line, data stays data."""

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from app.rendering import (
    RenderedEmail,
    TemplateError,
    build_environment,
    compile_all,
    has_resolved_variant,
    list_templates,
    render_email,
)
from app.rules import load_rule_set
from app.samples import sample_context as context_of
from app.samples import samples_for

SHIPPED = Path(__file__).resolve().parent.parent / "email_templates"
RULES = load_rule_set(SHIPPED.parent / "alert_rules")
CONTRACT_TEMPLATES = [
    "deprecated_endpoint",
    "error_rate_spike",
    "first_call_success",
    "onboarding_first_call",
    "payment_failed",
    "quota_warning",
    "usage_drop",
]
VARIANTS = [(name, False) for name in CONTRACT_TEMPLATES] + [("payment_failed", True)]

# Directory data each template is expected to show when the user record has it.
DIRECTORY_DATA = {
    "deprecated_endpoint": ["4,210"],
    "error_rate_spike": ["1,287"],
    "first_call_success": ["100,000"],
    "onboarding_first_call": ["2 days ago"],
    "payment_failed": ["4242"],
    "quota_warning": ["93,412", "100,000"],
    "usage_drop": ["3,120", "6 days ago"],
}


def sample_context(name: str, *, resolved: bool = False, user=None, labels=None) -> dict:
    """The context `nudge check` and `nudge preview` render a shipped template with: the sample
    alert of its rule, and its sample.yml."""
    (sample,), problems = samples_for(name, SHIPPED, RULES, user_label="user_id",
                                      template_label="email_template", resolved=resolved)
    assert problems == []
    if labels:
        sample = replace(sample, alert={**sample.alert,
                                        "labels": {**sample.alert["labels"], **labels}})
    return context_of(sample, public_url="https://nudge.example.com", user=user)


@pytest.fixture(scope="module")
def env():
    return build_environment(SHIPPED)


def write_templates(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def render_shipped(env, name: str, resolved: bool, **overrides) -> RenderedEmail:
    context = sample_context(name, resolved=resolved, user=overrides.pop("user", None))
    context.update(overrides)
    return render_email(env, name, context, resolved=resolved)


def last_line(text: str) -> str:
    return text.rstrip("\n").rsplit("\n", 1)[-1]


# --- shipped templates -----------------------------------------------------------------------


def test_shipped_folder_has_the_contract_templates():
    assert list_templates(SHIPPED) == CONTRACT_TEMPLATES
    assert [n for n in CONTRACT_TEMPLATES if has_resolved_variant(SHIPPED, n)] == [
        "payment_failed"
    ]


@pytest.mark.parametrize(("name", "resolved"), VARIANTS)
def test_shipped_template_renders_with_a_full_user_record(env, name, resolved):
    email = render_shipped(env, name, resolved)
    context = sample_context(name)

    assert email.subject and "\n" not in email.subject
    assert "Hi Jane Doe," in email.text
    assert email.html is not None and "Hi Jane Doe," in email.html
    assert last_line(email.text).endswith(context["unsubscribe_url"])
    assert f'href="{context["unsubscribe_url"]}"' in email.html
    if not resolved:
        for expected in DIRECTORY_DATA[name]:
            assert expected in email.text, expected
            assert expected in email.html, expected


@pytest.mark.parametrize(("name", "resolved"), VARIANTS)
def test_shipped_template_copes_with_an_empty_user_record(env, name, resolved):
    email = render_shipped(env, name, resolved, user={})

    assert "Hi there," in email.text
    assert email.html is not None and "Hi there," in email.html
    assert "None" not in email.subject + email.text + email.html
    assert last_line(email.text).endswith(sample_context(name)["unsubscribe_url"])


@pytest.mark.parametrize(("name", "resolved"), VARIANTS)
def test_shipped_template_copes_with_null_fields(env, name, resolved):
    nulls = dict.fromkeys(sample_context(name)["user"])
    email = render_shipped(env, name, resolved, user=nulls)

    assert "Hi there," in email.text
    assert "None" not in email.subject + email.text + (email.html or "")


def test_quota_warning_falls_back_to_the_annotation_ratio(env):
    email = render_shipped(env, "quota_warning", False, user={})

    assert email.subject == "You've used 93% of your Acme API quota"
    assert "93%" in email.text


def test_quota_warning_prefers_directory_counts(env):
    email = render_shipped(
        env, "quota_warning", False, user={"quota_used": 450, "quota_limit": 500}
    )

    assert email.subject == "You've used 90% of your Acme API quota"
    assert "450 of the 500 requests" in email.text


def test_deprecated_endpoint_names_every_endpoint_the_rule_lists(env):
    context = sample_context("deprecated_endpoint", user={})
    context["annotations"]["endpoint"] = "/v1/legacy, /v1/send"

    email = render_email(env, "deprecated_endpoint", context)

    assert email.subject == (
        "You're calling deprecated Acme API endpoints: /v1/legacy, /v1/send"
    )
    assert "these deprecated endpoints: /v1/legacy, /v1/send" in email.text
    assert "They stop working" in email.text


def test_payment_failed_resolved_variant_says_it_went_through(env):
    email = render_shipped(env, "payment_failed", True)

    assert email.subject == "Your Acme API payment went through, thanks"
    assert "It has now gone through, so there's nothing else you need to do." in email.text


def test_product_name_is_defined_in_one_place():
    mentions = [
        path.relative_to(SHIPPED).as_posix()
        for path in SHIPPED.rglob("*")
        if path.is_file() and "Acme API" in path.read_text()
    ]
    assert mentions == ["_layouts/product.jinja"]


def test_shipped_folder_compiles_clean():
    assert compile_all(SHIPPED) == []


# --- data stays data ---------------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script> {{ 7*7 }}\r\nBcc: victim@example.com"


def test_hostile_label_renders_literally_in_shipped_template(env):
    context = sample_context("deprecated_endpoint", labels={"endpoint": HOSTILE})
    del context["annotations"]["endpoint"]  # so the label is what gets shown

    email = render_email(env, "deprecated_endpoint", context)

    assert "\r" not in email.subject and "\n" not in email.subject
    assert "<script>alert(1)</script> {{ 7*7 }} Bcc: victim@example.com" in email.subject
    assert "<script>alert(1)</script> {{ 7*7 }}" in email.text
    assert "49" not in email.subject + email.text + email.html
    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; {{ 7*7 }}" in email.html


def test_html_is_escaped_but_subject_and_text_are_not(tmp_path):
    root = write_templates(tmp_path, {
        "t/subject.txt": "Hello {{ labels.company }}\n",
        "t/body.txt": "Company: {{ labels.company }}\n",
        "t/body.html": "<p>Company: {{ labels.company }}</p>\n",
    })
    context = {"labels": {"company": 'Smith & Sons <b>"Ltd"</b>'}}

    email = render_email(build_environment(root), "t", context)

    assert email.subject == 'Hello Smith & Sons <b>"Ltd"</b>'
    assert email.text == 'Company: Smith & Sons <b>"Ltd"</b>\n'
    assert email.html == "<p>Company: Smith &amp; Sons &lt;b&gt;&#34;Ltd&#34;&lt;/b&gt;</p>\n"


def test_subject_whitespace_is_collapsed_to_one_line(tmp_path):
    root = write_templates(tmp_path, {
        "t/subject.txt": "{% if true %}\n  Your   plan:\t{{ labels.plan }}\n{% endif %}\n",
        "t/body.txt": "x\n",
    })
    context = {"labels": {"plan": "pro\r\nX-Injected: yes\u2028"}}

    email = render_email(build_environment(root), "t", context)

    assert email.subject == "Your plan: pro X-Injected: yes"
    assert email.html is None


# --- errors ------------------------------------------------------------------------------------


def test_misspelt_variable_names_file_and_line(tmp_path):
    root = write_templates(tmp_path, {
        "t/subject.txt": "Hi\n",
        "t/body.txt": "Hello,\n\nYour plan is {{ usr.plan }}.\n",
    })

    with pytest.raises(TemplateError) as caught:
        render_email(build_environment(root), "t", {"user": {}})

    assert caught.value.template == "t/body.txt"
    assert caught.value.line == 3
    assert str(caught.value) == "t/body.txt line 3: 'usr' is undefined"


def test_error_inside_a_layout_names_the_layout(tmp_path):
    root = write_templates(tmp_path, {
        "_layouts/base.html": "<p>top</p>\n{% block content %}{% endblock %}\n{{ footr }}\n",
        "t/subject.txt": "Hi\n",
        "t/body.txt": "Hello\n",
        "t/body.html": '{% extends "_layouts/base.html" %}\n{% block content %}x{% endblock %}\n',
    })

    with pytest.raises(TemplateError) as caught:
        render_email(build_environment(root), "t", {})

    assert (caught.value.template, caught.value.line) == ("_layouts/base.html", 3)
    assert "'footr' is undefined" in caught.value.message


def test_syntax_error_names_file_and_line(tmp_path):
    root = write_templates(tmp_path, {
        "t/subject.txt": "Hi\n",
        "t/body.txt": "one\ntwo\n{% if user %}\nthree\n",
    })

    with pytest.raises(TemplateError) as caught:
        render_email(build_environment(root), "t", {"user": {}})

    assert caught.value.template == "t/body.txt"
    assert caught.value.line == 4
    assert str(caught.value).startswith("t/body.txt line 4: ")


def test_missing_template_and_missing_resolved_variant(tmp_path):
    root = write_templates(tmp_path, {"t/subject.txt": "Hi\n", "t/body.txt": "Hello\n"})
    env = build_environment(root)

    with pytest.raises(TemplateError, match="no such email template") as caught:
        render_email(env, "nope", {})
    assert caught.value.line is None and str(caught.value).startswith("nope: ")
    with pytest.raises(TemplateError, match="no resolved variant"):
        render_email(env, "t", {}, resolved=True)
    with pytest.raises(TemplateError, match="not a valid email template name"):
        render_email(env, "../t", {})
    with pytest.raises(TemplateError, match="not a valid email template name"):
        render_email(env, "_layouts", {})


def test_filter_error_names_file_line_and_filter(tmp_path):
    root = write_templates(tmp_path, {
        "t/subject.txt": "Hi\n",
        "t/body.txt": "Used:\n{{ annotations.quota_used_ratio|percent }}\n",
    })

    with pytest.raises(TemplateError) as caught:
        render_email(build_environment(root), "t", {"annotations": {"quota_used_ratio": "lots"}})

    assert str(caught.value) == "t/body.txt line 2: percent filter: expected a number, got 'lots'"


def test_compiled_templates_are_reused(tmp_path):
    root = write_templates(tmp_path, {
        "t/subject.txt": "Hi {{ name }}\n",
        "t/body.txt": "Hello\n",
        "t/body.html": "<p>Hello</p>\n",
    })
    env = build_environment(root)
    first = render_email(env, "t", {"name": "Ann"})

    for path in (root / "t").iterdir():
        path.write_text("{{ broken")

    assert render_email(env, "t", {"name": "Ann"}) == first


# --- compile_all -------------------------------------------------------------------------------


def test_compile_all_reports_each_broken_file(tmp_path):
    root = write_templates(tmp_path, {
        "_layouts/base.txt": "{% block content %}{% endblock %}\n",
        "good/subject.txt": "Hi {{ user.get('name') or 'there' }}\n",
        "good/body.txt": '{% extends "_layouts/base.txt" %}{% block content %}ok{% endblock %}',
        "good/sample.yml": "user: {name: Ann}\n",
        "syntax/subject.txt": "Hi\n",
        "syntax/body.txt": "ok\n{% for x in %}\n",
        "nobody/subject.txt": "Hi\n",
        "halfresolved/subject.txt": "Hi\n",
        "halfresolved/body.txt": "Hi\n",
        "halfresolved/resolved_body.txt": "Fixed\n",
        "nosubject/body.txt": "Hi\n",
        "stray/subject.txt": "Hi\n",
        "stray/body.txt": "Hi\n",
        "stray/notes.md": "x\n",
    })

    problems = {str(p) for p in compile_all(root)}

    assert problems == {
        "syntax/body.txt line 2: Expected an expression, got 'end of statement block'",
        "nobody/body.txt: file not found",
        "halfresolved: resolved files without resolved_subject.txt",
        "nosubject: folder has no subject.txt",
        "stray/notes.md: unexpected file (partials must start with '_')",
    }


def test_an_environment_renders_the_files_as_they_were_when_it_was_built(tmp_path):
    root = write_templates(tmp_path, {"t/subject.txt": "Hi\n", "t/body.txt": "{{ 'old' }}\n"})
    env = build_environment(root)
    (root / "t" / "body.txt").write_text("{{ broken\n")

    assert render_email(env, "t", {}).text == "old\n"
    assert compile_all(root, env) == []
    assert compile_all(root) != []  # a new environment sees the edit


# --- filters -----------------------------------------------------------------------------------

NOW = datetime(2026, 11, 22, 20, 4, tzinfo=UTC)


def render_string(source: str, **context) -> str:
    return build_environment(SHIPPED).from_string(source).render(now=NOW, **context)


@pytest.mark.parametrize(("source", "value", "expected"), [
    ("{{ v|date }}", "2026-11-22T20:04:00Z", "22 November 2026"),
    ("{{ v|date }}", NOW, "22 November 2026"),
    ("{{ v|date('%Y-%m-%d') }}", "2026-11-22T20:04:00+00:00", "2026-11-22"),
    ("{{ v|date }}", datetime(2026, 11, 23, 1, 0, tzinfo=timezone(timedelta(hours=6))),
     "22 November 2026"),
    ("{{ v|datetime }}", "2026-11-22T20:04:59Z", "22 November 2026, 20:04 UTC"),
    ("{{ v|datetime }}", "2026-11-22", "22 November 2026, 00:00 UTC"),
    ("{{ v|timeago }}", "2026-11-22T17:04:00Z", "3 hours ago"),
    ("{{ v|timeago }}", NOW - timedelta(seconds=20), "just now"),
    ("{{ v|timeago }}", NOW - timedelta(minutes=1), "1 minute ago"),
    ("{{ v|timeago }}", NOW - timedelta(days=45), "1 month ago"),
    ("{{ v|timeago }}", NOW - timedelta(days=800), "2 years ago"),
    ("{{ v|timeago }}", NOW + timedelta(days=2, hours=1), "in 2 days"),
    ("{{ v|percent }}", 0.934, "93%"),
    ("{{ v|percent }}", "0.93", "93%"),
    ("{{ v|percent(1) }}", "0.9345", "93.5%"),
    ("{{ v|percent }}", 12.5, "1,250%"),
    ("{{ v|number }}", 12345, "12,345"),
    ("{{ v|number }}", "12345", "12,345"),
    ("{{ v|number }}", "1234.5", "1,235"),
    ("{{ v|number(2) }}", 1234.5, "1,234.50"),
])
def test_filters(source, value, expected):
    assert render_string(source, v=value) == expected


@pytest.mark.parametrize(("source", "value", "message"), [
    ("{{ v|date }}", "next tuesday", "date filter: expected a datetime or an ISO 8601 string"),
    ("{{ v|datetime }}", None, "datetime filter: expected a datetime or an ISO 8601 string"),
    ("{{ v|timeago }}", 1234, "timeago filter: expected a datetime or an ISO 8601 string"),
    ("{{ v|percent }}", "93%", "percent filter: expected a number, got '93%'"),
    ("{{ v|percent }}", "NaN", "percent filter: expected a number, got 'NaN'"),
    ("{{ v|number }}", "12,345", "number filter: expected a number, got '12,345'"),
    ("{{ v|number }}", True, "number filter: expected a number, got True"),
    ("{{ v|number('x') }}", 1, "number filter: digits must be a whole number"),
])
def test_filters_reject_garbage(source, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        render_string(source, v=value)


def test_filter_on_missing_value_reports_the_undefined_name(tmp_path):
    root = write_templates(tmp_path, {"t/subject.txt": "{{ annotations.ratio|percent }}\n",
                                      "t/body.txt": "x\n"})

    with pytest.raises(TemplateError, match="has no attribute 'ratio'"):
        render_email(build_environment(root), "t", {"annotations": {}})
