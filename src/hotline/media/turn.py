"""TURN relays: credentials, probing, and the one relay a peer connection is given.

The charter names the relays (where media may go); each site keeps the credentials for
them in its own configuration (``hotline.terminal.config``). Two kinds of credentials:

- :class:`StaticCredentials`: a user name and password (coturn's ``lt-cred-mech``);
- :class:`SharedSecretCredentials`: coturn's time-limited credentials (``use-auth-secret``,
  the "TURN REST API" scheme): the user name is ``"<expiry unix seconds>:<name>"`` and the
  password ``base64(HMAC-SHA1(secret, user name))``, made fresh for every peer connection.

aiortc uses only the first TURN server it is given. :func:`select_ice` therefore probes the
relays in charter order — a real TURN allocation with the site's credentials, released at
once — and returns settings naming the first one that works. A peer connection that is
(re)built calls it again, so a rebuild after a relay dies moves on to the next one.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Protocol

from aioice import stun
from aioice.turn import TurnClientTcpProtocol, TurnClientUdpProtocol
from aiortc.rtcicetransport import parse_stun_turn_uri
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

from hotline.errors import RelayUnavailable, UsageError

log = logging.getLogger(__name__)

TURN_SCHEMES = ("turn:", "turns:")
#: how long one relay may take to answer an allocation before the next one is tried
DEFAULT_PROBE_TIMEOUT_S = 1.0
#: lifetime of coturn shared-secret credentials made for a peer connection (the allocation
#: outlives them: coturn checks the expiry only when the allocation is made or refreshed
#: with a new nonce, so keep this longer than a call)
DEFAULT_CREDENTIAL_TTL_S = 24 * 3600
#: a relay that failed a probe this recently is tried after the others
RECENTLY_FAILED_S = 30.0
#: lifetime asked for the probe's allocation (it is released right after)
_PROBE_LIFETIME_S = 60


class TurnCredentials(Protocol):
    def at(self, now: float) -> tuple[str, str]:
        """The user name and password to present at unix time ``now``."""
        ...


@dataclass(frozen=True)
class StaticCredentials:
    """A fixed user name and password (coturn ``lt-cred-mech``)."""

    username: str
    password: str = field(repr=False)

    def at(self, now: float) -> tuple[str, str]:
        return self.username, self.password


def shared_secret_credentials(secret: bytes, name: str, expiry: int) -> tuple[str, str]:
    """coturn's time-limited credentials for ``name``, valid until unix time ``expiry``."""
    username = f"{expiry}:{name}"
    # HMAC-SHA1 is what coturn's use-auth-secret scheme defines (HMAC, not a bare hash)
    mac = HMAC(secret, hashes.SHA1())  # noqa: S303
    mac.update(username.encode())
    return username, base64.b64encode(mac.finalize()).decode("ascii")


@dataclass(frozen=True)
class SharedSecretCredentials:
    """Credentials made from a secret shared with the relay (coturn ``use-auth-secret``)."""

    secret: bytes = field(repr=False)
    name: str
    ttl_s: int = DEFAULT_CREDENTIAL_TTL_S

    def at(self, now: float) -> tuple[str, str]:
        return shared_secret_credentials(self.secret, self.name, int(now) + self.ttl_s)


@dataclass(frozen=True)
class TurnRelay:
    """A relay the charter names, with this site's credentials for it."""

    url: str  #: ``turn:host:port[?transport=udp|tcp]`` or ``turns:host:port[?transport=tcp]``
    credentials: TurnCredentials

    def __post_init__(self) -> None:
        if not self.url.startswith(TURN_SCHEMES):
            raise UsageError(f"a TURN relay URL starts with turn: or turns:, not {self.url!r}")
        relay_address(self.url)


def relay_address(url: str) -> tuple[str, int, str, bool]:
    """``(host, port, transport, tls)`` of a TURN URL as aiortc reads it. Raises
    ``UsageError`` for a URL aiortc would silently skip (another transport, turns over UDP)."""
    try:
        parsed = parse_stun_turn_uri(url)
    except ValueError as exc:
        raise UsageError(f"TURN relay {url!r}: {exc}") from exc
    tls = parsed["scheme"] == "turns"
    transport = parsed["transport"]
    if transport not in ("udp", "tcp") or (tls and transport != "tcp"):
        raise UsageError(
            f"TURN relay {url!r}: the media engine supports turn: over udp or tcp, "
            "and turns: over tcp"
        )
    return str(parsed["host"]), int(parsed["port"]), str(transport), tls


class RelayHistory:
    """When each relay last failed a probe (monotonic seconds), so that the next choice tries
    a relay that just failed after the others instead of waiting for it again. Pure: the
    caller passes ``now``."""

    def __init__(self, remember_s: float = RECENTLY_FAILED_S) -> None:
        self.remember_s = remember_s
        self._failed: dict[str, float] = {}

    def failed(self, url: str, now: float) -> None:
        self._failed[url] = now

    def succeeded(self, url: str) -> None:
        self._failed.pop(url, None)

    def order(self, relays: tuple[TurnRelay, ...], now: float) -> tuple[TurnRelay, ...]:
        """``relays`` in charter order, those that failed in the last ``remember_s`` last."""
        recent = {u for u, t in self._failed.items() if now - t < self.remember_s}
        return tuple(r for r in relays if r.url not in recent) + tuple(
            r for r in relays if r.url in recent
        )


@dataclass(frozen=True)
class IceSettings:
    """How a peer connection finds its path. The default: host candidates, no servers.

    ``relays`` are in charter order; a peer connection is given only the first (aiortc uses
    no other), so :func:`select_ice` puts the first live one there.
    """

    relays: tuple[TurnRelay, ...] = ()
    #: only relayed candidates (hides host addresses). Without a relay nothing can connect:
    #: :func:`select_ice` raises and no peer connection is built.
    relay_only: bool = False
    #: seconds one relay may take to answer the probe
    probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S
    #: which relays failed lately (shared by the settings :func:`select_ice` derives)
    history: RelayHistory = field(default_factory=RelayHistory, compare=False, repr=False)

    @property
    def turn(self) -> TurnRelay | None:
        """The relay a peer connection built from these settings uses."""
        return self.relays[0] if self.relays else None


async def probe_relay(
    relay: TurnRelay, *, timeout_s: float = DEFAULT_PROBE_TIMEOUT_S, now: float | None = None
) -> float:
    """Allocate on ``relay`` with its credentials and release the allocation at once.

    Returns the seconds the allocation took. Raises :class:`RelayUnavailable` naming the
    reason: no answer within ``timeout_s``, refused credentials (401), any other refusal,
    or a socket or TLS error.
    """
    host, port, transport, tls = relay_address(relay.url)
    username, password = relay.credentials.at(time.time() if now is None else now)
    loop = asyncio.get_running_loop()
    start = loop.time()
    client: TurnClientUdpProtocol | TurnClientTcpProtocol | None = None
    try:
        async with asyncio.timeout(timeout_s):
            if transport == "tcp":
                _, client = await loop.create_connection(
                    lambda: TurnClientTcpProtocol(
                        (host, port), username, password, _PROBE_LIFETIME_S, 500
                    ),
                    host=host,
                    port=port,
                    ssl=ssl.create_default_context() if tls else None,
                )
            else:
                _, client = await loop.create_datagram_endpoint(
                    lambda: TurnClientUdpProtocol(
                        (host, port), username, password, _PROBE_LIFETIME_S, 500
                    ),
                    remote_addr=(host, port),
                )
            await client.connect()
        took = loop.time() - start
        async with asyncio.timeout(timeout_s):
            await client.delete()
        return took
    except TimeoutError:
        raise RelayUnavailable(f"{relay.url}: no answer within {timeout_s:g} s") from None
    except stun.TransactionFailed as exc:
        code, text = exc.response.attributes.get("ERROR-CODE", (0, "refused"))
        if code == 401:
            raise RelayUnavailable(
                f"{relay.url}: the relay refused this site's credentials (401 {text})"
            ) from None
        raise RelayUnavailable(f"{relay.url}: the relay refused ({code} {text})") from None
    except (stun.TransactionError, ConnectionError, ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise RelayUnavailable(f"{relay.url}: {reason}") from None
    finally:
        if client is not None and not client.transport.is_closing():
            if client.refresh_task is not None:
                client.refresh_task.cancel()
            client.transport.close()


async def select_ice(settings: IceSettings) -> IceSettings:
    """Settings that name the first relay (in charter order) that answers a probe.

    A relay that failed a probe in the last :data:`RECENTLY_FAILED_S` seconds is tried after
    the others (``settings.history``, kept per terminal): a rebuild, or the next call, does
    not wait for a dead relay again. Without relays the settings are returned
    as they are. When no relay works: with ``relay_only`` a :class:`RelayUnavailable` naming
    every relay's reason (no media can flow, and that must be visible); otherwise settings
    without relays (direct paths only), with a warning logged.
    """
    history = settings.history
    if not settings.relays:
        if settings.relay_only:
            raise RelayUnavailable(
                "media may go only through the charter's TURN relays, and this site has "
                "credentials for none of them"
            )
        return settings
    problems: list[str] = []
    for relay in history.order(settings.relays, time.monotonic()):
        try:
            took = await probe_relay(relay, timeout_s=settings.probe_timeout_s)
        except RelayUnavailable as exc:
            log.warning("TURN relay not usable: %s", exc)
            history.failed(relay.url, time.monotonic())
            problems.append(str(exc))
            continue
        history.succeeded(relay.url)
        log.info("TURN relay %s chosen (allocation in %.1f ms)", relay.url, took * 1000)
        rest = tuple(r for r in settings.relays if r is not relay)
        return IceSettings(
            relays=(relay, *rest),
            relay_only=settings.relay_only,
            probe_timeout_s=settings.probe_timeout_s,
            history=history,
        )
    if settings.relay_only:
        raise RelayUnavailable("no TURN relay can be used: " + "; ".join(problems))
    log.warning("no TURN relay can be used; direct paths only")
    return IceSettings(probe_timeout_s=settings.probe_timeout_s, history=history)
