"""Shared fixtures: isolated apps on a temporary SQLite file, flaskr-style."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from app import create_app
from app.cli import main
from app.decider import Decider
from app.policy import AlertPolicy

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "alertmanager"
TOKEN = "s3cret"


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL cluster for the whole session; tests create databases in it."""
    from tests.postgres_server import PostgresServer

    server = PostgresServer().init().start()
    yield server
    server.destroy()


def instance_config(folder: Path) -> dict:
    """nudge.yml keys for an instance whose files all live in `folder`, on the shipped rules
    and templates, taking the test token."""
    return {
        "database": str(folder / "nudge.db"),
        "templates_dir": str(ROOT / "email_templates"),
        "rules_dir": str(ROOT / "alert_rules"),
        "public_url": "https://nudge.example.com",
        "webhook": {"token": TOKEN},
        "delivery": {"outbox_dir": str(folder / "outbox")},
        "metrics": {"multiproc_dir": str(folder / "metrics")},
    }


@pytest.fixture
def config_data(tmp_path) -> dict:
    """nudge.yml keys for an isolated instance; tests add or change keys before `app` is built."""
    config = instance_config(tmp_path)
    config["secret_key"] = "test-secret-key-of-at-least-32-bytes"
    config["webhook"]["basic_auth"] = {"username": "alertmanager", "password": "pw"}
    return config


@pytest.fixture
def app(config_data):
    return create_app(config_data)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def store(app):
    """The app's store: seed and inspect data through the same operations Nudge uses."""
    return app.extensions["nudge_store"]


def decide(app) -> int:
    """Run the decider over everything journaled, as the delivery worker would."""
    config = app.config["NUDGE"]
    return Decider(app.extensions["nudge_store"], AlertPolicy.from_config(config)).decide_all()


def outcome_counts(app, notification_id: int) -> dict[str, int]:
    """Decide what is pending, then count this notification's decisions by outcome."""
    decide(app)
    counts = {"queued": 0, "duplicate": 0, "skipped": 0}
    for row in app.extensions["nudge_store"].list_decisions():
        if row["notification_id"] == notification_id:  # "cancelled" only when there are any
            counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    return counts


def post_and_decide(client, data, headers, **kwargs) -> SimpleNamespace:
    """POST /webhook, then run the decider: the answer, with the counts of that notification's
    decisions by outcome added to its JSON when it was accepted."""
    response = client.post("/webhook", data=data, headers=headers, **kwargs)
    body = response.get_json(silent=True)
    if response.status_code == 200:
        body = {**body, **outcome_counts(client.application, body["notification_id"])}
    return SimpleNamespace(status_code=response.status_code, json=body,
                           headers=response.headers, response=response)


@pytest.fixture
def auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def config_file(tmp_path, config_data) -> Path:
    path = tmp_path / "nudge.yml"
    path.write_text(yaml.safe_dump(config_data))
    return path


@pytest.fixture
def runner(config_file, monkeypatch):
    """Runs `nudge ...` against the same config the `app` fixture uses."""
    for name in ("NUDGE_CONFIG", "NUDGE_DB", "NUDGE_WEBHOOK_TOKEN", "NUDGE_SMTP_URL",
                 "NUDGE_DIRECTORY_URL", "NUDGE_PUBLIC_URL", "NUDGE_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    cli_runner = CliRunner()

    def invoke(*args: str, **kwargs):
        return cli_runner.invoke(main, ["--config", str(config_file), *args], **kwargs)

    return invoke
