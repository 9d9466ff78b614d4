"""The HTML part escapes everything it includes, whatever the partial's file name; the text
part escapes nothing. Production rendering, `nudge preview` and the
samples `nudge check` renders agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.rendering import build_environment, render_email
from app.rules import load_rule_set
from app.samples import sample_context, samples_for

HOSTILE = '<script>alert("x")</script> & Sons'
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Sons"

TEMPLATE_SET = {
    # Partials named for plain text, included into both bodies.
    "_shared/_company.txt": "Company: {{ labels.company }}\n",
    "t/_greeting.j2": "Hello {{ labels.company }}\n",
    "t/_macros.jinja": "{% macro shout(value) %}<b>{{ value }}</b>{% endmacro %}\n",
    "t/subject.txt": "News for {{ labels.company }}\n",
    "t/body.txt": ('{% include "_shared/_company.txt" %}{% include "t/_greeting.j2" %}'
                   '{% import "t/_macros.jinja" as m %}{{ m.shout(labels.company) }}\n'),
    "t/body.html": ('<div>{% include "_shared/_company.txt" %}{% include "t/_greeting.j2" %}'
                    '{% import "t/_macros.jinja" as m %}{{ m.shout(labels.company) }}</div>\n'),
    "t/sample.yml": "user:\n  name: Jane Doe\n  email: jane@example.com\n",
}


def write_template_set(root: Path) -> Path:
    for name, text in TEMPLATE_SET.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def assert_html_escaped_text_verbatim(subject: str, text: str, html: str) -> None:
    assert "<script>" not in html
    assert f"Company: {ESCAPED}" in html
    assert f"Hello {ESCAPED}" in html
    # A macro's own markup stays markup; the value inside it is escaped once.
    assert f"<b>{ESCAPED}</b>" in html
    assert "&amp;amp;" not in html and "&lt;b&gt;" not in html
    assert f"Company: {HOSTILE}" in text
    assert f"Hello {HOSTILE}" in text
    assert f"<b>{HOSTILE}</b>" in text
    assert subject == f"News for {HOSTILE}"


def test_partials_included_into_the_html_part_are_escaped_whatever_their_name(tmp_path):
    root = write_template_set(tmp_path / "templates")

    email = render_email(build_environment(root), "t", {"labels": {"company": HOSTILE}})

    assert_html_escaped_text_verbatim(email.subject, email.text, email.html)


def test_samples_render_through_the_same_environments(tmp_path):
    root = write_template_set(tmp_path / "templates")
    (tmp_path / "rules").mkdir()
    (sample,), problems = samples_for("t", root, load_rule_set(tmp_path / "rules"),
                                      user_label="user_id", template_label="email_template")
    assert problems == []
    sample.alert["labels"]["company"] = HOSTILE
    context = sample_context(sample, public_url="https://nudge.example.com")

    email = render_email(build_environment(root), "t", context)

    assert_html_escaped_text_verbatim(email.subject, email.text, email.html)


@pytest.fixture
def custom_templates(tmp_path, config_file, config_data):
    config_data["templates_dir"] = str(write_template_set(tmp_path / "templates"))
    config_data["rules_dir"] = str(tmp_path / "rules")
    (tmp_path / "rules").mkdir()
    config_file.write_text(yaml.safe_dump(config_data))


def test_preview_shows_the_partials_escaped_in_html_and_verbatim_in_text(runner,
                                                                        custom_templates):
    html = runner("preview", "t", "--format", "html", "--label", f"company={HOSTILE}")
    text = runner("preview", "t", "--label", f"company={HOSTILE}")
    assert html.exit_code == 0, html.output
    assert text.exit_code == 0, text.output

    subject, _, body = text.stdout.partition("\n")
    assert_html_escaped_text_verbatim(subject.removeprefix("Subject: "), body, html.stdout)

