"""The terminal-wide source fan-out: one reader while anyone listens, none after."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.mediastreams import MediaStreamError

from hotline.media.fanout import QUEUE_FRAMES, TrackFanout
from hotline.media.sources import SyntheticVideoTrack, open_source


async def test_every_subscriber_gets_every_frame_and_the_reader_stops_with_the_last() -> None:
    source = SyntheticVideoTrack(fps=60)
    fanout = TrackFanout(source)
    a, b = fanout.subscribe(), fanout.subscribe()
    pairs = [((await a.recv()).pts, (await b.recv()).pts) for _ in range(5)]
    assert all(x == y for x, y in pairs) and len({x for x, _ in pairs}) == 5
    assert fanout.readers_started == 1
    a.stop()
    assert fanout.reading and fanout.subscribers == 1
    b.stop()
    assert not fanout.reading and fanout.subscribers == 0
    await asyncio.sleep(0.1)
    taken = source.frames_sent
    await asyncio.sleep(0.2)
    assert source.frames_sent == taken, "nobody subscribes: the source is not read"
    with pytest.raises(MediaStreamError):
        await a.recv()


async def test_a_new_call_after_many_gets_the_full_rate() -> None:
    """The fault this replaced: each ended call kept a reader on the shared source."""
    source = SyntheticVideoTrack(fps=30)
    fanout = TrackFanout(source)
    for _ in range(5):  # five calls, each taking a few frames and ending
        view = fanout.subscribe()
        for _ in range(3):
            await view.recv()
        view.stop()
    view = fanout.subscribe()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(15):
        await view.recv()
    elapsed = loop.time() - start
    assert elapsed < 15 / 30 * 1.6 + 0.1, elapsed  # ~0.5 s at 30 fps, not 6x that
    assert fanout.subscribers == 1
    view.stop()


async def test_a_slow_subscriber_loses_its_oldest_frames_not_the_others() -> None:
    fanout = TrackFanout(SyntheticVideoTrack(fps=60))
    slow, fast = fanout.subscribe(), fanout.subscribe()
    pts = [(await fast.recv()).pts for _ in range(12)]
    assert pts == sorted(pts) and len(set(pts)) == 12
    assert slow._queue.qsize() <= QUEUE_FRAMES["video"]
    assert slow.dropped >= 12 - QUEUE_FRAMES["video"] - 1
    newest = (await slow.recv()).pts
    assert newest >= pts[-1 - QUEUE_FRAMES["video"]]
    await fanout.aclose()
    assert not fanout.reading


async def test_media_source_views_and_stop() -> None:
    source = open_source("synthetic", fps=30)
    views = source.subscribe()
    assert sorted(v.kind for v in views) == ["audio", "video"]
    assert (await views[0].recv()) is not None
    source.stop()
    assert all(v.readyState == "ended" for v in views)
    fanout = source.fanout("video")
    assert fanout is not None and not fanout.reading
