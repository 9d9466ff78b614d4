"""Build the email messages Nudge sends: headers, text/HTML bodies, one-click unsubscribe."""

import binascii
import email
import email.policy
import email.utils
import random
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from functools import cached_property, lru_cache
from urllib.parse import urlsplit

MAX_URL_LENGTH = 900  # a header line must stay under SMTP's 998-character limit


class _VerbatimHeader(UnstructuredHeader):
    """A header written exactly as given, on one line.

    The default policy folds a long unbreakable value (a signed unsubscribe URL) by turning
    it into RFC 2047 encoded words, which mail clients then fail to read as a URL.
    """

    def fold(self, *, policy: email.policy.Policy) -> str:
        return f"{self.name}: {self}{policy.linesep}"


def _message_policy() -> email.policy.EmailPolicy:
    registry = HeaderRegistry()
    registry.map_to_type("list-unsubscribe", _VerbatimHeader)
    return email.policy.default.clone(header_factory=registry)


MESSAGE_POLICY = _message_policy()
"""email.policy.default, except that List-Unsubscribe is never folded."""
WIRE_POLICY = MESSAGE_POLICY.clone(linesep="\r\n")


def message_id_for(delivery_id: int, domain: str) -> str:
    """The Message-ID of one delivery: the same delivery always gets the same one."""
    if isinstance(delivery_id, bool) or not isinstance(delivery_id, int) or delivery_id < 0:
        raise ValueError(f"delivery id must be a non-negative integer, got {delivery_id!r}")
    if not domain or any(ch in domain for ch in "<>@ \t\r\n"):
        raise ValueError(f"invalid Message-ID domain {domain!r}")
    return f"<nudge-delivery-{delivery_id}@{domain}>"


@dataclass(frozen=True)
class OutgoingEmail:
    """A message ready for the wire: its envelope and its bytes (ASCII, CRLF line ends)."""

    sender: str  # the envelope sender: the From address
    recipient: str
    data: bytes

    @cached_property
    def message(self) -> EmailMessage:
        """The message parsed back (previews, tests): what a mail client reads."""
        parsed = email.message_from_bytes(self.data, policy=MESSAGE_POLICY)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def __getitem__(self, name: str):
        return self.message[name]

    def as_bytes(self) -> bytes:
        return self.data


def build_message(
    *,
    sender: str,
    recipient: str,
    subject: str,
    text: str,
    html: str | None,
    message_id: str,
    unsubscribe_url: str,
    date: datetime | None = None,
    reply_to: str | None = None,
    list_id: str | None = None,
) -> OutgoingEmail:
    """Build one email: text only, or multipart/alternative (text, then HTML) when html is given.

    Raises ValueError for a header value containing CR or LF, a sender, recipient or
    Reply-To that is not exactly one valid address, a malformed Message-ID or an unsubscribe
    URL that is not a plain http(s) URL. A naive date is taken to be UTC.
    """
    headers = {
        "From": sender,
        "To": recipient,
        "Subject": subject,
        "Message-ID": message_id,
        "List-Unsubscribe": unsubscribe_url,
    }
    if reply_to is not None:
        headers["Reply-To"] = reply_to
    if list_id is not None:
        headers["List-Id"] = list_id
        _require_list_id(list_id)
    for name, value in headers.items():
        _reject_line_breaks(name, value)
    _require_constant_address("From", sender)
    if reply_to is not None:
        _require_constant_address("Reply-To", reply_to)
    plain_recipient = PLAIN_ADDRESS.match(recipient) is not None
    if not plain_recipient:
        _require_single_address("To", recipient)
    _require_message_id(message_id)
    _require_unsubscribe_url(unsubscribe_url)

    when = date or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    envelope_from = _envelope_address(sender)
    envelope_to = recipient if plain_recipient else _envelope_address(recipient)

    # Written directly rather than through email.message: the email package parses every
    # header it is given and re-renders it, which cost most of the CPU of a send. Headers that
    # need encoding or folding still go through its policy (once per value for the constant
    # ones: sender, Reply-To, List-Id).
    lines = [_folded("From", sender),
             _plain_or_folded("To", recipient)]
    if reply_to is not None:
        lines.append(_folded("Reply-To", reply_to))
    lines += [
        _plain_or_folded("Subject", subject),
        f"Date: {_date_header(when)}\r\n",
        f"Message-ID: {message_id}\r\n",
        f"List-Unsubscribe: <{unsubscribe_url}>\r\n",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
    ]
    if list_id is not None:
        lines.append(_folded("List-Id", list_id))
    lines.append("MIME-Version: 1.0\r\n")
    text_part = _text_part("plain", text)
    if html is None:
        body = text_part
    else:
        html_part = _text_part("html", html)
        boundary = _boundary(text_part, html_part)
        lines.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n')
        body = (f"\r\n--{boundary}\r\n{text_part}\r\n--{boundary}\r\n{html_part}"
                f"\r\n--{boundary}--\r\n")
    return OutgoingEmail(envelope_from, envelope_to, ("".join(lines) + body).encode("ascii"))


# An address in the plain form most take (`local@domain`, nothing to quote or take apart):
# written as is, checked without the email package's parser (and sent without smtplib's).
PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\Z")
_PLAIN_HEADER = re.compile(r"[!-~](?:[ -~]*[!-~])?\Z")
MAX_PLAIN_LINE = 78


def _fold(name: str, value: str) -> str:
    """The header line as the email package writes it (encoded words, folding)."""
    return WIRE_POLICY.header_factory(name, value).fold(policy=WIRE_POLICY)


_folded = lru_cache(maxsize=512)(_fold)  # for values that are the same in every email


def _plain_or_folded(name: str, value: str) -> str:
    line = f"{name}: {value}"
    if (len(line) <= MAX_PLAIN_LINE and _PLAIN_HEADER.match(value) and "=?" not in value
            and "  " not in value):
        return line + "\r\n"
    return _fold(name, value)


def _text_part(subtype: str, body: str) -> str:
    raw = body.encode("utf-8").splitlines()
    if raw and max(len(line) for line in raw) > MAX_PLAIN_LINE or not body.isascii():
        encoding = "quoted-printable"
        payload = binascii.b2a_qp(b"\r\n".join(raw) + b"\r\n", istext=True).decode("ascii")
    else:
        encoding = "7bit"
        payload = (b"\r\n".join(raw) + b"\r\n").decode("ascii")
    return (f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            f"Content-Transfer-Encoding: {encoding}\r\n\r\n{payload}")


def _boundary(*parts: str) -> str:
    while True:
        boundary = f"==============={random.randrange(sys.maxsize):019d}=="
        if not any(boundary in part for part in parts):
            return boundary


def _date_header(when: datetime) -> str:
    if when.utcoffset():  # cached for UTC only: equal instants in other zones read apart
        return email.utils.format_datetime(when)
    return _date_of_second(when.replace(microsecond=0))


@lru_cache(maxsize=4)
def _date_of_second(when: datetime) -> str:
    """Emails sent in the same second share their Date text (the header has no fractions)."""
    return email.utils.format_datetime(when)


@lru_cache(maxsize=256)
def _envelope_address(value: str) -> str:
    return email.utils.getaddresses([value])[0][1]


def _reject_line_breaks(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{name} header must not contain CR or LF characters: {value!r}")


def require_single_address(value: str) -> None:
    """ValueError unless `value` is exactly one valid address (`Name <local@domain>` or
    `local@domain`): how smtp.from and smtp.reply_to are checked at start-up."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"must not contain line breaks, got {value[:80]!r}")
    try:
        _require_single_address("From", value)
    except ValueError:
        raise ValueError(f"not exactly one valid email address: {value[:80]!r}") from None


def _require_single_address(name: str, value: str) -> None:
    try:
        header = email.policy.default.header_factory(name, value)
        addresses = header.addresses
    except Exception as exc:  # the header parser raises assorted errors on garbage
        raise ValueError(f"{name} is not a valid email address: {value!r}") from exc
    if len(addresses) != 1 or header.defects:
        raise ValueError(f"{name} must be exactly one valid email address, got {value!r}")
    address = addresses[0]
    if not address.username or not address.domain:
        raise ValueError(f"{name} must be exactly one valid email address, got {value!r}")


# The sender and Reply-To are the same in every email: checked once each.
_require_constant_address = lru_cache(maxsize=256)(_require_single_address)


def _require_message_id(message_id: str) -> None:
    inner = message_id[1:-1]
    if (
        not (message_id.startswith("<") and message_id.endswith(">"))
        or "@" not in inner
        or any(ch in inner for ch in "<> \t")
    ):
        raise ValueError(f"Message-ID must look like <local@domain>, got {message_id!r}")


def _require_unsubscribe_url(url: str) -> None:
    if (
        urlsplit(url).scheme not in ("http", "https")
        or not url.isascii()
        or any(ch in url for ch in "<> \t")
        or len(url) > MAX_URL_LENGTH
    ):
        raise ValueError(
            f"unsubscribe URL must be an http(s) URL of at most {MAX_URL_LENGTH} ASCII "
            f"characters without spaces or angle brackets, got {url!r}"
        )


def _require_list_id(value: str) -> None:
    list_part = value[value.rfind("<"):]
    if not (value.endswith(">") and "<" in value and list_part.isascii() and " " not in list_part
            and len(value) < 900):
        raise ValueError(f"List-Id must end in <list-id> (RFC 2919), got {value!r}")
