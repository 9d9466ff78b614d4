"""Email templates: Jinja2 environment, filters, rendering and checks.

Layout: `<templates_dir>/<name>/subject.txt`, `body.txt`, optional `body.html`, and an optional
resolved variant beside them (`resolved_subject.txt`, `resolved_body.txt`,
`resolved_body.html`). Folders starting with `_` hold shared layouts and partials.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import MutableMapping
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
# Sample data for checks and previews (app/samples.py), not a template.
SAMPLE_FILE = "sample.yml"
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


class SnapshotLoader(jinja2.BaseLoader):
    """Every template file of a folder, read once: an environment built on it renders the
    files as they were when it was built, whatever happens to them afterwards (a reload
    swaps in a new environment only once the new files have passed the checks)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.searchpath = [str(self.root)]  # so errors name files relative to the root
        self.sources = {
            name: (self.root / name).read_text(encoding="utf-8", errors="replace")
            for name in _template_files(self.root)
        } if self.root.is_dir() else {}

    def get_source(self, environment, template):
        source = self.sources.get(template)
        if source is None:
            raise jinja2.TemplateNotFound(template)
        return source, str(self.root / template), lambda: True

    def list_templates(self) -> list[str]:
        return sorted(self.sources)


class _Environment(jinja2.Environment):
    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        # A plain dict, not Jinja's ChainMap: every `{% import %}` of every render subtracts
        # a template's globals keys from its context's, and against a ChainMap's keys that
        # set difference runs in Python (about a twentieth of a sender's time per email).
        # Nudge never changes an environment's globals once templates are loaded.
        return {**self.globals, **(d or {})}


class EmailEnvironment(_Environment):
    """The environment of the subject and the text body, which escapes nothing; `html` is its
    twin for the HTML body, which escapes everything it renders.

    Jinja decides autoescaping when it compiles a template, by that template's own name, so
    within one environment a `.txt` or `.j2` partial included into `body.html` would output
    label values unescaped. Each part is therefore rendered in an environment of its own,
    where every template it includes, imports or extends is compiled the part's way."""

    html: jinja2.Environment


def _environment(cls: type[jinja2.Environment], loader: jinja2.BaseLoader, *,
                 autoescape: bool) -> jinja2.Environment:
    env = cls(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
        cache_size=-1,
    )
    env.filters.update(FILTERS)
    return env


def build_environment(templates_dir: str | Path) -> EmailEnvironment:
    """Jinja2 environments for the email templates in `templates_dir`, as they are now.

    The files are read once (SnapshotLoader) and each template is compiled once per
    environment, on first use; later edits need a new environment (app/template_set.py
    reloads). The text environment is returned; its `html` twin shares the same files."""
    loader = SnapshotLoader(templates_dir)
    env = _environment(EmailEnvironment, loader, autoescape=False)
    env.html = _environment(_Environment, loader, autoescape=True)
    return env


def html_environment(env: jinja2.Environment) -> jinja2.Environment:
    """Where the HTML part renders: the escaping twin of an EmailEnvironment."""
    return getattr(env, "html", env)


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
    html = _load(html_environment(env), f"{template}/{prefix}{HTML_BODY}")
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


# --- checks ----------------------------------------------------------------------------------


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
        names = {p.name for p in folder.iterdir()} - {SAMPLE_FILE}
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


def compile_all(templates_dir: str | Path,
                env: jinja2.Environment | None = None) -> list[TemplateError]:
    """Layout and compile problems of every file in `templates_dir` (empty when clean);
    app/template_set.py renders them with sample data too."""
    root = Path(templates_dir)
    if not root.is_dir():
        return [TemplateError(str(root), None, "templates directory not found")]
    env = env or build_environment(root)
    problems = _layout_problems(root)
    seen = {(p.template, p.line, p.message) for p in problems}
    names = env.loader.list_templates() if env.loader else _template_files(root)
    for file in names:
        try:
            env.get_template(file)
        except Exception as exc:
            problem = _error_from_exception(env, exc, file)
            if (problem.template, problem.line, problem.message) not in seen:
                seen.add((problem.template, problem.line, problem.message))
                problems.append(problem)
    for name in list_templates(root):
        for resolved in [False, True] if has_resolved_variant(root, name) else [False]:
            try:
                _compiled_email(env, name, resolved)
            except TemplateError as problem:
                if (problem.template, problem.line, problem.message) not in seen:
                    seen.add((problem.template, problem.line, problem.message))
                    problems.append(problem)
    return problems


def render_part_by_part(env: jinja2.Environment, template: str, context: dict[str, Any], *,
                        resolved: bool) -> list[TemplateError]:
    """Every render problem of one email, each part on its own (so an error in the subject
    does not hide one in a body); an empty subject is a problem too."""
    try:
        compiled = _compiled_email(env, template, resolved)
    except TemplateError as problem:
        return [problem]
    problems = []
    for part in (compiled.subject, compiled.text, compiled.html):
        if part is None:
            continue
        try:
            output = _render(env, part, context)
        except TemplateError as problem:
            problems.append(problem)
            continue
        if part is compiled.subject and not collapse_whitespace(output):
            problems.append(TemplateError(part.name or template, None, "subject is empty"))
    return problems
