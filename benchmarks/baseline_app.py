"""The ingest baselines: bare Flask endpoints under Nudge's gunicorn settings.

    python -m benchmarks.baseline_app --bind 127.0.0.1:8081 --workers 2
    python -m benchmarks.baseline_app --bind 127.0.0.1:8081 --workers 2 --durable bodies.log

Without `--durable`, POST /webhook only parses the JSON body: the cost of HTTP, Flask and
`json.loads`, the least any webhook receiver does. With `--durable PATH` it also appends the
body to PATH (O_APPEND, shared by every worker process) and calls os.fdatasync() before
answering: one write and one fdatasync per request, no group commit. That is the physical
limit of an acknowledgement that survives a power cut, which Nudge's journal gives.

It subclasses app.server.NudgeGunicorn and swaps only the WSGI app, so every gunicorn
setting (worker class, worker count, threads, keep-alive, hooks, ...) is the one `nudge
serve` uses.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
from pathlib import Path

from flask import Flask, jsonify, request

from app.config import load_config
from app.server import NudgeGunicorn


class _DurableFile:
    """An append-only file opened once per process (gunicorn forks after loading the app)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            with self._lock:
                if self._fd is None or self._pid != os.getpid():
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                    self._pid = os.getpid()
                    _fsync_directory(self.path.parent)  # the file's name survives too
        return self._fd

    def append(self, body: bytes) -> int:
        fd = self._descriptor()
        record = body + b"\n"
        written = os.write(fd, record)  # O_APPEND: one write lands whole, after all others
        if written != len(record):
            raise OSError(f"short write to {self.path}: {written} of {len(record)} bytes")
        os.fdatasync(fd)
        return next(self._ids)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_baseline_app(durable: Path | None = None) -> Flask:
    app = Flask(__name__)
    journal = _DurableFile(durable) if durable else None

    @app.post("/webhook")
    def receive():
        body = request.get_data(cache=False)
        data = json.loads(body)
        if journal is None:
            return jsonify(status="ok", alerts=len(data["alerts"]))
        return jsonify(status="accepted", notification_id=journal.append(body))

    @app.get("/-/ready")
    def ready():
        return "ready\n"

    return app


class BaselineGunicorn(NudgeGunicorn):
    def __init__(self, config, bind: str, workers: int, durable: Path | None = None):
        self.durable = durable
        super().__init__(config, bind, workers)

    def load(self):
        return create_baseline_app(self.durable)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baseline_app")
    parser.add_argument("--bind", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--durable", type=Path, metavar="PATH",
                        help="append every body to PATH and fdatasync before answering")
    args = parser.parse_args(argv)
    config = load_config(data={"webhook": {"allow_unauthenticated": True}}, environ={})
    durable = args.durable.resolve() if args.durable else None
    BaselineGunicorn(config, args.bind, args.workers, durable).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
