"""The buffering proxy shipped in front of the public listener (deploy/nginx-public.conf), run
with the real nginx: clients that stall mid-request are held by nginx and never reach Nudge."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import ExitStack

import pytest
import requests

from app.suppressions import ALL, make_token
from demo_api.loop import free_port
from tests.conftest import ROOT, TOKEN, fixture_bytes
from tests.processes import NudgeProcess, wait_until

STALLED = 20


def nginx_binary() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)
                                     else None)
    if not path:
        pytest.fail("nginx not found: `make test` installs it (Debian package nginx)",
                    pytrace=False)
    return path


@pytest.fixture
def stack(tmp_path, config_data):
    public_port, proxy_port = free_port(), free_port()
    config_data["server"] = {"public_bind": f"127.0.0.1:{public_port}"}
    nudge = NudgeProcess(tmp_path, config_data).start()
    shipped = (ROOT / "deploy" / "nginx-public.conf").read_text()
    assert "listen 8081;" in shipped and "proxy_pass http://nudge:8081;" in shipped
    site = (shipped.replace("listen 8081;", f"listen 127.0.0.1:{proxy_port};")
            .replace("proxy_pass http://nudge:8081;", f"proxy_pass http://127.0.0.1:{public_port};"))
    folder = tmp_path / "nginx"
    folder.mkdir()
    (folder / "public.conf").write_text(site)
    temp = " ".join(f"{kind}_temp_path {folder / kind};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (folder / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off; worker_processes 1; pid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        f"http {{ access_log off; {temp} include {folder / 'public.conf'}; }}\n")
    with open(folder / "stderr.log", "wb") as log:
        nginx = subprocess.Popen([nginx_binary(), "-p", str(folder), "-c",
                                  str(folder / "nginx.conf")], stdout=log, stderr=log)
    proxy_url = f"http://127.0.0.1:{proxy_port}"

    def answering():
        assert nginx.poll() is None, (folder / "stderr.log").read_text()
        try:
            return requests.get(proxy_url + "/unsubscribe/x", timeout=1).status_code == 400
        except requests.RequestException:
            return False

    wait_until(answering, timeout=15, message="nginx answering")
    yield nudge, proxy_url, f"http://127.0.0.1:{public_port}", proxy_port
    nginx.terminate()
    nginx.wait(10)
    nudge.stop()


def test_stalled_clients_are_held_by_nginx_and_never_reach_nudge(stack, config_data):
    nudge, proxy_url, public_url, proxy_port = stack
    token = make_token(config_data["secret_key"], "u-7", ALL)
    with ExitStack() as held:
        for n in range(STALLED):
            sock = held.enter_context(socket.create_connection(("127.0.0.1", proxy_port),
                                                               timeout=5))
            if n % 2:  # headers never finished
                sock.sendall(b"GET /unsubscribe/x HTTP/1.1\r\nHost: nudge.example.com\r\nX-")
            else:  # a one-click unsubscribe whose body never comes
                sock.sendall(f"POST /unsubscribe/{token} HTTP/1.1\r\nHost: nudge.example.com\r\n"
                             "Content-Type: application/x-www-form-urlencoded\r\n"
                             "Content-Length: 1000\r\n\r\nList-Unsub".encode())
        time.sleep(0.5)
        for url in (proxy_url, public_url):  # through nginx, and Nudge's listener itself
            started = time.monotonic()
            page = requests.get(f"{url}/unsubscribe/{token}", timeout=5)
            assert page.status_code == 200 and "Email preferences" in page.text
            assert time.monotonic() - started < 2.5, url  # stalled: never
        started = time.monotonic()
        webhook = requests.post(nudge.url + "/webhook", data=fixture_bytes("firing-per-user.json"),
                                headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert webhook.status_code == 200 and time.monotonic() - started < 2.5
    # What nginx passes on is only the recipient-facing pages.
    assert requests.post(proxy_url + "/webhook", data=b"{}", timeout=5).status_code == 404
    assert requests.get(proxy_url + "/metrics", timeout=5).status_code == 404
