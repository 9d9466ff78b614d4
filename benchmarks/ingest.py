"""Benchmarks 1 and 2: alerts per second durably accepted by POST /webhook, then decided.

Nudge runs as `nudge serve` with the default receiver worker count, its delivery worker
(decider and senders) turning what arrives into decisions and emails to the 20 ms SMTP sink
as in production. Two baselines run under the same gunicorn settings
(benchmarks/baseline_app.py): a bare Flask endpoint that only parses the same JSON, and a
bare *durable* endpoint that also appends the body to a file and fdatasyncs it before
answering (one fdatasync per request, no group commit). The load generator is a separate
set of processes keeping 2 keep-alive connections per receiver worker busy. The three take
turns (`ingest_rounds`); the median of each side counts.

After Nudge's load stops, the journal is polled (store API) until every accepted
notification is decided: reported are the time from the last 200 to the last decision, and
the decision rate, alerts decided per second from the first POST to the last decision.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.alerts import parse_time
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
    split_text,
)
from benchmarks.sizes import Sizes

BARE, DURABLE, NUDGE = "bare", "bare durable", "Nudge"
BARE_LABEL = "bare Flask endpoint parsing the JSON, same gunicorn settings"
DURABLE_LABEL = ("bare durable endpoint: parse, append the body to a file, fdatasync, "
                 "same gunicorn settings")
# Longest wait, per round, for the decider to catch up after the load stops.
DECIDE_TIMEOUT = 900.0


@dataclass
class Side:
    """What one side measured in one round."""

    rate: float  # alerts answered 200 per second in the measured window
    accepted: int  # alerts answered 200 in all (warm-up and the last POSTs included)
    posts: int
    errors: int
    counts: dict[str, int]  # connections, server_closes, retries
    cpu: dict[str, float]  # CPU seconds per kind of process during the load
    split: list[float]  # CPU seconds of each receiver worker during the load
    # Nudge only:
    decided_after: float | None = None  # last 200 -> last decision, seconds
    decision_rate: float | None = None  # alerts decided per second, first POST -> last decision
    decisions: int = 0
    pending: int = 0  # notifications still undecided when we stopped waiting
    worker_cpu_run: float = 0.0  # delivery worker CPU seconds, first POST -> last decision
    extra: dict = field(default_factory=dict)


def run(number: int, sizes: Sizes, workdir: Path, alerts_per_post: int, target: float,
        durable_target: float | None = None) -> Result:
    started = time.monotonic()
    workers = DEFAULTS["server"]["workers"]
    clients = 2 * workers
    title = (f"Ingest, {alerts_per_post:,} alert{'s' if alerts_per_post > 1 else ''} per POST "
             f"(distinct users)")
    result = Result(number, title)
    spec = {"mode": "throughput", "alerts_per_post": alerts_per_post, "clients": clients,
            "warmup": sizes.ingest_warmup, "duration": sizes.ingest_duration}
    sides: dict[str, list[Side]] = {BARE: [], DURABLE: [], NUDGE: []}
    sink = SmtpSink(workdir, latency=0.02)
    try:
        for round_ in range(sizes.ingest_rounds):
            sides[BARE].append(_baseline(workdir, workers, {**spec, "prefix": f"b{round_}-"}))
            bodies = workdir / f"round{round_}-bodies.log"
            sides[DURABLE].append(_baseline(workdir, workers, {**spec, "prefix": f"d{round_}-"},
                                            durable=bodies))
            bodies.unlink(missing_ok=True)  # as big as what was sent: do not keep it
            round_dir = workdir / f"round{round_}"
            round_dir.mkdir()
            sides[NUDGE].append(_nudge(round_dir, sink, {**spec, "prefix": f"n{round_}-"}))
    finally:
        sink.stop()

    def median(side: str, attribute: str = "rate") -> float | None:
        values = [getattr(s, attribute) for s in sides[side]]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    nudge_rate = median(NUDGE)
    result.figures += [
        Figure("Nudge (nudge serve)", nudge_rate, "alerts/s", baseline=median(BARE),
               baseline_label=BARE_LABEL, target=f">= {target}"),
        Figure("Nudge (nudge serve)", nudge_rate, "alerts/s", baseline=median(DURABLE),
               baseline_label=DURABLE_LABEL,
               target=f">= {durable_target}" if durable_target else ""),
        Figure("every accepted alert decided, seconds after the last 200",
               median(NUDGE, "decided_after"), "s"),
        Figure("decision rate (alerts decided per second, first POST to last decision)",
               median(NUDGE, "decision_rate"), "alerts/s", baseline=nudge_rate,
               baseline_label="Nudge's ingest rate above: below 1, the decider fell behind"),
    ]
    nudge = sides[NUDGE]
    accepted = sum(s.accepted for s in nudge)
    decisions = sum(s.decisions for s in nudge)
    pending = sum(s.pending for s in nudge)
    result.notes += [
        f"{workers} receiver workers (the default), {clients} keep-alive client connections "
        f"from a separate load-generator process each, {sizes.ingest_duration:g}s measured "
        f"after {sizes.ingest_warmup:g}s warm-up, median of {sizes.ingest_rounds} round(s) "
        f"taking turns (bare, bare durable, Nudge)",
        "rounds, alerts/s: " + "; ".join(
            f"{name} " + ", ".join(f"{s.rate:,.0f}" for s in runs)
            for name, runs in sides.items()),
        "Nudge, every round: decided "
        + ", ".join(_seconds(s.decided_after) for s in nudge) + " after the last 200; "
        + ", ".join(f"{s.decision_rate or 0:,.0f}" for s in nudge) + " alerts decided/s",
        f"Nudge accepted {accepted:,} alerts over all rounds (warm-up included) and recorded "
        f"{decisions:,} decisions"
        + (": every accepted alert decided" if decisions >= accepted and not pending else
           f": NOT ALL DECIDED ({pending:,} notifications still pending after "
           f"{DECIDE_TIMEOUT:.0f}s)")
        + "; non-200 answers: " + ", ".join(
            f"{name} {sum(s.errors for s in runs)}" for name, runs in sides.items()),
        "keep-alive connections opened / POSTs (answers with Connection: close, POSTs resent "
        "on a fresh connection): " + "; ".join(
            f"{name} {_sum(runs, 'connections'):,} / {sum(s.posts for s in runs):,} "
            f"({_sum(runs, 'server_closes'):,}, {_sum(runs, 'retries'):,})"
            for name, runs in sides.items()),
        "receiver worker CPU split during the load: " + "; ".join(
            f"{name} " + ", ".join(split_text(s.split) for s in runs)
            for name, runs in sides.items()),
        "CPU per accepted alert during the load: Nudge receiver "
        + _per_alert(nudge, "receiver") + ", delivery worker (decider + senders) "
        + _per_alert(nudge, "delivery worker") + "; bare receiver "
        + _per_alert(sides[BARE], "receiver") + "; bare durable receiver "
        + _per_alert(sides[DURABLE], "receiver"),
        "delivery worker CPU from the first POST to the last decision: "
        + _micros(sum(s.worker_cpu_run for s in nudge), decisions) + " per decided alert",
    ]
    result.seconds = time.monotonic() - started
    return result


def _baseline(workdir: Path, workers: int, spec: dict, durable: Path | None = None) -> Side:
    baseline = BaselineReceiver(workdir, workers, durable=durable)
    try:
        meter = CpuMeter(baseline.process.pid).start()
        got = loadgen({**spec, "url": baseline.url})
        meter.stop()
    finally:
        baseline.stop()
    return _side(got, spec, meter)


def _nudge(workdir: Path, sink: SmtpSink, spec: dict) -> Side:
    nudge = Nudge(workdir, nudge_config(workdir, smtp_url=sink.url,
                                        connections=RECOMMENDED_CONNECTIONS)).start()
    try:
        meter = CpuMeter(nudge.process.pid).start()
        whole = CpuMeter(nudge.process.pid).start()
        got = loadgen({**spec, "url": nudge.url})
        meter.stop()
        _seen, stats = nudge.wait_decided(DECIDE_TIMEOUT, interval=0.02)
        whole.stop()
        side = _side(got, spec, meter)
        newest = nudge.store.list_decisions(limit=1)
        last_decision = parse_time(newest[0]["created_at"]).timestamp() if newest else None
        side.pending = stats.pending
        side.decisions = nudge.count("decisions")
        side.worker_cpu_run = whole.used.get("delivery worker", 0.0)
        if last_decision is not None and not stats.pending:
            side.decided_after = max(0.0, last_decision - got["last_ok"])
            side.decision_rate = side.decisions / max(1e-9, last_decision - got["start"])
    finally:
        nudge.stop()
    return side


def _side(got: dict, spec: dict, meter: CpuMeter) -> Side:
    return Side(
        rate=got["alerts_per_second"],
        accepted=got["total_ok_alerts"],
        posts=got["total_ok_alerts"] // spec["alerts_per_post"] + got["total_errors"],
        errors=got["total_errors"],
        counts={name: got[name] for name in ("connections", "server_closes", "retries")},
        cpu=dict(meter.used),
        split=meter.split(),
    )


def _sum(runs: list[Side], name: str) -> int:
    return sum(s.counts[name] for s in runs)


def _per_alert(runs: list[Side], prefix: str) -> str:
    seconds = sum(v for s in runs for k, v in s.cpu.items() if k.startswith(prefix))
    return _micros(seconds, sum(s.accepted for s in runs))


def _micros(seconds: float, alerts: int) -> str:
    micros = seconds * 1e6 / max(1, alerts)
    return f"{micros:,.0f} µs" if micros < 10_000 else f"{micros / 1000:,.1f} ms"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}s"
