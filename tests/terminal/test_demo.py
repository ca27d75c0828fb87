"""`hotline demo` as a user runs it: inside a network namespace with nothing but `lo` up, so
any traffic to anything but loopback would fail the call."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import require

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_demo_in_an_isolated_network_namespace() -> None:
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    require(os.geteuid() == 0, "network namespaces need root")
    require(unshare is not None and ip is not None, "unshare and ip (util-linux, iproute2)")
    assert unshare is not None and ip is not None
    script = f"{ip} link set lo up && exec {sys.executable} -m hotline demo --duration 4 --json"
    result = subprocess.run(
        [unshare, "--net", "sh", "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    codes = set(summary["security_code"].values())
    assert len(codes) == 1 and None not in codes
    for side, frames in summary["frames"].items():
        assert frames["video_decrypted"] > 0 and frames["audio_decrypted"] > 0, side
        assert frames["rejected"] == 0, side
    assert summary["log_verified"] == {"sochi": True, "situation-room": True}
    assert summary["setup_ms"] > 0
    assert all(len(e) >= 1 for e in summary["epochs"].values())
    for latency in summary["video_latency_ms"].values():
        assert latency["p50"] is not None and latency["p95"] >= latency["p50"]
