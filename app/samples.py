"""Sample alerts for `nudge check` and `nudge preview`, built from the rules themselves.

For a template, each rule that uses it gives one sample alert, as Alertmanager would send it:
the rule's labels, a user id, and the rule's annotations with their `$labels`/`$value`
placeholders filled in (`$value` from the rule's threshold: `> 0.9` gives 0.9333). What the
rule cannot say comes from an optional `<template>/sample.yml`:

    user:          # the user's directory record (default: Jane Doe, jane.doe@example.com)
      name: Grace Hopper
      signup_at: now-2d      # now-<duration>, now+<duration>: a time relative to the preview
    labels:        # label values the expression adds (`by (...)`, `group_left (...)`)
      plan: free
    annotations:   # annotations Nudge cannot compute (ones that run a `query`)
      endpoint: /v1/send
    value: 0.93    # the alert's $value

Nothing here knows any particular template: everything comes from the files.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from app.compose import alert_context
from app.durations import parse_duration
from app.rendering import SAMPLE_FILE
from app.rules import RuleEntry, RuleSet, yaml_error

SAMPLE_KEYS = ("user", "labels", "annotations", "value")
SAMPLE_USER_ID = "u_1842"
SAMPLE_EXTERNAL_URL = "http://alertmanager.internal:9093"
SAMPLE_GENERATOR_URL = "http://prometheus.internal:9090/graph?g0.expr=nudge"


def default_user(user_id: str) -> dict[str, Any]:
    return {"user_id": user_id, "email": "jane.doe@example.com", "name": "Jane Doe"}


@dataclass(frozen=True)
class SampleData:
    """The contents of a template's sample.yml (all empty when there is none)."""

    user: dict[str, Any] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    value: float | None = None


@dataclass(frozen=True)
class Sample:
    """One sample alert for a template, and the user record to render it with."""

    template: str
    rule: str  # the alertname
    origin: str  # where the alert comes from, for messages: "rule X (file:line)"
    alert: dict[str, Any]  # as in an Alertmanager webhook: labels, annotations, startsAt...
    user: dict[str, Any]
    user_id: str
    notes: tuple[str, ...] = ()  # what could not be filled in, and where to give it


# --- sample.yml ------------------------------------------------------------------------------


def load_sample_data(templates_dir: Path, template: str,
                     now: datetime | None = None) -> tuple[SampleData, list[str]]:
    """(data, problems) from `<templates_dir>/<template>/sample.yml`; problems are one line each."""
    path = Path(templates_dir) / template / SAMPLE_FILE
    if not path.is_file():
        return SampleData(), []
    try:
        document = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        return SampleData(), [yaml_error(path, exc)]
    if document is None:
        return SampleData(), []
    if not isinstance(document, dict):
        return SampleData(), [f"{path}:1: expected a mapping with keys {', '.join(SAMPLE_KEYS)}"]
    problems = [f"{path}: {key}: unknown key (allowed: {', '.join(SAMPLE_KEYS)})"
                for key in document if key not in SAMPLE_KEYS]
    now = now or datetime.now(UTC)
    user = document.get("user")
    if user is not None and not isinstance(user, dict):
        problems.append(f"{path}: user: expected a mapping (the user's directory record)")
        user = None
    labels, annotations = {}, {}
    for key, target in (("labels", labels), ("annotations", annotations)):
        value = document.get(key) or {}
        if not isinstance(value, dict):
            problems.append(f"{path}: {key}: expected a mapping of names to values")
            continue
        target.update({str(k): _text(v) for k, v in value.items()})
    number = document.get("value")
    if number is not None:
        try:
            number = float(number)
        except (TypeError, ValueError):
            problems.append(f"{path}: value: expected a number (the alert's $value), got {number!r}")
            number = None
    return SampleData(_relative_times(user, now) if user is not None else None,
                      labels, annotations, number), problems


_RELATIVE = re.compile(r"now\s*([+-])\s*(\S+)")


def _relative_times(value: Any, now: datetime) -> Any:
    """`now-2d` -> the ISO 8601 time two days before `now`, anywhere in the record."""
    if isinstance(value, dict):
        return {k: _relative_times(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_times(v, now) for v in value]
    if isinstance(value, str) and (match := _RELATIVE.fullmatch(value.strip())):
        try:
            delta = timedelta(seconds=parse_duration(match.group(2)))
        except ValueError:
            return value
        moment = now + delta if match.group(1) == "+" else now - delta
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


# --- the alert's value ----------------------------------------------------------------------

_NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
# A comparison with a plain number (not the start of arithmetic such as `< 7 * 86400`).
_COMPARISON = re.compile(rf"(>=|<=|==|!=|>|<)\s*(?:bool\s+)?({_NUMBER})(?![\d.]|\s*[-+*/%^])")


def plausible_value(expr: str) -> float:
    """A value the rule's expression could fire with, from its first threshold (`> 0.9`,
    `> 1 < 14`, `< 0.2`, `== 1`); 1 when there is none."""
    match = _COMPARISON.search(expr)
    low = high = equal = None
    while match:
        op, number = match.group(1), float(match.group(2))
        if op in (">", ">="):
            low = number
        elif op in ("<", "<="):
            high = number
        elif op == "==":
            equal = number
        # a chained comparison (`> 1 < 14`) narrows the same value
        match = _COMPARISON.match(expr, match.end() + _spaces(expr, match.end()))
    if equal is not None:
        value = equal
    elif low is not None and high is not None:
        value = (low + high) / 2
    elif low is not None:
        value = 1.0 if low == 0 else low + (1 - low) / 3 if 0 < low < 1 else low * 1.5
    elif high is not None:
        value = high / 2 if high > 0 else high - 1
    else:
        value = 1.0
    return float(f"{value:.4g}")


def _spaces(text: str, start: int) -> int:
    return len(text[start:]) - len(text[start:].lstrip())


# --- Prometheus annotation templates --------------------------------------------------------


class Unsupported(Exception):
    """A template construct Nudge does not evaluate (it runs a query, loops, ...)."""


_ACTION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.S)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`|\S+')
_KEYWORDS = {"if", "else", "end", "with", "range", "define", "template", "block", "break",
             "continue"}


def go_number(value: float) -> str:
    """A float as Prometheus prints `{{ $value }}` (Go's %v)."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


def render_annotation(text: str, labels: dict[str, str], value: float,
                      external_url: str = SAMPLE_EXTERNAL_URL) -> str:
    """Expand an annotation the way Prometheus does, for the constructs it is usually
    written with ($labels, $value, printf, humanize...); raises Unsupported otherwise."""
    output: list[str] = []
    position = 0
    for match in _ACTION.finditer(text):
        literal = text[position:match.start()]
        if match.group(1):
            literal = literal.rstrip()
        output.append(literal)
        output.append(_pipeline(match.group(2).strip(), labels, value, external_url))
        position = match.end()
        if match.group(3):
            rest = text[position:]
            position += len(rest) - len(rest.lstrip())
    output.append(text[position:])
    return "".join(output)


def _pipeline(action: str, labels, value, external_url) -> str:
    if action.startswith("/*"):
        return ""
    commands = [c.strip() for c in _split_pipes(action)]
    result: Any = _NO_INPUT
    for command in commands:
        tokens = _TOKEN.findall(command)
        if not tokens:
            raise Unsupported(f"an empty command in {{{{ {action} }}}}")
        if tokens[0] in _KEYWORDS:
            raise Unsupported(f"`{tokens[0]}`")
        args = [_operand(t, labels, value, external_url) for t in tokens[1:]]
        if tokens[0] in _FUNCTIONS:
            if result is not _NO_INPUT:
                args.append(result)
            result = _FUNCTIONS[tokens[0]](*args)
        elif len(tokens) == 1 and result is _NO_INPUT:
            result = _operand(tokens[0], labels, value, external_url)
        else:
            raise Unsupported(f"`{tokens[0]}`")
    return _go_str(result)


_NO_INPUT = object()


def _split_pipes(action: str) -> list[str]:
    parts, current, quote = [], [], None
    for char in action:
        if quote:
            current.append(char)
            if char == quote:
                quote = None
        elif char in "\"`":
            quote = char
            current.append(char)
        elif char == "|":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _operand(token: str, labels, value, external_url) -> Any:
    if token.startswith('"'):
        return json.loads(token)
    if token.startswith("`"):
        return token[1:-1]
    if re.fullmatch(_NUMBER, token):
        return float(token)
    if token in ("$value", ".Value"):
        return value
    if token in ("$externalURL", ".ExternalURL"):
        return external_url
    for prefix in ("$labels.", ".Labels.", "$externalLabels.", ".ExternalLabels."):
        if token.startswith(prefix):
            source = labels if "xternal" not in prefix else {}
            return source.get(token[len(prefix):])
    raise Unsupported(f"`{token}`")


def _go_str(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, float):
        return go_number(value)
    return str(value)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise Unsupported(f"a number function on {value!r}") from None


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([vdsfFgGeEqxX%])")


def _printf(fmt: Any, *args: Any) -> str:
    remaining = list(args)

    def verb(match: re.Match) -> str:
        flags, width, precision, kind = match.groups()
        if kind == "%":
            return "%"
        if not remaining:
            return f"%!{kind}(MISSING)"
        arg = remaining.pop(0)
        spec = f"%{flags}{width or ''}{'.' + precision if precision is not None else ''}"
        if kind in "fFgGeE":
            return (spec + kind) % _float(arg)
        if kind == "d":
            return (spec + "d") % int(_float(arg))
        if kind in "xX":
            return (spec + kind) % int(_float(arg))
        if kind == "q":
            return (spec + "s") % json.dumps(_go_str(arg))
        return (spec + "s") % _go_str(arg)

    return _VERB.sub(verb, str(fmt))


def _humanize(value: Any) -> str:
    number = _float(value)
    if number == 0 or not math.isfinite(number):
        return f"{number:.4g}"
    prefix = ""
    if abs(number) >= 1:
        for unit in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(number) < 1000:
                break
            prefix, number = unit, number / 1000
    else:
        for unit in ("m", "u", "n", "p", "f", "a", "z", "y"):
            if abs(number) >= 1:
                break
            prefix, number = unit, number * 1000
    return f"{number:.4g}{prefix}"


def _humanize_1024(value: Any) -> str:
    number = _float(value)
    prefix = ""
    for unit in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(number) < 1024:
            break
        prefix, number = unit, number / 1024
    return f"{number:.4g}{prefix}"


def _humanize_duration(value: Any) -> str:
    seconds = _float(value)
    if abs(seconds) < 60:
        return f"{seconds:.4g}s"
    sign = "-" if seconds < 0 else ""
    rest = int(abs(seconds))
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes else []
    parts += [f"{secs}s"] if secs else []
    return sign + " ".join(parts)


_FUNCTIONS = {
    "printf": _printf,
    "humanize": _humanize,
    "humanize1024": _humanize_1024,
    "humanizePercentage": lambda v: f"{_float(v) * 100:.4g}%",
    "humanizeDuration": _humanize_duration,
    "toUpper": lambda v: str(v).upper(),
    "toLower": lambda v: str(v).lower(),
    "title": lambda v: str(v).title(),
}


# --- sample alerts ---------------------------------------------------------------------------


def rules_for(template: str, rules: RuleSet, template_label: str,
              rule_overrides: dict | None = None) -> list[RuleEntry]:
    """The rules whose alerts use `template`: by label, or by a nudge.yml alerts.rules entry."""
    mapped = {name for name, o in (rule_overrides or {}).items() if o.template == template}
    return [r for r in rules.rules
            if r.labels.get(template_label) == template
            or (r.alert in mapped and template_label not in r.labels)]


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[_.-]+", name) if part)


def build_sample(template: str, rule: RuleEntry | None, data: SampleData, *,
                 user_label: str, template_label: str, resolved: bool = False,
                 now: datetime | None = None, alertname: str | None = None) -> Sample:
    """The alert `rule` would send, with the sample data's labels, annotations and user."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    name = rule.alert if rule else (alertname or _camel(template))
    labels = {"alertname": name, user_label: SAMPLE_USER_ID}
    if rule:
        labels.update(rule.labels)
    else:
        labels[template_label] = template
    labels.update(data.labels)
    value = data.value if data.value is not None else plausible_value(rule.expr if rule else "")
    annotations: dict[str, str] = {}
    notes: list[str] = []
    sample_file = f"{template}/{SAMPLE_FILE}"
    for key, text in (rule.annotations if rule else {"summary": f"{name} for user "
                                                                "{{ $labels.user_id }}"}).items():
        if key in data.annotations:
            continue
        try:
            annotations[key] = render_annotation(text, labels, value)
        except Unsupported as exc:
            notes.append(f"annotation {key!r} of {name} uses {exc}, which Nudge cannot evaluate: "
                         f"give it a sample value under `annotations:` in {sample_file}")
    annotations.update(data.annotations)
    user_id = labels.get(user_label, SAMPLE_USER_ID)
    user = dict(data.user) if data.user is not None else default_user(user_id)
    alert = {
        "status": "resolved" if resolved else "firing",
        "labels": labels,
        "annotations": annotations,
        "startsAt": (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "endsAt": (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        if resolved else None,
        "generatorURL": SAMPLE_GENERATOR_URL,
        "fingerprint": "4f3a9c1e2b7d8a60",
    }
    origin = f"rule {name} ({rule.file}:{rule.line})" if rule else "no rule uses it"
    return Sample(template, name, origin, alert, user, user_id, tuple(notes))


def samples_for(template: str, templates_dir: Path, rules: RuleSet, *, user_label: str,
                template_label: str, rule_overrides: dict | None = None, resolved: bool = False,
                now: datetime | None = None) -> tuple[list[Sample], list[str]]:
    """(one sample per rule using `template` (one generic sample when none does), problems
    in its sample.yml)."""
    data, problems = load_sample_data(templates_dir, template, now)
    kwargs = dict(user_label=user_label, template_label=template_label, resolved=resolved,
                  now=now)
    using = rules_for(template, rules, template_label, rule_overrides)
    if using:
        return [build_sample(template, rule, data, **kwargs) for rule in using], problems
    mapped = [n for n, o in (rule_overrides or {}).items() if o.template == template]
    alertname = mapped[0] if mapped else None
    return [build_sample(template, None, data, alertname=alertname, **kwargs)], problems


def sample_context(sample: Sample, *, public_url: str, user: dict[str, Any] | None = None,
                   recipient: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The template context of a sample alert, built as delivery builds it (app/compose.py).

    `user` replaces the sample's user record (`{}`: "the directory had nothing"). The
    unsubscribe link is a sample (unsigned) one on `public_url`."""
    record = sample.user if user is None else user
    user_id = sample.user_id
    address = recipient or email_of(record) or email_of(sample.user) or "jane.doe@example.com"
    return alert_context(
        sample.alert,
        kind=sample.alert["status"],
        rule=sample.rule,
        user_id=user_id,
        user=record,
        recipient=address,
        unsubscribe_url=f"{public_url.rstrip('/')}/unsubscribe/{user_id}.sample-token",
        external_url=SAMPLE_EXTERNAL_URL,
        now=now or datetime.now(UTC).replace(microsecond=0),
    )


def email_of(record: dict[str, Any]) -> str | None:
    value = record.get("email") if isinstance(record, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None
