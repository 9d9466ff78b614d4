"""The TLS rule: a password never goes over the wire in the clear unless the URL says
`tls=none`, and the relay's certificate is verified (a private CA via `tls_ca=`).

Real aiosmtpd servers on 127.0.0.1 with a self-signed certificate made by openssl.
"""

import pytest
import yaml

from app.transports import SmtpTransport, TransportError, parse_smtp_url
from tests.smtp_servers import Certificate, RecordingServer, StartTlsServer, generate_certificate
from tests.test_transports import make_message

CREDENTIALS = ("nudge", "secret")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return generate_certificate(tmp_path_factory.mktemp("tls"))


def send(url: str) -> TransportError | None:
    transport = SmtpTransport(parse_smtp_url(url))
    try:
        transport.send(make_message())
    except TransportError as exc:
        return exc
    finally:
        transport.close()
    return None


def test_a_self_signed_relay_is_refused_by_default_as_a_setup_failure(certificate):
    with StartTlsServer(certificate, credentials=CREDENTIALS) as server:
        error = send(f"smtp://nudge:secret@127.0.0.1:{server.port}")

        assert error is not None and error.setup == "smtp_tls"
        assert "not trusted" in str(error) and "tls_ca=" in str(error)
        assert server.messages == []


def test_a_self_signed_relay_is_accepted_with_its_ca_file(certificate):
    with StartTlsServer(certificate, credentials=CREDENTIALS) as server:
        assert send(f"smtp://nudge:secret@127.0.0.1:{server.port}"
                    f"?tls_ca={certificate.cert_path}") is None

        (received,) = server.wait_for(1)
        assert received.auth_login == "nudge"


def test_credentials_without_tls_require_starttls_and_never_log_in_in_the_clear():
    # A relay that offers no STARTTLS but would take the password in plain text.
    with RecordingServer(credentials=CREDENTIALS) as server:
        error = send(f"smtp://nudge:secret@127.0.0.1:{server.port}")

        assert error is not None and error.setup == "smtp_tls"
        assert "does not offer STARTTLS" in str(error) and "tls=none" in str(error)
        assert server.messages == []


def test_tls_none_logs_in_in_the_clear_when_the_url_says_so():
    with RecordingServer(credentials=CREDENTIALS) as server:
        assert send(f"smtp://nudge:secret@127.0.0.1:{server.port}?tls=none") is None

        assert server.wait_for(1)[0].auth_login == "nudge"


def test_tls_none_is_warned_about_by_nudge_check(runner, config_file, config_data):
    config_data["smtp"] = {"url": "smtp://nudge:secret@127.0.0.1:2525?tls=none"}
    config_file.write_text(yaml.safe_dump(config_data))

    result = runner("check", "--no-promtool")

    assert "without encryption" in result.output, result.output
    assert "secret" not in result.output
