"""Every Prometheus metric Nudge exports, in one place.

Under `nudge serve` several processes (gunicorn workers, the delivery worker) write
metrics; prometheus-client's multiprocess mode aggregates them when
PROMETHEUS_MULTIPROC_DIR is set before this module is imported (`nudge serve` does that).
"""

import os

from prometheus_client import Counter, Gauge, Histogram

# In multiprocess mode prometheus-client creates its files when a metric without labels is
# defined, at import: a folder named in the environment but not made yet must not crash it.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

WEBHOOK_REQUESTS = Counter(
    "nudge_webhook_requests", "Webhook requests answered, by HTTP status code", ["code"]
)
NOTIFICATIONS = Counter(
    "nudge_notifications_received",
    "Alertmanager notifications durably appended to the journal (answered 200)", ["receiver"]
)
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
TRUNCATED_ALERTS = Counter(
    "nudge_alerts_truncated",
    "Alerts Alertmanager dropped before sending (truncatedAlerts, from max_alerts)",
    ["receiver"],
)

EMAILS_SENT = Counter("nudge_emails_sent", "Emails accepted by the transport", ["template"])
EMAILS_FAILED = Counter(
    "nudge_emails_failed", "Deliveries failed permanently (no retry)", ["template", "reason"]
)
EMAILS_RETRIED = Counter(
    "nudge_emails_retried", "Delivery attempts that failed transiently and were rescheduled",
    ["template"],
)
EMAILS_SUPPRESSED = Counter(
    "nudge_emails_suppressed", "Deliveries not sent because the user unsubscribed", ["template"]
)
EMAILS_DEAD = Counter(
    "nudge_emails_dead", "Deliveries that ran out of retries", ["template"]
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
    "smtp_tls, directory_auth, directory_not_found); deliveries wait in the queue meanwhile",
    ["reason"],
    multiprocess_mode="livemax",
)
TEMPLATE_RELOADS = Counter(
    "nudge_template_reloads",
    "Loads of the templates and rules after a change or SIGHUP, by result (success, failure)",
    ["result"],
)
