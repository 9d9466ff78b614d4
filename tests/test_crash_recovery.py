"""The whole service SIGKILLed between the webhook's 200 and the decider: nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import time

import requests

from app.store import open_store
from tests.conftest import TOKEN
from tests.processes import NudgeProcess, children, wait_until
from tests.smtp_servers import RecordingServer

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
NOTIFICATIONS, USERS_EACH = 12, 5


def payload(number: int) -> str:
    users = [f"crash-{number}-{n}" for n in range(USERS_EACH)]
    return json.dumps({
        "version": "4", "receiver": "nudge", "status": "firing",
        "groupKey": f'{{}}:{{batch="{number}"}}', "groupLabels": {"batch": str(number)},
        "commonLabels": {}, "commonAnnotations": {}, "truncatedAlerts": 0,
        "externalURL": "http://alertmanager:9093",
        "alerts": [{
            "status": "firing", "startsAt": "2026-11-22T20:04:34Z",
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": f"fp-{user}",
            "labels": {"alertname": "NoFirstApiCall", "user_id": user,
                       "email": f"{user}@example.com", "email_template": "onboarding_first_call"},
            "annotations": {"summary": "no first call"},
        } for user in users],
    })


def delivery_worker_pid(supervisor_pid: int) -> int:
    """The `nudge worker` child of `nudge serve` (the decider runs in it)."""
    for pid, cmdline in children(supervisor_pid).items():
        if b"worker" in cmdline:
            return pid
    raise AssertionError("no delivery worker found")


def test_notifications_answered_200_survive_sigkill_before_they_are_decided(tmp_path, config_data):
    with RecordingServer() as smtp:
        config_data["smtp"] = {"url": smtp.url}
        first = NudgeProcess(tmp_path, config_data).start()
        # Freeze the decider, so every notification below is answered and still undecided.
        worker = wait_until(lambda: _pid_or_none(first.process.pid), message="delivery worker")
        os.kill(worker, signal.SIGSTOP)
        try:
            ids = []
            for number in range(NOTIFICATIONS):
                response = requests.post(first.url + "/webhook", data=payload(number),
                                         headers=AUTH, timeout=30)
                assert response.status_code == 200, response.text
                assert response.json()["status"] == "accepted"
                ids.append(response.json()["notification_id"])
            store = open_store(config_data["database"])
            assert store.journal_stats(time.time()).pending == NOTIFICATIONS
            assert store.list_decisions() == []
        finally:
            first.kill_group()  # SIGKILL to everything, the frozen worker included
        wait_until(lambda: not first.group_alive(), timeout=15, message="all processes gone")
        assert smtp.messages == []

        second = NudgeProcess(tmp_path, config_data).start()
        try:
            expected = NOTIFICATIONS * USERS_EACH
            received = smtp.wait_for(expected, timeout=60)
            wait_until(lambda: all(d["status"] == "sent" for d in store.list_deliveries()),
                       timeout=30, message="every delivery sent")
            time.sleep(0.5)  # anything sent twice would arrive now
        finally:
            assert second.stop() == 0, second.output
    assert store.journal_stats(time.time()).pending == 0
    decisions = store.list_decisions()
    assert len(decisions) == expected
    assert {d["notification_id"] for d in decisions} == set(ids)
    assert {d["outcome"] for d in decisions} == {"queued"}
    recipients = sorted(address for message in smtp.messages for address in message.rcpt_tos)
    assert len(received) == len(smtp.messages) == expected
    assert recipients == sorted(f"crash-{n}-{u}@example.com"
                                for n in range(NOTIFICATIONS) for u in range(USERS_EACH))


def _pid_or_none(supervisor_pid: int) -> int | None:
    try:
        return delivery_worker_pid(supervisor_pid)
    except AssertionError:
        return None
