"""The `nudge` command: a thin layer over the library; domain errors become one clear line."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import click

from app.config import Config, ConfigError, load_config, require_webhook_auth
from app.store import STATUSES, StorageError, Store, open_store, store_for
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
@pass_context
def receiver(ctx: Context, bind: str, workers: int) -> None:
    """Run only the webhook receiver (gunicorn); `nudge serve` starts it."""
    from app.server import run_receiver

    run_receiver(ctx.receiver_config(), bind, workers)


@main.command()
@click.option("--parent-pid", type=int, hidden=True)
@pass_context
def worker(ctx: Context, parent_pid: int | None) -> None:
    """Run only the delivery worker (sends queued emails)."""
    from app.server import configure_logging
    from app.worker import DeliveryWorker, watch_parent

    configure_logging()
    config = ctx.config
    try:
        store_for(config).migrate()
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    delivery_worker = DeliveryWorker(config)

    def stop(_signum, _frame):
        delivery_worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if parent_pid:
        watch_parent(delivery_worker, parent_pid)
    delivery_worker.run()


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
    widths = {c: min(w, 60) for c, w in widths.items()}
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
@click.option("--attempts", "show_attempts", is_flag=True, help="Show every attempt under each.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_context
def deliveries(ctx: Context, user, rule, status, limit, show_attempts, as_json) -> None:
    """List deliveries, newest first: what was queued, sent, retried or failed, and why."""
    store = ctx.store()
    rows = store.list_deliveries(user=user, rule=rule, status=status, limit=limit)
    if show_attempts or as_json:
        for row in rows:
            row["attempt_log"] = store.list_attempts(row["id"])

    def attempt_lines(row):
        return [f"attempt {a['attempt']} {a['started_at']} {a['outcome']} {a['error'] or ''}".rstrip()
                for a in row["attempt_log"]]

    _print_rows(
        rows,
        ["id", "created_at", "rule", "user_id", "template", "kind", "status", "attempts",
         "recipient", "next_attempt_at", "last_error"],
        as_json,
        "no deliveries",
        attempt_lines if show_attempts else None,
    )


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
    try:
        destination = open_store(target, password_file=target_password_file, pool_size=2)
        destination.migrate()
        counts = destination.import_rows(source.export_rows())
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"copied {ctx.config.database_description} into {destination.description}: "
               + ", ".join(f"{count} {table}" for table, count in counts.items()))


@main.command()
@click.option("--user", help="Only this user id.")
@click.option("--rule", help="Only this rule (alertname).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_context
def decisions(ctx: Context, user, rule, limit, as_json) -> None:
    """List per-alert decisions (queued / duplicate / skipped) with the reason, newest first."""
    rows = ctx.store().list_decisions(user=user, rule=rule, limit=limit)
    _print_rows(
        rows,
        ["id", "created_at", "rule", "user_id", "alert_status", "outcome", "reason",
         "delivery_id", "detail"],
        as_json,
        "no decisions",
    )


@main.group()
def suppress() -> None:
    """Manage the suppression (unsubscribe) list by hand."""


@suppress.command("add")
@click.argument("user_id")
@click.option("--rule", help="Suppress only this rule's emails (default: all emails).")
@pass_context
def suppress_add(ctx: Context, user_id: str, rule: str | None) -> None:
    """Stop emails to USER_ID (all of them, or one rule's)."""
    scope = rule or ALL
    new = ctx.store().add_suppression(user_id, scope, "cli", time.time())
    what = "all emails" if scope == ALL else f"rule {scope}"
    click.echo(f"suppressed {user_id} for {what}" + ("" if new else " (already suppressed)"))


@suppress.command("remove")
@click.argument("user_id")
@click.option("--rule", help="Remove only this rule's suppression (default: the 'all' one).")
@pass_context
def suppress_remove(ctx: Context, user_id: str, rule: str | None) -> None:
    """Allow emails to USER_ID again."""
    scope = rule or ALL
    if not ctx.store().remove_suppression(user_id, scope):
        what = "all emails" if scope == ALL else f"rule {scope}"
        raise click.ClickException(f"{user_id} is not suppressed for {what}")
    click.echo(f"removed suppression of {user_id} ({'all' if scope == ALL else scope})")


@suppress.command("list")
@click.option("--user", help="Only this user id.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_context
def suppress_list(ctx: Context, user: str | None, as_json: bool) -> None:
    """List suppressed users and scopes."""
    rows = ctx.store().list_suppressions(user)
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


def _preview_context(config: Config, template: str, alert_file, labels, user_json, resolved):
    from app.rendering import sample_context

    alert = _read_json(alert_file, "alert file")
    if isinstance(alert, dict) and "alerts" in alert:  # a whole webhook payload: take the first
        alert = (alert.get("alerts") or [None])[0]
    if alert is not None and not isinstance(alert, dict):
        raise click.ClickException(f"{alert_file}: expected an alert object or a webhook payload")
    merged_labels = dict((alert or {}).get("labels", {}))
    merged_labels.update(labels)
    user = _read_json(user_json, "user JSON")
    if user is not None and not isinstance(user, dict):
        raise click.ClickException(f"{user_json}: expected a JSON object (the user record)")
    context = sample_context(template, labels=merged_labels or None, user=user, resolved=resolved)
    if alert:
        context["annotations"] = {**context["annotations"], **alert.get("annotations", {})}
    # A sample (unsigned) token, but on this deployment's public URL, as the real link would be.
    token = context["unsubscribe_url"].rsplit("/", 1)[-1]
    context["unsubscribe_url"] = f"{config.public_url.rstrip('/')}/unsubscribe/{token}"
    return context


@main.command()
@click.argument("template")
@click.option("--alert", "alert_file", type=click.Path(dir_okay=False),
              help="An alert (or a whole webhook payload) as JSON to take labels from.")
@click.option("--label", "labels", multiple=True, help="NAME=VALUE label (repeatable).")
@click.option("--user-json", type=click.Path(dir_okay=False), help="User record as JSON.")
@click.option("--resolved", is_flag=True, help="Render the resolved variant.")
@click.option("--format", "fmt", type=click.Choice(["text", "html", "eml"]), default="text",
              show_default=True)
@pass_context
def preview(ctx: Context, template, alert_file, labels, user_json, resolved, fmt) -> None:
    """Render TEMPLATE with a sample context, without sending anything."""
    from app.messages import build_message
    from app.rendering import TemplateError, build_environment, render_email

    config = ctx.config
    context = _preview_context(config, template, alert_file, _parse_labels(labels), user_json,
                               resolved)
    try:
        rendered = render_email(build_environment(config.templates_dir), template, context,
                                resolved=resolved)
    except TemplateError as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "text":
        click.echo(f"Subject: {rendered.subject}\n")
        click.echo(rendered.text)
    elif fmt == "html":
        if rendered.html is None:
            raise click.ClickException(f"template {template} has no body.html")
        click.echo(rendered.html)
    else:
        try:
            message = build_message(
                sender=config.smtp_from, recipient=context["recipient"], subject=rendered.subject,
                text=rendered.text, html=rendered.html, message_id="<preview@nudge.localhost>",
                unsubscribe_url=context["unsubscribe_url"],
            )
        except ValueError as exc:
            raise click.ClickException(f"cannot build message: {exc}") from None
        click.echo(message.as_string())


@main.command("send-test")
@click.argument("template")
@click.option("--to", "recipient", required=True, help="Address to send the test email to.")
@click.option("--label", "labels", multiple=True, help="NAME=VALUE label (repeatable).")
@click.option("--user-json", type=click.Path(dir_okay=False), help="User record as JSON.")
@click.option("--resolved", is_flag=True, help="Send the resolved variant.")
@pass_context
def send_test(ctx: Context, template, recipient, labels, user_json, resolved) -> None:
    """Send one real TEMPLATE email to --to through the configured transport."""
    import uuid

    from app.messages import build_message
    from app.rendering import TemplateError, build_environment, render_email
    from app.transports import TransportError, transport_factory

    config = ctx.config
    context = _preview_context(config, template, None, _parse_labels(labels), user_json, resolved)
    context["recipient"] = recipient
    try:
        rendered = render_email(build_environment(config.templates_dir), template, context,
                                resolved=resolved)
        message = build_message(
            sender=config.smtp_from, recipient=recipient, subject=rendered.subject,
            text=rendered.text, html=rendered.html,
            message_id=f"<nudge-test-{uuid.uuid4().hex}@nudge.localhost>",
            unsubscribe_url=context["unsubscribe_url"], reply_to=config.smtp_reply_to,
        )
        transport = transport_factory(config.smtp_url, config.outbox_dir)()
        try:
            transport.send(message)
        finally:
            transport.close()
    except TemplateError as exc:
        raise click.ClickException(str(exc)) from None
    except (TransportError, ValueError) as exc:
        raise click.ClickException(f"not sent: {exc}") from None
    from app.redact import redact_url

    where = f"SMTP {redact_url(config.smtp_url)}" if config.smtp_url else str(config.outbox_dir)
    click.echo(f"sent {template} to {recipient} via {where}")


@main.command()
@pass_context
def check(ctx: Context) -> None:
    """Check nudge.yml, every template and every rule file before deploying a change."""
    from app.checks import run_checks

    problems, summary = run_checks(ctx.config)
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) found", err=True)
        sys.exit(1)
    click.echo(summary)


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("NUDGE_LOG_LEVEL", "INFO"))
    main()
