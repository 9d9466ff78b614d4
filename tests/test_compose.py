"""The compose files parse and validate with docker-compose itself (no engine needed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE_FILES = ["docker-compose.yml", "docker-compose.replicas.yml"]


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_docker_compose_accepts_the_file(name):
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose not installed: `make test` installs it"
    result = subprocess.run([binary, "-f", name, "config", "-q"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_replicas_share_one_database_and_one_secret_behind_the_load_balancer():
    services = yaml.safe_load((ROOT / "docker-compose.replicas.yml").read_text())["services"]
    replicas = [services[name] for name in ("nudge-1", "nudge-2")]
    for replica in replicas:
        assert replica["environment"]["NUDGE_DB"].startswith("postgresql://")
        assert "@postgres:5432/" in replica["environment"]["NUDGE_DB"]
    assert len({r["environment"]["NUDGE_SECRET_KEY"] for r in replicas}) == 1
    nginx = (ROOT / "deploy" / "nginx-replicas.conf").read_text()
    assert "server nudge-1:8080" in nginx and "server nudge-2:8080" in nginx
    prometheus = (ROOT / "deploy" / "prometheus-replicas.yml").read_text()
    assert '"nudge-1:8080", "nudge-2:8080"' in prometheus
