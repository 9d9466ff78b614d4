"""Which alerts become emails: the delivery policy as pure functions over plain data.

An alert is a behavioral email when it carries the user label and names a template (its
`email_template` label, else a per-alertname mapping in nudge.yml). Per rule, settings come
from the rule's annotations (`nudge_cooldown`, `nudge_send_resolved`), else nudge.yml's
`alerts.rules.<alertname>`, else the `alerts` defaults.

Deduplication is by a key: one delivery per (rule, user, firing episode), where the episode
is the alert's startsAt, or per (rule, user) ever when the cooldown is `forever`. `judge`
gives the verdict for a candidate from the facts the store hands it (which keys already have
a delivery, when each (rule, user) was last emailed); the store keeps those facts true until
the verdicts are recorded, and the key is also a UNIQUE column as a last line of defence.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.alerts import Alert
from app.clock import iso
from app.config import Config, RuleOverride
from app.durations import format_duration, parse_cooldown
from app.holds import rule_holds
from app.store import Facts

COOLDOWN_ANNOTATION = "nudge_cooldown"
SEND_RESOLVED_ANNOTATION = "nudge_send_resolved"

# Outcomes of a decision.
QUEUED, DUPLICATE, SKIPPED = "queued", "duplicate", "skipped"
CANCELLED = "cancelled"  # a resolved alert cancelled its waiting firing email

# Reasons are metric label values: keep this set small and fixed.
NO_USER_LABEL = "no_user_label"
NO_TEMPLATE = "no_template"
INVALID_SETTINGS = "invalid_settings"
RESOLVED_NOT_REQUESTED = "resolved_not_requested"
RESOLVED_WITHOUT_FIRING_EMAIL = "resolved_without_firing_email"
COOLDOWN = "cooldown"
SAME_EPISODE = "same_episode"
ONCE_EVER = "already_sent_once"
NEW_EPISODE = "new_episode"
ALERT_RESOLVED = "alert_resolved"
FIRING_EMAIL_CANCELLED = "firing_email_cancelled"


@dataclass(frozen=True)
class AlertPolicy:
    user_label: str = "user_id"
    template_label: str = "email_template"
    default_cooldown: float | None = 86400.0
    default_send_resolved: bool = False
    rule_overrides: dict[str, RuleOverride] | None = None

    @classmethod
    def from_config(cls, config: Config) -> AlertPolicy:
        return cls(
            user_label=config.user_label,
            template_label=config.template_label,
            default_cooldown=config.default_cooldown,
            default_send_resolved=config.default_send_resolved,
            rule_overrides=config.rule_overrides,
        )


@dataclass(frozen=True)
class Skip:
    rule: str
    user_id: str
    reason: str
    detail: str


@dataclass(frozen=True)
class Candidate:
    """An alert that should become one email, unless its key or the cooldown says otherwise."""

    rule: str
    user_id: str
    template: str
    kind: str  # "firing" | "resolved"
    cooldown: float | None  # seconds between emails of this rule to this user; None = forever
    dedup_key: str
    firing_key: str  # the key of the firing email a resolved email follows up on


@dataclass(frozen=True)
class RuleSettings:
    template: str | None
    cooldown: float | None
    send_resolved: bool


def rule_settings(alert: Alert, policy: AlertPolicy) -> RuleSettings:
    """Settings for this alert's rule; ValueError naming the bad annotation or key."""
    rule = alert.labels.get("alertname", "")
    override = (policy.rule_overrides or {}).get(rule, RuleOverride())
    template = alert.labels.get(policy.template_label) or override.template

    cooldown = policy.default_cooldown if override.cooldown == "default" else override.cooldown
    if COOLDOWN_ANNOTATION in alert.annotations:
        try:
            cooldown = parse_cooldown(alert.annotations[COOLDOWN_ANNOTATION])
        except ValueError as exc:
            raise ValueError(f"annotation {COOLDOWN_ANNOTATION}: {exc}") from None

    send_resolved = policy.default_send_resolved
    if override.send_resolved is not None:
        send_resolved = override.send_resolved
    if SEND_RESOLVED_ANNOTATION in alert.annotations:
        value = alert.annotations[SEND_RESOLVED_ANNOTATION].strip().lower()
        if value not in ("true", "false"):
            raise ValueError(
                f"annotation {SEND_RESOLVED_ANNOTATION}: expected 'true' or 'false', got {value!r}"
            )
        send_resolved = value == "true"
    return RuleSettings(template, cooldown, send_resolved)  # type: ignore[arg-type]


def decide(alert: Alert, policy: AlertPolicy, memo: dict | None = None) -> Skip | Candidate:
    """`memo`: a dict kept by the caller for one policy, so a batch of alerts of one rule
    works out the rule's settings once (they depend only on the values in the key below)."""
    rule = alert.labels.get("alertname", "")
    user_id = alert.labels.get(policy.user_label, "")
    if not user_id:
        return Skip(rule, "", NO_USER_LABEL, f"alert has no {policy.user_label!r} label")
    annotations = alert.annotations
    key = (rule, alert.labels.get(policy.template_label), annotations.get(COOLDOWN_ANNOTATION),
           annotations.get(SEND_RESOLVED_ANNOTATION))
    settings = memo.get(key) if memo is not None else None
    if settings is None:
        try:
            settings = rule_settings(alert, policy)
        except ValueError as exc:
            settings = ValueError(str(exc))
        if memo is not None:
            if len(memo) > 10_000:
                memo.clear()
            memo[key] = settings
    if isinstance(settings, ValueError):
        return Skip(rule, user_id, INVALID_SETTINGS, str(settings))
    if not settings.template:
        return Skip(
            rule,
            user_id,
            NO_TEMPLATE,
            f"no {policy.template_label!r} label and no template for {rule!r} in nudge.yml",
        )
    if alert.status == "resolved" and not settings.send_resolved:
        return Skip(rule, user_id, RESOLVED_NOT_REQUESTED, "rule does not ask for a resolved email")
    firing_key = dedup_key(rule, user_id, "firing", alert.starts_at, settings.cooldown)
    return Candidate(
        rule=rule,
        user_id=user_id,
        template=settings.template,
        kind=alert.status,
        cooldown=settings.cooldown,
        dedup_key=dedup_key(rule, user_id, alert.status, alert.starts_at, settings.cooldown),
        firing_key=firing_key,
    )


def dedup_key(rule: str, user_id: str, kind: str, starts_at: str, cooldown: float | None) -> str:
    episode = "forever" if cooldown is None else starts_at
    # \x1f (unit separator) cannot appear in a Prometheus label name and keeps fields apart.
    return "\x1f".join((rule, user_id, kind, episode))


def duplicate_reason(candidate: Candidate, original_delivery: int) -> tuple[str, str]:
    if candidate.cooldown is None:
        return ONCE_EVER, (
            f"cooldown is forever and this user already had this email (delivery "
            f"{original_delivery})"
        )
    return SAME_EPISODE, (
        f"this firing episode (same startsAt) already has delivery {original_delivery}"
    )


def cooldown_detail(candidate: Candidate, last_queued_at: str) -> str:
    return (
        f"last email for this rule and user was queued at {last_queued_at}; "
        f"cooldown is {format_duration(candidate.cooldown)}"
    )


@dataclass(frozen=True)
class Verdict:
    outcome: str  # QUEUED | DUPLICATE | SKIPPED
    reason: str
    detail: str
    delivery_id: int | None = None  # the delivery a duplicate repeats


def judge(candidate: Candidate, facts: Facts, now: float) -> Verdict:
    """Queue, duplicate or cooldown: the verdict for one candidate, given what is stored."""
    if candidate.kind == "resolved" and candidate.firing_key not in facts.deliveries:
        return Verdict(SKIPPED, RESOLVED_WITHOUT_FIRING_EMAIL, "no firing email was queued")
    original = facts.deliveries.get(candidate.dedup_key)
    if original is not None:
        reason, detail = duplicate_reason(candidate, original)
        return Verdict(DUPLICATE, reason, detail, original)
    if takes_cooldown(candidate):
        last = facts.last_queued.get((candidate.rule, candidate.user_id))
        if last is not None and last > now - candidate.cooldown:
            return Verdict(SKIPPED, COOLDOWN, cooldown_detail(candidate, iso(last)))
    return Verdict(QUEUED, NEW_EPISODE, f"{candidate.kind} email {candidate.template!r} queued")


def takes_cooldown(candidate: Candidate) -> bool:
    """Firing emails with a finite, non-zero cooldown space out the emails of (rule, user)."""
    return candidate.kind == "firing" and bool(candidate.cooldown)


def remember_queued(facts: Facts, candidate: Candidate, delivery_id: int, now: float) -> None:
    """What the next candidates of the same batch must see once this one is queued."""
    facts.deliveries[candidate.dedup_key] = delivery_id
    if takes_cooldown(candidate):
        facts.last_queued[(candidate.rule, candidate.user_id)] = now


def firing_key_to_cancel(alert: Alert, policy: AlertPolicy) -> str | None:
    """For a resolved alert whose rule cancels waiting emails when the alert resolves (the
    default; `nudge_cancel_on_resolve: "false"` keeps them): the dedup key of its episode's
    firing email. None otherwise."""
    if alert.status != "resolved":
        return None
    user_id = alert.labels.get(policy.user_label, "")
    if not user_id:
        return None
    try:
        if not rule_holds(alert.annotations).cancel_on_resolve:
            return None
        settings = rule_settings(alert, policy)
    except ValueError:
        return None  # recorded as invalid_settings by `decide`
    if not settings.template:
        return None
    return dedup_key(alert.labels.get("alertname", ""), user_id, "firing", alert.starts_at,
                     settings.cooldown)


def resolved_cancellation(candidate: Candidate | Skip, delivery_id: int, before: str
                          ) -> Verdict | None:
    """The decision for a resolved alert whose firing email was waiting (`before` its
    status when the alert resolved): cancelled now, or already cancelled earlier."""
    follow_up = isinstance(candidate, Candidate)
    if before == "queued":
        also = "; no resolved email either" if follow_up else ""
        return Verdict(CANCELLED, ALERT_RESOLVED, f"delivery {delivery_id} cancelled: alert "
                       f"resolved before sending{also}", delivery_id)
    if before == "cancelled" and follow_up:
        return Verdict(SKIPPED, FIRING_EMAIL_CANCELLED, f"the firing email (delivery "
                       f"{delivery_id}) was cancelled: no resolved email")
    return None
