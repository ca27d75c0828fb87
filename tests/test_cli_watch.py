"""`hotline call watch`: one readable console line per terminal event."""

from __future__ import annotations

from hotline.cli.call import describe_event


def test_events_read_as_sentences() -> None:
    ring = describe_event({"kind": "ring", "from": "bravo", "time": 0, "seq": 4, "call": "c"})
    assert "ring" in ring and "incoming call from bravo" in ring
    epoch = describe_event(
        {"kind": "epoch", "epoch": 3, "roster": ["alpha", "bravo"], "security_code": "1 2 3"}
    )
    assert "epoch 3 (alpha, bravo)" in epoch and "security code 1 2 3" in epoch
    lost = describe_event({"kind": "transport_lost", "peer": "bravo", "reason": "no media"})
    assert "bravo: no media (reconnecting)" in lost
    other = describe_event({"kind": "rejected", "reason": "bad_tag", "detail": "x", "seq": 1})
    assert "detail=x reason=bad_tag" in other and "seq" not in other


def test_a_frame_alarm_reads_as_an_alarm_naming_the_member() -> None:
    alarm = describe_event(
        {
            "kind": "unauthenticated_frame",
            "member": "paris",
            "reason": "forged",
            "message": "5 frame(s) under the key of paris differ from what it signed",
        }
    )
    assert "ALARM: 5 frame(s) under the key of paris" in alarm and "(forged)" in alarm
