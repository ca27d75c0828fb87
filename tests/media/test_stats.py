"""Statistics: counters from many threads, percentiles, RTP stats digestion, JSON."""

from __future__ import annotations

import datetime
import json
import threading

from aiortc.stats import (
    RTCInboundRtpStreamStats,
    RTCOutboundRtpStreamStats,
    RTCRemoteInboundRtpStreamStats,
)

from hotline.media.sinks import VideoFrameIdSink
from hotline.media.stats import (
    CallMediaStats,
    LatencyRecorder,
    MediaCryptoStats,
    RtcStatsSampler,
    percentile,
)

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def test_counters_are_exact_under_concurrency() -> None:
    stats = MediaCryptoStats()

    def work() -> None:
        for _ in range(2000):
            stats.count_protected("video", 100, 10)
            stats.count_received("audio")
            stats.count_rejected("audio", "auth_failed")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    d = stats.to_dict()
    assert d["video"]["sent"] == 8000 and d["video"]["sent_bytes"] == 800_000
    assert d["audio"]["rejected"] == {"auth_failed": 8000} and d["audio"]["rejected_total"] == 8000
    assert stats.rejected("audio") == stats.rejected("audio", "auth_failed") == 8000
    assert stats.rejected("video") == 0
    assert d["crypto_cpu_ms"]["send"] == 0.08
    json.dumps(d)


def test_percentiles() -> None:
    assert percentile([], 50) is None
    assert percentile([7], 95) == 7
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(range(101), 95) == 95
    rec = LatencyRecorder(capacity=3)
    for v in (100, 1, 2, 3):
        rec.add(v)
    assert rec.samples == [1, 2, 3] and rec.count == 4
    assert rec.to_dict() == {"count": 4, "p50_ms": 2.0, "p95_ms": 2.9, "max_ms": 3}


def _report(bytes_sent: int) -> list[object]:
    common = {"timestamp": NOW, "transportId": "t"}
    return [
        RTCOutboundRtpStreamStats(
            type="outbound-rtp", id="o", ssrc=1, kind="video", packetsSent=10,
            bytesSent=bytes_sent, trackId="v", **common,
        ),
        RTCInboundRtpStreamStats(
            type="inbound-rtp", id="i", ssrc=2, kind="audio", packetsReceived=50,
            packetsLost=2, jitter=480, **common,
        ),
        RTCRemoteInboundRtpStreamStats(
            type="remote-inbound-rtp", id="r", ssrc=1, kind="video", packetsReceived=9,
            packetsLost=1, jitter=900, roundTripTime=0.004, fractionLost=64, **common,
        ),
    ]  # fmt: skip


def test_rtp_stats_become_rates_and_milliseconds() -> None:
    sampler = RtcStatsSampler()
    first = sampler.digest(_report(10_000), now=100.0)
    assert "bitrate_kbps" not in first["video"]
    second = sampler.digest(_report(135_000), now=102.0)
    assert second["video"]["bitrate_kbps"] == 500.0
    assert second["video"]["rtt_ms"] == 4.0 and second["video"]["remote_fraction_lost"] == 0.25
    assert second["video"]["remote_jitter_ms"] == 10.0
    assert second["audio"] == {"packets_received": 50, "packets_lost": 2, "jitter_ms": 10.0}


async def test_call_stats_snapshot_is_json() -> None:
    from hotline.media import engine

    crypto = MediaCryptoStats()
    call = CallMediaStats(crypto)
    pc = engine.create_peer_connection(None)
    call.add_peer("situation-room", pc, video_sink=VideoFrameIdSink())
    snap = await call.snapshot()
    await pc.close()
    assert set(snap) == {"frames", "peers"}
    assert snap["peers"]["situation-room"]["video_sink"]["frames"] == 0
    json.dumps(snap)
    call.remove_peer("situation-room")
    assert (await call.snapshot())["peers"] == {}


async def test_snapshot_survives_a_peer_removed_while_it_samples() -> None:
    """Hang-up closes peers while ``/status`` samples them (issue 9, point 12): the snapshot
    must not fail with "dictionary changed size during iteration"."""
    import asyncio

    from hotline.media import engine

    call = CallMediaStats(MediaCryptoStats())
    pcs = []
    for peer in ("situation-room", "kremlin", "interpreter"):
        pc = engine.create_peer_connection(None)
        pc.addTransceiver("audio")  # getStats() then awaits its sender and receiver
        pcs.append(pc)
        call.add_peer(peer, pc, video_sink=VideoFrameIdSink())
    sampling = asyncio.ensure_future(call.snapshot())
    await asyncio.sleep(0)  # the snapshot is inside the first peer's getStats()
    call.remove_peer("kremlin")
    await pcs[1].close()
    snap = await sampling
    for pc in pcs:
        await pc.close()
    assert "kremlin" not in snap["peers"]
    assert {"situation-room", "interpreter"} <= set(snap["peers"])
    json.dumps(snap)
