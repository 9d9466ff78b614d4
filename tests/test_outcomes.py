"""The worker's outcome writer: every outcome handed over is written, in batches, whatever
goes wrong in between; a delivery stays claimed until its outcome is in the database."""

from __future__ import annotations

import threading
import time

from app.outcomes import GATHER, MAX_GATHER, BackgroundOutcomes, gather_window
from app.store import QUEUED, SENT, Outcome, open_store
from tests.test_store import queue_one


def claimed_deliveries(store, count):
    for n in range(count):
        queue_one(store, user=f"u{n}")
    return store.claim_due(time.time(), lease=60, limit=count)


def test_outcomes_from_many_senders_are_all_written_and_reported(tmp_path):
    store = open_store(tmp_path / "nudge.db")
    store.migrate()
    deliveries = claimed_deliveries(store, 200)
    recorded = []
    writer = BackgroundOutcomes(open_store(tmp_path / "nudge.db"), recorded.append)

    def sender(share):
        for delivery in share:
            writer.record(Outcome(delivery, SENT, recipient=f"{delivery.user_id}@example.com"))

    threads = [threading.Thread(target=sender, args=(deliveries[n::8],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()  # writes what is still waiting

    assert sorted(d.id for d in recorded) == sorted(d.id for d in deliveries)
    assert not any(writer.unrecorded(d) for d in deliveries)
    rows = store.list_deliveries()
    assert {row["status"] for row in rows} == {SENT} and len(rows) == 200
    assert all(row["recipient"] == f"{row['user_id']}@example.com" for row in rows)


class FailingOnce:
    """A real store whose first write of outcomes fails as a bug would (not a StorageError)."""

    def __init__(self, store):
        self.store = store
        self.failures = 1

    def settle_many(self, outcomes, now):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("boom")
        return self.store.settle_many(outcomes, now)

    def close(self):
        self.store.close()


def test_an_unexpected_error_while_writing_is_retried_and_the_outcome_kept(tmp_path, caplog):
    store = open_store(tmp_path / "nudge.db")
    store.migrate()
    (delivery,) = claimed_deliveries(store, 1)
    recorded = []
    writer = BackgroundOutcomes(FailingOnce(open_store(tmp_path / "nudge.db")), recorded.append)
    writer.record(Outcome(delivery, QUEUED, error="451 later", retry_at=time.time() + 60))
    assert writer.unrecorded(delivery)  # still claimed: its lease keeps being renewed
    writer.close()

    assert recorded == [delivery] and not writer.unrecorded(delivery)
    (row,) = store.list_deliveries()
    assert (row["status"], row["last_error"]) == (QUEUED, "451 later")
    assert "cannot record outcome queued" in caplog.text and "boom" in caplog.text


def test_the_gathering_window_is_most_of_a_send_within_its_bounds():
    assert gather_window(0.0) == GATHER  # nothing sent yet
    assert gather_window(0.001) == GATHER  # a relay on the same host
    assert gather_window(0.06) == 0.045  # 20 ms per command: written before the next is out
    assert gather_window(5.0) == MAX_GATHER  # a crawling relay: outcomes still written soon


def test_the_first_slow_send_does_not_widen_the_window_at_once(tmp_path):
    """The first send on a new connection also connects (TCP, TLS, EHLO): the estimate rises
    towards what sends take instead of starting from it."""
    writer = BackgroundOutcomes(open_store(tmp_path / "nudge.db"), lambda delivery: None)
    writer.sent_in(2.0)  # connecting to a slow relay
    for _ in range(5):
        writer.sent_in(0.03)
    writer.close()
    assert gather_window(writer._send_seconds) < 0.2


class CountingWrites:
    """A real store that counts its writes of outcomes."""

    def __init__(self, store):
        self.store = store
        self.batches = []

    def settle_many(self, outcomes, now):
        self.batches.append(len(outcomes))
        return self.store.settle_many(outcomes, now)

    def close(self):
        self.store.close()


def test_outcomes_of_slow_sends_gather_for_longer(tmp_path):
    store = open_store(tmp_path / "nudge.db")
    store.migrate()
    first, second = claimed_deliveries(store, 2)
    counting = CountingWrites(open_store(tmp_path / "nudge.db"))
    recorded = []
    writer = BackgroundOutcomes(counting, recorded.append)
    for _ in range(60):  # a relay that takes 0.4 s per email: the window is MAX_GATHER
        writer.sent_in(0.4)
    writer.record(Outcome(first, SENT, recipient="u0@example.com"))
    time.sleep(0.05)  # longer than GATHER: without the estimate, a batch of its own
    writer.record(Outcome(second, SENT, recipient="u1@example.com"))
    deadline = time.monotonic() + 10
    while len(recorded) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.close()

    assert counting.batches == [2]
    assert {row["status"] for row in store.list_deliveries()} == {SENT}
