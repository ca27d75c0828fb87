"""The exchange's metrics, kept and rendered by ``prometheus_client``.

One registry per :class:`~hotline.exchange.server.ExchangeServer` (tests run several in one
process). Served on ``/metrics`` in the Prometheus text format (0.0.4), or OpenMetrics 1.0
when the scraper asks for it (``Accept: application/openmetrics-text``). Besides the
exchange's own counters, gauges and latency histograms the page has build information
(``hotline_exchange_build_info``) and the process's CPU, memory and descriptors
(``process_*``). Every family name is unique once ``_total`` is stripped, as OpenMetrics
requires (the open-connections gauge is ``open_connections``, next to the counter
``connections_total``).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.openmetrics import exposition as openmetrics

from hotline import __version__

PREFIX = "hotline_exchange_"
#: Content-Type of the two formats
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = openmetrics.CONTENT_TYPE_LATEST

# a counter's creation time doubles every series; nothing here needs it
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class _Family:
    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    label: str | None = None
    buckets: tuple[float, ...] = ()


_FLUSH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_DELIVERY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0)

#: every metric the exchange exports
FAMILIES: tuple[_Family, ...] = (
    _Family("open_connections", "gauge", "Open WebSocket connections, authenticated or not."),
    _Family("terminals_online", "gauge", "Authenticated terminals online."),
    _Family("lines", "gauge", "Lines served (charters held)."),
    _Family(
        "tls_certificate_expiry_timestamp_seconds",
        "gauge",
        "End of validity of the exchange's own TLS certificate (unix time; NaN: plain ws).",
    ),
    _Family("pending_envelopes", "gauge", "Deliveries stored and not yet acknowledged."),
    _Family("connections_total", "counter", "WebSocket connections opened."),
    _Family("admitted_total", "counter", "Terminals admitted after authentication."),
    _Family("auth_failures_total", "counter", "Failed authentications, by reason.", "reason"),
    _Family(
        "refused_connections_total",
        "counter",
        "Connections refused before authentication, by reason.",
        "reason",
    ),
    _Family(
        "bad_http_requests_total",
        "counter",
        "Malformed HTTP requests refused (not a WebSocket upgrade, header too large...).",
        "reason",
    ),
    _Family(
        "duplicate_terminals_total",
        "counter",
        "Connections refused because two copies of one terminal kept replacing each other.",
    ),
    _Family("envelopes_received_total", "counter", "Envelopes received from terminals."),
    _Family("envelopes_routed_total", "counter", "Envelopes accepted and routed."),
    _Family("deliveries_sent_total", "counter", "Deliveries written to terminals."),
    _Family("deliveries_acked_total", "counter", "Deliveries acknowledged by terminals."),
    _Family(
        "deliveries_expired_total",
        "counter",
        "Deliveries dropped unacknowledged after the store-and-forward window.",
    ),
    _Family("envelopes_rejected_total", "counter", "Envelopes refused, by reason.", "reason"),
    _Family("closes_total", "counter", "Connections closed by the exchange, by reason.", "reason"),
    _Family("charter_updates_total", "counter", "Newer charters accepted and distributed."),
    _Family(
        "charter_rejections_total", "counter", "Charters pushed and refused, by reason.", "reason"
    ),
    _Family("store_flushes_total", "counter", "Write batches committed to the store."),
    _Family(
        "store_flush_seconds",
        "histogram",
        "Time to commit one write batch to the store (a sender waits for it).",
        buckets=_FLUSH_BUCKETS,
    ),
    _Family(
        "delivery_latency_seconds",
        "histogram",
        "From an envelope's acceptance to its delivery being written to the recipient "
        "(long for a recipient that was offline: store and forward).",
        buckets=_DELIVERY_BUCKETS,
    ),
)
_BY_NAME = {f.name: f for f in FAMILIES}


class Metrics:
    """The exchange's metrics in a registry of their own (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry()
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._reads: dict[str, Callable[[], float]] = {}
        self._histograms: dict[str, Histogram] = {}
        for family in FAMILIES:
            full = PREFIX + family.name
            labels = (family.label,) if family.label else ()
            if family.kind == "counter":
                self._counters[family.name] = Counter(
                    full, family.help, labels, registry=self.registry
                )
            elif family.kind == "gauge":
                self._gauges[family.name] = Gauge(full, family.help, registry=self.registry)
            else:
                self._histograms[family.name] = Histogram(
                    full, family.help, buckets=family.buckets, registry=self.registry
                )
        build = Info(PREFIX + "build", "The Hotline release this exchange runs.", registry=reg)
        build.info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
            }
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def inc(self, name: str, label: str | None = None, n: float = 1) -> None:
        family = _BY_NAME[name]
        if family.kind != "counter":
            raise ValueError(f"metric {name} is not a counter")
        if (family.label is None) != (label is None):
            need = "required" if family.label else "not allowed"
            raise ValueError(f"metric {name}: a label is {need}")
        counter = self._counters[name]
        (counter.labels(label) if label is not None else counter).inc(n)

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        if _BY_NAME[name].kind != "gauge":
            raise ValueError(f"metric {name} is not a gauge")
        self._gauges[name].set_function(read)
        self._reads[name] = read

    def observe(self, name: str, value: float) -> None:
        """One observation of a histogram (seconds)."""
        if _BY_NAME[name].kind != "histogram":
            raise ValueError(f"metric {name} is not a histogram")
        self._histograms[name].observe(value)

    def get(self, name: str, label: str | None = None) -> float:
        """A counter's or gauge's value now; a histogram's number of observations."""
        family = _BY_NAME[name]
        if family.kind == "gauge":
            read = self._reads.get(name)
            return float(read()) if read else 0.0
        if family.kind == "histogram":
            sample = PREFIX + name + "_count"
            return self.registry.get_sample_value(sample) or 0.0
        labels = {family.label: label} if family.label and label is not None else None
        return self.registry.get_sample_value(PREFIX + name, labels) or 0.0

    def by_label(self, name: str) -> dict[str, float]:
        family = _BY_NAME[name]
        out: dict[str, float] = {}
        for metric in self._counters[name].collect():
            for sample in metric.samples:
                if sample.name == PREFIX + name and family.label in sample.labels:
                    out[sample.labels[family.label]] = sample.value
        return out

    def render(self) -> str:
        """The page in the Prometheus text format 0.0.4."""
        return prometheus_client.generate_latest(self.registry).decode("utf-8")

    def render_openmetrics(self) -> str:
        """The page in OpenMetrics 1.0 (ends with ``# EOF``)."""
        page: bytes = openmetrics.generate_latest(self.registry)  # type: ignore[no-untyped-call]
        return page.decode("utf-8")
