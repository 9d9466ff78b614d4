"""Building messages and sending them: real aiosmtpd servers on 127.0.0.1, files on disk."""

import email.policy
import email.utils
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.parser import BytesParser
from pathlib import Path

import pytest

from app.messages import OutgoingEmail, build_message, message_id_for
from app.transports import (
    FileOutbox,
    RateLimiter,
    SmtpSettings,
    SmtpTransport,
    TransportError,
    parse_smtp_url,
    smtp_warnings,
    transport_factory,
)
from tests.smtp_servers import (
    Certificate,
    DroppingServer,
    ImplicitTlsServer,
    RecordingServer,
    RejectingServer,
    SlowServer,
    StartTlsServer,
    generate_certificate,
)

UNSUBSCRIBE_URL = "https://nudge.example.com/unsubscribe?token=" + "t0k3n" * 30  # > 78 chars


def make_message(n: int = 1, *, html: str | None = "<p>Héllo</p>", **overrides):
    fields = {
        "sender": "Nudge <nudge@example.com>",
        "recipient": f"User {n} <user{n}@example.org>",
        "subject": f"Your API key is unused ({n})",
        "text": "Héllo, try the API!\n",
        "html": html,
        "message_id": message_id_for(n, "example.com"),
        "unsubscribe_url": UNSUBSCRIBE_URL,
        "date": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    }
    fields.update(overrides)
    return build_message(**fields)


def plain(server: RecordingServer, **query: str) -> SmtpSettings:
    url = server.url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    return parse_smtp_url(url)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return generate_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=[False, True], ids=["command-by-command", "pipelining"])
def pipelining(request) -> bool:
    """Whether the test's server offers PIPELINING (most relays do; aiosmtpd alone does not)."""
    return request.param


@pytest.fixture
def server(pipelining) -> Iterator[RecordingServer]:
    with RecordingServer(pipelining=pipelining) as running:
        yield running


@pytest.fixture
def transport(server: RecordingServer) -> Iterator[SmtpTransport]:
    sender = SmtpTransport(plain(server))
    yield sender
    sender.close()


def send_expecting_error(transport: SmtpTransport, message) -> TransportError:
    with pytest.raises(TransportError) as caught:
        transport.send(message)
    return caught.value


# -- what arrives ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "Hi,\n.\n..two dots\n.hidden line\nbye\n",  # lines that SMTP's end-of-data could eat
    "plain text, no line starts with a dot\n",
])
def test_lines_starting_with_a_dot_arrive_intact(server, transport, text):
    transport.send(make_message(3, html=None, text=text, recipient="ada+api@mail.example.org"))

    [received] = server.wait_for(1)
    assert received.mail_from == "nudge@example.com"
    assert received.rcpt_tos == ("ada+api@mail.example.org",)
    assert received.message.get_content().replace("\r\n", "\n") == text


@pytest.mark.parametrize("data", [
    b".X-First: a line that starts with a dot\r\nSubject: s\r\n\r\n.\r\n..two\r\nend\r\n",
    b"Subject: s\r\n\r\nno dots at all\r\n",
])
def test_every_byte_arrives_as_sent_whatever_the_line_starts(server, transport, data):
    transport.send(OutgoingEmail("nudge@example.com", "ada@mail.example.org", data))

    [received] = server.wait_for(1)
    assert received.raw == data


def test_sent_message_arrives_with_all_headers_and_both_parts(server, transport):
    transport.send(make_message(7))

    [received] = server.wait_for(1)
    assert received.mail_from == "nudge@example.com"
    assert received.rcpt_tos == ("user7@example.org",)
    msg = received.message
    assert msg["From"] == "Nudge <nudge@example.com>"
    assert msg["To"] == "User 7 <user7@example.org>"
    assert msg["Subject"] == "Your API key is unused (7)"
    assert email.utils.parsedate_to_datetime(msg["Date"]) == datetime(
        2024, 5, 6, 7, 8, 9, tzinfo=UTC
    )
    assert msg["Message-ID"] == "<nudge-delivery-7@example.com>"
    assert msg["List-Unsubscribe"] == f"<{UNSUBSCRIBE_URL}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content() == "Héllo, try the API!\n"
    assert parts[1].get_content().strip() == "<p>Héllo</p>"
    # Mail clients need the URL as written, not folded into RFC 2047 encoded words.
    assert f"List-Unsubscribe: <{UNSUBSCRIBE_URL}>".encode() in received.raw
    assert all(len(line) <= 998 for line in received.raw.splitlines())


def test_message_without_html_is_text_only(server, transport):
    transport.send(make_message(html=None, reply_to="support@example.com"))

    [received] = server.wait_for(1)
    assert received.message.get_content_type() == "text/plain"
    assert not received.message.is_multipart()
    assert received.message.get_content() == "Héllo, try the API!\n"
    assert received.message["Reply-To"] == "support@example.com"


def test_message_id_is_stable_per_delivery():
    assert message_id_for(42, "mail.example.com") == "<nudge-delivery-42@mail.example.com>"
    assert message_id_for(42, "mail.example.com") == message_id_for(42, "mail.example.com")


@pytest.mark.parametrize(
    "field, value",
    [
        ("subject", "Hello\r\nBcc: victim@example.net"),
        ("subject", "Hello\nX-Injected: yes"),
        ("recipient", "user@example.org\r\nBcc: victim@example.net"),
        ("sender", "nudge@example.com\nBcc: victim@example.net"),
        ("reply_to", "a@example.com\rX: y"),
    ],
)
def test_line_breaks_in_headers_are_refused(field, value):
    with pytest.raises(ValueError, match="CR or LF"):
        make_message(**{field: value})


@pytest.mark.parametrize(
    "recipient",
    ["", "not-an-address", "a@example.org, b@example.org", "user@", "@example.org"],
)
def test_recipient_must_be_exactly_one_valid_address(recipient):
    with pytest.raises(ValueError, match="To"):
        make_message(recipient=recipient)


# -- connections ----------------------------------------------------------------------------


def test_one_connection_carries_many_messages(server, transport):
    for n in range(5):
        transport.send(make_message(n))

    received = server.wait_for(5)
    assert [r.rcpt_tos for r in received] == [(f"user{n}@example.org",) for n in range(5)]
    assert server.connections == 1


@pytest.mark.parametrize("sender", ["nudge@example.com", '"Nudge Team"@example.com'])
def test_mail_from_declares_the_size_the_server_asks_for(server, sender):
    transport = SmtpTransport(plain(server))
    message = make_message(1)
    try:
        transport.send(OutgoingEmail(sender, message.recipient, message.data))
    finally:
        transport.close()

    received = server.wait_for(1)[0]
    assert received.mail_from == sender
    assert received.mail_options == (f"SIZE={len(message.data)}",)
    assert received.raw == message.data


def test_a_relay_offering_pipelining_gets_the_envelope_and_data_command_in_one_write(
        server, transport, pipelining):
    messages = [make_message(n) for n in range(3)]
    for message in messages:
        transport.send(message)

    received = server.wait_for(3)
    assert [r.raw for r in received] == [m.data for m in messages]
    envelopes = [(f"MAIL FROM:<nudge@example.com> SIZE={len(m.data)}\r\n"
                  f"RCPT TO:<user{n}@example.org>\r\nDATA\r\n").encode()
                 for n, m in enumerate(messages)]
    writes = server.writes
    if pipelining:
        assert [w for w in writes if w.startswith(b"MAIL")] == envelopes
    else:
        commands = [w.upper() for w in writes if w[:4].upper() in (b"MAIL", b"RCPT", b"DATA")]
        assert [c.split(b":")[0].split(b"\r")[0] for c in commands] == [
            b"MAIL FROM", b"RCPT TO", b"DATA"] * 3
    assert server.connections == 1


def test_reconnects_when_server_closed_the_idle_connection(server, transport):
    transport.send(make_message(1))
    server.wait_for(1)
    server.disconnect_all()

    transport.send(make_message(2))

    assert [r["Message-ID"] for r in server.wait_for(2)] == [
        "<nudge-delivery-1@example.com>",
        "<nudge-delivery-2@example.com>",
    ]
    assert server.connections == 2


def test_reconnects_when_connection_drops_at_mail_from(pipelining):
    with DroppingServer(stage="MAIL", skip=1, times=1, pipelining=pipelining) as server:
        transport = SmtpTransport(plain(server))
        transport.send(make_message(1))
        transport.send(make_message(2))
        transport.close()

        assert len(server.wait_for(2)) == 2
        assert server.dropped == 1
        assert server.connections == 2


def test_reconnects_when_server_announces_idle_timeout_with_421(pipelining):
    with RejectingServer(421, "4.4.2 idle timeout", stage="MAIL", skip=1, times=1,
                         pipelining=pipelining) as server:
        transport = SmtpTransport(plain(server))
        transport.send(make_message(1))
        transport.send(make_message(2))
        transport.close()

        assert len(server.wait_for(2)) == 2
        assert server.rejected == 1
        assert server.connections == 2


def test_never_resends_when_connection_drops_after_the_message_was_sent(pipelining):
    with DroppingServer(stage="END_OF_DATA", skip=1, times=1, pipelining=pipelining) as server:
        transport = SmtpTransport(plain(server))
        transport.send(make_message(1))

        error = send_expecting_error(transport, make_message(2))

        assert error.permanent is False
        assert server.dropped == 1
        assert server.connections == 1  # no second attempt on a new connection
        transport.send(make_message(3))  # the next send starts on a clean connection
        assert [r["Message-ID"] for r in server.wait_for(2)] == [
            "<nudge-delivery-1@example.com>",
            "<nudge-delivery-3@example.com>",
        ]
        transport.close()


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stage, code, text, permanent, setup",
    [
        ("MAIL", 451, "4.3.0 try again later", False, None),
        ("RCPT", 450, "4.2.1 mailbox busy", False, None),
        ("RCPT", 452, "4.5.3 too many recipients", False, None),
        ("DATA", 451, "4.7.1 greylisted", False, None),
        # Our envelope sender is refused: the setup's fault, for every message alike.
        ("MAIL", 553, "5.7.1 sender not allowed", False, "smtp_sender"),
        ("MAIL", 530, "5.7.0 Authentication required", False, "smtp_auth"),
        # Only these are this recipient's (or this message's) fault.
        ("RCPT", 550, "5.1.1 user unknown", True, None),
        ("DATA", 554, "5.6.0 message rejected", True, None),
    ],
)
def test_smtp_replies_are_classified_by_whose_fault_they_are(stage, code, text, permanent, setup,
                                                              pipelining):
    with RejectingServer(code, text, stage=stage, pipelining=pipelining) as server:
        transport = SmtpTransport(plain(server))

        error = send_expecting_error(transport, make_message())

        assert (error.permanent, error.setup) == (permanent, setup)
        assert str(error).startswith(f"SMTP {code} from 127.0.0.1:{server.port}: {text}")
        assert server.messages == []
        transport.close()


def test_connection_is_kept_after_a_recipient_is_refused(pipelining):
    with RejectingServer(550, "5.1.1 user unknown", stage="RCPT", times=1,
                         pipelining=pipelining) as server:
        transport = SmtpTransport(plain(server))
        assert send_expecting_error(transport, make_message(1)).permanent

        transport.send(make_message(2))

        assert [r["Message-ID"] for r in server.wait_for(1)] == ["<nudge-delivery-2@example.com>"]
        assert server.connections == 1
        transport.close()


def test_send_succeeds_once_a_temporary_failure_clears(pipelining):
    with RejectingServer(451, "4.3.0 try again later", stage="DATA", times=2,
                         pipelining=pipelining) as server:
        transport = SmtpTransport(plain(server))
        for _ in range(2):
            assert send_expecting_error(transport, make_message()).permanent is False

        transport.send(make_message())

        assert len(server.wait_for(1)) == 1
        assert server.rejected == 2
        transport.close()


def test_a_relay_that_takes_data_after_refusing_the_recipient_gets_no_message():
    """RFC 2920: a relay should refuse DATA when no recipient was accepted. One that answers
    354 anyway is given an empty message (a lone dot), never the email."""
    replies = {b"EHLO": b"250-scripted\r\n250-SIZE 1000000\r\n250 PIPELINING\r\n",
               b"MAIL": b"250 2.1.0 ok\r\n", b"RCPT": b"550 5.1.1 user unknown\r\n",
               b"DATA": b"354 go ahead\r\n", b".": b"554 5.5.1 no valid recipients\r\n",
               b"RSET": b"250 2.0.0 ok\r\n", b"QUIT": b"221 2.0.0 bye\r\n"}
    received: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            connection, _ = listener.accept()
            with connection, connection.makefile("rb") as lines:
                connection.sendall(b"220 scripted ESMTP\r\n")
                for line in lines:
                    received.append(line)
                    connection.sendall(replies.get(line.split()[0].upper(), b"500 what\r\n"))
                    if line.upper().startswith(b"QUIT"):
                        return

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        transport = SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{listener.getsockname()[1]}"))
        message = make_message(1)

        error = send_expecting_error(transport, message)
        transport.close()
        thread.join(5)

    assert error.permanent and str(error).endswith(": 5.1.1 user unknown")
    assert str(error).startswith("SMTP 550 ")
    commands = [line.split(b":")[0].split()[0].upper() for line in received]
    assert commands == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b".", b"RSET", b"QUIT"]
    assert b"Subject" not in b"".join(received)


def test_refused_connection_is_transient():
    with socket.socket() as reserved:  # bound but not listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        transport = SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{port}?timeout=5"))

        error = send_expecting_error(transport, make_message())

    assert error.permanent is False
    assert f"127.0.0.1:{port}" in str(error)


def test_connection_dropped_before_greeting_is_transient():
    with DroppingServer(stage="connect", times=1) as server:
        transport = SmtpTransport(plain(server))
        assert send_expecting_error(transport, make_message()).permanent is False

        transport.send(make_message())  # the drop was a one-off

        assert len(server.wait_for(1)) == 1
        transport.close()


# -- TLS and AUTH ---------------------------------------------------------------------------


def test_starttls_with_auth_plain_delivers(certificate):
    with StartTlsServer(certificate, credentials=("nudge", "p@ss word")) as server:
        settings = parse_smtp_url(
            f"smtp://nudge:p%40ss%20word@127.0.0.1:{server.port}?tls=starttls"
        )
        transport = SmtpTransport(settings, ssl_context=certificate.client_context())

        transport.send(make_message())
        transport.send(make_message(2))

        received = server.wait_for(2)
        assert [r.auth_login for r in received] == ["nudge", "nudge"]
        assert server.connections == 1
        transport.close()


def test_implicit_tls_with_auth_login_delivers(certificate):
    with ImplicitTlsServer(
        certificate, credentials=("nudge", "secret"), auth_mechanisms=("LOGIN",)
    ) as server:
        settings = parse_smtp_url(f"smtps://nudge:secret@127.0.0.1:{server.port}")
        transport = SmtpTransport(settings, ssl_context=certificate.client_context())

        transport.send(make_message())

        assert server.wait_for(1)[0].auth_login == "nudge"
        transport.close()


def test_wrong_password_is_reported_as_authentication_failure(certificate):
    with StartTlsServer(certificate, credentials=("nudge", "secret")) as server:
        settings = parse_smtp_url(f"smtp://nudge:wrong@127.0.0.1:{server.port}?tls=starttls")
        transport = SmtpTransport(settings, ssl_context=certificate.client_context())

        error = send_expecting_error(transport, make_message())

        assert error.permanent is False
        assert "authentication failed" in str(error)
        assert "535" in str(error)
        assert server.messages == []


def test_untrusted_certificate_is_a_transient_tls_error(certificate):
    with ImplicitTlsServer(certificate) as server:
        transport = SmtpTransport(parse_smtp_url(f"smtps://127.0.0.1:{server.port}"))

        error = send_expecting_error(transport, make_message())

        assert error.permanent is False
        assert "TLS" in str(error)
        assert server.messages == []


def test_slow_server_helper_delays_every_command():
    with SlowServer(latency=0.05) as server:
        transport = SmtpTransport(plain(server))
        started = time.monotonic()
        transport.send(make_message())
        elapsed = time.monotonic() - started
        transport.close()

    assert elapsed >= 4 * 0.05  # at least EHLO, MAIL, RCPT and DATA were delayed


# -- SMTP URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        ("smtp://mail.example.com", ("mail.example.com", 25, "plain", None, None, 10.0)),
        ("smtp://127.0.0.1:2525", ("127.0.0.1", 2525, "plain", None, None, 10.0)),
        (
            "smtp://user:p%40ss@mail.example.com?tls=starttls",
            ("mail.example.com", 587, "starttls", "user", "p@ss", 10.0),
        ),
        (
            "smtp://user:p%40ss@mail.example.com:2587?tls=starttls&timeout=2.5",
            ("mail.example.com", 2587, "starttls", "user", "p@ss", 2.5),
        ),
        ("smtps://mail.example.com", ("mail.example.com", 465, "tls", None, None, 10.0)),
        ("smtp://mail.example.com?tls=tls", ("mail.example.com", 465, "tls", None, None, 10.0)),
        # A password is never sent in the clear unless the URL says so.
        ("smtp://a%2Bb%40x:pw@[::1]:25", ("::1", 25, "starttls", "a+b@x", "pw", 10.0)),
        ("smtp://u:pw@mail.example.com", ("mail.example.com", 25, "starttls", "u", "pw", 10.0)),
        ("smtp://u:pw@mail.example.com?tls=none",
         ("mail.example.com", 25, "plain", "u", "pw", 10.0)),
        ("smtp://mail.example.com?tls=none", ("mail.example.com", 25, "plain", None, None, 10.0)),
    ],
)
def test_parse_smtp_url(url, expected):
    s = parse_smtp_url(url)
    assert (s.host, s.port, s.security, s.username, s.password, s.timeout) == expected


@pytest.mark.parametrize(
    "url, complaint",
    [
        ("http://mail.example.com", "smtp://"),
        ("mail.example.com:25", "smtp://"),
        ("smtp://", "no host"),
        ("smtp://:25", "no host"),
        ("smtp://mail.example.com:99999", "port"),
        ("smtp://mail.example.com:abc", "port"),
        ("smtp://mail.example.com?tls=yes", "tls"),
        ("smtp://mail.example.com?ssl=1", "unknown query parameter"),
        ("smtp://mail.example.com?timeout=0", "timeout"),
        ("smtp://mail.example.com?timeout=soon", "timeout"),
        ("smtps://mail.example.com?tls=starttls", "implicit TLS"),
        ("smtp://user@mail.example.com", "password"),
        ("smtp://mail.example.com/path", "path"),
        ("smtps://mail.example.com?tls=none", "implicit TLS"),
        ("smtp://mail.example.com?tls=starttls&tls_ca=/nonexistent/ca.pem", "not found"),
        (f"smtp://mail.example.com?tls=starttls&tls_ca={__file__}", "no usable certificate"),
    ],
)
def test_parse_smtp_url_rejects(url, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_smtp_url(url)


def test_a_ca_file_needs_tls(certificate):
    with pytest.raises(ValueError, match="tls_ca needs TLS"):
        parse_smtp_url(f"smtp://u:p@mail.example.com?tls=none&tls_ca={certificate.cert_path}")
    settings = parse_smtp_url(f"smtp://u:p@mail.example.com?tls_ca={certificate.cert_path}")
    assert (settings.security, settings.ca_file) == ("starttls", str(certificate.cert_path))


def test_only_an_explicit_tls_none_logs_in_unencrypted_and_it_is_warned_about():
    assert smtp_warnings(parse_smtp_url("smtp://u:pw@mail.example.com")) == []
    assert smtp_warnings(parse_smtp_url("smtp://mail.example.com?tls=none")) == []
    (warning,) = smtp_warnings(parse_smtp_url("smtp://u:pw@mail.example.com?tls=none"))
    assert "without encryption" in warning and "pw" not in warning.replace("'u'", "")


def test_errors_and_repr_do_not_reveal_the_password():
    with pytest.raises(ValueError) as caught:
        parse_smtp_url("smtp://user:hunter2@mail.example.com/x")
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(parse_smtp_url("smtp://user:hunter2@mail.example.com"))


# -- file outbox and factory ----------------------------------------------------------------


def test_file_outbox_writes_a_parseable_eml(tmp_path: Path):
    outbox = FileOutbox(tmp_path / "outbox")

    outbox.send(make_message(9))
    outbox.close()

    [written] = list((tmp_path / "outbox").iterdir())  # no temporary files left behind
    assert written.name.endswith("-nudge-delivery-9@example.com.eml")
    parsed = BytesParser(policy=email.policy.default).parsebytes(written.read_bytes())
    assert parsed["Subject"] == "Your API key is unused (9)"
    assert parsed["List-Unsubscribe"] == f"<{UNSUBSCRIBE_URL}>"
    assert parsed.get_body(("plain",)).get_content() == "Héllo, try the API!\n"


def test_transport_factory_picks_smtp_or_outbox(tmp_path: Path, server: RecordingServer):
    outbox = transport_factory(None, tmp_path)()
    assert isinstance(outbox, FileOutbox)

    make_smtp = transport_factory(server.url, tmp_path)
    first, second = make_smtp(), make_smtp()
    assert first is not second  # one per sending thread
    first.send(make_message())
    first.close()
    assert len(server.wait_for(1)) == 1

    with pytest.raises(ValueError):
        transport_factory("smtp://mail.example.com?tls=maybe", tmp_path)


# -- rate limiting --------------------------------------------------------------------------


def test_rate_limiter_spaces_sends():
    limiter = RateLimiter(20)
    started = time.monotonic()
    for _ in range(21):
        limiter.acquire()
    assert time.monotonic() - started >= 0.5


def test_rate_limiter_is_shared_across_threads():
    limiter = RateLimiter(40)
    started = time.monotonic()
    threads = [
        threading.Thread(target=lambda: [limiter.acquire() for _ in range(7)]) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - started >= 0.25  # 21 sends at 40/s need about 0.5 s


def test_rate_limiter_can_be_unlimited():
    for limit in (None, 0):
        limiter = RateLimiter(limit)
        for _ in range(1000):
            limiter.acquire()  # returns without blocking; nothing to time
    with pytest.raises(ValueError):
        RateLimiter(-1)
