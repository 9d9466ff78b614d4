"""nudge.yml plus environment overrides, validated once at start-up.

Every key has a default (DEFAULTS below is the documented reference); `load_config`
collects every problem and raises one ConfigError listing them, one line each, so an
operator fixes the whole file in one go and never meets a bad key on the first alert.
"""

from __future__ import annotations

import copy
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from app.durations import parse_cooldown, parse_duration
from app.redact import redact_url

DEFAULTS: dict[str, Any] = {
    "database": "var/nudge.db",
    "database_password_file": None,
    "templates_dir": "email_templates",
    "rules_dir": "alert_rules",
    "public_url": "http://127.0.0.1:8080",
    "secret_key": None,
    "server": {"bind": "127.0.0.1:8080", "workers": 2},
    "webhook": {
        "token": None,
        "basic_auth": {"username": None, "password": None},
        "allow_unauthenticated": False,
        "max_body_bytes": 10 * 1024 * 1024,
    },
    "alerts": {
        "user_label": "user_id",
        "template_label": "email_template",
        "cooldown": "24h",
        "send_resolved": False,
        "rules": {},
    },
    "recipients": {
        "order": ["label", "static_map", "directory"],
        "email_label": "email",
        "static_map": None,
    },
    "directory": {
        "url": None,
        "email_field": "email",
        "timeout": "2s",
        "retries": 2,
        "cache_ttl": "5m",
        "cache_ttl_min": "0s",
        "cache_ttl_max": "1h",
        "max_stale": "1h",
        "api_key_header": "X-API-Key",
        "token_file": None,
        "api_key_file": None,
        "oauth": {
            "token_url": None,
            "client_id": None,
            "client_secret_file": None,
            "scope": None,
            "audience": None,
            "auth_method": "client_secret_basic",
        },
    },
    "smtp": {
        "url": None,
        "from": "Nudge <nudge@localhost>",
        "reply_to": None,
        "connections": 10,
        "rate_limit": 0,
    },
    "delivery": {
        "max_attempts": 8,
        "max_age": "24h",
        "retry_backoff": "30s",
        "max_backoff": "1h",
        "lease": "2m",
        "outbox_dir": "var/outbox",
    },
    "metrics": {"multiproc_dir": "var/metrics"},
}

# Environment variables that override one key each: what differs per deployment.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "NUDGE_DB": ("database",),
    "NUDGE_DB_PASSWORD_FILE": ("database_password_file",),
    "NUDGE_TEMPLATES": ("templates_dir",),
    "NUDGE_RULES": ("rules_dir",),
    "NUDGE_PUBLIC_URL": ("public_url",),
    "NUDGE_SECRET_KEY": ("secret_key",),
    "NUDGE_WEBHOOK_TOKEN": ("webhook", "token"),
    "NUDGE_SMTP_URL": ("smtp", "url"),
    "NUDGE_DIRECTORY_URL": ("directory", "url"),
    "NUDGE_DIRECTORY_TOKEN_FILE": ("directory", "token_file"),
    "NUDGE_DIRECTORY_API_KEY_FILE": ("directory", "api_key_file"),
    "NUDGE_DIRECTORY_TOKEN_URL": ("directory", "oauth", "token_url"),
    "NUDGE_DIRECTORY_CLIENT_ID": ("directory", "oauth", "client_id"),
    "NUDGE_DIRECTORY_CLIENT_SECRET_FILE": ("directory", "oauth", "client_secret_file"),
}

RECIPIENT_SOURCES = ("label", "static_map", "directory")
RULE_OVERRIDE_KEYS = ("template", "cooldown", "send_resolved")


class ConfigError(Exception):
    """Invalid configuration: one problem per line, each naming the source and the key."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class RuleOverride:
    template: str | None = None
    cooldown: float | None | str = "default"  # seconds, None for forever, "default" when unset
    send_resolved: bool | None = None


@dataclass(frozen=True)
class DirectoryOAuth:
    """OAuth 2.0 client credentials for the directory; the secret is a file or, when
    `client_secret_file` is None, NUDGE_DIRECTORY_CLIENT_SECRET (never kept here)."""

    token_url: str
    client_id: str
    client_secret_file: Path | None
    scope: str | None
    audience: str | None
    auth_method: str


@dataclass(frozen=True)
class Config:
    database: Path | str  # a SQLite file, or a PostgreSQL URL (str)
    templates_dir: Path
    rules_dir: Path
    public_url: str
    secret_key: str | None
    bind: str
    workers: int
    webhook_token: str | None
    webhook_basic_auth: tuple[str, str] | None
    allow_unauthenticated: bool
    max_body_bytes: int
    user_label: str
    template_label: str
    default_cooldown: float | None
    default_send_resolved: bool
    rule_overrides: dict[str, RuleOverride]
    recipient_order: tuple[str, ...]
    email_label: str
    static_map: Path | None
    directory_url: str | None
    directory_email_field: str
    directory_timeout: float
    directory_retries: int
    directory_cache_ttl: float
    directory_cache_ttl_min: float
    directory_cache_ttl_max: float
    directory_max_stale: float
    directory_api_key_header: str
    directory_token_file: Path | None
    directory_api_key_file: Path | None
    directory_oauth: DirectoryOAuth | None
    smtp_url: str | None
    smtp_from: str
    smtp_reply_to: str | None
    smtp_connections: int
    smtp_rate_limit: float
    max_attempts: int
    max_age: float
    retry_backoff: float
    max_backoff: float
    lease: float
    outbox_dir: Path
    metrics_dir: Path
    database_password_file: Path | None = None
    source: str = "defaults"
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def uses_postgres(self) -> bool:
        return isinstance(self.database, str)

    @property
    def database_description(self) -> str:
        """Where the data lives, safe to print (a PostgreSQL password is masked)."""
        return redact_url(self.database) if self.uses_postgres else str(self.database)

    @property
    def secret_key_file(self) -> Path:
        if self.uses_postgres:  # load_config requires secret_key with PostgreSQL
            raise ConfigError(["secret_key: required with a PostgreSQL database"])
        return self.database.parent / "secret_key"

    def resolved_secret_key(self) -> str:
        """NUDGE_SECRET_KEY, else a random key kept beside the database so links survive restarts."""
        if self.secret_key:
            return self.secret_key
        path = self.secret_key_file
        try:
            key = path.read_text().strip()
            if key:
                return key
        except FileNotFoundError:
            pass
        # Write a complete file under a temporary name, then link it into place: a process
        # racing us either sees no file or the whole key, never an empty one.
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        try:
            if path.exists():  # empty or unreadable leftover: replace it
                os.replace(temporary, path)
            else:
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    pass
        finally:
            temporary.unlink(missing_ok=True)
        return path.read_text().strip()


def require_webhook_auth(config: Config) -> None:
    """The receiver refuses to start without credentials unless that is an explicit choice."""
    if not (config.webhook_token or config.webhook_basic_auth or config.allow_unauthenticated):
        raise ConfigError([
            f"{config.source}: webhook: no credentials configured: set NUDGE_WEBHOOK_TOKEN (or "
            "webhook.token, or webhook.basic_auth), or set webhook.allow_unauthenticated: true "
            "to accept alerts from anyone"
        ])


def load_config(
    path: str | os.PathLike | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    data: Mapping[str, Any] | None = None,
) -> Config:
    """Read `path` (or NUDGE_CONFIG, or nothing), apply `data` and the environment, validate."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("NUDGE_CONFIG") or None
    source = str(path) if path else "defaults"
    problems: list[str] = []
    raw: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found"]) from None
        except UnicodeDecodeError:
            raise ConfigError([f"{path}: not UTF-8 text"]) from None
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            what = getattr(exc, "problem", None) or str(exc)
            raise ConfigError([f"{path}:{where} not valid YAML: {what}"]) from None
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}: expected a mapping of keys at the top level"])
        raw = loaded
    if data:
        raw = _deep_merge(raw, data)
    merged = _deep_merge(copy.deepcopy(DEFAULTS), raw)
    _check_unknown_keys(raw, DEFAULTS, source, problems, prefix="")
    for name, key_path in ENV_OVERRIDES.items():
        value = environ.get(name)
        if value:
            _set_path(merged, key_path, value)
    config = _build(merged, source, problems, environ)
    if config.uses_postgres and not config.secret_key:
        problems.append(
            f"{source}: secret_key: required with a PostgreSQL database, so that every replica "
            f"signs unsubscribe links with the same key (set secret_key or NUDGE_SECRET_KEY)")
    if problems:
        raise ConfigError(problems)
    return config


def _deep_merge(base: dict, extra: Mapping) -> dict:
    result = dict(base)
    for key, value in extra.items():
        if value is None and isinstance(result.get(key), dict):
            continue  # a section whose keys are all commented out means "the defaults"
        if isinstance(value, Mapping) and isinstance(result.get(key), dict) and key != "rules":
            result[key] = _deep_merge(result[key], value)
        else:
            result[key] = value
    return result


def _set_path(tree: dict, key_path: tuple[str, ...], value: Any) -> None:
    for key in key_path[:-1]:
        tree = tree.setdefault(key, {})
    tree[key_path[-1]] = value


def _check_unknown_keys(raw: Any, defaults: dict, source: str, problems: list, prefix: str):
    if not isinstance(raw, Mapping):
        return
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in defaults:
            allowed = ", ".join(sorted(defaults))
            problems.append(f"{source}: {dotted}: unknown key (allowed here: {allowed})")
        elif isinstance(defaults[key], dict) and key != "rules":
            if isinstance(value, Mapping):
                _check_unknown_keys(value, defaults[key], source, problems, dotted + ".")
            elif value is not None:
                problems.append(f"{source}: {dotted}: expected a mapping, got {value!r}")


class _Reader:
    """Reads one validated value per key, recording a problem instead of raising."""

    def __init__(self, tree: Mapping, source: str, problems: list[str], prefix: str = ""):
        self.tree, self.source, self.problems, self.prefix = tree, source, problems, prefix

    def get(self, dotted: str, convert: Callable[[Any], Any], what: str, default: Any = None):
        node: Any = self.tree
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        try:
            return convert(node)
        except (ValueError, TypeError) as exc:
            detail = str(exc) if isinstance(exc, ValueError) and str(exc) else f"got {node!r}"
            self.problems.append(
                f"{self.source}: {self.prefix}{dotted}: {detail} (allowed: {what})"
            )
            return default


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _optional_text(value: Any) -> str | None:
    return None if value in (None, "") else _text(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return value.strip().lower() in ("true", "yes")
    raise ValueError(f"expected true or false, got {value!r}")


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a positive whole number, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"expected a positive whole number, got {value!r}") from None
    if number < 1:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return number


def _non_negative_int(value: Any) -> int:
    return 0 if value in (0, "0") else _positive_int(value)


def _non_negative_number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number >= 0, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number >= 0, got {value!r}") from None
    if number < 0:
        raise ValueError(f"expected a number >= 0, got {value!r}")
    return number


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero, got {value!r}")
    return seconds


def _http_url(value: Any) -> str:
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return text.rstrip("/")


def _optional_http_url(value: Any) -> str | None:
    return None if value in (None, "") else _http_url(value)


def _directory_url(value: Any) -> str | None:
    if value in (None, ""):
        return None
    url = _http_url(value)
    if "{user_id}" not in url:
        raise ValueError(f"must contain {{user_id}} where the user's id goes, got {value!r}")
    return url


def _smtp_url(value: Any) -> str | None:
    if value in (None, ""):
        return None
    from app.transports import parse_smtp_url

    parse_smtp_url(_text(value))
    return _text(value)


def _bind(value: Any) -> str:
    text = _text(str(value))
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return text


def _path(value: Any) -> Path:
    return Path(_text(value))


POSTGRES_SCHEMES = ("postgresql", "postgres")


def _database(value: Any) -> Path | str:
    """A SQLite file path, or a PostgreSQL URL (libpq syntax; query parameters pass through)."""
    text = _text(value)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in POSTGRES_SCHEMES:
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError(f"not a valid PostgreSQL URL: {redact_url(text)}") from None
        if not parts.path.strip("/") and "dbname=" not in parts.query:
            raise ValueError(f"name the database in the URL (postgresql://user@host:5432/nudge), "
                             f"got {redact_url(text)}")
        return text
    if scheme:
        raise ValueError(f"expected a SQLite file path or a postgresql:// URL, got a "
                         f"{scheme}:// URL")
    return Path(text)


def _optional_path(value: Any) -> Path | None:
    return None if value in (None, "") else _path(value)


def _recipient_order(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a list, got {value!r}")
    bad = [item for item in value if item not in RECIPIENT_SOURCES]
    if bad or len(set(value)) != len(value):
        raise ValueError(f"expected distinct entries of {', '.join(RECIPIENT_SOURCES)}, got {value!r}")
    return tuple(value)


def _rule_overrides(value: Any, source: str, problems: list[str]) -> dict[str, RuleOverride]:
    if value in (None, {}):
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{source}: alerts.rules: expected a mapping of alertname to settings")
        return {}
    overrides = {}
    for alertname, settings in value.items():
        where = f"{source}: alerts.rules.{alertname}"
        if not isinstance(settings, Mapping):
            problems.append(f"{where}: expected a mapping with keys {', '.join(RULE_OVERRIDE_KEYS)}")
            continue
        for key in settings:
            if key not in RULE_OVERRIDE_KEYS:
                problems.append(
                    f"{where}.{key}: unknown key (allowed here: {', '.join(RULE_OVERRIDE_KEYS)})"
                )
        reader = _Reader(settings, source, problems, prefix=f"alerts.rules.{alertname}.")
        template = reader.get("template", _optional_text, "a template folder name")
        cooldown: float | None | str = "default"
        if "cooldown" in settings:
            cooldown = reader.get("cooldown", parse_cooldown, "a duration like 24h, or forever")
        send_resolved = None
        if "send_resolved" in settings:
            send_resolved = reader.get("send_resolved", _bool, "true or false")
        overrides[str(alertname)] = RuleOverride(template, cooldown, send_resolved)
    return overrides


def _directory_credentials(
    r: _Reader, source: str, problems: list[str], environ: Mapping[str, str]
) -> tuple[Path | None, Path | None, DirectoryOAuth | None]:
    """directory.token_file, directory.api_key_file and directory.oauth, cross-checked with
    NUDGE_DIRECTORY_TOKEN, NUDGE_DIRECTORY_API_KEY and NUDGE_DIRECTORY_CLIENT_SECRET."""
    token_file = r.get("directory.token_file", _optional_path, "a file path")
    api_key_file = r.get("directory.api_key_file", _optional_path, "a file path")
    token_env = bool(environ.get("NUDGE_DIRECTORY_TOKEN", "").strip())
    secret_env = bool(environ.get("NUDGE_DIRECTORY_CLIENT_SECRET", "").strip())
    if token_file and token_env:
        problems.append(f"{source}: directory.token_file: NUDGE_DIRECTORY_TOKEN is set too: "
                        f"use one of them")
    if api_key_file and environ.get("NUDGE_DIRECTORY_API_KEY", "").strip():
        problems.append(f"{source}: directory.api_key_file: NUDGE_DIRECTORY_API_KEY is set too: "
                        f"use one of them")
    token_url = r.get("directory.oauth.token_url", _optional_http_url, "an http(s) URL")
    client_id = r.get("directory.oauth.client_id", _optional_text, "a string")
    secret_file = r.get("directory.oauth.client_secret_file", _optional_path, "a file path")
    scope = r.get("directory.oauth.scope", _optional_text, "space-separated scopes")
    audience = r.get("directory.oauth.audience", _optional_text, "a string")
    auth_method = r.get("directory.oauth.auth_method", _token_auth_method,
                        "client_secret_basic or client_secret_post", "client_secret_basic")
    if not (token_url or client_id or secret_file or scope or audience):
        return token_file, api_key_file, None
    where = f"{source}: directory.oauth"
    if not token_url:
        problems.append(f"{where}.token_url: required with directory.oauth settings "
                        f"(or NUDGE_DIRECTORY_TOKEN_URL)")
    if not client_id:
        problems.append(f"{where}.client_id: required with directory.oauth.token_url "
                        f"(or NUDGE_DIRECTORY_CLIENT_ID)")
    if secret_file and secret_env:
        problems.append(f"{where}.client_secret_file: NUDGE_DIRECTORY_CLIENT_SECRET is set too: "
                        f"use one of them")
    elif not (secret_file or secret_env):
        problems.append(f"{where}.client_secret_file: required with directory.oauth.token_url "
                        f"(or NUDGE_DIRECTORY_CLIENT_SECRET_FILE, or NUDGE_DIRECTORY_CLIENT_SECRET)")
    if token_file or token_env:
        problems.append(f"{where}: a bearer token (directory.token_file or NUDGE_DIRECTORY_TOKEN) "
                        f"is set too: both would be sent as Authorization; use one")
    if not (token_url and client_id):
        return token_file, api_key_file, None
    return token_file, api_key_file, DirectoryOAuth(
        token_url, client_id, secret_file, scope, audience, auth_method)


def _token_auth_method(value: Any) -> str:
    from app.directory import TOKEN_AUTH_METHODS

    text = _text(value)
    if text not in TOKEN_AUTH_METHODS:
        raise ValueError(f"expected one of {', '.join(TOKEN_AUTH_METHODS)}, got {value!r}")
    return text


def _build(tree: dict, source: str, problems: list[str], environ: Mapping[str, str]) -> Config:
    r = _Reader(tree, source, problems)
    token = r.get("webhook.token", _optional_text, "a string")
    basic_user = r.get("webhook.basic_auth.username", _optional_text, "a string")
    basic_password = r.get("webhook.basic_auth.password", _optional_text, "a string")
    basic_auth = None
    if basic_user or basic_password:
        if not (basic_user and basic_password):
            problems.append(
                f"{source}: webhook.basic_auth: set both username and password, or neither"
            )
        else:
            basic_auth = (basic_user, basic_password)
    allow_unauthenticated = r.get("webhook.allow_unauthenticated", _bool, "true or false", False)
    token_file, api_key_file, oauth = _directory_credentials(r, source, problems, environ)
    cache_ttl_min = r.get("directory.cache_ttl_min", parse_duration, "a duration", 0.0)
    cache_ttl_max = r.get("directory.cache_ttl_max", parse_duration, "a duration", 3600.0)
    if cache_ttl_min > cache_ttl_max:
        problems.append(f"{source}: directory.cache_ttl_max: must be at least "
                        f"directory.cache_ttl_min ({cache_ttl_min:g}s), got {cache_ttl_max:g}s")
    return Config(
        database=r.get("database", _database, "a SQLite file path or a postgresql:// URL",
                       Path("var/nudge.db")),
        database_password_file=r.get("database_password_file", _optional_path, "a file path"),
        templates_dir=r.get("templates_dir", _path, "a folder path", Path("email_templates")),
        rules_dir=r.get("rules_dir", _path, "a folder path", Path("alert_rules")),
        public_url=r.get("public_url", _http_url, "an http(s) URL", "http://127.0.0.1:8080"),
        secret_key=r.get("secret_key", _optional_text, "a long random string"),
        bind=r.get("server.bind", _bind, "HOST:PORT", "127.0.0.1:8080"),
        workers=r.get("server.workers", _positive_int, "a whole number >= 1", 2),
        webhook_token=token,
        webhook_basic_auth=basic_auth,
        allow_unauthenticated=allow_unauthenticated,
        max_body_bytes=r.get("webhook.max_body_bytes", _positive_int, "bytes, >= 1", 10485760),
        user_label=r.get("alerts.user_label", _text, "a label name", "user_id"),
        template_label=r.get("alerts.template_label", _text, "a label name", "email_template"),
        default_cooldown=r.get(
            "alerts.cooldown", parse_cooldown, "a duration like 24h, or forever", 86400.0
        ),
        default_send_resolved=r.get("alerts.send_resolved", _bool, "true or false", False),
        rule_overrides=_rule_overrides(
            alerts.get("rules") if isinstance(alerts := tree.get("alerts"), Mapping) else None,
            source,
            problems,
        ),
        recipient_order=r.get(
            "recipients.order", _recipient_order, "label, static_map, directory", RECIPIENT_SOURCES
        ),
        email_label=r.get("recipients.email_label", _text, "a label name", "email"),
        static_map=r.get("recipients.static_map", _optional_path, "a YAML or JSON file path"),
        directory_url=r.get(
            "directory.url", _directory_url, "an http(s) URL containing {user_id}"
        ),
        directory_email_field=r.get("directory.email_field", _text, "a JSON field name", "email"),
        directory_timeout=r.get("directory.timeout", _positive_duration, "a duration", 2.0),
        directory_retries=r.get("directory.retries", _non_negative_int, "a whole number >= 0", 2),
        directory_cache_ttl=r.get("directory.cache_ttl", parse_duration, "a duration", 300.0),
        directory_cache_ttl_min=cache_ttl_min,
        directory_cache_ttl_max=cache_ttl_max,
        directory_max_stale=r.get("directory.max_stale", parse_duration, "a duration", 3600.0),
        directory_api_key_header=r.get(
            "directory.api_key_header", _text, "an HTTP header name", "X-API-Key"
        ),
        directory_token_file=token_file,
        directory_api_key_file=api_key_file,
        directory_oauth=oauth,
        smtp_url=r.get(
            "smtp.url", _smtp_url, "smtp://[user:pass@]host[:port][?tls=starttls|tls], smtps://..."
        ),
        smtp_from=r.get("smtp.from", _text, "an address like 'Acme <noreply@acme.com>'", ""),
        smtp_reply_to=r.get("smtp.reply_to", _optional_text, "an address"),
        smtp_connections=r.get("smtp.connections", _positive_int, "a whole number >= 1", 10),
        smtp_rate_limit=r.get("smtp.rate_limit", _non_negative_number, "messages/second, 0 = no limit", 0.0),
        max_attempts=r.get("delivery.max_attempts", _positive_int, "a whole number >= 1", 8),
        max_age=r.get("delivery.max_age", _positive_duration, "a duration", 86400.0),
        retry_backoff=r.get("delivery.retry_backoff", _positive_duration, "a duration", 30.0),
        max_backoff=r.get("delivery.max_backoff", _positive_duration, "a duration", 3600.0),
        lease=r.get("delivery.lease", _positive_duration, "a duration", 120.0),
        outbox_dir=r.get("delivery.outbox_dir", _path, "a folder path", Path("var/outbox")),
        metrics_dir=r.get("metrics.multiproc_dir", _path, "a folder path", Path("var/metrics")),
        source=source,
        raw=tree,
    )
