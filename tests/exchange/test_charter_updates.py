"""Charter updates through the exchange: distributed to online terminals, removed terminals
evicted, lower versions refused by the exchange and by terminals."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotline.errors import UsageError
from hotline.exchange.client import CharterUpdated, ClientEvent, ConnectionChanged
from hotline.exchange.frames import CharterFrame, Reject, encode_frame

from .harness import Harness, receive_envelopes, wait_for
from .lines import make_line


async def _events_until(client: object, kind: type, timeout: float = 5.0) -> list[ClientEvent]:
    out: list[ClientEvent] = []
    while not out or not isinstance(out[-1], kind):
        out.append(await client.next_event(timeout=timeout))  # type: ignore[attr-defined]
    return out


async def test_newer_charter_is_distributed(tmp_path: Path, harness: Harness) -> None:
    v1 = make_line(tmp_path, 3)
    server = await harness.server([v1])
    t0 = await harness.client(server, v1, "t0")
    t1 = await harness.client(server, v1, "t1")
    t2 = await harness.client(server, v1, "t2")
    await wait_for(lambda: t0.online == {"t0", "t1", "t2"})
    v2 = v1.with_version(2, drop=("t2",), add=("n3",))
    await t0.update_charter(v2.signed)
    assert t0.charter.version == 2
    events = await _events_until(t1, CharterUpdated)
    update = events[-1]
    assert isinstance(update, CharterUpdated) and update.charter.version == 2
    assert t1.charter.version == 2
    # t2 is no longer in the line: the exchange closes its connection with the reason
    events = await _events_until(t2, ConnectionChanged)
    while not (isinstance(events[-1], ConnectionChanged) and not events[-1].connected):
        events += await _events_until(t2, ConnectionChanged)
    assert events[-1] == ConnectionChanged(False, "removed_from_charter")
    await wait_for(lambda: t2.stats["connect_failed_unknown_member"] >= 1)
    await t2.close()
    assert server.charters[v1.line_id].version == 2
    assert server.store.charters.current(v1.line_id).version == 2  # type: ignore[union-attr]
    await wait_for(lambda: server.metrics.get("charter_updates_total") == 2)
    # the new terminal gets in, with the new charter
    n3 = await harness.client(server, v2, "n3")
    await n3.send("t1", "hello", b"new")
    assert [e.body for e in await receive_envelopes(t1, 1)] == [b"new"]
    # a terminal that comes back with the old charter is sent the new one
    await t1.close()
    t1_old = await harness.client(server, v1, "t1")
    events = await _events_until(t1_old, CharterUpdated)
    assert t1_old.charter.version == 2


async def test_lower_version_is_refused(tmp_path: Path, harness: Harness) -> None:
    v1 = make_line(tmp_path, 2)
    v2 = v1.with_version(2)
    server = await harness.server([v2])
    raw = await harness.raw(server, v2, "t0")  # says it holds version 1
    await raw.welcomed()
    pushed = await raw.recv()
    assert isinstance(pushed, CharterFrame) and pushed.data == v2.signed.to_file_bytes()
    await raw.send_bytes(encode_frame(CharterFrame(v1.signed.to_file_bytes())))
    assert await raw.recv() == Reject(None, "charter_rollback")
    await raw.send_bytes(encode_frame(CharterFrame(b"{not a charter")))
    assert await raw.recv() == Reject(None, "charter_format")
    assert server.metrics.get("charter_rejections_total", "charter_rollback") == 1
    assert server.charters[v1.line_id].version == 2
    # a terminal refuses to go back too
    t1 = await harness.client(server, v2, "t1")
    with pytest.raises(UsageError):
        await t1.update_charter(v1.signed)
    # and an exchange restarted with the old charter file keeps the newer one it stored
    await server.stop()
    harness.servers.remove(server)
    again = await harness.server([v1], db=server.config.db_path)
    assert again.charters[v1.line_id].version == 2


async def test_charter_push_fits_a_small_burst(tmp_path: Path, harness: Harness) -> None:
    v1 = make_line(tmp_path, 2)
    server = await harness.server([v1], rate_per_s=5.0, burst=4)
    t0 = await harness.client(server, v1, "t0")
    t1 = await harness.client(server, v1, "t1")
    await t0.update_charter(v1.with_version(2).signed)
    events = await _events_until(t1, CharterUpdated)
    assert isinstance(events[-1], CharterUpdated) and events[-1].charter.version == 2
    assert t0.connected and t0.stats["reconnects"] == 0
