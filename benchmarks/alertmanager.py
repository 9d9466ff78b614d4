"""Benchmark 4: the same per-user emails sent by Nudge and by Alertmanager's own email_configs.

Alertmanager (ALERTMANAGER_BIN, else `alertmanager` or `prometheus-alertmanager` on PATH) gets
one `email_configs` receiver grouped by (alertname, user_id), group_wait 0s, pointing at the
20 ms SMTP sink; N per-user alerts are pushed to its API (POST /api/v2/alerts) and the clock
runs until N emails were accepted. Alertmanager opens one SMTP connection per notification.

Nudge gets the same N alerts the way Alertmanager's webhook sends them with
`group_by: [alertname, user_id]` (one alert per POST), and the clock runs from the first POST
until N emails were accepted. Nudge runs with smtp.connections = NUDGE_CONNECTIONS: a relay
limits the connections one client may hold, and the figure is Nudge's rate within that limit
against Alertmanager's without one. The sink counts the connections each side opened and held
at once.

One run of either side lasts a second or two, so a pause of the shared machine moves it a
lot: the sides take turns `alertmanager_rounds` times, each run with fresh processes and
databases, and the figures are the medians (every run is printed).

CPU per email: Nudge's whole `nudge serve` process tree (supervisor, gunicorn receiver master
and workers, delivery worker with its decider and its sender processes; see
tree_cpu_seconds) from just before the first POST to the last email; Alertmanager's process
from just before its alerts are pushed to the last email; and the SMTP sink's over each run.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests
import yaml

from benchmarks import payloads
from benchmarks.harness import (
    Figure,
    Nudge,
    Process,
    Result,
    SmtpSink,
    cpu_seconds,
    free_port,
    loadgen,
    nudge_config,
    tree_cpu_seconds,
    wait_until,
)
from benchmarks.sizes import Sizes

LATENCY = 0.02
# The most SMTP connections Nudge may hold at once here: what a relay would allow one client.
NUDGE_CONNECTIONS = 64


@dataclass
class Side:
    seconds: float  # first POST (Nudge) or alerts pushed (Alertmanager) to the last email
    sink: SmtpSink  # stopped; its log has every email and connection
    cpu: float  # CPU seconds of the sender over the run (Nudge: the whole process tree)
    sink_cpu: float  # CPU seconds of the SMTP sink over the same run


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


def alertmanager_run(binary: str, workdir: Path, count: int) -> Side:
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
        cpu_start = tree_cpu_seconds(am.pid)
        sink_start = cpu_seconds(sink.process.pid)
        started = time.time()
        for chunk in range(0, count, 1000):
            response = requests.post(url + "/api/v2/alerts", json=alerts[chunk:chunk + 1000],
                                     timeout=60)
            response.raise_for_status()
        sink.wait_for(count, timeout=120 + count * 0.2, others=[am])
        cpu = tree_cpu_seconds(am.pid) - cpu_start
        sink_cpu = cpu_seconds(sink.process.pid) - sink_start
        elapsed = max(t for t, _id, _rcpt in sink.log.accepted) - started
    finally:
        am.stop()
        sink.stop()
    return Side(elapsed, sink, cpu, sink_cpu)


def nudge_run(workdir: Path, count: int) -> Side:
    sink = SmtpSink(workdir, latency=LATENCY, name="nudge-sink")
    nudge = Nudge(workdir, nudge_config(workdir, smtp_url=sink.url,
                                        connections=NUDGE_CONNECTIONS)).start()
    try:
        cpu_start = tree_cpu_seconds(nudge.process.pid)
        sink_start = cpu_seconds(sink.process.pid)
        sent = loadgen({"mode": "fixed", "url": nudge.url, "prefix": "nudge", "posts": count,
                        "alerts_per_post": 1, "clients": 4})
        if sent["errors"]:
            raise RuntimeError(f"{sent['errors']} webhook POSTs were not answered 200")
        sink.wait_for(count, timeout=120 + count * 0.2, others=[nudge.process])
        # Sampled while every process still runs: a stopped tree reads 0.
        cpu = tree_cpu_seconds(nudge.process.pid) - cpu_start
        sink_cpu = cpu_seconds(sink.process.pid) - sink_start
        elapsed = max(t for t, _id, _rcpt in sink.log.accepted) - sent["start"]
    finally:
        nudge.stop()
        sink.stop()
    return Side(elapsed, sink, cpu, sink_cpu)


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
    ams: list[Side] = []
    nudges: list[Side] = []
    for round_ in range(sizes.alertmanager_rounds):
        am_dir, nudge_dir = workdir / f"round{round_}" / "alertmanager", workdir / f"round{round_}" / "nudge"
        am_dir.mkdir(parents=True)
        nudge_dir.mkdir(parents=True)
        ams.append(alertmanager_run(binary, am_dir, count))
        nudges.append(nudge_run(nudge_dir, count))
    rounds = len(nudges)
    nudge_rates = [count / side.seconds for side in nudges]
    am_rates = [count / side.seconds for side in ams]
    nudge_rate, am_rate = statistics.median(nudge_rates), statistics.median(am_rates)
    emails = count * rounds
    opened = (f"SMTP connections opened in all, per run: Nudge "
              f"{max(side.sink.log.connections for side in nudges):,}, Alertmanager "
              f"{max(side.sink.log.connections for side in ams):,}")
    cpu = (f"CPU per email: Nudge {1000 * sum(s.cpu for s in nudges) / emails:.2f} ms (the "
           f"whole nudge serve process tree), SMTP sink "
           f"{1000 * sum(s.sink_cpu for s in nudges) / emails:.2f} ms; Alertmanager "
           f"{1000 * sum(s.cpu for s in ams) / emails:.2f} ms (its process), SMTP sink "
           f"{1000 * sum(s.sink_cpu for s in ams) / emails:.2f} ms")
    result.figures += [
        Figure(f"Nudge (webhook to last email, smtp.connections={NUDGE_CONNECTIONS})",
               nudge_rate, "emails/s", baseline=am_rate,
               baseline_label=f"Alertmanager email_configs ({binary})", target=">= 1.0",
               details=[cpu]),
        Figure("Nudge, SMTP connections open at once",
               max(side.sink.log.peak_open for side in nudges), "connections",
               baseline=max(side.sink.log.peak_open for side in ams),
               baseline_label="Alertmanager, no limit",
               target=f"<= {NUDGE_CONNECTIONS}", target_on_value=True, details=[opened]),
    ]
    result.notes.append(
        f"median of {rounds} run(s), the sides taking turns; emails/s in each run: Nudge "
        + ", ".join(f"{rate:,.0f}" for rate in nudge_rates) + "; Alertmanager "
        + ", ".join(f"{rate:,.0f}" for rate in am_rates))
    result.notes += [
        f"time to {count:,} emails (medians): Nudge {count / nudge_rate:.2f}s, Alertmanager "
        f"{count / am_rate:.2f}s",
        f"Nudge's smtp.connections is {NUDGE_CONNECTIONS}, what a relay might allow one client; "
        "Alertmanager sends every notification at once over a connection of its own (EHLO, "
        "MAIL, RCPT, DATA, QUIT: 5 round trips each) with no limit, where Nudge keeps its fixed "
        "pool busy (MAIL, RCPT, DATA: 3 round trips each)",
        "CPU from just before the first POST (Nudge) or the alerts' push (Alertmanager) to the "
        "last email; Nudge's counts every process of `nudge serve`: supervisor, receiver "
        "master and workers, delivery worker (decider, dispatcher) and its sender processes",
    ]
    result.seconds = time.monotonic() - started
    return result
