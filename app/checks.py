"""`nudge check`: config, templates and rule files, cross-checked before a deploy.

Every problem is one line `FILE:LINE: what is wrong` (promtool's expected-versus-got listing
of a failing unit test is indented under its line). Rules come from `rules_dir` (files
ending .yml/.yaml, not under a `tests` folder); their promtool unit tests from
`rules_dir/tests/`. Each template is rendered with the sample alert of every rule that uses
it (app/samples.py), as delivery would render it. Warnings point at what works, but
probably not as meant (a misspelt setting name is ignored, not an error).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from app.alertmanager_checks import alertmanager_warnings
from app.config import Config
from app.config_warnings import config_warnings
from app.directory import CredentialError, credentials_from_config, read_secret_file
from app.durations import parse_cooldown
from app.policy import COOLDOWN_ANNOTATION, SEND_RESOLVED_ANNOTATION
from app.rendering import build_environment, has_resolved_variant, list_templates
from app.rule_checks import (
    category_problems,
    category_warnings,
    hold_annotation_problems,
    hold_annotation_warnings,
    promtool_check_rules,
    promtool_path,
    promtool_unit_tests,
    rule_warnings,
)
from app.rules import RuleEntry, RuleSet, load_rule_set, unit_test_files
from app.template_set import check_templates


@dataclass(frozen=True)
class CheckReport:
    problems: list[str]  # each makes the check fail
    warnings: list[str]  # printed, but the check passes
    notes: list[str]
    summary: str


def check_rule(rule: RuleEntry, config: Config, templates: set[str]) -> list[str]:
    where = f"{rule.file}:{rule.line}: {rule.alert}"
    override = config.rule_overrides.get(rule.alert)
    template = rule.labels.get(config.template_label) or (override.template if override else None)
    if not template:
        return []  # not a behavioral email (e.g. an ops alert)
    problems = []
    if template not in templates:
        problems.append(
            f"{where}: email template {template!r} not found in {config.templates_dir}/"
        )
    user_label = config.user_label
    if not re.search(rf"\b{re.escape(user_label)}\b", rule.expr) and user_label not in rule.labels:
        problems.append(
            f"{where}: expression does not keep the {user_label!r} label "
            f"(aggregate `by ({user_label})`): Nudge cannot tell whom to email"
        )
    if COOLDOWN_ANNOTATION in rule.annotations:
        try:
            parse_cooldown(rule.annotations[COOLDOWN_ANNOTATION])
        except ValueError as exc:
            problems.append(f"{where}: annotation {COOLDOWN_ANNOTATION}: {exc}")
    send_resolved = config.default_send_resolved
    if override and override.send_resolved is not None:
        send_resolved = override.send_resolved
    if SEND_RESOLVED_ANNOTATION in rule.annotations:
        value = rule.annotations[SEND_RESOLVED_ANNOTATION].strip().lower()
        if value not in ("true", "false"):
            problems.append(
                f"{where}: annotation {SEND_RESOLVED_ANNOTATION}: expected 'true' or 'false', "
                f"got {rule.annotations[SEND_RESOLVED_ANNOTATION]!r}"
            )
        send_resolved = value == "true"
    if send_resolved and template in templates and not has_resolved_variant(
        config.templates_dir, template
    ):
        problems.append(
            f"{where}: asks for a resolved email but {template}/ has no resolved_subject.txt"
        )
    return problems


# How long `nudge check` waits for the directory's token endpoint.
TOKEN_CHECK_TIMEOUT = 5.0


def directory_checks(config: Config, environ: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(problems, notes) about the directory's credentials: each secret file must be readable;
    the token endpoint is asked for a token. A token endpoint that cannot be reached is only a
    warning (the network may not be there at check time); one that refuses the client is a
    problem."""
    problems: list[str] = []
    oauth = config.directory_oauth
    files = {
        "directory.token_file": config.directory_token_file,
        "directory.api_key_file": config.directory_api_key_file,
        "directory.oauth.client_secret_file": oauth.client_secret_file if oauth else None,
    }
    for key, path in files.items():
        if path is None:
            continue
        try:
            read_secret_file(path)
        except ValueError as exc:
            problems.append(config.locations.locate(f"{config.source}: {key}: {exc}"))
    if oauth is None or problems:
        return problems, []
    credentials = credentials_from_config(config, environ)
    assert credentials is not None and credentials.oauth is not None
    try:
        credentials.oauth.access_token(time.monotonic() + max(config.directory_timeout,
                                                              TOKEN_CHECK_TIMEOUT))
    except CredentialError as exc:
        where = f"{config.source}: directory.oauth.token_url {oauth.token_url}"
        if exc.retryable:
            return problems, [config.locations.locate(
                f"{where}: {exc} (directory lookups wait and retry until it answers)",
                warning=True)]
        return [*problems, config.locations.locate(f"{where}: {exc}")], []
    finally:
        credentials.close()
    return problems, [f"note: the directory token endpoint issued a token to {oauth.client_id!r}"]


def smtp_check_warnings(config: Config) -> list[str]:
    """A password that would go over the wire unencrypted (the URL says tls=none)."""
    if not config.smtp_url:
        return []
    from app.transports import parse_smtp_url, smtp_warnings

    return [config.locations.locate(f"{config.source}: {line}", warning=True)
            for line in smtp_warnings(parse_smtp_url(config.smtp_url))]


def run_checks(config: Config, environ: Mapping[str, str] | None = None, *,
               promtool: bool = True, alertmanager_configs: tuple[Path, ...] = ()
               ) -> CheckReport:
    """Everything `nudge check` reports; `problems` is empty when everything is deployable."""
    problems: list[str] = []
    notes: list[str] = []
    directory_problems, directory_notes = directory_checks(
        config, os.environ if environ is None else environ)
    problems.extend(directory_problems)
    notes.extend(directory_notes)
    warnings: list[str] = smtp_check_warnings(config)
    warnings.extend(config_warnings(config))
    # What `nudge serve` would refuse: weak or sample secrets (warnings in development mode).
    from app.secret_checks import secret_problems

    secret_lines = secret_problems(config, os.environ if environ is None else environ)
    if config.dev_mode:
        warnings.extend(f"warning: development mode: {line}" for line in secret_lines)
    else:
        problems.extend(secret_lines)
    if not config.templates_dir.is_dir():
        problems.append(f"{config.templates_dir}: templates folder not found")
        templates: set[str] = set()
    else:
        templates = set(list_templates(config.templates_dir))

    rule_set = load_rule_set(config.rules_dir)
    problems.extend(rule_set.problems)
    if templates:
        env = build_environment(config.templates_dir)
        problems.extend(check_templates(config, env, rule_set))
    rules = rule_set.rules
    for rule in rules:
        problems.extend(check_rule(rule, config, templates))
        warnings.extend(rule_warnings(rule, config))
        problems.extend(category_problems(rule))
        problems.extend(hold_annotation_problems(rule))
        warnings.extend(hold_annotation_warnings(rule))
    warnings.extend(category_warnings(rules, config))
    for alertmanager_config in alertmanager_configs:
        found_problems, found_warnings = alertmanager_warnings(Path(alertmanager_config))
        problems.extend(found_problems)
        warnings.extend(found_warnings)
    for alertname, override in config.rule_overrides.items():
        if override.template and override.template not in templates:
            problems.append(config.locations.locate(
                f"{config.source}: alerts.rules.{alertname}.template: "
                f"email template {override.template!r} not found in {config.templates_dir}/"
            ))

    if not promtool:
        promtool_note = "promtool skipped (--no-promtool)"
    elif (binary := promtool_path()) is None:
        promtool_note = "promtool not found"
        warnings.append("warning: promtool not found: the rules' syntax and unit tests were not "
                        "checked (install the `prometheus` package, or pass --no-promtool)")
    else:
        # A file that is not even YAML is reported once, above, not again by promtool.
        readable = [path for path in rule_set.files if path not in rule_set.broken_files]
        problems.extend(promtool_check_rules(binary, readable))
        tests = [path for path in unit_test_files(config.rules_dir)
                 if not _tests_broken_file(path, rule_set)]
        test_problems, test_warnings = promtool_unit_tests(binary, tests)
        problems.extend(test_problems)
        warnings.extend(test_warnings)
        promtool_note = (f"promtool: {len(readable)} rule files checked, {len(tests)} unit test "
                         f"files run")

    if not rule_set.broken_files:  # otherwise a template may be used by the unreadable file
        used = {r.labels.get(config.template_label) for r in rules}
        used |= {o.template for o in config.rule_overrides.values()}
        for name in sorted(templates - used):
            notes.append(f"note: template {name!r} is not used by any rule")
    behavioral = [r for r in rules if r.labels.get(config.template_label)]
    summary = (f"OK: {config.source}, {len(templates)} templates, {len(rule_set.files)} rule "
               f"files, {len(behavioral)} behavioral rules; {promtool_note}")
    return CheckReport(problems, warnings, notes, summary)


def _tests_broken_file(test_file: Path, rule_set: RuleSet) -> bool:
    """Whether a promtool test file tests a rule file that is not valid YAML (its failure
    would only repeat that problem)."""
    if not rule_set.broken_files:
        return False
    try:
        listed = (yaml.safe_load(test_file.read_text()) or {}).get("rule_files") or []
    except (yaml.YAMLError, OSError, AttributeError):
        return False
    return any((test_file.parent / name).resolve() in
               {path.resolve() for path in rule_set.broken_files} for name in listed)
