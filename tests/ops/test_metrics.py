"""The exchange's /metrics through prometheus_client: a page both of its parsers accept
(the old hand-written one had clashing family names), build info, process metrics,
latency histograms; and /livez, /readyz."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from hotline.exchange import tls
from hotline.exchange.metrics import Metrics
from hotline.exchange.server import cert_detail
from tests.exchange.harness import Harness, receive_envelopes
from tests.exchange.lines import make_line

from .cli import serve_exchange

#: what the hand-written page said before: a gauge and a counter of one family name
OLD_PAGE = (
    "# TYPE hotline_exchange_connections gauge\nhotline_exchange_connections 3\n"
    "# TYPE hotline_exchange_connections_total counter\nhotline_exchange_connections_total 9\n"
    "# EOF\n"
)


def test_the_old_page_is_refused_and_the_new_one_parses() -> None:
    with pytest.raises(ValueError, match="Clashing name"):
        list(parse_openmetrics(OLD_PAGE))
    metrics = Metrics()
    metrics.gauge("open_connections", lambda: 3)
    metrics.inc("connections_total", n=9)
    metrics.inc("auth_failures_total", "bad_signature")
    metrics.observe("store_flush_seconds", 0.002)
    families = {f.name: f for f in parse_openmetrics(metrics.render_openmetrics())}
    assert families["hotline_exchange_open_connections"].type == "gauge"
    assert families["hotline_exchange_connections"].type == "counter"
    assert families["hotline_exchange_connections"].samples[0].value == 9
    assert families["hotline_exchange_store_flush_seconds"].type == "histogram"
    build = families["hotline_exchange_build"]
    assert build.type == "info" and build.samples[0].labels["version"]
    assert "process_cpu_seconds" in families and "process_open_fds" in families
    text = {f.name: f for f in parse_text(metrics.render())}
    assert text["hotline_exchange_auth_failures"].samples[0].labels == {"reason": "bad_signature"}
    assert metrics.get("store_flush_seconds") == 1 and metrics.get("open_connections") == 3


@pytest.mark.slow
async def test_a_running_exchange_serves_parsable_metrics_and_health(
    tmp_path: Path, harness: Harness
) -> None:
    line = make_line(tmp_path, 2)
    serving = serve_exchange(tmp_path / "exchange", "--charter", str(line.path))
    try:
        a = await harness.client(serving.url, line, "t0")
        b = await harness.client(serving.url, line, "t1")
        for i in range(5):
            await a.send("t1", "n", f"m{i}".encode())
        await receive_envelopes(b, 5)
        await asyncio.sleep(0.3)  # a flush or two
        async with aiohttp.ClientSession() as http:
            accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
            async with http.get(serving.http + "/metrics", headers=accept) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
                page = await resp.text()
            async with http.get(serving.http + "/metrics") as resp:
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text_page = await resp.text()
            async with http.get(serving.http + "/livez") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "ok"
            async with http.get(serving.http + "/readyz") as resp:
                ready = await resp.json()
                assert resp.status == 200, ready
        assert ready["status"] == "ready"
        assert all(c["ok"] for c in ready["checks"].values())
        assert ready["checks"]["charters"]["detail"] == "1 line(s)"
        families = {f.name: f for f in parse_openmetrics(page)}
        assert {f.name for f in parse_text(text_page)} >= {
            "hotline_exchange_envelopes_routed",
            "hotline_exchange_open_connections",
        }

        def value(family: str, sample: str) -> float:
            return next(s.value for s in families[family].samples if s.name == sample)

        assert (
            value("hotline_exchange_envelopes_routed", "hotline_exchange_envelopes_routed_total")
            == 5
        )
        assert value("hotline_exchange_open_connections", "hotline_exchange_open_connections") == 2
        assert value("hotline_exchange_terminals_online", "hotline_exchange_terminals_online") == 2
        latency = "hotline_exchange_delivery_latency_seconds"
        assert value(latency, latency + "_count") >= 5
        flush = "hotline_exchange_store_flush_seconds"
        assert value(flush, flush + "_count") >= 1
        assert value("process_resident_memory_bytes", "process_resident_memory_bytes") > 1e6
    finally:
        code, _ = serving.stop()
    assert code == 0


async def test_readyz_says_which_check_fails(tmp_path: Path, harness: Harness) -> None:
    line = make_line(tmp_path, 2)
    server = await harness.server([line])
    base = f"http://127.0.0.1:{server.port}"
    store_db = server.store._db
    broken = sqlite3.connect(":memory:")
    broken.close()
    server.store._db = broken  # the store stops answering (a disk gone, a broken file)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/readyz") as resp:
                assert resp.status == 503
                body = await resp.json()
            async with http.get(base + "/livez") as resp:
                assert resp.status == 200  # alive: do not restart, look at the store
    finally:
        server.store._db = store_db
    assert body["status"] == "not_ready"
    assert body["checks"]["store"]["ok"] is False
    assert "does not answer" in body["checks"]["store"]["detail"]
    assert body["checks"]["charters"]["ok"] is True


async def test_the_exchange_warns_ahead_of_its_own_certificate_end(
    tmp_path: Path,
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Terminals warn about the exchange's certificate from their side; the exchange warns
    its own operator too: a WARNING (once a day) from 30 days ahead, the `/readyz` detail
    and a gauge (an expired one is a detail of `/readyz`, not a failure: terminals pin it)."""
    monkeypatch.setattr(tls, "CERT_VALIDITY_DAYS", 12)
    tls_dir = tmp_path / "exchange"
    tls.create_certificate(tls_dir)
    line = make_line(tmp_path, 2)
    with caplog.at_level(logging.WARNING, logger="hotline.exchange"):
        server = await harness.server([line], tls_dir=tls_dir)
        await asyncio.sleep(0.3)  # a few of its expiry rounds: still one warning a day
    warned = [r.getMessage() for r in caplog.records if "TLS certificate" in r.getMessage()]
    assert len(warned) == 1 and "in 12 days" in warned[0], warned
    assert "new charter version" in warned[0]  # what to do about it
    base = f"https://127.0.0.1:{server.port}"  # its own self-signed certificate
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/readyz", ssl=False) as resp:
            ready = await resp.json()
            assert resp.status == 200, ready
        async with http.get(base + "/metrics", ssl=False) as resp:
            page = await resp.text()
    assert ready["checks"]["certificate"] == {
        "ok": True,
        "detail": cert_detail(server.cert_not_after - time.time(), server.cert_not_after),
    }
    assert "in 12 days" in ready["checks"]["certificate"]["detail"]
    [family] = [
        f
        for f in parse_text(page)
        if f.name == "hotline_exchange_tls_certificate_expiry_timestamp_seconds"
    ]
    assert family.samples[0].value == pytest.approx(server.cert_not_after)
    server.cert_not_after = time.time() - 60  # past its end: terminals pin it, it still works
    async with aiohttp.ClientSession() as http, http.get(base + "/readyz", ssl=False) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["checks"]["certificate"]["ok"] is True
    assert body["checks"]["certificate"]["detail"].startswith("expired ")
