"""The web app's store, shared by the threads of each process (connections are per thread)."""

from __future__ import annotations

from flask import current_app

from app.store import Store


def store() -> Store:
    return current_app.extensions["nudge_store"]
