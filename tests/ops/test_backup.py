"""``hotline backup`` / ``hotline restore`` against a running exchange whose undelivered
envelopes are still in SQLite's write-ahead log, and a running terminal; a restore never
rolls a charter back."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.exchange.harness import Harness, receive_envelopes, wait_for
from tests.exchange.lines import make_line

from .cli import exchange_dir, hotline, hotline_json, serve_exchange, small_line

pytestmark = pytest.mark.slow


def deliveries(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        if "exchange_deliveries" not in tables:
            return 0
        return int(conn.execute("SELECT COUNT(*) FROM exchange_deliveries").fetchone()[0])
    finally:
        conn.close()


async def test_backup_of_a_running_exchange_keeps_what_is_in_its_wal(
    tmp_path: Path, harness: Harness
) -> None:
    line = make_line(tmp_path, 3)
    folder = exchange_dir(tmp_path)  # its TLS identity is part of what is backed up
    serving = serve_exchange(folder, "--charter", str(line.path))
    try:
        a = await harness.client(serving.url, line, "t0")
        for i in range(3):  # t1 is offline: stored for it
            await a.send("t1", "n", f"kept {i}".encode())
        await wait_for(lambda: a.outbox_size == 0)  # the exchange says: committed
        wal = folder / "exchange.db-wal"
        assert wal.stat().st_size > 0  # the commits are in the write-ahead log
        # what a plain file copy gets: not the envelopes (they are in the WAL)
        shutil.copyfile(folder / "exchange.db", tmp_path / "copied.db")
        assert deliveries(tmp_path / "copied.db") == 0
        taken = hotline_json(
            "backup", "--exchange", str(folder), "--out", str(tmp_path / "b1"), "--json"
        )
        assert taken["ok"] is True and taken["kind"] == "exchange"
        assert taken["charters"] == {"exchange.db": {line.line_id: 1}}
        assert deliveries(tmp_path / "b1" / "exchange.db") == 3
        assert not (tmp_path / "b1" / "exchange.db-wal").exists()
        assert not (tmp_path / "b1" / "exchange.db.lock").exists()
        key = tmp_path / "b1" / "tls-key.pem"
        assert key.exists() and (key.stat().st_mode & 0o077) == 0

        # under load: t0 keeps sending while a second backup is taken
        async def send_more() -> None:
            for i in range(60):
                await a.send("t1", "n", f"more {i}".encode())
                await asyncio.sleep(0.005)

        sender = asyncio.create_task(send_more())
        await asyncio.sleep(0.05)
        under_load = await asyncio.to_thread(
            hotline, "backup", "--exchange", str(folder), "--out", str(tmp_path / "b2")
        )
        await sender
        assert under_load.returncode == 0, under_load.stderr
        assert 3 <= deliveries(tmp_path / "b2" / "exchange.db") <= 63
        # a restore into a running exchange is refused, naming it
        busy = hotline("restore", str(tmp_path / "b1"), "--exchange", str(folder))
        assert busy.returncode == 2
        assert f"the exchange is running (pid {serving.proc.pid}); stop it first" in busy.stderr
        await a.close()
    finally:
        serving.kill()  # the machine dies

    # a new machine: restore, start with no --charter, and t1 gets what was stored
    fresh = tmp_path / "new-exchange"
    restored = hotline_json("restore", str(tmp_path / "b1"), "--exchange", str(fresh), "--json")
    assert restored["ok"] is True and restored["kept_newer_charters"] == []
    again = serve_exchange(fresh)
    try:
        assert again.ready["lines"] == [line.line_id]
        b = await harness.client(again.url, line, "t1")
        got = await receive_envelopes(b, 3)
        assert [e.body for e in got] == [b"kept 0", b"kept 1", b"kept 2"]
        await b.close()
    finally:
        code, _ = again.stop()
    assert code == 0

    # the restored exchange then accepted charter version 2; the old backup would roll it back
    v2 = line.with_version(2)
    upgraded = serve_exchange(fresh, "--charter", str(v2.path))
    upgraded.stop()
    refused = hotline("restore", str(tmp_path / "b1"), "--exchange", str(fresh))
    assert refused.returncode == 2
    message = refused.stderr.strip()
    assert f"holds charter version 2 of line '{line.line_id}' and the backup has version 1" in (
        message
    )
    assert "--keep-newer-charters" in message and len(message.splitlines()) == 1
    kept = hotline_json(
        "restore", str(tmp_path / "b1"), "--exchange", str(fresh), "--keep-newer-charters",
        "--json",
    )  # fmt: skip
    assert kept["kept_newer_charters"] == [
        {"line_id": line.line_id, "version": 2, "backup_version": 1}
    ]
    last = serve_exchange(fresh)
    try:
        health = json.loads(
            subprocess.run(  # noqa: PLW1510 (asserted)
                [sys.executable, "-c", f"import urllib.request as u; print(u.urlopen("
                 f"'{last.http}/healthz').read().decode())"],
                capture_output=True, text=True, timeout=30,
            ).stdout
        )  # fmt: skip
        assert health["lines"] == 1
    finally:
        last.stop()
    versions = (
        sqlite3.connect(fresh / "exchange.db").execute("SELECT version FROM charters").fetchall()
    )
    assert versions == [(2,)]


def test_backup_of_a_running_terminal_and_a_damaged_backup(tmp_path: Path) -> None:
    charter, alpha = small_line(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotline", "terminal", "run", "-t", str(alpha),
         "--charter", str(charter)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["ready"] is True
        taken = hotline_json(
            "backup", "--terminal", str(alpha), "--out", str(tmp_path / "tb"), "--json"
        )
        assert taken["charters"] == {"state/charters.sqlite": {"east-west": 1}}
        files = taken["files"]
        assert files["identity.key"]["mode"] == "0600"
        assert "state/control.json" not in files and "state/terminal.lock" not in files
        busy = hotline("restore", str(tmp_path / "tb"), "--terminal", str(alpha))
        assert busy.returncode == 2 and f"running (pid {proc.pid})" in busy.stderr
    finally:
        proc.terminate()
        proc.wait(20)
    # restored elsewhere, the terminal's folder is whole: the same identity
    other = tmp_path / "alpha-restored"
    assert hotline("restore", str(tmp_path / "tb"), "--terminal", str(other)).returncode == 0
    assert (other / "identity.key").read_bytes() == (alpha / "identity.key").read_bytes()
    assert ((other / "identity.key").stat().st_mode & 0o777) == 0o600
    shown = hotline_json("config", "show", "--terminal", str(other), "--json")
    assert shown["ok"] is True
    wrong_kind = hotline("restore", str(tmp_path / "tb"), "--exchange", str(tmp_path / "x"))
    assert wrong_kind.returncode == 2 and "a backup of a terminal" in wrong_kind.stderr
    # a backup file changed after the fact is refused before anything is written
    with (tmp_path / "tb" / "state" / "charters.sqlite").open("r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00garbage")
    damaged = hotline("restore", str(tmp_path / "tb"), "--terminal", str(tmp_path / "t3"))
    assert damaged.returncode == 2
    assert "state/charters.sqlite was changed or damaged since the backup" in damaged.stderr
    assert not (tmp_path / "t3").exists()
    exists = hotline("backup", "--terminal", str(alpha), "--out", str(tmp_path / "tb"))
    assert exists.returncode == 2 and "already exists" in exists.stderr


async def test_an_exchange_store_outside_its_folder_is_backed_up_too(
    tmp_path: Path, harness: Harness
) -> None:
    line = make_line(tmp_path, 2)
    folder = tmp_path / "exchange"
    folder.mkdir()
    store = tmp_path / "data" / "store.db"
    store.parent.mkdir()
    (folder / "exchange.toml").write_text(f"[exchange]\ndb = '{store}'\n")
    serving = serve_exchange(folder, "--charter", str(line.path))
    try:
        a = await harness.client(serving.url, line, "t0")
        await a.send("t1", "n", b"outside")
        await wait_for(lambda: a.outbox_size == 0)
        taken = hotline_json(
            "backup", "--exchange", str(folder), "--out", str(tmp_path / "b"), "--json"
        )
        assert taken["files"]["store/store.db"]["store"] is True
        assert taken["charters"] == {"store/store.db": {line.line_id: 1}}
        busy = hotline("restore", str(tmp_path / "b"), "--exchange", str(folder))
        assert busy.returncode == 2 and f"(pid {serving.proc.pid})" in busy.stderr
        # the other commands find the same store: its audit table, not an empty DIR/exchange.db
        table = hotline_json("exchange", "events", "--dir", str(folder), "--json")
        assert "started" in {e["kind"] for e in table["events"]}, table
        assert not (folder / "exchange.db").exists()
        await a.close()
    finally:
        serving.kill()
    store.unlink()  # the data disk is lost
    Path(str(store) + "-wal").unlink(missing_ok=True)
    Path(str(store) + "-shm").unlink(missing_ok=True)
    assert hotline("restore", str(tmp_path / "b"), "--exchange", str(folder)).returncode == 0
    assert deliveries(store) == 1
    again = serve_exchange(folder)
    try:
        b = await harness.client(again.url, line, "t1")
        assert [e.body for e in await receive_envelopes(b, 1)] == [b"outside"]
        await b.close()
    finally:
        again.stop()
