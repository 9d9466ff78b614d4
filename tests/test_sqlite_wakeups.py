"""SQLite's wake-ups (app/store/wakeups.py): a decider or dispatcher that has been idle a long
time, and so looks at the database only now and then, is woken at once by a receiver's append
or by queued deliveries in another process; a watcher that goes away leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from app.store import DEAD, Outcome, open_store
from app.store.sqlite import _DataVersionWatcher
from app.store.wakeups import JOURNAL, WakeupBoard
from tests.conftest import ROOT
from tests.test_store import queue_one

# Long enough that a watcher which only polled would not notice within WAIT; the assertions
# only need the wake-up to come well inside WAIT, whatever the machine's load.
QUIET_LOOK = 60.0
WAIT = 30.0
WOKEN_WITHIN = 10.0


@pytest.fixture
def database(tmp_path):
    path = tmp_path / "nudge.db"
    store = open_store(path)
    store.migrate()
    store.close_all()
    return path


@pytest.fixture
def quiet(monkeypatch):
    """Watchers that have been idle long: their next look is QUIET_LOOK away."""
    monkeypatch.setattr(_DataVersionWatcher, "MAX_INTERVAL", QUIET_LOOK)

    def idle(watcher):
        watcher.changed_at = time.monotonic() - 100 * QUIET_LOOK
        return watcher

    return idle


def in_another_process(database, code: str) -> subprocess.Popen:
    script = textwrap.dedent(f"""
        import time
        from app.store import open_store
        from tests.test_store import entry, queue_one
        store = open_store({str(database)!r})
        time.sleep(0.3)  # the watcher is waiting by now
    """) + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)


def woken(watcher) -> float:
    started = time.monotonic()
    assert watcher.wait(WAIT) is True
    return time.monotonic() - started


@pytest.mark.parametrize("watcher_of, commit", [
    ("watch_journal", "store.append_notifications([entry()])"),  # the decider, a receiver
    ("watch_queue", "queue_one(store)"),  # a sender process, the decider
], ids=["decider woken by an append", "dispatcher woken by queued deliveries"])
def test_an_idle_watcher_is_woken_by_a_commit_in_another_process(database, quiet, watcher_of,
                                                                  commit):
    store = open_store(database)
    watcher = quiet(getattr(store, watcher_of)())
    try:
        writer = in_another_process(database, commit)
        assert woken(watcher) < WOKEN_WITHIN
        assert writer.wait(30) == 0
    finally:
        watcher.close()
        store.close_all()


def test_an_idle_dispatcher_is_woken_when_a_delivery_is_given_back_or_requeued(database, quiet):
    store, other = open_store(database), open_store(database)
    delivery_id = queue_one(store)
    (claimed,) = store.claim_due(time.time(), lease=60, limit=1)
    watcher = quiet(store.watch_queue())
    try:
        # Given back unsent (a sender stopping): due again at once.
        threading.Timer(0.3, lambda: other.release(claimed, time.time())).start()
        assert woken(watcher) < WOKEN_WITHIN
        # Dead, then `nudge retry`: due again at once.
        (claimed,) = store.claim_due(time.time(), lease=60, limit=1)
        store.settle_many([Outcome(claimed, DEAD, error="550 no such user")], time.time())
        assert watcher.wait(0) is True  # that commit seen: only the requeue is left to wake it
        quiet(watcher)
        threading.Timer(0.3, lambda: other.requeue([delivery_id], time.time(), "fixed")).start()
        assert woken(watcher) < WOKEN_WITHIN
        assert [d.id for d in store.claim_due(time.time(), lease=60, limit=1)] == [delivery_id]
    finally:
        watcher.close()
        other.close_all()
        store.close_all()


def test_a_closed_watcher_leaves_no_marker_and_a_killed_ones_goes_at_the_next_wake_up(
        database):
    board = WakeupBoard(database.parent / f"{database.name}-wakeups")
    store = open_store(database)
    watcher = store.watch_journal()
    assert [name.split(".")[0] for name in os.listdir(board.folder)] == [JOURNAL]
    watcher.close()
    assert os.listdir(board.folder) == []
    store.close_all()
    # A process killed while watching cannot remove its marker; the next wake-up finds
    # nobody listening there and removes it.
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from app.store import DEAD, Outcome, open_store
        watcher = open_store({str(database)!r}).watch_journal()
        print("watching", flush=True)
        time.sleep(600)
    """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "watching"
        assert len(os.listdir(board.folder)) == 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    board.notify(JOURNAL)
    assert os.listdir(board.folder) == []
