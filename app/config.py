"""nudge.yml plus environment overrides, validated once at start-up.

Every setting is declared once, in SETTINGS: its key, default, environment variable, how it
is validated and a one-line doc. DEFAULTS, ENV_OVERRIDES, the Config values, the README's
configuration table (`markdown_table()`, tests/test_docs.py compares) and deploy/nudge.yml
(tested to hold every key) all follow from it. `load_config` collects every problem and
raises one ConfigError listing them, one line each, so an operator fixes the whole file in
one go and never meets a bad key on the first alert.

Why a table of our own rather than a settings library (pydantic-settings): nudge.yml is
nested YAML whose every mistake must come out as one `FILE: key: what is wrong (allowed:
...)` line, all of them at once, with environment variables that name single nested keys;
that is the validation, not the reading, and a library would add a compiled dependency
(pydantic-core) to reshape its errors back into these lines.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import yaml

from app.config_locations import KeyLocations, data_keys, key_lines
from app.durations import parse_cooldown, parse_duration
from app.redact import redact_url

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
    database_password_file: Path | None
    templates_dir: Path
    rules_dir: Path
    public_url: str
    secret_key: str | None
    dev_mode: bool
    bind: str
    public_bind: str | None
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
    pause_probe_interval: float
    metrics_dir: Path
    source: str = "defaults"
    raw: dict = field(default_factory=dict, repr=False, compare=False)
    retention: float | None = None  # seconds of history kept; None: forever
    # Processes `nudge worker` sends from (app/sender_processes.py); None: one per core.
    delivery_processes: int | None = None
    # Holding emails back (app/holds.py): frequency cap and quiet hours.
    cap_per_user: int = 0
    cap_period: float = 86400.0
    max_wait: float = 3 * 86400.0
    quiet_window: Any = None  # app.holds.QuietWindow | None
    timezone_field: str = "timezone"
    default_timezone: str = "UTC"
    # Slowing down when the relay asks (app/relay_throttle.py).
    smtp_throttle_backoff: float = 1.0
    smtp_throttle_max_backoff: float = 300.0
    # Where each key was written, for messages about it (app/config_locations.py).
    locations: KeyLocations = field(default=None, repr=False, compare=False)  # type: ignore

    def __post_init__(self):
        if self.locations is None:
            object.__setattr__(self, "locations", KeyLocations(self.source))

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
            config.locations.locate(
                f"{config.source}: webhook: no credentials configured: set NUDGE_WEBHOOK_TOKEN "
                "(or webhook.token, or webhook.basic_auth), or set "
                "webhook.allow_unauthenticated: true to accept alerts from anyone")
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
    lines: dict[str, int] = {}
    if path:
        try:
            text = Path(path).read_text()
            loaded = yaml.safe_load(text) or {}
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
        lines = key_lines(text)
    if data:
        raw = _deep_merge(raw, data)
        lines = {key: line for key, line in lines.items() if key not in data_keys(data)}
    merged = _deep_merge(copy.deepcopy(DEFAULTS), raw)
    _check_unknown_keys(raw, DEFAULTS, source, problems, prefix="")
    from_env: dict[str, str] = {}
    for name, key_path in ENV_OVERRIDES.items():
        value = environ.get(name)
        if value:
            _set_path(merged, key_path, value)
            from_env[".".join(key_path)] = name
    locations = KeyLocations(source, lines, from_env)
    _read_secret_files(merged, source, problems)
    config = _build(merged, source, problems, environ)
    if config.uses_postgres and not config.secret_key:
        problems.append(
            f"{source}: secret_key: required with a PostgreSQL database, so that every replica "
            f"signs unsubscribe links with the same key (set secret_key or NUDGE_SECRET_KEY)")
    if problems:
        # Each problem names its key; the file's line (or the variable) is added here.
        raise ConfigError([locations.locate(problem) for problem in problems])
    return dataclasses.replace(config, locations=locations)


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
                # the value is not shown: a section written as one value may be a secret
                problems.append(f"{source}: {dotted}: expected a mapping of keys, got a "
                                f"{type(value).__name__}")


class _Reader:
    """Reads one validated value per key, recording a problem instead of raising."""

    def __init__(self, tree: Mapping, source: str, problems: list[str], prefix: str = ""):
        self.tree, self.source, self.problems, self.prefix = tree, source, problems, prefix

    def get(self, dotted: str, convert: Callable[[Any], Any], what: str, default: Any = None,
            secret: bool = False):
        node: Any = self.tree
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        try:
            return convert(node)
        except (ValueError, TypeError) as exc:
            detail = str(exc) if isinstance(exc, ValueError) and str(exc) else f"got {node!r}"
            if secret:
                detail = hide_secret(detail, node)
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
    # 1 and 0 too, for environment variables (NUDGE_DEV=1)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
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


def _process_count(value: Any) -> int | None:
    """A number of processes, or None for `auto` (or 0): one per CPU core."""
    if value in (0, "0") or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        return _positive_int(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise ValueError(f"expected a whole number >= 1, or auto, got {value!r}") from None


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


def _address(value: Any) -> str:
    from app.messages import require_single_address

    text = _text(value)
    require_single_address(text)
    return text


def _optional_address(value: Any) -> str | None:
    return None if value in (None, "") else _address(value)


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


def _optional_bind(value: Any) -> str | None:
    return None if value in (None, "") else _bind(value)


# --- secrets -----------------------------------------------------------------------------------
#
# Every secret can come from a file instead of nudge.yml or the environment, as Alertmanager's
# `*_file` settings do (Docker and Kubernetes secrets are files). These are read once, at
# start-up; the directory's credential files (directory.token_file, ...) are re-read when they
# change, by app/directory.py. A secret and its file together are an error: which one wins
# would be a guess.
SECRET_FILES: dict[str, str] = {
    "secret_key": "secret_key_file",
    "webhook.token": "webhook.token_file",
    "webhook.basic_auth.password": "webhook.basic_auth.password_file",
}
# Settings whose values are never shown in an error message.
SECRET_SETTINGS = frozenset({*SECRET_FILES, "smtp.url", "database"})


def hide_secret(detail: str, value: Any) -> str:
    """`detail`, an error about a secret setting's `value`, without the secret: a URL keeps
    all but its password (which may hold / ? # @: the user info runs to the authority's LAST
    @); anything else keeps only what was expected."""
    if value in (None, ""):
        return detail
    if isinstance(value, str) and "://" in value:
        user_info = value.split("://", 1)[1].rpartition("@")[0]
        if ":" not in user_info:
            return detail
        password = user_info.split(":", 1)[1]
        for shown in sorted({password, quote(password, safe=""), unquote(password)} - {""},
                            key=len, reverse=True):
            detail = detail.replace(shown, "***")
        return detail
    expected = detail.split(", got ", 1)[0] if ", got " in detail else "not valid"
    return f"{expected} (the value is not shown)"


def _read_secret_file(path: Any, key: str, source: str, problems: list[str]) -> str | None:
    try:
        secret = Path(str(path)).read_text().strip()
    except OSError as exc:
        problems.append(f"{source}: {key}: cannot read {path}: {exc.strerror}")
        return None
    except UnicodeDecodeError:
        problems.append(f"{source}: {key}: {path} is not UTF-8 text")
        return None
    if not secret:
        problems.append(f"{source}: {key}: {path} is empty")
        return None
    return secret


def _tree_get(tree: Mapping, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _read_secret_files(tree: dict, source: str, problems: list[str]) -> None:
    """Put each secret given as a file into the tree, where its setting reads it."""
    for key, file_key in SECRET_FILES.items():
        path = _tree_get(tree, file_key)
        if path in (None, ""):
            continue
        if _tree_get(tree, key) not in (None, ""):
            problems.append(f"{source}: {file_key}: {key} is set too (in the file or the "
                            f"environment): use one of them")
            continue
        secret = _read_secret_file(path, file_key, source, problems)
        if secret is not None:
            _set_path(tree, tuple(key.split(".")), secret)
    path = _tree_get(tree, "smtp.password_file")
    if path in (None, ""):
        return
    url = _tree_get(tree, "smtp.url")
    where = f"{source}: smtp.password_file"
    if not isinstance(url, str) or "://" not in url:
        problems.append(f"{where}: needs smtp.url with the user name (smtp://USER@host:587)")
        return
    scheme, rest = url.strip().split("://", 1)
    user_info, at, host = rest.rpartition("@")
    if not at or not user_info:
        problems.append(f"{where}: smtp.url has no user name: write it as smtp://USER@host:587")
        return
    if ":" in user_info:
        problems.append(f"{where}: smtp.url has a password too: use one of them")
        return
    secret = _read_secret_file(path, "smtp.password_file", source, problems)
    if secret is not None:
        _set_path(tree, ("smtp", "url"), f"{scheme}://{user_info}:{quote(secret, safe='')}@{host}")


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
    values: Mapping[str, Any], source: str, problems: list[str], environ: Mapping[str, str]
) -> tuple[Path | None, Path | None, DirectoryOAuth | None]:
    """directory.token_file, directory.api_key_file and directory.oauth, cross-checked with
    NUDGE_DIRECTORY_TOKEN, NUDGE_DIRECTORY_API_KEY and NUDGE_DIRECTORY_CLIENT_SECRET."""
    token_file = values["directory.token_file"]
    api_key_file = values["directory.api_key_file"]
    token_env = bool(environ.get("NUDGE_DIRECTORY_TOKEN", "").strip())
    secret_env = bool(environ.get("NUDGE_DIRECTORY_CLIENT_SECRET", "").strip())
    if token_file and token_env:
        problems.append(f"{source}: directory.token_file: NUDGE_DIRECTORY_TOKEN is set too: "
                        f"use one of them")
    if api_key_file and environ.get("NUDGE_DIRECTORY_API_KEY", "").strip():
        problems.append(f"{source}: directory.api_key_file: NUDGE_DIRECTORY_API_KEY is set too: "
                        f"use one of them")
    token_url = values["directory.oauth.token_url"]
    client_id = values["directory.oauth.client_id"]
    secret_file = values["directory.oauth.client_secret_file"]
    scope = values["directory.oauth.scope"]
    audience = values["directory.oauth.audience"]
    auth_method = values["directory.oauth.auth_method"]
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


def _check_lease(values: Mapping[str, Any], source: str, problems: list[str]) -> None:
    """A claim must outlast one send, or another worker could send the same email."""
    from app.transports import lease_problem

    problem = lease_problem(values["delivery.lease"], values["smtp.url"],
                            values["directory.timeout"] if values["directory.url"] else 0.0)
    if problem:
        problems.append(f"{source}: delivery.lease: {problem}")


def _retention(value: Any) -> float | None:
    from app.retention import parse_retention

    return parse_retention(value)


def _token_auth_method(value: Any) -> str:
    from app.directory import TOKEN_AUTH_METHODS

    text = _text(value)
    if text not in TOKEN_AUTH_METHODS:
        raise ValueError(f"expected one of {', '.join(TOKEN_AUTH_METHODS)}, got {value!r}")
    return text


def _quiet_window(value: Any):
    from app.holds import parse_window

    return parse_window(value)


def _time_zone(value: Any) -> str:
    from app.holds import parse_zone

    parse_zone(value)
    return value.strip()


# --- the settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One nudge.yml key: where it goes in Config, how it is read, and its documentation."""

    key: str  # dotted path in nudge.yml
    default: Any  # as it would be written in nudge.yml
    convert: Callable[[Any], Any]  # validates and converts; ValueError names what is wrong
    allowed: str  # what is allowed, for error messages
    doc: str  # one line for the README's configuration table
    attr: str | None = None  # the Config attribute (None: combined with others, see _build)
    env: str | None = None  # environment variable that overrides it
    shown_default: str | None = None  # the README's default when the value says too little


def _d(key, default, convert, allowed, doc, attr=None, env=None, shown_default=None) -> Setting:
    return Setting(key, default, convert, allowed, doc, attr, env, shown_default)


SETTINGS: tuple[Setting, ...] = (
    _d("database", "var/nudge.db", _database, "a SQLite file path or a postgresql:// URL",
       "a SQLite file (WAL mode), or a PostgreSQL URL such as "
       "`postgresql://nudge:secret@db:5432/nudge?sslmode=require` "
       "([several replicas](#running-several-replicas))", "database", "NUDGE_DB"),
    _d("database_password_file", None, _optional_path, "a file path",
       "PostgreSQL: a file holding the password (read at every new connection, so a rotated "
       "password needs no restart); overrides a password in the URL",
       "database_password_file", "NUDGE_DB_PASSWORD_FILE"),
    _d("templates_dir", "email_templates", _path, "a folder path",
       "one folder per email template (reloaded when its files change)", "templates_dir",
       "NUDGE_TEMPLATES"),
    _d("rules_dir", "alert_rules", _path, "a folder path",
       "rule files and their promtool tests (`tests/`), for `nudge check`, sample alerts and "
       "reload checks", "rules_dir", "NUDGE_RULES"),
    _d("public_url", "http://127.0.0.1:8080", _http_url, "an http(s) URL",
       "base URL of Nudge as users reach it: unsubscribe links (use https)", "public_url",
       "NUDGE_PUBLIC_URL"),
    _d("secret_key", None, _optional_text, "a long random string",
       "signs unsubscribe links; when unset a random key is created once in "
       "`<database folder>/secret_key`. Required with PostgreSQL (every replica must use the "
       "same key). At least 32 bytes", "secret_key", "NUDGE_SECRET_KEY",
       shown_default="*(generated)*"),
    _d("secret_key_file", None, _optional_path, "a file path",
       "or a file holding it ([secrets from files](#secrets-from-files))",
       env="NUDGE_SECRET_KEY_FILE"),
    _d("dev_mode", False, _bool, "true or false",
       "development mode: a short or sample secret, or a `public_url` on localhost, is a "
       "warning instead of an error ([development mode](#development-mode))", "dev_mode",
       "NUDGE_DEV"),
    _d("server.bind", "127.0.0.1:8080", _bind, "HOST:PORT", "`nudge serve` listen address",
       "bind"),
    _d("server.public_bind", None, _optional_bind, "HOST:PORT",
       "a second listener serving only the recipient-facing pages (unsubscribe), for the "
       "internet ([public listener](#the-public-listener))", "public_bind", "NUDGE_PUBLIC_BIND"),
    _d("server.workers", 2, _positive_int, "a whole number >= 1",
       "receiver (gunicorn) processes", "workers"),
    _d("webhook.token", None, _optional_text, "a string", "bearer token Alertmanager must send",
       "webhook_token", "NUDGE_WEBHOOK_TOKEN"),
    _d("webhook.token_file", None, _optional_path, "a file path", "or a file holding it",
       env="NUDGE_WEBHOOK_TOKEN_FILE"),
    _d("webhook.basic_auth.username", None, _optional_text, "a string",
       "or HTTP basic auth: the user name (with `webhook.basic_auth.password`)"),
    _d("webhook.basic_auth.password", None, _optional_text, "a string",
       "and its password", env="NUDGE_WEBHOOK_BASIC_AUTH_PASSWORD"),
    _d("webhook.basic_auth.password_file", None, _optional_path, "a file path",
       "or a file holding the password", env="NUDGE_WEBHOOK_BASIC_AUTH_PASSWORD_FILE"),
    _d("webhook.allow_unauthenticated", False, _bool, "true or false",
       "accept alerts without credentials (logged as a warning); otherwise a token or basic "
       "auth is required", "allow_unauthenticated"),
    _d("webhook.max_body_bytes", 10 * 1024 * 1024, _positive_int, "bytes, >= 1",
       "larger bodies get 413", "max_body_bytes"),
    _d("alerts.user_label", "user_id", _text, "a label name", "label naming the user",
       "user_label"),
    _d("alerts.template_label", "email_template", _text, "a label name",
       "label naming the email template", "template_label"),
    _d("alerts.cooldown", "24h", parse_cooldown, "a duration like 24h, or forever",
       "default minimum time between two emails of one rule to one user, or `forever`",
       "default_cooldown"),
    _d("alerts.send_resolved", False, _bool, "true or false",
       "default: email the resolved variant when an alert resolves", "default_send_resolved"),
    _d("alerts.rules", {}, dict, "a mapping of alertname to settings",
       "per-alertname `template`, `cooldown`, `send_resolved` (for rules without the "
       "labels/annotations)"),
    _d("recipients.order", list(RECIPIENT_SOURCES), _recipient_order,
       "label, static_map, directory", "where to look for the address; first found wins",
       "recipient_order"),
    _d("recipients.email_label", "email", _text, "a label name",
       "alert label holding an address", "email_label"),
    _d("recipients.static_map", None, _optional_path, "a YAML or JSON file path",
       'YAML/JSON file `{user_id: {email: ..., name: ...}}` or `{user_id: "addr"}`',
       "static_map"),
    _d("directory.url", None, _directory_url, "an http(s) URL containing {user_id}",
       "user directory URL template, e.g. `https://api.internal/users/{user_id}`",
       "directory_url", "NUDGE_DIRECTORY_URL"),
    _d("directory.email_field", "email", _text, "a JSON field name",
       "JSON field holding the address", "directory_email_field"),
    _d("directory.timeout", "2s", _positive_duration, "a duration",
       "time budget for one lookup, retries included", "directory_timeout"),
    _d("directory.retries", 2, _non_negative_int, "a whole number >= 0",
       "retries on connection errors, timeouts, 5xx and 429", "directory_retries"),
    _d("directory.cache_ttl", "5m", parse_duration, "a duration",
       "how long a fetched record is reused when the answer has no `Cache-Control` `max-age` "
       "([cache rules](#caching-what-the-api-says-goes))", "directory_cache_ttl"),
    _d("directory.cache_ttl_min", "0s", parse_duration, "a duration",
       "lower bound on the API's `max-age`", "directory_cache_ttl_min"),
    _d("directory.cache_ttl_max", "1h", parse_duration, "a duration",
       "upper bound on the API's `max-age`", "directory_cache_ttl_max"),
    _d("directory.max_stale", "1h", parse_duration, "a duration",
       "while the directory cannot be asked, an expired record stands in for at most this "
       "long after it expired", "directory_max_stale"),
    _d("directory.api_key_header", "X-API-Key", _text, "an HTTP header name",
       "header carrying the API key (`NUDGE_DIRECTORY_API_KEY` or `directory.api_key_file`)",
       "directory_api_key_header"),
    _d("directory.token_file", None, _optional_path, "a file path",
       "file holding a bearer token, re-read when it changes", env="NUDGE_DIRECTORY_TOKEN_FILE"),
    _d("directory.api_key_file", None, _optional_path, "a file path",
       "file holding an API key, re-read when it changes", env="NUDGE_DIRECTORY_API_KEY_FILE"),
    _d("directory.oauth.token_url", None, _optional_http_url, "an http(s) URL",
       "OAuth 2.0 token endpoint: setting it turns on "
       "[client credentials](#oauth-20-client-credentials)", env="NUDGE_DIRECTORY_TOKEN_URL"),
    _d("directory.oauth.client_id", None, _optional_text, "a string",
       "the client id Nudge authenticates as", env="NUDGE_DIRECTORY_CLIENT_ID"),
    _d("directory.oauth.client_secret_file", None, _optional_path, "a file path",
       "file holding the client secret, re-read when it changes (or "
       "`NUDGE_DIRECTORY_CLIENT_SECRET`)", env="NUDGE_DIRECTORY_CLIENT_SECRET_FILE"),
    _d("directory.oauth.scope", None, _optional_text, "space-separated scopes",
       "space-separated scopes to ask for"),
    _d("directory.oauth.audience", None, _optional_text, "a string",
       "`audience` form parameter, for providers that need one (Auth0...)"),
    _d("directory.oauth.auth_method", "client_secret_basic", _token_auth_method,
       "client_secret_basic or client_secret_post",
       "how the client authenticates to the token endpoint: HTTP Basic, or "
       "`client_secret_post` (in the form)"),
    _d("smtp.url", None, _smtp_url,
       "smtp://[user:pass@]host[:port][?tls=starttls|tls|none][&tls_ca=FILE], smtps://...",
       "see [Sending](#sending)", "smtp_url", "NUDGE_SMTP_URL",
       shown_default="*(none: file outbox)*"),
    _d("smtp.password_file", None, _optional_path, "a file path",
       "a file holding the SMTP password, for an `smtp.url` with the user name only "
       "(`smtp://USER@host:587`)", env="NUDGE_SMTP_PASSWORD_FILE"),
    _d("smtp.from", "Nudge <nudge@localhost>", _address,
       "an address like 'Acme <noreply@acme.com>'", "From header", "smtp_from"),
    _d("smtp.reply_to", None, _optional_address, "an address", "Reply-To header",
       "smtp_reply_to"),
    _d("smtp.connections", 10, _positive_int, "a whole number >= 1",
       "parallel persistent SMTP connections (each message waits on several round trips to "
       "the relay: more connections keep more messages in flight)", "smtp_connections"),
    _d("smtp.rate_limit", 0, _non_negative_number, "messages/second, 0 = no limit",
       "messages per second across all connections (0 = no limit)", "smtp_rate_limit"),
    _d("delivery.processes", "auto", _process_count, "a whole number >= 1, or auto",
       "processes `nudge worker` sends from (`auto` or 0: one per CPU core; at most "
       "`smtp.connections`); `smtp.connections` and `smtp.rate_limit` are totals across them "
       "([sender processes](#sender-processes))", "delivery_processes",
       "NUDGE_DELIVERY_PROCESSES"),
    _d("smtp.throttle_backoff", "1s", _positive_duration, "a duration",
       "when the relay asks to slow down (421, 451 4.7.x, 454), every connection pauses this "
       "long, doubling while it keeps asking ([throttling](#when-the-relay-asks-to-slow-down))",
       "smtp_throttle_backoff"),
    _d("smtp.throttle_max_backoff", "5m", _positive_duration, "a duration",
       "cap on that pause (and on a wait the relay's reply asks for)", "smtp_throttle_max_backoff"),
    _d("delivery.max_attempts", 8, _positive_int, "a whole number >= 1",
       "transient failures are retried up to this many attempts...", "max_attempts"),
    _d("delivery.max_age", "24h", _positive_duration, "a duration",
       "...and for at most this long; then the delivery is `dead`", "max_age"),
    _d("delivery.retry_backoff", "30s", _positive_duration, "a duration",
       "first retry delay; doubles each attempt, with ±25 % jitter", "retry_backoff"),
    _d("delivery.max_backoff", "1h", _positive_duration, "a duration",
       "cap on the retry delay", "max_backoff"),
    _d("delivery.lease", "2m", _positive_duration, "a duration",
       "a delivery claimed by a worker that died is retried after this", "lease"),
    _d("delivery.pause_probe_interval", "30s", _positive_duration, "a duration",
       "while sending is [paused](#when-the-setup-is-broken-sending-pauses), one queued "
       "delivery is tried this often", "pause_probe_interval"),
    _d("delivery.outbox_dir", "var/outbox", _path, "a folder path",
       "where `.eml` files go when no SMTP URL is set", "outbox_dir"),
    _d("retention", "90d", _retention, "a duration like 90d, or forever",
       "raw notifications, decisions and send attempts older than this are deleted by the "
       "worker; what stops a re-send stays ([Retention](#retention)). `forever` (or 0) keeps "
       "everything", "retention", "NUDGE_RETENTION"),
    _d("limits.per_user", 0, _non_negative_int, "a whole number >= 0",
       "at most this many emails to one user per `limits.period`, across rules (0 = no cap); "
       "essential rules do not count ([holding emails](#holding-emails-back))", "cap_per_user"),
    _d("limits.period", "24h", _positive_duration, "a duration",
       "the rolling window of the cap", "cap_period"),
    _d("limits.max_wait", "3d", _positive_duration, "a duration",
       "an email held back (cap or quiet hours) longer than this is dropped as stale",
       "max_wait"),
    _d("quiet_hours.window", "", _quiet_window, "HH:MM-HH:MM in the user's local time, or empty",
       "no emails in this window of the user's local time, e.g. `21:00-08:00` (empty = none)",
       "quiet_window", shown_default="*(none)*"),
    _d("quiet_hours.timezone_field", "timezone", _text, "a field name",
       "field of the directory / static-map record holding the user's IANA time zone",
       "timezone_field"),
    _d("quiet_hours.default_timezone", "UTC", _time_zone, "an IANA time zone like Europe/Berlin",
       "for users without a time zone, or with one that is not valid", "default_timezone"),
    _d("metrics.multiproc_dir", "var/metrics", _path, "a folder path",
       "prometheus-client multiprocess folder, emptied at start (`PROMETHEUS_MULTIPROC_DIR` "
       "wins)", "metrics_dir"),
)
SETTINGS_BY_KEY = {setting.key: setting for setting in SETTINGS}


def _defaults_tree() -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for setting in SETTINGS:
        _set_path(tree, tuple(setting.key.split(".")), copy.deepcopy(setting.default))
    return tree


DEFAULTS: dict[str, Any] = _defaults_tree()
# Environment variables that override one key each: what differs per deployment.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    setting.env: tuple(setting.key.split(".")) for setting in SETTINGS if setting.env
}


def _shown(value: Any) -> str:
    if value is None:
        return "*(none)*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return f"`[{', '.join(map(str, value))}]`"
    return f"`{value}`"


def markdown_table() -> str:
    """The README's configuration table, from SETTINGS (tests/test_docs.py compares; print it
    with `python -c 'from app.config import markdown_table; print(markdown_table())'`)."""
    rows = ["| Key | Default | Meaning |", "|---|---|---|"]
    for setting in SETTINGS:
        default = setting.shown_default or _shown(setting.default)
        rows.append(f"| `{setting.key}` | {default} | {setting.doc} |")
    return "\n".join(rows)


def _build(tree: dict, source: str, problems: list[str], environ: Mapping[str, str]) -> Config:
    r = _Reader(tree, source, problems)
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.key == "alerts.rules":
            continue
        fallback = setting.convert(copy.deepcopy(setting.default))
        values[setting.key] = r.get(setting.key, setting.convert, setting.allowed, fallback,
                                    secret=setting.key in SECRET_SETTINGS)

    # Settings that only mean something together.
    basic_user = values["webhook.basic_auth.username"]
    basic_password = values["webhook.basic_auth.password"]
    basic_auth = None
    if basic_user or basic_password:
        if not (basic_user and basic_password):
            problems.append(
                f"{source}: webhook.basic_auth: set both username and password, or neither"
            )
        else:
            basic_auth = (basic_user, basic_password)
    token_file, api_key_file, oauth = _directory_credentials(values, source, problems, environ)
    if values["directory.cache_ttl_min"] > values["directory.cache_ttl_max"]:
        problems.append(f"{source}: directory.cache_ttl_max: must be at least "
                        f"directory.cache_ttl_min ({values['directory.cache_ttl_min']:g}s), "
                        f"got {values['directory.cache_ttl_max']:g}s")
    if values["smtp.throttle_backoff"] > values["smtp.throttle_max_backoff"]:
        problems.append(f"{source}: smtp.throttle_max_backoff: must be at least "
                        f"smtp.throttle_backoff ({values['smtp.throttle_backoff']:g}s), "
                        f"got {values['smtp.throttle_max_backoff']:g}s")
    _check_lease(values, source, problems)
    alerts = tree.get("alerts")
    return Config(
        **{s.attr: values[s.key] for s in SETTINGS if s.attr},
        webhook_basic_auth=basic_auth,
        rule_overrides=_rule_overrides(
            alerts.get("rules") if isinstance(alerts, Mapping) else None, source, problems),
        directory_token_file=token_file,
        directory_api_key_file=api_key_file,
        directory_oauth=oauth,
        source=source,
        raw=tree,
    )
