"""Build the email messages Nudge sends: headers, text/HTML bodies, one-click unsubscribe."""

import email.policy
import email.utils
from datetime import UTC, datetime
from email.headerregistry import HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
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


def message_id_for(delivery_id: int, domain: str) -> str:
    """The Message-ID of one delivery: the same delivery always gets the same one."""
    if isinstance(delivery_id, bool) or not isinstance(delivery_id, int) or delivery_id < 0:
        raise ValueError(f"delivery id must be a non-negative integer, got {delivery_id!r}")
    if not domain or any(ch in domain for ch in "<>@ \t\r\n"):
        raise ValueError(f"invalid Message-ID domain {domain!r}")
    return f"<nudge-delivery-{delivery_id}@{domain}>"


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
) -> EmailMessage:
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
    for name in ("From", "To", "Reply-To"):
        if name in headers:
            _require_single_address(name, headers[name])
    _require_message_id(message_id)
    _require_unsubscribe_url(unsubscribe_url)

    when = date or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)

    message = EmailMessage(policy=MESSAGE_POLICY)
    message["From"] = sender
    message["To"] = recipient
    if reply_to is not None:
        message["Reply-To"] = reply_to
    message["Subject"] = subject
    message["Date"] = email.utils.format_datetime(when)
    message["Message-ID"] = message_id
    message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    if list_id is not None:
        message["List-Id"] = list_id
    message.set_content(text, cte=_transfer_encoding(text))
    if html is not None:
        message.add_alternative(html, subtype="html", cte=_transfer_encoding(html))
    return message


def _transfer_encoding(body: str) -> str | None:
    # The default policy would pick 8bit for non-ASCII text; smtplib does not declare
    # BODY=8BITMIME, so stay 7-bit clean. None lets email choose (7bit, or QP/base64 for
    # long lines).
    return None if body.isascii() else "quoted-printable"


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
