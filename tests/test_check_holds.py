"""`nudge check` on the hold annotations (nudge_priority, nudge_essential,
nudge_cancel_on_resolve) and on the Alertmanager config's webhook to Nudge."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from app.cli import main
from tests import test_check
from tests.conftest import ROOT
from tests.test_check import add_rule_file, line_of, problems_in

workspace = test_check.workspace  # copies of the shipped rules and templates


def rule_with(annotations: dict) -> str:
    return yaml.safe_dump({"groups": [{"name": "x", "rules": [{
        "alert": "Held", "expr": "sum by (user_id) (app_api_requests_total) > 0",
        "labels": {"email_template": "usage_drop"}, "annotations": annotations}]}]},
        sort_keys=False)


def test_the_shipped_rules_pass_with_their_hold_annotations(workspace):
    result = workspace()
    assert result.exit_code == 0, result.output
    assert not [w for w in result.stderr.splitlines() if "nudge_" in w], result.stderr


def test_bad_hold_annotations_are_problems_at_their_line(workspace):
    path = add_rule_file(workspace, "extra.yml", rule_with({
        "nudge_priority": "high", "nudge_essential": "yes", "nudge_cancel_on_resolve": "nope"}))
    result = workspace()
    assert result.exit_code == 1
    problems = problems_in(result)
    assert (f"{path}:{line_of(path, 'nudge_priority:')}: Held: annotation nudge_priority: "
            f"expected a whole number like 10, got 'high'") in problems
    assert (f"{path}:{line_of(path, 'nudge_essential:')}: Held: annotation nudge_essential: "
            f"expected 'true' or 'false', got 'yes'") in problems
    assert any(p.startswith(f"{path}:{line_of(path, 'nudge_cancel_on_resolve:')}: Held: ")
               for p in problems)


def test_a_misspelt_hold_annotation_is_a_warning(workspace):
    path = add_rule_file(workspace, "extra.yml", rule_with({"nudge_priorty": "10",
                                                            "essential": "true"}))
    result = workspace()
    assert result.exit_code == 0, result.output
    assert (f"{path}:{line_of(path, 'nudge_priorty:')}: warning: Held: annotation "
            f"'nudge_priorty' is not a Nudge setting and is ignored: did you mean "
            f"'nudge_priority'?") in result.stderr
    assert f"{path}:{line_of(path, 'essential:')}: warning: Held: " in result.stderr


def check_alertmanager(workspace, *configs):
    workspace()  # writes the config
    return CliRunner().invoke(main, [
        "--config", str(workspace.rules.parent / "nudge.yml"), "check", "--no-promtool",
        *[arg for config in configs for arg in ("--alertmanager-config", str(config))]])


def test_the_shipped_alertmanager_config_sends_resolved_alerts_to_nudge(workspace):
    shipped = yaml.safe_load((ROOT / "deploy" / "alertmanager.yml").read_text())
    (nudge,) = [r for r in shipped["receivers"] if r["name"] == "nudge"]
    assert all(hook["send_resolved"] is True for hook in nudge["webhook_configs"])
    result = check_alertmanager(workspace, ROOT / "deploy" / "alertmanager.yml")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output


def test_an_alertmanager_config_without_resolved_notifications_is_a_warning(workspace, tmp_path):
    config = tmp_path / "alertmanager.yml"
    text = (ROOT / "deploy" / "alertmanager.yml").read_text()
    config.write_text(text.replace("send_resolved: true\n        # No max_alerts",
                                   "send_resolved: false\n        # No max_alerts"))
    assert config.read_text() != text
    result = check_alertmanager(workspace, config)
    assert result.exit_code == 0, result.output
    line = line_of(config, "send_resolved: false")
    assert (f"{config}:{line}: warning: receiver 'nudge': send_resolved is false: Nudge never "
            f"hears that an alert resolved") in result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text("receivers: [\n")
    result = check_alertmanager(workspace, broken)
    assert result.exit_code == 1 and f"{broken}:" in result.stderr


def test_bad_hold_settings_are_config_errors_naming_the_key(workspace):
    workspace.config.update({
        "limits": {"per_user": -1, "period": "soon"},
        "quiet_hours": {"window": "21:00", "default_timezone": "Mars/Olympus"},
    })
    result = workspace()
    assert result.exit_code != 0
    for expected in ("limits.per_user: expected a positive whole number",
                     "limits.period: expected a duration",
                     "quiet_hours.window: expected a window like 21:00-08:00, got '21:00'",
                     "quiet_hours.default_timezone: unknown time zone 'Mars/Olympus'"):
        assert expected in result.output, result.output
