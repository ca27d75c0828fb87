"""Nothing an SFU does is trusted: one test per attack, through an in-memory SFU double.

Members' real frame crypto and real signed frame digests (``tests/e2ee/sfu.py``); the SFU
double forwards frames between them and attacks them. Every run is seeded: the seed is
printed, and ``HOTLINE_SFU_SEED=<seed> pytest tests/e2ee/test_hostile_sfu.py`` replays it.
"""

from __future__ import annotations

import pytest

from hotline.call.liveness import Action, LivenessSettings
from hotline.e2ee import messages as msgs
from hotline.e2ee.frame_digest import COVER_DEADLINE_S, FORGED, UNSIGNED
from hotline.errors import SenderMismatch
from tests.e2ee.sfu import Conference, HostileSfu, Sfu, seed_from_env

FIVE = ("berlin", "london", "paris", "rome", "washington")


@pytest.fixture
def seed() -> int:
    value = seed_from_env()
    print(f"SFU double seed {value} (rerun: HOTLINE_SFU_SEED={value})")
    return value


def assert_no_alarm(conf: Conference) -> None:
    for m in conf.members.values():
        assert m.alarms == [], (conf.seed, m.id, m.alarms)
        stats = m.auth.stats()
        assert stats["unauthenticated_frame"] == {}, (conf.seed, m.id, stats)


def test_honest_sfu_every_frame_verified_no_alarm(seed: int) -> None:
    conf = Conference(FIVE, Sfu(), seed=seed)
    conf.run(4.0)
    assert_no_alarm(conf)
    for m in conf.members.values():
        assert conf.shown_only_what_was_sent(m.id)
        stats = m.auth.stats()
        # 4 other members x (50 audio + 25 video frames/s); the last second is still pending
        assert stats["verified"] > 4 * 75 * 2.5, (seed, stats)
        assert stats["digests_rejected"] == {}, (seed, stats)
        assert m.refused == {}, (seed, m.refused)
        assert conf.lost(m.id) == {}
        assert m.crypto.stats().rejected == {}


@pytest.mark.parametrize("attack", ["inject", "blank"])
def test_injected_frames_are_refused_and_counted(seed: int, attack: str) -> None:
    """Random bytes, or silence / a blank frame, under a valid-looking header (a real KID,
    a counter near the real one): refused before anything is shown, counted as bad_tag."""
    sfu = HostileSfu(attack, seed)
    conf = Conference(FIVE, sfu, seed=seed)
    conf.run(3.0)
    injected = sfu.done[attack]
    assert injected > 20, (seed, sfu.done)
    for m in conf.members.values():
        assert conf.shown_only_what_was_sent(m.id), seed
        # each made-up frame reaches the 4 members other than its "publisher"
        assert m.crypto.stats().rejected.get("bad_tag", 0) > 0, seed
    total = sum(m.crypto.stats().rejected.get("bad_tag", 0) for m in conf.members.values())
    assert total == 4 * injected, (seed, total, injected)
    assert_no_alarm(conf)  # nothing made up was ever accepted, so nothing to alarm about


def test_altered_frames_are_refused_and_counted(seed: int) -> None:
    sfu = HostileSfu("alter", seed)
    conf = Conference(FIVE, sfu, seed=seed)
    conf.run(3.0)
    altered = sfu.done["alter"]
    assert altered > 20, (seed, sfu.done)
    total = 0
    for m in conf.members.values():
        assert conf.shown_only_what_was_sent(m.id), seed
        reasons = m.crypto.stats().rejected
        # a flipped bit in the header names another KID or counter; elsewhere, the tag fails
        assert set(reasons) <= {"bad_tag", "unknown_kid", "malformed_frame", "replay"}, reasons
        total += sum(reasons.values())
    assert total == 4 * altered, (seed, total, altered)
    for m in conf.members.values():
        shown = {plain for _, _, plain in m.shown}
        assert not any(b in shown for b in sfu.bogus)
    assert_no_alarm(conf)


def test_replayed_frames_are_refused_and_counted(seed: int) -> None:
    sfu = HostileSfu("replay", seed)
    conf = Conference(FIVE, sfu, seed=seed)
    conf.run(3.0)
    replayed = sfu.done["replay"]
    assert replayed > 20, (seed, sfu.done)
    total = 0
    for m in conf.members.values():
        assert conf.shown_only_what_was_sent(m.id), seed
        assert set(m.crypto.stats().rejected) == {"replay"}, seed
        total += m.crypto.stats().rejected["replay"]
        # every frame was shown once: no frame twice
        assert len(m.shown) == len(set(m.shown)), seed
    # a replayed frame goes again to the 4 members that had the original: all 4 refuse it
    assert total == 4 * replayed, (seed, total, replayed)
    assert_no_alarm(conf)


def test_reordered_within_the_window_accepted(seed: int) -> None:
    """Frames held back a few frames (well inside the replay window) are accepted late,
    and their senders' digests still cover them."""
    sfu = HostileSfu("reorder", seed, hold=6)
    conf = Conference(FIVE, sfu, seed=seed, replay_window=64)
    conf.run(3.0)
    assert sfu.done["reorder"] > 20, (seed, sfu.done)
    for m in conf.members.values():
        assert m.crypto.stats().rejected == {}, (seed, m.crypto.stats().rejected)
        assert conf.shown_only_what_was_sent(m.id)
    assert_no_alarm(conf)


def test_reordered_outside_the_window_refused(seed: int) -> None:
    """Held back longer than the replay window (8 counters here, 1024 in a call): refused
    as replays and counted, never shown late."""
    sfu = HostileSfu("reorder", seed, hold=150)
    conf = Conference(FIVE, sfu, seed=seed, replay_window=8)
    conf.run(3.0)
    late = sum(m.crypto.stats().rejected.get("replay", 0) for m in conf.members.values())
    assert late > 0, (seed, sfu.done)
    for m in conf.members.values():
        assert set(m.crypto.stats().rejected) <= {"replay"}
        assert conf.shown_only_what_was_sent(m.id)
    assert_no_alarm(conf)


def test_member_forging_another_members_frames_raises_an_alarm_naming_it(seed: int) -> None:
    """rome holds paris's key (every member does) and publishes frames under paris's KID
    through the SFU, at the counters paris is about to use: the frames decrypt and are
    shown (SFrame cannot tell), but paris's signed digest has other hashes for those
    counters, and every other member raises an alarm naming paris within 2 s."""
    conf = Conference(FIVE, Sfu(), seed=seed)
    conf.run(1.5)
    forged_at = conf.now
    conf.forge("rome", "paris", 5, ahead=1)
    conf.run(2.5)
    for m in conf.members.values():
        if m.id in ("rome", "paris"):
            continue
        alarms = [(at, a) for at, a in m.alarms if a.member == "paris"]
        assert alarms, (seed, m.id, m.alarms)
        at, alarm = alarms[0]
        assert alarm.reason == FORGED and alarm.kid == conf.kid_of("paris")
        assert at - forged_at <= COVER_DEADLINE_S, (seed, at, forged_at)
        assert m.auth.stats()["unauthenticated_frame"] == {"paris": 5}, seed
        assert all(a.member == "paris" for _, a in m.alarms)
        # paris's own frames at those counters came later: refused as replays
        assert m.crypto.stats().rejected == {"replay": 5}, seed


def test_member_forging_ahead_of_the_victim_raises_an_unsigned_alarm(seed: int) -> None:
    """Forged at counters far ahead of the victim's: no digest of the victim ever covers
    them, so each is an alarm naming the victim 2 s after it was shown."""
    conf = Conference(FIVE, Sfu(), seed=seed)
    conf.run(1.0)
    forged_at = conf.now
    conf.forge("berlin", "london", 3, ahead=100_000)
    conf.run(3.0)
    for m in conf.members.values():
        if m.id in ("berlin", "london"):
            continue
        alarms = [(at, a) for at, a in m.alarms if a.member == "london"]
        assert alarms and alarms[0][1].reason == UNSIGNED, (seed, m.id, m.alarms)
        assert alarms[0][0] - forged_at <= COVER_DEADLINE_S + 0.11, (seed, alarms[0][0])
        assert m.auth.stats()["unauthenticated_frame"].get("london") == 3


def test_forged_digest_for_another_members_kid_is_refused(seed: int) -> None:
    """A member cannot sign for another member's KID to cover its forgeries."""
    conf = Conference(FIVE, Sfu(), seed=seed)
    conf.run(1.0)
    rome = conf.members["rome"]
    body = msgs.build_frame_digest(
        rome.key,
        msgs.Context("line-five-capitals", "call-2021-12-06", 1),
        epoch=1,
        signer="rome",
        kid=conf.kid_of("paris"),
        first_ctr=10_000,
        hashes=[bytes(16)],
    )
    with pytest.raises(SenderMismatch) as info:
        conf.members["london"].auth.receive("rome", body, conf.now)
    assert info.value.reason == "wrong_digest_signer"
    assert conf.members["london"].auth.stats()["digests_rejected"] == {"wrong_digest_signer": 1}


def test_dropped_streams_show_that_member_unreachable(seed: int) -> None:
    """The SFU stops forwarding washington's frames: every other member's liveness for
    washington (fed by the frames of its KIDs that arrive) says lost after the media
    timeout, and drops it after the peer timeout; nobody else is affected. No alarm: a
    dropped frame was never shown."""
    sfu = HostileSfu("drop", seed, target="washington")
    settings = LivenessSettings(media_timeout=2.0, peer_timeout=6.0)
    conf = Conference(FIVE, Sfu(), seed=seed, liveness=settings)
    conf.run(2.0)  # everyone flows first
    conf.sfu = sfu
    cut_at = conf.now
    conf.run(9.0)
    for m in conf.members.values():
        if m.id == "washington":
            continue
        lost = conf.lost(m.id)
        assert set(lost) == {"washington"}, (seed, m.id, lost)
        assert cut_at + settings.media_timeout <= lost["washington"] <= cut_at + 2.6
        drops = [p for _, p, d in m.decisions if d.action is Action.DROP]
        assert drops == ["washington"], (seed, drops)
    assert sfu.done["drop"] > 0
    assert_no_alarm(conf)
