"""Benchmark 3: delivery throughput to an SMTP server 20 ms away (per command).

The queue is filled first (Nudge's own ingest code), then `nudge worker` alone drains it to
the SMTP sink: with smtp.connections set to the recommended default, and with a single
connection. The baseline is plain smtplib sending the same pre-rendered messages over the
same number of persistent connections (benchmarks.smtp_baseline). Throughput is measured at
the sink, from the first message accepted to the last, for every side alike (start-up time
of the processes is excluded).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from benchmarks.harness import (
    PYTHON,
    RECOMMENDED_CONNECTIONS,
    ROOT,
    Figure,
    Nudge,
    Result,
    SmtpSink,
    clean_env,
    cpu_seconds,
    nudge_config,
)
from benchmarks.prefill import prefill
from benchmarks.sizes import Sizes

LATENCY = 0.02


def rate(sink: SmtpSink, prefix: str) -> tuple[float, int]:
    """Messages per second at the sink for recipients starting with `prefix` (first to last)."""
    times = sorted(t for t, _id, rcpt in sink.log.accepted if rcpt.startswith(prefix))
    if len(times) < 2 or times[-1] == times[0]:
        return 0.0, len(times)
    return (len(times) - 1) / (times[-1] - times[0]), len(times)


def nudge_run(workdir: Path, sink: SmtpSink, connections: int, count: int,
              prefix: str) -> tuple[float, float]:
    """(messages/s, worker CPU ms per message) for `nudge worker` draining `count` deliveries."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = nudge_config(workdir, smtp_url=sink.url, connections=connections)
    prefill(config, prefix, count)
    before = sink.log.refresh()
    nudge = Nudge(workdir, config, command="worker").start()
    try:
        sink.wait_for(before + 1, timeout=60, others=[nudge.process])
        cpu_start = cpu_seconds(nudge.process.pid)
        first = sink.log.count
        sink.wait_for(before + count, timeout=60 + count * 0.2, others=[nudge.process])
        cpu_ms = (cpu_seconds(nudge.process.pid) - cpu_start) * 1000 / max(1, sink.log.count - first)
    finally:
        nudge.stop()
    return rate(sink, prefix)[0], cpu_ms


def baseline_run(workdir: Path, sink: SmtpSink, connections: int, count: int, prefix: str) -> float:
    workdir.mkdir(parents=True, exist_ok=True)
    config = nudge_config(workdir, smtp_url=sink.url, connections=connections)
    spec = {"config": config, "prefix": prefix, "count": count, "connections": connections,
            "url": sink.url}
    done = subprocess.run([PYTHON, "-m", "benchmarks.smtp_baseline"], input=json.dumps(spec),
                          capture_output=True, text=True, cwd=ROOT, env=clean_env(),
                          timeout=60 + count * 0.2)
    if done.returncode != 0:
        raise RuntimeError(f"smtplib baseline failed:\n{done.stderr[-2000:]}")
    sink.log.refresh()
    return rate(sink, prefix)[0]


def run(number: int, sizes: Sizes, workdir: Path) -> Result:
    started = time.monotonic()
    many = RECOMMENDED_CONNECTIONS
    result = Result(number, f"Delivery throughput, SMTP server adding {LATENCY * 1000:.0f} ms "
                            f"per command, {many} connections")
    count_many = many * sizes.delivery_per_connection
    count_one = sizes.delivery_per_connection
    sink = SmtpSink(workdir, latency=LATENCY)
    try:
        base_many = baseline_run(workdir / "base-many", sink, many, count_many, "bm")
        nudge_many, cpu_many = nudge_run(workdir / "nudge-many", sink, many, count_many, "nm")
        nudge_one, cpu_one = nudge_run(workdir / "nudge-one", sink, 1, count_one, "n1")
        base_one = baseline_run(workdir / "base-one", sink, 1, count_one, "b1")
    finally:
        sink.stop()

    result.figures += [
        Figure(f"Nudge, smtp.connections={many}", nudge_many, "emails/s", baseline=base_many,
               baseline_label=f"plain smtplib, {many} persistent connections, pre-rendered",
               target=">= 0.9"),
        Figure(f"Nudge, {many} connections vs 1", nudge_many, "emails/s", baseline=nudge_one,
               baseline_label="Nudge, smtp.connections=1", target=">= 8"),
    ]
    floor = 1 / (3 * LATENCY)
    result.notes += [
        f"{count_many:,} emails with {many} connections, {count_one:,} with 1; rate from the "
        f"first email accepted to the last",
        f"plain smtplib over 1 connection: {base_one:.1f} emails/s; the SMTP server's floor is "
        f"MAIL+RCPT+DATA = {3 * LATENCY * 1000:.0f} ms per email, at most {floor:.1f} emails/s "
        f"per connection",
        f"delivery worker CPU per email: {cpu_many:.1f} ms ({many} connections), "
        f"{cpu_one:.1f} ms (1 connection)",
    ]
    result.seconds = time.monotonic() - started
    return result
