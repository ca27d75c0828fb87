"""TLS: the exchange's self-signed certificate, pinned by terminals through the charter."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from hotline.errors import KeyStorageError, TLSPinMismatch, UsageError
from hotline.exchange import tls
from hotline.exchange.client import ExchangeClient, Refusal

from .harness import Harness, free_port, receive_envelopes
from .lines import make_line


def test_certificate_files_and_fingerprint(tmp_path: Path) -> None:
    folder = tmp_path / "exchange"
    fingerprint = tls.create_certificate(folder)
    assert fingerprint.startswith("sha256:") and len(fingerprint) == 7 + 64
    assert tls.load_fingerprint(folder) == fingerprint
    assert stat.S_IMODE((folder / tls.KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    with pytest.raises(UsageError):
        tls.create_certificate(folder)  # never overwritten
    assert tls.parse_fingerprint(fingerprint.upper().replace("SHA256", "sha256")) == bytes.fromhex(
        fingerprint[7:]
    )
    with pytest.raises(UsageError):
        tls.parse_fingerprint("md5:00")
    os.chmod(folder / tls.KEY_FILE, 0o644)
    with pytest.raises(KeyStorageError):
        tls.server_context(folder)
    with pytest.raises(UsageError):
        tls.load_fingerprint(tmp_path / "missing")


async def test_pinned_tls_connects(tmp_path: Path, harness: Harness) -> None:
    folder = tmp_path / "exchange"
    fingerprint = tls.create_certificate(folder)
    port = free_port()
    url = f"wss://127.0.0.1:{port}"
    line = make_line(tmp_path, 2, exchanges=[f"{url}#{fingerprint}"])
    server = await harness.server([line], tls_dir=folder, port=port)
    assert server.url.startswith("wss://") and server.exchange_id == fingerprint
    a = await harness.client(url, line, "t0")  # the pin comes from the charter
    b = await harness.client(server.url, line, "t1", tls_fingerprint=fingerprint)
    assert a.tls_fingerprint == fingerprint
    await a.send("t1", "n", b"over tls")
    assert [e.body for e in await receive_envelopes(b, 1)] == [b"over tls"]


async def test_wrong_certificate_is_refused(tmp_path: Path, harness: Harness) -> None:
    pinned = tls.create_certificate(tmp_path / "real")
    impostor = tmp_path / "impostor"
    tls.create_certificate(impostor)
    port = free_port()
    url = f"wss://127.0.0.1:{port}"
    line = make_line(tmp_path, 2, exchanges=[f"{url}#{pinned}"])
    server = await harness.server([line], tls_dir=impostor, port=port)
    client = ExchangeClient(url, charter=line.signed, terminal_id="t0", key=line.keys["t0"])
    with pytest.raises(TLSPinMismatch):
        await client.start()
    assert client.stats["tls_pin_mismatch"] == 1
    # nothing reached the exchange: the TLS handshake failed before any request
    assert server.metrics.get("connections_total") == 0
    other = ExchangeClient(
        server.url,
        charter=line.signed,
        terminal_id="t0",
        key=line.keys["t0"],
        tls_fingerprint="sha256:" + "00" * 32,
    )
    with pytest.raises(TLSPinMismatch):
        await other.start()


def test_client_refuses_unpinned_or_plain_remote(tmp_path: Path) -> None:
    line = make_line(tmp_path, 2)
    args = {"charter": line.signed, "terminal_id": "t0", "key": line.keys["t0"]}
    with pytest.raises(UsageError):
        ExchangeClient("wss://127.0.0.1:9", **args)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        ExchangeClient("ws://exchange.example:80", **args)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        ExchangeClient("http://127.0.0.1:9", **args)  # type: ignore[arg-type]
    with pytest.raises(UsageError):  # a key that is not t0's
        ExchangeClient(
            "ws://127.0.0.1:9", charter=line.signed, terminal_id="t0", key=line.keys["t1"]
        )
    with pytest.raises(UsageError):
        ExchangeClient(
            "ws://127.0.0.1:9", charter=line.signed, terminal_id="zz", key=line.keys["t1"]
        )
    ok = ExchangeClient("ws://localhost:9", **args)  # type: ignore[arg-type]
    assert ok.url == "ws://localhost:9/v1/exchange"


async def test_a_pin_mismatch_on_reconnection_is_loud(
    tmp_path: Path, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The exchange's certificate changes while a terminal is connected (another server on
    its address): every reconnection is refused, logged at WARNING and reported as an
    event the terminal counts (issue 9, point 8)."""
    pinned = tls.create_certificate(tmp_path / "real")
    impostor = tmp_path / "impostor"
    tls.create_certificate(impostor)
    port = free_port()
    url = f"wss://127.0.0.1:{port}"
    line = make_line(tmp_path, 2, exchanges=[f"{url}#{pinned}"])
    real = await harness.server([line], tls_dir=tmp_path / "real", port=port)
    client = await harness.client(url, line, "t0")
    harness.servers.remove(real)
    await real.stop()
    await harness.server([line], tls_dir=impostor, port=port, db=tmp_path / "other.db")
    refusals: list[Refusal] = []

    async def refused() -> bool:
        while True:
            try:
                event = await client.next_event(timeout=0.05)
            except TimeoutError:
                return bool(refusals)
            if isinstance(event, Refusal):
                refusals.append(event)

    for _ in range(100):
        if await refused():
            break
    assert refusals and refusals[0].reason == "tls_pin"
    assert client.stats["tls_pin_mismatch"] >= 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("TLS" in r.getMessage() for r in warnings)
