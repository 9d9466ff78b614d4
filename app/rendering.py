"""Email templates: Jinja2 environment, filters, rendering and checks.

Layout: `<templates_dir>/<name>/subject.txt`, `body.txt`, optional `body.html`, and an optional
resolved variant beside them (`resolved_subject.txt`, `resolved_body.txt`,
`resolved_body.html`). Folders starting with `_` hold shared layouts and partials.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import jinja2

SUBJECT = "subject.txt"
TEXT_BODY = "body.txt"
HTML_BODY = "body.html"
RESOLVED_PREFIX = "resolved_"
TEMPLATE_FILES = frozenset(
    prefix + f for prefix in ("", RESOLVED_PREFIX) for f in (SUBJECT, TEXT_BODY, HTML_BODY)
)
# Files with these endings are compiled by compile_all; anything else is not a template.
TEMPLATE_SUFFIXES = (".txt", ".html", ".jinja", ".j2")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class TemplateError(Exception):
    """A template that is missing, does not compile, or fails to render."""

    def __init__(self, template: str, line: int | None, message: str) -> None:
        super().__init__(template, line, message)
        self.template = template
        self.line = line
        self.message = message

    def __str__(self) -> str:
        where = self.template if self.line is None else f"{self.template} line {self.line}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str | None


# --- filters -------------------------------------------------------------------------------


class _FilterInputError(ValueError):
    """A filter was given a value it cannot interpret."""


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_defined(value: Any) -> None:
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()


def _to_datetime(value: Any, filter_name: str) -> datetime:
    """Datetime, date or ISO 8601 string -> aware UTC datetime (naive values are taken as UTC)."""
    _check_defined(value)
    moment: Any = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            moment = None
    elif isinstance(value, date) and not isinstance(value, datetime):
        moment = datetime(value.year, value.month, value.day)
    if not isinstance(moment, datetime):
        raise _FilterInputError(
            f"{filter_name} filter: expected a datetime or an ISO 8601 string, "
            f"got {_describe(value)}"
        )
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _to_decimal(value: Any, filter_name: str) -> Decimal:
    _check_defined(value)
    number: Decimal | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int | float | Decimal):
        number = Decimal(str(value))
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            number = None
    if number is None or not number.is_finite():
        raise _FilterInputError(f"{filter_name} filter: expected a number, got {_describe(value)}")
    return number


def _check_digits(digits: Any, filter_name: str) -> int:
    if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 10:
        raise _FilterInputError(
            f"{filter_name} filter: digits must be a whole number 0-10, got {_describe(digits)}"
        )
    return digits


def _rounded(number: Decimal, digits: int) -> Decimal:
    return number.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)


def filter_date(value: Any, format: str | None = None) -> str:
    """`2026-11-22T20:04:00Z` -> "22 November 2026"; `format` is a strftime format."""
    moment = _to_datetime(value, "date")
    if format is not None:
        return moment.strftime(format)
    return f"{moment.day} {moment:%B %Y}"


def filter_datetime(value: Any) -> str:
    """`2026-11-22T20:04:00Z` -> "22 November 2026, 20:04 UTC"."""
    moment = _to_datetime(value, "datetime")
    return f"{moment.day} {moment:%B %Y, %H:%M} UTC"


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


@jinja2.pass_context
def filter_timeago(context: jinja2.runtime.Context, value: Any) -> str:
    """Relative time ("3 hours ago", "in 2 days") from the context's `now` (else the clock)."""
    moment = _to_datetime(value, "timeago")
    now = context.get("now")
    now = _to_datetime(now, "timeago") if isinstance(now, datetime) else datetime.now(UTC)
    delta = now - moment
    seconds = abs(delta.total_seconds())
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        span = _plural(int(seconds // 60), "minute")
    elif seconds < 86400:
        span = _plural(int(seconds // 3600), "hour")
    elif seconds < 30 * 86400:
        span = _plural(int(seconds // 86400), "day")
    elif seconds < 365 * 86400:
        span = _plural(int(seconds // (30 * 86400)), "month")
    else:
        span = _plural(int(seconds // (365 * 86400)), "year")
    return f"{span} ago" if delta >= timedelta(0) else f"in {span}"


def filter_percent(value: Any, digits: int = 0) -> str:
    """0.934 -> "93%"; `digits` decimal places ("0.934"|percent(1) -> "93.4%")."""
    digits = _check_digits(digits, "percent")
    return f"{_rounded(_to_decimal(value, 'percent') * 100, digits):,.{digits}f}%"


def filter_number(value: Any, digits: int = 0) -> str:
    """12345 -> "12,345"; `digits` decimal places (1234.5|number(1) -> "1,234.5")."""
    digits = _check_digits(digits, "number")
    return f"{_rounded(_to_decimal(value, 'number'), digits):,.{digits}f}"


FILTERS = {
    "date": filter_date,
    "datetime": filter_datetime,
    "timeago": filter_timeago,
    "percent": filter_percent,
    "number": filter_number,
}


# --- environment and rendering --------------------------------------------------------------


def build_environment(templates_dir: str | Path) -> jinja2.Environment:
    """Jinja2 environment for the email templates in `templates_dir`.

    Templates are compiled once and never reloaded (restart to pick up edits).
    """
    root = str(Path(templates_dir).resolve())
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(root),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html",), default_for_string=False, default=False
        ),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
        cache_size=-1,
    )
    env.filters.update(FILTERS)
    return env


def _is_template_dir(path: Path) -> bool:
    return (
        path.is_dir()
        and _NAME_RE.fullmatch(path.name) is not None
        and (path / SUBJECT).is_file()
    )


def list_templates(templates_dir: str | Path) -> list[str]:
    """Sorted names of the template folders (those with a subject.txt)."""
    root = Path(templates_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _is_template_dir(p))


def has_resolved_variant(templates_dir: str | Path, name: str) -> bool:
    """Whether template `name` has a resolved variant (a resolved_subject.txt)."""
    if _NAME_RE.fullmatch(name) is None:
        return False
    return (Path(templates_dir) / name / (RESOLVED_PREFIX + SUBJECT)).is_file()


@dataclass(frozen=True)
class _CompiledEmail:
    subject: jinja2.Template
    text: jinja2.Template
    html: jinja2.Template | None


# Per environment: (template name, resolved) -> compiled parts, so the hot path does no I/O.
_compiled: weakref.WeakKeyDictionary[
    jinja2.Environment, dict[tuple[str, bool], _CompiledEmail]
] = weakref.WeakKeyDictionary()


def _template_name(env: jinja2.Environment, filename: str) -> str | None:
    """The template name of a file under the environment's search path, else None."""
    for base in getattr(env.loader, "searchpath", []):
        try:
            return Path(filename).relative_to(base).as_posix()
        except ValueError:
            continue
    return None


def _error_from_exception(
    env: jinja2.Environment, exc: BaseException, template: str
) -> TemplateError:
    """Turn an exception raised while compiling or rendering `template` into a TemplateError."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        name = exc.name or (exc.filename and _template_name(env, exc.filename)) or template
        return TemplateError(name, exc.lineno, exc.message or "syntax error")

    # Jinja rewrites tracebacks so template frames carry the template's filename and line;
    # the innermost such frame is where the error happened (maybe in a layout or partial).
    where, line = template, None
    tb = exc.__traceback__
    while tb is not None:
        name = _template_name(env, tb.tb_frame.f_code.co_filename)
        if name is not None:
            where, line = name, tb.tb_lineno
        tb = tb.tb_next

    if isinstance(exc, jinja2.TemplateNotFound) and exc.message == exc.name:
        message = f"template {exc.name!r} not found"
    elif isinstance(exc, jinja2.TemplateError | _FilterInputError):
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
    return TemplateError(where, line, message)


def _load(env: jinja2.Environment, file: str) -> jinja2.Template | None:
    """Compiled `file`, or None when that file does not exist; other failures raise."""
    try:
        return env.get_template(file)
    except jinja2.TemplateNotFound as exc:
        if exc.name == file:
            return None
        raise _error_from_exception(env, exc, file) from None
    except Exception as exc:
        raise _error_from_exception(env, exc, file) from None


def _compiled_email(env: jinja2.Environment, template: str, resolved: bool) -> _CompiledEmail:
    per_env = _compiled.setdefault(env, {})
    compiled = per_env.get((template, resolved))
    if compiled is not None:
        return compiled

    if _NAME_RE.fullmatch(template) is None:
        raise TemplateError(template, None, "not a valid email template name")
    prefix = RESOLVED_PREFIX if resolved else ""
    subject = _load(env, f"{template}/{prefix}{SUBJECT}")
    if subject is None:
        if resolved and _load(env, f"{template}/{SUBJECT}") is not None:
            raise TemplateError(
                template, None, f"has no resolved variant (no {template}/{prefix}{SUBJECT})"
            )
        raise TemplateError(template, None, f"no such email template (no {template}/{SUBJECT})")
    text = _load(env, f"{template}/{prefix}{TEXT_BODY}")
    if text is None:
        raise TemplateError(f"{template}/{prefix}{TEXT_BODY}", None, "file not found")
    html = _load(env, f"{template}/{prefix}{HTML_BODY}")
    compiled = _CompiledEmail(subject, text, html)
    per_env[(template, resolved)] = compiled
    return compiled


def _render(env: jinja2.Environment, tmpl: jinja2.Template, context: dict[str, Any]) -> str:
    try:
        return tmpl.render(context)
    except Exception as exc:
        raise _error_from_exception(env, exc, tmpl.name or "<template>") from None


def collapse_whitespace(text: str) -> str:
    """All runs of whitespace (CR and LF included) -> one space, stripped."""
    return " ".join(text.split())


def render_email(
    env: jinja2.Environment, template: str, context: dict[str, Any], *, resolved: bool = False
) -> RenderedEmail:
    """Render template `template` (or its resolved variant); raises TemplateError."""
    compiled = _compiled_email(env, template, resolved)
    subject = collapse_whitespace(_render(env, compiled.subject, context))
    text = _render(env, compiled.text, context)
    html = None if compiled.html is None else _render(env, compiled.html, context)
    return RenderedEmail(subject=subject, text=text, html=html)


# --- sample context and checks ---------------------------------------------------------------

RULE_FOR_TEMPLATE = {
    "onboarding_first_call": "NoFirstApiCall",
    "first_call_success": "FirstSuccessfulCall",
    "quota_warning": "QuotaNearlyExhausted",
    "error_rate_spike": "IntegrationErrorRateHigh",
    "deprecated_endpoint": "DeprecatedEndpointInUse",
    "payment_failed": "PaymentFailed",
    "usage_drop": "UsageDropped",
}

# Mirrors the annotations of the shipped rules in alert_rules/ (Prometheus renders $value as
# a plain float, e.g. "0.9341").
_SAMPLE_ANNOTATIONS: dict[str, dict[str, str]] = {
    "onboarding_first_call": {
        "summary": "User u_1842 signed up 2.0 days ago and has not called the API yet",
        "days_since_signup": "2.0",
    },
    "first_call_success": {
        "summary": "User u_1842 made their first successful API call",
        "successful_calls": "1",
    },
    "quota_warning": {
        "summary": "User u_1842 (starter plan) has used 93.41% of the monthly quota",
        "quota_used_ratio": "0.9341",
        "quota_used_percent": "93.41%",
    },
    "error_rate_spike": {
        "summary": "31.25% of API calls by user u_1842 failed in the last 15 minutes",
        "error_ratio": "0.3125",
        "error_percent": "31.25%",
        "endpoint": "/v1/send",
    },
    "deprecated_endpoint": {
        "summary": "User u_1842 is still calling deprecated API endpoints",
        "endpoint": "/v1/send",
        "deprecated_calls_last_hour": "37",
    },
    "payment_failed": {
        "summary": "The latest payment of user u_1842 (starter plan) failed",
    },
    "usage_drop": {
        "summary": "User u_1842 made 12.4% of last week's API requests in the last 24h",
        "usage_vs_last_week": "12.4%",
        "usage_ratio": "0.124",
    },
}


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _sample_user(template: str, user_id: str, now: datetime) -> dict[str, Any]:
    user: dict[str, Any] = {
        "user_id": user_id,
        "email": "jane.doe@example.com",
        "name": "Jane Doe",
        "plan": "starter",
        "signup_at": _iso(now - timedelta(days=45)),
        "quota_limit": 100000,
        "quota_used": 93412,
        "requests_30d": 182345,
        "errors_24h": 1287,
        "deprecated_calls_7d": 4210,
        "last_call_at": _iso(now - timedelta(minutes=12)),
        "payment_status": "ok",
        "card_last4": "4242",
    }
    if template == "onboarding_first_call":
        user.update(
            signup_at=_iso(now - timedelta(days=2)), quota_used=0, requests_30d=0,
            errors_24h=0, deprecated_calls_7d=0, last_call_at=None,
        )
    elif template == "first_call_success":
        user.update(
            signup_at=_iso(now - timedelta(days=1)), quota_used=1, requests_30d=1,
            errors_24h=0, deprecated_calls_7d=0, last_call_at=_iso(now - timedelta(minutes=3)),
        )
    elif template == "payment_failed":
        user.update(payment_status="failed")
    elif template == "usage_drop":
        user.update(requests_30d=3120, last_call_at=_iso(now - timedelta(days=6)))
    return user


def sample_context(
    template: str,
    *,
    labels: dict[str, str] | None = None,
    user: dict[str, Any] | None = None,
    resolved: bool = False,
) -> dict[str, Any]:
    """A realistic template context for previews and checks.

    `labels` are merged over the sample labels; `user` replaces the sample user record
    (pass `{}` for "the directory had nothing").
    """
    now = datetime.now(UTC).replace(microsecond=0)
    rule = RULE_FOR_TEMPLATE.get(template) or "".join(
        part.capitalize() for part in re.split(r"[_.-]+", template)
    )
    sample_labels = {
        "alertname": rule,
        "user_id": "u_1842",
        "email_template": template,
        "plan": "starter",
    }
    merged_labels = {**sample_labels, **(labels or {})}
    user_id = merged_labels["user_id"]
    record = _sample_user(template, user_id, now) if user is None else dict(user)
    annotations = dict(
        _SAMPLE_ANNOTATIONS.get(template, {"summary": f"{rule} for user {user_id}"})
    )
    return {
        "labels": merged_labels,
        "annotations": annotations,
        "alert": {
            "status": "resolved" if resolved else "firing",
            "starts_at": now - timedelta(hours=2),
            "ends_at": now - timedelta(minutes=5) if resolved else None,
            "generator_url": "http://prometheus.internal:9090/graph?g0.expr=nudge",
            "fingerprint": "4f3a9c1e2b7d8a60",
        },
        "rule": merged_labels["alertname"],
        "user_id": user_id,
        "user": record,
        "recipient": record.get("email") or "jane.doe@example.com",
        "unsubscribe_url": f"https://nudge.example.com/unsubscribe/{user_id}.sample-token",
        "external_url": "http://alertmanager.internal:9093",
        "now": now,
    }


def _template_files(root: Path) -> list[str]:
    """Every template file under `root` (layouts and partials included), as template names."""
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file()
        and path.name.endswith(TEMPLATE_SUFFIXES)
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def _layout_problems(root: Path) -> list[TemplateError]:
    """Folders that look like templates but are not, and misnamed files in template folders."""
    problems = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name.startswith(("_", ".")):
            continue
        if _NAME_RE.fullmatch(folder.name) is None:
            problems.append(TemplateError(folder.name, None, "not a valid email template name"))
            continue
        if not (folder / SUBJECT).is_file():
            problems.append(TemplateError(folder.name, None, f"folder has no {SUBJECT}"))
            continue
        names = {p.name for p in folder.iterdir()}
        resolved_files = {n for n in names if n.startswith(RESOLVED_PREFIX)}
        if resolved_files and RESOLVED_PREFIX + SUBJECT not in names:
            message = f"resolved files without {RESOLVED_PREFIX}{SUBJECT}"
            problems.append(TemplateError(folder.name, None, message))
        for name in sorted(names - TEMPLATE_FILES):
            if not name.startswith(("_", ".")):
                problems.append(
                    TemplateError(
                        f"{folder.name}/{name}", None,
                        "unexpected file (partials must start with '_')",
                    )
                )
    return problems


def compile_all(templates_dir: str | Path) -> list[TemplateError]:
    """Every problem in `templates_dir`: layout, compile and render errors (empty when clean)."""
    root = Path(templates_dir)
    if not root.is_dir():
        return [TemplateError(str(root), None, "templates directory not found")]
    env = build_environment(root)
    problems = _layout_problems(root)
    seen = {(p.template, p.line, p.message) for p in problems}

    def report(problem: TemplateError, note: str = "") -> None:
        key = (problem.template, problem.line, problem.message)
        if key not in seen:
            seen.add(key)
            problems.append(
                TemplateError(problem.template, problem.line, problem.message + note)
            )

    for file in _template_files(root):
        try:
            env.get_template(file)
        except Exception as exc:
            report(_error_from_exception(env, exc, file))

    for name in list_templates(root):
        variants = [False, True] if has_resolved_variant(root, name) else [False]
        for resolved in variants:
            for user, note in ((None, ""), ({}, " (with an empty user record)")):
                try:
                    compiled = _compiled_email(env, name, resolved)
                except TemplateError as problem:
                    report(problem, note)
                    continue
                context = sample_context(name, user=user, resolved=resolved)
                # Each part on its own, so an error in the subject does not hide one in a body.
                for part in (compiled.subject, compiled.text, compiled.html):
                    if part is None:
                        continue
                    try:
                        output = _render(env, part, context)
                    except TemplateError as problem:
                        report(problem, note)
                        continue
                    if part is compiled.subject and not collapse_whitespace(output):
                        report(TemplateError(part.name or name, None, "subject is empty"), note)
    return problems
