"""Holding emails back, end to end: real Prometheus and Alertmanager (the shipped
Alertmanager config, with local addresses and fast timings), `nudge serve`, an SMTP server
and an HTTP user directory.

The rules are written for the test: `vector(1)` fires at once, and `vector(time()) < T`
stops firing (resolves) at T. Quiet hours are set around the current time of the users in
America/Sao_Paulo (no daylight saving time) and end at a minute boundary 50-110 s after the
start, so the test sees an email held and then released; users in Asia/Tokyo are twelve
hours away, outside the window. All scenarios share one running loop.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import requests
import yaml
from click.testing import CliRunner

from app.cli import main
from demo_api.loop import alertmanager_config, find_binary, free_port
from tests.directory_server import DirectoryServer
from tests.processes import NudgeProcess, wait_until
from tests.smtp_servers import RecordingServer

pytestmark = pytest.mark.e2e

TOKEN = "holds-token"
NIGHT_ZONE = ZoneInfo("America/Sao_Paulo")
DAY_ZONE = "Asia/Tokyo"
# Seconds after the start: the "fixer" alert resolves while its email waits. Its email must
# be held by then, after Nudge, Alertmanager and Prometheus started: room for a slow machine.
RESOLVE_AFTER = 30

USERS = {
    # Three rules fire for "capped" during its night: in the morning the cap (2) lets the
    # two highest priorities go.
    "capped": {"email": "capped@example.com", "timezone": "America/Sao_Paulo"},
    # One ordinary rule (held until the window ends) and one essential (goes at once).
    "sleeper": {"email": "sleeper@example.com", "timezone": "America/Sao_Paulo"},
    # Its alert resolves while its email waits for the morning: never sent.
    "fixer": {"email": "fixer@example.com", "timezone": "America/Sao_Paulo"},
    # Awake: no quiet hours, no cap reached.
    "awake": {"email": "awake@example.com", "timezone": DAY_ZONE},
}


def rule(alert, user, expr="vector(1)", **annotations):
    return {"alert": alert, "expr": expr,
            "labels": {"user_id": user, "email_template": "notice"},
            "annotations": {"summary": alert, **annotations}}


def write_templates(folder):
    notice = folder / "notice"
    notice.mkdir(parents=True)
    (notice / "subject.txt").write_text("{{ rule }} for {{ user_id }}\n")
    (notice / "body.txt").write_text("Hello, {{ rule }} fired for you.\n{{ unsubscribe_url }}\n")


def quiet_window(start: float) -> tuple[str, float]:
    """A window around the night users' local time now, ending at a minute boundary 50 to
    110 s from `start` (after RESOLVE_AFTER, with time for the resolution to arrive); and that
    end as a timestamp."""
    local = datetime.fromtimestamp(start, UTC).astimezone(NIGHT_ZONE)
    end = local.replace(second=0, microsecond=0) + timedelta(minutes=1)
    if (end - local).total_seconds() < RESOLVE_AFTER + 20:
        end += timedelta(minutes=1)
    begin = local - timedelta(minutes=10)
    return f"{begin:%H:%M}-{end:%H:%M}", end.timestamp()


class HoldsLoop:
    def __init__(self, workdir):
        self.workdir = workdir
        self.start_time = time.time()
        self.window, self.window_end = quiet_window(self.start_time)
        self.resolve_at = math.ceil(self.start_time + RESOLVE_AFTER)
        self.processes: list[subprocess.Popen] = []
        self.smtp = RecordingServer().start()
        self.directory = DirectoryServer({u: {"name": u, **r} for u, r in USERS.items()}).start()
        self.ports = {"prometheus": free_port(), "alertmanager": free_port()}

    def start(self):
        rules_dir, templates = self.workdir / "rules", self.workdir / "templates"
        rules_dir.mkdir()
        write_templates(templates)
        (rules_dir / "holds.yml").write_text(yaml.safe_dump({"groups": [{
            "name": "holds", "interval": "1s", "rules": [
                rule("CapLow", "capped", nudge_priority="1"),
                rule("CapHigh", "capped", nudge_priority="10"),
                rule("CapMid", "capped", nudge_priority="5"),
                rule("SleeperNotice", "sleeper"),
                rule("SleeperSecurity", "sleeper", nudge_essential="true"),
                rule("FixerFirstCall", "fixer",
                     expr=f"vector(1) and on() (vector(time()) < {self.resolve_at})"),
                rule("AwakeNotice", "awake"),
            ]}]}))
        config = {
            "database": str(self.workdir / "nudge.db"),
            "templates_dir": str(templates),
            "rules_dir": str(rules_dir),
            "public_url": "http://127.0.0.1:1",
            "secret_key": "holds-test-secret-key-of-at-least-32-bytes",
            "webhook": {"token": TOKEN},
            "directory": {"url": self.directory.url_template},
            "recipients": {"order": ["directory"]},
            "smtp": {"url": self.smtp.url, "connections": 2},
            "delivery": {"outbox_dir": str(self.workdir / "outbox")},
            "metrics": {"multiproc_dir": str(self.workdir / "metrics")},
            "limits": {"per_user": 2, "period": "1h", "max_wait": "1h"},
            "quiet_hours": {"window": self.window, "default_timezone": DAY_ZONE},
        }
        self.nudge = NudgeProcess(self.workdir, config).start()
        token_file = self.workdir / "token"
        token_file.write_text(TOKEN + "\n")
        (self.workdir / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config(
            self.nudge.url, token_file, group_wait="1s", group_interval="2s",
            repeat_interval="4s")))
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"evaluation_interval": "1s"},
            "rule_files": [str(rules_dir / "holds.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [
                {"targets": [f"127.0.0.1:{self.ports['alertmanager']}"]}]}]},
        }))
        log = open(self.workdir / "binaries.log", "ab")  # noqa: SIM115 - closed in stop()
        self.log = log
        self.processes.append(subprocess.Popen([
            find_binary("ALERTMANAGER_BIN", "alertmanager", "prometheus-alertmanager"),
            f"--config.file={self.workdir / 'alertmanager.yml'}",
            f"--storage.path={self.workdir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{self.ports['alertmanager']}",
            "--cluster.listen-address=", "--log.level=warn"], stdout=log, stderr=log))
        self.processes.append(subprocess.Popen([
            find_binary("PROMETHEUS_BIN", "prometheus"),
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{self.ports['prometheus']}",
            "--rules.alert.resend-delay=1s", "--log.level=warn"], stdout=log, stderr=log))
        return self

    def stop(self):
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.nudge.stop()
        self.smtp.stop()
        self.directory.close()
        self.log.close()

    def mail(self, user=None):
        return [m for m in self.smtp.messages
                if user is None or m.rcpt_tos == (USERS[user]["email"],)]

    def subjects(self, user):
        return sorted(str(m["Subject"]).split()[0] for m in self.mail(user))

    def cli(self, *args):
        result = CliRunner().invoke(main, ["--config", str(self.nudge.config_path), *args])
        assert result.exit_code == 0, result.output
        return result.output

    def deliveries(self, user):
        return {d["rule"]: d for d in json.loads(self.cli("deliveries", "--json", "--user",
                                                          user))}


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    running = HoldsLoop(tmp_path_factory.mktemp("holds"))
    try:
        yield running.start()
    finally:
        running.stop()


def test_an_essential_email_goes_out_inside_quiet_hours_and_the_others_wait(loop):
    wait_until(lambda: loop.mail("sleeper"), 60, message="the essential email")
    (security,) = loop.mail("sleeper")
    assert str(security["Subject"]).startswith("SleeperSecurity")
    assert security.accepted_at < loop.window_end
    # Awake users are not held at all.
    wait_until(lambda: loop.mail("awake"), 30, message="the awake user's email")

    def held():
        rows = loop.deliveries("sleeper")
        return "SleeperNotice" in rows and rows["SleeperNotice"]["why"]

    wait_until(held, 30, message="the sleeper's notice to be held")
    end = datetime.fromtimestamp(loop.window_end, UTC).astimezone(NIGHT_ZONE)
    assert loop.deliveries("sleeper")["SleeperNotice"]["why"] == (
        f"waiting: quiet hours until {end:%H:%M} America/Sao_Paulo")
    assert loop.deliveries("sleeper")["SleeperNotice"]["status"] == "queued"
    assert loop.deliveries("sleeper")["SleeperNotice"]["attempts"] == 0  # a hold is no attempt
    table = loop.cli("deliveries", "--user", "sleeper")
    assert "waiting: quiet hours until" in table and "WHY" in table


def test_an_alert_that_resolves_while_its_email_waits_never_produces_an_email(loop):
    def cancelled():
        row = loop.deliveries("fixer").get("FixerFirstCall")
        return row and row["status"] == "cancelled" and row

    row = wait_until(cancelled, RESOLVE_AFTER + 45, message="the fixer's email to be cancelled")
    assert row["why"] == "cancelled: alert resolved before sending"
    assert [e["event"] for e in row["hold_log"]] == ["held", "cancelled"]
    decisions = json.loads(loop.cli("decisions", "--json", "--user", "fixer"))
    assert any(d["outcome"] == "cancelled" and d["reason"] == "alert_resolved"
               for d in decisions)
    assert time.time() < loop.window_end, "the test took too long to show the cancellation"


def test_after_quiet_hours_the_held_email_goes_and_the_cap_lets_the_top_two_through(loop):
    assert not [m for m in loop.mail("sleeper") if "SleeperNotice" in str(m["Subject"])]
    wait_until(lambda: len(loop.mail("sleeper")) == 2,
               max(10, loop.window_end - time.time()) + 90, message="the sleeper's notice")
    notice = [m for m in loop.mail("sleeper") if "SleeperNotice" in str(m["Subject"])][0]
    # Released promptly: within the minute after the window (plus the worker's poll).
    assert loop.window_end <= notice.accepted_at < loop.window_end + 65
    wait_until(lambda: len(loop.mail("capped")) >= 2, 60, message="the capped user's emails")

    def low_waits_for_the_cap():
        return loop.deliveries("capped")["CapLow"]["why"].startswith(
            "waiting: 2 emails sent in the last 1h (limit 2)")

    # Each is released at its own moment of the minute after the window: CapLow may come
    # back last, and then finds the cap reached.
    wait_until(low_waits_for_the_cap, 75, message="CapLow to wait for the cap")
    assert loop.deliveries("capped")["CapLow"]["status"] == "queued"
    assert loop.subjects("capped") == ["CapHigh", "CapMid"]
    # The fixer's cancelled email stayed cancelled.
    assert loop.mail("fixer") == []
    metrics = requests.get(loop.nudge.url + "/metrics", timeout=5).text
    assert 'nudge_delivery_holds_total{event="held",reason="quiet_hours"}' in metrics
    assert 'nudge_delivery_holds_total{event="cancelled",reason="alert_resolved"}' in metrics
    assert 'nudge_delivery_holds_total{event="released",reason="quiet_hours"}' in metrics
