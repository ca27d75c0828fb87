"""One terminal-wide media source, fanned out to every peer connection of every call.

A terminal opens its camera and microphone (or the synthetic source) once; each peer
connection of each call subscribes to it and unsubscribes when the connection closes.
:class:`TrackFanout` reads the source with a single task while anyone subscribes and stops
reading when the last subscriber leaves, so call N of a long-running terminal gets exactly
the frames call 1 got. (aiortc's ``MediaRelay`` keeps a reader per relay and never ends it:
a relay per call on a shared source divided the frames between every call ever made.)

Each subscriber has a small bounded queue. A subscriber that falls behind loses its oldest
frames, never delays the others: live media has no use for a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.frame import Frame
from av.packet import Packet

log = logging.getLogger("hotline.media")

#: frames a subscriber may hold before its oldest is dropped (video 0.2 s, audio 0.4 s):
#: enough for an encoder thread starved for a moment on a loaded machine, never a backlog
QUEUE_FRAMES = {"video": 6, "audio": 20}


class FanoutTrack(MediaStreamTrack):
    """One subscriber's view of a shared track; ``stop()`` unsubscribes it."""

    def __init__(self, fanout: TrackFanout) -> None:
        super().__init__()
        self.kind = fanout.kind
        self._fanout = fanout
        self._queue: asyncio.Queue[Frame | Packet[Any] | None] = asyncio.Queue()
        self.dropped = 0

    def _offer(self, frame: Frame | Packet[Any] | None) -> None:
        limit = QUEUE_FRAMES.get(self.kind, 3)
        while frame is not None and self._queue.qsize() >= limit:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(frame)

    async def recv(self) -> Frame | Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:  # the source ended
            self.stop()
            raise MediaStreamError
        return frame

    def stop(self) -> None:
        if self.readyState == "live":
            self._fanout.unsubscribe(self)
        super().stop()


class TrackFanout:
    """Fans one source track out to any number of :class:`FanoutTrack` subscribers."""

    def __init__(self, source: MediaStreamTrack) -> None:
        self.source = source
        self.kind: str = source.kind
        self._subscribers: set[FanoutTrack] = set()
        self._reader: asyncio.Task[None] | None = None
        self.frames_read = 0
        self.readers_started = 0

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def reading(self) -> bool:
        return self._reader is not None and not self._reader.done()

    def subscribe(self) -> FanoutTrack:
        track = FanoutTrack(self)
        self._subscribers.add(track)
        if not self.reading:
            self.readers_started += 1
            self._reader = asyncio.ensure_future(self._read())
        return track

    def unsubscribe(self, track: FanoutTrack) -> None:
        self._subscribers.discard(track)
        if not self._subscribers and self._reader is not None:
            self._reader.cancel()  # nobody listens: stop taking frames from the source
            self._reader = None

    async def _read(self) -> None:
        try:
            while self._subscribers:
                try:
                    frame = await self.source.recv()
                except MediaStreamError:
                    for track in list(self._subscribers):
                        track._offer(None)
                    return
                self.frames_read += 1
                for track in list(self._subscribers):
                    track._offer(frame)
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken source must not fail silently
            log.exception("the %s source failed", self.kind)
            for track in list(self._subscribers):
                track._offer(None)

    async def aclose(self) -> None:
        for track in list(self._subscribers):
            track.stop()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
