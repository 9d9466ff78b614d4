"""Hand built messages to a mail server (SMTP) or, in development, to a folder of .eml files."""

import os
import re
import smtplib
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from app.messages import PLAIN_ADDRESS, OutgoingEmail
from app.redact import redact_url

DEFAULT_PORTS = {"plain": 25, "starttls": 587, "tls": 465}
DEFAULT_TIMEOUT = 10.0


# Why sending is paused (app/circuit.py): the setup is wrong, no recipient is to blame.
SENDER_REJECTED = "smtp_sender"
AUTH_FAILED = "smtp_auth"
TLS_FAILED = "smtp_tls"


class TransportError(Exception):
    """A message could not be handed over; `permanent` means retrying cannot help.

    `setup` names a failure of the setup, not of this message or its recipient (the relay
    refuses our sender or login, TLS cannot be had): sending pauses until it works again.
    `throttled`: the relay asks us to slow down (421, 451 4.7.x, 454): nobody's fault, the
    whole pool slows down (app/relay_throttle.py); `retry_after` is the seconds its reply
    suggested waiting, if it said."""

    def __init__(self, message: str, *, permanent: bool, setup: str | None = None,
                 throttled: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.setup = setup
        self.throttled = throttled
        self.retry_after = retry_after


class Transport(Protocol):
    """Something that sends messages; one instance per sending thread."""

    def send(self, message: OutgoingEmail) -> None: ...

    def close(self) -> None: ...


# -- SMTP settings --------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to reach the SMTP server. security is 'plain', 'starttls' or 'tls'.

    `ca_file`: certificates to trust instead of the system's (a private CA, a self-signed
    relay). `plaintext_login`: the URL explicitly asked to log in without TLS (`tls=none`)."""

    host: str
    port: int
    security: str
    username: str | None
    password: str | None = field(repr=False)
    timeout: float
    ca_file: str | None = None
    plaintext_login: bool = False


TLS_MODES = ("starttls", "tls", "none")


def parse_smtp_url(url: str) -> SmtpSettings:
    """Parse `smtp://[user:pass@]host[:port][?tls=starttls|tls|none][&timeout=seconds]
    [&tls_ca=file]` or smtps://.

    With a user name and password and no `tls=`, STARTTLS is required: a password is never
    sent in the clear unless the URL says `tls=none`. Raises ValueError with a one-line
    explanation for anything else.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError(f"SMTP URL must start with smtp:// or smtps://, got {redact_url(url)!r}")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"SMTP URL must not have a path or fragment: {redact_url(url)!r}")
    if not parts.hostname:
        raise ValueError(f"SMTP URL has no host: {redact_url(url)!r}")
    try:
        explicit_port = parts.port
    except ValueError:
        raise ValueError(f"SMTP URL has an invalid port: {redact_url(url)!r}") from None
    if explicit_port == 0:
        raise ValueError(f"SMTP URL has an invalid port: {redact_url(url)!r}")

    security = "tls" if parts.scheme == "smtps" else "plain"
    timeout = DEFAULT_TIMEOUT
    ca_file = None
    explicit_tls = parts.scheme == "smtps"
    seen: set[str] = set()
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in seen:
            raise ValueError(f"SMTP URL repeats the query parameter {key!r}")
        seen.add(key)
        if key == "tls":
            if value not in TLS_MODES:
                raise ValueError(f"SMTP URL: tls must be 'starttls', 'tls' or 'none', "
                                 f"got {value[:20]!r}")
            if parts.scheme == "smtps" and value != "tls":
                raise ValueError(f"SMTP URL: smtps:// is implicit TLS; drop ?tls={value}")
            security = "plain" if value == "none" else value
            explicit_tls = True
        elif key == "timeout":
            timeout = _parse_timeout(value)
        elif key == "tls_ca":
            ca_file = _readable_ca_file(value)
        else:
            raise ValueError(f"SMTP URL: unknown query parameter {key!r} "
                             f"(known: tls, tls_ca, timeout)")

    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if (username is None) != (password is None) or username == "":
        raise ValueError("SMTP URL: give both a user name and a password, or neither")
    port = explicit_port or DEFAULT_PORTS[security]
    if username is not None and not explicit_tls:
        security = "starttls"  # the port stays the one the URL implies (25)
    if ca_file is not None and security == "plain":
        raise ValueError("SMTP URL: tls_ca needs TLS (tls=starttls, tls=tls or smtps://)")
    return SmtpSettings(
        host=parts.hostname,
        port=port,
        security=security,
        username=username,
        password=password,
        timeout=timeout,
        ca_file=ca_file,
        plaintext_login=username is not None and security == "plain",
    )


def _readable_ca_file(value: str) -> str:
    path = Path(value)
    try:
        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise ValueError(f"SMTP URL: tls_ca file {value!r} not found") from None
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"SMTP URL: tls_ca file {value!r} holds no usable certificate "
                         f"({exc.__class__.__name__})") from None
    return str(path)


# The exchanges one send on a new connection waits for, each up to the timeout: the greeting,
# EHLO, MAIL, RCPT, DATA and the end of the data; STARTTLS adds itself and a second EHLO, a
# login one AUTH.
BASE_COMMANDS = 6


def commands_per_send(settings: SmtpSettings) -> int:
    """How many replies one send can wait for on a new connection (for the lease check)."""
    commands = BASE_COMMANDS
    if settings.security == "starttls":
        commands += 2
    if settings.username is not None:
        commands += 1
    return commands


def lease_problem(lease: float, smtp_url: str | None, directory_budget: float) -> str | None:
    """Why `lease` is too short for one send (the worst case: every SMTP exchange taking the
    whole timeout, after a lookup taking the directory's whole budget), or None."""
    if not smtp_url:
        commands, timeout = 0, 0.0  # the file outbox: only the directory can be slow
    else:
        try:
            settings = parse_smtp_url(smtp_url)
        except ValueError:
            return None  # reported as a problem of smtp.url
        commands, timeout = commands_per_send(settings), settings.timeout
    worst = commands * timeout + directory_budget
    if lease >= worst:
        return None
    smtp = f"SMTP timeout {timeout:g}s x {commands} commands" if commands else "no SMTP"
    return (f"{lease:g}s is shorter than one send can take ({smtp} + directory budget "
            f"{directory_budget:g}s = {worst:g}s): raise it to at least {worst:g}s, or lower "
            f"the timeout (smtp.url ?timeout=, directory.timeout)")


def smtp_warnings(settings: SmtpSettings) -> list[str]:
    """What start-up should warn about: a password that goes over the wire in clear text."""
    if settings.plaintext_login:
        return [f"smtp.url says tls=none: the SMTP password for {settings.username!r} is sent to "
                f"{settings.host}:{settings.port} without encryption"]
    return []


def _parse_timeout(value: str) -> float:
    try:
        timeout = float(value)
    except ValueError:
        timeout = -1.0
    if not 0 < timeout < float("inf"):
        raise ValueError(f"SMTP URL: timeout must be a positive number of seconds, got {value!r}")
    return timeout


# -- SMTP -----------------------------------------------------------------------------------


class _DataTracking:
    """Remembers whether DATA was started, i.e. whether the server may now have the message
    (pipelined: whether the message itself went out after the relay's 354).

    Also spares smtplib work Nudge has done already: the addresses are checked plain
    addr-specs (smtplib would parse each again with email.utils to quote it), and a message
    whose lines all end in CRLF (as Nudge writes them) is dot-stuffed with one replace instead
    of smtplib's two regular-expression passes over all its bytes."""

    data_started = False

    def mail(self, sender: str, options=()) -> tuple[int, bytes]:
        # sendmail passes SIZE= whenever the server offers SIZE, as most do; SMTPUTF8 needs
        # smtplib's own handling (it switches the command encoding or refuses).
        if (not PLAIN_ADDRESS.match(sender)
                or any(option.lower() == "smtputf8" for option in options)):
            return super().mail(sender, options)  # type: ignore[misc]
        esmtp = self.does_esmtp  # type: ignore[attr-defined]
        extra = "".join(f" {option}" for option in options) if esmtp else ""
        self.putcmd("mail", f"FROM:<{sender}>{extra}")  # type: ignore[attr-defined]
        return self.getreply()  # type: ignore[attr-defined]

    def rcpt(self, recipient: str, options=()) -> tuple[int, bytes]:
        if options or not PLAIN_ADDRESS.match(recipient):
            return super().rcpt(recipient, options)  # type: ignore[misc]
        self.putcmd("rcpt", f"TO:<{recipient}>")  # type: ignore[attr-defined]
        return self.getreply()  # type: ignore[attr-defined]

    def data(self, msg: bytes | str) -> tuple[int, bytes]:
        self.data_started = True
        if not isinstance(msg, bytes) or not _crlf_only(msg):
            return super().data(msg)  # type: ignore[misc]
        self.putcmd("data")  # type: ignore[attr-defined]
        code, reply = self.getreply()  # type: ignore[attr-defined]
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        self.send(_wire_data(msg))  # type: ignore[attr-defined]
        return self.getreply()  # type: ignore[attr-defined]

    def can_pipeline(self, sender: str, recipient: str, msg: bytes) -> bool:
        """Whether this message can go by send_pipelined: the server offers PIPELINING, the
        addresses are plain (nothing for SMTPUTF8 or quoting) and the lines end in CRLF."""
        return (self.does_esmtp and self.has_extn("pipelining")  # type: ignore[attr-defined]
                and PLAIN_ADDRESS.match(sender) is not None
                and PLAIN_ADDRESS.match(recipient) is not None and _crlf_only(msg))

    def send_pipelined(self, sender: str, recipient: str, msg: bytes) -> None:
        """What sendmail does for one recipient, with MAIL, RCPT and DATA in one write and
        their replies read in order (RFC 2920): one system call, and one wake-up of the relay,
        instead of three. Raises the errors sendmail raises, for the same replies."""
        size = f" SIZE={len(msg)}" if self.has_extn("size") else ""  # type: ignore[attr-defined]
        self.send(f"MAIL FROM:<{sender}>{size}\r\nRCPT TO:<{recipient}>\r\nDATA\r\n"
                  .encode("ascii"))  # type: ignore[attr-defined]
        mail = self.getreply()  # type: ignore[attr-defined]
        if mail[0] == 421:  # the relay is closing the connection: no other reply will come
            self.close()  # type: ignore[attr-defined]
            raise smtplib.SMTPSenderRefused(*mail, sender)
        rcpt = self.getreply()  # type: ignore[attr-defined]
        if rcpt[0] == 421:
            self.close()  # type: ignore[attr-defined]
            raise smtplib.SMTPRecipientsRefused({recipient: rcpt})
        data = self.getreply()  # type: ignore[attr-defined]
        envelope_refused = mail[0] != 250 or rcpt[0] not in (250, 251)
        if data[0] == 354 and envelope_refused:
            # A relay should refuse DATA without a recipient; one that did not gets an empty
            # message, which it has nobody to deliver to.
            self.send(b".\r\n")  # type: ignore[attr-defined]
            self.getreply()  # type: ignore[attr-defined]
        if data[0] == 421:
            self.close()  # type: ignore[attr-defined]
        elif data[0] != 354 or envelope_refused:
            self._rset()  # type: ignore[attr-defined]
        if mail[0] != 250:
            raise smtplib.SMTPSenderRefused(*mail, sender)
        if rcpt[0] not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({recipient: rcpt})
        if data[0] != 354:
            raise smtplib.SMTPDataError(*data)
        self.data_started = True
        self.send(_wire_data(msg))  # type: ignore[attr-defined]
        code, reply = self.getreply()  # type: ignore[attr-defined]
        if code != 250:
            if code == 421:
                self.close()  # type: ignore[attr-defined]
            else:
                self._rset()  # type: ignore[attr-defined]
            raise smtplib.SMTPDataError(code, reply)


def _wire_data(msg: bytes) -> bytes:
    """A message whose lines all end in CRLF, dot-stuffed (RFC 5321 4.5.2) and terminated."""
    if msg.startswith(b".") or b"\n." in msg:
        msg = (b"." if msg.startswith(b".") else b"") + msg.replace(b"\r\n.", b"\r\n..")
    return msg + (b".\r\n" if msg.endswith(b"\r\n") else b"\r\n.\r\n")


def _crlf_only(data: bytes) -> bool:
    """Whether every line of `data` ends in CRLF, as smtplib would make it (no bare CR or LF)."""
    crlf = data.count(b"\r\n")
    return data.count(b"\r") == crlf and data.count(b"\n") == crlf


class _SMTP(_DataTracking, smtplib.SMTP):
    pass


class _SMTPS(_DataTracking, smtplib.SMTP_SSL):
    pass


class SmtpTransport:
    """Sends over one persistent SMTP connection, opened lazily and reused.

    Not thread-safe: use one instance per sending thread.
    """

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ) -> None:
        self.settings = settings
        self._ssl_context = ssl_context
        self._local_hostname = local_hostname
        self._client: _SMTP | _SMTPS | None = None
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        self._where = f"{host}:{settings.port}"

    def send(self, message: OutgoingEmail) -> None:
        """Hand one message to the server; TransportError if it was not accepted."""
        reused = self._client is not None and self._client.sock is not None
        try:
            self._send_once(message)
            return
        except (smtplib.SMTPException, OSError) as exc:
            if not (reused and self._idle_drop(exc)):
                raise self._failure(exc) from exc
        # The server closed the idle connection before this message got to DATA, so it
        # cannot have been delivered: one retry on a fresh connection is safe.
        self._discard()
        try:
            self._send_once(message)
        except (smtplib.SMTPException, OSError) as exc:
            raise self._failure(exc) from exc

    def close(self) -> None:
        """Say QUIT and drop the connection (errors ignored)."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            client.close()

    def _send_once(self, message: OutgoingEmail) -> None:
        client = self._connection()
        client.data_started = False
        if client.can_pipeline(message.sender, message.recipient, message.data):
            client.send_pipelined(message.sender, message.recipient, message.data)
        else:
            client.sendmail(message.sender, [message.recipient], message.data)

    def _connection(self) -> "_SMTP | _SMTPS":
        if self._client is not None and self._client.sock is None:
            self._discard()  # smtplib closed it after a 421 or a broken pipe
        if self._client is None:
            self._client = self._open()
        return self._client

    def _open(self) -> "_SMTP | _SMTPS":
        settings = self.settings
        context = None
        if settings.security in ("tls", "starttls"):
            # Loading the CA store costs tens of milliseconds: once per transport, not per
            # connection, and never for plain SMTP.
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context(cafile=settings.ca_file)
            context = self._ssl_context
        client: _SMTP | _SMTPS
        try:
            # Connecting in the constructor is what makes smtplib verify the certificate
            # against settings.host.
            if settings.security == "tls":
                client = _SMTPS(
                    settings.host,
                    settings.port,
                    local_hostname=self._local_hostname,
                    timeout=settings.timeout,
                    context=context,
                )
            else:
                client = _SMTP(
                    settings.host,
                    settings.port,
                    local_hostname=self._local_hostname,
                    timeout=settings.timeout,
                )
        except (smtplib.SMTPException, OSError) as exc:
            raise self._connect_failure(exc) from exc
        stage = "ehlo"
        try:
            client.ehlo()
            if settings.security == "starttls":
                stage = "starttls"
                client.starttls(context=context)
                client.ehlo()
            if settings.username is not None:
                stage = "login"
                client.login(settings.username, settings.password or "")
        except (smtplib.SMTPException, OSError) as exc:
            client.close()
            raise self._connect_failure(exc, stage) from exc
        except BaseException:
            client.close()
            raise
        return client

    def _idle_drop(self, exc: BaseException) -> bool:
        """Did a reused connection turn out to be closed before DATA started?"""
        client = self._client
        if client is None or client.data_started:
            return False
        if isinstance(exc, smtplib.SMTPServerDisconnected | ConnectionError):
            return True
        # Many servers announce an idle timeout with an unsolicited 421, which we read as
        # the reply to MAIL FROM.
        return isinstance(exc, smtplib.SMTPSenderRefused) and exc.smtp_code == 421

    def _failure(self, exc: BaseException) -> TransportError:
        """Classify an error raised while sending; close the connection unless still usable."""
        code, text = _smtp_reply(exc)
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            # The message needs SMTPUTF8 (non-ASCII addresses) and the server lacks it.
            return TransportError(f"{exc} ({self._where})", permanent=True)
        if code is None:
            self._discard()
            return TransportError(self._describe_io_error(exc), permanent=False)
        permanent = 500 <= code < 600 and code != 530
        # smtplib has already sent RSET after a refused message; the connection is fine
        # unless the server hung up (421) or it broke meanwhile.
        if not permanent or self._client is None or self._client.sock is None:
            self._discard()
        hint = " (authentication required)" if code == 530 else ""
        # The envelope sender is ours, the same for every message: refusing it (or asking for
        # a login we do not give) is the setup's fault, not this recipient's.
        setup = None
        if code == 530:
            setup = AUTH_FAILED
        elif permanent and isinstance(exc, smtplib.SMTPSenderRefused):
            setup = SENDER_REJECTED
        return TransportError(
            f"SMTP {code} from {self._where}: {text}{hint}", permanent=permanent and not setup,
            setup=setup, **_throttling(code, text),
        )

    def _connect_failure(self, exc: BaseException, stage: str = "connect") -> TransportError:
        """Errors while connecting, securing or logging in: an outage (transient), or the
        setup (login refused, no STARTTLS, an untrusted certificate), which pauses sending."""
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            code, text = _smtp_reply(exc)
            return TransportError(
                f"SMTP authentication failed at {self._where}: {code} {text}", permanent=False,
                setup=AUTH_FAILED if code is not None and 500 <= code < 600 else None,
                **_throttling(code, text),
            )
        if isinstance(exc, smtplib.SMTPNotSupportedError) and stage == "starttls":
            return TransportError(
                f"SMTP server {self._where} does not offer STARTTLS, which a login requires "
                f"(add tls=none to the URL to send the password unencrypted)",
                permanent=False, setup=TLS_FAILED)
        if stage == "login" and not isinstance(exc, smtplib.SMTPResponseException | OSError):
            # No AUTH offered, or none of its mechanisms is one smtplib speaks.
            return TransportError(f"SMTP login at {self._where} impossible: {exc}",
                                  permanent=False, setup=AUTH_FAILED)
        code, text = _smtp_reply(exc)
        if code is not None:
            # A 421 greeting ("too many connections") is the relay asking us to slow down.
            return TransportError(f"SMTP {code} from {self._where}: {text}", permanent=False,
                                  **_throttling(code, text))
        if isinstance(exc, ssl.SSLCertVerificationError):
            return TransportError(
                f"TLS certificate of {self._where} not trusted: {exc.verify_message} (to trust "
                f"a private CA, add tls_ca=/path/ca.pem to smtp.url)", permanent=False,
                setup=TLS_FAILED)
        if isinstance(exc, ssl.SSLError):
            return TransportError(
                f"TLS handshake with {self._where} failed: {exc}", permanent=False
            )
        if isinstance(exc, smtplib.SMTPException) and not isinstance(
            exc, smtplib.SMTPServerDisconnected
        ):
            return TransportError(f"SMTP setup with {self._where} failed: {exc}", permanent=False)
        return TransportError(self._describe_io_error(exc, connecting=True), permanent=False)

    def _describe_io_error(self, exc: BaseException, *, connecting: bool = False) -> str:
        if isinstance(exc, TimeoutError):
            return f"SMTP server {self._where} timed out after {self.settings.timeout:g}s"
        verb = "cannot connect to" if connecting else "connection to"
        detail = str(exc) or type(exc).__name__
        suffix = "" if connecting else " lost"
        return f"{verb} SMTP server {self._where}{suffix}: {detail}"

    def _discard(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _smtp_reply(exc: BaseException) -> tuple[int | None, str]:
    """The (code, text) of the server reply behind an smtplib error, if there was one."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        code, raw = next(iter(exc.recipients.values()))
    elif isinstance(exc, smtplib.SMTPResponseException):
        code, raw = exc.smtp_code, exc.smtp_error
    else:
        return None, str(exc)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return code, " ".join(text.split())


# Replies by which a relay asks its client to slow down: 421 (closing the connection, at any
# stage: the greeting, an unsolicited one before MAIL), 454 (temporary: "too many
# connections", "throttling failure") and 451 with a 4.7.x policy code ("rate limit
# exceeded"). Other 4xx (450 mailbox busy, 451 4.3.0) are this message's transient failures.
_POLICY_CODE = re.compile(r"4\.7\.\d{1,3}(?!\S)")
# "try again in 30 seconds", "retry after 60s": a hint the throttle honours within bounds.
_RETRY_HINT = re.compile(r"\b(?:in|after)\s+(\d{1,6})\s*(?:s|secs?|seconds?)\b", re.IGNORECASE)


def _throttling(code: int | None, text: str) -> dict[str, object]:
    """TransportError's `throttled` and `retry_after` for the reply `code text`."""
    throttled = code in (421, 454) or (code == 451 and _POLICY_CODE.match(text) is not None)
    if not throttled:
        return {}
    hint = _RETRY_HINT.search(text)
    return {"throttled": True, "retry_after": float(hint.group(1)) if hint else None}


# -- file outbox ----------------------------------------------------------------------------


class FileOutbox:
    """Writes each message to `<directory>/<UTC timestamp>-<message id>.eml` (development)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def send(self, message: OutgoingEmail) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        name = f"{stamp}-{_file_safe(message.message.get('Message-ID', ''))}.eml"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(message.data.replace(b"\r\n", b"\n"))  # a Unix file
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(tmp, self.directory / name)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise TransportError(
                f"cannot write to outbox {self.directory}: {exc}", permanent=False
            ) from exc

    def close(self) -> None:
        """Nothing to release."""


def _file_safe(message_id: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._@+-]", "_", str(message_id).strip().strip("<>"))
    return cleaned[:150] or "no-message-id"


# -- wiring ---------------------------------------------------------------------------------


def transport_factory(
    smtp_url: str | None,
    outbox_dir: str | os.PathLike[str],
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> Callable[[], Transport]:
    """A zero-argument factory making one transport per sending thread.

    SMTP when `smtp_url` is set (validated now: ValueError), otherwise a FileOutbox.
    """
    if smtp_url:
        settings = parse_smtp_url(smtp_url)
        return lambda: SmtpTransport(settings, ssl_context=ssl_context)
    return lambda: FileOutbox(outbox_dir)


class RateLimiter:
    """Token bucket shared by all sending threads; burst = max(1, per_second).

    The bucket starts with one token, so a restart does not send a burst.
    """

    def __init__(self, per_second: float | None) -> None:
        if per_second is not None and per_second < 0:
            raise ValueError(f"rate limit must be positive or None, got {per_second!r}")
        self.per_second = per_second or 0.0
        self._capacity = max(1.0, self.per_second)
        self._tokens = 1.0
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Block until one more send may proceed."""
        if not self.per_second:
            return
        with self._lock:
            now = time.monotonic()
            elapsed = now - self._updated
            self._tokens = min(self._capacity, self._tokens + elapsed * self.per_second)
            self._updated = now
            # Take the token now, possibly going into debt; the debt is our place in line.
            self._tokens -= 1
            wait = -self._tokens / self.per_second if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)
