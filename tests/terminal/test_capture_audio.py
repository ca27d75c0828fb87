"""``hotline terminal run --capture-audio FILE``: what a terminal played out, as a WAV."""

from __future__ import annotations

import asyncio
import itertools
import wave
from array import array
from pathlib import Path

import pytest

from hotline.charter import Policy, Role
from hotline.errors import UsageError
from hotline.localline import LocalLine
from hotline.media.sinks import CHIRP_THRESHOLD
from hotline.terminal.daemon import capture_allowed
from hotline.terminal.main import build_config
from tests.terminal.test_calls import call_of, sink, wait_for


def _line(root: Path, policy: Policy) -> LocalLine:
    line = LocalLine(
        root,
        "east-west",
        {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
        policy=policy,
    )
    line.commission()
    return line


def test_capture_needs_measuring_media_or_the_charters_permission(tmp_path: Path) -> None:
    assert capture_allowed("synthetic:speech", False)
    assert capture_allowed("file:/tmp/clip.wav", False)
    assert not capture_allowed("device:/dev/video0,default", False)
    assert capture_allowed("device", True)
    line = _line(tmp_path, Policy())
    assert line.charter_path is not None
    common = {
        "terminal_dir": line.terminal_dir("alpha"),
        "charter_path": line.charter_path,
        "exchange_url": None,
        "passphrase_file": None,
        "auto_answer": False,
        "interfaces": "loopback",
        "width": 320,
        "height": 180,
        "fps": 15,
        "capture_audio": tmp_path / "heard.wav",
    }
    with pytest.raises(UsageError, match="capture-audio"):
        build_config(source="device", **common)  # type: ignore[arg-type]
    config = build_config(source="synthetic", **common)  # type: ignore[arg-type]
    assert config.media.capture_audio is not None
    assert config.media.capture_audio.next_path() == tmp_path / "heard.wav"
    assert config.media.capture_audio.next_path() == tmp_path / "heard-2.wav"


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_terminal_writes_what_it_played_out(tmp_path: Path) -> None:
    line = _line(tmp_path, Policy())
    wav = tmp_path / "alpha-heard.wav"
    try:
        await line.start_exchange()
        await line.start_terminal("alpha", "--capture-audio", str(wav))
        await line.start_terminal("bravo", "--auto-answer")
        await line.wait_online(["alpha", "bravo"])
        async with line.control("alpha") as alpha:
            await alpha.request("POST", "/call", {"target": "bravo"})
            await wait_for(
                line,
                ["alpha"],
                lambda s: sink(s["alpha"], "bravo", "audio").get("chirps", 0) >= 4,
                "four chirps heard from bravo",
            )
            status = await line.status("alpha")
            assert call_of(status)["e2ee"]["rejected"] == {}
            await alpha.request("POST", "/hangup")
        await asyncio.sleep(1.0)
    finally:
        await line.stop()
    with wave.open(str(wav)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 48000)
        pcm = array("h", w.readframes(w.getnframes()))
    # four chirps a second apart were heard: at least 2.5 s of audio was played and written
    # (not 3 s: the first chirp may come a fraction of a second after playout starts, and a
    # stall of the shared host sheds frames within the buffer's bound)
    assert len(pcm) >= 5 * 48000 // 2
    # bravo's synthetic tone carries a chirp once a second: the capture holds them, ~1 s
    # apart (the jitter buffer inserts or sheds frames when the shared host stalls, within
    # its delay bound; on a quiet host every spacing is within a frame or two)
    loud = [i for i in range(0, len(pcm), 480) if max(pcm[i : i + 480]) >= CHIRP_THRESHOLD]
    onsets = [i for k, i in enumerate(loud) if k == 0 or i - loud[k - 1] > 24000]
    assert len(onsets) >= 3
    spacing = [b - a for a, b in itertools.pairwise(onsets)]
    # each a whole number of seconds (a stall of the shared host can swallow a chirp: then
    # 2 s), and most of them exactly one
    assert all(s >= 24000 and abs(s - 48000 * round(s / 48000)) <= 48 * 300 for s in spacing), (
        spacing
    )
    assert sorted(abs(s - 48000) for s in spacing)[len(spacing) // 2] <= 2 * 960, spacing
