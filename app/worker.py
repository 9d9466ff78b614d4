"""The delivery worker: drains the queue with one sending thread per SMTP connection.

One dispatcher thread claims due deliveries in batches and hands them to the senders. It
notices new work within tens of milliseconds by watching SQLite's `PRAGMA data_version`
(which changes when another connection commits) instead of polling the table, and sleeps
until the next retry is due when there is nothing to do. Stopping (SIGTERM) finishes the
messages being sent and gives unstarted claims back to the queue.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from urllib.parse import urlsplit

from app.config import Config
from app.db import connect
from app.delivery import Deliverer
from app.queue import Delivery, claim_due_deliveries, next_due_at, release
from app.transports import transport_factory

log = logging.getLogger("nudge.worker")

WATCH_INTERVAL = 0.02  # seconds between data_version checks while idle
MAX_IDLE_SLEEP = 1.0


class DeliveryWorker:
    def __init__(self, config: Config, *, senders: int | None = None):
        self.config = config
        self.senders = senders or config.smtp_connections
        self.stopping = threading.Event()
        self.deliverer = Deliverer(config)
        self.new_transport = transport_factory(config.smtp_url, config.outbox_dir)
        self.work: queue.Queue[Delivery | None] = queue.Queue()
        self.slots = threading.Semaphore(self.senders * 2)
        self.threads: list[threading.Thread] = []

    def run(self) -> None:
        """Run until stop() is called; returns once in-flight messages are finished."""
        target = self.config.smtp_url and _redact(self.config.smtp_url) or self.config.outbox_dir
        log.info("delivery worker started: %d sender(s), sending via %s", self.senders, target)
        self.threads = [
            threading.Thread(target=self._send_loop, name=f"sender-{n}", daemon=True)
            for n in range(self.senders)
        ]
        for thread in self.threads:
            thread.start()
        try:
            self._dispatch_loop()
        finally:
            self._drain()
            self.deliverer.close()
            log.info("delivery worker stopped")

    def stop(self) -> None:
        self.stopping.set()

    def _dispatch_loop(self) -> None:
        db = connect(self.config.database)
        last_version = None
        try:
            while not self.stopping.is_set():
                free = 0
                while self.slots.acquire(blocking=False):
                    free += 1
                claimed: list[Delivery] = []
                if free:
                    try:
                        claimed = claim_due_deliveries(
                            db, time.time(), self.config.lease, limit=free
                        )
                    except sqlite3.Error as exc:
                        log.error("cannot claim deliveries, retrying: %s", exc)
                        self.stopping.wait(1.0)
                    for _ in range(free - len(claimed)):
                        self.slots.release()
                    for delivery in claimed:
                        self.work.put(delivery)
                if claimed:
                    continue
                last_version = self._wait_for_work(db, last_version, idle=bool(free))
        finally:
            db.close()

    def _wait_for_work(self, db, last_version, *, idle: bool):
        """Sleep until another process commits, a retry falls due, or a sender frees up."""
        try:
            due = next_due_at(db) if idle else None
        except sqlite3.Error:
            due = None
        deadline = time.time() + MAX_IDLE_SLEEP
        if due is not None:
            deadline = min(deadline, due)
        version = last_version
        while not self.stopping.is_set() and time.time() < deadline:
            try:
                version = db.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                break
            if last_version is not None and version != last_version:
                break
            if last_version is None:
                last_version = version
            self.stopping.wait(WATCH_INTERVAL)
        return version

    def _send_loop(self) -> None:
        db = connect(self.config.database)
        transport = self.new_transport()
        try:
            while True:
                delivery = self.work.get()
                if delivery is None:
                    return
                try:
                    if self.stopping.is_set():
                        release(db, delivery, time.time())
                        continue
                    self.deliverer.deliver(db, transport, delivery)
                except Exception:
                    # A bug must not stop the other deliveries; the lease brings this one back.
                    log.exception("unexpected error delivering %d; it will be retried after "
                                  "its lease expires", delivery.id)
                    _close_quietly(transport)
                    transport = self.new_transport()
                finally:
                    self.slots.release()
        finally:
            _close_quietly(transport)
            db.close()

    def _drain(self) -> None:
        for _ in self.threads:
            self.work.put(None)
        for thread in self.threads:
            thread.join()


def _close_quietly(transport) -> None:
    try:
        transport.close()
    except Exception:  # noqa: BLE001 - closing a broken connection must not raise
        pass


def _redact(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def watch_parent(worker: DeliveryWorker, parent_pid: int) -> None:
    """Stop when the `nudge serve` process that started us is gone (even after SIGKILL)."""

    def watch():
        while not worker.stopping.wait(0.5):
            if os.getppid() != parent_pid:
                log.warning("parent process %d is gone; stopping", parent_pid)
                worker.stop()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
