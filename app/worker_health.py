"""The delivery worker's health, as the `nudge serve` supervisor sees it.

The supervisor starts the worker, sees it exit and restarts it; the receivers answer /-/ready
and /metrics. The supervisor writes what it saw to a small JSON file (its path in
NUDGE_WORKER_HEALTH_FILE, which the receivers inherit) and the receivers read it, so a worker
that crash-loops (a missing static-map file, a database it cannot reach) makes Nudge "not
ready", with the reason, instead of accepting alerts that nobody will ever send.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from app.log_escaping import escape_controls

HEALTH_FILE_ENV = "NUDGE_WORKER_HEALTH_FILE"
HEALTH_FILE_NAME = "delivery-worker-health.json"
# A restarted worker counts as healthy again once it has run this long without exiting:
# one that crashes at start-up (every time) never gets there.
STABLE_AFTER = 10.0
MAX_REASON = 300


@dataclass(frozen=True)
class WorkerHealth:
    running: bool
    pid: int | None = None
    started_at: float | None = None
    restarts: int = 0  # exits since `nudge serve` started (each followed by a restart)
    last_exit_code: int | None = None
    last_exit_at: float | None = None
    last_error: str | None = None  # the last line the worker wrote before it exited
    ready: bool = False  # this run of the worker said it has started (app/readiness.py)

    def started(self, pid: int, now: float) -> WorkerHealth:
        return replace(self, running=True, pid=pid, started_at=now, ready=False)

    def became_ready(self) -> WorkerHealth:
        return replace(self, ready=True)

    def exited(self, code: int | None, last_line: str | None, now: float) -> WorkerHealth:
        reason = escape_controls(last_line or "")[:MAX_REASON] or None
        return replace(self, running=False, pid=None, restarts=self.restarts + 1,
                       last_exit_code=code, last_exit_at=now, last_error=reason, ready=False)

    def problem(self, now: float) -> str | None:
        """Why the worker is not healthy, in one line, or None when it is."""
        if self.last_exit_at is None and self.running:
            return None if self.ready else "the delivery worker is starting"
        exit_text = f"exited with code {self.last_exit_code}"
        if self.last_error:
            exit_text += f" ({self.last_error})"
        if self.running and not self.ready:
            return (f"the delivery worker is starting again (restart {self.restarts}): last "
                    f"it {exit_text}")
        if not self.running:
            return (f"the delivery worker is not running: it {exit_text}; restarting it "
                    f"(restart {self.restarts})")
        if self.started_at is not None and now - self.started_at < STABLE_AFTER:
            return (f"the delivery worker was restarted {self.restarts} time(s) and has not yet "
                    f"run {STABLE_AFTER:g}s: last it {exit_text}")
        return None

    def healthy(self, now: float) -> bool:
        return self.problem(now) is None


def write(path: Path, health: WorkerHealth) -> None:
    """Replace the file whole: a reader sees the old state or the new one, never half."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(asdict(health)))
    os.replace(temporary, path)


def read(path: Path) -> WorkerHealth | None:
    try:
        return WorkerHealth(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def supervised() -> bool:
    """Whether this process is a child of `nudge serve` (which set HEALTH_FILE_ENV for it)."""
    return bool(os.environ.get(HEALTH_FILE_ENV))


def current() -> tuple[WorkerHealth | None, str | None]:
    """(the worker's health, the problem with it) when running under `nudge serve`;
    (None, None) otherwise (a receiver or worker run on its own has no supervisor)."""
    path = os.environ.get(HEALTH_FILE_ENV)
    if not path:
        return None, None
    health = read(Path(path))
    if health is None:
        return None, "the delivery worker's state is unknown (no health file from nudge serve)"
    return health, health.problem(time.time())
