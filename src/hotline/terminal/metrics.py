"""The terminal's metrics and health, for a scraper and a supervisor on the same host.

``/metrics`` on the control API is the Prometheus text format (0.0.4), or OpenMetrics 1.0
when the scraper asks for it, rendered by ``prometheus_client`` from a registry of the
terminal's own (one per daemon: tests run several in one process). Nothing is counted twice:
:class:`TerminalCollector` reads the daemon's state at each scrape — its calls, readiness
results, alarms, refusals, exchange connection and the latest RTP figures of the live call.
No family carries a secret; labels are terminal ids, media kinds, verdicts and refusal
reasons (a fixed, capped set).

``/livez`` says whether the process still runs its own tasks (restart it if not);
``/readyz`` whether the line can be relied on from this terminal now (:func:`readiness`):
each check named, 503 when one fails. Not ready is a state to look at, not to restart on:
the exchange may be down or the far side's line red.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

from hotline import __version__
from hotline.check.metrics import AMBER, GREEN, RED

if TYPE_CHECKING:
    from hotline.terminal.daemon import TerminalDaemon

PREFIX = "hotline_terminal_"
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = openmetrics.CONTENT_TYPE_LATEST
VERDICTS = (GREEN, AMBER, RED)
#: RTP figures of the live call exported as gauges: (key, metric, scale to base units)
PATH_GAUGES = (
    ("rtt_ms", "call_rtt_seconds", "Round trip to a peer (RTCP), by media kind.", 1e-3),
    ("jitter_ms", "call_jitter_seconds", "Jitter of what a peer sends us, by media kind.", 1e-3),
    (
        "remote_fraction_lost",
        "call_loss_ratio",
        "Share of our packets a peer reports lost (0..1), by media kind.",
        1.0,
    ),
)


def _age(now: float, record: dict[str, Any] | None) -> float | None:
    if record is None or not isinstance(record.get("time"), int):
        return None
    return max(0.0, now - float(record["time"]))


class TerminalCollector(Collector):
    """Every family of the terminal's page, read from the daemon at each scrape."""

    def __init__(self, daemon: TerminalDaemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Any]:
        d = self.daemon
        now = time.time()
        charter = d.charter.charter
        info = InfoMetricFamily(PREFIX + "build", "The Hotline release this terminal runs.")
        info.add_metric([], {"version": __version__, "terminal": d.terminal_id})
        yield info
        yield GaugeMetricFamily(
            PREFIX + "charter_version", "Version of the charter in force.", charter.version
        )
        yield GaugeMetricFamily(
            PREFIX + "exchange_connected",
            "1 while connected to an exchange of the charter (the first or a fallback).",
            1.0 if d.client.connected else 0.0,
        )
        calls = CounterMetricFamily(
            PREFIX + "calls",
            "Calls since start, by purpose (call, check) and direction.",
            labels=("purpose", "direction"),
        )
        for (purpose, direction), n in sorted(d.call_counts.items()):
            calls.add_metric([purpose, direction], n)
        yield calls
        live = d.call if d.busy else None
        active = GaugeMetricFamily(
            PREFIX + "call_active",
            "1 while a call of this purpose rings or runs.",
            labels=("purpose",),
        )
        for purpose in ("call", "check"):
            on = live is not None and live.machine.purpose == purpose
            active.add_metric([purpose], 1.0 if on else 0.0)
        yield active
        checks = CounterMetricFamily(
            PREFIX + "checks",
            "Readiness checks this terminal ran since start, by verdict.",
            labels=("verdict",),
        )
        for verdict in VERDICTS:
            checks.add_metric([verdict], d.check_counts.get(verdict, 0))
        yield checks
        last = d.checks[-1] if d.checks else None
        good = next((c for c in reversed(d.checks) if c.get("verdict") != RED), None)
        for name, record, text in (
            ("last_check_age_seconds", last, "Seconds since the last readiness result."),
            ("last_good_check_age_seconds", good, "Seconds since the last green or amber one."),
        ):
            age = _age(now, record)
            if age is not None:  # no sample until there is a result
                yield GaugeMetricFamily(PREFIX + name, text, age)
        state = GaugeMetricFamily(
            PREFIX + "last_check_verdict",
            "1 for the verdict of the last readiness result, 0 for the others.",
            labels=("verdict",),
        )
        for verdict in VERDICTS:
            state.add_metric([verdict], 1.0 if last and last.get("verdict") == verdict else 0.0)
        yield state
        yield GaugeMetricFamily(
            PREFIX + "open_alarms",
            "Readiness alarms open (peers whose last check was red or missed).",
            len(d.readiness.alarms),
        )
        refusals = CounterMetricFamily(
            PREFIX + "refusals",
            "Messages and requests refused, by reason.",
            labels=("reason",),
        )
        for reason, n in sorted(d.rejected.items()):
            refusals.add_metric([reason], n)
        yield refusals
        figures = live.path_figures if live is not None else {}
        warnings = GaugeMetricFamily(
            PREFIX + "call_quality_warnings",
            "Live quality warnings now on the path to each peer of the call.",
            labels=("peer",),
        )
        for peer in sorted(figures):
            warnings.add_metric([peer], len(live.quality.get(peer, [])) if live else 0)
        yield warnings
        for key, name, text, scale in PATH_GAUGES:
            gauge = GaugeMetricFamily(PREFIX + name, text, labels=("peer", "kind"))
            for peer, kinds in sorted(figures.items()):
                for kind, values in sorted(kinds.items()):
                    value = values.get(key)
                    if isinstance(value, int | float):
                        gauge.add_metric([peer, kind], float(value) * scale)
            yield gauge


class TerminalMetrics:
    """The terminal's registry: its collector and the process's CPU, memory, descriptors."""

    def __init__(self, daemon: TerminalDaemon) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(TerminalCollector(daemon))
        ProcessCollector(registry=self.registry)

    def render(self) -> str:
        return prometheus_client.generate_latest(self.registry).decode("utf-8")

    def render_openmetrics(self) -> str:
        page: bytes = openmetrics.generate_latest(self.registry)  # type: ignore[no-untyped-call]
        return page.decode("utf-8")


def readiness(daemon: TerminalDaemon) -> dict[str, tuple[bool, str]]:
    """``/readyz``'s checks, each (ok, detail):

    - ``charter``: the charter in force verifies and lists this terminal;
    - ``exchange``: connected to an exchange of the charter (the first or a fallback), so
      that a call can be placed and rung;
    - ``engine``: the media engine can take a call (with ``--engine browser``: a page is open);
    - ``alarms``: no readiness alarm is open (every peer's last check was green or amber).
    """
    out: dict[str, tuple[bool, str]] = {}
    try:
        daemon.charter.verify()
        daemon.charter.charter.terminal(daemon.terminal_id)
        out["charter"] = (True, f"version {daemon.charter.charter.version}")
    except Exception as exc:  # any failure to verify is "not ready", with its message
        out["charter"] = (False, str(exc))
    client = daemon.client
    out["exchange"] = (
        (True, f"connected to {client.url}")
        if client.connected
        else (False, f"unreachable ({daemon.exchange_reason})")
    )
    if daemon.config.engine == "browser":
        page = daemon.browser_hub is not None and daemon.browser_hub.connected
        out["engine"] = (page, "the UI page is open" if page else "no UI page is open")
    else:
        out["engine"] = (True, daemon.config.engine)
    alarms = daemon.readiness.alarms
    out["alarms"] = (
        (True, "none open")
        if not alarms
        else (False, "; ".join(f"{a.peer}: {a.reason}" for a in alarms.values()))
    )
    return out
