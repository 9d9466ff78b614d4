"""Real SMTP servers (aiosmtpd) for tests and benchmarks, each on 127.0.0.1 and an ephemeral port.

    with RecordingServer() as server:
        send_something(f"smtp://{server.host}:{server.port}")
        received = server.wait_for(1)
        assert received[0]["Subject"] == "Hello"

Every server runs its event loop in a background thread; `.messages`, `.connections` and
`wait_for` are safe to use from the test thread. Variants:

- RecordingServer: accepts everything.
- RejectingServer: answers a given code at MAIL, RCPT or DATA, optionally only N times and
  after letting M messages through (421 also closes the connection).
- DroppingServer: closes the connection at connect, MAIL, RCPT or END_OF_DATA (after the
  message body arrived, before the reply), optionally only N times and after skipping M.
- SlowServer: waits a fixed time before handling every SMTP command.
- DeferringServer: answers a given reply at DATA for one recipient, always; takes the others.
- BusyServer: a relay limiting concurrent connections: while more than `max_sessions` are
  open, it answers `421 4.7.0 Too many connections...` instead of the greeting (and closes),
  or a given reply (`454 4.7.0 ...`) at MAIL.
- StartTlsServer / ImplicitTlsServer: TLS with a certificate from `generate_certificate`.

Every variant takes `credentials=("user", "password")` to require AUTH PLAIN/LOGIN
(`auth_mechanisms` narrows the offer) and `latency=` seconds per command.
"""

import asyncio
import email.policy
import ssl
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, in PEM files."""

    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate (and verifies the host name)."""
        return ssl.create_default_context(cafile=str(self.cert_path))


def generate_certificate(directory: Path) -> Certificate:
    """Create a self-signed certificate with the openssl CLI (a fraction of a second)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = Certificate(directory / "smtp-test-cert.pem", directory / "smtp-test-key.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "2",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(cert.key_path), "-out", str(cert.cert_path),
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert


@dataclass(frozen=True)
class ReceivedMessage:
    """One accepted message: envelope, raw bytes as received (CRLF) and the parsed message
    (policy=email.policy.default, line ends normalised to LF)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes
    auth_login: str | None = None
    accepted_at: float = field(default_factory=time.time)
    mail_options: tuple[str, ...] = ()  # the MAIL FROM parameters, such as SIZE=<bytes>

    def __getitem__(self, header: str) -> Any:
        """Shortcut for `self.message[header]`."""
        return self.message[header]


@dataclass
class _State:
    messages: list[ReceivedMessage] = field(default_factory=list)
    connections: int = 0
    open_sessions: set["_Protocol"] = field(default_factory=set)
    peak_sessions: int = 0  # most connections open at once
    mail_times: list[float] = field(default_factory=list)  # when each MAIL FROM arrived
    writes: list[bytes] = field(default_factory=list)  # what each read from a client held


class RecordingServer:
    """An SMTP server that accepts and records every message."""

    def __init__(
        self,
        *,
        credentials: tuple[str, str] | None = None,
        auth_mechanisms: Iterable[str] = ("PLAIN", "LOGIN"),
        latency: float = 0.0,
        certificate: Certificate | None = None,
        implicit_tls: bool = False,
        pipelining: bool = False,
    ) -> None:
        self.host = HOST
        self.port = 0
        self.credentials = credentials
        self.latency = latency
        self.pipelining = pipelining  # offer PIPELINING in the EHLO reply, as most relays do
        self._changed = threading.Condition()
        self._state = _State()
        self._armed = False  # ignore the connection aiosmtpd makes to itself at start-up
        starttls = certificate is not None and not implicit_tls
        smtp_kwargs: dict[str, Any] = {
            "server_hostname": "smtp.test",  # avoids a slow getfqdn() per connection
            "authenticator": self._authenticate,
            # aiosmtpd only counts STARTTLS as TLS, so implicit TLS and plain need this
            "auth_require_tls": starttls,
            "auth_exclude_mechanism": [
                m for m in ("PLAIN", "LOGIN") if m not in set(auth_mechanisms)
            ],
        }
        if starttls:
            assert certificate is not None
            smtp_kwargs.update(tls_context=certificate.server_context(), require_starttls=True)
        self._controller = _Controller(
            _Handler(self),
            owner=self,
            hostname=HOST,
            port=0,
            ssl_context=certificate.server_context() if implicit_tls and certificate else None,
            **smtp_kwargs,
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        self._controller.start()
        self.port = self._controller.port
        with self._changed:
            self._armed = True
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """smtp:// URL for this server (plain; add ?tls=... or use smtps:// for TLS servers)."""
        return f"smtp://{self.host}:{self.port}"

    # -- what the test thread reads ----------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot of the messages accepted so far, oldest first."""
        with self._changed:
            return list(self._state.messages)

    @property
    def connections(self) -> int:
        """How many client sessions were accepted (after the TLS handshake for implicit TLS)."""
        with self._changed:
            return self._state.connections

    @property
    def open_sessions(self) -> int:
        """How many client connections are open now."""
        with self._changed:
            return len(self._state.open_sessions)

    @property
    def peak_sessions(self) -> int:
        """The most client connections open at once so far."""
        with self._changed:
            return self._state.peak_sessions

    @property
    def mail_times(self) -> list[float]:
        """When each MAIL FROM arrived (time.time()), accepted or not, oldest first."""
        with self._changed:
            return list(self._state.mail_times)

    @property
    def writes(self) -> list[bytes]:
        """The bytes of each read from a client connection, in order (plain connections)."""
        with self._changed:
            return list(self._state.writes)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Wait until at least `count` messages arrived; TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: len(self._state.messages) >= count, timeout=timeout
            ):
                raise TimeoutError(
                    f"expected {count} messages within {timeout}s, "
                    f"got {len(self._state.messages)}"
                )
            return list(self._state.messages)

    def disconnect_all(self, timeout: float = 5.0) -> None:
        """Close every open client connection from the server side (like an idle timeout)."""

        def close_all() -> None:
            for session in list(self._state.open_sessions):
                if session.transport is not None:
                    session.transport.close()

        self._controller.loop.call_soon_threadsafe(close_all)
        with self._changed:
            if not self._changed.wait_for(lambda: not self._state.open_sessions, timeout):
                raise TimeoutError("client connections did not close")

    # -- hooks for the variants (run on the server's event loop) -----------------------------

    def _drop_on_connect(self) -> bool:
        return False

    def _greeting_refusal(self) -> str | None:
        """A reply to send instead of the greeting (then close), or None to greet."""
        return None

    async def _intercept(self, stage: str, protocol: "_Protocol") -> str | None:
        """Return an SMTP reply to answer `stage` (MAIL, RCPT, DATA) with instead of accepting."""
        return None

    # -- internals ---------------------------------------------------------------------------

    def _session_opened(self, protocol: "_Protocol") -> bool:
        """Register a new session; False means drop it at once."""
        with self._changed:
            if not self._armed:
                return True
            self._state.connections += 1
            self._state.open_sessions.add(protocol)
            self._state.peak_sessions = max(self._state.peak_sessions,
                                            len(self._state.open_sessions))
            self._changed.notify_all()
        return not self._drop_on_connect()

    def _session_closed(self, protocol: "_Protocol") -> None:
        with self._changed:
            self._state.open_sessions.discard(protocol)
            self._changed.notify_all()

    def _record(self, envelope: Envelope, session: Session) -> None:
        raw = envelope.original_content or b""
        # Parsed with LF line ends, as a mail client shows it, so bodies compare to "...\n".
        message = BytesParser(policy=email.policy.default).parsebytes(raw.replace(b"\r\n", b"\n"))
        auth = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        received = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            message=message,  # type: ignore[arg-type]  # policy.default yields EmailMessage
            raw=raw,
            auth_login=login,
            mail_options=tuple(envelope.mail_options),
        )
        with self._changed:
            self._state.messages.append(received)
            self._changed.notify_all()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if self.credentials is None or not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = self.credentials
        ok = data.login == user.encode() and data.password == password.encode()
        return AuthResult(success=ok, handled=False, auth_data=data)


class RejectingServer(RecordingServer):
    """Answers `code text` at `stage` (MAIL, RCPT or DATA): lets the first `skip` messages
    through, then rejects `times` times (None: always)."""

    def __init__(
        self,
        code: int = 550,
        text: str = "5.1.1 user unknown",
        *,
        stage: str = "RCPT",
        times: int | None = None,
        skip: int = 0,
        **kwargs: Any,
    ) -> None:
        if stage not in ("MAIL", "RCPT", "DATA"):
            raise ValueError(f"stage must be MAIL, RCPT or DATA, not {stage!r}")
        super().__init__(**kwargs)
        self.reply = f"{code} {text}"
        self.stage = stage
        self.times = times
        self.skip = skip
        self._reached = 0
        self._rejected = 0
        self.rejected_at: list[float] = []  # when each rejection was answered

    @property
    def rejected(self) -> int:
        """How many times the configured reply was given."""
        with self._changed:
            return self._rejected

    def heal(self) -> None:
        """Stop rejecting from now on (the operator fixed the relay's setup)."""
        with self._changed:
            self.times = self._rejected

    async def _intercept(self, stage: str, protocol: "_Protocol") -> str | None:
        with self._changed:
            if stage != self.stage:
                return None
            self._reached += 1
            if self._reached <= self.skip or (
                self.times is not None and self._rejected >= self.times
            ):
                return None
            self._rejected += 1
            self.rejected_at.append(time.time())
        if self.reply.startswith("421") and protocol.transport is not None:
            # 421 means "closing the connection": close once the reply has been written.
            asyncio.get_running_loop().call_soon(protocol.transport.close)
        return self.reply


class DroppingServer(RecordingServer):
    """Closes the connection at `stage`: lets the first `skip` through, then drops `times`
    times (None: always).

    Stages: connect (before the greeting), MAIL, RCPT, END_OF_DATA (the whole message was
    received but no reply is sent, so the client cannot know whether it was accepted).
    """

    def __init__(
        self,
        *,
        stage: str = "connect",
        times: int | None = None,
        skip: int = 0,
        **kwargs: Any,
    ) -> None:
        if stage not in ("connect", "MAIL", "RCPT", "END_OF_DATA"):
            raise ValueError(f"stage must be connect, MAIL, RCPT or END_OF_DATA, not {stage!r}")
        super().__init__(**kwargs)
        self.stage = stage
        self.times = times
        self.skip = skip
        self._reached = 0
        self._dropped = 0

    @property
    def dropped(self) -> int:
        with self._changed:
            return self._dropped

    def _should_drop(self, stage: str) -> bool:
        with self._changed:
            if stage != self.stage:
                return False
            self._reached += 1
            if self._reached <= self.skip or (
                self.times is not None and self._dropped >= self.times
            ):
                return False
            self._dropped += 1
            return True

    def _drop_on_connect(self) -> bool:
        return self._should_drop("connect")

    async def _intercept(self, stage: str, protocol: "_Protocol") -> str | None:
        if self._should_drop("END_OF_DATA" if stage == "DATA" else stage):
            assert protocol.transport is not None
            protocol.transport.close()
            await asyncio.Event().wait()  # cancelled by aiosmtpd when the connection is lost
        return None


class BusyServer(RecordingServer):
    """A relay that limits concurrent connections (until `heal()`): while more than
    `max_sessions` are open, it answers `reply` at `stage`: "connect" (instead of the greeting,
    then closes) or "MAIL"."""

    def __init__(self, max_sessions: int,
                 reply: str = "421 4.7.0 Too many connections, try again later",
                 *, stage: str = "connect", **kwargs: Any) -> None:
        if stage not in ("connect", "MAIL"):
            raise ValueError(f"stage must be connect or MAIL, not {stage!r}")
        super().__init__(**kwargs)
        self.max_sessions: int | None = max_sessions
        self.reply = reply
        self.stage = stage
        self._refused = 0

    @property
    def refused(self) -> int:
        """How many connections were refused."""
        with self._changed:
            return self._refused

    def heal(self) -> None:
        """Accept any number of connections from now on."""
        with self._changed:
            self.max_sessions = None

    def _greeting_refusal(self) -> str | None:
        return self._busy("connect")

    async def _intercept(self, stage: str, protocol: "_Protocol") -> str | None:
        reply = self._busy(stage)
        if reply and reply.startswith("421") and protocol.transport is not None:
            asyncio.get_running_loop().call_soon(protocol.transport.close)
        return reply

    def _busy(self, stage: str) -> str | None:
        with self._changed:
            # open_sessions already holds the new connection
            if stage != self.stage or self.max_sessions is None \
                    or len(self._state.open_sessions) <= self.max_sessions:
                return None
            self._refused += 1
        return self.reply


class DeferringServer(RecordingServer):
    """Answers `reply` at DATA whenever the message is for `recipient`; accepts the others."""

    def __init__(self, recipient: str, reply: str = "451 4.7.1 Deferred by policy",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recipient = recipient
        self.reply = reply
        self._deferred = 0

    @property
    def deferred(self) -> int:
        with self._changed:
            return self._deferred

    async def _intercept(self, stage: str, protocol: "_Protocol") -> str | None:
        if stage != "DATA" or self.recipient not in protocol.envelope.rcpt_tos:
            return None
        with self._changed:
            self._deferred += 1
        return self.reply


class SlowServer(RecordingServer):
    """Waits `latency` seconds (default 20 ms) before handling each SMTP command."""

    def __init__(self, latency: float = 0.02, **kwargs: Any) -> None:
        super().__init__(latency=latency, **kwargs)


class StartTlsServer(RecordingServer):
    """Requires STARTTLS before MAIL (and before AUTH)."""

    def __init__(self, certificate: Certificate, **kwargs: Any) -> None:
        super().__init__(certificate=certificate, **kwargs)


class ImplicitTlsServer(RecordingServer):
    """TLS from the first byte (smtps, port 465 style)."""

    def __init__(self, certificate: Certificate, **kwargs: Any) -> None:
        super().__init__(certificate=certificate, implicit_tls=True, **kwargs)


class _Handler:
    """aiosmtpd handler hooks; delegates to the owning server."""

    def __init__(self, owner: RecordingServer) -> None:
        self._owner = owner

    async def handle_EHLO(self, server: "_Protocol", session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handler that has the hook
        if self._owner.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(
        self, server: "_Protocol", session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if self._owner.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        with self._owner._changed:
            self._owner._state.mail_times.append(time.time())
        reply = await self._owner._intercept("MAIL", server)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: "_Protocol", session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        reply = await self._owner._intercept("RCPT", server)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: "_Protocol", session: Session, envelope: Envelope) -> str:
        reply = await self._owner._intercept("DATA", server)
        if reply:
            return reply
        self._owner._record(envelope, session)
        return "250 2.0.0 Message accepted"


class _Protocol(SMTP):
    """aiosmtpd's SMTP session, plus session tracking, connect-time drops and latency."""

    def __init__(self, handler: _Handler, *, owner: RecordingServer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._owner = owner
        if owner.latency > 0:
            self._smtp_methods = {
                name: self._delayed(method) for name, method in self._smtp_methods.items()
            }

    def _delayed(self, method: Any) -> Any:
        async def delayed(arg: str | None) -> None:
            await asyncio.sleep(self._owner.latency)
            await method(arg)

        return delayed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first_time = self._original_transport is None  # STARTTLS calls this a second time
        super().connection_made(transport)
        if first_time and not self._owner._session_opened(self):
            transport.close()

    async def _handle_client(self) -> None:
        refusal = self._owner._greeting_refusal()
        if refusal is None:
            await super()._handle_client()
            return
        await self.push(refusal)
        assert self.transport is not None
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        with self._owner._changed:
            self._owner._state.writes.append(data)
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        self._owner._session_closed(self)
        super().connection_lost(error)


class _Controller(Controller):
    """aiosmtpd's threaded controller, building _Protocol sessions, on an ephemeral port."""

    def __init__(self, handler: _Handler, *, owner: RecordingServer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._owner = owner

    def factory(self) -> _Protocol:
        return _Protocol(self.handler, owner=self._owner, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # aiosmtpd connects to self.port to finish start-up; learn the real port first.
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()

