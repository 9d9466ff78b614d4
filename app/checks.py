"""`nudge check`: config, templates and rule files, cross-checked before a deploy.

Every problem is one line `FILE:LINE: what is wrong`. Rules come from `rules_dir` (files
ending .yml/.yaml, not under a `tests` folder); promtool checks them too when it is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from app.config import Config
from app.directory import CredentialError, credentials_from_config, read_secret_file
from app.durations import parse_cooldown
from app.policy import COOLDOWN_ANNOTATION, SEND_RESOLVED_ANNOTATION
from app.rendering import compile_all, has_resolved_variant, list_templates


@dataclass(frozen=True)
class RuleEntry:
    file: Path
    line: int
    alert: str
    expr: str
    labels: dict
    annotations: dict


def rule_files(rules_dir: Path) -> list[Path]:
    return sorted(
        path
        for pattern in ("*.yml", "*.yaml")
        for path in rules_dir.rglob(pattern)
        if "tests" not in path.relative_to(rules_dir).parts[:-1]
    )


def load_rules(path: Path) -> tuple[list[RuleEntry], list[str]]:
    """Alerting rules in a Prometheus rule file, with the line of each `alert:`."""
    try:
        root = yaml.compose(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        return [], [f"{path}:{mark.line + 1 if mark else 1}: not valid YAML: {exc}"]
    entries: list[RuleEntry] = []
    if root is None:
        return [], []
    groups = _child(root, "groups")
    if groups is None or not isinstance(groups, yaml.SequenceNode):
        return [], [f"{path}:1: expected a `groups:` list (Prometheus rule file format)"]
    for group in groups.value:
        rules = _child(group, "rules")
        if not isinstance(rules, yaml.SequenceNode):
            continue
        for rule in rules.value:
            alert = _child(rule, "alert")
            if alert is None:
                continue  # a recording rule
            data = yaml.safe_load(yaml.serialize(rule)) or {}
            entries.append(
                RuleEntry(
                    file=path,
                    line=alert.start_mark.line + 1,
                    alert=str(data.get("alert", "")),
                    expr=str(data.get("expr", "")),
                    labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
                    annotations={
                        str(k): str(v) for k, v in (data.get("annotations") or {}).items()
                    },
                )
            )
    return entries, []


def _child(node, key: str):
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if getattr(key_node, "value", None) == key:
            return value_node
    return None


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


def promtool_problems(files: list[Path]) -> list[str]:
    promtool = shutil.which("promtool")
    if not promtool or not files:
        return []
    result = subprocess.run(
        [promtool, "check", "rules", *map(str, files)], capture_output=True, text=True
    )
    if result.returncode == 0:
        return []
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    return [f"promtool: {line.strip()}" for line in lines if "SUCCESS" not in line]


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
            problems.append(f"{config.source}: {key}: {exc}")
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
            return problems, [f"warning: {where}: {exc} (directory lookups wait and retry "
                              f"until it answers)"]
        return [*problems, f"{where}: {exc}"], []
    finally:
        credentials.close()
    return problems, [f"note: the directory token endpoint issued a token to {oauth.client_id!r}"]


def run_checks(config: Config, environ: Mapping[str, str] | None = None) -> tuple[list[str], str]:
    """(problems, summary): problems is empty when everything is deployable."""
    problems: list[str] = []
    notes: list[str] = []
    directory_problems, directory_notes = directory_checks(
        config, os.environ if environ is None else environ)
    problems.extend(directory_problems)
    notes.extend(directory_notes)
    if not config.templates_dir.is_dir():
        problems.append(f"{config.templates_dir}: templates folder not found")
        templates: set[str] = set()
    else:
        templates = set(list_templates(config.templates_dir))
        problems.extend(f"{config.templates_dir}/{error}" for error in compile_all(config.templates_dir))

    rules: list[RuleEntry] = []
    files: list[Path] = []
    if not config.rules_dir.is_dir():
        problems.append(f"{config.rules_dir}: rules folder not found")
    else:
        files = rule_files(config.rules_dir)
        for path in files:
            entries, file_problems = load_rules(path)
            rules.extend(entries)
            problems.extend(file_problems)
        problems.extend(promtool_problems(files))

    for rule in rules:
        problems.extend(check_rule(rule, config, templates))
    for alertname, override in config.rule_overrides.items():
        if override.template and override.template not in templates:
            problems.append(
                f"{config.source}: alerts.rules.{alertname}.template: "
                f"email template {override.template!r} not found in {config.templates_dir}/"
            )

    used = {r.labels.get(config.template_label) for r in rules}
    used |= {o.template for o in config.rule_overrides.values()}
    unused = sorted(templates - used)
    for name in unused:
        notes.append(f"note: template {name!r} is not used by any rule")
    behavioral = [r for r in rules if r.labels.get(config.template_label)]
    checked_promtool = " (and promtool)" if shutil.which("promtool") and files else ""
    summary = "\n".join(
        notes
        + [
            f"OK: {config.source}, {len(templates)} templates, {len(files)} rule files, "
            f"{len(behavioral)} behavioral rules{checked_promtool}"
        ]
    )
    return problems, summary
