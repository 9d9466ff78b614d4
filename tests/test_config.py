"""nudge.yml and NUDGE_* variables: defaults, overrides, and errors an operator can act on."""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from app.cli import main
from app.config import ConfigError, RuleOverride, load_config, require_webhook_auth
from tests.conftest import ROOT

TOKEN_ENV = {"NUDGE_WEBHOOK_TOKEN": "x"}
HAS_TRANSPORTS = importlib.util.find_spec("app.transports") is not None
NUDGE_ENV = ("NUDGE_CONFIG", "NUDGE_DB", "NUDGE_TEMPLATES", "NUDGE_RULES", "NUDGE_PUBLIC_URL",
             "NUDGE_SECRET_KEY", "NUDGE_WEBHOOK_TOKEN", "NUDGE_SMTP_URL", "NUDGE_DIRECTORY_URL")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def problems_of(path, environ=None) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ=TOKEN_ENV if environ is None else environ)
    problems = excinfo.value.problems
    assert str(excinfo.value) == "\n".join(problems)
    assert all("\n" not in problem for problem in problems)
    return problems


# --- defaults and credentials -----------------------------------------------------------------


def test_defaults_load_without_a_file_when_a_token_is_given():
    config = load_config(environ=TOKEN_ENV)
    assert config.source == "defaults"
    assert config.webhook_token == "x"
    assert config.database == Path("var/nudge.db")
    assert config.templates_dir == Path("email_templates")
    assert config.rules_dir == Path("alert_rules")
    assert config.public_url == "http://127.0.0.1:8080"
    assert config.bind == "127.0.0.1:8080"
    assert config.workers == 2
    assert config.user_label == "user_id"
    assert config.template_label == "email_template"
    assert config.default_cooldown == 86400.0
    assert config.default_send_resolved is False
    assert config.rule_overrides == {}
    assert config.recipient_order == ("label", "static_map", "directory")
    assert config.smtp_url is None
    assert config.directory_url is None
    assert config.max_age == 86400.0
    assert config.allow_unauthenticated is False


def test_empty_file_means_defaults(tmp_path):
    path = write(tmp_path / "nudge.yml", "# nothing configured yet\n")
    config = load_config(path, environ=TOKEN_ENV)
    assert config.source == str(path)
    assert config.workers == 2
    assert config.default_cooldown == 86400.0


def test_no_credentials_at_all_is_one_clear_problem_for_the_receiver():
    config = load_config(environ={})  # read-only commands (deliveries, check...) need none
    with pytest.raises(ConfigError) as excinfo:
        require_webhook_auth(config)
    (problem,) = excinfo.value.problems
    assert "NUDGE_WEBHOOK_TOKEN" in problem
    assert "allow_unauthenticated" in problem


def test_serve_without_credentials_exits_before_starting(tmp_path, monkeypatch):
    monkeypatch.delenv("NUDGE_WEBHOOK_TOKEN", raising=False)
    path = write(tmp_path / "nudge.yml", f"database: {tmp_path / 'db' / 'n.db'}\n")
    result = CliRunner().invoke(main, ["--config", str(path), "serve"])
    assert result.exit_code == 2
    assert "nudge: config:" in result.output and "NUDGE_WEBHOOK_TOKEN" in result.output
    assert not (tmp_path / "db").exists()


def test_allow_unauthenticated_loads_without_credentials(tmp_path):
    path = write(tmp_path / "nudge.yml", "webhook:\n  allow_unauthenticated: true\n")
    config = load_config(path, environ={})
    assert config.allow_unauthenticated is True
    assert config.webhook_token is None
    assert config.webhook_basic_auth is None


def test_basic_auth_alone_is_enough_credentials(tmp_path):
    path = write(
        tmp_path / "nudge.yml",
        "webhook:\n  basic_auth:\n    username: alertmanager\n    password: pw\n",
    )
    config = load_config(path, environ={})
    assert config.webhook_basic_auth == ("alertmanager", "pw")


def test_rule_overrides_are_loaded(tmp_path):
    path = write(
        tmp_path / "nudge.yml",
        """
alerts:
  cooldown: 12h
  send_resolved: true
  rules:
    NoFirstApiCall:
      template: onboarding_first_call
      cooldown: forever
    UsageDropped:
      cooldown: 7d
      send_resolved: false
""",
    )
    config = load_config(path, environ=TOKEN_ENV)
    assert config.default_cooldown == 43200.0
    assert config.default_send_resolved is True
    assert config.rule_overrides == {
        "NoFirstApiCall": RuleOverride(template="onboarding_first_call", cooldown=None),
        "UsageDropped": RuleOverride(cooldown=604800.0, send_resolved=False),
    }


@pytest.mark.parametrize("section", ["alerts", "server", "webhook", "smtp", "delivery"])
def test_a_section_with_every_key_commented_out_means_defaults(tmp_path, section):
    # `alerts:` followed only by comments is YAML null; operators do this all the time.
    path = write(tmp_path / "nudge.yml", f"{section}:\n  # cooldown: 24h\n")
    config = load_config(path, environ=TOKEN_ENV)
    assert config.workers == 2
    assert config.default_cooldown == 86400.0
    assert config.webhook_token == "x"


def test_a_section_that_is_not_a_mapping_is_a_config_error(tmp_path):
    path = write(tmp_path / "nudge.yml", "alerts: 5\n")
    problems = problems_of(path)
    assert any(p.startswith(f"{path}:1: alerts: ") for p in problems), problems


# --- environment variables --------------------------------------------------------------------


def file_values(tmp_path) -> dict:
    data = {
        "database": "file/nudge.db",
        "templates_dir": "file_templates",
        "rules_dir": "file_rules",
        "public_url": "https://file.example.com",
        "secret_key": "file-secret",
        "webhook": {"token": "file-token"},
        "directory": {"url": "https://file-dir.example.com/users/{user_id}"},
    }
    if HAS_TRANSPORTS:
        data["smtp"] = {"url": "smtp://file-mail.example.com:25"}
    return data


ENV_CASES = [
    ("NUDGE_DB", "env/nudge.db", "database", Path("env/nudge.db")),
    ("NUDGE_TEMPLATES", "env_templates", "templates_dir", Path("env_templates")),
    ("NUDGE_RULES", "env_rules", "rules_dir", Path("env_rules")),
    ("NUDGE_PUBLIC_URL", "https://env.example.com/", "public_url", "https://env.example.com"),
    ("NUDGE_SECRET_KEY", "env-secret", "secret_key", "env-secret"),
    ("NUDGE_WEBHOOK_TOKEN", "env-token", "webhook_token", "env-token"),
    ("NUDGE_SMTP_URL", "smtp://env-mail.example.com:2525", "smtp_url",
     "smtp://env-mail.example.com:2525"),
    ("NUDGE_DIRECTORY_URL", "https://env-dir.example.com/u/{user_id}", "directory_url",
     "https://env-dir.example.com/u/{user_id}"),
]


@pytest.mark.parametrize(("name", "value", "attribute", "expected"), ENV_CASES,
                         ids=[case[0] for case in ENV_CASES])
def test_environment_variable_wins_over_the_file(tmp_path, name, value, attribute, expected):
    if name == "NUDGE_SMTP_URL" and not HAS_TRANSPORTS:
        pytest.skip("app.transports is not available")
    path = write(tmp_path / "nudge.yml", yaml.safe_dump(file_values(tmp_path)))
    from_file = load_config(path, environ={})
    assert getattr(from_file, attribute) != expected
    config = load_config(path, environ={name: value})
    assert getattr(config, attribute) == expected
    # Only that key changes.
    for _, _, other, _ in ENV_CASES:
        if other != attribute:
            assert getattr(config, other) == getattr(from_file, other)


def test_secret_key_from_environment_is_the_resolved_key(tmp_path):
    config = load_config(
        environ={**TOKEN_ENV, "NUDGE_SECRET_KEY": "env-secret",
                 "NUDGE_DB": str(tmp_path / "db" / "nudge.db")}
    )
    assert config.resolved_secret_key() == "env-secret"
    assert not (tmp_path / "db").exists()


def test_nudge_config_names_the_file(tmp_path):
    path = write(tmp_path / "elsewhere.yml", "server:\n  workers: 7\n")
    config = load_config(environ={**TOKEN_ENV, "NUDGE_CONFIG": str(path)})
    assert config.source == str(path)
    assert config.workers == 7


def test_explicit_path_wins_over_nudge_config(tmp_path):
    chosen = write(tmp_path / "chosen.yml", "server:\n  workers: 3\n")
    other = write(tmp_path / "other.yml", "server:\n  workers: 9\n")
    config = load_config(chosen, environ={**TOKEN_ENV, "NUDGE_CONFIG": str(other)})
    assert config.workers == 3


def test_nudge_config_pointing_nowhere_is_file_not_found(tmp_path):
    missing = tmp_path / "nope.yml"
    with pytest.raises(ConfigError) as excinfo:
        load_config(environ={**TOKEN_ENV, "NUDGE_CONFIG": str(missing)})
    assert excinfo.value.problems == [f"{missing}: file not found"]


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("NUDGE_PUBLIC_URL", "nudge.example.com", "public_url"),
        ("NUDGE_DIRECTORY_URL", "https://dir.example.com/users", "directory.url"),
    ],
)
def test_environment_values_are_validated_too(tmp_path, name, value, key):
    path = write(tmp_path / "nudge.yml", "server:\n  workers: 2\n")
    problems = problems_of(path, environ={**TOKEN_ENV, name: value})
    assert len(problems) == 1
    # The value came from the variable, not from a line of the file.
    assert problems[0].startswith(f"environment {name}: {key}: ")


# --- errors -----------------------------------------------------------------------------------


def broken_yaml(tmp_path) -> tuple[str, dict[str, int]]:
    """A nudge.yml with one mistake per listed dotted key, and the line of that key."""
    text = f"""
database: {tmp_path / "nudge.db"}
colour: blue
public_url: ftp://nudge.example.com
server:
  workers: 0
  colour: red
webhook:
  token: s3cret
  basic_auth:
    username: alertmanager
directory:
  url: https://directory.example.com/users
  timeout: soon
alerts:
  rules:
    NoFirstApiCall:
      cooldown: whenever
      tempalte: welcome
"""
    keys = {
        "colour": 3,
        "public_url": 4,
        "server.workers": 6,
        "server.colour": 7,
        "webhook.basic_auth": 10,
        "directory.url": 13,
        "directory.timeout": 14,
        "alerts.rules.NoFirstApiCall.cooldown": 18,
        "alerts.rules.NoFirstApiCall.tempalte": 19,
    }
    if HAS_TRANSPORTS:
        text += "smtp:\n  url: mail.example.com:25\n"
        keys["smtp.url"] = 21
    return text, keys


def test_every_mistake_is_reported_at_once(tmp_path):
    text, keys = broken_yaml(tmp_path)
    path = write(tmp_path / "nudge.yml", text)
    problems = problems_of(path)
    for key, line in keys.items():
        matching = [p for p in problems if p.startswith(f"{path}:{line}: {key}: ")]
        assert len(matching) == 1, (key, problems)
    assert len(problems) == len(keys), problems


def test_mistake_lines_say_what_was_wrong(tmp_path):
    text, _ = broken_yaml(tmp_path)
    path = write(tmp_path / "nudge.yml", text)
    by_key = {p.split(": ")[1]: p for p in problems_of(path)}
    assert "unknown key" in by_key["colour"]
    assert "unknown key" in by_key["server.colour"]
    assert "'soon'" in by_key["directory.timeout"]
    assert "{user_id}" in by_key["directory.url"]
    assert "password" in by_key["webhook.basic_auth"]
    assert "forever" in by_key["alerts.rules.NoFirstApiCall.cooldown"]
    assert "template" in by_key["alerts.rules.NoFirstApiCall.tempalte"]


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    path = write(
        tmp_path / "nudge.yml",
        "database: var/nudge.db\nserver:\n  bind: 127.0.0.1:8080\n  workers: 2: 3\n",
    )
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:")
    assert "line 4" in problem
    assert "YAML" in problem


def test_missing_file_is_reported(tmp_path):
    missing = tmp_path / "missing.yml"
    (problem,) = problems_of(missing)
    assert problem == f"{missing}: file not found"


def test_top_level_list_is_reported_clearly(tmp_path):
    path = write(tmp_path / "nudge.yml", "- database: var/nudge.db\n- workers: 2\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: ")
    assert "mapping" in problem
    assert "top level" in problem


def test_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "nudge.yml"
    path.write_bytes("smtp:\n  from: Caf\xe9 <nudge@example.com>\n".encode("latin-1"))
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: ")


# --- through the CLI --------------------------------------------------------------------------


BROKEN_FILES = {
    "many-mistakes": None,  # filled from broken_yaml()
    "invalid-yaml": "server:\n  bind: 127.0.0.1:8080\n  workers: 2: 3\n",
    "top-level-list": "- database: var/nudge.db\n",
    "section-not-a-mapping": "alerts: 5\n",
    "not-utf8": "smtp:\n  from: Caf\xe9 <nudge@example.com>\n".encode("latin-1"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_FILES))
def test_cli_reports_a_broken_config_without_a_traceback(tmp_path, config_file, runner, kind):
    content = BROKEN_FILES[kind] or broken_yaml(tmp_path)[0]
    if isinstance(content, bytes):
        config_file.write_bytes(content)
    else:
        config_file.write_text(content)
    result = runner("deliveries")
    # An exception escaping the CLI is what an operator would see as a traceback.
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert lines
    assert all(line.startswith("nudge: config: ") for line in lines), lines
    assert all(str(config_file) in line for line in lines), lines
    assert result.stdout == ""


def test_cli_lists_every_problem_on_its_own_line(tmp_path, config_file, runner):
    text, keys = broken_yaml(tmp_path)
    config_file.write_text(text)
    result = runner("deliveries")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == len(keys)
    for key, number in keys.items():
        assert any(line.startswith(f"nudge: config: {config_file}:{number}: {key}: ")
                   for line in lines), (key, lines)


def test_cli_missing_config_file(tmp_path, monkeypatch):
    for name in NUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    missing = tmp_path / "missing.yml"
    result = CliRunner().invoke(main, ["--config", str(missing), "deliveries"])
    assert result.exit_code == 2
    assert result.stderr == f"nudge: config: {missing}: file not found\n"
    assert "Traceback" not in result.output


def test_cli_config_from_nudge_config_variable(tmp_path, monkeypatch):
    for name in NUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    path = write(tmp_path / "nudge.yml", "server:\n  workers: 0\n")
    monkeypatch.setenv("NUDGE_CONFIG", str(path))
    result = CliRunner().invoke(main, ["deliveries"])
    assert result.exit_code == 2
    assert any(line.startswith(f"nudge: config: {path}:2: server.workers: ")
               for line in result.stderr.splitlines()), result.stderr


def test_serve_with_a_broken_config_exits_before_starting_anything(tmp_path, monkeypatch):
    for name in NUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    database = tmp_path / "serve" / "nudge.db"
    metrics = tmp_path / "serve-metrics"
    # Invalid on purpose (unknown key, workers 0): loading must fail, so no
    # server can start. The bind is a port nothing else should use, in case it ever did.
    path = write(
        tmp_path / "nudge.yml",
        yaml.safe_dump(
            {
                "database": str(database),
                "colour": "blue",
                "server": {"bind": "127.0.0.1:1", "workers": 0},
                "metrics": {"multiproc_dir": str(metrics)},
                "delivery": {"outbox_dir": str(tmp_path / "outbox")},
            }
        ),
    )
    result = CliRunner().invoke(main, ["--config", str(path), "serve"])
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines
    assert all(line.startswith("nudge: config: ") for line in lines)
    assert not database.exists()
    assert not database.parent.exists()
    assert not metrics.exists()


# --- the secret key ---------------------------------------------------------------------------


def test_secret_key_is_generated_beside_the_database_and_kept(tmp_path):
    database = tmp_path / "var" / "nudge.db"
    path = write(tmp_path / "nudge.yml", f"database: {database}\n")
    config = load_config(path, environ=TOKEN_ENV)
    assert config.secret_key is None
    key = config.resolved_secret_key()
    key_file = database.parent / "secret_key"
    assert config.secret_key_file == key_file
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key) >= 32
    assert key_file.read_text().strip() == key

    again = load_config(path, environ=TOKEN_ENV).resolved_secret_key()
    assert again == key


def test_secret_keys_differ_between_installations(tmp_path):
    keys = {
        load_config(environ={**TOKEN_ENV, "NUDGE_DB": str(tmp_path / name / "nudge.db")})
        .resolved_secret_key()
        for name in ("one", "two")
    }
    assert len(keys) == 2


def test_configured_secret_key_does_not_create_a_file(tmp_path):
    database = tmp_path / "var" / "nudge.db"
    config = load_config(
        data={"database": str(database), "secret_key": "configured"}, environ=TOKEN_ENV
    )
    assert config.resolved_secret_key() == "configured"
    assert not (database.parent / "secret_key").exists()


def test_empty_secret_key_file_is_never_used_as_the_key(tmp_path):
    # What a crash between creating the file and writing it (or a second process reading
    # in that window) leaves behind. An empty HMAC key would make signed links forgeable.
    database = tmp_path / "var" / "nudge.db"
    database.parent.mkdir()
    (database.parent / "secret_key").write_text("")
    config = load_config(data={"database": str(database)}, environ=TOKEN_ENV)
    key = config.resolved_secret_key()
    assert len(key.strip()) >= 32
    assert config.resolved_secret_key() == key


# --- PostgreSQL -------------------------------------------------------------------------------


def test_a_postgresql_url_is_accepted_and_its_password_never_printed():
    from app.config import load_config

    config = load_config(data={"database": "postgresql://nudge:hunter2@db:5432/nudge?sslmode=require",
                               "secret_key": "k"}, environ={})
    assert config.uses_postgres
    assert config.database == "postgresql://nudge:hunter2@db:5432/nudge?sslmode=require"
    assert config.database_description == "postgresql://nudge:***@db:5432/nudge?sslmode=require"


@pytest.mark.parametrize("url, problem", [
    ("postgresql://nudge:hunter2@db:5432/", "name the database"),
    ("postgresql://nudge:hunter2@db:port/nudge", "not a valid PostgreSQL URL"),
    ("mysql://nudge@db/nudge", "expected a SQLite file path or a postgresql:// URL"),
])
def test_a_bad_database_url_is_one_clear_problem_without_the_password(url, problem):
    from app.config import ConfigError, load_config

    with pytest.raises(ConfigError) as caught:
        load_config(data={"database": url, "secret_key": "k"}, environ={})
    (line,) = caught.value.problems
    assert problem in line and "hunter2" not in line


def test_postgresql_requires_a_shared_secret_key_and_takes_the_password_file_from_env(tmp_path):
    from app.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="secret_key: required with a PostgreSQL database"):
        load_config(environ={"NUDGE_DB": "postgresql://nudge@db/nudge"})
    config = load_config(environ={"NUDGE_DB": "postgresql://nudge@db/nudge",
                                  "NUDGE_SECRET_KEY": "k",
                                  "NUDGE_DB_PASSWORD_FILE": str(tmp_path / "pw")})
    assert config.database_password_file == tmp_path / "pw"


def test_a_postgresql_url_without_the_driver_stops_with_one_line(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "nudge.yml"
    config.write_text("database: postgresql://nudge:hunter2@127.0.0.1:1/nudge\nsecret_key: k\n")
    # As if `pip install nudge` had been run without the [postgres] extra.
    code = ("import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None; "
            "from app.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code, "--config", str(config), "deliveries"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: database is a PostgreSQL URL but the PostgreSQL driver is not installed: "
        "pip install 'nudge[postgres]'")


# --- one declaration per setting ----------------------------------------------------------------


def test_every_default_comes_from_the_declaration():
    from dataclasses import fields

    from app.config import SETTINGS, Config

    config = load_config(environ={})
    declared = {s.attr for s in SETTINGS if s.attr}
    combined = {"webhook_basic_auth", "rule_overrides", "directory_token_file",
                "directory_api_key_file", "directory_oauth", "source", "raw", "locations"}
    assert {f.name for f in fields(Config)} == declared | combined
    for setting in SETTINGS:
        if setting.attr:
            assert getattr(config, setting.attr) == setting.convert(setting.default), setting.key


def test_the_body_limit_is_written_once():
    text = (ROOT / "app" / "config.py").read_text()
    assert text.count("10 * 1024 * 1024") + text.count("10485760") == 1
