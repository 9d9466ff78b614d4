"""`nudge check` on the shipped files and on broken copies of them."""

from __future__ import annotations

import shutil

import pytest
import yaml
from click.testing import CliRunner

from app.cli import main
from tests.conftest import ROOT


@pytest.fixture
def workspace(tmp_path, config_data):
    """Copies of the shipped rules and templates, and a config pointing at them."""
    shutil.copytree(ROOT / "alert_rules", tmp_path / "rules")
    shutil.copytree(ROOT / "email_templates", tmp_path / "templates")
    config_data["rules_dir"] = str(tmp_path / "rules")
    config_data["templates_dir"] = str(tmp_path / "templates")
    path = tmp_path / "nudge.yml"

    def run():
        path.write_text(yaml.safe_dump(config_data))
        return CliRunner().invoke(main, ["--config", str(path), "check"])

    run.rules = tmp_path / "rules"
    run.templates = tmp_path / "templates"
    run.config = config_data
    return run


def line_of(path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_shipped_config_templates_and_rules_pass(runner):
    result = runner("check")
    assert result.exit_code == 0, result.output
    assert "OK:" in result.output
    assert "7 behavioral rules" in result.output
    assert "(and promtool)" in result.output


def test_missing_template_names_file_and_line(workspace):
    usage = workspace.rules / "usage.yml"
    usage.write_text(usage.read_text().replace("email_template: quota_warning",
                                               "email_template: quota_warn"))
    result = workspace()
    assert result.exit_code == 1
    line = line_of(usage, "alert: QuotaNearlyExhausted")
    assert f"{usage}:{line}: QuotaNearlyExhausted: email template 'quota_warn' not found" in (
        result.output
    )
    assert "1 problem(s) found" in result.output


def test_rule_without_user_label_and_bad_settings(workspace):
    path = workspace.rules / "extra.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"alert": "Everyone", "expr": "sum(app_api_requests_total) > 0",
         "labels": {"email_template": "usage_drop"}},
        {"alert": "BadCooldown", "expr": "sum by (user_id) (app_api_requests_total) > 0",
         "labels": {"email_template": "usage_drop"},
         "annotations": {"nudge_cooldown": "sometimes", "nudge_send_resolved": "yes"}},
        {"alert": "WantsResolved", "expr": "sum by (user_id) (app_api_requests_total) > 0",
         "labels": {"email_template": "usage_drop"},
         "annotations": {"nudge_send_resolved": "true"}},
    ]}]}, sort_keys=False))
    result = workspace()
    assert result.exit_code == 1
    output = result.output
    assert f"{path}:4: Everyone: expression does not keep the 'user_id' label" in output
    assert "BadCooldown: annotation nudge_cooldown: expected a duration" in output
    assert "BadCooldown: annotation nudge_send_resolved: expected 'true' or 'false'" in output
    assert "WantsResolved: asks for a resolved email but usage_drop/ has no resolved_subject" in (
        output
    )


def test_broken_template_and_unused_template(workspace):
    (workspace.templates / "usage_drop" / "body.txt").write_text("Hi {{ user.get('name') \n")
    spare = workspace.templates / "spare"
    spare.mkdir()
    (spare / "subject.txt").write_text("Spare")
    (spare / "body.txt").write_text("Hello {{ user_id }}\n{{ unsubscribe_url }}\n")
    result = workspace()
    assert result.exit_code == 1
    assert "usage_drop/body.txt line 1" in result.output


def test_unused_template_is_reported_but_not_a_failure(workspace):
    spare = workspace.templates / "spare"
    spare.mkdir()
    (spare / "subject.txt").write_text("Spare")
    (spare / "body.txt").write_text("Hello {{ user_id }}\n{{ unsubscribe_url }}\n")
    result = workspace()
    assert result.exit_code == 0, result.output
    assert "note: template 'spare' is not used by any rule" in result.output


def test_template_mapped_in_nudge_yml_must_exist(workspace):
    workspace.config["alerts"] = {"rules": {"SomeAlert": {"template": "nope"}}}
    result = workspace()
    assert result.exit_code == 1
    assert "alerts.rules.SomeAlert.template: email template 'nope' not found" in result.output


def test_promtool_errors_are_reported(workspace):
    (workspace.rules / "broken.yml").write_text(
        "groups:\n  - name: b\n    rules:\n      - alert: Broken\n        expr: sum(by\n"
    )
    result = workspace()
    assert result.exit_code == 1
    assert "promtool:" in result.output and "broken.yml" in result.output


def test_rule_tests_folder_is_not_read_as_rules(workspace):
    assert (workspace.rules / "tests").is_dir()
    result = workspace()
    assert result.exit_code == 0, result.output
    assert "4 rule files" in result.output
