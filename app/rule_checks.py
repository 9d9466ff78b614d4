"""What `nudge check` says about rule files beyond their syntax: names that look like
misspelt Nudge settings, rules that look like emails but name no template, and what
promtool says about the rules and their unit tests (one problem per problem, with file and
line, progress lines left out)."""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.categories import (
    CATEGORY_ANNOTATION,
    TITLE_ANNOTATION,
    category_of,
    category_problem,
    title_of,
    title_problem,
)
from app.config import Config
from app.durations import format_duration
from app.holds import (
    CANCEL_ON_RESOLVE_ANNOTATION,
    ESSENTIAL_ANNOTATION,
    PRIORITY_ANNOTATION,
    rule_holds,
)
from app.policy import COOLDOWN_ANNOTATION, SEND_RESOLVED_ANNOTATION
from app.rules import RuleEntry

PROMTOOL_TIMEOUT = 120  # seconds for one promtool run: a week of 1m samples takes a few


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _looks_like(name: str, setting: str) -> bool:
    """`name` is not `setting` but probably meant it (case, separators, a missing `nudge_`
    prefix, a typo or two)."""
    if name == setting:
        return False
    written, wanted = _norm(name), _norm(setting)
    bare = wanted.removeprefix("nudge")
    if written in (wanted, bare):
        return True
    ratio = difflib.SequenceMatcher(None, written, wanted).ratio()
    bare_ratio = difflib.SequenceMatcher(None, written, bare).ratio() if len(bare) >= 6 else 0
    return max(ratio, bare_ratio) >= 0.85


def rule_warnings(rule: RuleEntry, config: Config) -> list[str]:
    """Warnings (the rule works, but probably not as meant), one line each with file:line."""
    settings = {
        "annotations": [COOLDOWN_ANNOTATION, SEND_RESOLVED_ANNOTATION],
        "labels": [config.template_label, config.user_label],
    }
    defaults = {
        COOLDOWN_ANNOTATION: "cooldown "
        + ("forever" if config.default_cooldown is None
           else format_duration(config.default_cooldown)),
        SEND_RESOLVED_ANNOTATION: "send_resolved "
        + ("true" if config.default_send_resolved else "false"),
        config.template_label: "no email",
        config.user_label: "no email",
    }
    warnings = []
    for section, other in (("annotations", "labels"), ("labels", "annotations")):
        names = rule.annotations if section == "annotations" else rule.labels
        for name in names:
            where = f"{rule.file}:{rule.line_of(section, name)}: warning: {rule.alert}"
            kind = section[:-1]
            if name in settings[other] and name not in settings[section]:
                warnings.append(f"{where}: {name!r} is {kind}, but Nudge reads it from the "
                                f"rule's {other}: it is ignored here")
                continue
            for setting in settings[section]:
                if _looks_like(name, setting):
                    warnings.append(
                        f"{where}: {kind} {name!r} is not a Nudge setting and is ignored: did "
                        f"you mean {setting!r}? (without it: {defaults[setting]})")
                    break
    template = rule.labels.get(config.template_label)
    override = config.rule_overrides.get(rule.alert)
    if not template and not (override and override.template) and keeps_label(
            rule, config.user_label):
        warnings.append(
            f"{rule.file}:{rule.line}: warning: {rule.alert}: keeps the {config.user_label!r} "
            f"label but names no email template (label {config.template_label!r}): Nudge "
            f"skips its alerts (no_template)")
    return warnings


def keeps_label(rule: RuleEntry, label: str) -> bool:
    """Whether the rule's alerts carry `label`: a static label, or named in the expression."""
    return label in rule.labels or re.search(rf"\b{re.escape(label)}\b", rule.expr) is not None


# --- categories (nudge_category, nudge_title) ----------------------------------------------------


def category_problems(rule: RuleEntry) -> list[str]:
    """A `nudge_category` or `nudge_title` the preference page cannot list, with file:line."""
    problems = []
    for name, problem_of in ((CATEGORY_ANNOTATION, category_problem),
                             (TITLE_ANNOTATION, title_problem)):
        if name in rule.annotations:
            problem = problem_of(str(rule.annotations[name]))
            if problem:
                problems.append(f"{rule.file}:{rule.line_of('annotations', name)}: "
                                f"{rule.alert}: {problem}")
    return problems


def category_warnings(rules: Sequence[RuleEntry], config: Config) -> list[str]:
    """Rules of one category that give it different titles: recipients see only the first
    (rules in file order), so the others are probably a slip."""
    first: dict[str, tuple[str, RuleEntry]] = {}
    warnings = []
    for rule in rules:
        if not rule.labels.get(config.template_label) and not (
                (override := config.rule_overrides.get(rule.alert)) and override.template):
            continue
        if category_problems(rule):
            continue
        category = category_of(rule.alert, rule.annotations)
        title = title_of(rule.alert, rule.annotations)
        if title is None or TITLE_ANNOTATION not in rule.annotations:
            continue
        if category not in first:
            first[category] = (title, rule)
        elif first[category][0] != title:
            seen_title, seen = first[category]
            warnings.append(
                f"{rule.file}:{rule.line_of('annotations', TITLE_ANNOTATION)}: warning: "
                f"{rule.alert}: category {category!r} is titled {seen_title!r} by {seen.alert} "
                f"({seen.file}:{seen.line_of('annotations', TITLE_ANNOTATION)}) but {title!r} "
                f"here: recipients see {seen_title!r}")
    return warnings


# --- promtool ----------------------------------------------------------------------------------


def promtool_path() -> str | None:
    return shutil.which("promtool")


def _run(args: Sequence[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(args), capture_output=True, text=True,
                              timeout=PROMTOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 1, "", f"timed out after {PROMTOOL_TIMEOUT}s")


_LOCATED = re.compile(r"^(?P<file>.+?): (?P<line>\d+):\d+: (?P<message>.*)$")
_YAML_LINE = re.compile(r"^(?P<file>.+?): (?P<message>yaml: line (?P<line>\d+): .*)$")


def promtool_check_rules(promtool: str, files: Sequence[Path]) -> list[str]:
    """`promtool check rules`: one problem per error it reports, as FILE:LINE: message."""
    if not files:
        return []
    result = _run([promtool, "check", "rules", *map(str, files)])
    if result.returncode == 0:
        return []
    problems: list[str] = []
    for raw in (result.stderr + "\n" + result.stdout).splitlines():
        line = raw.strip()
        if not line or line.startswith(("Checking ", "SUCCESS", "FAILED")):
            continue
        located = _LOCATED.match(line) or _YAML_LINE.match(line)
        if located:
            text = f"{located['file']}:{located['line']}: promtool: {located['message']}"
        else:
            text = f"promtool: {line}"
        if text not in problems:
            problems.append(text)
    return problems


def promtool_unit_tests(promtool: str, files: Sequence[Path]) -> tuple[list[str], list[str]]:
    """(problems, warnings) of `promtool test rules`, each file run in parallel. A failing
    test evaluation is one problem (FILE:LINE of its test), promtool's expected-versus-got
    listing indented under it."""
    if not files:
        return [], []
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        results = list(pool.map(lambda f: (f, _run([promtool, "test", "rules", str(f)])), files))
    problems: list[str] = []
    warnings: list[str] = []
    for path, result in results:
        file_problems, file_warnings = _parse_test_output(path, result)
        problems.extend(file_problems)
        warnings.extend(file_warnings)
    return problems, warnings


def _parse_test_output(path: Path, result: subprocess.CompletedProcess
                       ) -> tuple[list[str], list[str]]:
    text = path.read_text(errors="replace") if path.is_file() else ""
    problems: list[str] = []
    warnings: list[str] = []
    current: list[str] | None = None  # the failure being read: its first line, then details
    name = ""
    failures: list[list[str]] = []
    for raw in result.stderr.splitlines():
        line = raw.strip()
        if not line or line == "FAILED:":
            continue
        if line.startswith("WARNING:"):
            warnings.append(f"{path}:1: warning: promtool: {line.removeprefix('WARNING:').strip()}")
            continue
        if raw.startswith("    name: "):
            name = line.removeprefix("name: ").rstrip(",")
            continue
        if raw.startswith("    ") and not raw.startswith("     ") and ", time: " in line:
            current = [f"{path}:{_line_of_test(text, name)}: promtool test {name!r} failed: "
                       f"{line.rstrip(', ')}"]
            failures.append(current)
            continue
        if current is not None and raw.startswith("        "):
            current.append(raw.rstrip())
            continue
        located = _YAML_LINE.match(line)
        problem = [f"{path}:{located['line']}: promtool: {located['message']}" if located
                   else f"{path}:1: promtool: {line}"]
        failures.append(problem)
        current = None
    problems.extend("\n".join(failure) for failure in failures)
    if result.returncode != 0 and not problems:
        problems.append(f"{path}:1: promtool test rules failed (exit status "
                        f"{result.returncode}): {result.stdout.strip()[-300:]}")
    return problems, warnings


def _line_of_test(text: str, name: str) -> int:
    if name:
        for number, line in enumerate(text.splitlines(), 1):
            if re.match(rf"\s*-?\s*name:\s*['\"]?{re.escape(name)}['\"]?\s*$", line):
                return number
    return 1


# --- holding emails back (app/holds.py) -----------------------------------------------------

HOLD_ANNOTATIONS = (PRIORITY_ANNOTATION, ESSENTIAL_ANNOTATION, CANCEL_ON_RESOLVE_ANNOTATION)


def hold_annotation_problems(rule: RuleEntry) -> list[str]:
    """`nudge_priority` must be a whole number; `nudge_essential` and
    `nudge_cancel_on_resolve` 'true' or 'false' (one problem each, at its line)."""
    problems = []
    for name in HOLD_ANNOTATIONS:
        if name not in rule.annotations:
            continue
        try:
            rule_holds({name: rule.annotations[name]})
        except ValueError as exc:
            problems.append(f"{rule.file}:{rule.line_of('annotations', name)}: {rule.alert}: {exc}")
    return problems


def hold_annotation_warnings(rule: RuleEntry) -> list[str]:
    """Annotations that look like a misspelt hold setting (ignored, so the email is not
    held, prioritised or kept as meant)."""
    warnings = []
    known = {COOLDOWN_ANNOTATION, SEND_RESOLVED_ANNOTATION, CATEGORY_ANNOTATION,
             TITLE_ANNOTATION, *HOLD_ANNOTATIONS}
    for name in rule.annotations:
        if name in known:
            continue
        for setting in HOLD_ANNOTATIONS:
            if _looks_like(name, setting):
                warnings.append(
                    f"{rule.file}:{rule.line_of('annotations', name)}: warning: {rule.alert}: "
                    f"annotation {name!r} is not a Nudge setting and is ignored: did you mean "
                    f"{setting!r}?")
                break
    return warnings
