"""An event a thread can wait for in select(), beside a database connection's socket.

The dispatcher and the decider sleep on a PostgreSQL LISTEN connection until a NOTIFY comes,
and must also wake when their own process stops them or queues work for them. A plain
threading.Event cannot be selected on, so they used to look at it every few tens of
milliseconds: twenty wake-ups a second per thread, the whole CPU of an idle replica.
`Interrupt.set()` also makes `fileno()` readable, so such a thread sleeps until something
happens, whichever side it comes from.
"""

from __future__ import annotations

import os
import threading
import weakref


class Interrupt(threading.Event):
    """A threading.Event whose `fileno()` is readable while it is set (until `clear()`)."""

    def __init__(self):
        super().__init__()
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        weakref.finalize(self, _close, self._read, self._write)

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        super().set()
        try:
            os.write(self._write, b"!")
        except BlockingIOError:
            pass  # the pipe is full: readable already

    def clear(self) -> None:
        super().clear()
        self._drain()

    def discard_stale(self) -> None:
        """Call after select() found `fileno()` readable: if the flag was cleared in between
        (a set() racing a clear()), consume what is left, or every later select() would return
        at once. The caller looks at the flag before it selects again, so a set() racing this
        call is never missed."""
        if not self.is_set():
            self._drain()

    def _drain(self) -> None:
        try:
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass


def _close(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
