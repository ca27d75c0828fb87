"""The browser engine's key sink hands a send key to one page only: a page that takes over
mid-call (a reload, a second page) would start its frame counter at 0 again and reuse
AES-GCM nonces under that key. Receive keys are given to it again (receiving is safe)."""

from __future__ import annotations

from typing import Any

from hotline.e2ee.sframe import DEFAULT_SUITE, MAX_EPOCH
from hotline.ui.browser_engine import (
    MAX_HELD_HASHES,
    SEND_KEY_WITHHELD,
    BrowserEngine,
    BrowserHub,
    BrowserKeySink,
)

KEY = bytes(range(16))


class RecordingHub(BrowserHub):
    """The hub as the sink sees it, with the page's channel replaced by a list."""

    def __init__(self) -> None:
        super().__init__()
        self.page_open = True
        self.sent: list[dict[str, Any]] = []

    @property
    def connected(self) -> bool:
        return self.page_open

    def post(self, message: dict[str, Any]) -> None:
        if self.page_open:
            self.sent.append(message)

    def take(self) -> list[tuple[str, Any]]:
        out = [(m["op"], m.get("epoch")) for m in self.sent]
        self.sent = []
        return out


def keyed_sink() -> tuple[RecordingHub, BrowserKeySink]:
    hub = RecordingHub()
    sink = BrowserKeySink(hub, "call-1", DEFAULT_SUITE)
    sink.install_receive_keys(1, ["a", "b"], {"a": KEY, "b": KEY})
    sink.activate_send(1, 0, KEY)
    assert hub.take() == [("install", 1), ("send", 1)]
    return hub, sink


def test_a_page_that_takes_over_gets_receive_keys_but_never_the_old_send_key() -> None:
    hub, sink = keyed_sink()
    hub.page_open = False  # the page reloads
    hub.page_open = True
    sink.replay()
    sent = hub.sent
    assert [(m["op"], m.get("epoch")) for m in sent] == [("install", 1), ("pause", None)]
    assert sent[-1]["reason"] == SEND_KEY_WITHHELD
    assert not any("key" in m for m in sent)  # no send key in any message
    assert sink.new_epoch_wanted and sink.withheld == 1
    assert sink.send_epoch == 0 and sink.send_suite is None  # status: not sending
    hub.take()
    sink.replay()  # a third page: still nothing to send with
    assert hub.take() == [("install", 1)]
    assert sink.withheld == 1
    # the new epoch: a fresh key, counters from 0 are safe under it
    sink.new_epoch_wanted = False
    sink.install_receive_keys(2, ["a", "b"], {"a": KEY, "b": KEY})
    sink.activate_send(2, 0, KEY)
    assert hub.take() == [("install", 2), ("send", 2)]
    assert sink.send_epoch == 2 and not sink.new_epoch_wanted
    sink.replay()  # and that key too goes to one page only
    assert hub.take() == [("install", 1), ("install", 2), ("pause", None)]
    assert sink.new_epoch_wanted and sink.withheld == 2


def test_a_send_key_no_page_received_goes_to_the_first_page() -> None:
    hub = RecordingHub()
    hub.page_open = False  # no page while the epoch activates
    sink = BrowserKeySink(hub, "call-1", DEFAULT_SUITE)
    sink.install_receive_keys(1, ["a", "b"], {"a": KEY, "b": KEY})
    sink.activate_send(1, 1, KEY)
    assert hub.take() == []
    hub.page_open = True
    sink.replay()
    assert hub.take() == [("install", 1), ("send", 1)]
    assert not sink.new_epoch_wanted and sink.send_epoch == 1
    sink.replay()  # the page that got it reloads: now it is withheld
    assert hub.take() == [("install", 1), ("pause", None)]
    assert sink.new_epoch_wanted


def test_nothing_to_withhold_without_a_send_key() -> None:
    hub, sink = keyed_sink()
    sink.pause_sending("b left")
    hub.take()
    sink.replay()
    assert hub.take() == [("install", 1)]
    assert not sink.new_epoch_wanted and sink.withheld == 0
    sink.erase_epochs_through(MAX_EPOCH)
    hub.take()
    sink.replay()
    assert hub.take() == [] and not sink.new_epoch_wanted


async def test_page_hash_reports_dropped_when_untaken_are_counted_as_lost() -> None:
    """A page's hash reports wait for the call's tick; past MAX_HELD_HASHES hashes
    untaken, further reports are dropped, and every hash in them counts as overflow (never
    silently lost). Many small reports (one per frame sent) fit as well as a few large."""
    engine = BrowserEngine(BrowserHub(), "call-1", DEFAULT_SUITE.name, lambda event: None)
    report = {
        "sent": [["513", str(i), "ab" * 16] for i in range(3)],
        "received": [["770", "7", "cd" * 16, "bravo"]],
        "overflow": 2,
    }
    fit = MAX_HELD_HASHES // 4  # 4 hashes a report
    for _ in range(fit + 5):
        engine.on_stats({"hashes": report})
    taken = engine.take_frame_hashes()
    assert len(taken.sent) == fit * 3 and len(taken.received) == fit
    assert taken.overflow == fit * 2 + 5 * (3 + 1 + 2)
    assert engine.take_frame_hashes().overflow == 0  # counted once
    for _ in range(300):  # a second of one-frame reports from a busy page: none dropped
        engine.on_stats({"hashes": {"sent": [["513", "1", "ab" * 16]], "received": []}})
    taken = engine.take_frame_hashes()
    assert len(taken.sent) == 300 and taken.overflow == 0
