"""Three `nudge serve` replicas on one PostgreSQL database, as the README's replica setup runs.

Each replica is a real process tree (supervisor, gunicorn, delivery worker) with its own
config file and metrics folder; the SMTP server and the PostgreSQL cluster are real too. The
cluster is this module's own, because one test stops and restarts it.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app.store import StorageError, open_store
from tests.conftest import ROOT, TOKEN
from tests.postgres_server import PostgresServer
from tests.processes import NudgeProcess, wait_until
from tests.smtp_servers import RecordingServer

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
REPLICAS = 3


@pytest.fixture(scope="module")
def cluster():
    server = PostgresServer().init().start()
    yield server
    server.destroy()


@pytest.fixture
def database(cluster):
    url = cluster.create_database()
    yield url
    store = open_store(url)
    store.close_all()


def replica_config(tmp_path, database: str, smtp_url: str, n: int, **sections) -> dict:
    config = {
        "database": database,
        "secret_key": "shared-by-every-replica-at-least-32-bytes",
        "templates_dir": str(ROOT / "email_templates"),
        "public_url": "https://nudge.example.com",
        "webhook": {"token": TOKEN},
        # A 1 s SMTP timeout (room for a loaded machine: a slower reply would be retried, and a
        # message already sent be sent again); one send (6 commands) fits the 6 s lease, as
        # start-up requires.
        "smtp": {"url": smtp_url + "?timeout=1", "connections": 4},
        "delivery": {"outbox_dir": str(tmp_path / f"outbox{n}"), "lease": "6s",
                     "retry_backoff": "0.2s"},
        "metrics": {"multiproc_dir": str(tmp_path / f"metrics{n}")},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def start_replicas(tmp_path, database, smtp_url, count=REPLICAS, **sections) -> list[NudgeProcess]:
    replicas = []
    for n in range(count):
        folder = tmp_path / f"replica{n}"
        folder.mkdir()
        replicas.append(NudgeProcess(folder, replica_config(tmp_path, database, smtp_url, n,
                                                            **sections)))
    # All at once: migrations must run exactly once whoever comes first.
    for replica in replicas:
        replica.start(wait_ready=False)
    for replica in replicas:
        wait_until(replica.ready, timeout=60, message=f"replica ready:\n{replica.output}")
    return replicas


def stop_all(replicas: list[NudgeProcess]) -> None:
    for replica in replicas:
        if replica.process.poll() is None:
            replica.stop()


def alert(user: str, starts_at: str = "2026-11-22T20:04:34Z") -> dict:
    return {
        "status": "firing", "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "", "fingerprint": f"fp-{user}",
        "labels": {"alertname": "NoFirstApiCall", "user_id": user, "email": f"{user}@example.com",
                   "email_template": "onboarding_first_call"},
        "annotations": {"summary": "no first call"},
    }


def notification(alerts: list[dict], group: str = "g") -> bytes:
    return json.dumps({
        "version": "4", "receiver": "nudge", "status": "firing",
        "groupKey": f'{{}}:{{group="{group}"}}', "groupLabels": {"group": group},
        "commonLabels": {}, "commonAnnotations": {}, "truncatedAlerts": 0,
        "externalURL": "http://alertmanager:9093", "alerts": alerts,
    }).encode()


def recipients(smtp: RecordingServer) -> Counter:
    return Counter(address for message in smtp.messages for address in message.rcpt_tos)


def test_identical_posts_spread_over_replicas_make_exactly_one_email(tmp_path, database):
    with RecordingServer() as smtp:
        replicas = start_replicas(tmp_path, database, smtp.url)
        try:
            bodies = [notification([alert("ada")])] * 30
            # The same alert in other groups (another route, an HA Alertmanager's group key).
            bodies += [notification([alert("ada"), alert(f"other{n}")], group=f"g{n}")
                       for n in range(6)]
            targets = itertools.cycle(replicas)
            jobs = [(next(targets).url, body) for body in bodies]
            with ThreadPoolExecutor(max_workers=12) as pool:
                codes = list(pool.map(lambda job: requests.post(
                    job[0] + "/webhook", data=job[1], headers=AUTH, timeout=30).status_code, jobs))
            assert codes == [200] * len(bodies)
            store = open_store(database)
            wait_until(lambda: store.journal_stats(time.time()).pending == 0, timeout=30,
                       message="every notification decided")
            smtp.wait_for(7, timeout=30)
            time.sleep(1.0)  # a second email to ada would arrive now
        finally:
            stop_all(replicas)
    counts = recipients(smtp)
    assert counts["ada@example.com"] == 1
    assert sum(counts.values()) == 7
    decisions = store.list_decisions(user="ada")
    assert len(decisions) == 36
    assert sorted(Counter(d["outcome"] for d in decisions).items()) == [
        ("duplicate", 35), ("queued", 1)]
    store.close_all()


def test_a_replica_killed_mid_delivery_loses_nobody_its_email(tmp_path, database):
    users = [f"user{n:03d}" for n in range(600)]
    # 10 ms per SMTP command: a few seconds of sending across three replicas.
    with RecordingServer(latency=0.01) as smtp:
        replicas = start_replicas(tmp_path, database, smtp.url)
        victim = replicas[0]
        try:
            for start, replica in zip(range(0, 600, 100), itertools.cycle(replicas)):
                response = requests.post(
                    replica.url + "/webhook", timeout=30, headers=AUTH,
                    data=notification([alert(u) for u in users[start:start + 100]],
                                      group=f"batch{start}"))
                assert response.status_code == 200
            smtp.wait_for(100, timeout=60)
            victim.kill_group()
            smtp.wait_for(600, timeout=120)
            store = open_store(database)
            wait_until(lambda: all(d["status"] == "sent" for d in store.list_deliveries()),
                       timeout=60, message="every delivery sent")
            time.sleep(1.0)
        finally:
            stop_all(replicas[1:])
    counts = recipients(smtp)
    assert set(counts) == {f"{u}@example.com" for u in users}
    duplicates = sum(count - 1 for count in counts.values())
    # At most what the killed replica had on the wire: its SMTP connections.
    assert duplicates <= 4, counts.most_common(5)
    attempts = [a["outcome"] for d in store.list_deliveries() for a in store.list_attempts(d["id"])]
    assert attempts.count("sent") == 600
    store.close_all()


def test_postgres_down_for_10s_means_503s_then_every_accepted_alert_sent_once(
        tmp_path, cluster, database):
    with RecordingServer() as smtp:
        # A lease longer than the outage, as the default (2m) is: a message sent just before
        # the database went away is recorded when it returns, never claimed and sent again.
        replicas = start_replicas(tmp_path, database, smtp.url, delivery={"lease": "30s"})
        answers: dict[str, list[int]] = {}
        stop_stream = threading.Event()

        def stream():
            # Like Alertmanager: one POST per user, a failed POST is retried until it succeeds.
            for n in itertools.count():
                user = f"stream{n}"
                codes = answers.setdefault(user, [])
                while not stop_stream.is_set():
                    try:
                        code = requests.post(replicas[n % REPLICAS].url + "/webhook",
                                             data=notification([alert(user)], group=user),
                                             headers=AUTH, timeout=15).status_code
                    except requests.RequestException:
                        code = 0
                    codes.append(code)
                    if code == 200:
                        break
                    time.sleep(0.2)
                if stop_stream.is_set():
                    return
                time.sleep(0.05)

        try:
            thread = threading.Thread(target=stream, daemon=True)
            thread.start()
            wait_until(lambda: len(answers) >= 20, timeout=30, message="stream running")
            cluster.stop()
            down_since = len(answers)
            time.sleep(5)
            for replica in replicas:
                ready = requests.get(replica.url + "/-/ready", timeout=10)
                assert ready.status_code == 503 and "unreachable" in ready.text
                assert "pg-test-secret" not in ready.text
            time.sleep(5)
            assert len(answers) <= down_since + 1, "accepted POSTs while the database was down"
            cluster.start()
            wait_until(lambda: len(answers) >= down_since + 20, timeout=60,
                       message="stream accepted again after the restart")
            stop_stream.set()
            thread.join(timeout=30)
            for replica in replicas:  # each recovers by itself: no restart needed
                wait_until(replica.ready, timeout=30,
                           message=f"replica ready again:\n{replica.output}")
            accepted = {user for user, codes in answers.items() if 200 in codes}
            smtp.wait_for(len(accepted), timeout=60)
            time.sleep(1.0)
        finally:
            stop_stream.set()
            stop_all(replicas)
    refused = [code for codes in answers.values() for code in codes if code != 200]
    assert refused and set(refused) <= {503, 0}
    counts = recipients(smtp)
    assert set(counts.values()) == {1}, "an email was sent twice"
    assert {f"{user}@example.com" for user in accepted} <= set(counts), "an accepted alert lost"
    # A POST whose answer never arrived (code 0) may still have been journaled before the
    # database went away: its email is expected, like Alertmanager's retry would be a duplicate.
    unanswered = {f"{user}@example.com" for user, codes in answers.items()
                  if 0 in codes and 200 not in codes}
    assert set(counts) - {f"{user}@example.com" for user in accepted} <= unanswered
    outputs = "".join(replica.output for replica in replicas)
    assert "pg-test-secret" not in outputs


def test_the_fleet_sends_within_the_shared_rate_limit(tmp_path, database):
    rate, emails = 20, 120
    with RecordingServer() as smtp:
        replicas = start_replicas(tmp_path, database, smtp.url, smtp={"rate_limit": rate})
        try:
            for n, replica in enumerate(replicas):
                response = requests.post(replica.url + "/webhook", headers=AUTH, timeout=30,
                                         data=notification([alert(f"rate{n}-{u}")
                                                            for u in range(emails // REPLICAS)],
                                                           group=f"r{n}"))
                assert response.status_code == 200
            received = smtp.wait_for(emails, timeout=60)
        finally:
            stop_all(replicas)
    times = sorted(message.accepted_at for message in received)
    # A burst of one second's worth, then `rate` per second for the whole fleet: three
    # replicas each keeping the rate on their own would take a third of this.
    minimum = (emails - rate) / rate
    assert times[-1] - times[0] >= 0.9 * minimum
    # In any second: at most the burst plus a second's rate (with some room for when each
    # accepted message is timestamped), never the three replicas' rates added up.
    for start in range(len(times)):
        window = [t for t in times[start:] if t - times[start] < 1.0]
        assert len(window) <= 2.5 * rate


def test_after_a_long_outage_a_store_reconnects_within_seconds_of_postgresql_returning(cluster,
                                                                                     database):
    """The connection pool's own retries back off exponentially (1, 2, 4, 8, 16, 32 s...): after
    a 17 s outage its next try could come 14 s after PostgreSQL is back, long enough for the
    leases of deliveries sent meanwhile to run out and another replica to send them again.
    Nudge's pool gives up a try after a few seconds, so the next caller starts a fresh one."""
    store = open_store(database)
    try:
        store.migrate()
        store.check_ready()
        cluster.stop()
        try:
            outage_ends = time.monotonic() + 17
            while time.monotonic() < outage_ends:  # callers keep trying, as replicas do
                with pytest.raises(StorageError):
                    store.check_ready()
                time.sleep(0.5)
        finally:
            cluster.start()
        back = time.monotonic()

        def ready() -> bool:
            try:
                store.check_ready()
                return True
            except StorageError:
                return False

        wait_until(ready, timeout=60, interval=0.5, message="the store to reconnect")
        assert time.monotonic() - back < 8
    finally:
        store.close_all()
