"""Config errors and warnings point at the line of their key in nudge.yml (or name the NUDGE_*
variable the value came from), in `nudge check` and when `nudge serve` refuses to start; and
`nudge check` warns about keys that are each valid but do not fit together."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from app.cli import main
from tests import test_check
from tests.processes import NudgeProcess
from tests.test_check import line_of

workspace = test_check.workspace  # copies of the shipped rules and templates


def config_warnings(result, path) -> list[str]:
    return [line for line in result.stderr.splitlines()
            if line.startswith(f"{path}:") and ": warning: " in line]


# --- errors carry the line -------------------------------------------------------------------


def test_a_bad_value_is_reported_at_the_line_of_its_key(workspace):
    workspace.config.update({"limits": {"per_user": 2, "period": "soon"},
                             "quiet_hours": {"default_timezone": "Mars/Olympus"}})
    result = workspace()
    assert result.exit_code == 2, result.output
    path = workspace.rules.parent / "nudge.yml"
    problems = result.stderr.splitlines()
    assert (f"nudge: config: {path}:{line_of(path, 'period: soon')}: limits.period: expected a "
            f"duration") in result.stderr, problems
    assert any(line.startswith(f"nudge: config: {path}:{line_of(path, 'Mars/Olympus')}: "
                               f"quiet_hours.default_timezone: unknown time zone ")
               for line in problems), problems


def test_an_unknown_key_is_reported_at_its_line(workspace):
    workspace.config["limits"] = {"per_usr": 2}
    result = workspace()
    path = workspace.rules.parent / "nudge.yml"
    assert (f"nudge: config: {path}:{line_of(path, 'per_usr:')}: limits.per_usr: unknown key "
            in result.stderr), result.output


def test_a_bad_value_from_an_environment_variable_names_the_variable(workspace, monkeypatch):
    workspace.config["retention"] = "30d"  # valid in the file; the variable wins
    monkeypatch.setenv("NUDGE_RETENTION", "a while")
    result = workspace()
    assert result.exit_code == 2, result.output
    (problem,) = result.stderr.splitlines()
    assert problem.startswith("nudge: config: environment NUDGE_RETENTION: retention: "), problem
    assert "'a while'" in problem


def test_a_missing_required_key_points_at_its_section(workspace):
    workspace.config["directory"] = {"oauth": {"token_url": "https://auth.example.com/token"}}
    result = workspace()
    path = workspace.rules.parent / "nudge.yml"
    assert (f"nudge: config: {path}:{line_of(path, 'oauth:')}: directory.oauth.client_id: "
            f"required with directory.oauth.token_url") in result.stderr, result.output


def test_serve_refuses_a_config_with_the_same_locations(tmp_path, config_data, monkeypatch):
    for name in ("NUDGE_WEBHOOK_TOKEN", "NUDGE_SECRET_KEY", "NUDGE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "nudge.yml"
    path.write_text(yaml.safe_dump({**config_data, "limits": {"max_wait": "never"}}))
    result = CliRunner().invoke(main, ["--config", str(path), "serve"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"nudge: config: {path}:{line_of(path, 'max_wait:')}: "
                                    f"limits.max_wait: "), result.stderr
    # A refusal after loading (a sample secret) is located the same way.
    path.write_text(yaml.safe_dump({**config_data, "secret_key": "change-me-in-production"}))
    result = CliRunner().invoke(main, ["--config", str(path), "serve"])
    assert result.exit_code == 2, result.output
    assert (f"nudge: config: {path}:{line_of(path, 'secret_key:')}: secret_key: is a sample "
            f"value") in result.stderr, result.stderr


# --- warnings across keys ---------------------------------------------------------------------


def test_the_shipped_defaults_have_no_config_warnings(workspace):
    result = workspace()
    assert result.exit_code == 0, result.output
    assert config_warnings(result, workspace.rules.parent / "nudge.yml") == []


def test_max_wait_shorter_than_the_cap_period_is_a_warning_with_both_values(workspace):
    workspace.config["limits"] = {"per_user": 2, "period": "24h", "max_wait": "6h"}
    result = workspace()
    assert result.exit_code == 0, result.output
    path = workspace.rules.parent / "nudge.yml"
    assert config_warnings(result, path) == [
        f"{path}:{line_of(path, 'max_wait:')}: warning: limits.max_wait (6h) is shorter than "
        f"limits.period (1d): an email held by the cap may be dropped as stale before the "
        f"window has room for it"]


def test_retention_shorter_than_max_wait_and_period_are_warnings(workspace):
    workspace.config.update({"retention": "12h",
                             "limits": {"per_user": 1, "period": "2d", "max_wait": "3d"}})
    result = workspace()
    assert result.exit_code == 0, result.output
    path = workspace.rules.parent / "nudge.yml"
    at = line_of(path, "retention: 12h")
    assert config_warnings(result, path) == [
        f"{path}:{at}: warning: retention (12h) is shorter than limits.max_wait (3d): the hold "
        f"log of an email still waiting could be pruned before it is sent or dropped",
        f"{path}:{at}: warning: retention (12h) is shorter than limits.period (2d): the sends "
        f"the cap counts could be pruned while still in the window"]


def test_retention_forever_or_no_holds_warns_about_nothing(workspace):
    workspace.config.update({"retention": "forever",
                             "limits": {"per_user": 1, "period": "2d", "max_wait": "3d"}})
    result = workspace()
    assert config_warnings(result, workspace.rules.parent / "nudge.yml") == []
    workspace.config.update({"retention": "1h", "limits": {"per_user": 0}})
    result = workspace()
    assert config_warnings(result, workspace.rules.parent / "nudge.yml") == []


def test_a_quiet_window_covering_almost_the_whole_day_is_a_warning(workspace):
    workspace.config["quiet_hours"] = {"window": "08:30-08:00"}
    result = workspace()
    assert result.exit_code == 0, result.output
    path = workspace.rules.parent / "nudge.yml"
    (warning,) = config_warnings(result, path)
    assert warning.startswith(f"{path}:{line_of(path, 'window:')}: warning: quiet_hours.window "
                              f"leaves only 30m a day for sending"), warning


def test_time_zone_settings_without_a_window_and_a_period_without_a_cap_are_warnings(workspace):
    workspace.config.update({"quiet_hours": {"window": "", "default_timezone": "Asia/Tokyo"},
                             "limits": {"period": "12h"}})
    result = workspace()
    assert result.exit_code == 0, result.output
    path = workspace.rules.parent / "nudge.yml"
    assert config_warnings(result, path) == [
        f"{path}:{line_of(path, 'default_timezone:')}: warning: quiet_hours.default_timezone is "
        f"set but quiet_hours.window is empty: no quiet hours apply",
        f"{path}:{line_of(path, 'period:')}: warning: limits.period is set but limits.per_user "
        f"is 0 (no cap): it has no effect"]


def test_serve_logs_a_cross_key_warning_once_at_start_up(tmp_path, config_data):
    config = {**config_data, "limits": {"per_user": 2, "period": "1d", "max_wait": "1h"}}
    process = NudgeProcess(tmp_path, config).start()
    try:
        output = process.output
    finally:
        process.stop()
    line = line_of(process.config_path, "max_wait:")
    expected = (f"{process.config_path}:{line}: warning: limits.max_wait (1h) is shorter than "
                f"limits.period (1d)")
    assert output.count(expected) == 1, output
