"""The audio jitter buffer under loss, reordering, bursts and outages (seeded schedules)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from hotline.media.audio_jitter import (
    FRAME_SAMPLES,
    MAX_DELAY_S,
    Action,
    AudioJitterBuffer,
    AudioPacket,
    Playout,
    opus_samples,
)

FRAME_S = FRAME_SAMPLES / 48000
TS0 = 0xFFFFFFFF - 960 * 50  # wraps after 50 frames


def _packet(i: int) -> AudioPacket:
    """Frame ``i``: speech (a large VBR packet), with a 200 ms pause every 2 s (small ones)."""
    size = 40 if i % 100 >= 90 else 150
    return AudioPacket(
        seq=(1000 + i) & 0xFFFF,
        timestamp=(TS0 + i * FRAME_SAMPLES) & 0xFFFFFFFF,
        data=bytes([0xF8]) + i.to_bytes(4, "big") + bytes(size),  # TOC: CELT 20 ms
    )


def _index(data: bytes | None) -> int:
    assert data is not None
    return int.from_bytes(data[1:5], "big")


def simulate(
    arrivals: dict[int, float], frames: int, tick: float = 0.005
) -> tuple[AudioJitterBuffer, list[tuple[float, Playout]]]:
    """Push packet ``i`` at ``arrivals[i]`` and pull every ``tick`` seconds until the last
    packet has been played (the buffer is left as it was then: its counters, its delay)."""
    jb = AudioJitterBuffer()
    events = sorted((t, i) for i, t in arrivals.items())
    out: list[tuple[float, Playout]] = []
    now = 0.0
    k = 0
    while k < len(events) or jb.buffered():
        while k < len(events) and events[k][0] <= now:
            jb.push(_packet(events[k][1]), events[k][0])
            k += 1
        out += [(now, p) for p in jb.pull(now)]
        now += tick
    return jb, out


def fifo(arrivals: dict[int, float]) -> None:
    """Make a link FIFO again after delaying some packets (a queue delays all behind)."""
    last = 0.0
    for i in sorted(arrivals):
        arrivals[i] = last = max(arrivals[i], last + 1e-6)


def frames_out(out: list[tuple[float, Playout]]) -> list[int]:
    """The real frames played (both halves of a MERGE), in output order."""
    got: list[int] = []
    for _, p in out:
        if p.action is Action.PLAY:
            got.append(_index(p.data))
        elif p.action is Action.MERGE:
            got += [_index(p.data), _index(p.next_data)]
    return got


def link(
    frames: int, *, seed: int, delay: float = 0.06, jitter: float = 0.01, loss: float = 0.0
) -> dict[int, float]:
    """FIFO link: packet i sent at i*20 ms, delayed delay±jitter, lost with ``loss``."""
    rng = random.Random(seed)
    arrivals: dict[int, float] = {}
    last = 0.0
    for i in range(frames):
        d = delay + (2 * rng.random() - 1) * jitter
        at = max(i * FRAME_S + d, last + 1e-6)
        if rng.random() >= loss:
            arrivals[i] = at
            last = at
    return arrivals


def test_opus_samples_from_toc() -> None:
    assert opus_samples(bytes([0xF8])) == 960  # CELT FB 20 ms, code 0
    assert opus_samples(bytes([0x58])) == 2880  # SILK WB 60 ms
    assert opus_samples(bytes([0x59])) == 5760  # two 60 ms frames
    assert opus_samples(bytes([0xFB, 0x03])) == 2880  # code 3, three 20 ms frames
    for bad in (b"", bytes([0xFB]), bytes([0xFB, 0x00]), bytes([0x5B, 0x03])):
        with pytest.raises(ValueError):
            opus_samples(bad)


def test_clean_link_plays_everything_in_order_with_a_small_delay() -> None:
    arrivals = link(500, seed=1, delay=0.01, jitter=0.002)
    jb, out = simulate(arrivals, 500)
    assert frames_out(out) == list(range(500))  # across the RTP timestamp wrap
    assert jb.counters["plc"] == jb.counters["fec"] == jb.counters["late"] == 0
    assert jb.target_delay() <= 0.025  # a few tens of ms at most on a clean link
    # once settled, one frame every 20 ms: playout time of frame i minus its send time
    lags = [t - _index(p.data) * FRAME_S for t, p in out if p.action is Action.PLAY]
    # (the start-up delay is shed in the first pause, frames 90-99)
    assert max(lags[100:]) - min(lags[100:]) < 0.012
    assert max(lags[100:]) < 0.01 + 0.045


def test_random_loss_never_costs_a_good_frame_and_uses_fec() -> None:
    frames = 1500
    arrivals = link(frames, seed=7, loss=0.05)
    jb, out = simulate(arrivals, frames)
    # every packet that arrived was played, in order; nothing late or flushed
    assert frames_out(out) == sorted(arrivals)
    assert jb.counters["late"] == jb.counters["flushed"] == 0
    lost = frames - len(arrivals)
    # isolated losses are rebuilt from the next packet's FEC, not PLC
    assert jb.counters["fec"] >= 0.7 * lost
    assert jb.counters["fec"] + jb.counters["plc"] + jb.counters["skipped"] >= lost
    assert jb.counters["silence"] == 0
    assert jb.counters["stretched"] <= 3  # the lookahead for FEC is in the target
    d = jb.delay()
    assert d is not None and d <= 0.02 + 0.005 + 2 * FRAME_S + 0.02


def test_fec_step_carries_the_next_packet() -> None:
    arrivals = link(200, seed=3, delay=0.02, jitter=0.0)
    del arrivals[100]
    _, out = simulate(arrivals, 200)
    steps = [p for _, p in out]
    fec = [p for p in steps if p.action is Action.FEC]
    assert len(fec) == 1
    assert _index(fec[0].next_data) == 101
    i = steps.index(fec[0])
    before = [p for p in steps[:i] if p.data is not None][-1]
    assert _index(before.next_data if before.action is Action.MERGE else before.data) == 99
    assert _index(steps[i + 1].data) == 101
    assert frames_out(out) == sorted(arrivals)


def test_reordered_packets_within_the_delay_are_played_in_order() -> None:
    rng = random.Random(5)
    arrivals = {i: i * FRAME_S + 0.03 for i in range(600)}
    for i in range(20, 580, 25):  # swap neighbours: packet i arrives 15 ms after i+1
        arrivals[i] = arrivals[i + 1] + 0.015 + rng.random() * 0.002
    jb, out = simulate(arrivals, 600)
    played = frames_out(out)
    assert jb.counters["late"] <= 2  # the first swaps teach the buffer the jitter
    assert len(played) >= 600 - 2
    assert played == sorted(played)
    assert jb.target_delay() >= 0.015  # it learnt the reordering as jitter


def test_bursts_are_concealed_and_the_delay_comes_back() -> None:
    arrivals = link(1500, seed=11, delay=0.05, jitter=0.005)
    for start in (300, 700, 1100):
        for i in range(start, start + 6):  # 120 ms bursts
            arrivals.pop(i)
    jb, out = simulate(arrivals, 1500)
    assert frames_out(out) == sorted(arrivals)
    assert jb.counters["late"] == jb.counters["flushed"] == 0
    assert jb.counters["plc"] + jb.counters["fec"] + jb.counters["skipped"] >= 18
    # after the last burst the delay returns near the target
    d = jb.delay()
    assert d is not None and d - jb.target_delay() < FRAME_S + 0.005


def test_outage_conceals_then_silence_then_resyncs_without_backlog() -> None:
    arrivals = link(1000, seed=2, delay=0.03, jitter=0.003)
    for i in range(400, 550):  # 3 s outage
        arrivals.pop(i)
    jb, out = simulate(arrivals, 1000)
    actions = Counter(p.action for _, p in out)
    assert actions[Action.SILENCE] > 100
    assert jb.counters["plc"] >= 10
    # the first frame after the outage plays soon after it arrives, not after a backlog
    first_after = next(t for t, p in out if p.data is not None and _index(p.data) >= 550)
    assert first_after - arrivals[550] < 0.08
    assert frames_out(out) == sorted(arrivals)
    assert jb.counters["late"] == 0


def test_jitter_spike_grows_the_delay_and_it_shrinks_again() -> None:
    arrivals = link(1500, seed=4, delay=0.03, jitter=0.002)
    for i in range(500, 510):  # a 150 ms delay spike (a queue), FIFO
        arrivals[i] = max(arrivals[i], 509 * FRAME_S + 0.18)
    fifo(arrivals)
    jb, out = simulate(arrivals, 1500)
    assert len(frames_out(out)) >= 1500 - 20  # one surprise spike: its head comes late
    assert jb.counters["stretched"] >= 1
    d = jb.delay()
    assert d is not None and d < jb.target_delay() + FRAME_S + 0.005
    assert jb.target_delay() <= MAX_DELAY_S


def test_delay_is_shed_in_pauses_not_in_speech() -> None:
    arrivals = link(1000, seed=6, delay=0.03, jitter=0.002)
    for i in range(300, 306):  # a delay spike: the buffer stretches, then sheds it again
        arrivals[i] = max(arrivals[i], 305 * FRAME_S + 0.09)
    fifo(arrivals)
    jb, out = simulate(arrivals, 1000)
    played = frames_out(out)
    assert played == sorted(played) and len(played) >= 1000 - 6  # the spike's head is late
    merges = [p for _, p in out if p.action is Action.MERGE]
    assert merges
    in_pauses = [p for p in merges if _index(p.data) % 100 >= 90]
    assert len(in_pauses) >= len(merges) - 1, [_index(p.data) for p in merges]
    d = jb.delay()
    assert d is not None and d - jb.target_delay() < FRAME_S + 0.005


def test_repeated_delay_spikes_raise_the_target_to_cover_them() -> None:
    arrivals = link(1500, seed=8, delay=0.03, jitter=0.002)
    spikes = (200, 400, 600, 800, 1000, 1200)
    for start in spikes:  # a ~180 ms stall every 4 s (a busy host): a queue, FIFO
        for i in range(start, start + 5):
            arrivals[i] = max(arrivals[i], (start + 4) * FRAME_S + 0.03 + 0.1)
    fifo(arrivals)
    jb, out = simulate(arrivals, 1500)
    played = set(frames_out(out))
    lost_per_spike = [sum(1 for i in range(s, s + 5) if i not in played) for s in spikes]
    assert sum(lost_per_spike[:2]) > 0  # the first ones are a surprise
    assert lost_per_spike[2:] == [0, 0, 0, 0], lost_per_spike  # then they are covered
    assert 0.1 <= jb.target_delay() <= MAX_DELAY_S


def test_an_underrun_waits_a_moment_before_concealing() -> None:
    jb = AudioJitterBuffer()
    now = 0.0
    for i in range(30):
        jb.push(_packet(i), i * FRAME_S + 0.01)
    while jb.buffered():
        jb.pull(now)
        now += 0.001
    due = jb.next_due()
    assert due is not None
    assert jb.pull(due + 0.005) == []  # 30 is due but not here: no concealment yet
    jb.push(_packet(30), due + 0.008)  # it was only behind in the event loop
    steps = jb.pull(due + 0.009)
    assert [s.action for s in steps] == [Action.PLAY] and _index(steps[0].data) == 30
    assert jb.pull(due + FRAME_S + 0.025)[0].action is Action.PLC  # 31 never comes


def test_late_and_duplicate_packets_are_counted_and_ignored() -> None:
    jb = AudioJitterBuffer()
    for i in range(20):
        assert jb.push(_packet(i), i * FRAME_S)
    assert not jb.push(_packet(5), 20 * FRAME_S)  # duplicate
    assert jb.counters["duplicates"] == 1
    jb.pull(1.0)
    assert not jb.push(_packet(3), 1.0)  # long played
    assert jb.counters["late"] == 1


def test_stream_restart_on_timestamp_jump() -> None:
    jb = AudioJitterBuffer()
    jb.push(_packet(0), 0.0)
    jb.pull(0.1)
    far = AudioPacket(seq=5, timestamp=(TS0 + 48000 * 60) & 0xFFFFFFFF, data=b"\xf8x")
    jb.push(far, 0.12)
    assert jb.counters["restarts"] == 1
    steps = jb.pull(0.3)
    assert steps[0].action is Action.PLAY and steps[0].data == b"\xf8x"


def test_stalled_pulls_restart_the_clock() -> None:
    jb = AudioJitterBuffer()
    for i in range(10):
        jb.push(_packet(i), i * FRAME_S)
    assert len(jb.pull(5.0)) == 1
    assert jb.counters["stalls"] == 1


def test_a_delay_left_by_the_start_is_shed_in_a_continuous_signal() -> None:
    """No pause to merge in (every packet the same size, e.g. a tone): a frame too much of
    delay is still shed, once it has lasted MERGE_PERSISTENT_S."""
    from hotline.media.audio_jitter import MERGE_PERSISTENT_S

    jb = AudioJitterBuffer()
    out: list[Playout] = []
    frames = 300
    for i in range(frames):
        # the first packet is 30 ms slower than all that follow: the start-up delay lasts
        t = i * FRAME_S + (0.09 if i == 0 else 0.06)
        jb.push(
            AudioPacket(i, i * FRAME_SAMPLES, bytes([0xF8]) + i.to_bytes(4, "big") + bytes(150)),
            t,
        )
        out += jb.pull(t)
    first_merge = next(k for k, p in enumerate(out) if p.action is Action.MERGE)
    assert first_merge * FRAME_S >= MERGE_PERSISTENT_S  # not before it lasted
    delay, target = jb.delay(), jb.target_delay()
    assert delay is not None and delay - target < FRAME_S
    assert jb.counters["merged"] >= 1
    assert jb.counters["plc"] == jb.counters["skipped"] == jb.counters["late"] == 0
