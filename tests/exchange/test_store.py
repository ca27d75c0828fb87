"""The exchange's SQLite store: batches, coalescing, reload, sweep, event log."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotline.errors import CharterRollback
from hotline.exchange.routing import Limits, Routed, Router
from hotline.exchange.store import Event, ExchangeStore, WriteBatch

from .harness import envelope
from .lines import make_line


def _route(router: Router, line: object, seq: int, recipient: str | None, now: float) -> Routed:
    session = router.sessions("line-1")[0]
    result = router.submit(session, envelope(line, "t0", recipient, seq).to_bytes(), now)  # type: ignore[arg-type]
    assert isinstance(result, Routed)
    return result


def test_batches_reload_and_sweep(tmp_path: Path) -> None:
    line = make_line(tmp_path, 3)
    db = tmp_path / "x.db"
    store = ExchangeStore(db)
    assert store.accept_charter(line.signed).version == 1
    router = Router(Limits())
    router.set_charter(line.charter)
    router.connect(line_id="line-1", terminal_id="t0", source="s", now=0, resume=0)
    batch = WriteBatch()
    r1 = _route(router, line, 1, None, 100.0)  # to t1 and t2
    r2 = _route(router, line, 2, "t1", 100.0)
    batch.add_routed(r1)
    batch.add_routed(r2)
    # r2 acknowledged before the batch is written: never written at all
    batch.add_removed(list(r2.deliveries))
    assert r2.envelope_id not in batch.envelopes
    batch.add_event(Event(1, "admitted", "line-1", "t0", "127.0.0.1"))
    store.write(batch, next_ids=router.next_ids())
    assert store.counts() == {"envelopes": 1, "deliveries": 2, "senders": 1, "events": 1}
    # one of r1's deliveries acknowledged later: its envelope stays for the other
    later = WriteBatch()
    later.add_removed([r1.deliveries[0]])
    store.write(later)
    assert store.counts()["envelopes"] == 1 and store.counts()["deliveries"] == 1
    store_id = store.store_id
    store.close()

    again = ExchangeStore(db)
    assert again.store_id == store_id
    assert [c.line_id for c in again.charters_held()] == ["line-1"]
    assert again.accept_charter(line.with_version(2).signed).version == 2
    with pytest.raises(CharterRollback):
        again.accept_charter(line.signed)
    snap = again.load(now_ms=100_000 + 30_000, window_ms=60_000)
    assert [(p.recipient, p.seq) for p in snap.pending] == [(r1.deliveries[1].recipient, 1)]
    assert snap.last_seqs == {("line-1", "t0"): 2}
    # ids never go back, even for the envelope that was never written
    assert snap.next_envelope_id > r2.envelope_id
    assert snap.next_delivery_id > r2.deliveries[0].delivery_id
    assert again.load(now_ms=100_000 + 61_000, window_ms=60_000).pending == []
    assert again.sweep(now_ms=100_000 + 61_000, window_ms=60_000) == 1
    assert again.counts()["envelopes"] == 0 and again.counts()["deliveries"] == 0
    assert [e.kind for e in again.events()] == ["admitted"]
    again.close()


def test_event_log_is_capped(tmp_path: Path) -> None:
    store = ExchangeStore(tmp_path / "x.db", max_event_rows=5)
    batch = WriteBatch()
    for i in range(12):
        batch.add_event(Event(i, "refused", source="127.0.0.1", reason=f"r{i}"))
    store.write(batch)
    store.sweep(now_ms=0, window_ms=1)
    assert [e.reason for e in store.events()] == [f"r{i}" for i in range(7, 12)]
    assert [e.reason for e in store.events(limit=2, kind="refused")] == ["r10", "r11"]
    store.close()
