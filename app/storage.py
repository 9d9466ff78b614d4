"""The web app's database connection: one per thread (and per process, as gunicorn forks)."""

from __future__ import annotations

import os
import threading

import sqlite_utils
from flask import current_app

from app.db import connect


class ConnectionPerThread:
    def __init__(self, path):
        self.path = path
        self._local = threading.local()

    def get(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = connect(self.path)
            self._local.db, self._local.pid = db, os.getpid()
        return db


def database() -> sqlite_utils.Database:
    return current_app.extensions["nudge_db"].get()
