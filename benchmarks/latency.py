"""Benchmark 5: from the webhook's 200 to the SMTP server accepting the email, per alert.

`nudge serve` (recommended smtp.connections) receives one alert per POST at a steady,
moderate rate from the load generator, which notes the time.time() each 200 arrived; the
SMTP sink (20 ms per command) notes when it accepted each email. Same machine, same clock;
alerts are matched to emails by their recipient address. The time each decision was recorded
(the store's decision list) splits the latency into 200 -> decided and decided -> accepted.
"""

from __future__ import annotations

import time
from pathlib import Path

from app.alerts import parse_time
from benchmarks import payloads
from benchmarks.harness import (
    RECOMMENDED_CONNECTIONS,
    Figure,
    Nudge,
    Result,
    SmtpSink,
    loadgen,
    nudge_config,
    percentile,
)
from benchmarks.sizes import Sizes

LATENCY = 0.02


def run(number: int, sizes: Sizes, workdir: Path) -> Result:
    started = time.monotonic()
    count, rate = sizes.latency_alerts, sizes.latency_rate
    result = Result(number, f"Latency, webhook 200 to SMTP accept, {count:,} alerts at "
                            f"{rate:g}/s, SMTP server adding {LATENCY * 1000:.0f} ms per command")
    sink = SmtpSink(workdir, latency=LATENCY)
    nudge = Nudge(workdir, nudge_config(workdir, smtp_url=sink.url,
                                        connections=RECOMMENDED_CONNECTIONS)).start()
    try:
        sent = loadgen({"mode": "rate", "url": nudge.url, "prefix": "lat", "count": count,
                        "rate": rate, "clients": 2})
        answered = sent["answered"]
        sink.wait_for(len(answered), timeout=60 + count * 0.2, others=[nudge.process])
        decided = {payloads.email_for(row["user_id"]): parse_time(row["created_at"]).timestamp()
                   for row in nudge.store.list_decisions()}
    finally:
        nudge.stop()
        sink.stop()
    accepted = {rcpt: t for t, _id, rcpt in sink.log.accepted}
    latencies = [(accepted[rcpt] - t) * 1000 for rcpt, t in answered.items() if rcpt in accepted]
    # Where the time goes: 200 -> the decider records the decision -> the SMTP server accepts.
    to_decision = [(decided[rcpt] - t) * 1000 for rcpt, t in answered.items() if rcpt in decided]
    to_smtp = [(accepted[rcpt] - decided[rcpt]) * 1000 for rcpt in answered
               if rcpt in decided and rcpt in accepted]
    floor = 3 * LATENCY * 1000
    for p, target in ((50, 100), (99, 500)):
        result.figures.append(Figure(
            f"p{p}", percentile(latencies, p), "ms", baseline=floor,
            baseline_label="the SMTP conversation alone: MAIL + RCPT + DATA",
            target=f"<= {target}", target_on_value=True,
        ))
    result.notes += [
        f"{len(latencies):,} of {count:,} alerts matched to their email ({sent['errors']} POSTs "
        f"not answered 200); max {max(latencies, default=0):.0f} ms, "
        f"mean {sum(latencies) / max(1, len(latencies)):.0f} ms",
        f"of which 200 -> decision recorded (journal, decider): p50 "
        f"{_ms(percentile(to_decision, 50))}, p99 {_ms(percentile(to_decision, 99))}; decision "
        f"-> SMTP accept (queue, dispatcher, rendering, SMTP): p50 "
        f"{_ms(percentile(to_smtp, 50))}, p99 {_ms(percentile(to_smtp, 99))}",
        f"keep-alive: {sent['connections']} connections opened for {count:,} POSTs "
        f"({sent['server_closes']} answers with Connection: close, {sent['retries']} POSTs "
        f"resent on a fresh connection)",
    ]
    result.seconds = time.monotonic() - started
    return result


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"
