"""A conference above the mesh limit whose SFU does not answer goes on as a mesh: four real
terminal processes (the charter's mesh limit is 3) with the charter's SFU on a port where
nothing listens. The call is never left without media for its SFU; it says why it is a mesh
(an ``sfu_unreachable`` event, the refusal counted, a WARNING) and tries the SFU again
every ``SFU_RETRY_S``."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hotline.charter import Policy, Role, SfuEndpoint
from hotline.localline import LocalLine
from tests.terminal.test_calls import call_of, media_flows, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

IDS = ["berlin", "london", "paris", "rome"]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_conference_whose_sfu_does_not_answer_stays_a_mesh(tmp_path: Path) -> None:
    line = LocalLine(
        tmp_path,
        "conference-line",
        {site: [(site, Role.PRINCIPAL)] for site in IDS},
        policy=Policy(max_participants=4, mesh_limit=3),
        sfus=(SfuEndpoint(f"http://127.0.0.1:{closed_port()}/janus"),),
    )
    line.commission()
    small = ("--width", "288", "--height", "64", "--fps", "8")
    try:
        await line.start_exchange()
        for tid in IDS:
            await line.start_terminal(tid, *small, *(["--auto-answer"] if tid != IDS[0] else []))
        await line.wait_online(IDS)
        async with line.control(IDS[0]) as first:
            await first.request("POST", "/call", {"target": IDS[1]})
            for n, tid in enumerate(IDS[1:], 2):
                if n > 2:
                    await first.request("POST", "/invite", {"target": tid})
                await wait_for(
                    line,
                    IDS[:n],
                    lambda s, n=n: all(
                        len(call_of(x).get("members") or []) == n and call_of(x).get("epoch")
                        for x in s.values()
                    ),
                    f"{n} members keyed",
                    timeout=60,
                )
        pairs = [(a, b) for a in IDS for b in IDS if a != b]
        four = await wait_for(
            line,
            IDS,
            lambda s: (
                all(len(call_of(x).get("members") or []) == 4 for x in s.values())
                and media_flows(s, pairs)
            ),
            "four members with media both ways between each pair, as a mesh",
            timeout=90,
        )
        for tid in IDS:
            call = call_of(four[tid])
            assert call["topology"] == "mesh", (tid, call["topology"])
            assert call["rejected"].get("sfu_sfu_unavailable", 0) >= 1, (tid, call["rejected"])
        log = (tmp_path / f"{IDS[0]}.log").read_text(errors="replace")
        assert "cannot be joined (sfu_unavailable): a mesh of" in log
        async with line.control(IDS[0]) as first:
            events = await first.request("GET", "/events?since=0")
        kinds = [e.get("kind") for e in events]
        assert "sfu_unreachable" in kinds, kinds
    finally:
        await line.stop()
