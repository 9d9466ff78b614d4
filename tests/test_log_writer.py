"""The delivery worker's log lines are written by a thread of their own, a moment's lines at
once (app/server.py `configure_logging(background=True)`): every line still arrives, in order,
one record per line, with control characters escaped, and all of them by the time logging goes
back to the foreground (what a supervisor then reports is the last line written). Run in a
process of its own, whose stderr is what is checked."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = r'''
import logging, threading
from app.server import configure_logging

write_in_foreground = configure_logging(background=True)
log = logging.getLogger("nudge.delivery")

def send(thread):
    for n in range(200):
        log.info("thread=%d line=%d", thread, n)

threads = [threading.Thread(target=send, args=(t,)) for t in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
log.debug("not at INFO")
log.warning("user=u1\n2030-01-01 00:00:00,000 [1] ERROR nudge.forged: FORGED\x1b[2J")
write_in_foreground()
'''


def test_lines_from_many_threads_all_arrive_in_order_once_back_in_the_foreground():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})

    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 8 * 200 + 1, done.stderr[-2000:]
    assert all(" INFO nudge.delivery: thread=" in line for line in lines[:-1])
    for thread in range(8):
        mine = [line.rsplit("line=", 1)[1] for line in lines if f"thread={thread} " in line]
        assert mine == [str(n) for n in range(200)]
    last = lines[-1]
    assert " WARNING nudge.delivery: user=u1\\n2030-01-01" in last and "\\x1b[2J" in last
    assert not any(line.startswith("2030-01-01") for line in lines)
