"""Benchmark 4: the same per-user emails sent by Nudge and by Alertmanager's own email_configs.

Alertmanager (ALERTMANAGER_BIN, else `alertmanager` or `prometheus-alertmanager` on PATH) gets
one `email_configs` receiver grouped by (alertname, user_id), group_wait 0s, pointing at the
20 ms SMTP sink; N per-user alerts are pushed to its API (POST /api/v2/alerts) and the clock
runs until N emails were accepted. Alertmanager opens one SMTP connection per notification.

Nudge gets the same N alerts the way Alertmanager's webhook sends them with
`group_by: [alertname, user_id]` (one alert per POST), and the clock runs from the first POST
until N emails were accepted.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import requests
import yaml

from benchmarks import payloads
from benchmarks.harness import (
    RECOMMENDED_CONNECTIONS,
    Figure,
    Nudge,
    Process,
    Result,
    SmtpSink,
    free_port,
    loadgen,
    nudge_config,
    wait_until,
)
from benchmarks.sizes import Sizes

LATENCY = 0.02


def find_alertmanager() -> str | None:
    configured = os.environ.get("ALERTMANAGER_BIN")
    if configured:
        return configured
    for name in ("alertmanager", "prometheus-alertmanager"):
        found = shutil.which(name)
        if found:
            return found
    return None


def alertmanager_config(smtp_port: int) -> dict:
    return {
        "route": {
            "receiver": "email",
            "group_by": ["alertname", "user_id"],
            "group_wait": "0s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        "receivers": [{
            "name": "email",
            "email_configs": [{
                "to": "{{ .CommonLabels.email }}",
                "from": "alertmanager@acme.example",
                "smarthost": f"127.0.0.1:{smtp_port}",
                "hello": "alertmanager.bench",
                "require_tls": False,
                "send_resolved": False,
            }],
        }],
    }


def alertmanager_run(binary: str, workdir: Path, count: int) -> tuple[float, SmtpSink]:
    sink = SmtpSink(workdir, latency=LATENCY, name="am-sink")
    port = free_port()
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config(sink.port)))
    am = Process("alertmanager", [
        binary, f"--config.file={workdir / 'alertmanager.yml'}",
        f"--storage.path={workdir / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
        "--log.level=warn",
    ], workdir / "alertmanager.log")
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            am.check_alive()
            try:
                return requests.get(url + "/-/ready", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 60, "alertmanager to be ready")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        alerts = []
        for index in range(count):
            alert = payloads.alert(payloads.user_id("am", 0, index), starts_at=now)
            alerts.append({"labels": alert["labels"], "annotations": alert["annotations"],
                           "startsAt": now, "generatorURL": alert["generatorURL"]})
        started = time.time()
        for chunk in range(0, count, 1000):
            response = requests.post(url + "/api/v2/alerts", json=alerts[chunk:chunk + 1000],
                                     timeout=60)
            response.raise_for_status()
        sink.wait_for(count, timeout=120 + count * 0.2, others=[am])
        elapsed = max(t for t, _id, _rcpt in sink.log.accepted) - started
    finally:
        am.stop()
        sink.stop()
    return elapsed, sink


def nudge_run(workdir: Path, count: int) -> tuple[float, SmtpSink]:
    sink = SmtpSink(workdir, latency=LATENCY, name="nudge-sink")
    nudge = Nudge(workdir, nudge_config(workdir, smtp_url=sink.url,
                                        connections=RECOMMENDED_CONNECTIONS)).start()
    try:
        sent = loadgen({"mode": "fixed", "url": nudge.url, "prefix": "nudge", "posts": count,
                        "alerts_per_post": 1, "clients": 4})
        if sent["errors"]:
            raise RuntimeError(f"{sent['errors']} webhook POSTs were not answered 200")
        sink.wait_for(count, timeout=120 + count * 0.2, others=[nudge.process])
        elapsed = max(t for t, _id, _rcpt in sink.log.accepted) - sent["start"]
    finally:
        nudge.stop()
        sink.stop()
    return elapsed, sink


def run(number: int, sizes: Sizes, workdir: Path) -> Result:
    started = time.monotonic()
    count = sizes.alertmanager_emails
    result = Result(number, f"Delivery of {count:,} per-user emails: Nudge vs Alertmanager's "
                            f"email_configs, SMTP server adding {LATENCY * 1000:.0f} ms per command")
    binary = find_alertmanager()
    if binary is None:
        result.skipped = ("no Alertmanager binary (set ALERTMANAGER_BIN, or install "
                          "prometheus-alertmanager: `make install-test` does on Debian/Ubuntu)")
        return result
    am_dir, nudge_dir = workdir / "alertmanager", workdir / "nudge"
    am_dir.mkdir()
    nudge_dir.mkdir()
    am_seconds, am_sink = alertmanager_run(binary, am_dir, count)
    nudge_seconds, nudge_sink = nudge_run(nudge_dir, count)
    result.figures.append(Figure(
        f"Nudge (webhook to last email, smtp.connections={RECOMMENDED_CONNECTIONS})",
        count / nudge_seconds, "emails/s", baseline=count / am_seconds,
        baseline_label=f"Alertmanager email_configs ({binary})",
    ))
    result.notes += [
        f"time to {count:,} emails: Nudge {nudge_seconds:.1f}s, Alertmanager {am_seconds:.1f}s",
        f"SMTP connections opened: Nudge {nudge_sink.log.connections:,} (at most "
        f"{nudge_sink.log.peak_open} at once), Alertmanager {am_sink.log.connections:,} (at most "
        f"{am_sink.log.peak_open} at once)",
        "Alertmanager sends every notification at once over a connection of its own (EHLO, "
        "MAIL, RCPT, DATA, QUIT: 5 round trips each); a real relay limits connections per "
        "client, where Nudge keeps its fixed pool busy",
    ]
    result.seconds = time.monotonic() - started
    return result
