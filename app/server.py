"""`nudge serve`: the receiver (gunicorn) and the delivery worker, as one service.

The database is migrated and the metrics folder reset here, before gunicorn forks. The
delivery worker runs as a child process, restarted if it dies; SIGTERM to `nudge serve`
stops gunicorn gracefully, then the worker (which finishes its in-flight messages).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from gunicorn.app.base import BaseApplication

from app.config import Config
from app.db import migrate

log = logging.getLogger("nudge.server")

WORKER_STOP_TIMEOUT = 60


def prepare_metrics_dir(config: Config) -> Path:
    """Multiprocess metrics need a folder shared by all processes, emptied at each start."""
    path = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or config.metrics_dir).resolve()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


class DeliverySupervisor:
    """Keeps one `nudge worker` child running until stopped."""

    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self.process: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="delivery-supervisor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _spawn(self) -> subprocess.Popen:
        command = [sys.executable, "-m", "app.cli"]
        if self.config_path:
            command += ["--config", self.config_path]
        command += ["worker", "--parent-pid", str(os.getpid())]
        return subprocess.Popen(command)

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.process = self._spawn()
            code = self.process.wait()
            if self.stopping.is_set():
                return
            log.error("delivery worker exited with code %s; restarting in 1s", code)
            self.stopping.wait(1.0)

    def stop(self) -> None:
        self.stopping.set()
        process = self.process
        if process and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(WORKER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.error("delivery worker did not stop in %ss; killing it", WORKER_STOP_TIMEOUT)
                process.kill()
                process.wait()


class NudgeGunicorn(BaseApplication):
    def __init__(self, config: Config, bind: str, workers: int, on_exit):
        self.nudge_config = config
        self.options = {
            "bind": bind,
            "workers": workers,
            "worker_class": "sync",
            "timeout": 30,
            "graceful_timeout": 30,
            "keepalive": 5,
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "nudge",
            "child_exit": _child_exit,
            "on_exit": lambda _server: on_exit(),
        }
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from app import create_app

        _configure_logging()
        return create_app(self.nudge_config, prepare_database=False)


def _child_exit(_server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def serve(config: Config, config_path: str | None, bind: str, workers: int) -> None:
    _configure_logging()
    migrate(config.database)
    prepare_metrics_dir(config)
    supervisor = DeliverySupervisor(config_path)
    supervisor.start()
    started = time.time()
    log.info("Nudge listening on http://%s (%d workers), database %s", bind, workers,
             config.database)
    try:
        NudgeGunicorn(config, bind, workers, on_exit=supervisor.stop).run()
    finally:
        supervisor.stop()
        log.info("Nudge stopped after %.0fs", time.time() - started)
