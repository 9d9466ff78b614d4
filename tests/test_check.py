"""`nudge check` on the shipped files and on broken copies of them: one problem per problem,
each with file and line, promtool's rule tests included."""

from __future__ import annotations

import shutil
import textwrap

import pytest
import yaml
from click.testing import CliRunner

from app.cli import main
from tests.conftest import ROOT


@pytest.fixture
def workspace(tmp_path, config_data, monkeypatch):
    """Copies of the shipped rules and templates, and a config pointing at them.
    `workspace()` runs `nudge check --no-promtool`; `workspace(promtool=True)` with promtool."""
    monkeypatch.delenv("NUDGE_DIRECTORY_URL", raising=False)
    shutil.copytree(ROOT / "alert_rules", tmp_path / "rules")
    shutil.copytree(ROOT / "email_templates", tmp_path / "templates")
    config_data["rules_dir"] = str(tmp_path / "rules")
    config_data["templates_dir"] = str(tmp_path / "templates")
    path = tmp_path / "nudge.yml"

    def run(promtool: bool = False, unit_tests: tuple[str, ...] | None = None):
        """`unit_tests`: keep only these promtool test files (each shipped one takes seconds)."""
        if unit_tests is not None:
            for test_file in (tmp_path / "rules" / "tests").iterdir():
                if test_file.name not in unit_tests:
                    test_file.unlink()
        path.write_text(yaml.safe_dump(config_data))
        args = ["--config", str(path), "check"] + ([] if promtool else ["--no-promtool"])
        return CliRunner().invoke(main, args)

    run.rules = tmp_path / "rules"
    run.templates = tmp_path / "templates"
    run.config = config_data
    return run


def line_of(path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def problems_in(result) -> list[str]:
    """The problem lines (stderr, without warnings and the count)."""
    return [line for line in result.stderr.splitlines()
            if line and not line.startswith((" ", "\t")) and ": warning: " not in line
            and not line.startswith("warning:") and "problem(s) found" not in line]


def add_rule_file(workspace, name: str, text: str):
    path = workspace.rules / name
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_config_templates_rules_and_rule_tests_pass(workspace):
    result = workspace(promtool=True)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "7 templates, 4 rule files, 7 behavioral rules" in result.stdout
    assert "promtool: 4 rule files checked, 4 unit test files run" in result.stdout


def test_missing_template_names_file_and_line(workspace):
    usage = workspace.rules / "usage.yml"
    usage.write_text(usage.read_text().replace("email_template: quota_warning",
                                               "email_template: quota_warn"))
    result = workspace()
    assert result.exit_code == 1
    line = line_of(usage, "alert: QuotaNearlyExhausted")
    assert problems_in(result) == [
        f"{usage}:{line}: QuotaNearlyExhausted: email template 'quota_warn' not found in "
        f"{workspace.templates}/"]
    assert result.stderr.splitlines()[-1] == "1 problem(s) found"


def test_a_yaml_mistake_is_one_problem_on_one_line(workspace):
    """One indentation slip: one problem with file:line, not a PyYAML dump, and neither
    promtool nor the rule's unit test repeats it."""
    billing = workspace.rules / "billing.yml"
    lines = billing.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip() == "for: 15m")
    lines[index] = " " + lines[index]
    billing.write_text("\n".join(lines) + "\n")

    result = workspace(promtool=True, unit_tests=("billing_test.yml",))

    assert result.exit_code == 1
    (problem,) = problems_in(result)
    assert problem.startswith(f"{billing}:{index + 1}: not valid YAML: ")
    assert result.stderr.splitlines()[-1] == "1 problem(s) found"


def test_a_failing_rule_unit_test_is_one_problem_with_its_line(workspace):
    test_file = workspace.rules / "tests" / "billing_test.yml"
    test_file.write_text(test_file.read_text().replace("eval_time: 15m", "eval_time: 14m30s", 1))
    result = workspace(promtool=True, unit_tests=("billing_test.yml",))
    assert result.exit_code == 1, result.output
    (problem,) = problems_in(result)
    name_line = line_of(test_file, "- name: PaymentFailed fires while the latest payment failed")
    assert problem.startswith(f"{test_file}:{name_line}: promtool test 'PaymentFailed fires "
                              f"while the latest payment failed' failed: alertname: PaymentFailed")
    assert "        got:" in result.stderr  # promtool's listing, indented under the problem
    assert result.stderr.splitlines()[-1] == "1 problem(s) found"


def test_promtool_syntax_errors_are_one_problem_each_with_file_and_line(workspace):
    path = add_rule_file(workspace, "broken.yml", """\
        groups:
          - name: b
            rules:
              - alert: Broken
                expr: sum(by
              - alert: AlsoBroken
                expr: foo{
        """)
    result = workspace(promtool=True, unit_tests=())
    assert result.exit_code == 1
    problems = problems_in(result)
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{path}:5: promtool: ")
    assert problems[1].startswith(f"{path}:7: promtool: ")
    assert not any("SUCCESS" in line or "Checking" in line for line in result.stderr.splitlines())


def test_no_promtool_skips_promtool_and_says_so(workspace):
    add_rule_file(workspace, "broken.yml", """\
        groups:
          - name: b
            rules:
              - alert: Broken
                expr: sum(by
        """)
    result = workspace()
    assert result.exit_code == 0, result.output
    assert "promtool skipped (--no-promtool)" in result.stdout


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
    assert result.stderr.splitlines()[-1] == "4 problem(s) found"


@pytest.mark.parametrize("section, written, meant", [
    ("annotations", "cooldown", "nudge_cooldown"),
    ("annotations", "nudge_cooldwon", "nudge_cooldown"),
    ("annotations", "send_resolved", "nudge_send_resolved"),
    ("annotations", "Nudge-Send-Resolved", "nudge_send_resolved"),
    ("labels", "emailtemplate", "email_template"),
    ("labels", "email-template", "email_template"),
])
def test_a_misspelt_setting_is_a_warning_at_its_line(workspace, section, written, meant):
    other = {"labels": {"email_template": "usage_drop"}, "annotations": {}}
    if section == "labels":
        other["labels"] = {}
    other[section][written] = "7d" if section == "annotations" else "usage_drop"
    path = add_rule_file(workspace, "extra.yml", yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"alert": "Typo", "expr": "sum by (user_id) (app_api_requests_total) > 0", **other},
    ]}]}, sort_keys=False))
    result = workspace()
    line = line_of(path, f"{written}:")
    warnings = [w for w in result.stderr.splitlines() if ": warning: " in w]
    assert any(w.startswith(f"{path}:{line}: warning: Typo: ") and f"did you mean {meant!r}" in w
               for w in warnings), result.output
    if section == "annotations":
        assert result.exit_code == 0, result.output  # a warning does not fail the check
        assert "(1 warning(s))" in result.stdout


def test_a_setting_in_the_wrong_section_is_a_warning(workspace):
    path = add_rule_file(workspace, "extra.yml", """\
        groups:
          - name: x
            rules:
              - alert: Misplaced
                expr: sum by (user_id) (app_api_requests_total) > 0
                labels:
                  email_template: usage_drop
                  nudge_cooldown: 7d
        """)
    result = workspace()
    assert result.exit_code == 0, result.output
    assert (f"{path}:8: warning: Misplaced: 'nudge_cooldown' is label, but Nudge reads it from "
            f"the rule's annotations: it is ignored here") in result.stderr


def test_a_rule_that_keeps_the_user_label_but_names_no_template_is_a_warning(workspace):
    path = add_rule_file(workspace, "extra.yml", """\
        groups:
          - name: x
            rules:
              - alert: Forgotten
                expr: sum by (user_id) (app_api_requests_total) > 100
        """)
    result = workspace()
    assert result.exit_code == 0, result.output
    assert (f"{path}:4: warning: Forgotten: keeps the 'user_id' label but names no email "
            f"template") in result.stderr


def test_a_template_using_its_rules_annotations_passes(workspace):
    """The sample alert comes from the rule: a new template may use any annotation its rule
    defines, with $value filled in from the rule's threshold."""
    add_rule_file(workspace, "errors.yml", """\
        groups:
          - name: x
            rules:
              - alert: ErrorsUp
                expr: sum by (user_id) (rate(app_api_requests_total{code=~"5.."}[5m])) > 0.25
                for: 5m
                labels:
                  email_template: errors_up
                annotations:
                  summary: "{{ $labels.user_id }} fails {{ $value | humanizePercentage }}"
                  error_ratio: "{{ $value }}"
        """)
    folder = workspace.templates / "errors_up"
    folder.mkdir()
    (folder / "subject.txt").write_text("{{ annotations.error_ratio|percent }} errors\n")
    (folder / "body.txt").write_text("{{ annotations.summary }}\n{{ unsubscribe_url }}\n")
    result = workspace()
    assert result.exit_code == 0, result.output

    preview = CliRunner().invoke(main, ["--config", str(workspace.rules.parent / "nudge.yml"),
                                        "preview", "errors_up"])
    assert preview.stdout.splitlines()[0] == "Subject: 50% errors"
    assert "u_1842 fails 50%" in preview.stdout


def test_a_template_using_an_annotation_its_rule_lacks_names_the_rule(workspace):
    folder = workspace.templates / "usage_drop"
    (folder / "subject.txt").write_text("{{ annotations.error_ratio }}\n")
    result = workspace()
    assert result.exit_code == 1
    (problem,) = problems_in(result)
    usage = workspace.rules / "usage.yml"
    assert problem == (
        f"{workspace.templates}/usage_drop/subject.txt line 1: 'dict object' has no attribute "
        f"'error_ratio' (sample alert of rule UsageDropped ({usage}:"
        f"{line_of(usage, 'alert: UsageDropped')}))")


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


def test_a_broken_sample_file_is_one_problem_with_its_line(workspace):
    sample = workspace.templates / "usage_drop" / "sample.yml"
    sample.write_text("user:\n  name: Ann\n   plan: pro\n")
    result = workspace()
    assert result.exit_code == 1
    (problem,) = problems_in(result)
    assert problem.startswith(f"{sample}:3: not valid YAML: ")


def test_template_mapped_in_nudge_yml_must_exist(workspace):
    workspace.config["alerts"] = {"rules": {"SomeAlert": {"template": "nope"}}}
    result = workspace()
    assert result.exit_code == 1
    assert "alerts.rules.SomeAlert.template: email template 'nope' not found" in result.output


def test_rule_tests_folder_is_not_read_as_rules(workspace):
    assert (workspace.rules / "tests").is_dir()
    result = workspace()
    assert result.exit_code == 0, result.output
    assert "4 rule files" in result.output
