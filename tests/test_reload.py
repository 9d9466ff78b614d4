"""Templates and rules are picked up without a restart; a broken edit keeps the last good
version in use, and the log, /-/ready and a metric say what is wrong."""

from __future__ import annotations

import json
import re
import shutil
import signal
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import requests
from prometheus_client import REGISTRY

from app.config import load_config
from app.sender_processes import process_count
from app.template_set import TemplateSet
from tests.conftest import ROOT, TOKEN, load_fixture
from tests.processes import NudgeProcess, wait_until
from tests.test_serve import sample


@pytest.fixture
def files(tmp_path, config_data):
    shutil.copytree(ROOT / "email_templates", tmp_path / "templates")
    shutil.copytree(ROOT / "alert_rules", tmp_path / "rules")
    config_data["templates_dir"] = str(tmp_path / "templates")
    config_data["rules_dir"] = str(tmp_path / "rules")
    return tmp_path


def render_subject(templates: TemplateSet) -> str:
    return templates.env.get_template("usage_drop/subject.txt").render().strip()


def test_an_edit_is_picked_up_and_a_broken_one_keeps_the_last_good_version(files, config_data):
    templates = TemplateSet(load_config(data=config_data, environ={}), report=True)
    subject = files / "templates" / "usage_drop" / "subject.txt"
    assert render_subject(templates) == "Your Acme API usage has dropped"
    assert templates.refresh() is True  # the first look checks what was loaded
    assert templates.last.ok

    subject.write_text("We miss you\n")
    assert templates.refresh() is True
    assert render_subject(templates) == "We miss you"
    assert REGISTRY.get_sample_value("nudge_templates_last_reload_successful") == 1

    failures = REGISTRY.get_sample_value("nudge_template_reloads_total",
                                         {"result": "failure"}) or 0
    subject.write_text("We miss you {{ user.nmae }\n")
    assert templates.refresh() is True
    assert render_subject(templates) == "We miss you"  # still the last good version
    assert not templates.last.ok
    (problem,) = templates.last.problems
    assert problem.startswith(f"{files}/templates/usage_drop/subject.txt line 1: ")
    assert templates.status_lines()[0].startswith("templates/rules: 1 problem(s) in the files")
    assert REGISTRY.get_sample_value("nudge_templates_last_reload_successful") == 0
    assert REGISTRY.get_sample_value("nudge_template_reloads_total",
                                     {"result": "failure"}) == failures + 1

    assert templates.refresh() is False  # nothing changed since: no work


def test_a_rule_edit_is_checked_against_the_templates(files, config_data):
    templates = TemplateSet(load_config(data=config_data, environ={}))
    (files / "templates" / "usage_drop" / "subject.txt").write_text(
        "Down to {{ annotations.usage_ratio|percent }}\n")
    templates.refresh()
    assert templates.last.ok, templates.last.problems
    usage = files / "rules" / "usage.yml"
    usage.write_text(usage.read_text().replace("usage_ratio:", "usage_fraction:"))
    templates.refresh()
    assert any("'dict object' has no attribute 'usage_ratio' (sample alert of rule "
               "UsageDropped" in p for p in templates.last.problems), templates.last.problems
    assert templates.env.get_template("usage_drop/subject.txt") is not None


def post(url: str, user: str) -> None:
    payload = load_fixture("firing-per-user.json")
    payload["alerts"][0]["labels"].update(user_id=user, email=f"{user}@example.com")
    response = requests.post(url + "/webhook", data=json.dumps(payload), timeout=10,
                             headers={"Authorization": f"Bearer {TOKEN}",
                                      "Content-Type": "application/json"})
    assert response.status_code == 200, response.text


def subjects(outbox: Path) -> dict[str, str]:
    found = {}
    for path in outbox.glob("*.eml"):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        found[str(message["To"])] = str(message["Subject"])
    return found


def logged_by_every_worker_process(service: NudgeProcess, since: int, pattern: str,
                                   processes: int) -> bool:
    """Each process of the worker watches the files on its own: whichever sends next must
    have reloaded. `processes`: delivery.processes (with more than one, the worker process
    that starts them decides, and watches too)."""
    processes = processes + 1 if processes > 1 else processes
    return len(set(re.findall(rf"\[(\d+)\] \w+ nudge\.templates: {pattern}",
                              service.output[since:]))) == processes


def test_nudge_serve_reloads_on_change_and_on_sighup(files, config_data):
    outbox = Path(config_data["delivery"]["outbox_dir"])
    subject = files / "templates" / "onboarding_first_call" / "subject.txt"
    processes = process_count(load_config(data=config_data, environ={}))
    service = NudgeProcess(files, config_data).start()
    try:
        post(service.url, "u1")
        wait_until(lambda: "u1@example.com" in subjects(outbox), message="first email")
        assert subjects(outbox)["u1@example.com"] == "Make your first call to Acme API"
        # Every worker process has looked at the files as they were (not at the edit below).
        wait_until(lambda: logged_by_every_worker_process(
            service, 0, r"templates and rules checked \(start\)", processes),
            timeout=15, message="the first look at the files")

        # A file change is picked up by itself...
        since = len(service.output)
        subject.write_text("Your API key is waiting\n")
        wait_until(lambda: logged_by_every_worker_process(
            service, since, r"templates and rules reloaded \(files changed\)", processes),
            timeout=15, message="reload after the edit")
        post(service.url, "u2")
        wait_until(lambda: "u2@example.com" in subjects(outbox), message="second email")
        assert subjects(outbox)["u2@example.com"] == "Your API key is waiting"

        # ...a broken edit is reported and the last good version stays in use...
        since = len(service.output)
        subject.write_text("Your API key is {{ waiting\n")
        wait_until(lambda: logged_by_every_worker_process(
            service, since, r"templates/rules changed .* emails keep using", processes),
            timeout=15, message="the broken edit reported")
        assert "onboarding_first_call/subject.txt line 1" in service.output
        ready = requests.get(service.url + "/-/ready", timeout=10)
        assert ready.status_code == 200
        assert "onboarding_first_call/subject.txt line 1" in ready.text
        metrics = requests.get(service.url + "/metrics", timeout=10).text
        assert sample(metrics, "nudge_templates_last_reload_successful") == 0
        post(service.url, "u3")
        wait_until(lambda: "u3@example.com" in subjects(outbox), message="third email")
        assert subjects(outbox)["u3@example.com"] == "Your API key is waiting"

        # ...and SIGHUP reloads at once (here: the fixed file, with the watcher's own look
        # perhaps not due yet).
        since = len(service.output)
        subject.write_text("Make that first call\n")
        service.process.send_signal(signal.SIGHUP)
        wait_until(lambda: logged_by_every_worker_process(
            service, since, r"templates and rules reloaded \((SIGHUP|files changed)\)",
            processes), timeout=15, message="reload on SIGHUP")
        post(service.url, "u4")
        wait_until(lambda: "u4@example.com" in subjects(outbox), message="fourth email")
        assert subjects(outbox)["u4@example.com"] == "Make that first call"
        # /-/ready looks at the files at most once a second per receiver process
        wait_until(lambda: requests.get(service.url + "/-/ready", timeout=10).text
                   == "Nudge is Ready.\n", timeout=10, message="/-/ready without problems")
        assert service.process.poll() is None  # SIGHUP did not stop the service
    finally:
        service.stop()
