"""The email templates a process uses, checked against the rules, reloaded without a restart.

`check_templates` renders every template with the sample alert of each rule that uses it
(app/samples.py), with the sample user record and with an empty one, through the same
functions delivery uses (app/compose.py): it is what `nudge check` runs and what a reload
must pass. `TemplateSet` holds the environment in use: on SIGHUP, or when a file under
`templates_dir` or `rules_dir` changes, it loads and checks the new files, and swaps them in
only when they pass; otherwise the last good version stays in use and the problems are
logged, shown by /-/ready and counted in the metrics.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jinja2

from app.config import Config
from app.rendering import (
    TemplateError,
    build_environment,
    compile_all,
    has_resolved_variant,
    list_templates,
    render_part_by_part,
)
from app.rules import RuleSet, load_rule_set
from app.samples import Sample, sample_context, samples_for

log = logging.getLogger("nudge.templates")

POLL_INTERVAL = 2.0  # seconds between looks at the files' modification times


def check_templates(config: Config, env: jinja2.Environment, rules: RuleSet) -> list[str]:
    """Every problem of the templates in `env`: layout, compile, and rendering each email with
    the sample alert of every rule that uses it, with a full and an empty user record."""
    root = config.templates_dir
    compile_problems = compile_all(root, env)
    problems = [f"{root}/{problem}" for problem in compile_problems]
    # An error found compiling is not reported again for each sample it fails to render.
    seen = {(p.template, p.line, p.message) for p in compile_problems}
    for name in list_templates(root):
        for resolved in [False, True] if has_resolved_variant(root, name) else [False]:
            samples, sample_problems = samples_for(
                name, root, rules, user_label=config.user_label,
                template_label=config.template_label, rule_overrides=config.rule_overrides,
                resolved=resolved)
            problems.extend(p for p in sample_problems if p not in problems)
            for sample in samples:
                for user, note in ((None, ""), ({}, ", with an empty user record")):
                    for problem in _render_problems(config, env, sample, user, resolved):
                        key = (problem.template, problem.line, problem.message)
                        if key not in seen:
                            seen.add(key)
                            problems.append(f"{root}/{problem} ({_origin(sample)}{note})"
                                            + "".join(f"; {n}" for n in sample.notes))
    return problems


def _origin(sample: Sample) -> str:
    return ("sample alert of " + sample.origin if sample.origin.startswith("rule")
            else "sample alert: " + sample.origin)


def _render_problems(config: Config, env, sample: Sample, user, resolved) -> list[TemplateError]:
    context = sample_context(sample, public_url=config.public_url, user=user)
    return render_part_by_part(env, sample.template, context, resolved=resolved)


def files_signature(*folders: Path) -> tuple:
    """What changes when any file under the folders is added, removed or edited.

    Every worker process looks every POLL_INTERVAL: one stat per file (os.scandir knows
    which entries are folders without asking), not pathlib's two."""
    entries: list[tuple] = []
    for folder in folders:
        if not folder.is_dir():
            entries.append((str(folder), None))
            continue
        _add_files(str(folder), entries)
    return tuple(sorted(entries))


def _add_files(folder: str, entries: list[tuple]) -> None:
    try:
        with os.scandir(folder) as found:
            listing = list(found)
    except OSError:
        return
    for entry in listing:
        try:
            if entry.is_dir():  # as rglob: symlinks to folders are not followed
                if not entry.is_symlink():
                    _add_files(entry.path, entries)
                continue
            stat = entry.stat()
        except OSError:
            continue
        if entry.is_file():
            entries.append((entry.path, stat.st_mtime_ns, stat.st_size))


@dataclass(frozen=True)
class LoadResult:
    ok: bool
    problems: list[str]
    at: datetime


class TemplateSet:
    """The environment in use, plus what is wrong with the files on disk (if anything)."""

    def __init__(self, config: Config, *, load: bool = True, report: bool = False,
                 poll_interval: float = POLL_INTERVAL) -> None:
        """`load`: build the environment now, unchecked (the first look of the watcher, or
        the first `refresh`, checks it); `report`: log problems and set the metrics (the
        delivery worker; the receivers only answer /-/ready)."""
        self.config = config
        self.report = report
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._env: jinja2.Environment | None = None
        self._signature: tuple | None = None
        self._checked_at = 0.0
        self.last: LoadResult | None = None
        self.loaded_at: datetime | None = None  # when the version in use was loaded
        self._reload_requested = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        if load:
            self._env, self.loaded_at = build_environment(config.templates_dir), datetime.now(UTC)

    @property
    def env(self) -> jinja2.Environment:
        if self._env is None:
            self._env, self.loaded_at = (build_environment(self.config.templates_dir),
                                         datetime.now(UTC))
        assert self._env is not None
        return self._env

    def reload(self, reason: str) -> bool:
        """Load and check the files; use them if they pass (or if nothing is loaded yet)."""
        with self._lock:
            folders = (self.config.templates_dir, self.config.rules_dir)
            signature = files_signature(*folders)
            env = build_environment(self.config.templates_dir)
            rules = load_rule_set(self.config.rules_dir)
            problems = rules.problems + check_templates(self.config, env, rules)
            now = datetime.now(UTC)
            self._signature, self._checked_at = signature, time.monotonic()
            self.last = LoadResult(not problems, problems, now)
            if not problems or self._env is None:
                self._env, self.loaded_at = env, now
        if self.report:
            self._log(reason, problems, kept_old=bool(problems) and self._env is not env)
            from app import metrics

            metrics.TEMPLATES_RELOAD_OK.set(0 if problems else 1)
            metrics.TEMPLATE_RELOADS.labels("failure" if problems else "success").inc()
        return not problems

    def _log(self, reason: str, problems: list[str], kept_old: bool) -> None:
        if not problems:
            log.info("templates and rules %s (%s)",
                     "checked" if reason == "start" else "reloaded", reason)
            return
        listing = "\n  ".join(problems)
        if kept_old:
            log.error("templates/rules changed (%s) but have %d problem(s); emails keep using "
                      "the version loaded at %s:\n  %s", reason, len(problems),
                      self.loaded_at.isoformat(timespec="seconds"), listing)
        else:
            log.error("templates/rules have %d problem(s) (%s); emails that hit them fail:\n  %s",
                      len(problems), reason, listing)

    def refresh(self, min_interval: float = 0.0) -> bool:
        """Reload when a file changed since the last look; True when it reloaded."""
        if self._signature is not None and time.monotonic() - self._checked_at < min_interval:
            return False
        signature = files_signature(self.config.templates_dir, self.config.rules_dir)
        if signature == self._signature:
            self._checked_at = time.monotonic()
            return False
        self.reload("files changed" if self._signature is not None else "start")
        return True

    def request_reload(self) -> None:
        """Ask the watcher to reload now."""
        self._reload_requested.set()

    def start_watching(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="template-watch",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._reload_requested.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        requested = False  # the first look checks the files loaded at start
        while not self._stopping.is_set():
            try:
                if requested:
                    self._reload_requested.clear()
                    self.reload("SIGHUP")
                else:
                    self.refresh()
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad edit
                log.exception("reloading templates failed; still using the previous version")
            requested = self._reload_requested.wait(self.poll_interval)

    def status_lines(self) -> list[str]:
        """For /-/ready: what is wrong with the files on disk, if anything."""
        last = self.last
        if last is None or last.ok:
            return []
        return [f"templates/rules: {len(last.problems)} problem(s) in the files on disk "
                f"(checked {last.at.isoformat(timespec='seconds')}); the delivery worker keeps "
                f"using the last version that passed (`nudge check` shows the same):"] + [
            f"  {problem}" for problem in last.problems]
