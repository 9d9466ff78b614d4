"""The product metrics, read from the user directory at scrape time.

Per-user series carry only the `user_id` label (plus endpoint, code or plan), never an
email or a name: Nudge looks those up in the user directory when an alert fires.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from demo_api.directory import UserDirectory


class ProductMetricsCollector:
    """Exports every user's product metrics from one consistent directory snapshot."""

    def __init__(self, directory: UserDirectory) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Metric]:
        signup = GaugeMetricFamily(
            "app_user_signup_timestamp_seconds",
            "Unix time the user signed up",
            labels=["user_id"],
        )
        requests = CounterMetricFamily(
            "app_api_requests",
            "API calls by endpoint path template and HTTP status code",
            labels=["user_id", "endpoint", "code"],
        )
        deprecated = CounterMetricFamily(
            "app_deprecated_requests",
            "Calls to deprecated endpoints",
            labels=["user_id", "endpoint"],
        )
        quota = GaugeMetricFamily(
            "app_user_quota_used_ratio",
            "Fraction of the plan's monthly quota used (quota_used / quota_limit)",
            labels=["user_id"],
        )
        payment = GaugeMetricFamily(
            "app_user_payment_failed",
            "1 while the latest payment attempt failed, else 0",
            labels=["user_id"],
        )
        info = GaugeMetricFamily(
            "app_user_info", "The user's plan (always 1)", labels=["user_id", "plan"]
        )
        for user in self._directory.metrics():
            signup.add_metric([user.user_id], user.signup_at)
            for (endpoint, code), count in sorted(user.requests.items()):
                requests.add_metric([user.user_id, endpoint, code], count)
            for endpoint, count in sorted(user.deprecated.items()):
                deprecated.add_metric([user.user_id, endpoint], count)
            quota.add_metric([user.user_id], user.quota_ratio)
            payment.add_metric([user.user_id], 1.0 if user.payment_failed else 0.0)
            info.add_metric([user.user_id, user.plan], 1.0)
        yield from (signup, requests, deprecated, quota, payment, info)


def product_registry(directory: UserDirectory) -> CollectorRegistry:
    """A private registry (not prometheus-client's global one) holding only the product
    metrics, so several demo apps can live in one process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProductMetricsCollector(directory))
    return registry
