"""Secrets: refused when weak or published (unless in development mode), readable from files,
never printed in a config error, and never written literally into the shipped deployment."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import requests
import yaml

from app.config import ConfigError, load_config
from app.secret_checks import SAMPLE_SECRETS, local_public_url, secret_problems
from tests.conftest import ROOT, TOKEN, fixture_bytes
from tests.processes import NudgeProcess

STRONG_KEY = "k" * 40


def run_to_exit(tmp_path, config: dict, command=("serve",), env=None, timeout=30):
    nudge = NudgeProcess(tmp_path, config, command=command, env=env)
    nudge.start(wait_ready=False)
    try:
        code = nudge.process.wait(timeout)
    finally:
        if nudge.process.poll() is None:
            nudge.stop()
    nudge.log.close()
    return code, nudge.output


# --- refusing weak and sample secrets ----------------------------------------------------------


@pytest.mark.parametrize("command", [("serve",), ("worker",)])
@pytest.mark.parametrize("key, why", [("short-key", "shorter than 32 bytes"),
                                      ("change-me-in-production", "sample value")])
def test_a_weak_or_sample_secret_key_stops_the_service_at_start(tmp_path, config_data, command,
                                                                  key, why):
    config_data["secret_key"] = key
    code, output = run_to_exit(tmp_path, config_data, command)
    assert code == 2, output
    assert "secret_key" in output and why in output
    assert "NUDGE_DEV=1" in output  # says how to start a development setup anyway
    assert key not in output


def test_nudge_check_reports_what_serve_would_refuse(tmp_path, config_data):
    config_data["secret_key"] = "short-key"
    path = tmp_path / "nudge.yml"
    path.write_text(yaml.safe_dump(config_data))
    check = [sys.executable, "-m", "app.cli", "--config", str(path), "check", "--no-promtool"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    refused = subprocess.run(check, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert refused.returncode == 1
    assert "secret_key: shorter than 32 bytes" in refused.stderr
    assert "short-key" not in refused.stdout + refused.stderr
    developing = subprocess.run(check, capture_output=True, text=True, timeout=60, cwd=ROOT,
                                env={**env, "NUDGE_DEV": "1"})
    assert developing.returncode == 0, developing.stderr
    assert "warning: development mode:" in developing.stderr


def test_the_sample_webhook_token_stops_the_service(tmp_path, config_data):
    config_data["webhook"]["token"] = "dev-token"
    code, output = run_to_exit(tmp_path, config_data)
    assert code == 2, output
    assert "webhook.token: is a sample value" in output
    assert "dev-token" not in output


def test_development_mode_starts_with_a_warning(tmp_path, config_data):
    config_data.update(secret_key="short-key", public_url="http://localhost:8080")
    nudge = NudgeProcess(tmp_path, config_data, env={"NUDGE_DEV": "1"}).start()
    try:
        response = requests.post(nudge.url + "/webhook", data=fixture_bytes("firing-per-user.json"),
                                 headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert response.status_code == 200
    finally:
        nudge.stop()
    assert "development mode: " in nudge.output and "shorter than 32 bytes" in nudge.output
    assert nudge.output.count("shorter than 32 bytes") == 1  # not once more per child process
    assert "short-key" not in nudge.output


def test_a_public_url_on_localhost_is_warned_about(tmp_path, config_data):
    config_data["public_url"] = "http://127.0.0.1:8080"
    nudge = NudgeProcess(tmp_path, config_data).start()
    nudge.stop()
    assert "unsubscribe links in emails will not work" in nudge.output


@pytest.mark.parametrize("url, local", [
    ("http://localhost:8080", True), ("http://127.0.0.1:8080", True), ("http://[::1]:8080", True),
    ("http://0.0.0.0:8080", True), ("http://nudge.localhost", True),
    ("https://nudge.example.com", False), ("http://10.0.0.5:8080", False),
])
def test_which_public_urls_are_local(url, local):
    config = load_config(data={"public_url": url}, environ={})
    assert local_public_url(config) is local


@pytest.mark.parametrize("data, env, setting", [
    ({"webhook": {"basic_auth": {"username": "am", "password": "dev-token"}}}, {},
     "webhook.basic_auth.password"),
    ({"smtp": {"url": "smtp://me:dev-token@mail.example:587"}}, {}, "smtp password"),
    ({}, {"NUDGE_DIRECTORY_TOKEN": "dev-token"}, "NUDGE_DIRECTORY_TOKEN"),
    ({"database": "postgresql://nudge:dev-db-password@db/nudge", "secret_key": STRONG_KEY}, {},
     "database password"),
])
def test_every_kind_of_secret_is_checked_against_the_samples(data, env, setting):
    config = load_config(data={"secret_key": STRONG_KEY, **data}, environ=env)
    problems = secret_problems(config, env)
    assert len(problems) == 1 and f"{setting}: is a sample value" in problems[0]


def test_a_secret_key_file_beside_the_database_that_is_too_short_is_refused(tmp_path):
    (tmp_path / "secret_key").write_text("abc\n")
    config = load_config(data={"database": str(tmp_path / "nudge.db")}, environ={})
    assert any("shorter than 32 bytes" in p for p in secret_problems(config, {}))


def test_a_generated_secret_key_passes(tmp_path):
    config = load_config(data={"database": str(tmp_path / "nudge.db")}, environ={})
    config.resolved_secret_key()
    assert secret_problems(config, {}) == []


# --- secrets from files ------------------------------------------------------------------------


def test_every_secret_can_come_from_a_file(tmp_path):
    files = {name: tmp_path / name for name in ("token", "password", "key", "smtp")}
    for name, path in files.items():
        path.write_text(f"{name}-from-a-file: p@ss/w:rd?#\n")  # the newline is not part of it
    env = {"NUDGE_WEBHOOK_TOKEN_FILE": str(files["token"]),
           "NUDGE_WEBHOOK_BASIC_AUTH_PASSWORD_FILE": str(files["password"]),
           "NUDGE_SECRET_KEY_FILE": str(files["key"]),
           "NUDGE_SMTP_PASSWORD_FILE": str(files["smtp"]),
           "NUDGE_SMTP_URL": "smtp://mailer@mail.example:587"}
    config = load_config(data={"webhook": {"basic_auth": {"username": "am"}}}, environ=env)
    assert config.webhook_token == "token-from-a-file: p@ss/w:rd?#"
    assert config.webhook_basic_auth == ("am", "password-from-a-file: p@ss/w:rd?#")
    assert config.secret_key == "key-from-a-file: p@ss/w:rd?#"
    from app.transports import parse_smtp_url

    smtp = parse_smtp_url(config.smtp_url)
    assert (smtp.username, smtp.password, smtp.host) == ("mailer", "smtp-from-a-file: p@ss/w:rd?#",
                                                          "mail.example")
    # The same as nudge.yml keys.
    config = load_config(data={"webhook": {"token_file": str(files["token"])},
                               "secret_key_file": str(files["key"])}, environ={})
    assert config.webhook_token == "token-from-a-file: p@ss/w:rd?#"
    assert config.secret_key == "key-from-a-file: p@ss/w:rd?#"


def test_the_real_service_takes_its_webhook_token_from_a_file(tmp_path, config_data):
    token_file = tmp_path / "webhook-token"
    token_file.write_text("a-token-only-the-file-knows\n")
    del config_data["webhook"]["token"]
    nudge = NudgeProcess(tmp_path, config_data,
                         env={"NUDGE_WEBHOOK_TOKEN_FILE": str(token_file)}).start()
    try:
        def post(token):
            return requests.post(nudge.url + "/webhook", timeout=10,
                                 data=fixture_bytes("firing-per-user.json"),
                                 headers={"Authorization": f"Bearer {token}"}).status_code
        assert post("a-token-only-the-file-knows") == 200
        assert post(TOKEN) == 401
    finally:
        nudge.stop()


@pytest.mark.parametrize("data, env, expected", [
    ({"webhook": {"token": "x", "token_file": "{tmp}/token"}}, {},
     "webhook.token_file: webhook.token is set too"),
    ({"webhook": {"token_file": "{tmp}/token"}}, {"NUDGE_WEBHOOK_TOKEN": "x"},
     "webhook.token_file: webhook.token is set too"),
    ({"webhook": {"token_file": "{tmp}/missing"}}, {}, "cannot read"),
    ({"webhook": {"token_file": "{tmp}/empty"}}, {}, "is empty"),
    ({"smtp": {"url": "smtp://mail.example", "password_file": "{tmp}/token"}}, {},
     "smtp.url has no user name"),
    ({"smtp": {"url": "smtp://me:x@mail.example", "password_file": "{tmp}/token"}}, {},
     "smtp.url has a password too"),
])
def test_secret_file_mistakes_are_clear(tmp_path, data, env, expected):
    (tmp_path / "token").write_text("from-file\n")
    (tmp_path / "empty").write_text("\n")
    data = yaml.safe_load(yaml.safe_dump(data).replace("{tmp}", str(tmp_path)))
    with pytest.raises(ConfigError) as excinfo:
        load_config(data=data, environ=env)
    assert any(expected in problem for problem in excinfo.value.problems), excinfo.value


# --- a config error never prints a password ----------------------------------------------------

PASSWORD = "hunter2-Zq/9@x"


@pytest.mark.parametrize("config", [
    {"webhook": {"basic_auth": {"username": "am", "password": 424242424242}}},
    {"webhook": {"token": ["hunter2-Zq/9@x"]}},
    {"webhook": "hunter2-Zq/9@x"},
    {"webhook": {"basic_auth": "am:hunter2-Zq/9@x"}},
    {"secret_key": {"value": "hunter2-Zq/9@x"}},
    {"smtp": {"url": "smtp://me:hunter2-Zq/9@x@mail.example:99999999"}},
    {"smtp": {"url": "smtp://me:hunter2-Zq%2F9%40x@mail.example/path"}},
    {"smtp": {"url": "ftp://me:hunter2-Zq/9@x@mail.example"}},
    {"database": "postgresql://nudge:hunter2-Zq/9@x@db:notaport/nudge"},
    {"database": "mysql://nudge:hunter2-Zq/9@x@db/nudge"},
])
def test_a_config_error_never_prints_a_password(tmp_path, config):
    path = tmp_path / "nudge.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "app.cli", "--config", str(path), "serve"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert "nudge: config:" in result.stderr
    for shown in ("hunter2", "424242424242", "Zq%2F9"):
        assert shown not in result.stdout + result.stderr


# --- the shipped deployment --------------------------------------------------------------------

COMPOSE_FILES = ["docker-compose.yml", "docker-compose.replicas.yml"]
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|_KEY|CREDENTIALS?)(_FILE)?$", re.IGNORECASE)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_carry_no_literal_secrets(name):
    services = yaml.safe_load((ROOT / name).read_text())["services"]
    for service_name, service in services.items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for variable, value in environment.items():
            if SECRET_NAME.search(variable):
                assert variable.endswith("_FILE"), f"{name}: {service_name}: {variable}={value}"
        for volume in service.get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            assert not (source.startswith("./") and SECRET_NAME.search(source.replace("-", "_"))), (
                f"{name}: {service_name} mounts a secret from the repository: {volume}")


def test_no_secret_files_are_shipped_in_deploy():
    for path in (ROOT / "deploy").rglob("*"):
        if path.is_file():
            assert path.read_text(errors="replace").strip() not in SAMPLE_SECRETS, path


def test_the_secrets_generator_creates_each_secret_once(tmp_path):
    script = ROOT / "deploy" / "generate-secrets.sh"
    folder = tmp_path / "secrets"
    subprocess.run(["sh", str(script), str(folder), "webhook-token", "secret-key"], check=True,
                   timeout=30)
    first = {p.name: p.read_text() for p in folder.iterdir()}
    assert sorted(first) == ["secret-key", "webhook-token"]
    assert all(len(value.strip()) >= 32 for value in first.values())
    assert first["secret-key"] != first["webhook-token"]
    assert all(value not in SAMPLE_SECRETS for value in first.values())
    subprocess.run(["sh", str(script), str(folder), "webhook-token", "secret-key", "db-password"],
                   check=True, timeout=30)
    second = {p.name: p.read_text() for p in folder.iterdir()}
    assert {k: second[k] for k in first} == first  # kept across restarts
    assert "db-password" in second


# Places where documentation and examples write a secret's value literally.
LITERAL_SECRET = [
    re.compile(r"NUDGE_(?:WEBHOOK_TOKEN|SECRET_KEY|DIRECTORY_TOKEN|DIRECTORY_API_KEY|"
               r"DIRECTORY_CLIENT_SECRET|WEBHOOK_BASIC_AUTH_PASSWORD)\s*(?:\?=|:=|=|:)\s*([^\s'\"$)=]+)"),
    re.compile(r"Bearer ([A-Za-z0-9._~+/-]+)"),
    re.compile(r"postgres(?:ql)?://[^:/@\s]+:([^@/\s]+)@"),
    re.compile(r"smtps?://[^:/@\s]+:([^@/\s]+)@"),
]
DOCUMENTS = ["README.md", "Makefile", *COMPOSE_FILES]


def test_every_literal_secret_in_the_docs_and_deployment_is_refused_at_start():
    found = set()
    for path in [*(ROOT / name for name in DOCUMENTS), *(ROOT / "deploy").rglob("*")]:
        if path.is_file():
            for pattern in LITERAL_SECRET:
                found.update(pattern.findall(path.read_text(errors="replace")))
    placeholders = {"TOKEN", "PASSWORD", "pass", "***"}
    literal = {value for value in found if value not in placeholders and "{" not in value
               and not value.startswith(("$", "<"))}
    assert literal, "the patterns found nothing: they no longer match the documents"
    assert literal <= SAMPLE_SECRETS, literal - SAMPLE_SECRETS


def test_the_makefile_run_target_is_a_development_setup():
    makefile = (ROOT / "Makefile").read_text()
    run_lines = [line for line in makefile.splitlines() if line.startswith("run:")]
    assert any("NUDGE_DEV" in line for line in run_lines), run_lines
