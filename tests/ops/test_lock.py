"""One ``hotline exchange serve`` per store: a second one is refused and names the first."""

from __future__ import annotations

from pathlib import Path

import pytest

from .cli import hotline, serve_exchange, small_line

pytestmark = pytest.mark.slow


def test_a_second_serve_on_one_store_is_refused_naming_the_pid(tmp_path: Path) -> None:
    charter, _alpha = small_line(tmp_path)
    folder = tmp_path / "exchange"
    first = serve_exchange(folder, "--charter", str(charter))
    try:
        pid = first.proc.pid
        db = folder / "exchange.db"
        for extra in ([], ["--db", str(db)]):
            other_dir = folder if not extra else tmp_path / "elsewhere"
            second = hotline(
                "exchange", "serve", "--dir", str(other_dir), "--insecure-loopback",
                "--listen", "127.0.0.1:0", *extra,
            )  # fmt: skip
            assert second.returncode == 2
            assert second.stderr.strip().splitlines() == [
                f"error: {db}: this exchange store is already served by another "
                f"`hotline exchange serve` (pid {pid})"
            ]
        # another store on the same port: the environment (exit 3), not the command (2)
        port = first.ready["port"]
        taken = hotline(
            "exchange", "serve", "--dir", str(tmp_path / "other"), "--insecure-loopback",
            "--listen", f"127.0.0.1:{port}", "--charter", str(charter), "--log-level", "warning",
        )  # fmt: skip
        assert taken.returncode == 3, taken.stderr
        assert taken.stderr.strip().splitlines() == [
            f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
        ]
        assert first.proc.poll() is None  # the first one is untouched
    finally:
        first.kill()
    # the kernel drops the lock with the process, even after SIGKILL: a new one starts
    again = serve_exchange(folder)
    assert again.ready["lines"] == ["east-west"]
    code, _ = again.stop()
    assert code == 0
