"""GET /metrics, /-/healthy and /-/ready, following Prometheus' own endpoint conventions."""

from __future__ import annotations

import os
import sqlite3
import time

from flask import Blueprint, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from app.db import MIGRATIONS, StorageError, schema_version
from app.queue import queue_stats
from app.storage import database

blueprint = Blueprint("observability", __name__)


class QueueCollector:
    """Queue depth and age, read from the database at scrape time (true across processes)."""

    def __init__(self, get_db):
        self.get_db = get_db

    def collect(self):
        depth = GaugeMetricFamily(
            "nudge_queue_depth", "Deliveries waiting to be sent (queued or being sent)"
        )
        age = GaugeMetricFamily(
            "nudge_queue_oldest_age_seconds", "Age of the oldest delivery waiting to be sent"
        )
        try:
            stats = queue_stats(self.get_db(), time.time())
        except (sqlite3.Error, StorageError):
            return
        depth.add_metric([], stats.depth)
        age.add_metric([], stats.oldest_age)
        yield depth
        yield age


@blueprint.get("/metrics")
def metrics() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    queue = CollectorRegistry(auto_describe=False)
    queue.register(QueueCollector(database))
    body = generate_latest(registry) + generate_latest(queue)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


@blueprint.get("/-/healthy")
def healthy() -> Response:
    return Response("Nudge is Healthy.\n", mimetype="text/plain")


@blueprint.get("/-/ready")
def ready() -> Response:
    try:
        version = schema_version(database())
    except (sqlite3.Error, StorageError) as exc:
        current_app.logger.warning("not ready: database unreachable: %s", exc)
        return Response("Service Unavailable: database unreachable\n", 503, mimetype="text/plain")
    if version != len(MIGRATIONS):
        return Response(
            f"Service Unavailable: database schema {version}, expected {len(MIGRATIONS)}\n",
            503,
            mimetype="text/plain",
        )
    return Response("Nudge is Ready.\n", mimetype="text/plain")
