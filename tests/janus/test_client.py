"""The Janus client: real errors from a real Janus, and a hostile SFU's answers refused."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hotline.errors import JanusError, SfuProtocolError, SfuUnavailable, UsageError
from hotline.sfu import janus as janus_module
from hotline.sfu.janus import MAX_ANSWER_BYTES, JanusSession, VideoRoomHandle, janus_id
from tests.janus.server import JanusServer, running_janus

pytestmark = pytest.mark.timeout(60)


async def test_a_real_janus_names_its_errors(janus: JanusServer) -> None:
    async with JanusSession(janus.url) as session:
        room = VideoRoomHandle(await session.attach())
        with pytest.raises(JanusError) as missing:
            await room.join_publisher(424242, "berlin")
        assert missing.value.code == 426  # JANUS_VIDEOROOM_ERROR_NO_SUCH_ROOM
        assert "No such room" in str(missing.value)
        await room.create_room(515151, publishers=3, secret="s3cret")
        assert await room.exists(515151)
        with pytest.raises(JanusError) as taken:
            await room.create_room(515151, publishers=3, secret="s3cret")
        assert taken.value.code == 427  # JANUS_VIDEOROOM_ERROR_ROOM_EXISTS
        with pytest.raises(JanusError) as unauthorized:
            await room.destroy_room(515151, secret="wrong")
        assert unauthorized.value.code == 433  # JANUS_VIDEOROOM_ERROR_UNAUTHORIZED
        await room.destroy_room(515151, secret="s3cret")
        assert not await room.exists(515151)
        with pytest.raises(JanusError) as unknown:
            await session.attach("janus.plugin.echotest")  # not loaded in this Janus
        assert unknown.value.code == 460  # JANUS_ERROR_PLUGIN_NOT_FOUND


async def test_an_sfu_that_is_gone_is_unavailable() -> None:
    session = JanusSession("http://127.0.0.1:9/janus", request_timeout_s=2)
    with pytest.raises(SfuUnavailable):
        await session.create()
    await session.close()


async def test_a_restarted_janus_fails_our_session_within_seconds(tmp_path: Path) -> None:
    """Janus forgets every session when it restarts: the next poll (or keepalive) hears
    "no such session" (a 404 on the poll, error 458 on a request) and the session fails
    at once, which a conference takes as broken."""
    with running_janus(tmp_path / "janus") as janus:
        async with JanusSession(janus.url) as session:
            await session.attach()
            assert session.failure is None
            # restarted while this loop is blocked: the poll's next try meets the new Janus
            # (were it down for longer, three failed polls would fail the session as well)
            janus.stop()
            janus.start()
            restarted = time.monotonic()
            while session.failure is None and time.monotonic() - restarted < 10:
                await asyncio.sleep(0.05)
            assert isinstance(session.failure, SfuUnavailable), session.failure
            assert "no such session" in str(session.failure), session.failure
            with pytest.raises(SfuUnavailable):  # nothing more is asked of a failed session
                await session.attach()


def test_urls_follow_the_charter_rules() -> None:
    with pytest.raises(UsageError, match="loopback"):
        JanusSession("http://192.0.2.10:8088/janus")
    with pytest.raises(UsageError, match="pinned"):
        JanusSession("https://sfu.example:8089/janus")
    with pytest.raises(UsageError, match="expected"):
        JanusSession("ws://127.0.0.1:8188/")
    JanusSession("https://sfu.example:8089/janus", tls_fingerprint=b"\x00" * 32)


@pytest.mark.parametrize("value", [0, -1, True, 1 << 53, "12", None, 1.5])
def test_ids_are_positive_integers_below_2_53(value: object) -> None:
    with pytest.raises(SfuProtocolError):
        janus_id(value, "feed")


Answer = Callable[[dict[str, Any]], web.Response]


#: what the hostile server answers the long poll with, one a poll (then keepalives)
polls: list[Callable[[], web.Response]] = []


@pytest.fixture
async def hostile() -> AsyncIterator[tuple[str, list[Answer]]]:
    """An HTTP server that answers Janus's API with whatever the test puts in ``answers``
    (requests) and ``polls`` (the long poll)."""
    answers: list[Answer] = []
    polls.clear()

    async def post(request: web.Request) -> web.Response:
        body = await request.json()
        if not answers:  # e.g. the destroy at the end
            return web.json_response({"janus": "ack", "transaction": body["transaction"]})
        return answers.pop(0)(body)

    async def poll(request: web.Request) -> web.Response:
        if polls:
            return polls.pop(0)()
        await asyncio.sleep(0.05)
        return web.json_response({"janus": "keepalive"})  # soon: the client must not spin

    app = web.Application()
    app.router.add_post("/janus", post)
    app.router.add_post("/janus/{session}", post)
    app.router.add_post("/janus/{session}/{handle}", post)
    app.router.add_get("/janus/{session}", poll)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/janus", answers
    await runner.cleanup()


def _ok(body: dict[str, Any], **extra: Any) -> web.Response:
    return web.json_response({"janus": "success", "transaction": body["transaction"], **extra})


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (lambda b: web.Response(text="<html>"), "not JSON"),
        (lambda b: web.Response(text=" " * (MAX_ANSWER_BYTES + 1) + "{}"), "too large"),
        (lambda b: web.json_response({"janus": "success", "transaction": "other"}), "transaction"),
        (lambda b: _ok(b, data={"id": -5}), "valid id"),
        (lambda b: _ok(b, data={"id": "7"}), "valid id"),
        (lambda b: _ok(b, data=[1]), "JSON object"),
        (lambda b: web.json_response([{"janus": "success"}]), "JSON object"),
    ],
)
async def test_a_hostile_sfus_malformed_answers_are_refused(
    hostile: tuple[str, list[Answer]], answer: Answer, match: str
) -> None:
    url, answers = hostile
    answers.append(answer)
    session = JanusSession(url)
    with pytest.raises(SfuProtocolError, match=match):
        await session.create()
    await session.close()


async def test_a_hostile_sfus_forged_feed_list_is_refused(
    hostile: tuple[str, list[Answer]],
) -> None:
    url, answers = hostile
    answers.append(lambda b: _ok(b, data={"id": 11}))
    answers.append(lambda b: _ok(b, data={"id": 22}))
    publishers = [{"id": i + 1, "display": "x"} for i in range(65)]  # more than MAX_FEEDS
    answers.append(
        lambda b: _ok(
            b,
            plugindata={
                "plugin": "janus.plugin.videoroom",
                "data": {
                    "videoroom": "joined",
                    "room": 1,
                    "id": 3,
                    "private_id": 4,
                    "publishers": publishers,
                },
            },
        )
    )
    async with JanusSession(url) as session:
        room = VideoRoomHandle(await session.attach())
        with pytest.raises(SfuProtocolError, match="at most 64"):
            await room.join_publisher(1, "berlin")
    assert json.dumps(publishers)  # the list itself was well-formed JSON


def _error(body: dict[str, Any], code: int, reason: str) -> web.Response:
    return web.json_response(
        {
            "janus": "error",
            "session_id": 11,
            "transaction": body["transaction"],
            "error": {"code": code, "reason": reason},
        }
    )


async def test_no_such_session_on_a_request_fails_the_session_once(
    hostile: tuple[str, list[Answer]],
) -> None:
    url, answers = hostile
    answers.append(lambda b: _ok(b, data={"id": 11}))
    answers.append(lambda b: _error(b, 458, "No such session 11\n2026-01-01 forged log line"))
    async with JanusSession(url) as session:
        with pytest.raises(JanusError) as gone:
            await session.attach()
        assert gone.value.code == 458
        assert "\n" not in str(gone.value)  # the SFU's text never starts a line of its own
        assert session.failure_reason == "no_such_session"
        with pytest.raises(SfuUnavailable):  # nothing more is asked of a failed session
            await session.attach()
        with pytest.raises(SfuUnavailable):
            session._expect("tx")
        assert session.stats.get("session_no_such_session") == 1


async def test_a_timeout_event_fails_the_session_once(
    hostile: tuple[str, list[Answer]],
) -> None:
    url, answers = hostile
    answers.append(lambda b: _ok(b, data={"id": 11}))
    polls.append(lambda: web.json_response([{"janus": "timeout", "session_id": 11}] * 16))
    async with JanusSession(url) as session:
        for _ in range(100):
            if session.failure is not None:
                break
            await asyncio.sleep(0.02)
        assert session.failure_reason == "timed_out"
        assert session.stats.get("session_timed_out") == 1  # sixteen events, one failure


async def test_a_glitch_of_the_poll_is_ridden_out_and_a_lasting_failure_is_not(
    hostile: tuple[str, list[Answer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(janus_module, "POLL_FAILING_S", 1.0)
    url, answers = hostile
    answers.append(lambda b: _ok(b, data={"id": 11}))
    # three failed polls in 0.6 s (0.2 s and 0.4 s apart): shorter than POLL_FAILING_S
    polls.extend([lambda: web.Response(status=502, text="<html>")] * 3)
    async with JanusSession(url) as session:
        await asyncio.sleep(1.2)
        assert session.failure_reason is None and session.stats["poll_failed"] == 3
        polls.extend([lambda: web.Response(status=502, text="<html>")] * 50)
        for _ in range(200):
            if session.failure is not None:
                break
            await asyncio.sleep(0.02)
        assert session.failure_reason == "events_failed"
