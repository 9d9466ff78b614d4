"""A child process telling its parent that it has started: one byte down a pipe.

`nudge serve` starts the delivery worker, which starts its sender processes. Each parent
passes the write end of a pipe to its child (its number in NUDGE_READY_FD) and the child
writes one byte once it can do its work: imports done, config and templates loaded, its own
sender processes started. Until then Nudge is not ready (/-/ready answers 503), so a load
balancer or a benchmark does not count the start-up as service time. A child that exits
before it is ready closes the pipe: the parent sees the end of it and stops waiting.
"""

from __future__ import annotations

import os
import select
import subprocess
import time

READY_FD_ENV = "NUDGE_READY_FD"


class ReadySignal:
    """The parent's end of one child's pipe (one per start of the child)."""

    def __init__(self) -> None:
        self._read, self.write_fd = os.pipe()
        os.set_blocking(self._read, False)
        self._state: bool | None = None  # True: ready; False: closed without a word

    def child_env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """The environment to start the child with (pass `write_fd` in pass_fds too)."""
        return {**(os.environ if env is None else env), READY_FD_ENV: str(self.write_fd)}

    def started(self) -> None:
        """Call once the child runs: only the child may hold the write end now, so that
        its exit ends the pipe."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def poll(self) -> bool | None:
        """True once the child said it is ready; False if it exited first; None meanwhile."""
        if self._state is None and self._read >= 0:
            try:
                data = os.read(self._read, 1)
            except BlockingIOError:
                return None
            except OSError:
                data = b""
            self._state = bool(data)
            self.close()
        return self._state

    def wait(self, timeout: float) -> bool | None:
        """poll(), waiting at most `timeout` seconds for the answer."""
        deadline = time.monotonic() + timeout
        while (state := self.poll()) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            select.select([self._read], [], [], remaining)
        return state

    def close(self) -> None:
        for fd in (self._read, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self._read = self.write_fd = -1


def start_child(args: list[str], previous: ReadySignal | None = None,
                **popen_args) -> tuple[subprocess.Popen, ReadySignal]:
    """Start a child that says when it has started, on a fresh pipe (the previous start's,
    if any, is closed)."""
    if previous is not None:
        previous.close()
    ready = ReadySignal()
    try:
        process = subprocess.Popen(args, env=ready.child_env(), pass_fds=(ready.write_fd,),
                                   **popen_args)
    finally:
        ready.started()
    return process, ready


def take_ready_fd() -> int | None:
    """This process's end of its parent's pipe, taken out of the environment so that no
    process started from here inherits the number (it would name another file there)."""
    value = os.environ.pop(READY_FD_ENV, None)
    try:
        return int(value) if value else None
    except ValueError:
        return None


def notify_ready(fd: int | None) -> None:
    """Tell the parent this process is ready (nothing when no parent asked)."""
    if fd is None:
        return
    try:
        os.write(fd, b"1")
    except OSError:  # the parent is gone or stopped listening: nothing to tell
        pass
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
