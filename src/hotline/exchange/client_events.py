"""What the exchange client's core hands out and takes in: the events for the application,
the requests (actions) for its I/O adapter, the exchanges it may connect to, the state a
terminal persists, and what a close from the exchange means. Pure data; no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Union
from urllib.parse import urlsplit, urlunsplit

from hotline.charter import SignedCharter
from hotline.envelope import Envelope
from hotline.errors import (
    AuthenticationError,
    DuplicateTerminal,
    ExchangeUnavailable,
    HotlineError,
    LimitExceeded,
    UsageError,
)
from hotline.exchange import tls
from hotline.exchange.frames import (
    CLOSE_DUPLICATE,
    CLOSE_POLICY,
    CLOSE_REMOVED,
    CLOSE_SUPERSEDED,
    CLOSE_TOO_BIG,
    CLOSE_TRY_LATER,
    WS_PATH,
    is_loopback,
    known_reason,
)

# --- events for the application -------------------------------------------------------------


@dataclass(frozen=True)
class EnvelopeReceived:
    """An envelope for this terminal, verified against the charter, once."""

    envelope: Envelope


@dataclass(frozen=True)
class PresenceChanged:
    """The terminals of the line now online (this one included), as the exchange says."""

    online: frozenset[str]


@dataclass(frozen=True)
class CharterUpdated:
    """A newer charter of the line, verified (and accepted by ``accept_charter``)."""

    charter: SignedCharter


@dataclass(frozen=True)
class ConnectionChanged:
    connected: bool
    #: ``connected``, or why the connection ended or failed (the exchange's close reason,
    #: ``closed``, an error's reason such as ``unavailable``...)
    reason: str


@dataclass(frozen=True)
class EnvelopeRejected:
    """The exchange refused an envelope this terminal sent (``seq``), or refused it only for
    ``recipient`` (a broadcast to a full queue); ``seq`` None: the charter it pushed. The
    reason is one of ``frames.PROTOCOL_REASONS`` or ``"unlisted"``; ``recipient`` is a
    terminal of the charter or None."""

    seq: int | None
    reason: str
    recipient: str | None = None


@dataclass(frozen=True)
class Refusal:
    """Something this terminal refused from the exchange: a delivery
    (``delivery_<reason>``: replay, bad_signature, stale, misrouted...), a charter
    (``charter_<reason>``), or the exchange itself on a reconnection (``tls_pin``,
    ``exchange_id``). Counted in :attr:`ClientCore.stats` too."""

    reason: str
    #: what was refused, without contents (at most ``ratelog.MAX_DETAIL`` characters)
    detail: str


ClientEvent = Union[  # noqa: UP007
    EnvelopeReceived,
    PresenceChanged,
    CharterUpdated,
    ConnectionChanged,
    EnvelopeRejected,
    Refusal,
]

#: refusals of the exchange itself: logged at WARNING on every connection attempt
EXCHANGE_REFUSALS = frozenset({"tls_pin", "exchange_id"})


# --- what the core asks the adapter to do ---------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One exchange a client may use: its URL and pinned certificate."""

    url: str
    tls_fingerprint: str | None
    fingerprint: bytes | None

    @classmethod
    def make(cls, url: str, tls_fingerprint: str | None, charter: SignedCharter) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise UsageError(f"exchange URL {url!r}: expected ws:// or wss://host:port")
        if parts.path in ("", "/"):
            url = urlunsplit((parts.scheme, parts.netloc, WS_PATH, "", ""))
        fingerprint: bytes | None = None
        if parts.scheme == "wss":
            if tls_fingerprint is None:
                for endpoint in charter.charter.exchanges:
                    if _base_url(endpoint.url) == _base_url(url) and endpoint.tls_fingerprint:
                        tls_fingerprint = endpoint.tls_fingerprint
            if tls_fingerprint is None:
                raise UsageError(
                    f"no pinned TLS fingerprint for {_base_url(url)}: the charter lists none "
                    "and none was given"
                )
            fingerprint = tls.parse_fingerprint(tls_fingerprint)
        elif not is_loopback(parts.hostname):
            raise UsageError(f"plain ws:// is only allowed to a loopback address, not {url}")
        return cls(url, tls_fingerprint, fingerprint)

    @property
    def health_url(self) -> str:
        """Where the exchange says whether it is up (``GET``, 200: up)."""
        parts = urlsplit(self.url)
        scheme = "https" if parts.scheme == "wss" else "http"
        return f"{scheme}://{parts.netloc}/healthz"


def make_endpoints(
    url: str,
    tls_fingerprint: str | None,
    fallbacks: Sequence[tuple[str, str | None]],
    charter: SignedCharter,
) -> list[Endpoint]:
    """The exchanges to use, in order of preference, each once."""
    endpoints = [Endpoint.make(url, tls_fingerprint, charter)]
    for extra_url, extra_fingerprint in fallbacks:
        endpoint = Endpoint.make(extra_url, extra_fingerprint, charter)
        if all(endpoint.url != e.url for e in endpoints):
            endpoints.append(endpoint)
    return endpoints


@dataclass(frozen=True)
class Connect:
    """Open a WebSocket to ``endpoint`` (TLS pinned to its fingerprint); report the outcome
    with ``connection_made`` or ``connection_failed`` and this ``attempt``."""

    endpoint: Endpoint
    attempt: int


@dataclass(frozen=True)
class Probe:
    """Ask ``endpoint`` whether it answers (``GET /healthz``, pinned); report it with
    ``probe_result``."""

    endpoint: Endpoint


@dataclass(frozen=True)
class Disconnect:
    """Close the connection of ``attempt``; the core has already moved on."""

    attempt: int
    reason: str


Action = Union[Connect, Probe, Disconnect]  # noqa: UP007


@dataclass
class ClientState:
    """What a terminal may persist to resume exactly across its own restarts."""

    #: the last sequence number this terminal used (the next ones are higher)
    last_seq: int = 0
    #: per sender, the highest sequence number the application has taken
    seen: dict[str, int] = field(default_factory=dict)
    #: the exchange store that :attr:`delivered` refers to
    store_id: str | None = None
    #: the highest delivery id the application has taken
    delivered: int = 0


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", "")).lower()


def close_error(code: int | None, reason: str) -> HotlineError:
    """What an exchange closing a connection before its welcome means."""
    if code == CLOSE_DUPLICATE:
        return DuplicateTerminal(
            "the exchange refused this connection: another connection with this terminal's "
            "identity is online and they kept replacing each other. Two copies of this "
            "terminal folder are running (here and elsewhere): stop one."
        )
    if code == CLOSE_TRY_LATER:
        return LimitExceeded(f"the exchange refused the connection: {reason}", reason=reason)
    if code in (CLOSE_POLICY, CLOSE_TOO_BIG):
        return AuthenticationError(f"the exchange refused us: {reason}", reason=reason or "auth")
    return ExchangeUnavailable(f"the exchange closed the connection ({code}) {reason}".strip())


def close_reason(code: int | None, text: str = "") -> str:
    """A reason from a fixed set for a connection the exchange (or the network) closed."""
    if text:
        return known_reason(text)
    if code == CLOSE_TOO_BIG:
        return "too_large"
    if code == CLOSE_SUPERSEDED:
        return "superseded"
    if code == CLOSE_REMOVED:
        return "removed_from_charter"
    if code == CLOSE_DUPLICATE:
        return DuplicateTerminal.reason
    if code is None:
        return "connection_lost"
    return f"closed_{code}" if 1000 <= code <= 1015 or 4000 <= code <= 4010 else "closed_other"
