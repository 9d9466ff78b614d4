"""Benchmark 6: a burst of alerts for distinct users, through `nudge serve` until the queue is empty.

The load generator POSTs the burst in payloads of `burst_alerts_per_post` alerts over 2
connections as fast as Nudge answers; the delivery worker drains the queue meanwhile to the
SMTP sink with the recommended smtp.connections. Reported: peak RSS (VmHWM) of every Nudge
process, time until every email was accepted and the queue is empty, the delivery rate
while the burst was being ingested against the rate after it, and whether every accepted
alert was decided and emailed exactly once (decisions and sent deliveries counted in the
database; distinct Message-IDs and recipients in the SMTP server's log against the
recipients the load generator sent).

The sink adds no latency here (a relay on the same host), so draining is bound by Nudge's
own CPU: with 20 ms per command and 10 connections the floor would be 100,000 x 60 ms / 10
= 10 minutes, longer than the whole suite may take.
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
)
from benchmarks.sizes import Sizes

LATENCY = 0.0
RSS_TARGET_MB = 200
PREFIX = "burst"


def _latency_text(latency: float) -> str:
    return f"adding {latency * 1000:.0f} ms per command" if latency else "adding no latency"


def run(number: int, sizes: Sizes, workdir: Path, latency: float = LATENCY) -> Result:
    started = time.monotonic()
    count, per_post = sizes.burst_alerts, sizes.burst_alerts_per_post
    result = Result(number, f"Burst of {count:,} alerts for distinct users ({per_post:,} per "
                            f"POST), SMTP server {_latency_text(latency)}, "
                            f"smtp.connections={RECOMMENDED_CONNECTIONS}")
    sink = SmtpSink(workdir, latency=latency)
    nudge = Nudge(workdir, nudge_config(workdir, smtp_url=sink.url,
                                        connections=RECOMMENDED_CONNECTIONS)).start()
    posts = count // per_post
    try:
        sent = loadgen({"mode": "fixed", "url": nudge.url, "prefix": PREFIX,
                        "posts": posts, "alerts_per_post": per_post, "clients": 2})
        if sent["errors"]:
            raise RuntimeError(f"{sent['errors']} webhook POSTs were not answered 200")
        sink.wait_for(count, timeout=300 + count * 0.05, others=[nudge.process])
        _seen, journal = nudge.wait_decided(60)
        newest = nudge.store.list_decisions(limit=1)
        last_decision = parse_time(newest[0]["created_at"]).timestamp() if newest else None
        wait_empty = time.time()
        while nudge.queue_depth() and time.time() - wait_empty < 60:
            time.sleep(0.2)
        depth = nudge.queue_depth()
        memory = nudge.memory()
        decisions = nudge.count("decisions")
        sent_rows = nudge.count("deliveries", "WHERE status = 'sent'")
    finally:
        nudge.stop()
        sink.stop()

    start, ingest_end = sent["start"], sent["end"]
    times = sorted(t for t, _id, _rcpt in sink.log.accepted)
    drained = times[-1] - start
    during = sum(1 for t in times if t <= ingest_end) / max(1e-9, ingest_end - start)
    after_times = [t for t in times if t > ingest_end]
    after = (len(after_times) / (after_times[-1] - ingest_end)) if after_times else None

    # Exactly once: every accepted alert has its decision and its sent delivery, and the SMTP
    # server got one email per expected recipient, no duplicate Message-ID, nothing else.
    expected = {payloads.email_for(payloads.user_id(PREFIX, seq, index))
                for seq in range(posts) for index in range(per_post)}
    accepted = sent["ok_alerts"]
    messages = sink.log.accepted
    recipients = [rcpt for _t, _id, rcpt in messages]
    distinct_ids = len({message_id for _t, message_id, _rcpt in messages})
    distinct_rcpts = set(recipients)
    missing = len(expected - distinct_rcpts)
    unexpected = len(distinct_rcpts - expected)
    duplicates = len(messages) - len(distinct_rcpts)
    undecided = max(0, accepted - decisions) + journal.pending
    problems = missing + unexpected + duplicates + undecided + max(0, accepted - sent_rows)
    if distinct_ids != len(messages):
        problems += len(messages) - distinct_ids

    result.figures.append(Figure(
        "time until every email is accepted and the queue is empty", drained, "s",
    ))
    result.figures.append(Figure(
        "accepted alerts not decided, not emailed, or emailed more than once", problems,
        "alerts", target="<= 0", target_on_value=True,
    ))
    for what, pid, peak, _now in sorted(memory):
        result.figures.append(Figure(
            f"peak RSS, {what} (pid {pid})", peak, "MB",
            target=f"<= {RSS_TARGET_MB}", target_on_value=True,
        ))
    result.figures.append(Figure(
        "delivery rate while the burst was being ingested", during, "emails/s",
        baseline=after, baseline_label="delivery rate after ingest finished",
    ))
    verdict = "YES" if problems == 0 else "NO"
    result.notes += [
        f"every accepted alert decided and emailed exactly once: {verdict}: {accepted:,} alerts "
        f"accepted (answered 200), {journal.decided:,} notifications decided "
        f"({journal.pending} pending), {decisions:,} decisions, {sent_rows:,} deliveries sent; "
        f"the SMTP server accepted {len(messages):,} emails, {distinct_ids:,} distinct "
        f"Message-IDs, {len(distinct_rcpts):,} distinct recipients of the {len(expected):,} "
        f"expected ({missing:,} missing, {duplicates:,} sent more than once, {unexpected:,} "
        f"unexpected)",
        f"ingest took {ingest_end - start:.1f}s ({count / (ingest_end - start):,.0f} alerts/s); "
        f"last decision recorded {_after(last_decision, sent['last_ok'])} after the last 200; "
        f"queue depth at the end: {depth}",
        "\"ingest must not slow delivery to a crawl\": compare the delivery rate during ingest "
        "with the rate after it (ratio above)",
    ]
    result.seconds = time.monotonic() - started
    return result


def _after(moment: float | None, reference: float) -> str:
    return "n/a" if moment is None else f"{moment - reference:.1f}s"
