"""Run the demo API: python -m demo_api [--host H] [--port P] [--no-simulate] [...]."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from werkzeug.serving import make_server

from demo_api.app import create_app


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo_api",
        description="A small instrumented API product for the Nudge demo. "
        "Set DEMO_API_TOKEN to require a token on GET /users/<id>; set DEMO_API_CLIENT_ID and "
        "DEMO_API_CLIENT_SECRET_FILE (or DEMO_API_CLIENT_SECRET) to protect it with OAuth 2.0 "
        "client credentials instead (POST /oauth/token; tokens live DEMO_API_TOKEN_TTL seconds, "
        "default 300).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to bind, 0 for any free one (default 8000)"
    )
    parser.add_argument(
        "--no-simulate", action="store_true", help="start without simulated traffic"
    )
    parser.add_argument(
        "--simulate-interval",
        type=_positive_float,
        default=1.0,
        metavar="S",
        help="seconds between simulated traffic ticks (default 1.0)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then shut down cleanly and return 0."""
    args = parse_args(argv)
    app = create_app(simulate=not args.no_simulate, simulate_interval=args.simulate_interval)
    server = make_server(args.host, args.port, app, threaded=True)
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    serving = threading.Thread(target=server.serve_forever, name="demo-api-http", daemon=True)
    serving.start()
    print(f"demo API listening on http://{args.host}:{server.server_port}", flush=True)
    while not stopping.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    app.extensions["demo"].stop()
    print("demo API stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
