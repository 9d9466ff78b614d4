"""The SQLite engine's journal files: torn tails, consumed files, and what survives a crash."""

from __future__ import annotations

import subprocess
import sys
import time

from app.store import open_store
from app.store.journal_files import HEADER, journal_names, scan
from tests.conftest import ROOT

APPENDER = """
import sys, time
from app.store import JournalEntry, open_store
store = open_store(sys.argv[1])
print(store.append_notifications([JournalEntry(time.time(), "nudge", "firing", "g", 1, 0,
                                                '{"n": %d}' % n) for n in range(3)]))
"""


def test_a_torn_record_is_never_read_and_a_finished_file_is_removed_once_decided(tmp_path):
    database = tmp_path / "nudge.db"
    store = open_store(database)
    store.migrate()
    result = subprocess.run([sys.executable, "-c", APPENDER, str(database)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ids = [int(i) for i in result.stdout.strip("[]\n").split(",")]
    (name,) = journal_names(store.journal_folder)
    # The writer died in the middle of its next write: half a record after the last one.
    _, _, _, end = scan(store.journal_folder / name, 0)
    with open(store.journal_folder / name, "r+b") as handle:
        handle.seek(end)
        handle.write(HEADER.pack(500, 0) + b'{"id": 99')
    pending = store.pending_notifications(100, 1000)
    assert [p.id for p in pending] == ids
    assert store.journal_stats(time.time()).pending == 3
    with store.deciding([p.id for p in pending]) as batch:
        assert batch.claimed == set(ids)
    assert store.pending_notifications(100, 1000) == []
    assert store.journal_stats(time.time()).pending == 0
    assert journal_names(store.journal_folder) == []  # consumed, and its writer is gone
    # What was decided stays in the table, body included.
    assert store.journal_stats(time.time()).decided == 3


def test_the_live_writers_file_stays_and_new_records_follow_the_checkpoint(tmp_path):
    store = open_store(tmp_path / "nudge.db")
    store.migrate()
    from app.store import JournalEntry

    def entry(n):
        return JournalEntry(time.time(), "nudge", "firing", "g", 1, 0, f'{{"n": {n}}}')

    first = store.append_notifications([entry(1), entry(2)])
    with store.deciding(first):
        pass
    (name,) = journal_names(store.journal_folder)  # this process still writes to it
    second = store.append_notifications([entry(3)])
    assert [p.id for p in store.pending_notifications(10, 100)] == second
    assert second[0] > max(first)
    assert journal_names(store.journal_folder) == [name]


def test_the_watcher_wakes_on_an_append_that_commits_nothing_to_sqlite(tmp_path):
    import threading

    from app.store import JournalEntry

    store = open_store(tmp_path / "nudge.db")
    store.migrate()
    writer = open_store(tmp_path / "nudge.db")
    entry = JournalEntry(time.time(), "nudge", "firing", "g", 1, 0, "{}")
    writer.append_notifications([entry])  # reserves a block of ids: a SQLite commit
    watcher = store.watch()
    try:
        # The file is zero-filled ahead and the ids are reserved: this append changes
        # neither the file's size nor the database.
        threading.Timer(0.1, lambda: writer.append_notifications([entry])).start()
        started = time.monotonic()
        assert watcher.wait(5) is True
        assert time.monotonic() - started < 3  # woken, not timed out
    finally:
        watcher.close()
