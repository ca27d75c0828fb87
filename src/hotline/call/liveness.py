"""Transport liveness for one peer of a call: when a link is lost, rebuilt, recovered or dead.

Pure: the call session observes each peer's transports every tick (connection state, decoded
frames so far) and passes ``now``; :meth:`PeerLiveness.observe` returns what to do. The call,
its roster and its keys never depend on a transport, so a transport can be replaced as often
as needed while the call goes on.

A peer has at most two transports: the *active* one (whose media is shown) and a *pending*
replacement being built beside it. The active one is kept during an outage — if the link
comes back while its ICE consent still holds (about 30 s), media resumes on it at once — and
the replacement is promoted as soon as it connects. Only the offerer of the pair (the lower
terminal id) starts replacements; the answerer answers each newer offer.

Rules (times in seconds, from :class:`LivenessSettings`):

- a transport is *lost* when it is ``failed`` or ``closed``, or when it has carried media and
  then none for ``media_timeout``; a transport that never carried media is lost when it has
  not done so ``connect_timeout`` after it was made, once the call has keys; and a peer
  that has had no transport at all ``connect_timeout`` after the keys were there (the
  answerer whose offer never came: an exchange that drops it) is lost too, so no call shows
  as secured while nothing flows;
- while lost, the offerer starts a replacement at once, and another each time the last one
  has not connected after ``attempt_timeout`` (so a long outage is retried again and again);
- the peer is *recovered* when the active transport carries media again or a replacement
  connects; the outage's length is reported;
- a peer lost for longer than ``peer_timeout`` (the charter's policy) is dropped from the
  call: with no one left the call ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

DEAD_STATES = frozenset({"failed", "closed"})


@dataclass(frozen=True)
class LivenessSettings:
    #: no decoded media for this long on a transport that carried some: it is lost
    media_timeout: float = 2.0
    #: a new transport that has carried no media this long after it was made: it is lost
    connect_timeout: float = 10.0
    #: a replacement that has not connected this long after its offer: try another
    attempt_timeout: float = 3.0
    #: a peer lost this long is dropped from the call (the charter's ``peer_timeout_s``)
    peer_timeout: float = 60.0


@dataclass(frozen=True)
class LinkView:
    """What the session sees of one transport."""

    created: float
    state: str  #: the peer connection's ``connectionState``
    media_total: int  #: decoded frames so far (video + audio)


class Action(Enum):
    LOST = "lost"  #: show the peer as reconnecting (``reason`` says why)
    RECOVERED = "recovered"  #: media flows again (``outage`` says for how long it did not)
    PROMOTE = "promote"  #: the replacement connected: make it the active transport
    CANCEL = "cancel"  #: the active transport came back: close the replacement
    ATTEMPT = "attempt"  #: (offerer) build a replacement and send its offer
    DROP = "drop"  #: lost past the peer timeout: drop the peer from the call


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    outage: float = 0.0


@dataclass
class _Seen:
    total: int = -1
    last_media: float | None = None


@dataclass
class PeerLiveness:
    """The liveness of one peer across all its transports, for the call's lifetime."""

    offerer: bool
    settings: LivenessSettings = field(default_factory=LivenessSettings)
    lost_since: float | None = None
    lost_reason: str = ""
    outages: int = 0
    attempts: int = 0
    last_attempt: float | None = None
    dropped: bool = False
    _active: _Seen = field(default_factory=_Seen)
    _pending: _Seen = field(default_factory=_Seen)
    _active_created: float | None = None
    _pending_created: float | None = None
    _ever_linked: bool = False
    _unlinked_since: float | None = None  #: keys there, never a transport, since

    def attempted(self, now: float) -> int:
        """The offerer made a new offer; returns its attempt number."""
        self.attempts += 1
        self.last_attempt = now
        return self.attempts

    def observe(
        self,
        now: float,
        active: LinkView | None,
        pending: LinkView | None,
        *,
        keys_ready: bool,
    ) -> list[Decision]:
        out: list[Decision] = []
        if self.dropped:
            return out
        if active is not None or pending is not None:
            self._ever_linked = True
        active_flowing = self._flowing(now, active, "active")
        pending_flowing = self._flowing(now, pending, "pending")
        if pending is not None and (pending.state == "connected" or pending_flowing):
            out.append(Decision(Action.PROMOTE))
            self._active, self._pending = self._pending, _Seen()
            self._active_created, self._pending_created = self._pending_created, None
            active, pending = pending, None
            active_flowing = True
        reason = self._lost_reason(now, active, active_flowing, keys_ready)
        if reason is None:
            if self.lost_since is not None:
                out.append(Decision(Action.RECOVERED, outage=now - self.lost_since))
                self.lost_since, self.lost_reason = None, ""
            if pending is not None:
                out.append(Decision(Action.CANCEL))
                self._pending, self._pending_created = _Seen(), None
            return out
        if self.lost_since is None:
            self.lost_since, self.lost_reason = now, reason
            self.outages += 1
            out.append(Decision(Action.LOST, reason=reason))
        if now - self.lost_since >= self.settings.peer_timeout:
            self.dropped = True
            out.append(
                Decision(Action.DROP, reason=f"unreachable for {now - self.lost_since:.0f} s")
            )
            return out
        if self.offerer and (
            pending is None
            or pending.state in DEAD_STATES
            or now - pending.created >= self.settings.attempt_timeout
        ):
            out.append(Decision(Action.ATTEMPT))
        return out

    def _flowing(self, now: float, link: LinkView | None, which: str) -> bool:
        """Whether ``link`` carried media within the media timeout (bookkeeping per slot)."""
        if link is None:
            return False
        seen = self._active if which == "active" else self._pending
        created = self._active_created if which == "active" else self._pending_created
        if created != link.created:  # a different transport in this slot: start afresh
            seen = _Seen()
            if which == "active":
                self._active, self._active_created = seen, link.created
            else:
                self._pending, self._pending_created = seen, link.created
        if link.media_total != seen.total:
            if link.media_total > 0:  # frames decoded since the last look
                seen.last_media = now
            seen.total = link.media_total
        return (
            link.state not in DEAD_STATES
            and seen.last_media is not None
            and now - seen.last_media < self.settings.media_timeout
        )

    def _lost_reason(
        self, now: float, active: LinkView | None, flowing: bool, keys_ready: bool
    ) -> str | None:
        if active is None:  # between a transport closing and its replacement, or none yet
            if self.lost_since is not None:
                return "no transport"
            if keys_ready and not self._ever_linked:
                if self._unlinked_since is None:
                    self._unlinked_since = now
                if now - self._unlinked_since >= self.settings.connect_timeout:
                    return f"no transport {self.settings.connect_timeout:g} s after the keys"
            return None
        if active.state in DEAD_STATES:
            return f"transport {active.state}"
        if flowing:
            return None
        if self._active.last_media is not None:
            return f"no media for {self.settings.media_timeout:g} s"
        if keys_ready and now - active.created >= self.settings.connect_timeout:
            return f"no media {self.settings.connect_timeout:g} s after connecting"
        return None
