"""The demo API product: product endpoints, user directory, admin endpoints and /metrics."""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authlib.oauth2 import OAuth2Error
from flask import Flask, Response, jsonify, render_template_string, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from demo_api.directory import (
    UnknownUser,
    UserDirectory,
    UserExists,
    account_from_json,
)
from demo_api.metrics import product_registry
from demo_api.oauth import DemoOAuth, OAuthSettings, install_oauth
from demo_api.seed import SEED_USERS, seeded_accounts
from demo_api.simulator import TrafficSimulator

TOKEN_ENV = "DEMO_API_TOKEN"
CLIENT_ID_ENV = "DEMO_API_CLIENT_ID"
CLIENT_SECRET_ENV = "DEMO_API_CLIENT_SECRET"
CLIENT_SECRET_FILE_ENV = "DEMO_API_CLIENT_SECRET_FILE"
TOKEN_TTL_ENV = "DEMO_API_TOKEN_TTL"
# How long API clients may cache a user record (Cache-Control: private, max-age=...).
RECORD_MAX_AGE = 30
Json = tuple[Response, int]


def oauth_settings_from_env(environ: dict[str, str] | os._Environ) -> OAuthSettings | None:
    """OAuth 2.0 for GET /users/<id> from DEMO_API_CLIENT_ID and DEMO_API_CLIENT_SECRET(_FILE)."""
    client_id = environ.get(CLIENT_ID_ENV, "").strip()
    if not client_id:
        return None
    secret_file = environ.get(CLIENT_SECRET_FILE_ENV, "").strip()
    return OAuthSettings(
        client_id=client_id,
        client_secret=None if secret_file else environ.get(CLIENT_SECRET_ENV, "").strip(),
        client_secret_file=Path(secret_file) if secret_file else None,
        token_ttl=int(environ.get(TOKEN_TTL_ENV, "").strip() or 300),
    )


@dataclass
class DemoAPI:
    """What one demo app owns; found at `app.extensions["demo"]`."""

    directory: UserDirectory
    simulator: TrafficSimulator
    registry: CollectorRegistry
    token: str | None
    oauth: DemoOAuth | None = None

    def stop(self) -> None:
        """Stop the simulated traffic thread (safe to call more than once)."""
        self.simulator.stop()


def create_app(
    *,
    seed: bool = True,
    simulate: bool = True,
    simulate_interval: float = 1.0,
    token: str | None = None,
    oauth: OAuthSettings | None = None,
    clock: Callable[[], float] = time.time,
) -> Flask:
    """Build the demo API. GET /users/<id> is protected by `token` (or env DEMO_API_TOKEN)
    and/or by OAuth 2.0 client credentials, `oauth` (or env DEMO_API_CLIENT_ID...)."""
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
    oauth = oauth if oauth is not None else oauth_settings_from_env(os.environ)
    if oauth is not None:
        demo.oauth = install_oauth(app, oauth, clock)
    app.extensions["demo"] = demo
    _register_routes(app, demo)
    if simulate:
        demo.simulator.start()
    return app


def _error(message: str, status: int) -> Json:
    return jsonify({"error": message}), status


def _has_token(token: str | None) -> bool:
    """True when the request presents the static token in either header."""
    if token is None:
        return False
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    presented = [request.headers.get("X-API-Key", "")]
    if scheme.lower() == "bearer":
        presented.append(credentials.strip())
    return any(
        candidate and hmac.compare_digest(candidate.encode(), token.encode())
        for candidate in presented
    )


def _refusal(demo: DemoAPI) -> Json | None:
    """None when the request may read user records, else the 401 answer."""
    if demo.token is None and demo.oauth is None:
        return None
    if _has_token(demo.token):
        return None
    if demo.oauth is None:
        return _error("missing or invalid API token", 401)
    try:
        demo.oauth.protector.acquire_token()
        return None
    except OAuth2Error as error:
        response = jsonify(dict(error.get_body()))
        response.headers.update(dict(error.get_headers()))
        return response, error.status_code


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
        refusal = _refusal(demo)
        if refusal is not None:
            return refusal
        try:
            response = jsonify(directory.record(user_id))
        except UnknownUser:
            return _error("unknown user", 404)
        # Records change as the user calls the API: clients may reuse one for a short while.
        response.headers["Cache-Control"] = f"private, max-age={RECORD_MAX_AGE}"
        return response, 200

    @app.post("/oauth/token")
    def issue_token() -> Response | Json:
        if demo.oauth is None:
            return _error("OAuth 2.0 is not enabled: set DEMO_API_CLIENT_ID", 404)
        return demo.oauth.server.create_token_response()

    @app.post("/admin/oauth/revoke")
    def revoke_tokens() -> Json:
        if demo.oauth is None:
            return _error("OAuth 2.0 is not enabled: set DEMO_API_CLIENT_ID", 404)
        return jsonify({"revoked": demo.oauth.tokens.revoke_all()}), 200

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
            oauth=demo.oauth.settings if demo.oauth else None,
        )


INDEX_TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Nudge demo API</title>
<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em .8em;text-align:left}
pre{background:#f4f4f4;padding:1em}</style></head>
<body>
<h1>Nudge demo API</h1>
<p>An instrumented API product: Prometheus scrapes <a href="/metrics">/metrics</a>,
Nudge reads <code>GET /users/&lt;id&gt;</code>{% if oauth %}
(needs an OAuth 2.0 access token from <code>POST /oauth/token</code>, client credentials grant,
client <code>{{ oauth.client_id }}</code>, tokens valid {{ oauth.token_ttl }} s){% endif %}
{%- if token_required %} ({% if oauth %}or {% endif -%}
<code>Authorization: Bearer $DEMO_API_TOKEN</code>){% endif %}.
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
{% if oauth -%}
TOKEN=$(curl -s -u '{{ oauth.client_id }}:'"$CLIENT_SECRET" -d grant_type=client_credentials \\
     {{ base }}/oauth/token | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
curl -H "Authorization: Bearer $TOKEN" {{ base }}/users/u1
# revoke every token issued so far (the next directory request gets 401)
curl -X POST {{ base }}/admin/oauth/revoke
{%- else -%}
curl {% if token_required -%}
-H "Authorization: Bearer $DEMO_API_TOKEN" {% endif %}{{ base }}/users/u1
{%- endif %}
</pre>
</body></html>
"""
