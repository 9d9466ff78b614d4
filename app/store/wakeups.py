"""Wake-ups between the processes sharing one SQLite database: what LISTEN/NOTIFY is to the
PostgreSQL engine.

A watcher (the decider's, a dispatcher's) binds a Unix datagram socket and leaves a marker
named after it in `<database>-wakeups/`. Once a write that watchers of a channel wait for is
durable (a receiver's journal append, the decider's queued deliveries), the writer sends one
byte to every socket of that channel, so the work is picked up at once instead of at the
watcher's next look, which an idle watcher spaces out.

A wake-up is only a hint. Watchers still look at the database now and then
(app/store/sqlite.py), so a lost datagram, a full socket buffer, a process in another network
namespace or a platform without these sockets only waits for that next look, as before.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import select
import socket
import sys
import threading
import time
from pathlib import Path

JOURNAL = "journal"  # a receiver appended notifications: the deciders' channel
QUEUE = "queue"  # deliveries were queued or given back: the dispatchers' channel

# How old a listing of the markers may be before it is read again even though the folder's
# modification time looks unchanged (file systems with a coarse clock).
_LISTING_TTL = 1.0
# A socket path must fit sockaddr_un; beyond this, outside Linux, watchers only poll.
_MAX_PATH = 100


class Listener:
    """One watcher's socket: readable once someone notified its channel."""

    def __init__(self, sock: socket.socket, marker: Path):
        self.sock = sock
        self.marker = marker

    def wait(self, timeout: float) -> bool:
        """Block until notified or `timeout`; True (and the wake-ups consumed) if notified."""
        try:
            if not select.select([self.sock], [], [], timeout)[0]:
                return False
            while True:
                self.sock.recv(64)
        except BlockingIOError:
            return True
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        try:
            self.marker.unlink()
        except OSError:
            pass
        self.sock.close()


class WakeupBoard:
    def __init__(self, folder: Path):
        self.folder = folder
        self._abstract = sys.platform.startswith("linux")
        # Abstract socket names are per machine, not per folder: a digest of the folder's path
        # keeps two databases' watchers apart.
        self._namespace = hashlib.sha256(str(folder.absolute()).encode()).hexdigest()[:16]
        self._lock = threading.Lock()
        self._sender: tuple[int, socket.socket] | None = None  # (pid, socket)
        self._listing: tuple[int, float, dict[str, list[str]]] = (-1, 0.0, {})

    def _address(self, name: str) -> str | bytes:
        if self._abstract:
            return f"\0nudge-wakeup-{self._namespace}-{name}".encode()
        return str(self.folder / name)

    def listen(self, channel: str) -> Listener | None:
        """A socket notified for `channel`, or None where that cannot be (the caller polls)."""
        name = f"{channel}.{os.getpid()}.{secrets.token_hex(4)}"
        marker = self.folder / name
        if not self._abstract and len(str(marker)) > _MAX_PATH:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            sock.setblocking(False)
            sock.bind(self._address(name))
            if self._abstract:
                marker.touch(exist_ok=False)
        except OSError:
            sock.close()
            return None
        return Listener(sock, marker)

    def notify(self, channel: str) -> None:
        """Wake every listener of `channel`; never raises (a wake-up is a hint)."""
        try:
            targets = self._targets(channel)
            if not targets:
                return
            sender = self._sender_socket()
        except OSError:
            return
        for name in targets:
            try:
                sender.sendto(b"\0", self._address(name))
            except BlockingIOError:
                pass  # its buffer is full of wake-ups it has not read yet: it will look
            except (ConnectionRefusedError, FileNotFoundError):
                self._forget(name)  # its process is gone without closing it
            except OSError:
                pass

    def _targets(self, channel: str) -> list[str]:
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return []
        now = time.monotonic()
        seen, read_at, listing = self._listing
        if mtime != seen or now - read_at > _LISTING_TTL:
            listing = {}
            for entry in os.scandir(self.folder):
                listing.setdefault(entry.name.split(".", 1)[0], []).append(entry.name)
            self._listing = (mtime, now, listing)
        return listing.get(channel, [])

    def _sender_socket(self) -> socket.socket:
        with self._lock:
            pid = os.getpid()
            if self._sender is None or self._sender[0] != pid:  # new, or inherited by a fork
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._sender = (pid, sock)
            return self._sender[1]

    def _forget(self, name: str) -> None:
        try:
            (self.folder / name).unlink()
        except OSError:
            pass
        self._listing = (-1, 0.0, {})
