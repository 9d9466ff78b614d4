"""Nudge: behavioral email for API products, driven by Prometheus alerting rules."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, jsonify
from flask.sessions import SessionInterface

from app.config import Config, load_config, require_webhook_auth
from app.journal import Journal
from app.policy import AlertPolicy
from app.public import PUBLIC_MAX_BODY_BYTES, register_recipient_pages
from app.store import store_for
from app.template_set import TemplateSet

log = logging.getLogger("nudge")

# Request threads per receiver process (gunicorn's gthread `threads`); each may hold a
# database connection.
RECEIVER_THREADS = 4


class NoSessions(SessionInterface):
    """Nudge keeps no cookie sessions (links carry their own signed tokens): without this,
    Flask builds a signing serializer for every request because a secret key is set."""

    def open_session(self, app, request):
        return None  # Flask then uses its null session

    def save_session(self, app, session, response) -> None:
        pass


def create_app(config: Config | Mapping[str, Any] | None = None, *, prepare_database: bool = True,
               public: bool = False):
    """The Flask app. `config` is a Config, or a mapping of nudge.yml keys (tests), or None
    for nudge.yml/NUDGE_* from the environment. `nudge serve` migrates the database before
    forking and passes prepare_database=False to its workers. `public=True` is the app of the
    public listener (server.public_bind): the recipient-facing pages only (app/public.py)."""
    if config is None:
        config = load_config()
    elif not isinstance(config, Config):
        config = load_config(data=config, environ={})
    if not public:
        require_webhook_auth(config)
    store = store_for(config, pool_size=RECEIVER_THREADS + 1)
    if prepare_database:
        store.migrate()

    app = Flask(__name__)
    app.session_interface = NoSessions()
    app.config["NUDGE"] = config
    app.config["MAX_CONTENT_LENGTH"] = PUBLIC_MAX_BODY_BYTES if public else config.max_body_bytes
    app.config["SECRET_KEY"] = config.resolved_secret_key()
    app.extensions["nudge_store"] = store
    app.extensions["nudge_journal"] = Journal(store)
    app.extensions["nudge_policy"] = AlertPolicy.from_config(config)
    # Only for /-/ready's report on the template and rule files: loaded on first use.
    app.extensions["nudge_templates"] = TemplateSet(config, load=False)

    from app import observability, unsubscribe, webhook

    if public:
        register_recipient_pages(app)
    else:
        app.register_blueprint(webhook.blueprint)
        app.wsgi_app = webhook.FastWebhook(app, app.wsgi_app)
        app.register_blueprint(observability.blueprint)
        app.register_blueprint(unsubscribe.blueprint)

    @app.errorhandler(404)
    def not_found(_error):
        return jsonify(status="error", error="not found"), 404

    @app.errorhandler(405)
    def method_not_allowed(_error):
        return jsonify(status="error", error="method not allowed"), 405

    if config.allow_unauthenticated and not (config.webhook_token or config.webhook_basic_auth):
        log.warning(
            "webhook.allow_unauthenticated is true: anyone who can reach /webhook can queue emails"
        )
    return app
