"""Prometheus rule files as Nudge reads them: alerting rules with the line of each key.

`rules_dir` holds the rule files (`*.yml`/`*.yaml`); its `tests/` folder holds their promtool
unit tests, which are not rules. Every problem names the file and line, on one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass(frozen=True)
class RuleEntry:
    file: Path
    line: int  # of `alert:`
    alert: str
    expr: str
    labels: dict[str, str]
    annotations: dict[str, str]
    # ("labels" | "annotations", name) -> line of that key, for problems that point at it
    key_lines: dict[tuple[str, str], int] = field(default_factory=dict, compare=False)

    def line_of(self, section: str, name: str) -> int:
        return self.key_lines.get((section, name), self.line)


@dataclass(frozen=True)
class RuleSet:
    """Every alerting rule in `rules_dir`, and the files that could not be read."""

    files: list[Path]
    rules: list[RuleEntry]
    problems: list[str]  # one line each: FILE:LINE: what is wrong
    broken_files: set[Path] = field(default_factory=set)

    def using_template(self, template: str, template_label: str) -> list[RuleEntry]:
        return [rule for rule in self.rules if rule.labels.get(template_label) == template]


def rule_files(rules_dir: Path) -> list[Path]:
    return sorted(
        path
        for pattern in ("*.yml", "*.yaml")
        for path in rules_dir.rglob(pattern)
        if "tests" not in path.relative_to(rules_dir).parts[:-1]
    )


def unit_test_files(rules_dir: Path) -> list[Path]:
    """The promtool unit test files of the rules: `rules_dir/tests/*.yml`."""
    folder = rules_dir / "tests"
    if not folder.is_dir():
        return []
    return sorted(p for pattern in ("*.yml", "*.yaml") for p in folder.glob(pattern))


def yaml_error(path: Path, exc: Exception) -> str:
    """A YAML error as one line: `FILE:LINE: not valid YAML: what (column N)`."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = getattr(exc, "problem", None) or getattr(exc, "reason", None) or "unreadable"
    if isinstance(exc, UnicodeDecodeError):
        return f"{path}:1: not UTF-8 text"
    if mark is None:
        return f"{path}:1: not valid YAML: {what}"
    return f"{path}:{mark.line + 1}: not valid YAML: {what} (column {mark.column + 1})"


def load_rules(path: Path) -> tuple[list[RuleEntry], list[str]]:
    """Alerting rules in a Prometheus rule file, with the line of each key."""
    try:
        root = yaml.compose(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        return [], [yaml_error(path, exc)]
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
            key_lines = {}
            for section in ("labels", "annotations"):
                node = _child(rule, section)
                if isinstance(node, yaml.MappingNode):
                    for key_node, _ in node.value:
                        key_lines[(section, str(key_node.value))] = key_node.start_mark.line + 1
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
                    key_lines=key_lines,
                )
            )
    return entries, []


def load_rule_set(rules_dir: Path) -> RuleSet:
    if not rules_dir.is_dir():
        return RuleSet([], [], [f"{rules_dir}: rules folder not found"])
    files = rule_files(rules_dir)
    rules: list[RuleEntry] = []
    problems: list[str] = []
    broken: set[Path] = set()
    for path in files:
        entries, file_problems = load_rules(path)
        rules.extend(entries)
        problems.extend(file_problems)
        if file_problems:
            broken.add(path)
    return RuleSet(files, rules, problems, broken)


def _child(node, key: str):
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if getattr(key_node, "value", None) == key:
            return value_node
    return None
