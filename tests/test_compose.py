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
    # The same key file, generated once into the shared secrets volume.
    assert len({r["environment"]["NUDGE_SECRET_KEY_FILE"] for r in replicas}) == 1
    assert all("secrets:/run/secrets/nudge:ro" in r["volumes"] for r in replicas)
    assert "secret-key" in services["secrets"]["command"]
    nginx = (ROOT / "deploy" / "nginx-replicas.conf").read_text()
    assert "server nudge-1:8080" in nginx and "server nudge-2:8080" in nginx
    # The public listeners too, behind the same nginx.
    assert "server nudge-1:8081" in nginx and "server nudge-2:8081" in nginx


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_the_public_listener_is_behind_a_buffering_proxy(name):
    services = yaml.safe_load((ROOT / name).read_text())["services"]
    nudge_yml = yaml.safe_load((ROOT / "deploy" / "nudge.yml").read_text())
    assert nudge_yml["server"]["public_bind"].endswith(":8081")
    assert nudge_yml["public_url"] == "http://localhost:8081"
    proxies = [s for s in services.values() if str(s.get("image", "")).startswith("nginx:")]
    assert any("8081:8081" in proxy.get("ports", []) for proxy in proxies)
    nudge_services = [s for s in services.values()
                      if (s.get("build") or {}).get("dockerfile") == "deploy/Dockerfile"
                      and "command" not in s and "entrypoint" not in s]
    for service in nudge_services:  # the public port is only reachable through the proxy
        assert not any(str(port).endswith(":8081") for port in service.get("ports", []))
    conf = (ROOT / "deploy" / ("nginx-public.conf" if name == "docker-compose.yml"
                                else "nginx-replicas.conf")).read_text()
    public = conf[conf.index("listen 8081"):]
    for directive in ("proxy_request_buffering on", "client_header_timeout",
                      "client_body_timeout", "client_max_body_size 64k"):
        assert directive in public, (name, directive)
    prometheus = (ROOT / "deploy" / "prometheus-replicas.yml").read_text()
    assert '"nudge-1:8080", "nudge-2:8080"' in prometheus
