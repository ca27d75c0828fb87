"""Helpers for the operations tests: the real ``hotline`` command in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from hotline.charter import Role
from hotline.exchange import tls
from hotline.provision import create_line, line_terminal_dir


def hotline(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 (callers check the code)
        [sys.executable, "-m", "hotline", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def hotline_json(*args: str) -> Any:
    result = hotline(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def small_line(root: Path, exchange_url: str = "ws://127.0.0.1:9/v1") -> tuple[Path, Path]:
    """A two-terminal line (alpha of east, bravo of west): the charter and alpha's folder."""
    charter = create_line(
        root,
        "east-west",
        {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
        exchanges=(exchange_url,),
    )
    return charter, line_terminal_dir(root, "alpha")


def exchange_dir(root: Path) -> Path:
    folder = root / "exchange"
    tls.create_certificate(folder)
    return folder


class Serving:
    """A ``hotline exchange serve`` process that has printed its ready line."""

    def __init__(self, proc: subprocess.Popen[str], ready: dict[str, Any]) -> None:
        self.proc = proc
        self.ready = ready
        self.url = str(ready["url"])
        self.http = self.url.replace("ws://", "http://").split("/v1/")[0]

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit code and what it wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def serve_exchange(folder: Path, *args: str, env: dict[str, str] | None = None) -> Serving:
    """Start ``hotline exchange serve --dir FOLDER --insecure-loopback --json`` on a free
    port and wait for its ready line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotline", "exchange", "serve", "--dir", str(folder),
         "--insecure-loopback", "--listen", "127.0.0.1:0", "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise AssertionError(f"the exchange did not start: {proc.stderr.read()}")
    return Serving(proc, json.loads(line))
