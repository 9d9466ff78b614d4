"""Benchmarks 1 and 2: alerts per second durably accepted by POST /webhook.

Nudge runs as `nudge serve` with the default receiver worker count, its delivery worker
sending what arrives to the 20 ms SMTP sink as in production. The baseline is a bare Flask
endpoint that only parses the same JSON, under the same gunicorn settings. The load
generator is a separate set of processes keeping 2 connections per receiver worker busy.
Baseline and Nudge take turns (`ingest_rounds`); the median of each side counts.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from app.config import DEFAULTS
from benchmarks.harness import (
    RECOMMENDED_CONNECTIONS,
    BaselineReceiver,
    CpuMeter,
    Figure,
    Nudge,
    Result,
    SmtpSink,
    loadgen,
    nudge_config,
)
from benchmarks.sizes import Sizes


def run(number: int, sizes: Sizes, workdir: Path, alerts_per_post: int, target: float) -> Result:
    started = time.monotonic()
    workers = DEFAULTS["server"]["workers"]
    clients = 2 * workers
    title = (f"Ingest, {alerts_per_post:,} alert{'s' if alerts_per_post > 1 else ''} per POST "
             f"(distinct users)")
    result = Result(number, title)
    spec = {"mode": "throughput", "alerts_per_post": alerts_per_post, "clients": clients,
            "warmup": sizes.ingest_warmup, "duration": sizes.ingest_duration}
    nudge_rates, base_rates, stored, errors = [], [], 0, 0
    nudge_cpu: dict[str, float] = {}
    base_cpu: dict[str, float] = {}
    nudge_alerts = base_alerts = 0
    sink = SmtpSink(workdir, latency=0.02)
    try:
        for round_ in range(sizes.ingest_rounds):
            baseline = BaselineReceiver(workdir, workers)
            try:
                meter = CpuMeter(baseline.process.pid).start()
                base = loadgen({**spec, "url": baseline.url, "prefix": f"b{round_}-"})
                _add(base_cpu, meter.stop())
            finally:
                baseline.stop()
            base_rates.append(base["alerts_per_second"])
            base_alerts += base["total_ok_alerts"]
            errors += base["errors"]

            round_dir = workdir / f"round{round_}"
            round_dir.mkdir()
            nudge = Nudge(round_dir, nudge_config(round_dir, smtp_url=sink.url,
                                                  connections=RECOMMENDED_CONNECTIONS)).start()
            try:
                meter = CpuMeter(nudge.process.pid).start()
                got = loadgen({**spec, "url": nudge.url, "prefix": f"n{round_}-"})
                _add(nudge_cpu, meter.stop())
                stored += _count(nudge, "decisions")
            finally:
                nudge.stop()
            nudge_rates.append(got["alerts_per_second"])
            nudge_alerts += got["total_ok_alerts"]
            errors += got["errors"]
    finally:
        sink.stop()

    result.figures.append(Figure(
        "Nudge (nudge serve)", statistics.median(nudge_rates), "alerts/s",
        baseline=statistics.median(base_rates),
        baseline_label="bare Flask endpoint parsing the JSON, same gunicorn settings",
        target=f">= {target}",
    ))
    result.notes += [
        f"{workers} receiver workers (the default), {clients} client connections from a "
        f"separate load-generator process per connection, {sizes.ingest_duration:g}s measured "
        f"after {sizes.ingest_warmup:g}s warm-up, median of {sizes.ingest_rounds} alternating "
        f"round(s)",
        "Nudge rounds: " + ", ".join(f"{r:,.0f}" for r in nudge_rates)
        + "; baseline rounds: " + ", ".join(f"{r:,.0f}" for r in base_rates) + " alerts/s",
        f"{stored:,} alert decisions committed by Nudge (synchronous=FULL) over all rounds; "
        f"{errors} non-200 answers",
        "CPU per accepted alert: Nudge receiver "
        + _per_alert(nudge_cpu, nudge_alerts, "receiver") + ", delivery worker meanwhile "
        + _per_alert(nudge_cpu, nudge_alerts, "delivery worker") + "; baseline receiver "
        + _per_alert(base_cpu, base_alerts, "receiver"),
    ]
    result.seconds = time.monotonic() - started
    return result


def _add(total: dict[str, float], used: dict[str, float]) -> None:
    for what, seconds in used.items():
        total[what] = total.get(what, 0.0) + seconds


def _per_alert(cpu: dict[str, float], alerts: int, prefix: str) -> str:
    seconds = sum(v for k, v in cpu.items() if k.startswith(prefix))
    micros = seconds * 1e6 / max(1, alerts)
    return f"{micros:,.0f} µs" if micros < 10_000 else f"{micros / 1000:,.1f} ms"


def _count(nudge: Nudge, table: str) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{nudge.database}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()
