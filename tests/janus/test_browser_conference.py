"""Browser terminals in conferences through a real Janus: the page in a real Chromium is one
terminal's media engine, the others are Python (aiortc) terminal processes.

Everything runs inside one lab namespace (see ``tests.janus.test_terminal_conference``):
the exchange, Janus's API, the terminals and their ICE, and Chromium, which Playwright starts
from the test's event loop in that namespace (so the page reaches its daemon's UI on the
namespace's 127.0.0.1 and gathers ICE on its lab address, as Janus does).

The call grows one member at a time, a mesh up to the charter's mesh limit and then through
Janus (the browser moves with it, its worker keyed as before); a member joins and one leaves
through Janus, each with a new epoch; after each change every member decrypts every other
member's audio and video in the new epoch: the Python terminals from their sinks, the
browser from its page's stats (frames its worker decrypted on its subscription to each
member). The page's subscription to member M takes only M's keys (``wrong_sender``); the
signed frame digests are strict through the SFU and check the browser's frames and the
browser's view of the others. The SFU's operator (Janus's admin API and VideoRoom's
``switch``) hands the page frames of a publisher of its own under a member's KID: refused in
the page's worker (``bad_tag``) and shown on its banner.

The six-terminal run (the browser and five Python terminals) ends with an insider: the
browser's member reads its page's keys (as anyone with the page's developer tools could)
and publishes audio under another member's KID with that member's real key, which the SFU
hands to the other Python members. SFrame accepts those frames; the signed frame digests do
not, and each receiver raises the alarm naming the victim within the 2 s deadline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hotline.charter import Policy, Role, SfuEndpoint
from hotline.e2ee.media import MediaCrypto
from hotline.e2ee.sframe import suite_by_name
from hotline.sfu.conference import SfuConference
from tests.janus.conference import run_in_host, synthetic_source
from tests.janus.server import JanusServer, janus_in_lab
from tests.janus.test_terminal_conference import NamespaceLine
from tests.netlab import Host
from tests.terminal.test_calls import call_of, sink
from tests.ui.browser import chromium
from tests.ui.test_browser_engine import open_engine_page, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BROWSER = "berlin"
CALLER = "london"
WAIT_S = 60.0
#: frames of each kind each member must decrypt from each other member after a change
PER_STAGE = 15
#: the Python terminals' synthetic video: six terminals on two shared cores
SMALL = ("--width", "288", "--height", "64", "--fps", "8")


@pytest.fixture
def sfu_host(tmp_path: Path) -> Iterator[tuple[Host, JanusServer]]:
    with janus_in_lab(tmp_path / "janus", "bconf", seed=14, admin=True) as pair:
        yield pair


def received(status: dict[str, Any], rx: str, tx: str) -> tuple[int, int]:
    """(video, audio) frames ``rx`` decrypted from ``tx`` so far: the page's worker count on
    its link to ``tx`` for the browser, the sinks' frames for a Python terminal."""
    if rx == BROWSER:
        page = (call_of(status).get("peers", {}).get(tx) or {}).get("page") or {}
        return int(page.get("decrypted_video", 0)), int(page.get("decrypted_audio", 0))
    return (
        int(sink(status, tx, "video").get("frames", 0)),
        int(sink(status, tx, "audio").get("frames", 0)),
    )


async def statuses_of(line: NamespaceLine, ids: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {tid: await line.status(tid) for tid in ids}


async def wait_for(
    line: NamespaceLine,
    ids: tuple[str, ...],
    check: Callable[[dict[str, dict[str, Any]]], bool],
    what: str,
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + WAIT_S
    statuses: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        statuses = await statuses_of(line, ids)
        if check(statuses):
            return statuses
        await asyncio.sleep(1.0)  # a status samples every peer connection: not too often
    summary = {
        tid: {k: call_of(s).get(k) for k in ("members", "epoch", "topology", "sfu", "rejected")}
        | {"got": {o: received(s, tid, o) for o in ids if o != tid}}
        for tid, s in statuses.items()
    }
    raise AssertionError(f"timed out waiting for {what}: {summary}")


def agreed(statuses: dict[str, dict[str, Any]], n: int, topology: str) -> bool:
    """Every terminal in one call of ``n`` members, in one epoch, sending in it, on
    ``topology``."""
    calls = [call_of(s) for s in statuses.values()]
    return (
        all(len(c.get("members") or []) == n for c in calls)
        and len({(c.get("epoch"), c.get("security_code")) for c in calls}) == 1
        and all(c["e2ee"]["sending_epoch"] == c["epoch"] for c in calls)
        and all(c.get("topology") == topology for c in calls)
    )


async def every_pair_decrypts(
    line: NamespaceLine, ids: tuple[str, ...], what: str
) -> dict[str, dict[str, Any]]:
    """Wait until each member decrypted ``PER_STAGE`` more video and audio frames from each
    other member than it had when called (everyone sends in the new epoch by then)."""
    start = await statuses_of(line, ids)
    base = {(rx, tx): received(start[rx], rx, tx) for rx in ids for tx in ids if rx != tx}

    def grown(s: dict[str, dict[str, Any]]) -> bool:
        return all(
            v - base[rx, tx][0] >= PER_STAGE and a - base[rx, tx][1] >= PER_STAGE
            for (rx, tx) in base
            for v, a in [received(s[rx], rx, tx)]
        )

    return await wait_for(line, ids, grown, what)


def check_clean(statuses: dict[str, dict[str, Any]], ids: tuple[str, ...]) -> None:
    """Through the SFU: every other member subscribed, nothing refused by the SFU side, no
    frame that failed to open (only frames in flight across a rekey or a move: unknown_kid,
    or from a member that left: expired_key; the browser's authentic repeats: duplicate_*),
    every frame shown signed by its sender."""
    for tid in ids:
        e2ee = call_of(statuses[tid])["e2ee"]
        print(f"{tid}: rejected {e2ee['rejected']}, frame digests {e2ee['frame_digests']}")
        if e2ee.get("frame_alarms"):
            print(f"  {tid}: frame alarms {e2ee['frame_alarms']}")
    frames = call_of(statuses[BROWSER])["frames"] if BROWSER in statuses else {}
    print(f"the page's hash reports (late by, ms): {frames.get('hash_report_ms')}")
    for tid in ids:
        call = call_of(statuses[tid])
        assert call["topology"] == "sfu", (tid, call["topology"])
        assert set(call["sfu"]["downstream"]) == set(ids) - {tid}, (tid, call["sfu"])
        assert set(call["sfu"]["downstream"].values()) == {"connected"}, (tid, call["sfu"])
        assert call["sfu"]["upstream"] == "connected", (tid, call["sfu"])
        assert not call["sfu"]["refused"], (tid, call["sfu"])
        rejected = call["e2ee"]["rejected"]
        # expired_key: frames of a member that left, still in flight when its keys were
        # forgotten (it keeps publishing until its leave reaches Janus)
        benign = ("unknown_kid", "expired_key")
        assert all(r in benign or r.startswith("duplicate_") for r in rejected), (
            tid,
            rejected,
        )
        digests = call["e2ee"]["frame_digests"]
        assert digests["strict"] is True, (tid, digests)
        unauthenticated = digests["unauthenticated_frame"]
        if unauthenticated and page_stalled(statuses):
            # the page's worker stalled past the 2 s deadline (a starved shared host): the
            # browser's frames sent just before it came unsigned, and are shown as such; at
            # the browser itself, the others' frames its page received then (one CI-like
            # run in five on 2026-12-02: 128-285 per member, all `unsigned`, none forged)
            if tid == BROWSER:
                assert all(n <= STALL_RECEIVED for n in unauthenticated.values()), (
                    tid,
                    unauthenticated,
                )
            else:
                assert set(unauthenticated) == {BROWSER}, (tid, unauthenticated)
                assert sum(unauthenticated.values()) <= STALL_FRAMES, (tid, unauthenticated)
            assert all(
                (a["member"] == BROWSER or tid == BROWSER) and a["reason"] == "unsigned"
                for a in call["e2ee"]["frame_alarms"]
            ), call["e2ee"]["frame_alarms"]
            print(f"  {tid}: {unauthenticated} unsigned after the page stalled (shown so)")
            continue
        assert unauthenticated == {}, (tid, digests, call["e2ee"]["frame_alarms"])
        assert call["e2ee"]["frame_alarms"] == [], tid


#: the browser's frames at most unsigned at a member after a stall of its page's worker
#: (what it sent in the moment before; its hash of each goes out before the frame)
STALL_FRAMES = 60
#: each member's frames at most unsigned at the browser after such a stall (what its page
#: received meanwhile: ~55 frames a second of audio and video per member)
STALL_RECEIVED = 400


def page_stalled(statuses: dict[str, dict[str, Any]]) -> bool:
    """Whether a hash report of the browser's page reached its daemon later than the
    digests' 2 s deadline (its worker stalled: measured, ``frames.hash_report_ms``)."""
    if BROWSER not in statuses:
        return False
    late = call_of(statuses[BROWSER])["frames"].get("hash_report_ms") or {}
    return any(int(v.get("max", 0)) > 2000 for v in late.values())


async def admin(janus: JanusServer, path: str, request: str) -> dict[str, Any]:
    """One request to Janus's admin API (what the SFU's operator can do)."""
    body = {
        "janus": request,
        "transaction": secrets.token_hex(6),
        "admin_secret": janus.admin_secret,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(janus.admin_url + path, json=body) as resp,
    ):
        answer: dict[str, Any] = await resp.json(content_type=None)
    assert answer.get("janus") == "success", answer
    return answer


async def handles(janus: JanusServer) -> dict[tuple[int, int], dict[str, Any]]:
    """Every handle of every session Janus holds: its VideoRoom state (``plugin_specific``)."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for sid in (await admin(janus, "", "list_sessions"))["sessions"]:
        for hid in (await admin(janus, f"/{sid}", "list_handles")).get("handles") or []:
            info = (await admin(janus, f"/{sid}/{hid}", "handle_info")).get("info") or {}
            out[sid, hid] = info.get("plugin_specific") or {}
    return out


async def sfu_injects(
    janus: JanusServer, statuses: dict[str, dict[str, Any]], member: str
) -> SfuConference:
    """The SFU's operator adds a publisher of its own to the call's room (``mallory``, whose
    Opus frames are under ``member``'s current KID with a made-up key) and switches the
    browser's subscription to ``member`` over to mallory's audio (VideoRoom ``switch``: no
    renegotiation, the page sees nothing but the frames). Returns mallory (close it)."""
    call = call_of(statuses[BROWSER])
    roster = sorted(call["members"])
    forger = MediaCrypto(suite_by_name(call["e2ee"]["suite"]))
    forger.activate_send(call["epoch"], roster.index(member), secrets.token_bytes(32))
    mallory, state, mallory_audio = await publisher_of_its_own(
        janus, "mallory", call["sfu"]["room"], forger
    )
    assert mallory.joined is not None
    feed = call_of(statuses[member])["sfu"]["feed"]
    await switch_audio(
        janus, state, BROWSER, feed=feed, to_feed=mallory.joined.feed_id, to_mid=mallory_audio
    )
    return mallory


async def publisher_of_its_own(
    janus: JanusServer, name: str, room: int, crypto: MediaCrypto
) -> tuple[SfuConference, dict[tuple[int, int], dict[str, Any]], str]:
    """A publisher in the call's room that is no member (``name``, frames from ``crypto``):
    it, Janus's handles once it publishes, and the mid of its audio."""
    publisher = SfuConference(
        self_id=name,
        url=janus.url,
        room=room,
        secret="",
        crypto=crypto,
        source=synthetic_source(name),
    )
    await publisher.join()
    state = await handles(janus)
    (audio_mid,) = [
        st["mid"]
        for (sid, _), info in state.items()
        if sid == publisher.session.session_id and info.get("type") == "publisher"
        for st in info.get("streams") or []
        if st.get("type") == "audio"
    ]
    return publisher, state, audio_mid


async def switch_audio(
    janus: JanusServer,
    state: dict[tuple[int, int], dict[str, Any]],
    display: str,
    *,
    feed: int,
    to_feed: int,
    to_mid: str,
) -> None:
    """VideoRoom ``switch`` on the subscription of ``display`` to ``feed``'s audio: from now
    on it carries the audio ``to_mid`` of publisher ``to_feed`` (no renegotiation)."""
    sessions = {sid for (sid, _), info in state.items() if info.get("display") == display}
    targets = [
        (sid, hid, st["mid"])
        for (sid, hid), info in state.items()
        if sid in sessions and info.get("type") == "subscriber"
        for st in info.get("streams") or []
        if st.get("type") == "audio" and feed in (st.get("feed_id"), st.get("publisher_id"))
    ]
    assert len(targets) == 1, (display, targets, state)
    sid, hid, sub_mid = targets[0]
    switch = {
        "request": "switch",
        "streams": [{"feed": to_feed, "mid": to_mid, "sub_mid": sub_mid}],
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{janus.url}/{sid}/{hid}",
            json={"janus": "message", "body": switch, "transaction": secrets.token_hex(6)},
        ) as resp,
    ):
        assert (await resp.json(content_type=None)).get("janus") == "ack"


#: the insider's forged frames start this far up the victim's counters: past anything the
#: victim sent in the epoch, so no digest of the victim's ever signs them
FORGED_FROM_COUNTER = 1 << 30


async def member_forges(
    janus: JanusServer,
    statuses: dict[str, dict[str, Any]],
    installs: list[dict[str, Any]],
    victim: str,
    receivers: tuple[str, ...],
) -> SfuConference:
    """The browser's member turned insider: its page holds every member's SFrame key of the
    epoch (``installs``: what its daemon sent it), so it publishes audio under ``victim``'s
    KID with ``victim``'s real key, and the SFU switches each of ``receivers``'
    subscriptions to ``victim`` over to it. SFrame accepts these frames; only the signed
    frame digests can tell. Returns the insider's publisher (close it)."""
    call = call_of(statuses[BROWSER])
    epoch = call["epoch"]
    install = [m for m in installs if m.get("epoch") == epoch][-1]
    forger = MediaCrypto(suite_by_name(call["e2ee"]["suite"]))
    key = base64.b64decode(install["keys"][victim])
    forger.activate_send(epoch, install["roster"].index(victim), key)
    assert forger._send is not None
    forger._send.next_counter = FORGED_FROM_COUNTER
    insider, state, audio_mid = await publisher_of_its_own(
        janus, "insider", call["sfu"]["room"], forger
    )
    assert insider.joined is not None
    feed = call_of(statuses[victim])["sfu"]["feed"]
    for receiver in receivers:
        await switch_audio(
            janus, state, receiver, feed=feed, to_feed=insider.joined.feed_id, to_mid=audio_mid
        )
    return insider


async def page_links(page: Any) -> list[list[str]]:
    """The page's peer connections: [mode, peer, connection state] each, sorted."""
    links: list[list[str]] = await page.evaluate(
        "() => [...window.hotlineEngine.links.values()].map("
        "(l) => [l.mode, l.peer, l.pc.connectionState])"
    )
    return sorted(links)


def run_conference(
    host: Host,
    janus: JanusServer,
    tmp_path: Path,
    *,
    first: tuple[str, ...],
    joiner: str,
    leaver: str,
    mesh_limit: int,
    forge_victim: str | None = None,
    reload_page: bool = False,
    restart_sfu: bool = False,
) -> dict[str, float]:
    """``first`` (the browser first, the caller second) come in one by one (a mesh up to
    ``mesh_limit``, then through Janus), ``joiner`` joins and ``leaver`` leaves through
    Janus; with ``mesh_limit`` 2 the joiner then leaves too and the call is a mesh again.
    ``forge_victim``: at the end the browser's member forges that member's frames to the
    other Python members (:func:`member_forges`). ``reload_page``: after the SFU's
    injection the browser's page reloads, and the call through the SFU carries it again.
    ``restart_sfu``: then Janus is killed and started again (:func:`sfu_restarts`)."""
    everyone = (*first, joiner)
    rest = tuple(i for i in everyone if i != leaver)
    line = NamespaceLine(
        host,
        tmp_path / "line",
        "capitals",
        {site: [(site, Role.PRINCIPAL)] for site in everyone},
        policy=Policy(max_participants=len(everyone), mesh_limit=mesh_limit),
        sfus=(SfuEndpoint(janus.url),),
    )
    figures: dict[str, float] = {}

    def shape(n: int) -> str:
        return "mesh" if n <= mesh_limit else "sfu"

    async def main() -> None:
        line.commission()
        t0 = time.monotonic()
        epochs: list[int] = []
        try:
            await line.start_exchange()
            for tid in everyone:
                ui = ("--ui", "127.0.0.1:0", "--engine", "browser")  # its camera SMALL too
                extra = (*ui, *SMALL) if tid == BROWSER else SMALL
                answer = () if tid == CALLER else ("--auto-answer",)
                await line.start_terminal(tid, *extra, *answer)
            await line.wait_online(list(everyone))
            async with chromium(tmp_path) as browser:
                from_daemon: list[str] = []  # every message the page gets: its keys too
                page = await open_engine_page(browser, line, BROWSER, from_daemon)
                camera = await page.evaluate(
                    "() => window.hotlineEngine.local.getVideoTracks()[0].getSettings()"
                )
                print(
                    f"the page's camera: {camera.get('width')}x{camera.get('height')} "
                    f"@ {camera.get('frameRate')}"
                )
                figures["started_s"] = time.monotonic() - t0
                async with line.control(CALLER) as caller:
                    await caller.request("POST", "/call", {"target": BROWSER})
                    for n in range(2, len(first) + 1):
                        ids = first[:n]
                        agreed_n = await wait_for(
                            line, ids, lambda s, n=n: agreed(s, n, shape(n)), f"{n} members"
                        )
                        epochs.append(call_of(agreed_n[CALLER])["epoch"])
                        if n == mesh_limit + 1:  # the move to the SFU, the browser with it
                            figures["moved_to_sfu_s"] = time.monotonic() - t0
                        if n == mesh_limit + 1 and n < len(first):
                            await every_pair_decrypts(line, ids, f"{n} members, moved")
                        if n < len(first):
                            if n == mesh_limit:  # the page's freezes of this move from here
                                await page.evaluate(RESET_TILES)
                            await caller.request("POST", "/invite", {"target": first[n]})
                    await every_pair_decrypts(line, first, f"{len(first)} members")
                    figures["first_flowing_s"] = time.monotonic() - t0
                    if len(first) > mesh_limit:
                        await page_shows_every_member(line, first, "to_sfu", figures)

                    # a member joins mid-call: a new epoch, everyone decrypts everyone in it
                    t = time.monotonic()
                    await caller.request("POST", "/invite", {"target": joiner})
                    joined = await wait_for(
                        line,
                        everyone,
                        lambda s: agreed(s, len(everyone), "sfu"),
                        f"{joiner} joined",
                    )
                    epochs.append(call_of(joined[CALLER])["epoch"])
                    joined = await every_pair_decrypts(line, everyone, f"after {joiner} joined")
                    figures["join_flowing_s"] = time.monotonic() - t
                    check_clean(joined, everyone)

                # one leaves mid-call: a new epoch among the others, still through the SFU
                t = time.monotonic()
                async with line.control(leaver) as leaving:
                    await leaving.request("POST", "/hangup")
                left = await wait_for(
                    line, rest, lambda s: agreed(s, len(rest), "sfu"), f"{leaver} left"
                )
                epochs.append(call_of(left[CALLER])["epoch"])
                await every_pair_decrypts(line, rest, f"after {leaver} left")
                figures["leave_flowing_s"] = time.monotonic() - t
                await asyncio.sleep(2.5)  # every frame shown by now is past its deadline
                settled = await statuses_of(line, rest)
                check_clean(settled, rest)
                report(settled, rest, epochs, figures)
                browser_view = call_of(settled[BROWSER])
                assert leaver not in browser_view["sfu"]["downstream"]
                # the page: one publishing link, one subscription per member, all connected
                assert await page_links(page) == sorted(
                    [["publish", BROWSER, "connected"]]
                    + [["subscribe", o, "connected"] for o in rest if o != BROWSER]
                )
                by_sender = browser_view["e2ee"]["unprotected_by_sender"]
                assert set(by_sender) >= set(everyone) - {BROWSER}, by_sender
                assert browser_view["e2ee"]["frame_digests"]["verified"] > 200
                # the page's worker sent its frame hashes itself (off the page's main thread)
                frames = browser_view["frames"]
                assert frames["hash_channel"] is True, frames
                assert frames["hash_report_ms"]["worker"]["n"] > 0, frames
                for tid in rest:  # what the browser sent, every Python member decrypted
                    if tid != BROWSER:
                        got = call_of(settled[tid])["e2ee"]["unprotected_by_sender"]
                        assert got[BROWSER] > 0, (tid, got)

                # the SFU injects frames into the browser's subscription to the caller:
                # refused in the page's worker (bad_tag), counted, and shown on the page
                before = call_of(settled[BROWSER])["e2ee"]["rejected"].get("bad_tag", 0)
                mallory = await sfu_injects(janus, settled, CALLER)
                try:
                    t = time.monotonic()

                    async def refused() -> bool:
                        e2ee = call_of(await line.status(BROWSER))["e2ee"]
                        return bool(e2ee["rejected"].get("bad_tag", 0) - before >= 20)

                    await wait_until(refused, 20, "injected frames refused at the page")
                    figures["injected_refused_s"] = time.monotonic() - t
                    await page.wait_for_function(
                        "() => document.getElementById('banner').textContent.includes('bad_tag')",
                        timeout=10_000,
                    )
                    print(f"the page's banner: {await page.inner_text('#banner')!r}")
                    after_injection = await statuses_of(line, rest)
                    for tid in rest:  # mallory's feed: a stranger's, taken by nobody
                        call = call_of(after_injection[tid])
                        assert call["sfu"]["refused"].get("unknown_feed", 0) >= 1, call["sfu"]
                        assert "mallory" not in call["sfu"]["downstream"]
                    # nothing injected was accepted: no new alarm, no frame of mallory's shown
                    # (what a measured stall of the page left before, check_clean judged)
                    digests = call_of(after_injection[BROWSER])["e2ee"]["frame_digests"]
                    earlier = call_of(settled[BROWSER])["e2ee"]["frame_digests"]
                    assert digests["unauthenticated_frame"] == earlier["unauthenticated_frame"], (
                        digests,
                        earlier,
                    )
                finally:
                    await mallory.close()

                # what a reload leaves: frames whose hashes died with the old page
                after_reload: dict[str, dict[str, int]] = {}
                if reload_page:
                    after_reload = await page_reloads(line, page, rest, epochs, figures)
                if restart_sfu:
                    await sfu_restarts(line, janus, page, rest, figures)

                if len(rest) - 1 <= mesh_limit:
                    # below the limit again: back to a mesh with the browser, keys kept
                    t = time.monotonic()
                    await page.evaluate(RESET_TILES)
                    async with line.control(joiner) as leaving:
                        await leaving.request("POST", "/hangup")
                    two = tuple(i for i in rest if i != joiner)
                    mesh = await wait_for(
                        line, two, lambda s: agreed(s, len(two), "mesh"), "back to a mesh"
                    )
                    epochs.append(call_of(mesh[CALLER])["epoch"])
                    mesh = await every_pair_decrypts(line, two, "back to a mesh")
                    figures["back_to_mesh_s"] = time.monotonic() - t
                    await page_shows_every_member(line, two, "to_mesh", figures)
                    assert await page_links(page) == sorted(
                        ["mesh", o, "connected"] for o in two if o != BROWSER
                    )
                    for tid in two:
                        call = call_of(mesh[tid])
                        assert call["sfu"] is None, (tid, call["sfu"])
                        unauthenticated = call["e2ee"]["frame_digests"]["unauthenticated_frame"]
                        assert unauthenticated == after_reload.get(tid, {}), (tid, unauthenticated)
                if forge_victim is not None:
                    receivers = tuple(i for i in rest if i not in (BROWSER, forge_victim))
                    await insider_is_caught(
                        line,
                        janus,
                        from_daemon,
                        victim=forge_victim,
                        receivers=receivers,
                        figures=figures,
                    )
                assert epochs == sorted(set(epochs)), epochs  # a new epoch at every change
                figures["total_s"] = time.monotonic() - t0
        finally:
            await line.stop()

    run_in_host(host, main)
    return figures


#: the page's tiles count their longest freeze again from now
RESET_TILES = "() => window.hotlineEngine.gallery && window.hotlineEngine.gallery.resetFrameStats()"


async def page_shows_every_member(
    line: NamespaceLine, ids: tuple[str, ...], move: str, figures: dict[str, float]
) -> None:
    """What the page painted of each other member through a move between mesh and SFU
    (its tiles outlive the links): every tile painted, and its longest freeze since the
    move began (the join or leave that caused it, and its new epoch, included)."""
    view = call_of(await line.status(BROWSER))["peers"]
    tiles = {o: view[o].get("tile") or {} for o in ids if o != BROWSER}
    print(f"  the page's tiles through the move {move} (frames, longest freeze): {tiles}")
    for o, tile in tiles.items():
        assert tile.get("frames", 0) > 0, (o, tiles)
        assert tile["longest_freeze_ms"] < 3_000, (move, o, tiles)  # a busy host's bound
    figures[f"page_gap_{move}_s"] = max(t["longest_freeze_ms"] for t in tiles.values()) / 1000


async def page_reloads(
    line: NamespaceLine,
    page: Any,
    ids: tuple[str, ...],
    epochs: list[int],
    figures: dict[str, float],
) -> dict[str, dict[str, int]]:
    """The browser's page reloads mid-conference: its daemon joins the room again with the
    new page (``sfu_rejoin``), a new epoch begins (the new page never gets the old send
    key), and every member decrypts every other member again, the browser included.

    The old page's last frame hashes (up to one 100 ms report of its worker) die with it:
    the frames they were of reached the others but no digest of the browser's can sign
    them, so each other member may raise the ``unsigned`` alarm naming the browser for a
    few frames (fail closed: a frame nobody signed is never taken as authentic). Returns
    each member's ``unauthenticated_frame`` counts once the deadlines have passed."""
    before = await statuses_of(line, ids)
    epoch = call_of(before[CALLER])["epoch"]
    old_links = {p["link"] for p in call_of(before[BROWSER])["peers"].values() if p.get("link")}
    t = time.monotonic()
    await page.reload()
    await wait_until(
        lambda: page.evaluate("() => !!(window.hotlineEngine && window.hotlineEngine.local)"),
        10,
        "the reloaded page's media engine",
    )

    def back(s: dict[str, dict[str, Any]]) -> bool:
        peers = call_of(s[BROWSER]).get("peers") or {}
        links = {p.get("link") for o, p in peers.items() if o != BROWSER}
        return (
            agreed(s, len(ids), "sfu")
            and call_of(s[CALLER])["epoch"] > epoch
            and len(links) == len(ids) - 1
            and not links & old_links
        )

    rebuilt = await wait_for(line, ids, back, "the reloaded page back in the conference")
    epochs.append(call_of(rebuilt[CALLER])["epoch"])
    await every_pair_decrypts(line, ids, "after the page reloaded")
    figures["reload_flowing_s"] = time.monotonic() - t
    await asyncio.sleep(2.5)  # every frame of the old page is past its deadline
    settled = await statuses_of(line, ids)
    counts: dict[str, dict[str, int]] = {}
    for tid in ids:
        e2ee = call_of(settled[tid])["e2ee"]
        counts[tid] = dict(e2ee["frame_digests"]["unauthenticated_frame"])
        assert set(counts[tid]) <= {BROWSER} - {tid}, (tid, e2ee["frame_alarms"])
        assert sum(counts[tid].values()) <= 60, (tid, counts[tid])  # 1 s of its frames at most
        assert all(a["reason"] == "unsigned" for a in e2ee["frame_alarms"]), e2ee["frame_alarms"]
    print(f"frames of the old page no digest could sign, by receiver: {counts}")
    return counts
    print(f"the page reloaded: all decrypting again after {figures['reload_flowing_s']:.1f} s")


async def sfu_restarts(
    line: NamespaceLine,
    janus: JanusServer,
    page: Any,
    ids: tuple[str, ...],
    figures: dict[str, float],
) -> None:
    """Janus is killed (SIGKILL) and started again, empty, mid-conference: the browser's
    daemon (it holds the API session; the page holds the media links) and the Python
    members join the room again under the same call and keys, the page makes new links,
    and every member decrypts every other again, the browser included."""
    before = await statuses_of(line, ids)
    old_links = {p["link"] for p in call_of(before[BROWSER])["peers"].values() if p.get("link")}
    rejoins = {tid: call_of(before[tid])["sfu_rejoins"] for tid in ids}
    t = time.monotonic()
    assert janus.proc is not None
    janus.proc.kill()
    janus.proc.wait(10)
    janus.proc = None
    await asyncio.to_thread(janus.start)

    def back(s: dict[str, dict[str, Any]]) -> bool:
        peers = call_of(s[BROWSER]).get("peers") or {}
        links = {p.get("link") for o, p in peers.items() if o != BROWSER}
        return (
            agreed(s, len(ids), "sfu")
            and all(call_of(s[tid])["sfu_rejoins"] > rejoins[tid] for tid in ids)
            and len(links) == len(ids) - 1
            and not links & old_links
        )

    await wait_for(line, ids, back, "every member back through the restarted SFU")
    after = await every_pair_decrypts(line, ids, "through the restarted SFU")
    figures["sfu_restart_flowing_s"] = time.monotonic() - t
    links = await page_links(page)
    assert len(links) == len(ids) and all(state == "connected" for *_, state in links), links
    for tid in ids:
        call = call_of(after[tid])
        assert call["epoch"] == call_of(before[tid])["epoch"], tid  # the same keys
        assert 1 <= call["sfu_rejoins"] - rejoins[tid] <= 2, (tid, call["sfu_rejoins"])
        assert call["sfu"]["broken"] is None, (tid, call["sfu"])
    print(f"janus restarted: all decrypting again after {figures['sfu_restart_flowing_s']:.1f} s")


async def insider_is_caught(
    line: NamespaceLine,
    janus: JanusServer,
    from_daemon: list[str],
    *,
    victim: str,
    receivers: tuple[str, ...],
    figures: dict[str, float],
) -> None:
    """Forged frames of ``victim`` reach ``receivers`` (:func:`member_forges`): each
    decrypts them, and each raises the alarm naming ``victim`` within the digests' 2 s
    deadline (and a status poll), in its status and its event stream; nobody names anyone
    else."""
    messages = [json.loads(f) for f in from_daemon if f.startswith("{")]
    installs = [m for m in messages if m.get("type") == "keys" and m.get("op") == "install"]
    statuses = await statuses_of(line, (BROWSER, victim, *receivers))
    before = {
        r: call_of(statuses[r])["e2ee"]["unprotected_by_sender"].get(victim, 0) for r in receivers
    }
    insider = await member_forges(janus, statuses, installs, victim, receivers)
    try:
        t = time.monotonic()
        caught: dict[str, float] = {}
        while len(caught) < len(receivers) and time.monotonic() - t < 15:
            for r in receivers:
                if r not in caught:
                    digests = call_of(await line.status(r))["e2ee"]["frame_digests"]
                    if digests["unauthenticated_frame"].get(victim):
                        caught[r] = time.monotonic() - t
            await asyncio.sleep(0.2)
        assert set(caught) == set(receivers), (caught, receivers)
        figures["forgery_alarm_s"] = max(caught.values())
        after = await statuses_of(line, (BROWSER, victim, *receivers))
    finally:
        await insider.close()
    for r in receivers:
        call = call_of(after[r])
        # SFrame accepted them (the real key): frames of the victim's kept counting
        assert call["e2ee"]["unprotected_by_sender"].get(victim, 0) > before[r], r
        named = {a["member"] for a in call["e2ee"]["frame_alarms"]}
        stall = {BROWSER} if page_stalled(after) else set()  # see check_clean
        assert victim in named and named <= {victim} | stall, (r, call["e2ee"]["frame_alarms"])
        assert all(a["reason"] in ("forged", "unsigned") for a in call["e2ee"]["frame_alarms"])
        print(f"{r}: {call['e2ee']['frame_alarms'][0]['message']}")
    for other in (BROWSER, victim):  # the forger's own and the victim's screens: no alarm
        alarms = call_of(after[other])["e2ee"]["frame_alarms"]
        # after a stall of the page (see check_clean): the browser's frames unsigned at the
        # others, and at the browser the others' frames its page received meanwhile
        stalled = page_stalled(after)
        stall = (set(after) - {BROWSER} if other == BROWSER else {BROWSER}) if stalled else set()
        assert {a["member"] for a in alarms} <= stall, (other, alarms)
        assert all(a["reason"] == "unsigned" for a in alarms), (other, alarms)
    # the digests' deadline is 2 s after a frame is accepted; a status poll is 0.2 s. The
    # bound is for a starved shared host (4.06 s seen at load 11), not the target: the
    # Python-only six-terminal test holds it to 3 s
    assert figures["forgery_alarm_s"] <= 6.0, figures


def test_a_browser_terminal_through_janus_moves_joins_and_leaves(
    sfu_host: tuple[Host, JanusServer], tmp_path: Path
) -> None:
    """Four terminals, the browser and three Python ones (mesh limit 2): a mesh of two
    moves to the SFU at three, a fourth joins and one leaves through the SFU, the page
    reloads, Janus restarts, and at two the call is a mesh again."""
    host, janus = sfu_host
    figures = run_conference(
        host,
        janus,
        tmp_path,
        first=(BROWSER, CALLER, "paris"),
        joiner="rome",
        leaver="paris",
        mesh_limit=2,
        reload_page=True,
        restart_sfu=True,
    )
    print(f"browser + three Python terminals: {figures}")


def report(
    statuses: dict[str, dict[str, Any]],
    ids: tuple[str, ...],
    epochs: list[int],
    figures: dict[str, float],
) -> None:
    print(f"{len(ids)} terminals (browser {BROWSER}) through Janus: epochs {epochs}")
    print("  " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
    frames = call_of(statuses[BROWSER])["frames"]
    print(
        f"  the page's hash reports (channel {frames.get('hash_channel')}), late by (ms): "
        f"{frames.get('hash_report_ms')}"
    )
    for rx in ids:
        call = call_of(statuses[rx])
        got = {tx: received(statuses[rx], rx, tx) for tx in ids if tx != rx}
        print(
            f"  {rx:10} (video, audio) decrypted per sender: {got}; rejected "
            f"{call['e2ee']['rejected']}; digests verified "
            f"{call['e2ee']['frame_digests']['verified']}"
        )


# Six terminal processes, Chromium and Janus on 2 cores (load average 10-17): media reached
# members 10-13 s behind their signalling and the page's tiles froze past their bound in four
# runs of seven on 2026-12-03, on a host doing nothing else. The Python-only six-terminal test
# and the four-terminal browser test run in the suite; this one when asked for (-m heavy).
@pytest.mark.heavy
def test_six_terminals_a_browser_and_five_python_through_janus(
    sfu_host: tuple[Host, JanusServer], tmp_path: Path
) -> None:
    """Six terminals, the browser and five Python ones (mesh limit 3): a mesh of three
    moves to the SFU at four, a sixth joins and one leaves through the SFU, and the SFU's
    injected frames are refused at the page."""
    host, janus = sfu_host
    figures = run_conference(
        host,
        janus,
        tmp_path,
        first=(BROWSER, CALLER, "paris", "rome", "madrid"),
        joiner="warsaw",
        leaver="paris",
        mesh_limit=3,
        forge_victim="rome",
    )
    print(f"browser + five Python terminals: {figures}")
