"""Per-call media statistics: frame-crypto counters, latency, and aiortc's RTP statistics.

Pure counting lives here (:class:`MediaCryptoStats`, :class:`LatencyRecorder`); the only
adapter is :class:`RtcStatsSampler`, which reads a peer connection's public ``getStats()``.
Every object serialises to plain ``dict`` data for ``--json`` output.

Thread safety: :class:`MediaCryptoStats` is updated from aiortc's encoder thread pool and
its per-receiver decoder threads at once, so every update takes one lock.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from aiortc import RTCPeerConnection

#: the two media kinds that carry E2EE frames
KINDS = ("audio", "video")

#: direction labels used in :class:`FrameEvent`
SEND = "send"
RECV = "recv"

#: RTP clock rates, to turn RTCP jitter (in timestamp units) into milliseconds
RTP_CLOCK_RATE = {"audio": 48000, "video": 90000}


class SupportsCounters(Protocol):
    def counters(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class FrameEvent:
    """A frame the crypto seam refused to send or to show. Carries no frame bytes."""

    direction: str  #: ``"send"`` or ``"recv"``
    kind: str  #: ``"audio"`` or ``"video"``
    reason: str  #: the ``HotlineError.reason`` of the refusal (``"unbound"``, ``"auth"``...)
    size: int  #: length of the refused frame in bytes


class MediaCryptoStats:
    """Counters of the frame-crypto seam for one call (shared by its peer connections).

    ``on_event`` is called for every refused frame. When the seam knows the event loop it
    calls it *on the loop* (``call_soon_threadsafe``); it must not block.
    """

    def __init__(self, on_event: Callable[[FrameEvent], None] | None = None) -> None:
        self.on_event = on_event
        self._lock = threading.Lock()
        self._sent: Counter[str] = Counter()
        self._sent_bytes: Counter[str] = Counter()
        self._protect_failed: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
        self._received: Counter[str] = Counter()
        self._decrypted: Counter[str] = Counter()
        self._rejected: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
        self._decode_errors: Counter[str] = Counter()
        self._decoded: Counter[str] = Counter()
        self._keyframe_requests: Counter[str] = Counter()
        self._forced_keyframes: Counter[str] = Counter()
        self._crypto_cpu_ns: Counter[str] = Counter()
        self._guards: list[SupportsCounters] = []

    def add_video_guard(self, guard: SupportsCounters) -> None:
        """Report a video receiver's guard counters (``media.video_guard``) with these."""
        with self._lock:
            self._guards.append(guard)

    def video_guard(self) -> dict[str, int]:
        """The receive-side video guard's counters, summed over this call's receivers."""
        with self._lock:
            guards = list(self._guards)
        total: Counter[str] = Counter()
        for guard in guards:
            total.update(guard.counters())
        return dict(sorted(total.items()))

    # --- updates (any thread) -----------------------------------------------------------

    def count_protected(self, kind: str, out_size: int, cpu_ns: int) -> None:
        with self._lock:
            self._sent[kind] += 1
            self._sent_bytes[kind] += out_size
            self._crypto_cpu_ns[SEND] += cpu_ns

    def count_protect_failure(self, kind: str, reason: str) -> None:
        with self._lock:
            self._protect_failed.setdefault(kind, Counter())[reason] += 1

    def count_received(self, kind: str) -> None:
        with self._lock:
            self._received[kind] += 1

    def count_decrypted(self, kind: str, cpu_ns: int) -> None:
        with self._lock:
            self._decrypted[kind] += 1
            self._crypto_cpu_ns[RECV] += cpu_ns

    def count_rejected(self, kind: str, reason: str) -> None:
        with self._lock:
            self._rejected.setdefault(kind, Counter())[reason] += 1

    def count_decode_error(self, kind: str) -> None:
        with self._lock:
            self._decode_errors[kind] += 1

    def count_decoded(self, kind: str, frames: int) -> None:
        with self._lock:
            self._decoded[kind] += frames

    def count_keyframe_request(self, kind: str) -> None:
        with self._lock:
            self._keyframe_requests[kind] += 1

    def count_forced_keyframe(self, kind: str) -> None:
        with self._lock:
            self._forced_keyframes[kind] += 1

    # --- reads --------------------------------------------------------------------------

    def sent(self, kind: str) -> int:
        """Frames protected and handed to the packetizer."""
        with self._lock:
            return self._sent[kind]

    def decrypted(self, kind: str) -> int:
        """Frames that passed ``unprotect`` and went on to the decoder."""
        with self._lock:
            return self._decrypted[kind]

    def rejected(self, kind: str, reason: str | None = None) -> int:
        """Received frames refused (by ``reason``, or all reasons)."""
        with self._lock:
            counts = self._rejected.get(kind, Counter())
            return counts[reason] if reason is not None else sum(counts.values())

    def protect_failed(self, kind: str, reason: str | None = None) -> int:
        """Frames the sender dropped because they could not be protected."""
        with self._lock:
            counts = self._protect_failed.get(kind, Counter())
            return counts[reason] if reason is not None else sum(counts.values())

    def decode_errors(self, kind: str) -> int:
        with self._lock:
            return self._decode_errors[kind]

    def keyframe_requests(self, kind: str) -> int:
        with self._lock:
            return self._keyframe_requests[kind]

    def crypto_cpu_ms(self) -> float:
        """Thread CPU time spent inside ``protect`` + ``unprotect``, in milliseconds."""
        with self._lock:
            return (self._crypto_cpu_ns[SEND] + self._crypto_cpu_ns[RECV]) / 1e6

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot: ``{kind: {sent, received, decrypted, rejected: {...}}}``."""
        guard = self.video_guard()
        with self._lock:
            out: dict[str, Any] = {}
            for kind in KINDS:
                out[kind] = {
                    "sent": self._sent[kind],
                    "sent_bytes": self._sent_bytes[kind],
                    "protect_failed": dict(sorted(self._protect_failed[kind].items())),
                    "received": self._received[kind],
                    "decrypted": self._decrypted[kind],
                    "rejected": dict(sorted(self._rejected[kind].items())),
                    "rejected_total": sum(self._rejected[kind].values()),
                    "decode_errors": self._decode_errors[kind],
                    "decoded": self._decoded[kind],
                    "keyframe_requests": self._keyframe_requests[kind],
                    "forced_keyframes": self._forced_keyframes[kind],
                }
            out["video"]["guard"] = guard
            out["crypto_cpu_ms"] = {
                SEND: round(self._crypto_cpu_ns[SEND] / 1e6, 3),
                RECV: round(self._crypto_cpu_ns[RECV] / 1e6, 3),
            }
            return out


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation; ``None`` when empty."""
    data = sorted(values)
    if not data:
        return None
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    low = math.floor(pos)
    high = math.ceil(pos)
    return float(data[low] + (data[high] - data[low]) * (pos - low))


class LatencyRecorder:
    """Keeps the most recent ``capacity`` latency samples (ms) and their percentiles."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._samples: list[float] = []
        self.count = 0

    def add(self, value_ms: float) -> None:
        self.count += 1
        self._samples.append(value_ms)
        if len(self._samples) > self._capacity:
            del self._samples[: len(self._samples) - self._capacity]

    @property
    def samples(self) -> list[float]:
        return list(self._samples)

    def p(self, q: float) -> float | None:
        return percentile(self._samples, q)

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 2)

        return {
            "count": self.count,
            "p50_ms": r(self.p(50)),
            "p95_ms": r(self.p(95)),
            "max_ms": r(max(self._samples)) if self._samples else None,
        }


class RtcStatsSampler:
    """Reads ``pc.getStats()`` and turns it into rates between successive samples.

    What aiortc reports reliably: bytes/packets sent per sender (``outbound-rtp``), and the
    receiver's own RTP statistics (``inbound-rtp``: packets received/lost, interarrival jitter).
    The far end's view (``remote-inbound-rtp``: loss, jitter, round-trip time) arrives with RTCP
    receiver reports about once a second. Video ``packetsReceived`` counts retransmissions too,
    so the loss figure that matters is the far end's ``packetsLost``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: tuple[float, dict[str, int]] | None = None

    async def sample(self, pc: RTCPeerConnection) -> dict[str, Any]:
        report = await pc.getStats()
        return self.digest(report.values(), self._clock())

    def digest(self, stats: Iterable[Any], now: float) -> dict[str, Any]:
        """Pure part of :meth:`sample`: ``stats`` are aiortc stats objects, ``now`` seconds."""
        out: dict[str, Any] = {k: {} for k in KINDS}
        totals: dict[str, int] = {}
        for s in stats:
            kind = getattr(s, "kind", None)
            if kind not in KINDS:
                continue
            entry = out[kind]
            if s.type == "outbound-rtp":
                entry["packets_sent"] = entry.get("packets_sent", 0) + s.packetsSent
                entry["bytes_sent"] = entry.get("bytes_sent", 0) + s.bytesSent
                totals[f"{kind}.tx"] = totals.get(f"{kind}.tx", 0) + s.bytesSent
            elif s.type == "inbound-rtp":
                entry["packets_received"] = entry.get("packets_received", 0) + s.packetsReceived
                entry["packets_lost"] = entry.get("packets_lost", 0) + s.packetsLost
                entry["jitter_ms"] = round(s.jitter * 1000 / RTP_CLOCK_RATE[kind], 2)
            elif s.type == "remote-inbound-rtp":
                entry["remote_packets_lost"] = s.packetsLost
                entry["remote_fraction_lost"] = round(s.fractionLost / 256, 4)
                entry["remote_jitter_ms"] = round(s.jitter * 1000 / RTP_CLOCK_RATE[kind], 2)
                if s.roundTripTime is not None:
                    entry["rtt_ms"] = round(s.roundTripTime * 1000, 2)
        if self._last is not None:
            then, before = self._last
            dt = now - then
            if dt > 0:
                for kind in KINDS:
                    key = f"{kind}.tx"
                    if key in totals:
                        delta = totals[key] - before.get(key, 0)
                        out[kind]["bitrate_kbps"] = round(delta * 8 / dt / 1000, 1)
        self._last = (now, totals)
        return out


class SupportsToDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class CallMediaStats:
    """Everything measured about one call's media, per remote peer, for ``--json``.

    A mesh call has one peer connection per remote terminal and one :class:`MediaCryptoStats`
    for the whole call. Register each peer with :meth:`add_peer`; :meth:`snapshot` samples
    every peer connection's RTP statistics and the sinks.
    """

    def __init__(self, crypto: MediaCryptoStats) -> None:
        self.crypto = crypto
        self._peers: dict[str, tuple[RTCPeerConnection, RtcStatsSampler]] = {}
        self._sinks: dict[str, dict[str, SupportsToDict]] = {}

    def add_peer(
        self,
        peer: str,
        pc: RTCPeerConnection,
        video_sink: SupportsToDict | None = None,
        audio_sink: SupportsToDict | None = None,
    ) -> None:
        self._peers[peer] = (pc, RtcStatsSampler())
        sinks = {}
        if video_sink is not None:
            sinks["video"] = video_sink
        if audio_sink is not None:
            sinks["audio"] = audio_sink
        self._sinks[peer] = sinks

    def peer_connection(self, peer: str) -> RTCPeerConnection | None:
        """The connection whose statistics are shown for ``peer`` (the active one)."""
        entry = self._peers.get(peer)
        return entry[0] if entry is not None else None

    def remove_peer(self, peer: str) -> None:
        self._peers.pop(peer, None)
        self._sinks.pop(peer, None)

    async def snapshot(self) -> dict[str, Any]:
        """Sample every peer. Peers may be removed (hang-up) while this awaits their
        ``getStats()``: it walks a copy, and leaves out a peer gone in the meantime."""
        from hotline.media import aiortc_patch  # noqa: PLC0415 (it imports this module)

        peers: dict[str, Any] = {}
        for peer, (pc, sampler) in list(self._peers.items()):
            rtp = await sampler.sample(pc)
            if self._peers.get(peer, (None,))[0] is not pc:
                continue  # removed (or replaced) while it was sampled
            entry: dict[str, Any] = {"rtp": rtp}
            entry["path"] = aiortc_patch.selected_path(pc)  # relayed or direct, once known
            audio = aiortc_patch.audio_receivers(pc)
            if audio:  # Hotline's audio receive path: jitter buffer, FEC, concealment
                entry["audio_playout"] = audio[-1].stats()
            for kind, sink in self._sinks.get(peer, {}).items():
                entry[f"{kind}_sink"] = sink.to_dict()
            peers[peer] = entry
        return {"frames": self.crypto.to_dict(), "peers": peers}
