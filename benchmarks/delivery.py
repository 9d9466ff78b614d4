"""Benchmark 3: delivery throughput, to an SMTP relay with no added latency and to one 20 ms
away (per command).

The queue is filled first (Nudge's own journal and decider), then `nudge worker` alone drains
it to the SMTP sink: with smtp.connections set to the recommended default, and (20 ms only)
with a single connection. The baseline is plain smtplib sending the same pre-rendered
messages over the same number of persistent connections (benchmarks.smtp_baseline).
Throughput is measured at the sink, from the first message accepted to the last, for every
side alike (start-up time of the processes is excluded).

With no added latency the relay answers at once and the rate is bound by CPU: the figure
then shows what share of the cores Nudge's own work (claiming, rendering, recording, its
sender processes) leaves for sending, against smtplib doing nothing but send. With 20 ms per
command both sides mostly wait on the relay. Every run reports the CPU per email of the
sender (Nudge: `nudge worker` and every process it started, see tree_cpu_seconds; smtplib:
its process while sending) and of the SMTP sink, which shares the same cores.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
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
    descendants,
    nudge_config,
    tree_cpu_seconds,
)
from benchmarks.prefill import prefill
from benchmarks.sizes import Sizes

LATENCY = 0.02  # the relay 20 ms away: seconds per SMTP command
NO_LATENCY = 0.0  # the relay on the same host


@dataclass
class Run:
    rate: float  # emails/s at the sink, first accepted to last
    emails: int  # emails the CPU figures are divided by
    cpu_ms: float  # sender's CPU per email: Nudge's process tree, or the smtplib process
    sink_cpu_ms: float  # the SMTP sink's CPU per email over the same run
    processes: int = 1  # processes in the sender's tree at the end of the run


def rate(sink: SmtpSink, prefix: str) -> tuple[float, int]:
    """Messages per second at the sink for recipients starting with `prefix` (first to last)."""
    times = sorted(t for t, _id, rcpt in sink.log.accepted if rcpt.startswith(prefix))
    if len(times) < 2 or times[-1] == times[0]:
        return 0.0, len(times)
    return (len(times) - 1) / (times[-1] - times[0]), len(times)


def nudge_run(workdir: Path, sink: SmtpSink, connections: int, count: int, prefix: str) -> Run:
    """`nudge worker` draining `count` deliveries; CPU of its whole process tree and of the
    sink from the first email seen at the sink to the last."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = nudge_config(workdir, smtp_url=sink.url, connections=connections)
    prefill(config, prefix, count)
    before = sink.log.refresh()
    nudge = Nudge(workdir, config, command="worker").start()
    try:
        sink.wait_for(before + 1, timeout=60, others=[nudge.process])
        cpu_start = tree_cpu_seconds(nudge.process.pid)
        sink_start = cpu_seconds(sink.process.pid)
        first = sink.log.count
        sink.wait_for(before + count, timeout=60 + count * 0.2, others=[nudge.process])
        # Sampled while every process still runs: a stopped tree reads 0.
        cpu = tree_cpu_seconds(nudge.process.pid) - cpu_start
        sink_cpu = cpu_seconds(sink.process.pid) - sink_start
        processes = len(descendants(nudge.process.pid))
        emails = max(1, sink.log.count - first)
    finally:
        nudge.stop()
    return Run(rate(sink, prefix)[0], emails, cpu * 1000 / emails, sink_cpu * 1000 / emails,
               processes)


def baseline_run(workdir: Path, sink: SmtpSink, connections: int, count: int,
                 prefix: str) -> Run:
    """Plain smtplib; its CPU while sending (it measures itself), the sink's over its run."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = nudge_config(workdir, smtp_url=sink.url, connections=connections)
    spec = {"config": config, "prefix": prefix, "count": count, "connections": connections,
            "url": sink.url}
    sink_start = cpu_seconds(sink.process.pid)
    done = subprocess.run([PYTHON, "-m", "benchmarks.smtp_baseline"], input=json.dumps(spec),
                          capture_output=True, text=True, cwd=ROOT, env=clean_env(),
                          timeout=120 + count * 0.2)
    if done.returncode != 0:
        raise RuntimeError(f"smtplib baseline failed:\n{done.stderr[-2000:]}")
    sink_cpu = cpu_seconds(sink.process.pid) - sink_start
    report = json.loads(done.stdout)
    sink.log.refresh()
    sent = max(1, report["sent"])
    return Run(rate(sink, prefix)[0], sent, report["cpu"] * 1000 / sent, sink_cpu * 1000 / sent)


def cpu_line(sides: list[tuple[str, Run]]) -> str:
    """'CPU per email: Nudge 2.10 ms (…), SMTP sink 0.80 ms; smtplib …' for a figure."""
    parts = []
    for name, run in sides:
        if name.startswith("Nudge"):
            tree = ("nudge worker alone" if run.processes == 1 else
                    f"nudge worker and the {run.processes - 1} processes it started")
            who = f"{name} {run.cpu_ms:.2f} ms ({tree})"
        else:
            who = f"{name} {run.cpu_ms:.2f} ms (its process, while sending)"
        parts.append(f"{who}, SMTP sink {run.sink_cpu_ms:.2f} ms")
    return "CPU per email: " + "; ".join(parts)


def run(number: int, sizes: Sizes, workdir: Path) -> Result:
    started = time.monotonic()
    many = RECOMMENDED_CONNECTIONS
    result = Result(number, f"Delivery throughput, SMTP server adding no latency and "
                            f"{LATENCY * 1000:.0f} ms per command, {many} connections")
    count_fast = sizes.delivery_fast_emails
    count_many = many * sizes.delivery_per_connection
    count_one = sizes.delivery_per_connection
    # No added latency first, on a sink of its own: the CPU-bound figure.
    fast_sink = SmtpSink(workdir, latency=NO_LATENCY, name="smtp-sink-0ms")
    try:
        base_fast = baseline_run(workdir / "base-fast", fast_sink, many, count_fast, "bf")
        nudge_fast = nudge_run(workdir / "nudge-fast", fast_sink, many, count_fast, "nf")
    finally:
        fast_sink.stop()
    sink = SmtpSink(workdir, latency=LATENCY)
    try:
        base_many = baseline_run(workdir / "base-many", sink, many, count_many, "bm")
        nudge_many = nudge_run(workdir / "nudge-many", sink, many, count_many, "nm")
        nudge_one = nudge_run(workdir / "nudge-one", sink, 1, count_one, "n1")
        base_one = baseline_run(workdir / "base-one", sink, 1, count_one, "b1")
    finally:
        sink.stop()

    result.figures += [
        Figure(f"Nudge, no added latency, smtp.connections={many}", nudge_fast.rate, "emails/s",
               baseline=base_fast.rate,
               baseline_label=f"plain smtplib, {many} persistent connections, pre-rendered, no "
                              f"added latency",
               target=">= 0.5",
               details=[cpu_line([("Nudge", nudge_fast), ("smtplib", base_fast)])]),
        Figure(f"Nudge, {LATENCY * 1000:.0f} ms per command, smtp.connections={many}",
               nudge_many.rate, "emails/s", baseline=base_many.rate,
               baseline_label=f"plain smtplib, {many} persistent connections, pre-rendered, "
                              f"{LATENCY * 1000:.0f} ms per command",
               target=">= 0.9",
               details=[cpu_line([("Nudge", nudge_many), ("smtplib", base_many)])]),
        Figure(f"Nudge, {LATENCY * 1000:.0f} ms per command, {many} connections vs 1",
               nudge_many.rate, "emails/s", baseline=nudge_one.rate,
               baseline_label="Nudge, smtp.connections=1", target=">= 8",
               details=[cpu_line([(f"Nudge {many} connections", nudge_many),
                                  ("Nudge 1 connection", nudge_one)])]),
    ]
    floor = 1 / (3 * LATENCY)
    budget = nudge_fast.cpu_ms + nudge_fast.sink_cpu_ms
    base_budget = base_fast.cpu_ms + base_fast.sink_cpu_ms
    result.notes += [
        f"no added latency: {count_fast:,} emails per side over {many} connections; "
        f"{LATENCY * 1000:.0f} ms: {count_many:,} emails with {many} connections, "
        f"{count_one:,} with 1; rate from the first email accepted to the last at the sink",
        f"no added latency the rate is bound by CPU: Nudge and the sink together used "
        f"{budget:.2f} ms per email (smtplib and the sink {base_budget:.2f} ms) on cores shared "
        f"by every party",
        f"plain smtplib over 1 connection: {base_one.rate:.1f} emails/s; with {LATENCY * 1000:.0f} "
        f"ms per command the SMTP server's floor is MAIL+RCPT+DATA = {3 * LATENCY * 1000:.0f} ms "
        f"per email, at most {floor:.1f} emails/s per connection",
        "Nudge's CPU is its whole process tree (`nudge worker` and the sender processes it "
        "starts, exited ones included once reaped) from the first email accepted to the last; "
        "smtplib's is its own process from the first send to the last (rendering excluded: "
        "its messages are pre-rendered); the sink's is over each side's run",
    ]
    result.seconds = time.monotonic() - started
    return result
