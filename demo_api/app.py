"""The demo API product: product endpoints, user directory, admin endpoints and /metrics."""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify, render_template_string, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from demo_api.directory import (
    UnknownUser,
    UserDirectory,
    UserExists,
    account_from_json,
)
from demo_api.metrics import product_registry
from demo_api.seed import SEED_USERS, seeded_accounts
from demo_api.simulator import TrafficSimulator

TOKEN_ENV = "DEMO_API_TOKEN"
Json = tuple[Response, int]


@dataclass
class DemoAPI:
    """What one demo app owns; found at `app.extensions["demo"]`."""

    directory: UserDirectory
    simulator: TrafficSimulator
    registry: CollectorRegistry
    token: str | None

    def stop(self) -> None:
        """Stop the simulated traffic thread (safe to call more than once)."""
        self.simulator.stop()


def create_app(
    *,
    seed: bool = True,
    simulate: bool = True,
    simulate_interval: float = 1.0,
    token: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Flask:
    """Build the demo API. `token` (or env DEMO_API_TOKEN) protects GET /users/<id>."""
    directory = UserDirectory(clock=clock)
    if seed:
        directory.add_all(seeded_accounts(clock()))
    demo = DemoAPI(
        directory=directory,
        simulator=TrafficSimulator(directory, interval=simulate_interval),
        registry=product_registry(directory),
        token=token if token is not None else (os.environ.get(TOKEN_ENV) or None),
    )
    app = Flask(__name__)
    app.extensions["demo"] = demo
    _register_routes(app, demo)
    if simulate:
        demo.simulator.start()
    return app


def _error(message: str, status: int) -> Json:
    return jsonify({"error": message}), status


def _authorized(token: str | None) -> bool:
    """True when no token is configured, or the request presents it in either header."""
    if token is None:
        return True
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    presented = [request.headers.get("X-API-Key", "")]
    if scheme.lower() == "bearer":
        presented.append(credentials.strip())
    return any(
        candidate and hmac.compare_digest(candidate.encode(), token.encode())
        for candidate in presented
    )


def _json_body() -> dict[str, Any] | None:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else None


def _register_routes(app: Flask, demo: DemoAPI) -> None:
    directory = demo.directory

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(demo.registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/users/<user_id>")
    def user_record(user_id: str) -> Json:
        if not _authorized(demo.token):
            return _error("missing or invalid API token", 401)
        try:
            return jsonify(directory.record(user_id)), 200
        except UnknownUser:
            return _error("unknown user", 404)

    def product_call(endpoint: str, *, server_error: bool = False) -> Json:
        user_id = request.headers.get("X-User-Id", "").strip()
        if not user_id:
            return _error("send the calling user's id in the X-User-Id header", 401)
        try:
            code = directory.call(user_id, endpoint, server_error=server_error)
            used, limit = directory.quota(user_id)
        except UnknownUser:
            return _error("unknown user", 401)
        if code == 429:
            return _error("monthly quota exhausted", 429)
        if code >= 500:
            return _error("internal error (simulated)", code)
        return jsonify({"status": "sent", "quota_used": used, "quota_limit": limit}), code

    @app.post("/v2/messages")
    def send_message() -> Json:
        return product_call("/v2/messages")

    @app.post("/v1/send")
    def send_deprecated() -> Json:
        response, code = product_call("/v1/send")
        response.headers["Deprecation"] = "true"
        response.headers["Link"] = '</v2/messages>; rel="successor-version"'
        return response, code

    @app.post("/v2/fail")
    def fail() -> Json:
        return product_call("/v2/fail", server_error=True)

    @app.get("/admin/users")
    def list_users() -> Json:
        return jsonify({"users": directory.records()}), 200

    @app.post("/admin/users")
    def create_user() -> Json:
        try:
            account = account_from_json(request.get_json(silent=True), directory.clock())
            return jsonify(directory.add(account)), 201
        except UserExists:
            return _error("user already exists", 409)
        except ValueError as exc:
            return _error(str(exc), 400)

    @app.post("/admin/users/<user_id>/payment")
    def set_payment(user_id: str) -> Json:
        body = _json_body()
        if body is None or "status" not in body:
            return _error('send JSON {"status": "ok"|"failed"}', 400)
        try:
            return jsonify(directory.set_payment_status(user_id, body["status"])), 200
        except UnknownUser:
            return _error("unknown user", 404)
        except ValueError as exc:
            return _error(str(exc), 400)

    @app.post("/admin/users/<user_id>/quota")
    def set_quota(user_id: str) -> Json:
        body = _json_body()
        values = {key: (body or {}).get(key) for key in ("used", "limit")}
        if body is None or all(value is None for value in values.values()):
            return _error('send JSON {"used": N} and/or {"limit": N}', 400)
        if any(
            value is not None and (isinstance(value, bool) or not isinstance(value, int))
            for value in values.values()
        ):
            return _error("used and limit must be integers", 400)
        try:
            return jsonify(directory.set_quota(user_id, **values)), 200
        except UnknownUser:
            return _error("unknown user", 404)
        except ValueError as exc:
            return _error(str(exc), 400)

    @app.post("/admin/simulate")
    def simulate() -> Json:
        body = _json_body()
        if body is None or not isinstance(body.get("enabled"), bool):
            return _error('send JSON {"enabled": true|false}', 400)
        if body["enabled"]:
            demo.simulator.start()
        else:
            demo.simulator.stop()
        return jsonify({"enabled": demo.simulator.running}), 200

    @app.get("/")
    def index() -> str:
        stories = {seed.user_id: seed.story for seed in SEED_USERS}
        return render_template_string(
            INDEX_TEMPLATE,
            users=directory.records(),
            stories=stories,
            base=request.host_url.rstrip("/"),
            simulating=demo.simulator.running,
            token_required=demo.token is not None,
        )


INDEX_TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Nudge demo API</title>
<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em .8em;text-align:left}
pre{background:#f4f4f4;padding:1em}</style></head>
<body>
<h1>Nudge demo API</h1>
<p>An instrumented API product: Prometheus scrapes <a href="/metrics">/metrics</a>,
Nudge reads <code>GET /users/&lt;id&gt;</code>{% if token_required %}
(needs <code>Authorization: Bearer $DEMO_API_TOKEN</code>){% endif %}.
Simulated traffic is <strong>{{ "on" if simulating else "off" }}</strong>.</p>
<table>
<tr><th>id</th><th>name</th><th>email</th><th>plan</th><th>quota</th><th>payment</th>
<th>story</th></tr>
{% for u in users %}<tr><td>{{ u.user_id }}</td><td>{{ u.name }}</td><td>{{ u.email }}</td>
<td>{{ u.plan }}</td><td>{{ u.quota_used }} / {{ u.quota_limit }}</td>
<td>{{ u.payment_status }}</td><td>{{ stories.get(u.user_id, "") }}</td></tr>
{% endfor %}</table>
<h2>Make things happen</h2>
<pre>
# a successful call (u1 makes its first API call)
curl -X POST -H 'X-User-Id: u1' {{ base }}/v2/messages
# a failing call (500)
curl -X POST -H 'X-User-Id: u7' {{ base }}/v2/fail
# a call to the deprecated endpoint
curl -i -X POST -H 'X-User-Id: u7' {{ base }}/v1/send
# use up u7's quota: the next calls return 429
curl -X POST -H 'Content-Type: application/json' -d '{"used": 100000}' \\
     {{ base }}/admin/users/u7/quota
# a payment fails / is fixed
curl -X POST -H 'Content-Type: application/json' -d '{"status": "failed"}' \\
     {{ base }}/admin/users/u7/payment
# a new user
curl -X POST -H 'Content-Type: application/json' \\
     -d '{"user_id": "u8", "email": "edsger@example.com", "name": "Edsger Dijkstra"}' \\
     {{ base }}/admin/users
# pause / resume simulated traffic
curl -X POST -H 'Content-Type: application/json' -d '{"enabled": false}' \\
     {{ base }}/admin/simulate
# the directory record Nudge reads
curl {% if token_required -%}
-H "Authorization: Bearer $DEMO_API_TOKEN" {% endif %}{{ base }}/users/u1
</pre>
</body></html>
"""
