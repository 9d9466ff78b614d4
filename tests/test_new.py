"""`nudge new NAME` scaffolds a rule, its promtool test and a template that pass `nudge check`
and `promtool test rules` as generated."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from click.testing import CliRunner

from app.cli import main
from tests.conftest import ROOT


@pytest.fixture
def nudge(tmp_path, config_data):
    """`nudge ...` on copies of the shipped rules (only billing's unit test, for speed) and
    templates."""
    shutil.copytree(ROOT / "alert_rules", tmp_path / "rules")
    shutil.copytree(ROOT / "email_templates", tmp_path / "templates")
    for test_file in (tmp_path / "rules" / "tests").iterdir():
        if test_file.name != "billing_test.yml":
            test_file.unlink()
    config_data["rules_dir"] = str(tmp_path / "rules")
    config_data["templates_dir"] = str(tmp_path / "templates")
    path = tmp_path / "nudge.yml"
    path.write_text(yaml.safe_dump(config_data))

    def run(*args):
        return CliRunner().invoke(main, ["--config", str(path), *args])

    run.rules = tmp_path / "rules"
    run.templates = tmp_path / "templates"
    return run


def test_the_scaffold_passes_nudge_check_and_promtool_as_generated(nudge):
    result = nudge("new", "quota_halfway")
    assert result.exit_code == 0, result.output
    rule_file = nudge.rules / "quota_halfway.yml"
    test_file = nudge.rules / "tests" / "quota_halfway_test.yml"
    template = nudge.templates / "quota_halfway"
    assert f"created {rule_file} (rule QuotaHalfway)" in result.stdout
    for path in (test_file, template / "subject.txt", template / "body.txt",
                 template / "body.html", template / "sample.yml"):
        assert f"created {path}" in result.stdout
    # Every generated file says what to change.
    for path in (rule_file, test_file, template / "subject.txt", template / "body.txt",
                 template / "body.html", template / "sample.yml"):
        assert "CHANGE" in path.read_text(), path

    check = nudge("check")
    assert check.exit_code == 0, check.output
    assert check.stderr == ""
    assert "8 templates, 5 rule files, 8 behavioral rules" in check.stdout
    assert "2 unit test files run" in check.stdout

    promtool = subprocess.run(["promtool", "test", "rules", str(test_file)],
                              capture_output=True, text=True, timeout=60)
    assert promtool.returncode == 0, promtool.stderr + promtool.stdout

    preview = nudge("preview", "quota_halfway")
    assert preview.exit_code == 0, preview.output
    assert preview.stdout.splitlines()[0] == "Subject: You've used 67% of your Acme API quota"
    assert "Hi Jane Doe," in preview.stdout  # on the shared layout
    assert "Unsubscribe from these emails: " in preview.stdout
    html = nudge("preview", "quota_halfway", "--format", "html")
    assert html.stdout.lstrip().startswith("<!DOCTYPE html>")


def test_a_rule_added_to_an_existing_file_is_tested_from_there(nudge):
    billing = nudge.rules / "billing.yml"
    before = billing.read_text()
    result = nudge("new", "card_expiring", "--alert", "CardExpiringSoon",
                   "--rule-file", str(billing))
    assert result.exit_code == 0, result.output
    assert f"added to {billing} (rule CardExpiringSoon)" in result.stdout
    assert billing.read_text().startswith(before.rstrip("\n"))
    test_text = (nudge.rules / "tests" / "card_expiring_test.yml").read_text()
    assert "  - ../billing.yml\n" in test_text
    check = nudge("check")
    assert check.exit_code == 0, check.output


def test_names_that_are_taken_or_invalid_write_nothing(nudge):
    taken = nudge("new", "usage_drop")
    assert taken.exit_code == 1
    assert taken.stderr.strip() == f"Error: {nudge.templates / 'usage_drop'} already exists"

    same_alert = nudge("new", "payment_again", "--alert", "PaymentFailed")
    assert same_alert.exit_code == 1
    assert "an alert named PaymentFailed exists already" in same_alert.stderr
    assert not (nudge.templates / "payment_again").exists()
    assert not (nudge.rules / "payment_again.yml").exists()

    invalid = nudge("new", "Quota Halfway")
    assert invalid.exit_code == 1
    assert "use lower-case letters, digits and _" in invalid.stderr
