"""Helpers for the exchange's loopback tests: a server in this process, started clients,
and a raw terminal that speaks the protocol frame by frame (to misbehave on purpose)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from hotline.envelope import Envelope
from hotline.exchange.client import ClientEvent, EnvelopeReceived, ExchangeClient
from hotline.exchange.frames import (
    WS_PATH,
    Accepted,
    AdvertisedLimits,
    Challenge,
    Deliver,
    Hello,
    Presence,
    Send,
    ServerFrame,
    Welcome,
    auth_message,
    decode_client_frame,
    decode_server_frame,
    encode_frame,
)
from hotline.exchange.routing import Limits
from hotline.exchange.server import ExchangeServer, ServerConfig
from hotline.keys import SigningKey
from hotline.localline import free_port  # noqa: F401 (re-exported: the one picker)

from .lines import Line

TIMEOUT = 10.0


@dataclass
class Harness:
    root: Path
    servers: list[ExchangeServer] = field(default_factory=list)
    clients: list[ExchangeClient] = field(default_factory=list)
    raws: list[RawTerminal] = field(default_factory=list)

    async def server(
        self,
        lines: list[Line],
        *,
        tls_dir: Path | None = None,
        db: Path | None = None,
        port: int = 0,
        **limits: Any,
    ) -> ExchangeServer:
        config = ServerConfig(
            db_path=db or self.root / f"exchange-{len(self.servers)}.db",
            tls_dir=tls_dir,
            port=port,
            insecure_loopback=tls_dir is None,
            limits=Limits(**limits),
            flush_interval_s=0.02,
            expire_interval_s=0.1,
        )
        server = ExchangeServer(config, [line.signed for line in lines])
        await server.start()
        self.servers.append(server)
        return server

    async def client(
        self, server: ExchangeServer | str, line: Line, terminal: str, **kw: Any
    ) -> ExchangeClient:
        url = server if isinstance(server, str) else server.url
        kw.setdefault("reconnect_min_s", 0.05)
        kw.setdefault("reconnect_max_s", 0.5)
        client = ExchangeClient(
            url, charter=line.signed, terminal_id=terminal, key=line.keys[terminal], **kw
        )
        self.clients.append(client)
        await client.start()
        return client

    async def raw(
        self, server: ExchangeServer, line: Line, terminal: str, key: SigningKey | None = None
    ) -> RawTerminal:
        raw = RawTerminal(server.url)
        self.raws.append(raw)
        await raw.open()
        await raw.hello(line.line_id, terminal, key or line.keys[terminal])
        return raw

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for raw in self.raws:
            await raw.close()
        for server in self.servers:
            await server.stop()


class RawTerminal:
    """A terminal that speaks the protocol frame by frame."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.challenge: Challenge | None = None
        self.welcome: Welcome | None = None

    async def open(self) -> Challenge:
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.url, max_msg_size=8 << 20)
        frame = await self.recv()
        assert isinstance(frame, Challenge)
        self.challenge = frame
        return frame

    async def hello(self, line_id: str, terminal: str, key: SigningKey, resume: int = 0) -> None:
        assert self.challenge is not None
        sig = key.sign(
            auth_message(self.challenge.challenge, self.challenge.exchange_id, line_id, terminal)
        )
        await self.send_bytes(encode_frame(Hello(line_id, terminal, sig, resume, 1)))

    async def welcomed(self) -> Welcome:
        frame = await self.recv()
        assert isinstance(frame, Welcome), frame
        self.welcome = frame
        return frame

    async def send_bytes(self, data: bytes) -> None:
        assert self.ws is not None
        await self.ws.send_bytes(data)

    async def send_envelope(self, env: Envelope | bytes) -> None:
        raw = env if isinstance(env, bytes) else env.to_bytes()
        await self.send_bytes(encode_frame(Send(raw)))

    async def recv(self) -> ServerFrame:
        """The next frame other than presence."""
        while True:
            frame = await self.recv_any()
            if not isinstance(frame, Presence):
                return frame

    async def recv_any(self) -> ServerFrame:
        assert self.ws is not None
        msg = await asyncio.wait_for(self.ws.receive(), TIMEOUT)
        if msg.type is not aiohttp.WSMsgType.BINARY:
            raise ConnectionError(f"closed: {self.ws.close_code} {msg.extra!r}")
        return decode_server_frame(msg.data, 8 << 20)

    async def closed_with(self) -> tuple[int | None, str]:
        """Read until the exchange closes the connection; its close code and reason."""
        assert self.ws is not None
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), TIMEOUT)
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                return self.ws.close_code, str(msg.extra or "")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()


def envelope(
    line: Line,
    sender: str,
    recipient: str | None,
    seq: int,
    *,
    body: bytes = b"x",
    key: SigningKey | None = None,
    line_id: str | None = None,
    now_ms: int | None = None,
) -> Envelope:
    return Envelope.create(
        key or line.keys[sender],
        line_id=line_id or line.line_id,
        sender=sender,
        recipient=recipient,
        seq=seq,
        timestamp_ms=now_ms if now_ms is not None else _now_ms(),
        msg_type="test",
        body=body,
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


async def receive_envelopes(
    client: ExchangeClient,
    n: int,
    *,
    timeout: float = TIMEOUT,
    seen: list[ClientEvent] | None = None,
) -> list[Envelope]:
    """The next ``n`` envelopes ``client`` receives (other events go to ``seen``)."""
    out: list[Envelope] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(out) < n:
        event = await client.next_event(timeout=max(0.01, deadline - loop.time()))
        if isinstance(event, EnvelopeReceived):
            out.append(event.envelope)
        elif seen is not None:
            seen.append(event)
    return out


async def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


class Proxy:
    """A TCP relay on loopback that can cut its connections (a network drop) and refuse
    new ones for a while (the network stays down)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.down = False
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def url(self, server_url: str) -> str:
        return server_url.replace(f":{self.target_port}/", f":{self.port}/")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._links.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links.discard(writer)
        self._links.discard(up_writer)

    def cut(self) -> None:
        """Drop every connection at once, without a close handshake."""
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class MitmExchange:
    """A hostile exchange between real terminals (a man in the middle): it admits whoever
    says hello (the terminals check everything themselves), relays what they send, and can
    withhold (``hold``), release and inject envelopes, or misdeliver anything it likes. What
    it chooses at random comes from ``seed`` (print it; replay a failure with the same one).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.hold: Callable[[Envelope], bool] = lambda env: False
        self.held: list[Envelope] = []
        #: every envelope the terminals sent, in order
        self.sent: list[Envelope] = []
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.runner: web.AppRunner | None = None
        self.url = ""
        self._delivery = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(WS_PATH, self._handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"ws://127.0.0.1:{self.runner.addresses[0][1]}{WS_PATH}"

    async def stop(self) -> None:
        for ws in list(self.sockets.values()):
            await ws.close()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        limits = AdvertisedLimits(65536, 1000.0, 1000, 60.0)
        challenge = Challenge(self.rng.randbytes(32), "mitm", f"mitm-{self.seed}", limits)
        await ws.send_bytes(encode_frame(challenge))
        hello = decode_client_frame((await ws.receive()).data, 4096)
        assert isinstance(hello, Hello)
        terminal = hello.terminal_id
        self.sockets[terminal] = ws
        online = frozenset(self.sockets)
        await ws.send_bytes(encode_frame(Welcome(terminal, online, None, hello.charter_version)))
        await self._presence()
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    continue
                frame = decode_client_frame(msg.data, 1 << 20)
                if isinstance(frame, Send):
                    env = Envelope.from_bytes(frame.envelope)
                    self.sent.append(env)
                    await ws.send_bytes(encode_frame(Accepted(env.seq)))
                    if self.hold(env):
                        self.held.append(env)
                    else:
                        await self.deliver(env)
        finally:
            if self.sockets.get(terminal) is ws:
                del self.sockets[terminal]
        return ws

    async def _presence(self) -> None:
        frame = encode_frame(Presence(frozenset(self.sockets)))
        for ws in list(self.sockets.values()):
            await ws.send_bytes(frame)

    async def deliver(self, env: Envelope, to: str | None = None) -> None:
        """Deliver ``env`` to its recipient(s), or to ``to`` whatever it says."""
        if to is not None:
            recipients = [to]
        elif env.recipient is not None:
            recipients = [env.recipient]
        else:
            recipients = [t for t in self.sockets if t != env.sender]
        for recipient in recipients:
            ws = self.sockets.get(recipient)
            if ws is not None:
                self._delivery += 1
                await ws.send_bytes(encode_frame(Deliver(self._delivery, env.raw)))

    async def send_frame(self, terminal: str, frame: ServerFrame) -> None:
        """Send any frame to ``terminal`` (a forged reject, presence...)."""
        await self.sockets[terminal].send_bytes(encode_frame(frame))

    async def release(self, which: Callable[[Envelope], bool] = lambda env: True) -> int:
        """Deliver the withheld envelopes ``which`` selects, in order; how many."""
        chosen = [env for env in self.held if which(env)]
        self.held = [env for env in self.held if not which(env)]
        for env in chosen:
            await self.deliver(env)
        return len(chosen)
