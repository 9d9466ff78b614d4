"""Messages are written directly, not through the email package: a mail client must read
exactly what the email package would have built from the same parts."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from app.messages import MESSAGE_POLICY, build_message

WHEN = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
BASE = {
    "sender": "Acme API <hello@acme.example>",
    "recipient": "ada@example.com",
    "subject": "Your API key is unused",
    "text": "Hi Ada,\nTry the API.\n",
    "html": "<p>Hi Ada,</p>\n<p>Try the API.</p>\n",
    "message_id": "<nudge-delivery-7@nudge.example.com>",
    "unsubscribe_url": "https://nudge.example.com/unsubscribe/abc.def",
}
CASES = {
    "plain ASCII": {},
    "text only": {"html": None},
    "reply-to and list-id": {"reply_to": "Support <help@acme.example>",
                             "list_id": "Quota usage <quota-usage.nudge.example.com>"},
    "non-ASCII subject": {"subject": "Vous êtes à 90 % de votre quota — agissez"},
    "long ASCII subject": {"subject": "Your API key has been unused for thirty days and "
                                      "will be disabled soon unless you call the API"},
    "subject that looks encoded": {"subject": "=?utf-8?q?not_really?= a subject"},
    "subject with runs of spaces": {"subject": "two  spaces   here "},
    "non-ASCII bodies": {"text": "Héllo, try the API!\n", "html": "<p>Héllo – €</p>\n"},
    "long lines": {"text": "x" * 200 + "\nshort\n", "html": "<p>" + "word " * 60 + "</p>"},
    "dots and From lines": {"text": ".\n.. two\nFrom here on\n", "html": None},
    "CRLF input": {"text": "one\r\ntwo\r\n", "html": "<b>x</b>\r\n"},
    "empty bodies": {"text": "", "html": ""},
    "sender needing quotes": {"sender": '"Acme, Inc." <hello@acme.example>'},
    "non-ASCII display names": {"sender": "Équipe Acme <hello@acme.example>",
                                "reply_to": "Ünterstützung <help@acme.example>"},
    "recipient with a name": {"recipient": "Ada Lovelace <ada@example.com>"},
    "recipient with a plus": {"recipient": "ada+api@mail.example.co.uk"},
    "non-ASCII list name": {"list_id": "Über uns – Neuigkeiten <news.nudge.example.com>"},
}


def reference(fields: dict) -> EmailMessage:
    """The message as the email package builds it from the same parts."""
    message = EmailMessage(policy=MESSAGE_POLICY)
    message["From"] = fields["sender"]
    message["To"] = fields["recipient"]
    if fields.get("reply_to"):
        message["Reply-To"] = fields["reply_to"]
    message["Subject"] = fields["subject"]
    message["Date"] = email.utils.format_datetime(WHEN)
    message["Message-ID"] = fields["message_id"]
    message["List-Unsubscribe"] = f"<{fields['unsubscribe_url']}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    if fields.get("list_id"):
        message["List-Id"] = fields["list_id"]
    message.set_content(fields["text"])
    if fields["html"] is not None:
        message.add_alternative(fields["html"], subtype="html")
    wire = message.as_bytes(policy=MESSAGE_POLICY.clone(linesep="\r\n"))
    return email.message_from_bytes(wire, policy=email.policy.default)


def as_read(message: EmailMessage) -> dict:
    """What a mail client shows: headers (decoded), and each part's type and text."""
    headers = [(name, str(value)) for name, value in message.items()
               if name not in ("Content-Type", "Content-Transfer-Encoding", "MIME-Version")]
    parts = [(part.get_content_type(), part.get_content_charset(),
              part.get_content().replace("\r\n", "\n"))
             for part in message.walk() if not part.is_multipart()]
    return {"headers": headers, "type": message.get_content_type(), "parts": parts}


@pytest.mark.parametrize("case", CASES)
def test_a_client_reads_what_the_email_package_would_have_built(case):
    fields = {**BASE, **CASES[case]}
    built = build_message(date=WHEN, **fields)
    assert built.data.isascii()
    assert b"\r\n" in built.data and b"\n" not in built.data.replace(b"\r\n", b"")
    assert max(len(line) for line in built.data.split(b"\r\n")) <= 998
    parsed = email.message_from_bytes(built.data, policy=email.policy.default)
    assert not parsed.defects
    assert as_read(parsed) == as_read(reference(fields))
    assert built.sender == "hello@acme.example"
    assert built.recipient == email.utils.parseaddr(fields["recipient"])[1]


def test_a_non_ascii_address_is_refused_as_before():
    with pytest.raises(ValueError, match="exactly one valid email address"):
        build_message(date=WHEN, **{**BASE, "recipient": "zoë@exämple.com"})


def test_the_multipart_boundary_never_occurs_in_a_body():
    trap = "\n".join(f"--==============={n:019d}==" for n in range(50))
    built = build_message(date=WHEN, **{**BASE, "text": trap})
    parsed = email.message_from_bytes(built.data, policy=email.policy.default)
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == trap + "\n"
