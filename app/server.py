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

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger

from app import RECEIVER_THREADS
from app.config import Config
from app.log_escaping import escape_handlers
from app.store import store_for

log = logging.getLogger("nudge.server")

STOP_TIMEOUT = 60
PR_SET_PDEATHSIG = 1


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("NUDGE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    escape_handlers(logging.getLogger())


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


class Child:
    def __init__(self, name: str, args: list[str], niceness: int = 0):
        self.name, self.args, self.niceness = name, args, niceness
        self.process: subprocess.Popen | None = None

    def _prepare(self) -> None:
        _die_with_parent()
        if self.niceness:
            try:
                os.nice(self.niceness)
            except OSError:
                pass

    def start(self) -> None:
        self.process = subprocess.Popen(self.args, preexec_fn=self._prepare)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float) -> int | None:
        if not self.running():
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %ss; killing it", self.name, timeout)
            self.process.kill()
            return self.process.wait()


def serve(config: Config, config_path: str | None, bind: str, workers: int) -> int:
    configure_logging()
    store = store_for(config)
    store.migrate()
    config.resolved_secret_key()
    prepare_metrics_dir(config)

    base = [sys.executable, "-m", "app.cli"] + (["--config", config_path] if config_path else [])
    receiver = Child("receiver", base + ["receiver", "--bind", bind, "--workers", str(workers)])
    worker = Child("delivery worker", base + ["worker", "--parent-pid", str(os.getpid())],
                   niceness=WORKER_NICENESS)
    stopping = threading.Event()

    def request_stop(signum, _frame):
        log.info("received %s: stopping", signal.Signals(signum).name)
        stopping.set()

    def reload_templates(_signum, _frame):
        # The worker renders the emails; it reloads templates and rules on SIGHUP.
        if worker.running():
            worker.process.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, reload_templates)
    receiver.start()
    worker.start()
    log.info("Nudge serving on http://%s (%d receiver workers + delivery worker), database %s",
             bind, workers, store.description)

    exit_code = 0
    restart_delay = 1.0
    while not stopping.wait(0.2):
        if not receiver.running():
            log.error("receiver exited with code %s; stopping", receiver.process.returncode)
            exit_code = 1
            break
        if not worker.running():
            log.error("delivery worker exited with code %s; restarting in %.0fs",
                      worker.process.returncode, restart_delay)
            if stopping.wait(restart_delay):
                break
            restart_delay = min(restart_delay * 2, 30.0)
            worker.start()

    receiver.terminate(STOP_TIMEOUT)
    worker.terminate(STOP_TIMEOUT)
    log.info("Nudge stopped")
    return exit_code


class EscapingGunicornLogger(GunicornLogger):
    """gunicorn's own log lines quote request lines and headers: escaped like ours."""

    def setup(self, cfg):
        super().setup(cfg)
        escape_handlers(self.error_log)
        escape_handlers(self.access_log)


class NudgeGunicorn(BaseApplication):
    def __init__(self, config: Config, bind: str, workers: int):
        self.nudge_config = config
        self.options = {
            "bind": bind,
            "workers": workers,
            # Threads, not sync workers: a request waiting for SQLite's write lock or its
            # fsync leaves the process free for the next one, and Alertmanager's keep-alive
            # connections stay open (a sync worker closes each after one request and waits
            # for the client's FIN). benchmarks/ measures both against the same settings.
            "worker_class": "gthread",
            "threads": RECEIVER_THREADS,
            "keepalive": 30,
            "timeout": 30,
            "graceful_timeout": 20,
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "nudge-receiver",
            "control_socket_disable": True,
            "child_exit": _child_exit,
            "logger_class": EscapingGunicornLogger,
            "pre_request": _recycle_connections,
        }
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self):
        from app import create_app

        configure_logging()
        return create_app(self.nudge_config, prepare_database=False)


# gthread keeps a kept-alive connection in the worker that accepted it. Alertmanager holds a
# few long-lived connections, and they often all land in one worker, which then uses one
# core while the others idle. Closing a connection after this many requests makes the client
# reconnect, and the new connection goes to whichever worker accepts first: the least busy.
REQUESTS_PER_CONNECTION = 100


def _recycle_connections(_worker, request) -> None:
    if request.req_number % REQUESTS_PER_CONNECTION == 0:
        request.must_close = True


def _child_exit(_server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def run_receiver(config: Config, bind: str, workers: int) -> None:
    configure_logging()
    NudgeGunicorn(config, bind, workers).run()
