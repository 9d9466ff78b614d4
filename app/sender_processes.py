"""Sender processes: the send path on every core, not in one Python process.

Rendering, building MIME messages, TLS and the SMTP conversations are Python work under one
process's GIL, so one process sends only as fast as one core runs it. `nudge worker` sends
from `delivery.processes` processes (default: one per core). With one, it sends itself; with
more, it starts that many sender processes (`nudge worker --sender-connections K`), each a
dispatcher, its sender threads and a lease keeper, and itself only decides and prunes: a
burst is then decided by a process of its own, not between sends under the same GIL. They
share the queue the way replicas do, through the store's claims and leases, so nothing is
sent twice and a process that dies leaves its claims to the others once their lease runs out.

`smtp.connections` is the total across the sending processes, split as evenly as possible
(never a process without a connection: there are at most as many as connections).
`smtp.rate_limit` is the total too: on PostgreSQL every process takes its turn from the rate
the database shares (as replicas do); on SQLite each process keeps its share of it, in
proportion to its connections. Each process pauses on a broken setup by itself
(app/circuit.py), as each replica does.

The main worker supervises its sender processes: one that dies is restarted (one error line,
then a growing delay), SIGHUP is passed on (templates and rules reload), and stopping sends
them SIGTERM and waits while they finish their in-flight sends, in parallel with its own.
They stop by themselves when the main worker is gone (the kernel signals them; they also
watch their parent's pid).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from app.config import Config
from app.readiness import ReadySignal, start_child

log = logging.getLogger("nudge.senders")

# A restarted sender process that runs this long counts as healthy: the next exit waits the
# shortest delay again. One that dies at start-up every time waits longer each time.
STABLE_AFTER = 10.0
FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
POLL_INTERVAL = 0.2
# How long the main worker waits, at start, for its sender processes to say they have started
# (app/readiness.py) before it says so itself anyway, with a warning: one that never starts is
# restarted and reported like any that exits.
READY_TIMEOUT = 60.0


def available_cores() -> int:
    """The CPU cores this process may run on (taskset's or a container's --cpuset-cpus), or
    fewer when its cgroup's CPU quota (a container's --cpus, Kubernetes' CPU limit) allows
    less than that many cores' time, rounded up."""
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return cores_within(cores, cgroup_cpu_limit())


def cores_within(cores: int, limit: float | None) -> int:
    """`cores`, or as many as a CPU limit of `limit` cores' time keeps busy (1.5: 2)."""
    return cores if limit is None else max(1, min(cores, math.ceil(limit)))


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, membership: str | None = None) -> float | None:
    """How many cores' time this process's cgroup may use (its quota over its period), or
    None without a limit. `membership`: /proc/self/cgroup's text.

    cgroup v2 (`0::/path`): `cpu.max` ("max 100000", or "150000 100000" for 1.5 cores) of the
    process's cgroup and each parent up to the root, the lowest limit applying; cgroup v1:
    `cpu.cfs_quota_us` / `cpu.cfs_period_us` of the `cpu` controller's cgroup (-1: none).
    Inside a container the process's own cgroup is usually the root of what it sees."""
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    limits = []
    for line in membership.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            limits += _v2_limits(root, path)
        elif "cpu" in controllers.split(","):
            limits += _v1_limits(root / controllers, path)
    return min(limits) if limits else None


def _v2_limits(root: Path, path: str) -> list[float]:
    limits = []
    folder = root.joinpath(*[part for part in path.split("/") if part])
    while True:
        text = _read(folder / "cpu.max")
        if text is not None:
            quota, _, period = text.partition(" ")
            limit = _ratio(quota, period)
            if limit is not None:
                limits.append(limit)
        if folder == root or root not in folder.parents:
            return limits
        folder = folder.parent


def _v1_limits(controller: Path, path: str) -> list[float]:
    for folder in (controller.joinpath(*[p for p in path.split("/") if p]), controller):
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            limit = _ratio(quota, period)
            return [] if limit is None else [limit]
    return []


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max": no limit
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def process_count(config: Config, cores: int | None = None) -> int:
    """How many processes send: `delivery.processes` (None: one per core), at most one per
    SMTP connection, so that none is left without a connection."""
    wanted = config.delivery_processes or cores or available_cores()
    return max(1, min(wanted, config.smtp_connections))


def split_connections(total: int, processes: int) -> list[int]:
    """`total` connections over `processes` processes as evenly as possible, larger shares
    first; no process gets none."""
    processes = max(1, min(processes, total))
    share, extra = divmod(total, processes)
    return [share + (1 if n < extra else 0) for n in range(processes)]


def process_config(config: Config, connections: int) -> Config:
    """The config one process sends with: its connections and, on SQLite, its part of the
    rate limit (PostgreSQL shares the whole rate through the database: app/store)."""
    rate = config.smtp_rate_limit
    if rate and not config.uses_postgres:
        rate = rate * connections / config.smtp_connections
    return dataclasses.replace(config, smtp_connections=connections, smtp_rate_limit=rate)


def describe(config: Config, shares: list[int]) -> str:
    """The start-up line: how many processes send, and with how many connections each."""
    if len(shares) == 1:
        text = f"sending from this process with {shares[0]} SMTP connection(s)"
    else:
        each = ", ".join(str(k) for k in shares)
        text = (f"sending from {len(shares)} sender process(es) with {each} SMTP connection(s) "
                f"({sum(shares)} in total); this one decides")
    wanted = config.delivery_processes
    if wanted and wanted > len(shares):
        text += f"; delivery.processes {wanted} is more than smtp.connections allows"
    if config.smtp_rate_limit:
        if config.uses_postgres:
            text += f"; rate limit {config.smtp_rate_limit:g}/s shared through the database"
        elif len(shares) > 1:
            parts = ", ".join(f"{process_config(config, k).smtp_rate_limit:g}" for k in shares)
            text += f"; rate limit {config.smtp_rate_limit:g}/s split {parts}"
    return text


def sender_command(config_path: str | None, parent_pid: int, connections: int) -> list[str]:
    """`nudge worker` as a sender process, reading the same config file (and, inheriting
    our environment, the same NUDGE_* variables and secrets files)."""
    base = [sys.executable, "-m", "app.cli"] + (["--config", config_path] if config_path else [])
    return base + ["worker", "--parent-pid", str(parent_pid),
                   "--sender-connections", str(connections)]


class SenderProcess:
    """One sender process and its restarts.

    Started without `preexec_fn` (unlike `nudge serve`'s children): the worker runs threads,
    and Python code between fork and exec can deadlock on a lock one of them held. The
    sender process asks for the parent-death signal itself (stop_with_parent)."""

    def __init__(self, number: int, args: list[str]):
        self.number = number
        self.args = args
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restart_delay = FIRST_RESTART_DELAY
        self.restart_at: float | None = None  # when it exited: when to start it again
        self.ready: ReadySignal | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        self.process, self.ready = start_child(self.args, self.ready)
        self.started_at = time.monotonic()
        self.restart_at = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send_signal(self, signum: int) -> None:
        if self.running():
            self.process.send_signal(signum)

    def wait_stopped(self, deadline: float) -> int | None:
        """Wait until `deadline` (time.monotonic()) for it to exit, then kill it."""
        if self.process is None:
            return None
        try:
            return self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("sender process %d (pid %d) did not stop in time; killing it",
                      self.number, self.pid)
            self.process.kill()
            return self.process.wait()


class SenderProcesses:
    """The main worker's sender processes: started, restarted, signalled and stopped by one
    thread, which lives until they have all stopped. (The kernel's parent-death signal goes
    to a child when the thread that started it ends: this thread ends last.)"""

    def __init__(self, config: Config, config_path: str | None, shares: list[int]):
        self.config = config
        parent = os.getpid()
        self.processes = [SenderProcess(n, sender_command(config_path, parent, connections))
                          for n, connections in enumerate(shares, start=1)]
        self._thread: threading.Thread | None = None
        self._signals: list[signal.Signals] = []
        self._lock = threading.Lock()
        self.started = threading.Event()  # each started once and ready (or gone, or late)

    def start(self, stopping: threading.Event) -> None:
        """Run them until `stopping` is set; then stop them (see join)."""
        self._thread = threading.Thread(target=self._run, args=(stopping,),
                                        name="sender-processes", daemon=True)
        self._thread.start()

    def forward(self, signum: int) -> None:
        """Pass a signal (SIGHUP) on to every sender process."""
        with self._lock:
            self._signals.append(signal.Signals(signum))

    def join(self) -> None:
        """Wait until every sender process has finished its in-flight sends and exited."""
        if self._thread is not None:
            self._thread.join()

    def _run(self, stopping: threading.Event) -> None:
        for process in self.processes:
            self._start(process)
        self._wait_ready(stopping)
        while not stopping.wait(POLL_INTERVAL):
            self._pass_signals()
            for process in self.processes:
                self._look_after(process)
        self._stop_all()

    def _wait_ready(self, stopping: threading.Event) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            for process in self.processes:
                while process.ready is not None and not stopping.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        log.warning("sender process %d (pid %s) has not started after %.0fs",
                                    process.number, process.pid, READY_TIMEOUT)
                        return
                    if process.ready.wait(min(remaining, POLL_INTERVAL)) is not None:
                        break  # ready, or exited (restarted like any exit, below)
        finally:
            self.started.set()

    def _pass_signals(self) -> None:
        with self._lock:
            signals, self._signals = self._signals, []
        for signum in signals:
            for process in self.processes:
                process.send_signal(signum)

    def _look_after(self, process: SenderProcess) -> None:
        if process.running():
            return
        now = time.monotonic()
        if process.restart_at is None:
            code = process.process.returncode
            if now - process.started_at >= STABLE_AFTER:
                process.restart_delay = FIRST_RESTART_DELAY
            log.error("sender process %d (pid %d) exited with code %s; restarting it in %.0fs "
                      "(its claimed deliveries go back to the queue when their lease runs out)",
                      process.number, process.pid, code, process.restart_delay)
            _forget_metrics_of(process.pid)
            process.restart_at = now + process.restart_delay
            process.restart_delay = min(process.restart_delay * 2, MAX_RESTART_DELAY)
        elif now >= process.restart_at:
            self._start(process)

    def _start(self, process: SenderProcess) -> None:
        try:
            process.start()
        except OSError as exc:  # no memory or processes left: try again later, keep sending
            log.error("cannot start sender process %d: %s; trying again in %.0fs",
                      process.number, exc, process.restart_delay)
            process.restart_at = time.monotonic() + process.restart_delay
            process.restart_delay = min(process.restart_delay * 2, MAX_RESTART_DELAY)

    def _stop_all(self) -> None:
        """SIGTERM: each finishes the sends it has started, as the main worker does meanwhile;
        whoever is not done when `nudge serve` would kill us (worker_drain_seconds) is killed."""
        from app.server import SUPERVISOR_MARGIN, worker_drain_seconds

        deadline = time.monotonic() + worker_drain_seconds(self.config) - SUPERVISOR_MARGIN / 2
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            if process.process is not None and process.restart_at is None:
                code = process.wait_stopped(deadline)
                if code not in (0, None):
                    log.warning("sender process %d (pid %d) stopped with code %s",
                                process.number, process.pid, code)
                _forget_metrics_of(process.pid)


def _forget_metrics_of(pid: int | None) -> None:
    """A dead process's live gauges must not count any more (its counters must: they add
    up), as `nudge serve` does for the worker."""
    if pid is None or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid)
    except OSError as exc:
        log.warning("could not remove the metrics files of process %d: %s", pid, exc)


PR_SET_PDEATHSIG = 1


def stop_with_parent() -> None:
    """In a sender process: get SIGTERM (and so finish the sends in flight) when the main
    worker is gone, even after SIGKILL. watch_parent covers a parent gone before this call,
    and systems without prctl."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def forget_own_metrics() -> None:
    """A sender process that stops on its own (its parent is gone) removes its live gauges:
    no one else knows its pid any more."""
    _forget_metrics_of(os.getpid())
