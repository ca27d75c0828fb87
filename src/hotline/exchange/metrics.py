"""Counters and gauges of the exchange, rendered in the Prometheus text format (0.0.4).

No I/O: the server adapter serves :meth:`Metrics.render` on ``/metrics``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

PREFIX = "hotline_exchange_"
_LABEL_VALUE_RE = re.compile(r'[\\"\n]')


@dataclass(frozen=True)
class _Family:
    name: str
    kind: str  # "counter" or "gauge"
    help: str
    label: str | None


#: every metric the exchange exports: name -> (type, help, label name)
FAMILIES: tuple[_Family, ...] = (
    _Family("connections", "gauge", "Open WebSocket connections, authenticated or not.", None),
    _Family("terminals_online", "gauge", "Authenticated terminals online.", None),
    _Family("lines", "gauge", "Lines served (charters held).", None),
    _Family("pending_envelopes", "gauge", "Deliveries stored and not yet acknowledged.", None),
    _Family("connections_total", "counter", "WebSocket connections opened.", None),
    _Family("admitted_total", "counter", "Terminals admitted after authentication.", None),
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
        None,
    ),
    _Family("envelopes_received_total", "counter", "Envelopes received from terminals.", None),
    _Family("envelopes_routed_total", "counter", "Envelopes accepted and routed.", None),
    _Family("deliveries_sent_total", "counter", "Deliveries written to terminals.", None),
    _Family("deliveries_acked_total", "counter", "Deliveries acknowledged by terminals.", None),
    _Family(
        "deliveries_expired_total",
        "counter",
        "Deliveries dropped unacknowledged after the store-and-forward window.",
        None,
    ),
    _Family("envelopes_rejected_total", "counter", "Envelopes refused, by reason.", "reason"),
    _Family("closes_total", "counter", "Connections closed by the exchange, by reason.", "reason"),
    _Family("charter_updates_total", "counter", "Newer charters accepted and distributed.", None),
    _Family(
        "charter_rejections_total", "counter", "Charters pushed and refused, by reason.", "reason"
    ),
    _Family("store_flushes_total", "counter", "Write batches committed to the store.", None),
)
_BY_NAME = {f.name: f for f in FAMILIES}


def _escape(value: str) -> str:
    return _LABEL_VALUE_RE.sub(lambda m: {"\\": "\\\\", '"': '\\"', "\n": "\\n"}[m.group(0)], value)


@dataclass
class Metrics:
    """Counters by (name, label value); gauges read from callables at render time."""

    _values: dict[tuple[str, str | None], float] = field(default_factory=dict)
    _gauges: dict[str, Callable[[], float]] = field(default_factory=dict)

    def inc(self, name: str, label: str | None = None, n: float = 1) -> None:
        family = _BY_NAME[name]
        if (family.label is None) != (label is None):
            need = "required" if family.label else "not allowed"
            raise ValueError(f"metric {name}: a label is {need}")
        key = (name, label)
        self._values[key] = self._values.get(key, 0) + n

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        if _BY_NAME[name].kind != "gauge":
            raise ValueError(f"metric {name} is not a gauge")
        self._gauges[name] = read

    def get(self, name: str, label: str | None = None) -> float:
        if name in self._gauges:
            return self._gauges[name]()
        return self._values.get((name, label), 0)

    def by_label(self, name: str) -> dict[str, float]:
        return {lbl: v for (n, lbl), v in self._values.items() if n == name and lbl is not None}

    def render(self) -> str:
        lines: list[str] = []
        for family in FAMILIES:
            full = PREFIX + family.name
            lines.append(f"# HELP {full} {family.help}")
            lines.append(f"# TYPE {full} {family.kind}")
            if family.kind == "gauge":
                read = self._gauges.get(family.name)
                lines.append(f"{full} {_number(read() if read else 0)}")
            elif family.label is None:
                lines.append(f"{full} {_number(self._values.get((family.name, None), 0))}")
            else:
                for label, value in sorted(self.by_label(family.name).items()):
                    lines.append(f'{full}{{{family.label}="{_escape(label)}"}} {_number(value)}')
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
