"""`delivery.processes`: the worker sends from several processes sharing the queue.

Real `nudge serve` / `nudge worker` process trees, a real SMTP relay (aiosmtpd) and real
SQLite files (and a real PostgreSQL database for the main burst test).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from app.config import ConfigError, load_config
from app.sender_processes import (
    cgroup_cpu_limit,
    cores_within,
    describe,
    process_config,
    process_count,
    split_connections,
)
from app.store import SENDING, SENT, open_store
from app.worker import MIN_CLAIM_BATCH
from tests.conftest import TOKEN
from tests.processes import NudgeProcess, children, wait_until
from tests.smtp_servers import RecordingServer

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
SENT_LINE = re.compile(r"\[(\d+)\] INFO nudge\.delivery: delivery=\d+ .* sent to ")


class PeakServer(RecordingServer):
    """A relay that remembers the most client connections it had open at once."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.peak_open = 0

    def _session_opened(self, protocol) -> bool:
        keep = super()._session_opened(protocol)
        with self._changed:
            self.peak_open = max(self.peak_open, len(self._state.open_sessions))
        return keep


def alert(user: str) -> dict:
    return {
        "status": "firing", "startsAt": "2026-11-22T20:04:34Z",
        "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": f"fp-{user}",
        "labels": {"alertname": "NoFirstApiCall", "user_id": user, "email": f"{user}@example.com",
                   "email_template": "onboarding_first_call"},
        "annotations": {"summary": "no first call"},
    }


def post_users(url: str, users: list[str], per_post: int = 100) -> None:
    for start in range(0, len(users), per_post):
        body = {
            "version": "4", "receiver": "nudge", "status": "firing",
            "groupKey": f'{{}}:{{batch="{start}"}}', "groupLabels": {"batch": str(start)},
            "commonLabels": {}, "commonAnnotations": {}, "truncatedAlerts": 0,
            "externalURL": "http://alertmanager:9093",
            "alerts": [alert(user) for user in users[start:start + per_post]],
        }
        response = requests.post(url + "/webhook", json=body, headers=AUTH, timeout=30)
        assert response.status_code == 200, response.text


def recipients(smtp: RecordingServer) -> Counter:
    return Counter(address for message in smtp.messages for address in message.rcpt_tos)


def worker_pid(supervisor_pid: int) -> int | None:
    return next((pid for pid, cmd in children(supervisor_pid).items() if b"worker" in cmd), None)


def sender_pids(worker: int) -> list[int]:
    return sorted(pid for pid, cmd in children(worker).items() if b"--sender-connections" in cmd)


def senders_by_pid(output: str) -> Counter:
    return Counter(int(pid) for pid in SENT_LINE.findall(output))


def sent_total(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("nudge_emails_sent_total{"))


# --- how processes, connections and the rate are shared --------------------------------------


def test_connections_are_split_evenly_and_no_process_is_left_without_one():
    assert split_connections(4, 2) == [2, 2]
    assert split_connections(10, 3) == [4, 3, 3]
    assert split_connections(2, 8) == [1, 1]
    assert split_connections(1, 1) == [1]


def write_files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return root


def test_a_cgroup_v2_cpu_limit_is_the_lowest_on_the_way_to_the_root(tmp_path):
    """As Kubernetes lays it out: the pod limits, the container's own cgroup does not."""
    root = write_files(tmp_path, {"kubepods/cpu.max": "max 100000",
                                  "kubepods/pod1/cpu.max": "150000 100000",
                                  "kubepods/pod1/ctr/cpu.max": "max 100000"})

    limit = cgroup_cpu_limit(root, "0::/kubepods/pod1/ctr\n")

    assert limit == 1.5
    assert cores_within(8, limit) == 2
    assert cgroup_cpu_limit(root, "0::/kubepods\n") is None  # max: no limit
    # docker run --cpus=0.5 with its own cgroup namespace: the container's cgroup is "/".
    assert cgroup_cpu_limit(write_files(tmp_path / "ns", {"cpu.max": "50000 100000"}),
                            "0::/\n") == 0.5


def test_a_cgroup_v1_cpu_quota_and_none(tmp_path):
    root = write_files(tmp_path, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000",
                                  "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"})
    membership = "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n"

    assert cgroup_cpu_limit(root, membership) == 2.5
    assert cores_within(2, 2.5) == 2  # affinity allows fewer cores than the quota's time
    # Seen from inside the container: its cgroup mounted at the controller's root.
    inside = write_files(tmp_path / "in", {"cpu,cpuacct/cpu.cfs_quota_us": "-1",
                                           "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(inside, membership) is None
    assert cgroup_cpu_limit(tmp_path / "nothing", membership) is None
    assert cores_within(4, None) == 4
    assert cores_within(4, 0.2) == 1


def test_processes_default_to_one_per_core_capped_at_the_connections(config_data):
    config = load_config(data={**config_data, "smtp": {"connections": 10}})
    assert config.delivery_processes is None  # auto
    assert process_count(config, cores=4) == 4
    assert process_count(config, cores=64) == 10
    assert process_count(load_config(data={**config_data, "delivery": {"processes": 3}}),
                         cores=64) == 3
    assert load_config(data={**config_data, "delivery": {"processes": 0}}).delivery_processes \
        is None
    assert load_config(environ={"NUDGE_DELIVERY_PROCESSES": "5"},
                       data=config_data).delivery_processes == 5


def test_the_start_up_line_says_how_connections_and_rate_are_split(config_data):
    config = load_config(data={**config_data, "smtp": {"connections": 3, "rate_limit": 6},
                               "delivery": {"processes": 8}})
    shares = split_connections(3, process_count(config))
    assert describe(config, shares) == (
        "sending from 3 sender process(es) with 1, 1, 1 SMTP connection(s) (3 in total); "
        "this one decides; delivery.processes 8 is more than smtp.connections allows; rate "
        "limit 6/s split 2, 2, 2")
    one = load_config(data={**config_data, "smtp": {"connections": 3},
                            "delivery": {"processes": 1}})
    assert describe(one, split_connections(3, process_count(one))) == (
        "sending from this process with 3 SMTP connection(s)")


def test_a_bad_process_count_is_one_clear_line(config_data):
    with pytest.raises(ConfigError) as caught:
        load_config(data={**config_data, "delivery": {"processes": "many"}})
    assert caught.value.problems == [
        "defaults: delivery.processes: expected a whole number >= 1, or auto, got 'many' "
        "(allowed: a whole number >= 1, or auto)"]
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"NUDGE_DELIVERY_PROCESSES": "-2"}, data=config_data)
    assert "environment NUDGE_DELIVERY_PROCESSES: delivery.processes:" in caught.value.problems[0]


def test_on_sqlite_each_process_keeps_its_share_of_the_rate(config_data):
    config = load_config(data={**config_data, "smtp": {"connections": 5, "rate_limit": 10}})
    assert [process_config(config, k).smtp_rate_limit for k in (3, 2)] == [6, 4]
    assert process_config(config, 3).smtp_connections == 3


# --- real process trees ----------------------------------------------------------------------


def serve_config(config_data, smtp_url: str, **delivery) -> dict:
    return {**config_data,
            # A 1 s SMTP timeout (a slower reply on a loaded machine would be retried, and a
            # message already sent be sent again); one send fits the 6 s lease, as start-up
            # requires.
            "smtp": {"url": smtp_url + "?timeout=1", "connections": 4},
            "delivery": {**config_data["delivery"], "processes": 2, "lease": "6s",
                         "retry_backoff": "0.2s", **delivery}}


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, config_data):
    if request.param == "postgres":
        config_data["database"] = request.getfixturevalue("postgres_server").create_database()
    return config_data["database"]


def test_two_processes_send_a_burst_exactly_once_within_the_total_connections(
        tmp_path, config_data, database):
    users = [f"burst{n:03d}" for n in range(300)]
    with PeakServer(latency=0.002) as smtp:
        service = NudgeProcess(tmp_path, serve_config(config_data, smtp.url)).start()
        try:
            post_users(service.url, users)
            smtp.wait_for(len(users), timeout=60)
            store = open_store(database)
            wait_until(lambda: all(d["status"] == SENT for d in store.list_deliveries()),
                       timeout=30, message="every delivery recorded as sent")
            time.sleep(0.5)  # anything sent twice would arrive now
            total = sent_total(service.url)
            store.close_all()
        finally:
            assert service.stop() == 0, service.output
    assert recipients(smtp) == Counter({f"{user}@example.com": 1 for user in users})
    by_process = senders_by_pid(service.output)
    assert len(by_process) == 2 and min(by_process.values()) > 0, by_process
    assert smtp.peak_open <= 4
    # /metrics adds up the counters of every process, the sender process's too.
    assert total == len(users)
    assert ("sending from 2 sender process(es) with 2, 2 SMTP connection(s) (4 in total); "
            "this one decides") in service.output


def test_a_sender_process_killed_mid_burst_is_restarted_and_nobody_loses_their_email(
        tmp_path, config_data):
    users = [f"kill{n:03d}" for n in range(400)]
    with RecordingServer(latency=0.005) as smtp:
        service = NudgeProcess(tmp_path, serve_config(config_data, smtp.url)).start()
        try:
            worker = wait_until(lambda: worker_pid(service.process.pid), message="the worker")
            first = wait_until(lambda: len(sender_pids(worker)) == 2 and sender_pids(worker),
                               message="two sender processes")
            victim = first[0]
            post_users(service.url, users)
            wait_until(lambda: senders_by_pid(service.output)[victim] >= 20, timeout=30,
                       message="the sender process sending")
            os.kill(victim, signal.SIGKILL)
            (restarted,) = wait_until(lambda: [p for p in sender_pids(worker) if p not in first],
                                      timeout=15, message="the sender process restarted")
            smtp.wait_for(len(users), timeout=60)
            store = open_store(config_data["database"])
            wait_until(lambda: all(d["status"] == SENT for d in store.list_deliveries()),
                       timeout=30, message="every delivery recorded as sent")
            time.sleep(0.5)
            attempts = [a["outcome"] for d in store.list_deliveries()
                        for a in store.list_attempts(d["id"])]
            # What the killed process had claimed and not yet recorded: the attempts its claim
            # left open, closed as abandoned when another process took the delivery over.
            abandoned = {d["recipient"] for d in store.list_deliveries()
                         if "abandoned" in [a["outcome"] for a in store.list_attempts(d["id"])]}
            metrics_files = os.listdir(config_data["metrics"]["multiproc_dir"])
        finally:
            assert service.stop() == 0, service.output
    counts = recipients(smtp)
    assert set(counts) == {f"{user}@example.com" for user in users}
    # Twice at most, and only what the killed process had claimed and not recorded: on the
    # wire on its 2 connections, or just sent with its outcome still on the way to the store.
    assert max(counts.values()) <= 2
    assert {recipient for recipient, count in counts.items() if count > 1} <= abandoned
    # Its claims in hand: one on each of its 2 connections, and up to MIN_CLAIM_BATCH claimed
    # ahead of them; and a few more.
    assert len(abandoned) <= 2 + MIN_CLAIM_BATCH + 2, abandoned
    assert attempts.count("sent") == len(users)
    assert re.search(rf"sender process \d \(pid {victim}\) exited with code -9; restarting it",
                     service.output)
    assert senders_by_pid(service.output)[restarted] > 0
    # The dead process's live gauges no longer count (its counters still do).
    assert not [name for name in metrics_files if name.startswith("gauge_live")
                and name.endswith(f"_{victim}.db")]


def test_sigterm_stops_the_worker_and_its_sender_processes_after_their_sends(
        tmp_path, config_data, app, client):
    # 50 ms per SMTP command: each send takes a few hundred ms, so some are in flight, and
    # enough users that some are still queued however slowly the reload before SIGTERM goes.
    users = [f"term{n:03d}" for n in range(150)]
    with RecordingServer(latency=0.05) as smtp:
        for start in range(0, len(users), 20):
            response = client.post("/webhook", headers=AUTH, json={
                "version": "4", "receiver": "nudge", "status": "firing",
                "groupKey": f"g{start}", "groupLabels": {}, "commonLabels": {},
                "commonAnnotations": {}, "truncatedAlerts": 0, "externalURL": "",
                "alerts": [alert(user) for user in users[start:start + 20]]})
            assert response.status_code == 200
        worker = NudgeProcess(tmp_path, serve_config(config_data, smtp.url),
                              command=("worker",)).start()
        try:
            senders = wait_until(lambda: len(sender_pids(worker.process.pid)) == 2
                                 and sender_pids(worker.process.pid),
                                 message="two sender processes")
            wait_until(lambda: all(senders_by_pid(worker.output)[pid] >= 2 for pid in senders),
                       timeout=30, message="both processes sending")
            # SIGHUP reloads the templates in every process.
            worker.process.send_signal(signal.SIGHUP)
            wait_until(lambda: len(set(re.findall(r"\[(\d+)\] INFO nudge.templates: templates "
                                                  r"and rules reloaded \(SIGHUP\)",
                                                  worker.output))) == 3,
                       timeout=15, message="every process reloaded")
            worker.process.send_signal(signal.SIGTERM)
            assert worker.process.wait(20) == 0, worker.output
        finally:
            worker.stop()
        assert not worker.group_alive(), "a sender process outlived the worker"
    output = worker.output
    assert "delivery worker stopped" in output and "sender process stopped" in output
    store = open_store(config_data["database"])
    statuses = {d["id"]: d["status"] for d in store.list_deliveries()}
    # In-flight sends were finished and recorded; the unstarted ones went back to the queue.
    assert SENDING not in statuses.values()
    sent = {d["recipient"] for d in store.list_deliveries() if d["status"] == SENT}
    assert sent == set(recipients(smtp)) and len(sent) < len(users)


def test_two_processes_keep_the_total_rate_limit(tmp_path, config_data):
    rate, emails = 10, 40
    with RecordingServer() as smtp:
        service = NudgeProcess(tmp_path, {**serve_config(config_data, smtp.url),
                                          "smtp": {"url": smtp.url + "?timeout=1",
                                                   "connections": 4,
                                                   "rate_limit": rate}}).start()
        try:
            post_users(service.url, [f"rate{n:02d}" for n in range(emails)])
            received = smtp.wait_for(emails, timeout=30)
        finally:
            assert service.stop() == 0, service.output
    assert len(senders_by_pid(service.output)) == 2
    times = sorted(message.accepted_at for message in received)
    # A burst of at most one second's worth in all (each process's bucket fills up to its
    # share while it waits for work), then `rate` per second in all: two processes each
    # keeping the whole rate would take a third as long.
    assert times[-1] - times[0] >= 0.9 * (emails - rate) / rate


def test_sender_processes_stop_when_their_worker_is_killed(tmp_path, config_data):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    worker = NudgeProcess(tmp_path, {**config_data, "delivery": {
        **config_data["delivery"], "processes": 2}}, command=("worker",),
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}).start()
    try:
        senders = wait_until(lambda: len(sender_pids(worker.process.pid)) == 2
                             and sender_pids(worker.process.pid), message="two sender processes")
        wait_until(lambda: worker.output.count("sender process started") == 2,
                   message="both started")
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait(5)
        wait_until(lambda: not worker.group_alive(), timeout=10,
                   message="the sender processes stopping after their worker")
    finally:
        worker.kill_group()
    for sender in senders:
        assert f"[{sender}] INFO nudge.worker: sender process stopped" in worker.output
        # Nobody is left to clean up after it: it removed its live gauges itself.
        assert not [name for name in os.listdir(metrics_dir)
                    if name.startswith("gauge_live") and name.endswith(f"_{sender}.db")]

