"""`nudge serve`: the receiver (gunicorn) and the delivery worker, as one service.

`serve` is a small supervisor with two children: `nudge receiver` (gunicorn: it reaps every
child of its own with waitpid(-1), so the worker cannot be its child) and `nudge worker`.
Before starting them it migrates the database, creates the secret key and empties the
metrics folder, so no two processes race on any of those. SIGTERM or SIGINT stops the
receiver gracefully, then the worker, which finishes its in-flight messages. A worker that
dies is restarted; a receiver that dies stops the service with an error, for the process
manager to restart. If the supervisor itself is killed, the kernel signals both children.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import logging
import logging.handlers
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger

from app import RECEIVER_THREADS, worker_health
from app.config import Config
from app.log_escaping import escape_handlers
from app.readiness import ReadySignal, start_child
from app.signal_actions import on_signals
from app.store import store_for

log = logging.getLogger("nudge.server")

PR_SET_PDEATHSIG = 1


def configure_logging(background: bool = False) -> Callable[[], None]:
    """Log lines to stderr. `background`: written by a thread of their own, so that many
    threads logging at once (the delivery worker's senders) never queue on the stream's lock
    while one of them writes. Returns what writes the lines still queued and goes back to
    writing in the caller's thread: call it before anything else is written to stderr at the
    end (a supervisor reports the last line a process wrote as the reason it exited)."""
    logging.basicConfig(
        level=os.environ.get("NUDGE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    root = logging.getLogger()
    escape_handlers(root)
    # Nothing Nudge logs names its source file, thread or multiprocessing process: not
    # looking them up for every record is the logging module's own advice for speed.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False
    if background:
        writers = list(root.handlers)
        for handler in writers:
            root.removeHandler(handler)
        lines = _BatchWriter(writers)
        enqueue = _Enqueue(lines.records)
        root.addHandler(enqueue)
        lines.start()

        def write_in_foreground() -> None:
            if enqueue not in root.handlers:
                return
            root.removeHandler(enqueue)
            for handler in writers:
                root.addHandler(handler)
            lines.stop()  # writes what is still queued

        atexit.register(write_in_foreground)
        return write_in_foreground
    return lambda: None


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records over as they are: the writer thread formats them like any handler
    (tracebacks stay multi-line; the escaping filter stays on the writing handler)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


# How long the writer lets lines gather before writing them together: what a process killed
# with SIGKILL can lose of its last lines.
LOG_GATHER = 0.05


class _BatchWriter(threading.Thread):
    """Writes queued records with `handlers`, the lines of a moment in one write: a line per
    email from many sending threads would otherwise cost a wake-up of this thread and a
    system call each. While lines keep coming it writes once per LOG_GATHER, one wake-up
    each; after a period that brought none, it sleeps until the next line."""

    def __init__(self, handlers: list[logging.Handler]):
        super().__init__(name="log-writer", daemon=True)
        self.records: queue.SimpleQueue = queue.SimpleQueue()
        self.handlers = handlers
        self._stopping = False

    def run(self) -> None:
        while True:
            first = self.records.get()
            if first is None:
                return
            batch = [first]
            while True:
                if not self._stopping:
                    time.sleep(LOG_GATHER)
                stop = self._drain(batch)
                if batch:
                    self._write(batch)
                if stop:
                    return
                if not batch:
                    break  # a quiet period: sleep until the next line
                batch = []

    def stop(self) -> None:
        self._stopping = True
        self.records.put(None)
        self.join()

    def _drain(self, batch: list) -> bool:
        while True:
            try:
                record = self.records.get_nowait()
            except queue.Empty:
                return False
            if record is None:
                return True
            batch.append(record)

    def _write(self, batch: list[logging.LogRecord]) -> None:
        for handler in self.handlers:
            records = [r for r in batch if r.levelno >= handler.level]
            if not records:
                continue
            if type(handler) is not logging.StreamHandler:
                for record in records:
                    handler.handle(record)
                continue
            text = []
            for record in records:
                if not handler.filter(record):
                    continue
                try:
                    text.append(handler.format(record) + handler.terminator)
                except Exception:  # noqa: BLE001 - as StreamHandler.emit: report, go on
                    handler.handleError(record)
            if text:
                with handler.lock:
                    try:
                        handler.stream.write("".join(text))
                        handler.flush()
                    except Exception:  # noqa: BLE001 - as StreamHandler.emit
                        handler.handleError(batch[0])


def prepare_metrics_dir(config: Config) -> Path:
    """Multiprocess metrics need a folder shared by all processes, emptied at each start."""
    path = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or config.metrics_dir).resolve()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the supervisor dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the worker also watches its parent pid
        pass


# The delivery worker (decider and senders) runs at a lower CPU priority than the receiver:
# when cores are short, accepting notifications before Alertmanager's deadline matters more
# than deciding and sending them a moment sooner; the worker catches up once the burst ends.
WORKER_NICENESS = 10


class OutputRelay(threading.Thread):
    """Copies a child's stderr to ours, line by line, remembering the last line: when the
    child crashes, that is its exception, the reason /-/ready reports."""

    def __init__(self, stream):
        super().__init__(name="output-relay", daemon=True)
        self.stream = stream
        self.last_line: str | None = None

    def run(self) -> None:
        out = sys.stderr.buffer
        for line in iter(self.stream.readline, b""):
            try:
                out.write(line)
                out.flush()
            except (OSError, ValueError):  # our stderr is gone: keep draining the pipe
                pass
            text = line.decode("utf-8", "replace").strip()
            if text:
                self.last_line = text
        self.stream.close()


class Child:
    def __init__(self, name: str, args: list[str], niceness: int = 0,
                 relay_output: bool = False, says_ready: bool = False):
        self.name, self.args, self.niceness = name, args, niceness
        self.relay_output = relay_output
        self.says_ready = says_ready  # tells when it has started (app/readiness.py)
        self.process: subprocess.Popen | None = None
        self.relay: OutputRelay | None = None
        self.ready: ReadySignal | None = None

    def _prepare(self) -> None:
        _die_with_parent()
        if self.niceness:
            try:
                os.nice(self.niceness)
            except OSError:
                pass
            # Linux's idle policy: the child runs when no normal process wants the core, and
            # a receiver that wakes up (its fsync done, the next POST in) gets it at once.
            # Nice alone still let the worker take a third of the receivers' time in a burst.
            try:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            except (OSError, AttributeError):  # not Linux: nice is what there is
                pass

    def start(self) -> None:
        stderr = subprocess.PIPE if self.relay_output else None
        if self.says_ready:
            self.process, self.ready = start_child(self.args, self.ready,
                                                   preexec_fn=self._prepare, stderr=stderr)
        else:
            self.process = subprocess.Popen(self.args, preexec_fn=self._prepare, stderr=stderr)
        if self.relay_output:
            self.relay = OutputRelay(self.process.stderr)
            self.relay.start()

    def last_line(self) -> str | None:
        """The last line the child wrote to stderr (once it has exited: all of its output)."""
        if self.relay is None:
            return None
        self.relay.join(2.0)
        return self.relay.last_line

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_stop(self) -> None:
        if self.running():
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> int | None:
        """Wait until `deadline` (time.monotonic()) for the child to exit, then kill it."""
        if self.process is None:
            return None
        try:
            return self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("%s did not stop in time; killing it", self.name)
            self.process.kill()
            return self.process.wait()


# --- how long stopping takes ---------------------------------------------------------------
#
# On SIGTERM the supervisor stops the listeners and the delivery worker at once. The listeners
# finish the requests they are answering (gunicorn's graceful timeout). The worker finishes
# the messages it is sending: one per sender thread, in parallel, each at worst a directory
# lookup that uses its whole budget plus every SMTP command of the conversation timing out
# once. The worker's sender processes (app/sender_processes.py) get SIGTERM from it at once
# and drain in parallel, with the same worst case, so they add no time. Only after that is
# anything killed. A container's stop grace period
# (docker-compose `stop_grace_period`, `docker stop -t`) must be longer than
# `shutdown_seconds`, or the container runtime SIGKILLs sends in flight:
# tests/test_shutdown.py compares the shipped ones with deploy/nudge.yml.
RECEIVER_GRACEFUL_TIMEOUT = 20
# What the outbox (no SMTP URL) needs to write one .eml file, generously.
OUTBOX_WRITE_SECONDS = 5.0
# Between a process finishing and the supervisor noticing, reaping and exiting.
SUPERVISOR_MARGIN = 5.0


def worker_drain_seconds(config: Config) -> float:
    """The longest the delivery worker may need to finish the sends in flight when told to
    stop (see above); the supervisor waits this long before killing it."""
    if config.smtp_url:
        from app.transports import commands_per_send, parse_smtp_url

        settings = parse_smtp_url(config.smtp_url)
        # The replies one send on a new connection waits for (the lease check counts the
        # same), and the QUIT that closes the connection once the worker has drained.
        send = (commands_per_send(settings) + 1) * settings.timeout
    else:
        send = OUTBOX_WRITE_SECONDS
    return config.directory_timeout + send + SUPERVISOR_MARGIN


def shutdown_seconds(config: Config) -> float:
    """The longest `nudge serve` takes to stop after SIGTERM without killing anything."""
    return max(RECEIVER_GRACEFUL_TIMEOUT, worker_drain_seconds(config)) + SUPERVISOR_MARGIN


def serve(config: Config, config_path: str | None, bind: str, workers: int) -> int:
    configure_logging()
    from app.config_warnings import config_warnings

    for warning in config_warnings(config):  # once, here: not again in each child process
        log.warning("%s", warning)
    store = store_for(config)
    store.migrate()
    config.resolved_secret_key()
    metrics_dir = prepare_metrics_dir(config)
    health_path = metrics_dir / worker_health.HEALTH_FILE_NAME
    health = worker_health.WorkerHealth(running=False)
    worker_health.write(health_path, health)
    os.environ[worker_health.HEALTH_FILE_ENV] = str(health_path)  # the receivers read it

    base = [sys.executable, "-m", "app.cli"] + (["--config", config_path] if config_path else [])
    receiver = Child("receiver", base + ["receiver", "--bind", bind, "--workers", str(workers)])
    # The recipient-facing pages on a listener of their own, in processes of their own: slow
    # or stalled clients from the internet cannot take the threads /webhook needs.
    public = config.public_bind and Child(
        "public listener",
        base + ["receiver", "--public", "--bind", config.public_bind, "--workers", str(workers)])
    worker = Child("delivery worker", base + ["worker", "--parent-pid", str(os.getpid())],
                   niceness=WORKER_NICENESS, relay_output=True, says_ready=True)
    listeners = [child for child in (receiver, public) if child]
    stopping = threading.Event()

    def request_stop(sig: signal.Signals) -> None:
        log.info("received %s: stopping", sig.name)
        stopping.set()

    def reload_templates(_sig: signal.Signals) -> None:
        # The worker renders the emails; it reloads templates and rules on SIGHUP.
        if worker.running():
            worker.process.send_signal(signal.SIGHUP)

    def start_worker() -> None:
        nonlocal health
        worker.start()
        health = health.started(worker.process.pid, time.time())
        worker_health.write(health_path, health)

    on_signals({signal.SIGTERM: request_stop, signal.SIGINT: request_stop,
                signal.SIGHUP: reload_templates})
    start_worker()
    for listener in listeners:
        listener.start()
    log.info("Nudge serving on http://%s (%d receiver workers + delivery worker), database %s",
             bind, workers, store.description)
    if public:
        log.info("recipient-facing pages (unsubscribe) on http://%s", config.public_bind)

    exit_code = 0
    restart_delay = 1.0
    while not stopping.wait(0.2):
        if not health.ready and worker.ready is not None and worker.ready.poll():
            health = health.became_ready()
            worker_health.write(health_path, health)
        stopped = [listener for listener in listeners if not listener.running()]
        if stopped:
            log.error("%s exited with code %s; stopping", stopped[0].name,
                      stopped[0].process.returncode)
            exit_code = 1
            break
        if not worker.running():
            code = worker.process.returncode
            health = health.exited(code, worker.last_line(), time.time())
            worker_health.write(health_path, health)
            _forget_metrics_of(worker.process.pid)
            log.error("delivery worker exited with code %s; restarting in %.0fs",
                      code, restart_delay)
            if stopping.wait(restart_delay):
                break
            restart_delay = min(restart_delay * 2, 30.0)
            start_worker()

    # Everything stops at once; each gets the time it may need (see shutdown_seconds).
    started = time.monotonic()
    for child in (*listeners, worker):
        child.signal_stop()
    for listener in listeners:
        listener.wait_stopped(started + RECEIVER_GRACEFUL_TIMEOUT + SUPERVISOR_MARGIN)
    worker.wait_stopped(started + worker_drain_seconds(config))
    log.info("Nudge stopped")
    return exit_code


def _forget_metrics_of(pid: int) -> None:
    """A dead process's live gauges must not count any more (its counters must: they add up)."""
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid)
    except OSError as exc:
        log.warning("could not remove the metrics files of process %d: %s", pid, exc)


class EscapingGunicornLogger(GunicornLogger):
    """gunicorn's own log lines quote request lines and headers: escaped like ours."""

    def setup(self, cfg):
        super().setup(cfg)
        escape_handlers(self.error_log)
        escape_handlers(self.access_log)


class NudgeGunicorn(BaseApplication):
    def __init__(self, config: Config, bind: str, workers: int, public: bool = False):
        self.nudge_config = config
        self.public = public
        self.options = {
            "bind": bind,
            "workers": workers,
            # Threads, not sync workers: a request waiting for SQLite's write lock or its
            # fsync leaves the process free for the next one, and Alertmanager's keep-alive
            # connections stay open (a sync worker closes each after one request and waits
            # for the client's FIN). benchmarks/ measures both against the same settings.
            # gthread, serving a busy keep-alive connection without the hand-offs between its
            # threads (app/receiver_worker.py).
            "worker_class": "app.receiver_worker.LingeringThreadWorker",
            "threads": RECEIVER_THREADS,
            "keepalive": 30,
            "timeout": 30,
            "graceful_timeout": RECEIVER_GRACEFUL_TIMEOUT,
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "nudge-public" if public else "nudge-receiver",
            "control_socket_disable": True,
            "child_exit": _child_exit,
            "logger_class": EscapingGunicornLogger,
            "pre_request": _recycle_connections,
            "post_worker_init": freeze_heap,
        }
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self):
        from app import create_app

        configure_logging()
        return create_app(self.nudge_config, prepare_database=False, public=self.public)


# gthread keeps a kept-alive connection in the worker that accepted it. Alertmanager holds a
# few long-lived connections, and they often all land in one worker, which then uses one
# core while the others idle. Closing a connection after this many requests makes the client
# reconnect, and the new connection goes to whichever worker accepts first: the least busy.
REQUESTS_PER_CONNECTION = 100


def _recycle_connections(_worker, request) -> None:
    if request.req_number % REQUESTS_PER_CONNECTION == 0:
        request.must_close = True


def freeze_heap(_worker=None) -> None:
    """Leave what start-up built (the app, its modules) out of the garbage collector's passes.

    Parsing a 1,000-alert body builds thousands of dicts that live until it ends, so they
    reach the oldest generation and set off full collections, each walking every object of
    the process: most of them the app's own, which never become garbage."""
    gc.freeze()


def _child_exit(_server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def run_receiver(config: Config, bind: str, workers: int, public: bool = False) -> None:
    configure_logging()
    NudgeGunicorn(config, bind, workers, public).run()
