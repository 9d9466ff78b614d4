"""Signal handling that cannot deadlock: what a signal asks for runs on a thread of its own.

Python runs a signal handler in the main thread between two bytecodes, whatever that thread
holds at the moment. A handler that takes a lock (threading.Event.set() does, and so does
logging) hangs the process for good when the signal lands while the main thread itself holds
that lock — for instance inside the `Event.wait()` of its own main loop. So the handler here
only writes the signal's number down a pipe, and a daemon thread reads it and runs the action.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("nudge.signals")


def on_signals(actions: dict[signal.Signals, Callable[[signal.Signals], None]]) -> None:
    """Run `actions[sig](sig)` on a background thread each time `sig` arrives."""
    read_end, write_end = os.pipe()

    def handler(signum, _frame):
        try:
            os.write(write_end, bytes([signum]))
        except OSError:  # the pipe is full: this signal is already pending there
            pass

    def run() -> None:
        while True:
            for signum in os.read(read_end, 64):
                sig = signal.Signals(signum)
                try:
                    actions[sig](sig)
                except Exception:  # noqa: BLE001 - one failed action must not end signal handling
                    log.exception("handling %s failed", sig.name)

    os.set_blocking(write_end, False)
    threading.Thread(target=run, name="signals", daemon=True).start()
    for sig in actions:
        signal.signal(sig, handler)
