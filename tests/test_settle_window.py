"""The send/settle window: once an email is out, its outcome is recorded however long the
database takes to accept it, and never sent again. A lease that one send could outlast is
refused at start-up.

Real parts: a SQLite file locked by another process (longer than the busy timeout), an
aiosmtpd relay, the delivery worker in a thread.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from app import create_app
from app.config import ConfigError, load_config
from tests.processes import wait_until
from tests.smtp_servers import SlowServer
from tests.test_delivery import (
    RunningWorker,
    attempt_log,
    build_config,
    deliveries,
    make_alert,
    make_payload,
    post,
    queue_one,
    wait_for_statuses,
)

# SQLite's busy timeout, shortened so the test takes seconds: the database stays locked for
# many of them, and every writer (claims, lease renewals, the outcome) gives up meanwhile.
BUSY_TIMEOUT_MS = 300
HOLD_SECONDS = 4.0

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def test_an_outcome_recorded_after_the_database_was_locked_past_its_busy_timeout(
    config_data, caplog, monkeypatch
):
    monkeypatch.setattr("app.store.sqlite.BUSY_TIMEOUT_MS", BUSY_TIMEOUT_MS)
    with SlowServer(latency=0.5) as relay:  # each send takes 2 s: time to lock the database
        url = relay.url + "?timeout=2"
        config = build_config(config_data, smtp={"url": url}, delivery={"lease": "30s"})
        queue_one(config_data, url, lease="30s")
        with RunningWorker(config):
            wait_until(lambda: relay.connections >= 1, timeout=20, message="a send started")
            locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(config.database),
                                       str(HOLD_SECONDS)], stdout=subprocess.PIPE, text=True)
            try:
                assert locker.stdout.readline().strip() == "locked"
                relay.wait_for(1, timeout=10)  # sent while the database is locked
                wait_until(lambda: any("cannot record outcome sent" in r.getMessage()
                                       for r in caplog.records), timeout=10)
                assert deliveries(config)[0]["status"] == "sending"  # not recordable yet
            finally:
                assert locker.wait(timeout=30) == 0
            (row,) = wait_for_statuses(config, {1: "sent"}, timeout=20)
            time.sleep(0.5)  # a second send would come now, if any

    assert len(relay.messages) == 1
    assert row["attempts"] == 1
    assert [a["outcome"] for a in attempt_log(config, 1)] == ["sent"]


@pytest.mark.parametrize("settings, numbers", [
    ({"smtp": {"url": "smtp://relay.example.com"}, "delivery": {"lease": "30s"}},
     "SMTP timeout 10s x 6 commands + directory budget 0s = 60s"),
    ({"smtp": {"url": "smtp://u:p@relay.example.com?timeout=5"},
      "directory": {"url": "https://api.example.com/users/{user_id}", "timeout": "3s"},
      "delivery": {"lease": "45s"}},
     "SMTP timeout 5s x 9 commands + directory budget 3s = 48s"),
])
def test_a_lease_shorter_than_one_send_is_refused_with_the_numbers(settings, numbers):
    with pytest.raises(ConfigError) as caught:
        load_config(data=settings, environ={})
    (line,) = caught.value.problems
    assert line.startswith("defaults: delivery.lease: ") and numbers in line


def test_the_default_lease_fits_the_default_timeouts_with_starttls_and_a_login():
    config = load_config(data={
        "smtp": {"url": "smtp://u:p@relay.example.com"},
        "directory": {"url": "https://api.example.com/users/{user_id}"}}, environ={})
    assert config.lease == 120


def test_nudge_worker_refuses_to_start_with_a_too_short_lease(tmp_path, config_data):
    data = {**config_data, "smtp": {"url": "smtp://127.0.0.1:9?timeout=10"},
            "delivery": {**config_data["delivery"], "lease": "20s"}}
    config_file = tmp_path / "short-lease.yml"
    config_file.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, "-m", "app.cli", "--config", str(config_file),
                             "worker"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "delivery.lease: 20s is shorter than one send can take" in result.stderr


def test_leases_are_renewed_while_a_send_waits_so_nothing_is_claimed_twice(config_data):
    """Six claims at once, one send per second allowed, a 2 s lease: the last waits 5 s.
    (Renewed every half second: a loaded machine's pauses stay well inside the lease.)"""
    config = build_config(config_data, smtp={"rate_limit": 1},
                          delivery={"lease": "2s"})  # the file outbox: no SMTP timeout
    client = create_app(config).test_client()
    users = ("u1", "u2", "u3", "u4", "u5", "u6")
    post(client, make_payload(*(make_alert(u, labels={"email": f"{u}@example.com"})
                                for u in users)))
    with RunningWorker(config):
        rows = wait_for_statuses(config, {n: "sent" for n in range(1, 7)}, timeout=30)

    assert [row["attempts"] for row in rows] == [1] * 6
    assert all([a["outcome"] for a in attempt_log(config, row["id"])] == ["sent"] for row in rows)
    assert len(list(config.outbox_dir.glob("*.eml"))) == 6
