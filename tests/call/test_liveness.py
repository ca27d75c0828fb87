"""Transport liveness decisions (pure): lost, retried, recovered, promoted, dropped."""

from __future__ import annotations

from hotline.call.liveness import Action, LinkView, LivenessSettings, PeerLiveness

S = LivenessSettings(media_timeout=2.0, connect_timeout=10.0, attempt_timeout=3.0, peer_timeout=60)


def actions(decisions: list) -> list[Action]:
    return [d.action for d in decisions]


def test_media_flowing_is_quiet_and_a_stall_is_lost_then_retried_then_recovered() -> None:
    live = PeerLiveness(offerer=True, settings=S)
    link = LinkView(created=0.0, state="connected", media_total=0)
    for t in range(1, 11):  # frames every second
        link = LinkView(0.0, "connected", t * 50)
        assert live.observe(float(t), link, None, keys_ready=True) == []
    # the link goes quiet at t=10: lost at t=12 (media timeout), an attempt at once
    assert live.observe(11.0, link, None, keys_ready=True) == []
    out = live.observe(12.0, link, None, keys_ready=True)
    assert actions(out) == [Action.LOST, Action.ATTEMPT]
    assert out[0].reason == "no media for 2 s"
    live.attempted(12.0)
    pending = LinkView(12.0, "connecting", 0)
    assert live.observe(13.0, link, pending, keys_ready=True) == []
    # the replacement has not connected in 3 s: another attempt
    assert actions(live.observe(15.0, link, pending, keys_ready=True)) == [Action.ATTEMPT]
    pending = LinkView(15.0, "connecting", 0)
    # the old link carries media again: recovered, the replacement is cancelled
    link = LinkView(0.0, "connected", 600)
    out = live.observe(16.0, link, pending, keys_ready=True)
    assert actions(out) == [Action.RECOVERED, Action.CANCEL]
    assert out[0].outage == 4.0
    assert live.outages == 1 and live.lost_since is None


def test_a_closed_transport_is_replaced_and_the_replacement_promoted() -> None:
    live = PeerLiveness(offerer=True, settings=S)
    assert live.observe(1.0, LinkView(0.0, "connected", 10), None, keys_ready=True) == []
    out = live.observe(1.5, LinkView(0.0, "closed", 10), None, keys_ready=True)
    assert actions(out) == [Action.LOST, Action.ATTEMPT]
    assert out[0].reason == "transport closed"
    out = live.observe(
        2.0, LinkView(0.0, "closed", 10), LinkView(1.5, "connected", 0), keys_ready=True
    )
    assert actions(out) == [Action.PROMOTE, Action.RECOVERED]
    # the promoted link is now the active one, judged by its own media
    assert live.observe(2.5, LinkView(1.5, "connected", 5), None, keys_ready=True) == []
    assert live.observe(3.0, LinkView(1.5, "connected", 9), None, keys_ready=True) == []


def test_the_answerer_never_attempts_and_a_long_outage_drops_the_peer() -> None:
    live = PeerLiveness(offerer=False, settings=S)
    live.observe(1.0, LinkView(0.0, "connected", 10), None, keys_ready=True)
    out = live.observe(4.0, LinkView(0.0, "connected", 10), None, keys_ready=True)
    assert actions(out) == [Action.LOST]
    assert live.observe(30.0, LinkView(0.0, "closed", 10), None, keys_ready=True) == []
    out = live.observe(64.0, None, None, keys_ready=True)
    assert actions(out) == [Action.DROP]
    assert "unreachable for 60 s" in out[0].reason
    assert live.observe(65.0, None, None, keys_ready=True) == []  # once


def test_a_new_link_is_given_time_to_connect_and_keys_to_agree() -> None:
    live = PeerLiveness(offerer=True, settings=S)
    link = LinkView(0.0, "connecting", 0)
    assert live.observe(5.0, link, None, keys_ready=False) == []
    assert live.observe(20.0, link, None, keys_ready=False) == []  # no keys: no media yet
    assert actions(live.observe(21.0, link, None, keys_ready=True)) == [
        Action.LOST,
        Action.ATTEMPT,
    ]


def test_a_failed_replacement_is_retried_at_once() -> None:
    live = PeerLiveness(offerer=True, settings=S)
    live.observe(1.0, LinkView(0.0, "connected", 10), None, keys_ready=True)
    live.observe(2.0, LinkView(0.0, "failed", 10), None, keys_ready=True)
    live.attempted(2.0)
    out = live.observe(
        2.5, LinkView(0.0, "failed", 10), LinkView(2.0, "failed", 0), keys_ready=True
    )
    assert actions(out) == [Action.ATTEMPT]


def test_an_answerer_whose_offer_never_came_is_lost_then_dropped() -> None:
    """Keys agreed, no transport ever (an exchange dropping the offer): not secured
    silently: lost after the connect timeout, recovered if a transport then carries media,
    dropped after the peer timeout otherwise."""
    live = PeerLiveness(offerer=False, settings=S)
    assert live.observe(0.0, None, None, keys_ready=False) == []
    assert live.observe(30.0, None, None, keys_ready=False) == []  # no keys: nothing to carry
    assert live.observe(31.0, None, None, keys_ready=True) == []
    assert live.observe(40.9, None, None, keys_ready=True) == []
    out = live.observe(41.0, None, None, keys_ready=True)
    assert actions(out) == [Action.LOST]  # the answerer shows it; it never attempts
    assert out[0].reason == "no transport 10 s after the keys"
    flowing = live.observe(45.0, LinkView(44.0, "connected", 5), None, keys_ready=True)
    assert actions(flowing) == [Action.RECOVERED] and flowing[0].outage == 4.0

    never = PeerLiveness(offerer=False, settings=S)
    never.observe(0.0, None, None, keys_ready=True)
    assert actions(never.observe(10.0, None, None, keys_ready=True)) == [Action.LOST]
    assert actions(never.observe(70.0, None, None, keys_ready=True)) == [Action.DROP]


def test_an_offer_that_comes_in_time_is_never_lost() -> None:
    live = PeerLiveness(offerer=False, settings=S)
    assert live.observe(0.0, None, None, keys_ready=True) == []
    assert live.observe(3.0, LinkView(3.0, "connecting", 0), None, keys_ready=True) == []
    assert live.observe(4.0, LinkView(3.0, "connected", 7), None, keys_ready=True) == []
    # a transport that closes later is the ordinary outage, not "never linked"
    assert live.observe(8.0, None, None, keys_ready=True) == []
