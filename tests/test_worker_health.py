"""/-/ready and /metrics report the delivery worker's health as `nudge serve` sees it: a worker
that crash-loops is "not ready", with the reason, and the metrics show it; the multiprocess
metric files of dead processes are cleaned up."""

from __future__ import annotations

import os
import signal

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import NudgeProcess, children, wait_until


def sample(text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                return s.value
    return None


def test_a_crash_looping_worker_makes_nudge_not_ready_with_the_reason(tmp_path, config_data):
    config_data["recipients"] = {"static_map": str(tmp_path / "users-missing.yml")}
    nudge = NudgeProcess(tmp_path, config_data).start(wait_ready=False)
    try:
        def not_ready_answer():
            try:
                response = requests.get(nudge.url + "/-/ready", timeout=2)
            except requests.RequestException:
                return None
            # (Before its first exit it is only "starting".)
            return response.text if response.status_code == 503 and "exited" in response.text \
                else None

        answer = wait_until(not_ready_answer, timeout=30, message="/-/ready answering 503")
        assert "delivery worker" in answer
        # The worker's own last words are the reason, as one line (no traceback), even though
        # its log lines are written by a thread of their own.
        assert ("(Error: cannot start the delivery worker: user directory file "
                f"{tmp_path / 'users-missing.yml'}: cannot read it") in answer
        metrics = requests.get(nudge.url + "/metrics", timeout=10).text
        assert sample(metrics, "nudge_delivery_worker_healthy") == 0
        wait_until(lambda: sample(requests.get(nudge.url + "/metrics", timeout=10).text,
                                  "nudge_delivery_worker_restarts_total") >= 2,
                   timeout=30, message="a second restart")
        # The receiver itself is alive: only readiness is withheld.
        assert requests.get(nudge.url + "/-/healthy", timeout=5).status_code == 200

        # Fixed: the next restart stays up, and Nudge is ready again by itself.
        (tmp_path / "users-missing.yml").write_text("u1: ada@example.com\n")
        wait_until(lambda: requests.get(nudge.url + "/-/ready", timeout=2).status_code == 200,
                   timeout=60, interval=0.5, message="ready again")
        metrics = requests.get(nudge.url + "/metrics", timeout=10).text
        assert sample(metrics, "nudge_delivery_worker_healthy") == 1
    finally:
        nudge.stop()


def test_a_healthy_worker_is_ready_and_reported_healthy(tmp_path, config_data):
    nudge = NudgeProcess(tmp_path, config_data).start()
    try:
        assert requests.get(nudge.url + "/-/ready", timeout=5).status_code == 200
        metrics = requests.get(nudge.url + "/metrics", timeout=10).text
        assert sample(metrics, "nudge_delivery_worker_healthy") == 1
        assert sample(metrics, "nudge_delivery_worker_restarts_total") == 0
    finally:
        nudge.stop()


def worker_pid(nudge: NudgeProcess) -> int | None:
    """The delivery worker's pid: the child of the supervisor running `app.cli ... worker`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                args = cmdline.read().split(b"\0")
        except OSError:
            continue
        if parent == nudge.process.pid and b"worker" in args:
            return int(entry)
    return None


def test_a_dead_workers_live_gauges_are_removed_and_it_is_restarted(tmp_path, config_data):
    nudge = NudgeProcess(tmp_path, config_data).start()
    metrics_dir = tmp_path / "metrics"
    try:
        first = worker_pid(nudge)
        assert first
        wait_until(lambda: any(f"_{first}.db" in p.name for p in metrics_dir.glob("gauge_live*")),
                   timeout=30, message="the worker's live gauge file")
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: worker_pid(nudge) not in (first, None), timeout=30,
                   message="a new worker")
        assert not any(f"_{first}.db" in p.name for p in metrics_dir.glob("gauge_live*"))
        metrics = requests.get(nudge.url + "/metrics", timeout=10).text
        assert sample(metrics, "nudge_delivery_worker_restarts_total") == 1
    finally:
        nudge.stop()


def test_the_delivery_worker_and_its_sender_processes_yield_the_cpu_to_the_receivers(
        tmp_path, config_data):
    """Under `nudge serve` the worker runs at Linux's idle policy (what `chrt -p` shows): in a
    burst, accepting notifications comes first; the receivers keep the normal policy."""
    config_data.setdefault("delivery", {})["processes"] = 2
    nudge = NudgeProcess(tmp_path, config_data).start()
    try:
        def policies():
            found = {}
            for pid, cmdline in children(nudge.process.pid).items():
                words = [w.decode() for w in cmdline]
                role = "worker" if "worker" in words else "receiver"
                found.setdefault(role, []).append((pid, words))
                if role == "worker":
                    for child, child_cmdline in children(pid).items():
                        found.setdefault("sender", []).append(
                            (child, [w.decode() for w in child_cmdline]))
            return found if found.get("sender") else None

        found = wait_until(policies, timeout=30, message="the worker's sender process")
        assert found["receiver"] and found["worker"]
        for role, members in found.items():
            expected = os.SCHED_OTHER if role == "receiver" else os.SCHED_IDLE
            for pid, words in members:
                assert os.sched_getscheduler(pid) == expected, (role, words)
        assert all("--sender-connections" in words for _pid, words in found["sender"])
    finally:
        nudge.stop()


def test_nudge_is_ready_only_once_the_worker_and_its_sender_processes_have_started(
        tmp_path, config_data):
    """/-/ready waits for the delivery worker to say it has started, and the worker waits for
    its sender processes: a load balancer (or a benchmark) never counts start-up as service."""
    config_data.setdefault("delivery", {})["processes"] = 2
    nudge = NudgeProcess(tmp_path, config_data).start(wait_ready=False)
    try:
        answers = []

        def ready():
            try:
                response = requests.get(nudge.url + "/-/ready", timeout=2)
            except requests.RequestException:
                return False
            answers.append(response.text)
            return response.status_code == 200

        wait_until(ready, timeout=60, interval=0.05, message="ready")
        workers = [pid for pid, cmdline in children(nudge.process.pid).items()
                   if b"worker" in cmdline]
        assert len(workers) == 1
        senders = children(workers[0])
        assert len(senders) == 2
        assert all(b"--sender-connections" in cmdline for cmdline in senders.values())
        # Every one of them runs its threads (each logs that once they do; the lines are
        # written by a background thread, moments later).
        wait_until(lambda: nudge.output.count(" started: ") == 3, timeout=10,
                   message="three 'started' lines")
        assert all("delivery worker" not in a or "the delivery worker is starting" in a
                   for a in answers[:-1]), answers
    finally:
        nudge.stop()
