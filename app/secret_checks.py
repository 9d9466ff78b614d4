"""Start-up checks on the secrets and the public URL of a process that serves or sends.

A secret key that is short, or one of the sample values this repository has shipped in its
docker-compose files, deploy/ and README, lets anyone who read them forge unsubscribe links
(and, for the webhook token, queue emails). `nudge serve` and `nudge worker` refuse to start
with one, unless `dev_mode` (NUDGE_DEV=1) says this is a development setup, where they are
warnings. A `public_url` on localhost makes every unsubscribe link in every email dead: a
warning, outside development mode.

The checks name the setting, never the value.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from app.config import Config, ConfigError

log = logging.getLogger("nudge.secrets")

MIN_SECRET_KEY_BYTES = 32

# Every literal secret this repository has shipped as an example (tests/test_secrets.py checks
# that each literal secret in the README, deploy/ and the compose files is listed here).
SAMPLE_SECRETS = frozenset({
    "dev-token",
    "change-me-in-production",
    "dev-directory-client-secret",
    "dev-db-password",
    "secret",
    "changeme",
    "change-me",
})

DEV_MODE_HINT = ("for a development setup, set dev_mode: true (or NUDGE_DEV=1) to start "
                 "anyway")


def secret_problems(config: Config, environ: Mapping[str, str]) -> list[str]:
    """What is wrong with the secrets `config` (and the environment) name, one line each."""
    where = config.source
    problems: list[str] = []
    key = config.secret_key
    if key is None and not config.uses_postgres:
        key = _read(config.secret_key_file)  # generated beside the database: None if not yet
    if key is not None:
        if key in SAMPLE_SECRETS:
            problems.append(f"{where}: secret_key: is a sample value published with Nudge: "
                            f"anyone can forge unsubscribe links; generate one (openssl rand "
                            f"-hex 32)")
        elif len(key.encode()) < MIN_SECRET_KEY_BYTES:
            problems.append(f"{where}: secret_key: shorter than {MIN_SECRET_KEY_BYTES} bytes: "
                            f"generate one (openssl rand -hex 32)")
    for setting, value in _other_secrets(config, environ):
        if value in SAMPLE_SECRETS:
            problems.append(f"{where}: {setting}: is a sample value published with Nudge; "
                            f"replace it with a long random one (openssl rand -hex 32)")
    return [config.locations.locate(problem) for problem in problems]


def _other_secrets(config: Config, environ: Mapping[str, str]):
    yield "webhook.token", config.webhook_token
    if config.webhook_basic_auth:
        yield "webhook.basic_auth.password", config.webhook_basic_auth[1]
    if config.smtp_url:
        password = urlsplit(config.smtp_url).password
        yield "smtp password", unquote(password) if password else None
    if config.uses_postgres:
        password = urlsplit(config.database).password
        yield "database password", unquote(password) if password else None
    yield "database_password_file", _read(config.database_password_file)
    yield "NUDGE_DIRECTORY_TOKEN", environ.get("NUDGE_DIRECTORY_TOKEN", "").strip()
    yield "NUDGE_DIRECTORY_API_KEY", environ.get("NUDGE_DIRECTORY_API_KEY", "").strip()
    yield "NUDGE_DIRECTORY_CLIENT_SECRET", environ.get("NUDGE_DIRECTORY_CLIENT_SECRET", "").strip()
    yield "directory.token_file", _read(config.directory_token_file)
    yield "directory.api_key_file", _read(config.directory_api_key_file)
    if config.directory_oauth:
        yield "directory.oauth.client_secret_file", _read(config.directory_oauth.client_secret_file)


def _read(path: Path | None) -> str | None:
    """A secret file's value, or None when there is none (yet) or it cannot be read here: the
    code that uses it reports that."""
    if path is None:
        return None
    try:
        return Path(path).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def local_public_url(config: Config) -> bool:
    """Whether `public_url` points at this machine, where no recipient can follow a link."""
    host = (urlsplit(config.public_url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def require_safe_secrets(config: Config, environ: Mapping[str, str] | None = None, *,
                         warn: bool = True) -> None:
    """Raise ConfigError for unsafe secrets; in development mode, log them as warnings.
    Also warn about a public_url on localhost (outside development mode). `warn=False` for
    the children of `nudge serve`, which has warned already."""
    problems = secret_problems(config, os.environ if environ is None else environ)
    if problems and not config.dev_mode:
        raise ConfigError([*problems, f"{config.source}: {DEV_MODE_HINT}"])
    if not warn:
        return
    for problem in problems:
        log.warning("development mode: %s", problem)
    if local_public_url(config) and not config.dev_mode:
        log.warning("public_url %s points at this machine: the unsubscribe links in emails will "
                    "not work for recipients; set public_url to the address they reach",
                    config.public_url)
