"""Simulated traffic that keeps each seeded user's story true while the demo runs.

Every tick, each profiled user makes its calls through `UserDirectory.call`, the same
function the HTTP endpoints use. u1 has no profile: it never calls the API.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from demo_api.directory import MESSAGES_ENDPOINT, UnknownUser, UserDirectory

log = logging.getLogger(__name__)

OK = (MESSAGES_ENDPOINT, False)
FAIL = (MESSAGES_ENDPOINT, True)
DEPRECATED = ("/v1/send", False)


@dataclass(frozen=True)
class TrafficProfile:
    """The calls one user makes per tick, as (endpoint, server_error) pairs.

    The simulator never takes a user's quota ratio to `quota_ceiling`: when the next call
    would, it first rewinds quota_used to what it was when the simulator first saw the
    user (a demo-sized "new billing period"). A user already at or above the ceiling, for
    instance because an admin set its quota, is left alone.
    """

    user_id: str
    calls: tuple[tuple[str, bool], ...]
    quota_ceiling: float = 0.5


DEFAULT_PROFILES: tuple[TrafficProfile, ...] = (
    TrafficProfile("u2", (OK,) * 3, quota_ceiling=0.97),
    TrafficProfile("u3", (OK, OK, FAIL, OK, OK, FAIL, OK, OK, FAIL, OK)),  # 30 % 500s
    TrafficProfile("u4", (DEPRECATED, DEPRECATED, OK, OK)),
    TrafficProfile("u5", (OK,)),
    TrafficProfile("u6", (OK,) * 2),
    TrafficProfile("u7", (OK,) * 5),
)


class TrafficSimulator:
    """Runs `tick()` every `interval` seconds on a daemon thread between start() and stop()."""

    def __init__(
        self,
        directory: UserDirectory,
        *,
        interval: float = 1.0,
        profiles: tuple[TrafficProfile, ...] = DEFAULT_PROFILES,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.directory = directory
        self.interval = interval
        self.profiles = profiles
        self._baselines: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start ticking in the background; does nothing if already running."""
        with self._lock:
            if self.running:
                return
            self._stopping = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stopping,), name="demo-api-traffic", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop ticking and wait (up to `timeout` s) for the thread to finish."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def tick(self) -> None:
        """Make one round of calls for every profiled user that exists."""
        for profile in self.profiles:
            try:
                self._tick_user(profile)
            except UnknownUser:
                continue

    def _tick_user(self, profile: TrafficProfile) -> None:
        used, limit = self.directory.quota(profile.user_id)
        baseline = self._baselines.setdefault(profile.user_id, used)
        for endpoint, server_error in profile.calls:
            used, limit = self.directory.quota(profile.user_id)
            if (used + 1) / limit >= profile.quota_ceiling:
                if used / limit >= profile.quota_ceiling or (baseline + 1) / limit >= (
                    profile.quota_ceiling
                ):
                    return
                self.directory.set_quota(profile.user_id, used=baseline)
            self.directory.call(profile.user_id, endpoint, server_error=server_error)

    def _run(self, stopping: threading.Event) -> None:
        while not stopping.wait(self.interval):
            try:
                self.tick()
            except Exception:  # keep the demo running; the next tick may well succeed
                log.exception("simulated traffic tick failed")
