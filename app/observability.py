"""GET /metrics, /-/healthy and /-/ready, following Prometheus' own endpoint conventions."""

from __future__ import annotations

import os
import time

from flask import Blueprint, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from app import worker_health
from app.storage import store
from app.store import StorageError

blueprint = Blueprint("observability", __name__)


class QueueCollector:
    """Queue depth and age, and the journal's backlog, read from the database at scrape time
    (true across processes)."""

    def __init__(self, get_store):
        self.get_store = get_store

    def collect(self):
        depth = GaugeMetricFamily(
            "nudge_queue_depth", "Deliveries waiting to be sent (queued or being sent)"
        )
        age = GaugeMetricFamily(
            "nudge_queue_oldest_age_seconds", "Age of the oldest delivery waiting to be sent"
        )
        backlog = GaugeMetricFamily(
            "nudge_journal_pending_notifications",
            "Notifications answered 200 and not yet decided",
        )
        backlog_age = GaugeMetricFamily(
            "nudge_journal_oldest_pending_age_seconds",
            "Age of the oldest notification not yet decided (the decider's lag)",
        )
        try:
            now = time.time()
            stats = self.get_store().queue_stats(now)
            journal = self.get_store().journal_stats(now)
        except StorageError:
            return
        depth.add_metric([], stats.depth)
        age.add_metric([], stats.oldest_age)
        backlog.add_metric([], journal.pending)
        backlog_age.add_metric([], journal.oldest_age)
        yield from (depth, age, backlog, backlog_age)


class WorkerHealthCollector:
    """The delivery worker's health as `nudge serve` last saw it (app/worker_health.py); no
    samples when there is no supervisor to ask."""

    def collect(self):
        health, problem = worker_health.current()
        if health is None and problem is None:
            return
        healthy = GaugeMetricFamily(
            "nudge_delivery_worker_healthy",
            "1 when the delivery worker runs (and, after a restart, has run for a while); 0 "
            "when it has exited or keeps exiting: then no email is decided or sent")
        healthy.add_metric([], 0 if problem else 1)
        restarts = CounterMetricFamily(
            "nudge_delivery_worker_restarts",
            "Times the delivery worker exited and nudge serve restarted it")
        restarts.add_metric([], health.restarts if health else 0)
        yield from (healthy, restarts)


@blueprint.get("/metrics")
def metrics() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    queue = CollectorRegistry(auto_describe=False)
    queue.register(QueueCollector(store))
    queue.register(WorkerHealthCollector())
    body = generate_latest(registry) + generate_latest(queue)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


@blueprint.get("/-/healthy")
def healthy() -> Response:
    return Response("Nudge is Healthy.\n", mimetype="text/plain")


@blueprint.get("/-/ready")
def ready() -> Response:
    try:
        store().check_ready()
    except StorageError as exc:
        current_app.logger.warning("not ready: %s", exc)
        return Response(f"Service Unavailable: {exc}\n", 503, mimetype="text/plain")
    _health, problem = worker_health.current()
    if problem:
        current_app.logger.warning("not ready: %s", problem)
        return Response(f"Service Unavailable: {problem}\n", 503, mimetype="text/plain")
    # Broken template or rule files do not make Nudge unready (the last good version is in
    # use), but this is where an operator looks: say what is wrong with them.
    templates = current_app.extensions["nudge_templates"]
    templates.refresh(min_interval=1.0)
    details = "".join(f"{line}\n" for line in templates.status_lines())
    return Response("Nudge is Ready.\n" + details, mimetype="text/plain")
