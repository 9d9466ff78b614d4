"""Send one claimed delivery: suppression, recipient, render, send, and settle the outcome.

Failures are classified, never swallowed: a permanent one (render error, no address, SMTP
5xx) fails the delivery at once; a transient one (SMTP 4xx, connection, directory down while
the address is unknown) retries with exponential backoff and jitter until the attempt count
or age runs out, then the delivery is dead. Every outcome is a row in `attempts`.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from app import metrics
from app.categories import category_of, email_list_id
from app.circuit import (
    DIRECTORY,
    DIRECTORY_ADDRESS,
    NO_ADDRESS_REASONS,
    RECIPIENT,
    SETUP,
    SMTP,
    STATIC_MAP_ADDRESS,
    SendingGate,
)
from app.compose import alert_context, compose
from app.config import Config
from app.directory import StaticDirectory, directory_from_config
from app.holding import HoldStep
from app.messages import message_id_for
from app.outcomes import BackgroundOutcomes, ImmediateOutcomes
from app.recipients import choose_recipient, record_sources_by_address
from app.relay_throttle import RelayThrottle, Turn
from app.rendering import TemplateError
from app.store import (
    DEAD,
    FAILED,
    QUEUED,
    SENT,
    SUPPRESSED,
    Delivery,
    Outcome,
    Store,
)
from app.suppressions import preferences_url, suppressed_by
from app.template_set import TemplateSet
from app.transports import RateLimiter, Transport, TransportError

log = logging.getLogger("nudge.delivery")

# The part of the setup (app/circuit.py) that a source's records without an address are about.
ADDRESS_PARTS = {"directory": DIRECTORY_ADDRESS, "static_map": STATIC_MAP_ADDRESS}


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    max_age: float
    backoff: float
    max_backoff: float

    @classmethod
    def from_config(cls, config: Config) -> RetryPolicy:
        return cls(config.max_attempts, config.max_age, config.retry_backoff, config.max_backoff)


def next_retry(policy: RetryPolicy, attempts: int, age: float, jitter: float) -> float | None:
    """Seconds until the next try, or None when the delivery should be given up (dead).

    `jitter` in [0, 1) spreads retries of a burst so they do not hit the relay together."""
    if attempts >= policy.max_attempts:
        return None
    delay = min(policy.max_backoff, policy.backoff * 2 ** max(0, attempts - 1))
    delay *= 0.75 + jitter / 2
    if age + delay > policy.max_age:
        return None
    return delay


def template_context(
    delivery: Delivery,
    *,
    user: dict[str, Any],
    recipient: str,
    unsubscribe: str,
    now: datetime,
) -> dict[str, Any]:
    return alert_context(
        delivery.alert, kind=delivery.kind, rule=delivery.rule, user_id=delivery.user_id,
        user=user, recipient=recipient, unsubscribe_url=unsubscribe,
        external_url=delivery.external_url, now=now,
    )


class Deliverer:
    """What sending needs, built once per worker process and shared by its sender threads."""

    def __init__(self, config: Config, store: Store):
        self.config = config
        self.store = store
        self.secret_key = config.resolved_secret_key()
        # Reloaded when the files change (the worker starts its watcher) or on SIGHUP.
        self.templates = TemplateSet(config, report=True)
        self.retry_policy = RetryPolicy.from_config(config)
        # One rate for the whole fleet when the store can share it (PostgreSQL), else for
        # this process's senders.
        self.rate_limiter = (config.smtp_rate_limit and store.fleet_rate_limiter(
            config.smtp_rate_limit)) or RateLimiter(config.smtp_rate_limit or None)
        self.static = StaticDirectory(config.static_map) if config.static_map else None
        self.directory = directory_from_config(config, os.environ) if config.directory_url else None
        self.message_domain = urlsplit(config.public_url).hostname or "nudge.localhost"
        # Pauses sending while the setup is broken (app/circuit.py).
        self.gate = SendingGate(config.pause_probe_interval)
        self.holds = HoldStep(config, store)
        # Written before deliver() returns, unless the worker writes them in the background.
        self.outcomes: ImmediateOutcomes | BackgroundOutcomes = ImmediateOutcomes(store)
        # Slows every sender down when the relay asks (app/relay_throttle.py).
        self.relay_throttle = RelayThrottle(config.smtp_connections, config.smtp_throttle_backoff,
                                            config.smtp_throttle_max_backoff)

    def close(self) -> None:
        self.templates.close()
        if self.directory:
            self.directory.close()

    def deliver(self, transport: Transport, delivery: Delivery,
                still_claimed: Callable[[], bool] | None = None,
                suppressions: tuple[set[str], set[str]] | None = None) -> str:
        """Send one claimed delivery and record the outcome; returns the new status.

        `still_claimed` says whether our claim is still current (the worker renews leases);
        by default, whether its lease has not run out. `suppressions`: the user's, read
        with the claim (else read now)."""
        labels = delivery.alert.get("labels", {})
        where = f"delivery={delivery.id} rule={delivery.rule} user={delivery.user_id}"
        if delivery.attempts > self.retry_policy.max_attempts:
            # Only claims that ended without an outcome (a worker killed mid-send) get here.
            return self._give_up(delivery, "its earlier attempts ended without an outcome "
                                 "(worker stopped)", where)

        annotations = delivery.alert.get("annotations") or {}
        category = category_of(delivery.rule, annotations)
        scopes, categories = suppressions or self.store.user_suppressions(delivery.user_id)
        stopped = suppressed_by(scopes, delivery.rule, categories, category)
        if stopped:
            metrics.EMAILS_SUPPRESSED.labels(delivery.template).inc()
            log.info("%s suppressed: the user %s", where, stopped)
            return self._settle(delivery, SUPPRESSED, error=f"user {stopped}")

        static = self.static.lookup(delivery.user_id) if self.static else None
        directory = self.directory.lookup(delivery.user_id) if self.directory else None
        choice = choose_recipient(
            self.config.recipient_order, labels.get(self.config.email_label), static, directory
        )
        if directory is not None and directory.source == "fresh":
            self.gate.worked(DIRECTORY)
        with_address, without_address = record_sources_by_address(
            self.config.recipient_order, static, directory)
        for source in with_address:
            self.gate.worked(ADDRESS_PARTS[source])
        if choice.address is None:
            setup_outcome = self._directory_setup_check(delivery, directory, where)
            if setup_outcome is None and without_address and not choice.retry_later:
                setup_outcome = self._no_address_check(delivery, without_address, choice.reason,
                                                       where)
            if setup_outcome is not None:
                return setup_outcome
            if choice.retry_later:
                return self._retry(delivery, choice.reason, where)
            return self._fail(delivery, "no_recipient", choice.reason, where)
        held, delivery = self.holds.check(delivery, choice.user, where)
        if held is not None:  # quiet hours, the frequency cap, or cancelled / dropped
            return held

        # One link for both: the body's opens the preference page (GET), the header's is
        # RFC 8058's one-click POST, which stops this email's category.
        link = preferences_url(self.config.public_url, self.secret_key, delivery.user_id, category)
        context = template_context(
            delivery,
            user=choice.user,
            recipient=choice.address,
            unsubscribe=link,
            now=datetime.now(UTC),
        )
        try:
            message = compose(
                self.templates.env, delivery.template, context,
                resolved=delivery.kind == "resolved",
                sender=self.config.smtp_from,
                message_id=message_id_for(delivery.id, self.message_domain),
                list_unsubscribe_url=link,
                reply_to=self.config.smtp_reply_to,
                list_id=email_list_id(delivery.rule, annotations, self.message_domain),
            ).email
        except TemplateError as exc:
            return self._fail(delivery, "render_error", f"template error: {exc}", where,
                              choice.address)
        except ValueError as exc:
            return self._fail(delivery, "bad_message", f"cannot build message: {exc}", where,
                              choice.address)

        self.rate_limiter.acquire()
        turn = self.relay_throttle.wait_turn()  # the relay asked the pool to slow down
        if turn is None:
            return self._give_back(delivery, where)
        if still_claimed is None:
            def still_claimed():
                return delivery.lease_until is None or time.time() < delivery.lease_until
        if not still_claimed():
            # Waited so long (rate limit, slow directory) that the claim expired: another
            # claim may be sending it now. Sending too would be a duplicate; leave it to that.
            log.warning("%s lease expired before sending; leaving it to the next claim", where)
            return QUEUED
        started = time.perf_counter()
        try:
            transport.send(message)
        except TransportError as exc:
            if exc.throttled:
                return self._throttled(delivery, turn, exc, where, choice.address)
            if exc.setup:
                return self._pause(delivery, exc.setup, str(exc), where)
            if exc.permanent:
                # Refused for this recipient or message: the relay took our sender and login.
                self.gate.worked(SMTP)
                return self._fail(delivery, "rejected", str(exc), where, choice.address)
            return self._retry(delivery, str(exc), where, choice.address)
        finally:
            took = time.perf_counter() - started
            metrics.SEND_DURATION.observe(took)
            self.relay_throttle.finished(turn)
        try:
            self.outcomes.sent_in(took)
            self.gate.worked(SMTP)
            metrics.EMAILS_SENT.labels(delivery.template).inc()
            log.info("%s sent to %s (%s, user data: %s)", where, choice.address, choice.source,
                     directory.source if directory else "none")
        except Exception:  # noqa: BLE001 - the email is out: nothing may stop recording it
            log.exception("%s sent; reporting it failed", where)
        return self._settle(delivery, SENT, recipient=choice.address)

    def unexpected_failure(self, delivery: Delivery, exc: BaseException) -> str:
        """A bug or an unforeseen answer broke this delivery: it counts as an attempt like
        any transient failure, so max_attempts and max_age end it (dead) if it persists."""
        where = f"delivery={delivery.id} rule={delivery.rule} user={delivery.user_id}"
        detail = " ".join(str(exc).split())[:200]
        error = f"unexpected error: {type(exc).__name__}" + (f": {detail}" if detail else "")
        return self._retry(delivery, error, where)

    def _directory_setup_check(self, delivery: Delivery, lookup, where: str) -> str | None:
        """When the directory is why there is no address: pause if its failure is the setup's
        (401/403, 404 for every user), keep the delivery waiting if a 404 cannot be blamed on
        the recipient yet. None: the failure is this delivery's to handle as usual."""
        if lookup is None or "directory" not in self.config.recipient_order:
            return None
        if lookup.source != "not_found" and lookup.status in (401, 403):
            return self._pause(delivery, "directory_auth",
                               f"the directory refuses Nudge's credentials: {lookup.error}", where)
        if lookup.source != "not_found" or self.directory is None:
            return None
        verdict = self.gate.directory_not_found(delivery.user_id)
        if verdict == RECIPIENT:
            return None
        # Ask again next time rather than trust the cached 404.
        self.directory.invalidate(delivery.user_id)
        if verdict == SETUP:
            return self._pause(
                delivery, "directory_not_found",
                f"the directory answers 404 for every user asked (is directory.url "
                f"{self.config.directory_url} right?)", where)
        return self._unsure(
            delivery, f"{lookup.error}, and no other user's answer showed the directory works "
            f"before max_age", "the directory has no such user, but has not shown it works for "
            "others yet", where)

    def _no_address_check(self, delivery: Delivery, sources: list[str], reason: str,
                          where: str) -> str | None:
        """`sources` gave this user a record without an address: pause if their records keep
        coming without it (a wrong field name), keep the delivery waiting while it cannot be
        told yet. None: the missing address is this recipient's (fail it as usual)."""
        verdicts = {source: self.gate.record_without_address(ADDRESS_PARTS[source],
                                                             delivery.user_id)
                    for source in sources}
        if all(verdict == RECIPIENT for verdict in verdicts.values()):
            return None
        if "directory" in sources and self.directory is not None:
            # Ask again next time rather than trust the cached record.
            self.directory.invalidate(delivery.user_id)
        for source, verdict in verdicts.items():
            if verdict == SETUP:
                return self._pause(delivery, NO_ADDRESS_REASONS[ADDRESS_PARTS[source]],
                                   self._no_address_message(source), where)
        return self._unsure(
            delivery, f"{reason}, and no other user's record showed the address field is right "
            f"before max_age", "the user's record has no address, but no record has shown the "
            "field is right yet", where)

    def _unsure(self, delivery: Delivery, failure: str, waiting: str, where: str) -> str:
        """No address, and it cannot be blamed on the recipient yet: ask again after the probe
        interval, uncounted; fail it as `no_recipient` only once it is older than max_age."""
        if time.time() - delivery.created_epoch > self.retry_policy.max_age:
            return self._fail(delivery, "no_recipient", failure, where)
        log.info("%s: %s; asking again in %gs", where, waiting, self.gate.probe_interval)
        self.store.release(delivery, time.time(), retry_at=time.time() + self.gate.probe_interval)
        return QUEUED

    def _no_address_message(self, source: str) -> str:
        users = self.gate.not_found_threshold
        if source == "directory":
            return (f"the directory's records have no {self.config.directory_email_field!r} "
                    f"field for {users} users in a row: is directory.email_field right?")
        field = self.static.email_field if self.static else "email"
        return (f"the static map's entries have no {field!r} field for {users} users in a row: "
                f"is recipients.static_map ({self.config.static_map}) right?")

    def _pause(self, delivery: Delivery, reason: str, error: str, where: str) -> str:
        """The setup is broken: pause sending; this delivery goes back to the queue, its
        attempt not counted."""
        self.gate.setup_failed(reason, error)
        log.info("%s not sent, sending is paused (%s); it stays queued", where, reason)
        self.store.release(delivery, time.time(), retry_at=time.time() + self.gate.probe_interval)
        return QUEUED

    def _give_up(self, delivery: Delivery, error: str, where: str) -> str:
        metrics.EMAILS_DEAD.labels(delivery.template).inc()
        log.error("%s dead after %d attempts: %s", where, delivery.attempts, error)
        return self._settle(delivery, DEAD, error=error)

    def _retry(self, delivery: Delivery, error: str, where: str, recipient=None) -> str:
        now = time.time()
        delay = next_retry(
            self.retry_policy, delivery.attempts,
            now - delivery.created_epoch - delivery.held_seconds, random.random()
        )
        if delay is None:
            metrics.EMAILS_DEAD.labels(delivery.template).inc()
            log.error("%s dead after %d attempts: %s", where, delivery.attempts, error)
            return self._settle(delivery, DEAD, recipient=recipient, error=error)
        metrics.EMAILS_RETRIED.labels(delivery.template).inc()
        log.warning("%s attempt %d failed, retrying in %.0fs: %s", where, delivery.attempts,
                    delay, error)
        return self._settle(delivery, QUEUED, recipient=recipient, error=error,
                            retry_at=now + delay)

    def _fail(self, delivery: Delivery, reason: str, error: str, where: str,
              recipient=None) -> str:
        metrics.EMAILS_FAILED.labels(delivery.template, reason).inc()
        log.error("%s failed: %s", where, error)
        return self._settle(delivery, FAILED, recipient=recipient, error=error)

    def _settle(self, delivery: Delivery, status: str, **fields) -> str:
        # The outcome happened (an email may be out): it is written however long the
        # database takes (app/outcomes.py).
        self.outcomes.record(Outcome(delivery, status, **fields))
        return status

    def _throttled(self, delivery: Delivery, turn: Turn, exc: TransportError, where: str,
                   recipient: str) -> str:
        """The relay asks to slow down: the whole pool pauses (app/relay_throttle.py); this
        delivery goes back to the queue, its attempt not counted, due when the pause ends.
        Unless the relay keeps deferring this one alone: then it is its own failure."""
        wait = self.relay_throttle.throttled(turn, str(exc), exc.retry_after, delivery.id)
        if wait is None:
            return self._retry(delivery, str(exc), where, recipient)
        log.debug("%s not sent, the relay asks to slow down; it stays queued (%s)", where, exc)
        now = time.time()
        self.store.release(delivery, now, retry_at=now + wait)
        return QUEUED

    def _give_back(self, delivery: Delivery, where: str) -> str:
        """Not sent after all (stopping, or this sender is beyond the connections the relay's
        throttling allows now): back to the queue untouched, for another sender."""
        log.debug("%s given back unsent: this sender may not send now", where)
        self.store.release(delivery, time.time())
        return QUEUED
