"""The `nudge` command: a thin layer over the library; domain errors become one clear line."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import click

from app.config import Config, ConfigError, load_config, require_webhook_auth
from app.store import DEAD, FAILED, STATUSES, StorageError, Store, open_store, store_for
from app.suppressions import ALL


def _config_failure(exc: ConfigError) -> None:
    for problem in exc.problems:
        click.echo(f"nudge: config: {problem}", err=True)
    sys.exit(2)


class Context:
    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                _config_failure(exc)
        return self._config

    def receiver_config(self) -> Config:
        """The config, plus what only the webhook receiver needs (credentials)."""
        try:
            require_webhook_auth(self.config)
        except ConfigError as exc:
            _config_failure(exc)
        return self.serving_config()

    def serving_config(self, warn: bool = True) -> Config:
        """The config of a process that serves or sends: no weak or sample secrets."""
        from app.secret_checks import require_safe_secrets
        from app.worker_health import supervised

        try:
            require_safe_secrets(self.config, warn=warn and not supervised())
        except ConfigError as exc:
            _config_failure(exc)
        return self.config

    def store(self) -> Store:
        try:
            store = store_for(self.config)
            store.migrate()
            return store
        except StorageError as exc:
            raise click.ClickException(str(exc)) from None


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar="NUDGE_CONFIG",
    type=click.Path(dir_okay=False),
    help="Path to nudge.yml (default: $NUDGE_CONFIG, else built-in defaults).",
)
@click.version_option(package_name="nudge")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Nudge: behavioral email for API products, driven by Prometheus alerting rules."""
    ctx.obj = Context(config_path)


@main.command()
@click.option("--bind", help="HOST:PORT to listen on (default: server.bind, 127.0.0.1:8080).")
@click.option("--workers", type=click.IntRange(min=1), help="Receiver processes (default 2).")
@pass_context
def serve(ctx: Context, bind: str | None, workers: int | None) -> None:
    """Run the whole service: webhook receiver and delivery worker."""
    from app.server import serve as run_service

    config = ctx.receiver_config()
    try:
        code = run_service(config, ctx.config_path, bind or config.bind, workers or config.workers)
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@main.command(hidden=True)
@click.option("--bind", required=True)
@click.option("--workers", type=click.IntRange(min=1), required=True)
@click.option("--public", is_flag=True, help="Serve only the recipient-facing pages.")
@pass_context
def receiver(ctx: Context, bind: str, workers: int, public: bool) -> None:
    """Run only the webhook receiver (gunicorn), or with --public the recipient-facing pages
    (server.public_bind); `nudge serve` starts them."""
    from app.server import run_receiver

    run_receiver(ctx.receiver_config(), bind, workers, public)


@main.command()
@click.option("--parent-pid", type=int, hidden=True)
@click.option("--sender-connections", type=click.IntRange(min=1), hidden=True,
              help="Run as one of the worker's sender processes, with this many connections.")
@pass_context
def worker(ctx: Context, parent_pid: int | None, sender_connections: int | None) -> None:
    """Run only the delivery worker (sends queued emails)."""
    from app.server import configure_logging

    write_logs_in_foreground = configure_logging(background=True)
    try:
        _run_worker(ctx, sender_connections, parent_pid)
    finally:
        # Before click prints why the worker stops: that line must be the last one.
        write_logs_in_foreground()


def _run_worker(ctx: Context, sender_connections: int | None, parent_pid: int | None) -> None:
    from app.readiness import notify_ready, take_ready_fd
    from app.sender_processes import (
        SenderProcesses,
        describe,
        forget_own_metrics,
        process_config,
        process_count,
        split_connections,
        stop_with_parent,
    )
    from app.server import freeze_heap
    from app.signal_actions import on_signals
    from app.worker import DeliveryWorker, watch_parent

    ready_fd = take_ready_fd()  # before any process is started from here

    # A sender process (started by the worker below) neither warns again, migrates, decides
    # nor prunes: the main worker process does.
    sender = sender_connections is not None
    config = ctx.serving_config(warn=not sender)
    if sender:
        shares = [sender_connections]
    else:
        try:
            store_for(config).migrate()
        except StorageError as exc:
            raise click.ClickException(str(exc)) from None
        shares = split_connections(config.smtp_connections, process_count(config))
        logging.getLogger("nudge.worker").info("%s", describe(config, shares))
    # With sender processes, this one decides and sends nothing itself: a burst is decided
    # at the speed of a process of its own, not between sends under the same lock (GIL).
    sends_here = sender or len(shares) == 1
    try:
        delivery_worker = DeliveryWorker(process_config(config, shares[0]), decide=not sender,
                                         send=sends_here)
    except ValueError as exc:  # a file the config names cannot be read or is not valid
        raise click.ClickException(f"cannot start the delivery worker: {exc}") from None
    senders = None if sends_here else SenderProcesses(config, ctx.config_path, shares)

    def stop(_sig: signal.Signals) -> None:
        delivery_worker.stop()  # the sender processes are stopped when this is set

    def reload(sig: signal.Signals) -> None:
        templates.request_reload()
        if senders:
            senders.forward(sig)

    templates = delivery_worker.deliverer.templates
    on_signals({signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: reload})
    templates.start_watching()  # also picks up edited files, without a signal
    if sender:
        stop_with_parent()
    if parent_pid:
        watch_parent(delivery_worker, parent_pid)
    if config.retention is not None and not sender:
        from app.pruning import RetentionKeeper

        RetentionKeeper(delivery_worker.store, config.retention, delivery_worker.stopping).start()
    if senders:
        senders.start(delivery_worker.stopping)
        senders.started.wait()  # bounded: app/sender_processes.READY_TIMEOUT
    freeze_heap()
    delivery_worker.run(started=lambda: notify_ready(ready_fd))
    if senders:
        senders.join()
    if sender:
        forget_own_metrics()


def _print_rows(rows: list[dict], columns: list[str], as_json: bool, empty: str,
                details=None) -> None:
    """A table (or JSON); `details(row)` gives extra indented lines printed under a row."""
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(empty)
        return
    widths = {c: max(len(c), *(len(str(r.get(c) if r.get(c) is not None else "-")) for r in rows))
              for c in columns}
    # The last column (a reason, in every listing) is shown whole.
    widths = {c: w if c == columns[-1] else min(w, 60) for c, w in widths.items()}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            text = "-" if value is None else str(value)
            if len(text) > widths[column]:
                text = text[: widths[column] - 1] + "…"
            cells.append(text.ljust(widths[column]))
        click.echo("  ".join(cells).rstrip())
        for line in details(row) if details else ():
            click.echo("    " + line)


@main.command()
@click.option("--user", help="Only this user id.")
@click.option("--rule", help="Only this rule (alertname).")
@click.option("--status", type=click.Choice(STATUSES), help="Only deliveries in this status.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--attempts", "show_attempts", is_flag=True,
              help="Show every attempt, hold and release under each.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_context
def deliveries(ctx: Context, user, rule, status, limit, show_attempts, as_json) -> None:
    """List deliveries, newest first: what was queued, held, sent, retried, failed or
    cancelled, and why (WHY: the last hold, release, drop or cancellation)."""
    store = ctx.store()
    rows = store.list_deliveries(user=user, rule=rule, status=status, limit=limit)
    for row in rows:
        row["why"] = row.pop("note", None)
    if show_attempts or as_json:
        for row in rows:
            row["attempt_log"] = store.list_attempts(row["id"])
            row["hold_log"] = store.list_delivery_events(row["id"])

    def attempt_lines(row):
        lines = [(a["started_at"], f"attempt {a['attempt']} {a['started_at']} {a['outcome']} "
                  f"{a['error'] or ''}".rstrip()) for a in row["attempt_log"]]
        lines += [(e["created_at"], f"{e['event']} {e['created_at']} {e['detail']}")
                  for e in row["hold_log"]]
        return [line for _, line in sorted(lines, key=lambda pair: pair[0])]

    _print_rows(
        rows,
        ["id", "created_at", "rule", "user_id", "template", "kind", "status", "attempts",
         "recipient", "next_attempt_at", "last_error", "why"],
        as_json,
        "no deliveries",
        attempt_lines if show_attempts else None,
    )


def _moment(value: str | None, now: float, option: str) -> float | None:
    """A duration ago (`2h`, `3d`) or a time (ISO 8601, UTC unless it says otherwise)."""
    from datetime import UTC, datetime

    from app.durations import parse_duration

    if value is None:
        return None
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"expected a duration ago (2h, 3d) or a time "
                                 f"(2026-11-30T14:00:00Z), got {value[:40]!r}",
                                 param_hint=option) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@main.command()
@click.argument("delivery_ids", nargs=-1, type=click.IntRange(min=1), metavar="[ID]...")
@click.option("--rule", help="Only this rule (alertname).")
@click.option("--user", help="Only this user id.")
@click.option("--status", "statuses", multiple=True, type=click.Choice([FAILED, DEAD]),
              help="Only deliveries in this status (repeatable; default: failed and dead).")
@click.option("--since", help="Only those that failed at or after this: a duration ago (2h) "
              "or a time (2026-11-30T14:00:00Z).")
@click.option("--until", help="Only those that failed before this (same forms as --since).")
@click.option("--all", "everything", is_flag=True,
              help="Every failed and dead delivery (needed when no other filter is given).")
@click.option("--dry-run", is_flag=True, help="List what would be requeued; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_context
def retry(ctx: Context, delivery_ids, rule, user, statuses, since, until, everything, dry_run,
          as_json) -> None:
    """Put failed or dead deliveries back in the queue, with a fresh attempt budget.

    For after a setup mistake is fixed (a relay that rejected everyone, a wrong directory
    URL): the cooldown and dedup key these deliveries hold would stop Alertmanager's repeats
    from ever sending them. Safe while Nudge runs; a delivery being sent is never touched."""
    from app.store import RetrySelection

    if not (delivery_ids or rule or user or statuses or since or until or everything):
        raise click.UsageError("say which deliveries: IDs, --rule, --user, --status, --since, "
                               "--until, or --all for every failed and dead one")
    now = time.time()
    selection = RetrySelection(
        ids=tuple(delivery_ids), rule=rule, user=user, statuses=tuple(statuses) or (FAILED, DEAD),
        since=_moment(since, now, "--since"), until=_moment(until, now, "--until"))
    store = ctx.store()
    try:
        rows = store.retryable(selection)
        if not dry_run and rows:
            requeued: set[int] = set()
            ids = [row["id"] for row in rows]
            for start in range(0, len(ids), 500):  # short transactions beside a running worker
                requeued.update(store.requeue(ids[start:start + 500], now,
                                              "requeued by nudge retry"))
            rows = [row for row in rows if row["id"] in requeued]
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    _print_rows(rows, ["id", "updated_at", "rule", "user_id", "template", "status", "attempts",
                       "last_error"], as_json, "no failed or dead deliveries match")
    if not as_json and rows:
        verb = "would requeue" if dry_run else "requeued"
        noun = "delivery" if len(rows) == 1 else "deliveries"
        click.echo(f"{verb} {len(rows)} {noun} with a fresh attempt budget"
                   + ("" if dry_run else "; follow them with: nudge deliveries --attempts"))
    missing = sorted(set(delivery_ids) - {row["id"] for row in rows})
    if missing:
        click.echo(f"not requeued (no such delivery, not failed or dead, its alert resolved "
                   f"since, filtered out, or pruned): {', '.join(map(str, missing))}", err=True)
        sys.exit(1)


@main.command()
@click.option("--older-than", "older_than", help="Delete history older than this duration "
              "(e.g. 90d; default: the `retention` setting).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; change nothing.")
@pass_context
def prune(ctx: Context, older_than: str | None, dry_run: bool) -> None:
    """Delete raw notifications, decisions and attempts older than a duration.

    Dedup keys, cooldowns, suppressions and each (rule, user)'s latest delivery stay, so
    pruning never lets an email be sent again. The worker does this by itself every hour
    (`retention`); this is for doing it now, or with another window."""
    from app import retention
    from app.clock import iso
    from app.durations import parse_duration
    from app.pruning import prune as prune_history

    if older_than is None:
        window = ctx.config.retention
        if window is None:
            raise click.UsageError("retention is forever (keep everything): give --older-than")
    else:
        try:
            window = parse_duration(older_than)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
        if window <= 0:
            raise click.BadParameter("must be above zero", param_hint="--older-than")
    before = retention.cutoff(time.time(), window)
    store = ctx.store()
    try:
        counts = store.prunable(before) if dry_run else prune_history(store, before)
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} history older than {retention.format_window(window)} (before {iso(before)}):")
    for line in retention.describe(counts):
        click.echo(f"  {line}")
    click.echo(f"kept: {retention.KEPT}")


@main.command("copy-database")
@click.argument("target")
@click.option("--target-password-file", type=click.Path(dir_okay=False),
              help="File holding the target's password (instead of one in the URL).")
@pass_context
def copy_database(ctx: Context, target: str, target_password_file: str | None) -> None:
    """Copy everything in the configured database into TARGET (a new, empty database).

    TARGET is a PostgreSQL URL (or a SQLite path). History, the queue, cooldowns, dedup keys
    and suppressions move with it, so repeats stay duplicates and unsubscribes stay in force.
    Stop Nudge first; then point `database` at TARGET."""
    source = ctx.store()
    if str(target) == str(ctx.config.database):
        raise click.ClickException("TARGET is the configured database itself")
    destination = None
    try:
        destination = open_store(target, password_file=target_password_file, pool_size=2)
        destination.migrate()
        counts = destination.import_rows(source.export_rows())
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if destination is not None:
            destination.close_all()  # its pool's threads end here, not in a garbage collection
    click.echo(f"copied {ctx.config.database_description} into {destination.description}: "
               + ", ".join(f"{count} {table}" for table, count in counts.items()))


@main.command()
@click.option("--user", help="Only this user id.")
@click.option("--rule", help="Only this rule (alertname).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_context
def decisions(ctx: Context, user, rule, limit, as_json) -> None:
    """List per-alert decisions (queued / duplicate / skipped / cancelled) with the reason,
    newest first; NOW says what became of the email since (held back and why, sent...)."""
    rows = ctx.store().list_decisions(user=user, rule=rule, limit=limit)
    for row in rows:  # the email's story since the decision (held, sent, cancelled...)
        status, note = row["delivery_status"], row["delivery_note"]
        row["now"] = (note if note and note.startswith(status) else
                      f"{status} ({note})" if note else status)
    _print_rows(
        rows,
        ["id", "created_at", "rule", "user_id", "alert_status", "outcome", "reason",
         "delivery_id", "detail", "now"],
        as_json,
        "no decisions",
    )


@main.group()
def suppress() -> None:
    """Manage the suppression (unsubscribe) list by hand."""


@suppress.command("add")
@click.argument("user_id")
@click.option("--rule", help="Suppress only this rule's emails (default: all emails).")
@click.option("--category", help="Suppress only this category's emails (a rule's nudge_category; "
              "by default its alertname).")
@pass_context
def suppress_add(ctx: Context, user_id: str, rule: str | None, category: str | None) -> None:
    """Stop emails to USER_ID (all of them, one rule's or one category's)."""
    if category is not None:
        _only_one(rule, category)
        new = ctx.store().add_category_suppression(user_id, category, "cli", time.time())
        click.echo(f"suppressed {user_id} for category {category}"
                   + ("" if new else " (already suppressed)"))
        return
    scope = rule or ALL
    new = ctx.store().add_suppression(user_id, scope, "cli", time.time())
    what = "all emails" if scope == ALL else f"rule {scope}"
    click.echo(f"suppressed {user_id} for {what}" + ("" if new else " (already suppressed)"))


@suppress.command("remove")
@click.argument("user_id")
@click.option("--rule", help="Remove only this rule's suppression (default: the 'all' one).")
@click.option("--category", help="Remove only this category's suppression.")
@pass_context
def suppress_remove(ctx: Context, user_id: str, rule: str | None, category: str | None) -> None:
    """Allow emails to USER_ID again."""
    if category is not None:
        _only_one(rule, category)
        if not ctx.store().remove_category_suppression(user_id, category):
            raise click.ClickException(f"{user_id} is not suppressed for category {category}")
        click.echo(f"removed suppression of {user_id} (category {category})")
        return
    scope = rule or ALL
    if not ctx.store().remove_suppression(user_id, scope):
        what = "all emails" if scope == ALL else f"rule {scope}"
        raise click.ClickException(f"{user_id} is not suppressed for {what}")
    click.echo(f"removed suppression of {user_id} ({'all' if scope == ALL else scope})")


def _only_one(rule: str | None, category: str | None) -> None:
    if rule is not None and category is not None:
        raise click.UsageError("give --rule or --category, not both")


@suppress.command("list")
@click.option("--user", help="Only this user id.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_context
def suppress_list(ctx: Context, user: str | None, as_json: bool) -> None:
    """List suppressed users and scopes (a category's scope reads `category:NAME`)."""
    store = ctx.store()
    rows = store.list_suppressions(user) + [
        {"user_id": row["user_id"], "scope": f"category:{row['category']}",
         "category": row["category"], "source": row["source"], "created_at": row["created_at"]}
        for row in store.list_category_suppressions(user)]
    _print_rows(rows, ["user_id", "scope", "source", "created_at"], as_json, "no suppressions")


def _parse_labels(pairs: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--label")
        labels[name] = value
    return labels


def _read_json(path: str | None, what: str):
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise click.ClickException(f"cannot read {what} {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}") from None


class _Preview:
    """What `preview` and `send-test` render: a sample alert from the template's rule (or
    --alert), a user record (sample, --user-json, or --user looked up as delivery would),
    and notes about what was filled in for them."""

    def __init__(self, config: Config, template: str, *, alert_file=None, labels=None,
                 user_id=None, user_json=None, resolved=False):
        from app.rules import load_rule_set
        from app.samples import SAMPLE_EXTERNAL_URL, samples_for

        self.config, self.template, self.resolved = config, template, resolved
        self.notes: list[str] = []
        samples, _ = samples_for(template, config.templates_dir, load_rule_set(config.rules_dir),
                                 user_label=config.user_label,
                                 template_label=config.template_label,
                                 rule_overrides=config.rule_overrides, resolved=resolved)
        sample = samples[0]
        if len(samples) > 1:
            self.notes.append(f"{len(samples)} rules use {template}: showing {sample.origin}")
        self.external_url = SAMPLE_EXTERNAL_URL
        alert = sample.alert
        if alert_file:
            alert = self._alert_from_file(alert_file, sample.alert)
        else:
            self.notes.extend(sample.notes)
        alert = {**alert, "labels": {**alert["labels"], **(labels or {})}}
        lookup = bool(user_id) or (alert_file and config.user_label in alert["labels"])
        if user_id:
            alert["labels"][config.user_label] = user_id
        user_id = alert["labels"].get(config.user_label) or sample.user_id
        self.sample = replace(sample, alert=alert, user_id=user_id)
        self.user, self.recipient = self._user(user_json, lookup)

    def _alert_from_file(self, path: str, sample_alert: dict) -> dict:
        from app.alerts import PayloadError, parse_notification

        data = _read_json(path, "alert file")
        if isinstance(data, dict) and "alerts" in data:  # a whole webhook payload: the first
            payload = data
        elif isinstance(data, dict):  # one alert: what it leaves out comes from the sample
            payload = {"version": "4", "alerts": [{
                **sample_alert, **data,
                "labels": {**sample_alert["labels"], **(data.get("labels") or {})},
                "annotations": {**sample_alert["annotations"], **(data.get("annotations") or {})},
            }]}
        else:
            raise click.ClickException(f"{path}: expected an alert object or a webhook payload")
        try:
            notification = parse_notification(payload)
        except PayloadError as exc:
            raise click.ClickException(f"{path}: {exc}") from None
        if not notification.alerts:
            raise click.ClickException(f"{path}: the payload has no alerts")
        self.external_url = notification.external_url or self.external_url
        return json.loads(notification.alerts[0].to_json())

    def _user(self, user_json, lookup: bool) -> tuple[dict, str | None]:
        from app.samples import email_of

        if user_json is not None:
            user = _read_json(user_json, "user JSON")
            if not isinstance(user, dict):
                raise click.ClickException(f"{user_json}: expected a JSON object (the user record)")
            return user, email_of(user)
        if not lookup:
            return self.sample.user, None
        return self._looked_up_user()

    def _looked_up_user(self) -> tuple[dict, str | None]:
        """The user's record and address as delivery would find them (recipients.order)."""
        from app.directory import StaticDirectory, directory_from_config
        from app.recipients import choose_recipient

        config, user_id = self.config, self.sample.user_id
        static = directory = None
        try:
            if config.static_map:
                static = StaticDirectory(config.static_map).lookup(user_id)
            if config.directory_url:
                client = directory_from_config(config, os.environ)
                try:
                    directory = client.lookup(user_id)
                finally:
                    client.close()
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        labels = self.sample.alert["labels"]
        choice = choose_recipient(config.recipient_order, labels.get(config.email_label),
                                  static, directory)
        if not (config.static_map or config.directory_url):
            self.notes.append(f"user {user_id}: no directory configured (directory.url or "
                              f"NUDGE_DIRECTORY_URL) and no recipients.static_map: showing the "
                              f"sample user record")
            return self.sample.user, choice.address
        if directory is not None and directory.source == "stale":
            self.notes.append(f"user {user_id}: the directory failed ({directory.error}): "
                              f"showing the cached record")
        if not choice.user:
            why = choice.reason.removeprefix("no address: ") if not choice.address else (
                directory.error if directory and directory.error else "no record")
            self.notes.append(f"user {user_id}: {why}: showing the sample user record")
            return self.sample.user, choice.address
        if not choice.address:
            self.notes.append(f"user {user_id}: {choice.reason}: the email would not be sent")
        return choice.user, choice.address

    def context(self, recipient: str | None = None) -> dict:
        from app.samples import sample_context

        context = sample_context(self.sample, public_url=self.config.public_url, user=self.user,
                                 recipient=recipient or self.recipient)
        context["external_url"] = self.external_url
        return context

    def compose(self, context: dict, message_id: str):
        from urllib.parse import urlsplit

        from app.categories import email_list_id
        from app.compose import compose
        from app.rendering import build_environment

        domain = urlsplit(self.config.public_url).hostname or "nudge.localhost"
        return compose(build_environment(self.config.templates_dir), self.template, context,
                       resolved=self.resolved, sender=self.config.smtp_from,
                       message_id=message_id, list_unsubscribe_url=context["unsubscribe_url"],
                       reply_to=self.config.smtp_reply_to,
                       list_id=email_list_id(context["rule"], context["annotations"], domain))


@main.command()
@click.argument("template")
@click.option("--user", "user_id", help="Render for this user: their record from the directory "
              "(or static map), as delivery would find it.")
@click.option("--alert", "alert_file", type=click.Path(dir_okay=False),
              help="An alert (or a whole webhook payload) as JSON: its labels, annotations and "
              "times replace the sample's.")
@click.option("--label", "labels", multiple=True, help="NAME=VALUE label (repeatable).")
@click.option("--user-json", type=click.Path(dir_okay=False), help="User record as JSON.")
@click.option("--resolved", is_flag=True, help="Render the resolved variant.")
@click.option("--format", "fmt", type=click.Choice(["text", "html", "eml"]), default="text",
              show_default=True)
@pass_context
def preview(ctx: Context, template, user_id, alert_file, labels, user_json, resolved,
            fmt) -> None:
    """Render TEMPLATE for its rule's sample alert, without sending anything."""
    from app.rendering import TemplateError

    preview = _Preview(ctx.config, template, alert_file=alert_file, labels=_parse_labels(labels),
                       user_id=user_id, user_json=user_json, resolved=resolved)
    for note in preview.notes:
        click.echo(f"note: {note}", err=True)
    context = preview.context()
    try:
        composed = preview.compose(context, "<preview@nudge.localhost>")
    except TemplateError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.ClickException(f"cannot build message: {exc}") from None
    rendered = composed.rendered
    if fmt == "text":
        click.echo(f"Subject: {rendered.subject}\n")
        click.echo(rendered.text)
    elif fmt == "html":
        if rendered.html is None:
            raise click.ClickException(f"template {template} has no body.html")
        click.echo(rendered.html)
    else:
        click.echo(composed.message.as_string())


@main.command("send-test")
@click.argument("template")
@click.option("--to", "recipient", required=True, help="Address to send the test email to.")
@click.option("--user", "user_id", help="Render for this user (their directory record).")
@click.option("--label", "labels", multiple=True, help="NAME=VALUE label (repeatable).")
@click.option("--user-json", type=click.Path(dir_okay=False), help="User record as JSON.")
@click.option("--resolved", is_flag=True, help="Send the resolved variant.")
@pass_context
def send_test(ctx: Context, template, recipient, user_id, labels, user_json, resolved) -> None:
    """Send one real TEMPLATE email to --to through the configured transport."""
    import uuid

    from app.redact import redact_url
    from app.rendering import TemplateError
    from app.transports import TransportError, transport_factory

    config = ctx.config
    preview = _Preview(config, template, labels=_parse_labels(labels), user_id=user_id,
                       user_json=user_json, resolved=resolved)
    for note in preview.notes:
        click.echo(f"note: {note}", err=True)
    try:
        message = preview.compose(preview.context(recipient=recipient),
                                  f"<nudge-test-{uuid.uuid4().hex}@nudge.localhost>").email
        transport = transport_factory(config.smtp_url, config.outbox_dir)()
        try:
            transport.send(message)
        finally:
            transport.close()
    except TemplateError as exc:
        raise click.ClickException(str(exc)) from None
    except (TransportError, ValueError) as exc:
        raise click.ClickException(f"not sent: {exc}") from None
    where = f"SMTP {redact_url(config.smtp_url)}" if config.smtp_url else str(config.outbox_dir)
    click.echo(f"sent {template} to {recipient} via {where}")


@main.command()
@click.argument("name")
@click.option("--alert", "alertname", help="Alert name of the rule (default: NAME in CamelCase).")
@click.option("--rule-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Add the rule to this file in rules_dir (default: rules_dir/NAME.yml).")
@pass_context
def new(ctx: Context, name: str, alertname: str | None, rule_file: Path | None) -> None:
    """Scaffold a new behavioral email NAME: a rule, its promtool test, and a template."""
    from app.scaffold import ScaffoldError, scaffold

    try:
        made = scaffold(ctx.config, name, alert=alertname, rule_file=rule_file)
    except ScaffoldError as exc:
        raise click.ClickException(str(exc)) from None
    verb = "added to" if made.appended else "created"
    click.echo(f"{verb} {made.rule_file} (rule {made.alert})")
    for path in made.created[1:]:
        click.echo(f"created {path}")
    click.echo(f"\nThey pass `nudge check` as they are. Next: change what the comments marked "
               f"CHANGE say, then\n"
               f"  nudge check                      # templates, rules and promtool tests\n"
               f"  nudge preview {name} --user ID   # the email, with a real user's record")


@main.command()
@click.option("--no-promtool", "no_promtool", is_flag=True,
              help="Skip promtool (rule syntax and the rules' unit tests).")
@click.option("--alertmanager-config", "alertmanager_configs", multiple=True,
              type=click.Path(dir_okay=False),
              help="Also check this Alertmanager config's webhook to Nudge (repeatable).")
@pass_context
def check(ctx: Context, no_promtool: bool, alertmanager_configs: tuple[str, ...]) -> None:
    """Check nudge.yml, every template and every rule (and its unit tests) before a deploy."""
    from app.checks import run_checks

    report = run_checks(ctx.config, promtool=not no_promtool,
                        alertmanager_configs=tuple(alertmanager_configs))
    for line in report.problems + report.warnings:
        click.echo(line, err=True)
    for note in report.notes:
        click.echo(note)
    warned = f", {len(report.warnings)} warning(s)" if report.warnings else ""
    if report.problems:
        click.echo(f"{len(report.problems)} problem(s) found{warned}", err=True)
        sys.exit(1)
    click.echo(report.summary + (f" ({len(report.warnings)} warning(s))" if warned else ""))

if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("NUDGE_LOG_LEVEL", "INFO"))
    main()
