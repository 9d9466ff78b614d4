"""One redaction helper for every URL that may carry a password (database, SMTP)."""

import pytest

from app.redact import redact_url


@pytest.mark.parametrize("url, shown", [
    ("postgresql://nudge:hunter2@db:5432/nudge?sslmode=require",
     "postgresql://nudge:***@db:5432/nudge?sslmode=require"),
    ("postgresql://nudge@db/nudge?sslmode=require&password=hunter2",
     "postgresql://nudge@db/nudge?sslmode=require&password=***"),
    ("smtp://mailer:hunter2@smtp.example.com:587?tls=starttls",
     "smtp://mailer:***@smtp.example.com:587?tls=starttls"),
    ("smtps://:hunter2@smtp.example.com", "smtps://:***@smtp.example.com"),
    # a password with an unencoded @, and URLs too broken to parse, still lose the password
    ("smtp://mailer:hun@ter2@smtp.example.com", "smtp://mailer:***@smtp.example.com"),
    ("postgresql://nudge:hunter2@db:port/nudge", "postgresql://nudge:***@db:port/nudge"),
    ("smtp://smtp.example.com:25", "smtp://smtp.example.com:25"),
    ("var/nudge.db", "var/nudge.db"),
])
def test_the_password_is_never_shown(url, shown):
    assert redact_url(url) == shown


def test_every_module_uses_the_one_helper():
    from app import config, transports, worker
    from tests.conftest import ROOT

    for module in (config, transports, worker):
        assert "redact_url" in vars(module), module.__name__
    assert "from app.redact import redact_url" in (ROOT / "app/store/postgres.py").read_text()
