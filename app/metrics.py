"""Every Prometheus metric Nudge exports, in one place.

Under `nudge serve` several processes (gunicorn workers, the delivery worker) write
metrics; prometheus-client's multiprocess mode aggregates them when
PROMETHEUS_MULTIPROC_DIR is set before this module is imported (`nudge serve` does that).
"""

import os
import threading

from prometheus_client import Counter, Gauge, Histogram

# In multiprocess mode prometheus-client creates its files when a metric without labels is
# defined, at import: a folder named in the environment but not made yet must not crash it.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

# --- bounded labels ---------------------------------------------------------------------------
#
# Some label values come from whoever sends alerts: the Alertmanager `receiver` name, the
# template an alert's label names. Each distinct value is a time series (in Prometheus, and a
# line in every scrape), so a sender with a loop could create millions. Such labels keep the
# first MAX_LABEL_VALUES distinct values each process sees (plenty for any real setup) and
# count everything after, and any value longer than MAX_LABEL_LENGTH, as "other".
MAX_LABEL_VALUES = 50
MAX_LABEL_LENGTH = 100
OTHER = "other"


class BoundedValues:
    """The distinct values one label may take in this process: the first `limit` seen."""

    def __init__(self, limit: int = MAX_LABEL_VALUES):
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def bound(self, value: object) -> str:
        text = str(value)
        if len(text) > MAX_LABEL_LENGTH:
            return OTHER
        with self._lock:
            if text in self._seen:
                return text
            if len(self._seen) < self.limit:
                self._seen.add(text)
                return text
        return OTHER


class BoundedLabels:
    """A metric whose labels named in `bounded` go through their BoundedValues; used exactly
    like the metric (`.labels(...)` by position or by name)."""

    def __init__(self, metric, **bounded: BoundedValues):
        self.metric = metric
        self._names = tuple(metric._labelnames)
        self._bounded = bounded

    def _value(self, name: str, value: object) -> object:
        values = self._bounded.get(name)
        return values.bound(value) if values else value

    def labels(self, *values, **named):
        if values:
            # a wrong number of values: the metric itself says so
            bounded = (self._value(n, v) for n, v in zip(self._names, values, strict=False))
            return self.metric.labels(*bounded, *values[len(self._names):])
        return self.metric.labels(**{n: self._value(n, v) for n, v in named.items()})

    def __getattr__(self, name: str):
        return getattr(self.metric, name)


# Shared by the metrics that carry the label: one set of names each.
RECEIVERS = BoundedValues()
TEMPLATES = BoundedValues()

WEBHOOK_REQUESTS = Counter(
    "nudge_webhook_requests", "Webhook requests answered, by HTTP status code", ["code"]
)
NOTIFICATIONS = BoundedLabels(Counter(
    "nudge_notifications_received",
    "Alertmanager notifications durably appended to the journal (answered 200)", ["receiver"]
), receiver=RECEIVERS)
NOTIFICATIONS_DECIDED = Counter(
    "nudge_notifications_decided", "Journaled notifications turned into decisions by the decider"
)
DECISION_LAG = Histogram(
    "nudge_decision_lag_seconds",
    "Time from a notification's 200 to its decisions being committed (oldest of each batch)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
JOURNAL_COMMIT_SIZE = Histogram(
    "nudge_journal_commit_notifications",
    "Notifications made durable by one journal commit (group commit shares one fsync)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
ALERT_DECISIONS = Counter(
    "nudge_alert_decisions",
    "Per-alert decisions: outcome is queued, duplicate or skipped; reason says why",
    ["outcome", "reason"],
)
TRUNCATED_ALERTS = BoundedLabels(Counter(
    "nudge_alerts_truncated",
    "Alerts Alertmanager dropped before sending (truncatedAlerts, from max_alerts)",
    ["receiver"],
), receiver=RECEIVERS)


def _by_template(metric) -> BoundedLabels:
    return BoundedLabels(metric, template=TEMPLATES)


EMAILS_SENT = _by_template(
    Counter("nudge_emails_sent", "Emails accepted by the transport", ["template"]))
EMAILS_FAILED = _by_template(Counter(
    "nudge_emails_failed", "Deliveries failed permanently (no retry)", ["template", "reason"]
))
EMAILS_RETRIED = _by_template(Counter(
    "nudge_emails_retried", "Delivery attempts that failed transiently and were rescheduled",
    ["template"],
))
EMAILS_SUPPRESSED = _by_template(Counter(
    "nudge_emails_suppressed", "Deliveries not sent because the user unsubscribed", ["template"]
))
EMAILS_DEAD = _by_template(Counter(
    "nudge_emails_dead", "Deliveries that ran out of retries", ["template"]
))
# event and reason come from fixed sets (app/holds.py): no bounding needed.
DELIVERY_HOLDS = Counter(
    "nudge_delivery_holds",
    "Emails held back (event held: quiet_hours, frequency_cap, priority), let go after a hold "
    "(released), dropped (max_wait) or cancelled (alert_resolved), by reason",
    ["event", "reason"],
)
SEND_DURATION = Histogram(
    "nudge_send_duration_seconds", "Time to hand one message to the transport",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DIRECTORY_REQUEST_DURATION = Histogram(
    "nudge_directory_request_duration_seconds",
    "User directory HTTP requests, by outcome (ok, not_found, error)",
    ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
DIRECTORY_CACHE = Counter(
    "nudge_directory_cache_lookups",
    "User directory cache lookups: hit (fresh), miss, stale (expired record used as fallback)",
    ["result"],
)
# Set by the delivery worker only; the receivers' copies stay 0, hence the max over processes.
TEMPLATES_RELOAD_OK = Gauge(
    "nudge_templates_last_reload_successful",
    "1 when the templates and rules on disk passed the checks at the last (re)load; 0 when "
    "they did not and emails keep using the last version that passed",
    multiprocess_mode="livemax",
)
# 1 while the delivery worker has paused sending because the setup is broken (app/circuit.py).
SENDING_PAUSED = Gauge(
    "nudge_sending_paused",
    "1 while sending is paused because the setup is broken, by reason (smtp_sender, smtp_auth, "
    "smtp_tls, directory_auth, directory_not_found, directory_no_address, "
    "static_map_no_address); deliveries wait in the queue meanwhile",
    ["reason"],
    multiprocess_mode="livemax",
)
TEMPLATE_RELOADS = Counter(
    "nudge_template_reloads",
    "Loads of the templates and rules after a change or SIGHUP, by result (success, failure)",
    ["result"],
)
# The relay asking to slow down (app/relay_throttle.py): replies, and how many connections
# may send meanwhile (smtp.connections at full speed). Set by the delivery worker only.
SMTP_THROTTLED = Counter(
    "nudge_smtp_throttled_replies",
    "SMTP replies asking to slow down (421, 451 4.7.x, 454): the whole pool paused, the "
    "message stayed queued without an attempt counted",
)
SMTP_CONNECTIONS_ALLOWED = Gauge(
    "nudge_smtp_connections_allowed",
    "SMTP connections allowed to send now: smtp.connections at full speed, fewer while the "
    "relay asks to slow down",
    multiprocess_mode="livemax",
)
