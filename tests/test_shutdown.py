"""The stop grace period shipped in docker-compose, the Dockerfile and the README is longer than
`nudge serve` may need to finish the emails it is sending, for the shipped configuration: a
normal stop never SIGKILLs a send in flight. Derived from the same numbers the supervisor
uses, so the two cannot drift apart."""

from __future__ import annotations

import re

import pytest
import yaml

from app.config import load_config
from app.durations import parse_duration
from app.server import shutdown_seconds, worker_drain_seconds
from tests.conftest import ROOT

COMPOSE_FILES = ["docker-compose.yml", "docker-compose.replicas.yml"]


@pytest.fixture(scope="module")
def shipped_shutdown() -> float:
    config = load_config(ROOT / "deploy" / "nudge.yml", environ={"NUDGE_WEBHOOK_TOKEN": "x"})
    return shutdown_seconds(config)


def nudge_services(name: str) -> dict[str, dict]:
    """The services of a compose file that run `nudge serve` (the image's default command)."""
    services = yaml.safe_load((ROOT / name).read_text())["services"]
    return {service_name: service for service_name, service in services.items()
            if (service.get("build") or {}).get("dockerfile") == "deploy/Dockerfile"
            and "command" not in service and "entrypoint" not in service}


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_gives_nudge_longer_than_it_needs_to_stop(name, shipped_shutdown):
    services = nudge_services(name)
    assert services, f"{name}: no service runs nudge serve"
    for service_name, service in services.items():
        grace = service.get("stop_grace_period")
        assert grace, f"{name}: {service_name} has docker's default 10s stop grace period"
        assert parse_duration(grace) > shipped_shutdown, (service_name, grace, shipped_shutdown)


def test_the_dockerfile_stops_with_sigterm_and_states_a_long_enough_timeout(shipped_shutdown):
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^STOPSIGNAL SIGTERM$", dockerfile, re.MULTILINE)
    (stated,) = re.findall(r"docker stop -t (\d+)", dockerfile)
    assert int(stated) > shipped_shutdown
    assert f"{shipped_shutdown:g}s at worst" in dockerfile


def test_the_readme_states_the_real_figures(shipped_shutdown):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Stopping", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    assert f"{shipped_shutdown:g} s" in section
    (stated,) = set(re.findall(r"docker stop -t (\d+)", section))
    assert int(stated) > shipped_shutdown
    assert "stop_grace_period: 2m" in section


def test_the_drain_time_follows_the_configuration():
    """A slower SMTP timeout or directory budget makes the supervisor wait longer (and the
    operator's grace period must follow: the README says how to work it out)."""
    base = load_config(data={"smtp": {"url": "smtp://mail.example:587"}}, environ={})
    slower = load_config(data={"smtp": {"url": "smtp://mail.example:587?timeout=30"},
                               "directory": {"timeout": "10s"},
                               "delivery": {"lease": "5m"}}, environ={})
    # greeting, EHLO, MAIL, RCPT, DATA, end of data, and the QUIT: 7 replies at most
    assert worker_drain_seconds(slower) - worker_drain_seconds(base) == pytest.approx(
        7 * (30 - 10) + (10 - 2))
    login = load_config(data={"smtp": {"url": "smtp://me:pw@mail.example:587?tls=starttls"}},
                        environ={})
    assert worker_drain_seconds(login) - worker_drain_seconds(base) == pytest.approx(3 * 10)
    assert shutdown_seconds(slower) > worker_drain_seconds(slower)
