"""A small instrumented API product for demonstrating and testing Nudge.

It exports per-user product metrics for Prometheus on /metrics and serves the user
directory Nudge reads on /users/<id>. Run it with `python -m demo_api`.
"""

from demo_api.app import create_app

__all__ = ["create_app"]
