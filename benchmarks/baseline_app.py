"""The ingest baseline: a bare Flask endpoint that only parses the JSON, under Nudge's gunicorn.

    python -m benchmarks.baseline_app --bind 127.0.0.1:8081 --workers 2

It subclasses app.server.NudgeGunicorn and swaps only the WSGI app, so every gunicorn
setting (worker class, worker count, threads, keep-alive, ...) is the one `nudge serve` uses.
"""

from __future__ import annotations

import argparse
import json
import sys

from flask import Flask, jsonify, request

from app.config import load_config
from app.server import NudgeGunicorn


def create_baseline_app() -> Flask:
    app = Flask(__name__)

    @app.post("/webhook")
    def receive():
        data = json.loads(request.get_data(cache=False))
        return jsonify(status="ok", alerts=len(data["alerts"]))

    @app.get("/-/ready")
    def ready():
        return "ready\n"

    return app


class BaselineGunicorn(NudgeGunicorn):
    def load(self):
        return create_baseline_app()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baseline_app")
    parser.add_argument("--bind", required=True)
    parser.add_argument("--workers", type=int, required=True)
    args = parser.parse_args(argv)
    config = load_config(data={"webhook": {"allow_unauthenticated": True}}, environ={})
    BaselineGunicorn(config, args.bind, args.workers).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
