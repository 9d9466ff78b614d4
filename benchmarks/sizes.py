"""How big each benchmark runs: full (`make bench`), --quick, and tiny (the smoke tests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    name: str
    ingest_warmup: float  # seconds before the measured window
    ingest_duration: float  # seconds measured, per side
    ingest_rounds: int  # baseline and Nudge alternate this many times; the median counts
    delivery_per_connection: int  # messages per SMTP connection in the delivery benchmark
    alertmanager_emails: int
    alertmanager_rounds: int  # benchmark 4: Nudge and Alertmanager take turns; medians count
    latency_alerts: int
    latency_rate: float  # alerts (POSTs) per second
    burst_alerts: int
    burst_alerts_per_post: int
    replica_rounds: int  # benchmark 7: the three setups take turns this many times
    replica_loads: tuple[tuple[int, int], ...]  # benchmark 7: (alerts per POST, POSTs) each
    replica_emails: int  # benchmark 7: queued emails drained per run
    replica_drains: int  # benchmark 7: drains per setup in each round (short and noisy runs)
    delivery_fast_emails: int  # benchmark 3, relay without added latency: emails per side


FULL = Sizes("full", ingest_warmup=2, ingest_duration=12, ingest_rounds=2,
             delivery_per_connection=120, alertmanager_emails=1000, alertmanager_rounds=5,
             latency_alerts=1000, latency_rate=25, burst_alerts=100_000, burst_alerts_per_post=1000,
             replica_rounds=2, replica_loads=((1000, 100), (1, 4000)), replica_emails=2000,
             replica_drains=3, delivery_fast_emails=6000)
QUICK = Sizes("quick", ingest_warmup=1, ingest_duration=5, ingest_rounds=1,
              delivery_per_connection=30, alertmanager_emails=200, alertmanager_rounds=3,
              latency_alerts=200, latency_rate=25, burst_alerts=5_000, burst_alerts_per_post=1000,
              replica_rounds=1, replica_loads=((1000, 10), (1, 1500)), replica_emails=600,
              replica_drains=2, delivery_fast_emails=1500)
TINY = Sizes("tiny", ingest_warmup=0.3, ingest_duration=1.0, ingest_rounds=1,
             delivery_per_connection=4, alertmanager_emails=8, alertmanager_rounds=1,
             latency_alerts=10, latency_rate=20, burst_alerts=200, burst_alerts_per_post=50,
             replica_rounds=1, replica_loads=((10, 60),), replica_emails=40,
             replica_drains=1, delivery_fast_emails=40)
