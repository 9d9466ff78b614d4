"""What the public listener (server.public_bind) serves: the pages recipients reach from their
emails, and nothing else.

`public_url` must face the internet, because recipients follow unsubscribe links from
anywhere; /webhook, /metrics and the health endpoints must not. With `server.public_bind` set,
`nudge serve` runs a second set of gunicorn processes on that address whose app registers only
the blueprints of RECIPIENT_FACING_MODULES; everything else is 404 there. Every blueprint a
listed module defines is served, so a page added to one of them (a preference page under the
unsubscribe link) is public without touching this file.
"""

from __future__ import annotations

import importlib

from flask import Blueprint, Flask

# Modules whose blueprints recipients reach (by links in emails).
RECIPIENT_FACING_MODULES = ("app.unsubscribe",)
# Recipients post small forms: a larger body on the public listener is refused early.
PUBLIC_MAX_BODY_BYTES = 64 * 1024


def recipient_blueprints() -> list[Blueprint]:
    blueprints = []
    for name in RECIPIENT_FACING_MODULES:
        module = importlib.import_module(name)
        blueprints.extend(value for value in vars(module).values()
                          if isinstance(value, Blueprint))
    return blueprints


def register_recipient_pages(app: Flask) -> None:
    for blueprint in recipient_blueprints():
        if blueprint.name not in app.blueprints:
            app.register_blueprint(blueprint)
