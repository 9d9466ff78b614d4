"""The receiver's gunicorn worker: gthread, keeping a busy keep-alive connection on its thread.

gunicorn's gthread worker hands a kept-alive connection back to its main thread after every
request: the main thread registers it with its poller, wakes when the next request arrives,
and submits it to the thread pool again. For Alertmanager's back-to-back one-alert POSTs on a
few long-lived connections those hand-offs (two thread wake-ups, a pipe write and read, a
future and its callback per request) cost more CPU than Nudge's own work on the request.

This worker lets the thread that answered a request wait a moment for the connection's next
one, and serve it directly if it comes. It lingers only while no other connection is waiting
for a thread, and never while the worker is stopping, so an idle or slow client holds a
thread for LINGER at most, and then goes back to the poller as before.
"""

from __future__ import annotations

import select

from gunicorn.workers.gthread import ThreadWorker

# How long a thread waits for the next request on the connection it just answered. A client
# sending back to back answers within this even on a loaded machine; one that does not costs
# the thread this long once, then waits in the poller.
LINGER = 0.005


class LingeringThreadWorker(ThreadWorker):
    def handle(self, conn):
        while True:
            keep_alive = super().handle(conn)
            if keep_alive is not True or not self.alive or conn.is_http2:
                return keep_alive
            if _waiting(self.tpool):  # another connection waits for a thread
                return keep_alive
            if not conn.parser.unreader.buf.getvalue() and not _readable(conn.sock, LINGER):
                return keep_alive


def _waiting(pool) -> int:
    """Connections submitted to the pool that no thread has taken yet (ThreadPoolExecutor's
    queue; if it ever lacks one, never linger)."""
    work = getattr(pool, "_work_queue", None)
    return 1 if work is None else work.qsize()


def _readable(sock, timeout: float) -> bool:
    try:
        return bool(select.select([sock], [], [], timeout)[0])
    except (OSError, ValueError):  # closed meanwhile: the poller's path handles it
        return False
