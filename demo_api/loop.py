"""The whole loop, natively: demo API → Prometheus → Alertmanager → Nudge → SMTP catcher.

`make demo` runs `python -m demo_api.loop`; the end-to-end tests use the same `Loop`. It runs
the real `prometheus` and `alertmanager` binaries (PROMETHEUS_BIN / ALERTMANAGER_BIN, else
found on PATH) on loopback ports, with the shipped `alert_rules/` and
`deploy/alertmanager.yml` rewritten only for ports, file paths and faster timings (every
rule's `for:` shortened so the demo shows emails within a minute, not an hour). Nudge reads
the demo API's user directory with OAuth 2.0 client credentials: a client secret file both
share, and access tokens that expire every TOKEN_TTL seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import requests
import yaml

from demo_api.mailcatcher import MailCatcher

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "loop-token"
DIRECTORY_CLIENT_ID = "nudge"
TOKEN_TTL = 60  # seconds an access token to the demo API's user directory lives
# The demo's night: users in this zone are inside quiet hours whenever the demo runs (the
# window is set around their clock at start); the seeded users (UTC) are hours away.
NIGHT_ZONE = "Asia/Kolkata"
# Scene users created at start (`Loop(scenes=True)`, as `make demo` does): both sign up in
# NIGHT_ZONE, so their emails wait for the morning; Hedy then makes her first API call, so
# her waiting "make your first call" email is cancelled instead of sent.
SCENE_USERS = (
    {"user_id": "u8", "name": "Hedy Lamarr", "email": "hedy@example.com", "plan": "free",
     "timezone": NIGHT_ZONE},
    {"user_id": "u9", "name": "Katherine Johnson", "email": "katherine@example.com",
     "plan": "free", "timezone": NIGHT_ZONE},
)
FIRST_CALL_AFTER = 15  # seconds after Hedy's email is held


def night_window(now: float, zone: str = NIGHT_ZONE) -> str:
    """Quiet hours from 30 minutes before to 90 minutes after `now` on `zone`'s clock."""
    local = datetime.fromtimestamp(now, UTC).astimezone(ZoneInfo(zone))
    return f"{local - timedelta(minutes=30):%H:%M}-{local + timedelta(minutes=90):%H:%M}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_binary(env_name: str, *names: str) -> str:
    configured = os.environ.get(env_name)
    if configured:
        return configured
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        f"{names[0]} not found: run `make test` or `make demo` (installs it on Debian/Ubuntu) "
        f"or set {env_name}"
    )


def rewrite_rules(source: Path, target: Path, for_duration: str,
                  annotations: dict[str, dict[str, str]]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.yml")):
        data = yaml.safe_load(path.read_text())
        for group in data.get("groups", []):
            group.pop("interval", None)
            for rule in group.get("rules", []):
                if "alert" not in rule:
                    continue
                if "for" in rule:
                    rule["for"] = for_duration
                rule.setdefault("annotations", {}).update(annotations.get(rule["alert"], {}))
        (target / path.name).write_text(yaml.safe_dump(data, sort_keys=False))


def alertmanager_config(nudge_url: str, token_file: Path, *, group_wait: str,
                        group_interval: str, repeat_interval: str) -> dict:
    """deploy/alertmanager.yml with local addresses and faster timings."""
    config = yaml.safe_load((ROOT / "deploy" / "alertmanager.yml").read_text())
    config.pop("global", None)
    for route in config["route"].get("routes", []):
        if route.get("receiver") == "nudge":
            route.update(group_wait=group_wait, group_interval=group_interval,
                         repeat_interval=repeat_interval)
    for receiver in config["receivers"]:
        if receiver["name"] == "nudge":
            for hook in receiver["webhook_configs"]:
                hook["url"] = nudge_url + "/webhook"
                hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
        else:
            receiver.pop("email_configs", None)  # ops alerts go nowhere in the demo
    return config


class Loop:
    def __init__(self, workdir: Path, *, for_duration: str = "10s", interval: str = "1s",
                 group_wait: str = "1s", group_interval: str = "2s",
                 repeat_interval: str = "6s", annotations: dict | None = None,
                 nudge_config: dict | None = None, scenes: bool = False):
        self.workdir = Path(workdir)
        self.for_duration = for_duration
        self.interval = interval
        self.group_wait, self.group_interval = group_wait, group_interval
        self.repeat_interval = repeat_interval
        self.annotations = annotations or {}
        self.extra_nudge_config = nudge_config or {}
        self.scenes = scenes
        self.processes: dict[str, subprocess.Popen] = {}
        self.ports = {name: free_port() for name in ("demo", "prometheus", "alertmanager", "nudge")}
        self.urls = {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()}
        self.mail = MailCatcher(self.workdir / "mail")
        self.logs = self.workdir / "logs"
        self.client_secret_file = self.workdir / "directory-client-secret"

    # --- set-up ----------------------------------------------------------------------------

    def write_configs(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        rewrite_rules(ROOT / "alert_rules", self.workdir / "rules", self.for_duration,
                      self.annotations)
        prometheus = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(self.workdir / "rules" / "*.yml")],
            "alerting": {"alertmanagers": [
                {"static_configs": [{"targets": [f"127.0.0.1:{self.ports['alertmanager']}"]}]}
            ]},
            "scrape_configs": [
                {"job_name": "demo-api",
                 "static_configs": [{"targets": [f"127.0.0.1:{self.ports['demo']}"]}]},
                {"job_name": "nudge",
                 "static_configs": [{"targets": [f"127.0.0.1:{self.ports['nudge']}"]}]},
            ],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(prometheus))
        token_file = self.workdir / "nudge-webhook-token"
        token_file.write_text(TOKEN + "\n")
        self.client_secret_file.write_text(secrets.token_urlsafe(24) + "\n")
        self.client_secret_file.chmod(0o600)
        (self.workdir / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config(
            self.urls["nudge"], token_file, group_wait=self.group_wait,
            group_interval=self.group_interval, repeat_interval=self.repeat_interval,
        )))
        self.write_nudge_config()

    def write_nudge_config(self) -> None:
        nudge = {
            "database": str(self.workdir / "nudge.db"),
            "templates_dir": str(ROOT / "email_templates"),
            "rules_dir": str(ROOT / "alert_rules"),
            "public_url": self.urls["nudge"],
            "secret_key": "demo-secret-key-of-at-least-32-bytes",
            "dev_mode": True,  # a local loop: public_url is 127.0.0.1
            "server": {"bind": f"127.0.0.1:{self.ports['nudge']}", "workers": 2},
            "webhook": {"token": TOKEN},
            "directory": {
                "url": self.urls["demo"] + "/users/{user_id}",
                "oauth": {"token_url": self.urls["demo"] + "/oauth/token",
                          "client_id": DIRECTORY_CLIENT_ID,
                          "client_secret_file": str(self.client_secret_file)},
            },
            # Timeout x commands + the directory's budget must fit the 10 s lease.
            "smtp": {"url": f"smtp://127.0.0.1:{self.mail.port}?timeout=1",
                     "from": "Acme API <hello@acme.example>", "connections": 2},
            "delivery": {"retry_backoff": "1s", "max_backoff": "5s", "lease": "10s",
                         "outbox_dir": str(self.workdir / "outbox")},
            "metrics": {"multiproc_dir": str(self.workdir / "metrics")},
        }
        if self.scenes:  # holding emails back: the cap, and quiet hours for NIGHT_ZONE
            nudge["limits"] = {"per_user": 2, "period": "24h", "max_wait": "3d"}
            nudge["quiet_hours"] = {"window": night_window(time.time()),
                                    "default_timezone": "UTC"}
        for key, value in self.extra_nudge_config.items():
            if isinstance(value, dict):
                nudge.setdefault(key, {}).update(value)
            else:
                nudge[key] = value
        (self.workdir / "nudge.yml").write_text(yaml.safe_dump(nudge))

    def _spawn(self, name: str, args: list[str], env_extra: dict[str, str] | None = None,
               **kwargs) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("NUDGE_", "DEMO_API_")) and k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(env_extra or {})
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True, **kwargs)
        self.processes[name] = process
        return process

    def start(self) -> Loop:
        self.mail.start()
        self.write_configs()
        self._spawn("demo-api", [sys.executable, "-m", "demo_api", "--port",
                                 str(self.ports["demo"]), "--simulate-interval", "1"],
                    env_extra={"DEMO_API_CLIENT_ID": DIRECTORY_CLIENT_ID,
                               "DEMO_API_CLIENT_SECRET_FILE": str(self.client_secret_file),
                               "DEMO_API_TOKEN_TTL": str(TOKEN_TTL)})
        self.start_nudge()
        prometheus = find_binary("PROMETHEUS_BIN", "prometheus")
        self._spawn("prometheus", [
            prometheus, f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{self.ports['prometheus']}",
            "--rules.alert.resend-delay=1s", "--log.level=warn",
        ])
        alertmanager = find_binary("ALERTMANAGER_BIN", "alertmanager", "prometheus-alertmanager")
        self._spawn("alertmanager", [
            alertmanager, f"--config.file={self.workdir / 'alertmanager.yml'}",
            f"--storage.path={self.workdir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{self.ports['alertmanager']}",
            "--cluster.listen-address=", "--log.level=warn",
        ])
        for name, path in (("demo", "/metrics"), ("prometheus", "/-/ready"),
                           ("alertmanager", "/-/ready"), ("nudge", "/-/ready")):
            self.wait_http(name, path)
        if self.scenes:
            self.add_scene_users()
        return self

    def add_scene_users(self) -> None:
        now = time.time()
        signed_up = datetime.fromtimestamp(now - 2 * 86400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        hedy, katherine = SCENE_USERS
        # Hedy signed up two days ago and never called: NoFirstApiCall.
        self.demo("POST", "/admin/users", json={**hedy, "signup_at": signed_up}
                  ).raise_for_status()
        # Katherine has used 96 % of her quota: QuotaNearlyExhausted.
        self.demo("POST", "/admin/users", json={**katherine, "quota_used": 960}
                  ).raise_for_status()

    def deliveries(self) -> list[dict]:
        """`nudge deliveries --json`: what Nudge did with each email, and why."""
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "--config", str(self.workdir / "nudge.yml"),
             "deliveries", "--json"], capture_output=True, text=True, timeout=30, cwd=ROOT)
        return json.loads(result.stdout) if result.returncode == 0 else []

    def play_scenes(self, stopping: threading.Event, say) -> None:
        """Once Hedy's email is held for quiet hours, she makes her first API call: the
        alert resolves and Nudge cancels the email. Every hold and cancellation is said."""
        told: set[tuple[int, str]] = set()
        called_at = None
        while not stopping.wait(2):
            for row in reversed(self.deliveries()):
                why = row.get("why")
                if not why or (row["id"], why) in told:
                    continue
                told.add((row["id"], why))
                status = "held" if row["status"] == "queued" else row["status"]
                say(f"  {status}: {row['rule']} for {row['user_id']}: {why}")
                if row["user_id"] == "u8" and why.startswith("waiting") and called_at is None:
                    called_at = time.time() + FIRST_CALL_AFTER
            if called_at is not None and time.time() >= called_at:
                called_at = float("inf")
                say("  u8 (Hedy) makes her first API call: her alert resolves...")
                self.demo("POST", "/v2/messages", headers={"X-User-Id": "u8"})

    def start_nudge(self) -> None:
        self._spawn("nudge", [sys.executable, "-m", "app.cli", "--config",
                              str(self.workdir / "nudge.yml"), "serve"])

    def wait_http(self, name: str, path: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process_name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{process_name} exited with {process.returncode}; see "
                                       f"{self.logs / (process_name + '.log')}")
            try:
                if requests.get(self.urls[name] + path, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready after {timeout}s; logs in {self.logs}")

    def kill_nudge(self) -> None:
        """SIGKILL Nudge's whole process group: no clean-up of any kind."""
        process = self.processes["nudge"]
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(10)

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.mail.stop()

    # --- looking at it -------------------------------------------------------------------

    def demo(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, self.urls["demo"] + path, timeout=10, **kwargs)

    def firing_alerts(self) -> list[dict]:
        response = requests.get(self.urls["alertmanager"] + "/api/v2/alerts", timeout=5)
        return response.json()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo_api.loop", description=__doc__)
    parser.add_argument("--workdir", default="var/demo", help="where configs, data, logs and "
                        "caught mail go (default var/demo, emptied first)")
    parser.add_argument("--for", dest="for_duration", default="10s",
                        help="every rule's for: in the demo (default 10s)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    loop = Loop(workdir, for_duration=args.for_duration, repeat_interval="1m", scenes=True)
    stopping = []
    scenes_stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        loop.start()
        print(f"""
Nudge demo is running (Ctrl-C to stop):
  demo API (users, metrics)  {loop.urls['demo']}/
  Prometheus (alerts)        {loop.urls['prometheus']}/alerts
  Alertmanager               {loop.urls['alertmanager']}/
  Nudge                      {loop.urls['nudge']}/metrics
  emails arrive in           {loop.mail.folder}/
  Nudge's decisions          .venv/bin/nudge --config {workdir / 'nudge.yml'} deliveries
  directory access           OAuth 2.0 client credentials, client {DIRECTORY_CLIENT_ID!r}, secret in
                             {loop.client_secret_file}, tokens live {TOKEN_TTL}s
Rules fire after their for: ({args.for_duration}) plus a few seconds; each email is listed below,
and so is every email Nudge holds back or cancels, with the reason. u8 and u9 live in
{NIGHT_ZONE}, where it is night (quiet hours) for the demo; u8 makes her first API call
while her "make your first call" email waits, so it is cancelled.
""", flush=True)
        threading.Thread(target=loop.play_scenes, args=(scenes_stopping, lambda text: print(
            text, flush=True)), daemon=True).start()
        seen = 0
        while not stopping:
            messages = loop.mail.snapshot()
            for message in messages[seen:]:
                print(f"  email {seen + 1}: to {message['To']}: {message['Subject']}", flush=True)
                seen += 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        scenes_stopping.set()
        loop.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
