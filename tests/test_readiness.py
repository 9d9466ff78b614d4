"""A child tells its parent it has started (app/readiness.py): real processes, real pipes."""

from __future__ import annotations

import subprocess
import sys

from app.readiness import ReadySignal, start_child

CHILD = """
import sys, time
from app.readiness import notify_ready, take_ready_fd
fd = take_ready_fd()
import os
assert "NUDGE_READY_FD" not in os.environ  # nothing started from here inherits the number
if sys.argv[1] == "ready":
    notify_ready(fd)
time.sleep(float(sys.argv[2]))
"""


def start(mode: str, linger: float) -> tuple[subprocess.Popen, ReadySignal]:
    return start_child([sys.executable, "-c", CHILD, mode, str(linger)])


def test_a_child_that_says_it_is_ready_is_seen_ready_while_it_runs():
    child, signal = start("ready", 30)
    try:
        assert signal.wait(30) is True
        assert child.poll() is None
        assert signal.poll() is True  # the answer stays
    finally:
        child.kill()
        child.wait()


def test_a_child_that_exits_without_a_word_ends_the_wait_at_once():
    child, signal = start("silent", 0)
    assert signal.wait(30) is False
    assert child.wait(10) == 0


def test_a_child_still_starting_is_neither():
    child, signal = start("silent", 30)
    try:
        assert signal.wait(0.2) is None
    finally:
        child.kill()
        child.wait()
    assert signal.wait(10) is False


def test_a_restart_gets_a_fresh_pipe_and_the_old_one_is_closed():
    child, first = start("silent", 0)
    child.wait(10)
    again, second = start_child([sys.executable, "-c", CHILD, "ready", "30"], first)
    try:
        assert first.poll() is None  # closed unread: it says nothing any more
        assert second.wait(30) is True
    finally:
        again.kill()
        again.wait()
