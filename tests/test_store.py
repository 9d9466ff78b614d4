"""The store contract: every operation of app.store.Store, run against each engine.

Every test takes the `store` fixture (a fresh, migrated database) or `database` (its
setting, for other processes). An engine joins the suite by adding itself to ENGINES.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from app.interrupts import Interrupt
from app.store import (
    FAILED,
    QUEUED,
    SENDING,
    SENT,
    DecisionRecord,
    JournalEntry,
    NewDelivery,
    Outcome,
    SchemaMismatch,
    StorageError,
    open_store,
)
from tests.conftest import ROOT

ENGINES = ["sqlite", "postgres"]


@pytest.fixture(params=ENGINES)
def database(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture
def opened(database):
    """open_store for this test's database; every store opened is closed afterwards."""
    stores = []

    def open_(target=None):
        stores.append(open_store(target or database))
        return stores[-1]

    yield open_
    for store in stores:
        store.close()
        store.close_all()


@pytest.fixture
def store(opened):
    store = opened()
    store.migrate()
    return store


def entry(body: str = "{}", alerts: int = 1, at: float | None = None) -> JournalEntry:
    return JournalEntry(time.time() if at is None else at, "nudge", "firing", "{}:{}", alerts,
                        0, body)


def new_delivery(notification_id: int, user: str = "u1", rule: str = "NoFirstApiCall",
                 key: str | None = None, cooldown: float | None = 3600.0) -> NewDelivery:
    alert = {"labels": {"alertname": rule, "user_id": user}, "startsAt": "2026-11-22T20:04:34Z"}
    return NewDelivery(key or f"{rule}/{user}/1", notification_id, rule, user,
                       "onboarding_first_call", "firing", "2026-11-22T20:04:34Z",
                       json.dumps(alert), "http://alertmanager:9093", cooldown)


def record(notification_id: int, outcome: str = "queued", delivery_id: int | None = None,
           user: str = "u1") -> DecisionRecord:
    return DecisionRecord(notification_id, "NoFirstApiCall", user, "firing",
                          "2026-11-22T20:04:34Z", "fp", outcome, "new_episode", "detail",
                          delivery_id)


def queue_one(store, user: str = "u1", key: str | None = None) -> int:
    (notification_id,) = store.append_notifications([entry()])
    with store.deciding([notification_id]) as batch:
        delivery_id = batch.add_delivery(new_delivery(notification_id, user, key=key), time.time())
        batch.add_decisions([record(notification_id, delivery_id=delivery_id, user=user)],
                            time.time())
    return delivery_id


# --- lifecycle ----------------------------------------------------------------------------------


def test_migrate_is_idempotent_and_leaves_a_ready_store(opened):
    store = opened()
    assert store.migrate() == store.migrate()
    store.check_ready()


def test_an_unmigrated_database_is_not_ready(opened):
    with pytest.raises(SchemaMismatch, match="schema 0"):
        opened().check_ready()


def test_an_unusable_location_is_a_storage_error(tmp_path):
    (tmp_path / "folder.db").mkdir()
    with pytest.raises(StorageError):
        open_store(tmp_path / "folder.db").migrate()
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match="cannot create folder"):
        open_store(tmp_path / "file" / "nudge.db").migrate()


# --- journal ------------------------------------------------------------------------------------


def test_appended_notifications_are_pending_oldest_first_with_their_body(store):
    ids = store.append_notifications([entry('{"n": 1}'), entry('{"n": 2}', alerts=3)])
    assert ids == sorted(ids) and len(set(ids)) == 2
    (third,) = store.append_notifications([entry('{"n": 3}')])
    assert third > ids[-1]
    pending = store.pending_notifications(10, 1000)
    assert [(p.id, p.body) for p in pending] == [
        (ids[0], '{"n": 1}'), (ids[1], '{"n": 2}'), (third, '{"n": 3}')]
    stats = store.journal_stats(time.time())
    assert (stats.pending, stats.pending_alerts, stats.decided) == (3, 5, 0)
    assert stats.oldest_age >= 0


def test_pending_batches_are_bounded_by_count_and_alerts_but_never_empty(store):
    ids = store.append_notifications([entry(alerts=n) for n in (600, 600, 5000, 600, 600)])

    def next_batch(max_notifications, max_alerts):
        batch = store.pending_notifications(max_notifications, max_alerts)
        with store.deciding([p.id for p in batch]) as deciding:
            assert deciding.claimed == {p.id for p in batch}
        return [p.id for p in batch]

    assert next_batch(1, 10_000) == ids[:1]
    assert next_batch(10, 1000) == ids[1:2]
    # A notification bigger than the alert budget still comes out, alone.
    assert next_batch(10, 1000) == ids[2:3]
    assert next_batch(10, 1200) == ids[3:]
    assert next_batch(10, 1200) == []


def test_pending_notifications_received_before_a_time_leave_the_newer_ones(store):
    now = time.time()
    old = store.append_notifications([entry('{"n": 1}', at=now - 10), entry('{"n": 2}', at=now - 5)])
    (new,) = store.append_notifications([entry('{"n": 3}', at=now)])
    assert store.pending_notifications(10, 1000, received_before=now - 60) == []
    assert [p.id for p in store.pending_notifications(10, 1000, received_before=now - 1)] == old
    # Without a bound the newer one comes too (PostgreSQL: the two above are claimed a while).
    assert new in [p.id for p in store.pending_notifications(10, 1000)]


def test_deciding_marks_notifications_decided_with_their_decisions(store):
    (notification_id,) = store.append_notifications([entry()])
    now = time.time()
    with store.deciding([notification_id]) as batch:
        assert batch.claimed == {notification_id}
        delivery_id = batch.add_delivery(new_delivery(notification_id), now)
        batch.add_decisions([record(notification_id, delivery_id=delivery_id)], now)
    assert store.pending_notifications(10, 1000) == []
    assert store.journal_stats(now).decided == 1
    (decision,) = store.list_decisions()
    assert (decision["notification_id"], decision["delivery_id"]) == (notification_id, delivery_id)
    (delivery,) = store.list_deliveries()
    assert (delivery["id"], delivery["status"], delivery["user_id"]) == (delivery_id, QUEUED, "u1")


@pytest.mark.parametrize("users", [3, 150])
def test_a_batch_of_any_size_records_every_delivery_cooldown_and_decision(store, users):
    """A few rows or hundreds (PostgreSQL writes a small batch as one statement, a big one
    with COPY): the same rows either way."""
    (notification_id,) = store.append_notifications([entry(alerts=users)])
    names = [f"user{n:03d}" for n in range(users)]
    now = time.time()
    with store.deciding([notification_id]) as batch:
        batch.facts([f"NoFirstApiCall/{name}/1" for name in names],
                    [("NoFirstApiCall", name) for name in names])
        ids = [batch.add_delivery(new_delivery(notification_id, name), now) for name in names]
        batch.add_decisions([record(notification_id, delivery_id=i, user=name)
                             for i, name in zip(ids, names, strict=True)]
                            + [record(notification_id, "skipped", user="nobody")], now)
    assert len(set(ids)) == users
    deliveries = {d["id"]: d["user_id"] for d in store.list_deliveries(limit=1000)}
    assert deliveries == dict(zip(ids, names, strict=True))
    decisions = store.list_decisions(limit=1000)
    assert sorted((d["user_id"], d["delivery_id"]) for d in decisions if d["delivery_id"]) == \
        sorted(zip(names, ids, strict=True))
    assert len(decisions) == users + 1
    assert store.journal_stats(now).decided == 1
    with store.deciding([]) as batch:
        facts = batch.facts([], [("NoFirstApiCall", name) for name in names])
    assert set(facts.last_queued) == {("NoFirstApiCall", name) for name in names}


def test_a_failed_decision_batch_leaves_nothing_behind(store):
    (notification_id,) = store.append_notifications([entry()])
    with pytest.raises(RuntimeError), store.deciding([notification_id]) as batch:
        batch.add_delivery(new_delivery(notification_id), time.time())
        raise RuntimeError("decider crashed")
    assert [p.id for p in store.pending_notifications(10, 1000)] == [notification_id]
    assert store.list_deliveries() == [] and store.list_decisions() == []


def test_a_decided_notification_is_never_claimed_again(store):
    (notification_id,) = store.append_notifications([entry()])
    with store.deciding([notification_id]) as batch:
        batch.add_decisions([record(notification_id, "skipped")], time.time())
    with store.deciding([notification_id]) as batch:
        assert batch.claimed == set()


def test_facts_name_the_delivery_of_each_key_and_the_last_queued_time(store):
    delivery_id = queue_one(store, key="k1")
    (other,) = store.append_notifications([entry()])
    with store.deciding([other]) as batch:
        facts = batch.facts(["k1", "k2"], [("NoFirstApiCall", "u1"), ("NoFirstApiCall", "u9")])
        batch.add_decisions([record(other, "duplicate", delivery_id)], time.time())
    assert facts.deliveries == {"k1": delivery_id}
    assert set(facts.last_queued) == {("NoFirstApiCall", "u1")}
    assert abs(facts.last_queued[("NoFirstApiCall", "u1")] - time.time()) < 60


def test_a_delivery_without_cooldown_takes_no_cooldown_slot(store):
    (notification_id,) = store.append_notifications([entry()])
    with store.deciding([notification_id]) as batch:
        batch.add_delivery(new_delivery(notification_id, cooldown=None), time.time())
        facts = batch.facts([], [("NoFirstApiCall", "u1")])
    assert facts.last_queued == {}


def test_a_dedup_key_holds_one_delivery_whatever_the_caller_does(store):
    queue_one(store, key="same")
    with pytest.raises(StorageError):
        queue_one(store, user="u1", key="same")
    assert len(store.list_deliveries()) == 1


def test_the_watcher_wakes_on_a_commit_elsewhere_and_times_out_otherwise(store, opened):
    watcher = store.watch()
    try:
        started = time.monotonic()
        assert watcher.wait(0.2) is False
        assert time.monotonic() - started >= 0.2
        interrupt = threading.Event()
        threading.Timer(0.1, interrupt.set).start()
        assert watcher.wait(10, interrupt) is False
        other = opened()
        threading.Timer(0.1, lambda: other.append_notifications([entry()])).start()
        started = time.monotonic()
        assert watcher.wait(10) is True
        assert time.monotonic() - started < 5
        # A commit between two waits is reported by the next one.
        other.append_notifications([entry()])
        started = time.monotonic()
        assert watcher.wait(10) is True
        assert time.monotonic() - started < 5
    finally:
        watcher.close()



def test_an_idle_sqlite_watcher_looks_less_often_and_quickly_again_after_a_change(tmp_path):
    """Polling every 5 ms cost an idle worker about 9% of a core; a quiet watcher backs off.
    (PostgreSQL's watchers LISTEN: nothing polls.)"""
    store = open_store(tmp_path / "nudge.db")
    store.migrate()
    appender = open_store(tmp_path / "nudge.db")
    watcher = store.watch_journal()
    try:
        # Times relative to the watcher's own clock: a loaded machine may pause the test.
        assert watcher._interval(watcher.changed_at + 0.01) == watcher.INTERVAL
        assert watcher._interval(watcher.changed_at + 0.5) == pytest.approx(0.05)
        now = time.monotonic()
        watcher.changed_at = now - 60  # a minute of nothing
        assert watcher._interval(now) == watcher.MAX_INTERVAL
        threading.Timer(0.1, lambda: appender.append_notifications([entry()])).start()
        started = time.monotonic()
        assert watcher.wait(10) is True
        # Noticed after one capped pause (a minute's tenth would be 6 s); slack for slow CI.
        assert time.monotonic() - started < 2.0
        assert watcher.changed_at >= started  # so it looks every 5 ms again
    finally:
        watcher.close()
        appender.close_all()
        store.close_all()


def test_deciders_watchers_wake_on_appends_and_one_takes_over_when_another_goes(store, opened):
    """Every engine wakes a decider promptly after an append, and keeps doing so when one of
    the deciders goes away (on PostgreSQL the one leading, which alone is woken per append)."""
    first, second = store.watch_journal(), opened().watch_journal()
    try:
        first.wait(0.01)
        second.wait(0.01)
        if store.description.startswith("PostgreSQL"):
            assert (first.leading, second.leading) == (True, False)
            # A follower helps only with what has waited; the leader decides what arrives.
            assert (first.backlog_age, second.backlog_age) == (None, second.FOLLOW_BACKLOG)
        else:
            assert first.backlog_age is None and second.backlog_age is None
        first.close()
        appender = opened()
        for _ in range(3):
            append = threading.Timer(0.1, lambda: appender.append_notifications([entry()]))
            append.start()
            started = time.monotonic()
            assert second.wait(10) is True
            assert time.monotonic() - started < 2
            # (A wait may end for the lead it took: the append must not outlive the test.)
            append.join()
        if store.description.startswith("PostgreSQL"):
            # It takes the lead on one of its next looks (however slow the machine).
            deadline = time.monotonic() + 10
            while not second.leading and time.monotonic() < deadline:
                second.wait(0.3)
            assert second.leading and second.backlog_age is None
    finally:
        second.close()



def test_a_postgres_follower_waits_in_the_server_and_leads_the_moment_the_leader_goes(
        store, opened):
    """A follower decider waits for the leader's lock in the server instead of polling for it:
    it looks at the journal once per FOLLOW_PERIOD (to share a backlog), takes the lead as soon
    as the leader's session ends, and its wait ends at once when its worker stops."""
    if not store.description.startswith("PostgreSQL"):
        pytest.skip("PostgreSQL's leading decider")
    leader, follower = store.watch_journal(), opened().watch_journal()
    try:
        assert leader.wait(0.01) is False and leader.leading
        started = time.monotonic()
        assert follower.wait(30) is True and not follower.leading  # its period: look
        assert follower.FOLLOW_PERIOD <= time.monotonic() - started < follower.FOLLOW_PERIOD + 2
        stopping = Interrupt()
        threading.Timer(0.3, stopping.set).start()
        started = time.monotonic()
        assert follower.wait(30, stopping) is False and not follower.leading
        assert time.monotonic() - started < 0.3 + 2
        # Cancelled cleanly: the connection serves the next wait.
        leader_goes = threading.Timer(0.3, leader.close)
        leader_goes.start()
        started = time.monotonic()
        follower.wait(follower.FOLLOW_PERIOD)  # one lock wait, begun before the leader goes
        leader_goes.join()
        assert follower.leading, "the follower did not take the lead within its wait"
        assert time.monotonic() - started < follower.FOLLOW_PERIOD + 1
    finally:
        leader.close()
        follower.close()


def test_postgres_records_decisions_without_waiting_for_the_disk(store, opened, database):
    """A decider's batch need not be on disk before it commits: the journal it decides is (a
    receiver's append waits for the disk before its 200), so a crash that loses the batch only
    has it decided again. Everything else still commits durably."""
    if not store.description.startswith("PostgreSQL"):
        pytest.skip("SQLite commits each transaction to its file")
    # The test cluster turns synchronous_commit off everywhere: on, as shipped, for this
    # database, so the setting of the decider's transaction is its own.
    with store._direct() as conn:
        conn.execute("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = on', "
                     "current_database()); END $$")
    fresh = opened()
    (notification_id,) = fresh.append_notifications([entry()])
    with fresh._statement("test") as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    with fresh.deciding([notification_id]) as batch:
        assert batch.conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        batch.add_decisions([record(notification_id)], time.time())
    with fresh._statement("test") as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"  # this one only
    assert fresh.journal_stats(time.time()).pending == 0
    # A batch that cancels a waiting email (its alert resolved) waits for the disk after all:
    # lost in a crash, the email could be claimed and sent before the batch is decided again.
    queue_one(fresh, key="resolved-soon")
    (resolved,) = fresh.append_notifications([entry()])
    with fresh.deciding([resolved]) as batch:
        assert batch.cancel_resolved(["resolved-soon"], time.time())
        assert batch.conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"


def test_postgres_appends_notify_only_a_sleeping_decider_and_it_misses_none(store, opened):
    """Every NOTIFY costs the server (it serialises notifying commits, fsync included) and the
    listener: an append NOTIFYs only while the leading decider sleeps. One that committed
    unannounced while it was deciding is found before it goes to sleep."""
    if not store.description.startswith("PostgreSQL"):
        pytest.skip("SQLite wakes its watchers through app/store/wakeups.py")
    import psycopg

    from app.store.postgres import JOURNAL_CHANNEL

    probe = psycopg.connect(store.url, autocommit=True)  # another listener, to count NOTIFYs
    probe.execute(f"LISTEN {JOURNAL_CHANNEL}")
    leader = store.watch_journal()
    appender = opened()
    try:
        assert leader.wait(0.01) is False and leader.leading
        # The decider is awake (deciding, say): the append is not announced...
        (first,) = appender.append_notifications([entry()])
        assert list(probe.notifies(timeout=0.3)) == []
        # ...and is found as the decider goes to sleep, without waiting for the timeout.
        started = time.monotonic()
        assert leader.wait(10) is True
        assert time.monotonic() - started < 2
        with appender.deciding([first]) as batch:
            batch.add_decisions([record(first)], time.time())
        # Asleep: the next append wakes it at once.
        threading.Timer(0.2, lambda: appender.append_notifications([entry()])).start()
        started = time.monotonic()
        assert leader.wait(10) is True
        assert time.monotonic() - started < 2
        assert len(list(probe.notifies(timeout=1, stop_after=1))) == 1
    finally:
        leader.close()
        probe.close()


def test_a_postgres_append_stalled_mid_transaction_does_not_stall_the_decider(store):
    """A decider about to sleep waits for the appends holding the sleeper lock shared; one
    stalled before its commit (a frozen receiver) delays it by a couple of seconds at most."""
    if not store.description.startswith("PostgreSQL"):
        pytest.skip("PostgreSQL's sleeper lock")
    import psycopg

    from app.store.postgres import JOURNAL_SLEEPER_LOCK

    leader = store.watch_journal()
    stalled = psycopg.connect(store.url)  # a transaction left open, as a frozen receiver's
    try:
        assert leader.wait(0.01) is False and leader.leading
        stalled.execute("SELECT pg_advisory_xact_lock_shared(%s)", (JOURNAL_SLEEPER_LOCK,))
        woke = []
        waiting = threading.Thread(target=lambda: woke.append(leader.wait(30)))
        waiting.start()
        waiting.join(10)
        stalled.rollback()  # (frees a leader that would still be waiting for the lock)
        waiting.join()
        assert woke == [True]  # gave up on the lock within 10 s: look at the journal again
        started = time.monotonic()
        assert leader.wait(0.5) is False  # the lock is free: sleeps its time out, as before
        assert time.monotonic() - started >= 0.5
    finally:
        leader.close()
        stalled.close()


def test_a_postgres_decider_sleeps_past_a_notification_another_transaction_holds(store, opened):
    """A decider stalled inside `deciding` holds its notifications' rows; once their claim runs
    out, the leader's claim skips them (SKIP LOCKED). Counting them as waiting would have the
    leader look again and again at full speed: it sleeps, and takes them once they are free."""
    if not store.description.startswith("PostgreSQL"):
        pytest.skip("PostgreSQL's sleeping decider")
    import psycopg

    leader = store.watch_journal()
    stalled = psycopg.connect(store.url)
    try:
        (held,) = opened().append_notifications([entry()])
        stalled.execute("SELECT id FROM notifications WHERE id = %s FOR UPDATE", (held,))
        assert leader.wait(5) is True and leader.leading  # it is waiting: look
        assert store.pending_notifications(10, 1000) == []  # the decider's claim cannot take it
        started = time.monotonic()
        assert leader.wait(0.5) is False  # so it sleeps its time out, and does not spin
        assert time.monotonic() - started >= 0.5
        stalled.rollback()
        started = time.monotonic()
        assert leader.wait(5) is True  # free again: look at once
        assert time.monotonic() - started < 2
        assert [p.id for p in store.pending_notifications(10, 1000)] == [held]
    finally:
        leader.close()
        stalled.close()


def _voluntary_switches(thread_id: int) -> int:
    with open(f"/proc/self/task/{thread_id}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


def test_a_postgres_watcher_sleeps_until_notified_or_interrupted(store):
    """A dispatcher or decider waiting on PostgreSQL sleeps until a NOTIFY or until its own
    process sets its Interrupt (stop, work queued): it does not wake to look at the flag twenty
    times a second, which was the whole CPU of an idle replica."""
    if not store.description.startswith("PostgreSQL"):
        pytest.skip("SQLite's watchers look at the database now and then by design")
    watcher = store.watch_queue()
    interrupt = Interrupt()
    waited = {}

    def wait_idle():
        me = threading.get_native_id()
        before = _voluntary_switches(me)
        waited["result"] = watcher.wait(1.0, interrupt)
        waited["switches"] = _voluntary_switches(me) - before

    try:
        thread = threading.Thread(target=wait_idle)
        thread.start()
        thread.join()
        assert waited["result"] is False  # nothing happened in that second
        assert waited["switches"] <= 5  # polling every 50 ms was 20
        threading.Timer(0.2, interrupt.set).start()
        started = time.monotonic()
        assert watcher.wait(10, interrupt) is False
        assert time.monotonic() - started < 2
        assert watcher.wait(10, interrupt) is False  # still set: at once
        interrupt.clear()
        assert watcher.wait(0.2, interrupt) is False
    finally:
        watcher.close()


def test_the_dispatchers_watcher_wakes_when_deliveries_are_queued_elsewhere(store, opened):
    watcher = store.watch_queue()
    try:
        other = opened()
        threading.Timer(0.1, lambda: queue_one(other)).start()
        started = time.monotonic()
        assert watcher.wait(10) is True
        assert time.monotonic() - started < 5
    finally:
        watcher.close()


# --- delivery queue -----------------------------------------------------------------------------


def test_claim_is_exclusive_until_the_lease_expires(store):
    queue_one(store)
    now = time.time()
    (first,) = store.claim_due(now, lease=60, limit=10)
    assert first.status == SENDING and first.attempts == 1 and first.alert["labels"]["user_id"] == "u1"
    assert store.claim_due(now + 1, lease=60, limit=10) == []
    (second,) = store.claim_due(now + 61, lease=60, limit=10)
    assert second.id == first.id and second.attempts == 2
    outcomes = [a["outcome"] for a in store.list_attempts(first.id)]
    assert outcomes == ["abandoned", "sending"]


def test_a_claim_returns_the_delivery_as_queued_with_its_users_suppressions(store):
    """What a sender gets from a claim: the delivery's fields as they were queued (non-ASCII
    user ids and labels included) and, where the engine reads them in the same round trip,
    the user's suppressions (None: the dispatcher reads them itself)."""
    queue_one(store, user="zoë")
    queue_one(store, user="ann")
    store.add_suppression("zoë", "OtherRule", "link", time.time())
    store.add_category_suppression("zoë", "billing, \"quoted\"", "link", time.time())
    now = time.time()
    zoe, ann = store.claim_due(now, lease=60, limit=2)
    assert (zoe.user_id, zoe.rule, zoe.template, zoe.kind, zoe.attempts) == (
        "zoë", "NoFirstApiCall", "onboarding_first_call", "firing", 1)
    assert zoe.alert == {"labels": {"alertname": "NoFirstApiCall", "user_id": "zoë"},
                         "startsAt": "2026-11-22T20:04:34Z"}
    assert zoe.external_url == "http://alertmanager:9093" and zoe.resolved is False
    assert zoe.attempt_id is not None and zoe.lease_until == pytest.approx(now + 60)
    assert zoe.created_epoch == pytest.approx(now, abs=60)
    if zoe.suppressions is not None:
        assert zoe.suppressions == ({"OtherRule"}, {"billing, \"quoted\""})
        assert ann.suppressions == (set(), set())
    assert store.user_suppressions("zoë") == ({"OtherRule"}, {"billing, \"quoted\""})


def test_claims_take_the_oldest_due_first_and_respect_the_limit(store):
    ids = [queue_one(store, user=f"u{n}") for n in range(5)]
    now = time.time() + 1
    claimed = store.claim_due(now, lease=60, limit=3)
    assert [d.id for d in claimed] == ids[:3]
    assert [d.id for d in store.claim_due(now, lease=60, limit=10)] == ids[3:]


def test_a_claim_whose_lease_expired_cannot_overwrite_the_newer_claim(store):
    queue_one(store)
    now = time.time()
    (old,) = store.claim_due(now, lease=10, limit=1)
    (new,) = store.claim_due(now + 11, lease=10, limit=1)
    assert store.settle(new, SENT, now + 12, recipient="ada@example.com")
    assert not store.settle(old, QUEUED, now + 13, error="late failure", retry_at=now + 60)
    (row,) = store.list_deliveries()
    assert (row["status"], row["last_error"], row["recipient"]) == (SENT, None, "ada@example.com")
    outcomes = [a["outcome"] for a in store.list_attempts(new.id)]
    assert outcomes == ["retry (after its lease expired)", "sent"]


def test_settle_many_records_each_outcome_in_one_call(store):
    ids = [queue_one(store, user=f"u{n}") for n in range(3)]
    now = time.time()
    _, stale, _ = store.claim_due(now, lease=10, limit=3)
    first, stale_again, third = store.claim_due(now + 11, lease=10, limit=3)  # leases ran out
    results = store.settle_many([
        Outcome(first, SENT, recipient="u0@example.com"),
        Outcome(stale, QUEUED, error="late failure", retry_at=now + 60),
        Outcome(third, QUEUED, recipient="u2@example.com", error="451 try later",
                retry_at=now + 30),
    ], now + 12)
    assert results == [True, False, True]
    rows = {row["id"]: row for row in store.list_deliveries()}
    assert (rows[ids[0]]["status"], rows[ids[0]]["recipient"]) == (SENT, "u0@example.com")
    assert rows[ids[1]]["status"] == SENDING  # the newer claim still owns it
    assert (rows[ids[2]]["status"], rows[ids[2]]["last_error"]) == (QUEUED, "451 try later")
    assert [a["outcome"] for a in store.list_attempts(ids[1])] == [
        "retry (after its lease expired)", "sending"]
    assert store.settle_many([Outcome(stale_again, SENT)], now + 13) == [True]
    assert store.settle_many([], now) == []


def test_an_outcome_whose_error_text_no_database_can_store_is_still_recorded(store):
    """A relay's reply is copied into the error: a NUL byte (PostgreSQL's text refuses it) or
    an unpaired surrogate (no UTF-8 for it) must not make the outcome unwritable, or the
    outcome writer would retry that batch, and every outcome behind it, forever."""
    queue_one(store, user="u0")
    queue_one(store, user="u1")
    now = time.time()
    first, second = store.claim_due(now, lease=60, limit=2)
    assert store.settle_many([
        Outcome(first, QUEUED, error="451 busy\x00now", retry_at=now + 30),
        Outcome(second, FAILED, recipient="u1@example.com", error="550 caf\udce9 \u00e9t\u00e9"),
    ], now + 1) == [True, True]
    rows = {row["id"]: row for row in store.list_deliveries()}
    assert rows[first.id]["last_error"] == "451 busy\ufffdnow"
    assert rows[second.id]["last_error"] == "550 caf\ufffd \u00e9t\u00e9"
    assert [a["error"] for a in store.list_attempts(second.id)] == ["550 caf\ufffd \u00e9t\u00e9"]


def test_a_retry_is_due_again_at_its_time(store):
    queue_one(store)
    now = time.time()
    (claimed,) = store.claim_due(now, lease=60, limit=1)
    assert store.next_due_at() == pytest.approx(now + 60)
    assert store.settle(claimed, QUEUED, now, error="4xx", retry_at=now + 30)
    assert store.next_due_at() == pytest.approx(now + 30)
    assert store.claim_due(now + 29, lease=60) == []
    (again,) = store.claim_due(now + 31, lease=60)
    assert again.attempts == 2
    assert store.list_deliveries()[0]["last_error"] == "4xx"


def test_release_gives_the_delivery_back_untouched(store):
    queue_one(store)
    now = time.time()
    (claimed,) = store.claim_due(now, lease=60, limit=1)
    store.release(claimed, now)
    (again,) = store.claim_due(now, lease=60, limit=1)
    assert again.attempts == 1
    assert len(store.list_attempts(again.id)) == 1


def test_release_with_retry_at_gives_it_back_uncounted_and_not_due_before_then(store):
    queue_one(store)
    now = time.time()
    (claimed,) = store.claim_due(now, lease=60, limit=1)
    store.release(claimed, now, retry_at=now + 30)
    assert store.list_deliveries()[0]["status"] == "queued"
    assert store.next_due_at() == pytest.approx(now + 30)
    assert store.claim_due(now + 29, lease=60) == []
    (again,) = store.claim_due(now + 31, lease=60)
    assert again.attempts == 1
    assert len(store.list_attempts(again.id)) == 1


def test_queue_stats_and_an_idle_queue(store):
    assert store.next_due_at() is None
    assert store.queue_stats(time.time()).depth == 0
    queue_one(store, user="u1")
    queue_one(store, user="u2")
    stats = store.queue_stats(time.time() + 5)
    assert stats.depth == 2 and stats.oldest_age >= 5


def test_listings_filter_and_limit(store):
    for n in range(3):
        queue_one(store, user=f"u{n}")
    assert [d["user_id"] for d in store.list_deliveries()] == ["u2", "u1", "u0"]
    assert [d["user_id"] for d in store.list_deliveries(user="u1")] == ["u1"]
    assert len(store.list_deliveries(limit=2)) == 2
    assert store.list_deliveries(status=SENT) == []
    assert [d["user_id"] for d in store.list_decisions(user="u0")] == ["u0"]
    assert len(store.list_decisions(rule="NoFirstApiCall", limit=1)) == 1


# --- suppressions -------------------------------------------------------------------------------


def test_suppressions_add_once_list_and_remove(store):
    assert store.add_suppression("u1", "*", "cli", time.time())
    assert not store.add_suppression("u1", "*", "link", time.time())
    assert store.add_suppression("u1", "UsageDropped", "link", time.time())
    assert store.suppression_scopes("u1") == {"*", "UsageDropped"}
    assert store.suppression_scopes("u2") == set()
    assert [(r["scope"], r["source"]) for r in store.list_suppressions("u1")] == [
        ("*", "cli"), ("UsageDropped", "link")]
    assert store.remove_suppression("u1", "*")
    assert not store.remove_suppression("u1", "*")
    assert store.suppression_scopes("u1") == {"UsageDropped"}


def test_category_suppressions_add_once_list_and_remove_apart_from_rule_ones(store):
    assert store.add_category_suppression("u1", "Billing", "page", time.time())
    assert not store.add_category_suppression("u1", "Billing", "one-click", time.time())
    assert store.add_category_suppression("u1", "Quota ünd usage", "one-click", time.time())
    assert store.suppressed_categories("u1") == {"Billing", "Quota ünd usage"}
    assert store.suppressed_categories("u2") == set()
    # A category and a rule (or "all") of the same name are different suppressions.
    assert store.suppression_scopes("u1") == set()
    assert store.add_suppression("u1", "Billing", "link", time.time())
    assert store.user_suppressions("u1") == ({"Billing"}, {"Billing", "Quota ünd usage"})
    assert store.user_suppressions("u2") == (set(), set())
    assert store.add_suppression("u3", "*", "link", time.time())
    assert store.users_suppressions(["u1", "u2", "u3", "u1"]) == {
        "u1": ({"Billing"}, {"Billing", "Quota ünd usage"}), "u2": (set(), set()),
        "u3": ({"*"}, set())}
    assert store.users_suppressions([]) == {}
    assert store.remove_suppression("u1", "Billing")
    assert [(r["user_id"], r["category"], r["source"])
            for r in store.list_category_suppressions()] == [
        ("u1", "Billing", "page"), ("u1", "Quota ünd usage", "one-click")]
    assert store.list_category_suppressions("u2") == []
    assert store.remove_category_suppression("u1", "Billing")
    assert not store.remove_category_suppression("u1", "Billing")
    assert store.suppressed_categories("u1") == {"Quota ünd usage"}


def test_latest_annotations_by_rule_are_those_of_each_rules_newest_delivery(store):
    def queue(rule: str, user: str, annotations: dict, key: str) -> None:
        (notification_id,) = store.append_notifications([entry()])
        alert = {"labels": {"alertname": rule, "user_id": user}, "annotations": annotations,
                 "startsAt": "2026-11-22T20:04:34Z"}
        delivery = new_delivery(notification_id, user, rule, key=key)
        with store.deciding([notification_id]) as batch:
            batch.add_delivery(NewDelivery(**{**delivery.__dict__, "alert_json": json.dumps(alert)}),
                               time.time())

    assert store.latest_annotations_by_rule("u1") == {}
    queue("QuotaNearlyExhausted", "u1", {"nudge_category": "usage"}, "q1")
    queue("QuotaNearlyExhausted", "u1", {"nudge_category": "usage", "nudge_title": "Usage"}, "q2")
    queue("PaymentFailed", "u1", {}, "p1")
    queue("PaymentFailed", "u2", {"nudge_title": "Not u1's"}, "p2")
    assert store.latest_annotations_by_rule("u1") == {
        "QuotaNearlyExhausted": {"nudge_category": "usage", "nudge_title": "Usage"},
        "PaymentFailed": {},
    }


# --- several processes --------------------------------------------------------------------------

APPENDER = """
import sys, time
from app.store import JournalEntry, open_store
store = open_store(sys.argv[1])
ids = []
for n in range(int(sys.argv[3])):
    ids += store.append_notifications([JournalEntry(time.time(), sys.argv[2], "firing", "g", 1, 0,
                                                    '{"n": %d}' % n)])
print(" ".join(map(str, ids)))
"""


def run_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_processes_appending_at_once_each_get_every_notification_stored(store, database):
    children = [run_python(APPENDER, database, f"p{n}", "100") for n in range(4)]
    ids = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        ids += [int(i) for i in out.split()]
    assert len(ids) == len(set(ids)) == 400
    assert store.journal_stats(time.time()).pending == 400


DECIDER = """
import sys
from app.decider import Decider
from app.policy import AlertPolicy
from app.store import open_store
store = open_store(sys.argv[1])
decider = Decider(store, AlertPolicy(), max_notifications=int(sys.argv[2]), max_alerts=50)
idle = 0
while idle < 20:
    report = decider.decide_batch()
    idle = idle + 1 if report is None else 0
print("done")
"""


def notification_body(users: list[str], starts_at: str = "2026-11-22T20:04:34Z") -> str:
    return json.dumps({
        "version": "4", "receiver": "nudge", "status": "firing", "groupKey": "{}:{}",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093", "truncatedAlerts": 0,
        "alerts": [{
            "status": "firing", "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
            "labels": {"alertname": "NoFirstApiCall", "user_id": user,
                       "email_template": "onboarding_first_call"},
            "annotations": {}, "generatorURL": "", "fingerprint": f"fp-{user}",
        } for user in users],
    })


def test_two_deciders_racing_decide_each_notification_once(store, database):
    # Every user appears in three notifications (a repeat and an HA peer): one email each.
    bodies = [notification_body([f"u{n}", f"u{n + 1}", f"u{n + 2}"]) for n in range(0, 300, 1)]
    store.append_notifications([entry(body, alerts=3) for body in bodies[:100]])
    deciders = [run_python(DECIDER, database, size) for size in ("7", "11")]
    for start in range(100, 300, 50):
        store.append_notifications([entry(body, alerts=3) for body in bodies[start:start + 50]])
    for child in deciders:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0 and "done" in out, err
    assert store.journal_stats(time.time()).pending == 0
    decisions = store.list_decisions()
    assert len(decisions) == 900
    per_notification: dict[int, int] = {}
    for decision in decisions:
        per_notification[decision["notification_id"]] = per_notification.get(
            decision["notification_id"], 0) + 1
    assert set(per_notification.values()) == {3}
    users = sorted(d["user_id"] for d in store.list_deliveries())
    assert users == sorted({f"u{n}" for n in range(302)})
    assert sum(d["outcome"] == "queued" for d in decisions) == 302


def test_a_renewed_lease_keeps_the_claim_and_a_lost_claim_cannot_renew(store):
    queue_one(store)
    now = time.time()
    (claimed,) = store.claim_due(now, lease=10, limit=1)
    assert store.renew_leases([claimed], now + 100) == {claimed.id}
    assert store.claim_due(now + 50, lease=10) == []
    (taken,) = store.claim_due(now + 101, lease=10)
    assert store.renew_leases([claimed], now + 200) == set()
    assert not store.settle(claimed, SENT, now + 102)
    assert store.settle(taken, SENT, now + 103)


CLAIMER = """
import sys, time
from app.store import SENT, open_store
store = open_store(sys.argv[1])
mine = []
idle = 0
while idle < 10:
    claimed = store.claim_due(time.time(), 60, limit=5)
    idle = 0 if claimed else idle + 1
    for delivery in claimed:
        mine.append(delivery.id)
        store.settle(delivery, SENT, time.time())
print(" ".join(map(str, mine)))
"""


def test_senders_in_several_processes_never_claim_the_same_delivery(store, database):
    (notification_id,) = store.append_notifications([entry()])
    with store.deciding([notification_id]) as batch:
        for n in range(200):
            batch.add_delivery(new_delivery(notification_id, f"u{n}", cooldown=None), time.time())
    children = [run_python(CLAIMER, database) for _ in range(4)]
    claimed = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        claimed += [int(i) for i in out.split()]
    assert len(claimed) == len(set(claimed)) == 200
    assert {d["status"] for d in store.list_deliveries()} == {SENT}


def test_a_copy_carries_history_queue_cooldowns_and_suppressions(store, opened, tmp_path):
    source = opened(str(tmp_path / "source.db"))
    source.migrate()
    sent = queue_one(source, user="u1")
    (claimed,) = source.claim_due(time.time(), 60)
    source.settle(claimed, SENT, time.time(), recipient="u1@example.com")
    waiting = queue_one(source, user="u2")
    source.add_suppression("u3", "*", "link", time.time())
    source.add_category_suppression("u4", "Billing", "page", time.time())
    source.append_notifications([entry('{"pending": true}')])

    counts = store.import_rows(source.export_rows())
    assert counts["deliveries"] == 2 and counts["suppressions"] == 1
    assert counts["notifications"] == 3 and counts["attempts"] == 1
    assert store.list_deliveries() == source.list_deliveries()
    assert store.list_decisions() == source.list_decisions()
    assert store.list_attempts(sent) == source.list_attempts(sent)
    assert store.suppression_scopes("u3") == {"*"}
    assert store.suppressed_categories("u4") == {"Billing"}
    assert [p.body for p in store.pending_notifications(10, 100)] == ['{"pending": true}']
    with store.deciding([]) as batch:
        facts = batch.facts([f"NoFirstApiCall/u{n}/1" for n in (1, 2)],
                            [("NoFirstApiCall", "u1"), ("NoFirstApiCall", "u2")])
    assert facts.deliveries == {"NoFirstApiCall/u1/1": sent, "NoFirstApiCall/u2/1": waiting}
    assert set(facts.last_queued) == {("NoFirstApiCall", "u1"), ("NoFirstApiCall", "u2")}
    (next_id,) = store.append_notifications([entry()])
    assert next_id == 4  # ids continue after the copied ones
    (due,) = store.claim_due(time.time() + 1, 60)
    assert due.id == waiting and due.alert["labels"]["user_id"] == "u2"

    with pytest.raises(StorageError, match="not empty"):
        store.import_rows(source.export_rows())


# --- requeue (`nudge retry`) ----------------------------------------------------------------------


def settled_delivery(store, user: str, status: str, error: str | None = None) -> int:
    delivery_id = queue_one(store, user=user, key=f"NoFirstApiCall/{user}/1")
    (claimed,) = store.claim_due(time.time(), 60)
    store.settle(claimed, status, time.time(), recipient=f"{user}@example.com", error=error)
    return delivery_id


def test_requeue_gives_failed_and_dead_deliveries_a_fresh_budget_and_a_history_row(store):
    from app.store import DEAD, FAILED, RetrySelection

    dead = settled_delivery(store, "u1", DEAD, "451 4.7.1 greylisted")
    failed = settled_delivery(store, "u2", FAILED, "550 5.1.1 user unknown")
    sent = settled_delivery(store, "u3", SENT)
    waiting = queue_one(store, user="u4", key="NoFirstApiCall/u4/1")
    now = time.time()

    assert [r["id"] for r in store.retryable(RetrySelection())] == [dead, failed]
    assert [r["id"] for r in store.retryable(RetrySelection(statuses=(DEAD,)))] == [dead]
    assert [r["id"] for r in store.retryable(RetrySelection(user="u2"))] == [failed]
    assert [r["id"] for r in store.retryable(RetrySelection(ids=(failed, sent)))] == [failed]
    assert store.retryable(RetrySelection(rule="Other")) == []
    assert store.retryable(RetrySelection(since=now + 60)) == []
    assert store.retryable(RetrySelection(until=now - 60)) == []
    assert len(store.retryable(RetrySelection(since=now - 60, until=now + 60))) == 2

    later = now + 5
    assert store.requeue([dead, failed, sent, waiting, 999], later, "requeued by test") == [
        dead, failed]

    rows = {r["id"]: r for r in store.list_deliveries()}
    assert rows[dead]["status"] == QUEUED and rows[dead]["attempts"] == 0
    assert rows[dead]["last_error"] is None
    assert rows[sent]["status"] == SENT and rows[waiting]["attempts"] == 0
    log = store.list_attempts(dead)
    assert [a["outcome"] for a in log] == ["dead", "requeued"]
    assert log[-1]["error"] == "requeued by test; was dead after 1 attempt: 451 4.7.1 greylisted"
    assert store.retryable(RetrySelection()) == []

    claimed = store.claim_due(later, 60, limit=10)
    assert {d.id for d in claimed} == {dead, failed, waiting}
    requeued = next(d for d in claimed if d.id == dead)
    assert requeued.attempts == 1  # a fresh budget
    assert requeued.created_epoch == pytest.approx(later, abs=0.01)  # a fresh max_age clock
    # Being sent: a second `nudge retry` leaves it alone.
    assert store.requeue([dead], later, "again") == []
    # The dedup key and the cooldown stay with it: repeats are still duplicates.
    with store.deciding([]) as batch:
        facts = batch.facts(["NoFirstApiCall/u1/1"], [("NoFirstApiCall", "u1")])
    assert facts.deliveries == {"NoFirstApiCall/u1/1": dead}
    assert ("NoFirstApiCall", "u1") in facts.last_queued


def test_requeue_by_two_callers_at_once_requeues_each_delivery_once(store, opened):
    from app.store import DEAD

    dead = settled_delivery(store, "u1", DEAD, "451")
    stores = [opened() for _ in range(4)]
    start = threading.Barrier(len(stores))
    results: list[list[int]] = []

    def requeue(each):
        start.wait()
        results.append(each.requeue([dead], time.time(), "requeued"))
        each.close()

    threads = [threading.Thread(target=requeue, args=(each,)) for each in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(map(len, results)) == [0, 0, 0, 1]
    assert [a["outcome"] for a in store.list_attempts(dead)] == ["dead", "requeued"]


# --- retention --------------------------------------------------------------------------------


def decided(store, body: str, user: str, key: str | None, status: str | None = None,
            outcome: str = "queued", duplicate_of: int | None = None) -> tuple[int, int | None]:
    """A notification decided into one decision (and a delivery when `key` is given)."""
    (notification_id,) = store.append_notifications([entry(body)])
    delivery_id = duplicate_of
    with store.deciding([notification_id]) as batch:
        if key:
            delivery_id = batch.add_delivery(new_delivery(notification_id, user, key=key),
                                             time.time())
        batch.add_decisions([record(notification_id, outcome, delivery_id, user)], time.time())
    if key and status:
        (claimed,) = store.claim_due(time.time(), 60)
        store.settle(claimed, status, time.time(), recipient=f"{user}@example.com",
                     error="boom" if status != SENT else None)
    return notification_id, delivery_id


def test_prune_deletes_old_history_and_keeps_what_stops_a_resend(store):
    from app.pruning import prune
    from app.store import RetrySelection

    _, first = decided(store, '{"old": "ada@example.com"}', "u1", "K1", SENT)
    _, latest = decided(store, '{"newer": "ada@example.com"}', "u1", "K2", SENT)
    decided(store, '{"skipped": true}', "u2", None, outcome="skipped")
    _, waiting = decided(store, '{"waiting": true}', "u3", "K3")
    store.add_suppression("u4", "*", "link", time.time())
    store.append_notifications([entry('{"undecided": true}')])
    before = time.time() + 1

    expected = store.prunable(before)
    assert (expected.raw_bodies, expected.decisions, expected.attempts, expected.deliveries) == (
        4, 4, 2, 1)

    pruned = prune(store, before, batch=2, pause=0)

    assert (pruned.raw_bodies, pruned.decisions, pruned.attempts, pruned.deliveries) == (
        4, 4, 2, 1)
    assert store.prunable(before).rows == 0
    assert store.list_decisions() == []
    assert store.list_attempts(first) == [] and store.list_attempts(latest) == []
    rows = {r["id"]: r for r in store.list_deliveries()}
    assert set(rows) == {first, latest, waiting}
    assert rows[first]["status"] == SENT and rows[first]["recipient"] is None  # reduced
    assert rows[latest]["recipient"] == "u1@example.com"  # the pair's latest stays whole
    assert store.retryable(RetrySelection(ids=(first,), statuses=(SENT,))) == []
    # What decides a re-send is all there: dedup keys, the cooldown, the suppression.
    with store.deciding([]) as batch:
        facts = batch.facts(["K1", "K2", "K3"], [("NoFirstApiCall", "u1")])
    assert facts.deliveries == {"K1": first, "K2": latest, "K3": waiting}
    assert ("NoFirstApiCall", "u1") in facts.last_queued
    assert store.suppression_scopes("u4") == {"*"}
    # Waiting work is untouched: the undecided notification, the queued delivery's alert.
    assert [p.body for p in store.pending_notifications(10, 100)] == ['{"undecided": true}']
    (due,) = store.claim_due(time.time(), 60)
    assert due.id == waiting and due.alert["labels"]["user_id"] == "u3"
    # A repeat decided after pruning can still name the reduced delivery as its original.
    decided(store, '{"repeat": true}', "u1", None, outcome="duplicate", duplicate_of=first)
    assert [d["delivery_id"] for d in store.list_decisions()] == [first]



def test_prune_deletes_the_hold_log_older_than_the_cutoff(store):
    from app.pruning import prune

    _, waiting = decided(store, '{"waiting": true}', "u3", "K3")
    (claimed,) = store.claim_due(time.time(), 60)
    with store.send_gate(claimed, time.time(), 86400) as gate:
        gate.hold(time.time(), "quiet_hours", "waiting: quiet hours until 08:00 UTC")
    assert [e["reason"] for e in store.list_delivery_events(waiting)] == ["quiet_hours"]
    assert prune(store, time.time() - 3600, pause=0).hold_events == 0
    assert store.prunable(time.time() + 1).hold_events == 1
    assert prune(store, time.time() + 1, pause=0).hold_events == 1
    assert store.list_delivery_events(waiting) == []


def test_prune_reduces_old_cancelled_deliveries_too(store):
    """A cancelled email's alert (which may hold addresses) goes like a sent one's."""
    from app.pruning import prune

    _, cancelled = decided(store, '{"old": true}', "u1", "K1")
    with store.deciding([]) as batch:
        batch.cancel_resolved(["K1"], time.time())
    decided(store, '{"newer": true}', "u1", "K2", SENT)
    assert prune(store, time.time() + 1, pause=0).deliveries == 1
    rows = {r["id"]: r for r in store.list_deliveries()}
    assert rows[cancelled]["status"] == "cancelled"
    exported = {table: (columns, rows) for table, columns, rows in store.export_rows()}
    columns, deliveries = exported["deliveries"]
    (reduced,) = [dict(zip(columns, r, strict=True)) for r in deliveries
                  if r[columns.index("id")] == cancelled]
    assert reduced["pruned_at"] and json.loads(reduced["alert"]) == {}


def test_prune_deletes_what_the_frequency_cap_counted_before_the_cutoff(store):
    from app.pruning import prune

    decided(store, '{"capped": true}', "u1", "K1")
    (claimed,) = store.claim_due(time.time(), 60)
    with store.send_gate(claimed, time.time(), 86400) as gate:
        gate.send(True, "allowed", "allowed")
    store.settle(claimed, SENT, time.time(), recipient="u1@example.com")
    assert prune(store, time.time() - 3600, pause=0).cap_entries == 0
    assert store.prunable(time.time() + 1).cap_entries == 1
    assert prune(store, time.time() + 1, pause=0).cap_entries == 1
    assert store.prunable(time.time() + 1).cap_entries == 0

def test_prune_keeps_everything_newer_than_the_cutoff(store):
    from app.pruning import prune

    decided(store, '{"recent": true}', "u1", "K1", SENT)
    pruned = prune(store, time.time() - 3600, pause=0)
    assert pruned.rows == 0
    assert len(store.list_decisions()) == 1
    assert store.list_deliveries()[0]["recipient"] == "u1@example.com"
