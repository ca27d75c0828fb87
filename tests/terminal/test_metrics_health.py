"""A terminal's /metrics (parsed with prometheus_client's own parser), /livez and /readyz,
and `hotline status`, between real terminal processes: they move with checks, calls,
refusals, a missed check's alarm and the exchange."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from hotline.charter import Policy, Role
from hotline.localline import LocalLine
from tests.charters import SPEECH_UNJUDGED
from tests.terminal.test_calls import call_of, hotline_cli, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SITES = {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]}
P = "hotline_terminal_"


def samples(page: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in parse_text(page):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    page: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return page.get((P + name, tuple(sorted(labels.items()))))


async def get(line: LocalLine, tid: str, path: str, **headers: str) -> tuple[int, str]:
    """An open endpoint, as a scraper gets it: no token."""
    url = line.controls[tid][0]
    async with aiohttp.ClientSession() as http, http.get(url + path, headers=headers) as resp:
        return resp.status, await resp.text()


async def scrape(line: LocalLine, tid: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, page = await get(line, tid, "/metrics")
    assert status == 200
    return samples(page)


def status_cli(line: LocalLine, tid: str, *extra: str) -> Any:
    return hotline_cli("status", "-t", str(line.terminal_dir(tid)), *extra)


async def test_metrics_health_and_status_follow_the_line(tmp_path: Path) -> None:
    policy = Policy(readiness_interval_s=3600, check_thresholds=SPEECH_UNJUDGED)
    line = LocalLine(tmp_path, "east-west", SITES, policy=policy)
    line.commission()
    try:
        await line.start_exchange()
        await line.start_terminal("alpha", "--no-scheduled-checks")
        await line.start_terminal("bravo", "--no-scheduled-checks")
        await line.wait_online(["alpha", "bravo"])
        assert await get(line, "alpha", "/livez") == (200, '{"status": "ok"}')
        code, body = await get(line, "alpha", "/readyz")
        assert code == 200 and json.loads(body)["checks"]["exchange"]["ok"] is True
        m = await scrape(line, "alpha")
        assert value(m, "exchange_connected") == 1.0
        assert value(m, "checks_total", verdict="green") == 0.0
        assert value(m, "last_check_age_seconds") is None  # no result yet: no sample
        assert value(m, "open_alarms") == 0.0
        # the same page in OpenMetrics, for a scraper that asks for it
        code, om = await get(line, "alpha", "/metrics", Accept="application/openmetrics-text")
        assert code == 200 and om.rstrip().endswith("# EOF")
        families = parse_openmetrics(om)  # type: ignore[no-untyped-call]
        assert any(f.name == P + "checks" for f in families)
        # no status without the token: only the open endpoints are open
        assert (await get(line, "alpha", "/status"))[0] == 401
        # a page in a browser is refused, and counted as a refusal
        assert (await get(line, "alpha", "/metrics", Origin="http://evil.example"))[0] == 403

        not_ready = await asyncio.to_thread(status_cli, line, "alpha")
        assert not_ready.returncode == 0, not_ready  # no alarm, exchange up: ready
        assert "READY" in not_ready.stdout and "none yet" in not_ready.stdout

        async with line.control("alpha") as control:
            result = await control.request("POST", "/check", {"target": "bravo", "seconds": 2})
        assert result["verdict"] in ("green", "amber"), result
        m = await scrape(line, "alpha")
        assert value(m, "checks_total", verdict=result["verdict"]) == 1.0
        assert value(m, "calls_total", purpose="check", direction="outgoing") == 1.0
        assert value(m, "last_check_verdict", verdict=result["verdict"]) == 1.0
        age = value(m, "last_good_check_age_seconds")
        assert age is not None and 0 <= age < 60
        assert value(m, "refusals_total", reason="control_not_local") == 1.0
        m_bravo = await scrape(line, "bravo")
        assert value(m_bravo, "calls_total", purpose="check", direction="incoming") == 1.0
        # the callee holds the caller's verdict: its line is known good too
        assert value(m_bravo, "last_check_verdict", verdict=result["verdict"]) == 1.0
        readiness = (await line.status("bravo"))["readiness"]
        assert readiness["last_good"]["peer"] == "alpha" and readiness["last_good"]["by"] == "alpha"
        assert readiness["last"]["with"] == "alpha" and readiness["alarms"] == []

        # a real call: the live path's figures become gauges
        async with line.control("alpha") as control:
            await control.request("POST", "/call", {"target": "bravo"})
        await wait_for(
            line, ["bravo"], lambda s: call_of(s["bravo"]).get("state") == "incoming", "ring"
        )
        async with line.control("bravo") as control:
            await control.request("POST", "/answer")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = await scrape(line, "alpha")
            if value(m, "call_rtt_seconds", peer="bravo", kind="audio") is not None:
                break
            await asyncio.sleep(0.5)
        rtt = value(m, "call_rtt_seconds", peer="bravo", kind="audio")
        assert rtt is not None and 0 <= rtt < 1.0, "no RTT gauge for the live call"
        assert value(m, "call_active", purpose="call") == 1.0
        assert value(m, "call_loss_ratio", peer="bravo", kind="video") is not None
        assert value(m, "calls_total", purpose="call", direction="outgoing") == 1.0
        async with line.control("alpha") as control:
            await control.request("POST", "/hangup")

        # the far end goes: a missed check is red, an alarm opens, the line is not ready
        await line.stop("bravo")
        async with line.control("alpha") as control:
            missed = await control.request("POST", "/check", {"target": "bravo", "seconds": 1})
        assert missed["verdict"] == "red"
        code, body = await get(line, "alpha", "/readyz")
        checks = json.loads(body)["checks"]
        assert code == 503 and checks["alarms"]["ok"] is False
        assert "bravo" in checks["alarms"]["detail"] and checks["exchange"]["ok"] is True
        m = await scrape(line, "alpha")
        assert value(m, "open_alarms") == 1.0 and value(m, "checks_total", verdict="red") == 1.0
        assert value(m, "last_check_verdict", verdict="red") == 1.0
        shown = await asyncio.to_thread(status_cli, line, "alpha")
        assert shown.returncode == 1, shown
        text = " ".join(shown.stdout.split())
        assert "NOT READY" in text and "red in a row" in text and "not online" in text
        assert "last good check with bravo" in text
        assert "expires next" in text and "not reported" not in text
        assert "the identity key of alpha" in text  # its maximum age, from the key file
        as_json = json.loads((await asyncio.to_thread(status_cli, line, "alpha", "--json")).stdout)
        assert as_json["ready"] is False and as_json["alarms"][0]["peer"] == "bravo"
        assert as_json["last_check"]["verdict"] == "red"
        assert as_json["last_good_check"]["peer"] == "bravo"
        (key_item,) = [e for e in as_json["expiry"] if "identity key of alpha" in e["what"]]
        assert key_item["at"] > time.time() + 300 * 86400 and key_item["warn"] is False

        # and without the exchange: not ready for that reason too
        await line.stop(line.exchange_name())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            code, body = await get(line, "alpha", "/readyz")
            if not json.loads(body)["checks"]["exchange"]["ok"]:
                break
            await asyncio.sleep(0.2)
        assert json.loads(body)["checks"]["exchange"]["ok"] is False
        assert value(await scrape(line, "alpha"), "exchange_connected") == 0.0
        assert (await get(line, "alpha", "/livez"))[0] == 200  # alive all the same
    finally:
        await line.stop()
