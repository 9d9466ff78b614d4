"""Timestamps as stored: epoch seconds for queue arithmetic, ISO-8601 UTC text for people."""

import time
from datetime import UTC, datetime


def iso(epoch: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
