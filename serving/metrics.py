"""Prometheus metrics of one app, in a registry of its own.

A per-app `CollectorRegistry` (never the process-global one) lets tests build many apps in one
process and read each one's figures alone. With several uvicorn workers each process exposes its
own figures; Prometheus scrapes them as separate instances.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Every metric the serving app records."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "recsvc_http_request_duration_seconds",
            "Latency of HTTP requests, by method, route template and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.recommendations = Counter(
            "recsvc_recommendations",
            "Recommendation responses, by the strategy that produced them.",
            ["endpoint", "strategy"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "recsvc_model_version_info",
            "The model version this process serves (1 on its label).",
            ["version"],
            registry=self.registry,
        )
        self.events_ingested = Counter(
            "recsvc_events_ingested",
            "Events recorded through POST /v1/events, by type.",
            ["type"],
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "recsvc_redis_errors",
            "Redis calls that failed or timed out, by operation.",
            ["operation"],
            registry=self.registry,
        )
        self.batch_users = Histogram(
            "recsvc_recommendation_batch_users",
            "Users per engine call of GET /v1/users/{user_id}/recommendations: concurrent requests "
            "share a call (see serving.batching), so this grows with load.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._served_version: str | None = None
        self._request_series: dict[tuple[str, str, int], Histogram] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        # `labels()` validates, formats and locks on every call; the series are few (route
        # templates, not paths), so each one's child is looked up once and kept.
        key = (method, route, status)
        child = self._request_series.get(key)
        if child is None:
            child = self.request_seconds.labels(method=method, route=route, status=str(status))
            self._request_series[key] = child
        child.observe(seconds)

    def served_version(self, version: str) -> None:
        """Point the model gauge at `version`, dropping the previous version's series."""
        if self._served_version is not None and self._served_version != version:
            self.model_version.remove(self._served_version)
        self.model_version.labels(version=version).set(1)
        self._served_version = version

    def render(self) -> bytes:
        return generate_latest(self.registry)
