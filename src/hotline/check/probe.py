"""Run one readiness check: a real call with ``purpose`` "check", measured, then hung up.

The caller dials with purpose "check"; the callee's terminal answers by itself (no person is
rung). The check goes through everything a real call does — the exchange, the key
agreement, ICE (through the relays when the policy says so), DTLS, SFrame — waits for
decrypted media both ways, measures for a few seconds, then both ends exchange their views
(``check.report``, signed envelopes) so that the caller can compare security codes, epochs
and charter versions, and take the lower of the two frame rates. The callee sends the
caller's own media back: the caller reads its frame ids and chirps (the video and audio
round trips, on its clock alone) and scores its reference speech with PESQ-WB
(``media.speech``; not measured, and said why, without ``pesq`` or alsa-utils' speech).
The verdict (``check.metrics``) and every figure go into the caller's call log
(``check_result``); the callee logs the caller's report (``check_report``). Both logs are
hash-chained and signed, and the call's summary is co-signed as for any call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from hotline.call.aiortc_engine import AiortcEngine, CheckAudio
from hotline.check.metrics import Measurement, Thresholds, verdict
from hotline.errors import HotlineError, StateError
from hotline.media import speech
from hotline.media.sinks import PcmCapture

if TYPE_CHECKING:
    from hotline.terminal.daemon import TerminalDaemon

#: how long a check may take to be answered, keyed and carry media both ways
SETUP_TIMEOUT_S = 30.0
#: how long the other end's report may take
REPORT_TIMEOUT_S = 5.0
DEFAULT_SECONDS = 3.0
#: how long past the window to wait for a first RTCP round trip (a long path reports late)
RTT_WAIT_S = 3.0


def _peer(stats: dict[str, Any], peer: str) -> dict[str, Any]:
    return (stats.get("peers") or {}).get(peer) or {}


def _rtt(stats: dict[str, Any], peer: str) -> float | None:
    """The RTCP round trip to ``peer`` (audio's, else video's); None before the first report."""
    rtp = _peer(stats, peer).get("rtp") or {}
    for kind in ("audio", "video"):
        value = (rtp.get(kind) or {}).get("rtt_ms")
        if isinstance(value, int | float):
            return float(value)
    return None


async def _speech_quality(
    check_audio: CheckAudio, capture: PcmCapture
) -> tuple[int | None, str | None]:
    """PESQ-WB x 100 of our reference speech as it came back, or None and why not."""
    missing = check_audio.missing or speech.pesq_missing()
    if missing is not None:
        return None, missing
    try:
        score = await asyncio.to_thread(
            speech.score_looped, capture.pcm, check_audio.clip, check_audio.marks
        )
    except Exception as exc:  # pesq raises its own errors (no utterance found, ...)
        return None, f"PESQ not measured: {exc}"
    return round(score * 100), None


def _frames(stats: dict[str, Any], peer: str, kind: str) -> int:
    """Video frames shown, or audio *packets* received (played audio includes concealment,
    which flows even when nothing arrives)."""
    entry = _peer(stats, peer)
    if kind == "audio" and entry.get("audio_playout"):
        return int(entry["audio_playout"].get("packets", 0))
    return int((entry.get(f"{kind}_sink") or {}).get("frames", 0))


async def run_check(
    daemon: TerminalDaemon,
    target: str,
    *,
    seconds: float = DEFAULT_SECONDS,
    thresholds: Thresholds | None = None,
) -> Measurement:
    """One check from ``daemon`` to ``target``; never raises for a failed check (the
    failure is the result), only :class:`StateError` when a call is running. The verdict
    uses ``thresholds``, by default those of the charter's policy."""
    if daemon.busy:
        raise StateError("a call is running: a readiness check never interrupts it")
    m = Measurement(peer=target)
    started = time.monotonic()
    wall = daemon.clock.time()
    previous = daemon.call
    try:
        try:
            await _measure(daemon, target, seconds, m, started)
        except HotlineError as exc:
            m.failure = m.failure or str(exc)
        verdict(m, thresholds or daemon.charter.charter.policy.check_thresholds)
        call = daemon.call
        if m.ok and call is not None and call.machine.purpose == "check" and daemon.busy:
            # the callee keeps the verdict too (in its own signed chain), sent before the
            # hang-up so that it arrives while the call is still up
            with contextlib.suppress(HotlineError):
                await call.send_check_result(target, daemon.check_record(m, wall))
    finally:
        call = daemon.call
        ours = call is not None and call is not previous and call.machine.purpose == "check"
        check_call_id = call.call_id if ours and call is not None else None
        if call is not None and call.machine.purpose == "check" and daemon.busy:
            with contextlib.suppress(HotlineError):
                await call.hangup("readiness check done")
    daemon.record_check(m, wall, check_call_id)
    return m


async def _measure(
    daemon: TerminalDaemon, target: str, seconds: float, m: Measurement, started: float
) -> None:
    if not daemon.client.connected:
        m.failure = "the exchange is unreachable"
        return
    if target not in daemon.client.online:
        m.failure = f"{target} is not online"
        return
    call_id = await daemon.dial(target, purpose="check")
    call = daemon.call
    assert call is not None and call.call_id == call_id
    deadline = started + SETUP_TIMEOUT_S
    while True:
        if call.machine.state.value == "ended":
            m.failure = f"the check call ended: {call.machine.end_reason}"
            return
        stats = await call.stats()
        if _frames(stats, target, "video") > 0 and _frames(stats, target, "audio") > 0:
            break
        if time.monotonic() > deadline:
            state = call.machine.state.value
            m.failure = (
                f"{target} did not answer in {SETUP_TIMEOUT_S:g} s"
                if state == "outgoing"
                else f"no media from {target} {SETUP_TIMEOUT_S:g} s after dialling"
            )
            return
        await asyncio.sleep(0.05)
    m.setup_ms = round((time.monotonic() - started) * 1000)
    engine = call.engine if isinstance(call.engine, AiortcEngine) else None
    check_audio = engine.check_audio if engine is not None else None
    # at most the window and 2 s: what the far end sends cannot make it grow beyond that
    capture = PcmCapture(by_pts=True, limit=int((seconds + 2) * 48000))
    if engine is not None:
        engine.measure_audio(target, capture)  # our speech, as it comes back
    before = await call.stats()
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    after = await call.stats()
    dt = time.monotonic() - t0
    if engine is not None:
        engine.measure_audio(target, None)
    ours_video = round((_frames(after, target, "video") - _frames(before, target, "video")) / dt)
    ours_audio = round((_frames(after, target, "audio") - _frames(before, target, "audio")) / dt)
    waited = time.monotonic()
    while _rtt(after, target) is None and time.monotonic() - waited < RTT_WAIT_S:
        await asyncio.sleep(0.1)  # rates stay those of the window; only the RTT is awaited
        after = await call.stats()
    peer = _peer(after, target)
    rtp = peer.get("rtp") or {}
    audio_rtp, video_rtp = rtp.get("audio") or {}, rtp.get("video") or {}
    rtt = _rtt(after, target)
    if rtt is not None:
        m.rtt_ms = round(rtt)
        m.one_way_ms = round(rtt / 2)
    fractions = [
        float(k["remote_fraction_lost"])
        for k in (audio_rtp, video_rtp)
        if k.get("remote_fraction_lost") is not None
    ]
    if fractions:
        m.loss_permille = round(max(fractions) * 1000)
    if audio_rtp.get("jitter_ms") is not None:
        m.jitter_ms = round(float(audio_rtp["jitter_ms"]))
    path = peer.get("path") or {}
    m.path = path.get("local") if isinstance(path, dict) else None
    video_sink = peer.get("video_sink") or {}
    m.corrupt_shown = int(video_sink.get("corrupt_shown") or 0)
    m.longest_freeze_ms = int(video_sink.get("longest_freeze_ms") or 0)
    rejected = (after.get("e2ee") or {}).get("rejected") or {}
    m.frames_rejected = sum(v for v in rejected.values() if isinstance(v, int))
    sent = time.monotonic()
    await call.send_check_report(target)
    while target not in call.check_reports:
        if time.monotonic() - sent > REPORT_TIMEOUT_S:
            m.failure = f"{target} sent no check report"
            return
        await asyncio.sleep(0.02)
    m.exchange_rtt_ms = round((time.monotonic() - sent) * 1000)
    theirs = call.check_reports[target]
    m.security_code_match = bool(
        call.security_code
        and theirs.get("security_code") == call.security_code
        and theirs.get("epoch") == call.epoch
    )
    m.charter_version_match = theirs.get("charter_version") == call.charter_version
    if theirs.get("loopback") is True:  # our frame ids came back: the round trip, our clock
        p50 = video_sink.get("latency_p50_ms")
        m.video_rtt_ms = round(p50) if isinstance(p50, int | float) else None
    if theirs.get("loopback_audio") is not True:
        m.pesq_note = "PESQ not measured: the other end does not send our audio back"
    elif check_audio is not None and engine is not None:  # our speech came back: score it
        trips = sorted(check_audio.round_trips_ms(engine.chirps_heard_ms(target)))
        m.audio_rtt_ms = trips[len(trips) // 2] if trips else None
        m.pesq_x100, m.pesq_note = await _speech_quality(check_audio, capture)
    else:
        m.pesq_note = "PESQ not measured: this engine sends no reference speech"
    their_video, their_audio = theirs.get("video_fps"), theirs.get("audio_fps")
    m.video_fps = min(ours_video, their_video) if isinstance(their_video, int) else ours_video
    m.audio_fps = min(ours_audio, their_audio) if isinstance(their_audio, int) else ours_audio
    for key in ("corrupt_shown", "frames_rejected"):
        value = theirs.get(key)
        if isinstance(value, int):
            setattr(m, key, getattr(m, key) + value)
    m.ok = True
