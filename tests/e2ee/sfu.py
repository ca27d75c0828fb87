"""An in-memory conference through a selective forwarding unit, at the frame level.

Every member has its own :class:`MediaCrypto` (real SFrame keys of one epoch) and its own
:class:`FrameAuthenticity` (real Ed25519 identity keys): frames go ``protect`` → the SFU
double → every other member's ``unprotect`` with no peer binding (one connection carries
everyone's frames, as through an SFU), and the signed frame digests go over a separate,
honest signalling channel (the exchange). Time is simulated: 50 audio frames and 25 video
frames per second per member.

:class:`Sfu` forwards honestly; :class:`HostileSfu` does one attack on the frames it
forwards, chosen by a seeded random source, so every run can be replayed from its seed.
A malicious *member* forging through the SFU is :meth:`Conference.forge`: it protects
frames under another member's KID with the key it holds as a receiver.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from hotline.call.liveness import Action, Decision, LinkView, LivenessSettings, PeerLiveness
from hotline.e2ee import sframe
from hotline.e2ee.frame_digest import FrameAlarm, FrameAuthenticity
from hotline.e2ee.media import AUDIO, VIDEO, MediaCrypto
from hotline.e2ee.messages import Context
from hotline.errors import E2EEError, SFrameError
from hotline.keys import SigningKey

LINE = "line-five-capitals"
CALL = "call-2021-12-06"
EPOCH = 1
AUDIO_INTERVAL_S = 0.020
VIDEO_INTERVAL_S = 0.040
TICK_S = 0.1
#: an Opus "silence" frame (TOC byte, 20 ms CELT, then a near-empty payload)
OPUS_SILENCE = bytes.fromhex("f8fffe")
#: a black VP8 delta frame's payload header (frame tag: inter frame, shown)
VP8_BLANK_DELTA = bytes.fromhex("b10700")


def seed_from_env(default: int | None = None) -> int:
    """The seed of a run: ``HOTLINE_SFU_SEED`` if set, else ``default`` or a fresh one."""
    raw = os.environ.get("HOTLINE_SFU_SEED")
    if raw:
        return int(raw)
    return default if default is not None else random.SystemRandom().randrange(1 << 32)


@dataclass(frozen=True)
class Frame:
    """A protected frame as the SFU sees it: who published it (its connection) and bytes."""

    publisher: str
    kind: str
    data: bytes
    seq: int


@dataclass(frozen=True)
class Delivery:
    recipient: str
    frame: Frame


class Sfu:
    """Forwards every frame, at once, to every member but its publisher."""

    def __init__(self) -> None:
        self.forwarded = 0

    def forward(self, frame: Frame, members: Iterable[str], now: float) -> list[Delivery]:
        self.forwarded += 1
        return [Delivery(r, frame) for r in members if r != frame.publisher]

    def flush(self, members: Iterable[str], now: float) -> list[Delivery]:
        """Frames held back until now (a reordering SFU)."""
        return []


class HostileSfu(Sfu):
    """One attack, on frames chosen by ``random.Random(seed)`` with probability ``rate``.

    ``inject``: adds a frame of random bytes under a valid-looking header (a real KID, a
    plausible counter), or a blank/silence payload under one (``blank``).
    ``replay``: sends a frame it forwarded earlier again.
    ``reorder``: holds a frame back and releases it ``hold`` frames later.
    ``alter``: flips one byte of the frame (header, clear prefix, ciphertext or tag).
    ``drop``: forwards nothing that ``target`` publishes.
    """

    ATTACKS = ("inject", "blank", "replay", "reorder", "alter", "drop")

    def __init__(
        self,
        attack: str,
        seed: int,
        *,
        rate: float = 0.2,
        target: str | None = None,
        hold: int = 5,
    ) -> None:
        super().__init__()
        if attack not in self.ATTACKS:
            raise ValueError(f"unknown attack {attack!r}")
        self.attack = attack
        self.seed = seed
        self.rand = random.Random(seed)
        self.rate = rate
        self.target = target
        self.hold = hold
        self.done: Counter[str] = Counter()
        #: the frames it made up (injected, blank) or changed (altered), and replayed
        self.bogus: list[bytes] = []
        self._seen: list[Frame] = []
        self._held: list[tuple[int, Frame]] = []
        self._count = 0

    def forward(self, frame: Frame, members: Iterable[str], now: float) -> list[Delivery]:
        members = list(members)
        self._count += 1
        self.forwarded += 1
        if self.attack == "drop":
            if frame.publisher == self.target:
                self.done["drop"] += 1
                return []
            return [Delivery(r, frame) for r in members if r != frame.publisher]
        out: list[Frame] = [frame]
        hit = self.rand.random() < self.rate
        if hit and self.attack in ("inject", "blank"):
            out.append(self._made_up(frame, blank=self.attack == "blank"))
        elif hit and self.attack == "replay" and self._seen:
            out.append(self.rand.choice(self._seen))
            self.bogus.append(out[-1].data)
            self.done["replay"] += 1
        elif hit and self.attack == "alter":
            data = bytearray(frame.data)
            i = self.rand.randrange(len(data))
            data[i] ^= 1 << self.rand.randrange(8)
            if frame.kind == VIDEO and i == 0:
                data[i] = frame.data[0] ^ 0x02  # keep the key-frame bit: same prefix length
            out = [Frame(frame.publisher, frame.kind, bytes(data), frame.seq)]
            self.bogus.append(out[0].data)
            self.done["alter"] += 1
        elif hit and self.attack == "reorder":
            self._held.append((self._count + self.hold, frame))
            self.done["reorder"] += 1
            out = []
        self._seen = [*self._seen, frame][-200:]
        deliveries = [Delivery(r, f) for f in out for r in members if r != f.publisher]
        return deliveries + self.flush(members, now)

    def flush(self, members: Iterable[str], now: float) -> list[Delivery]:
        due = [f for at, f in self._held if at <= self._count]
        self._held = [(at, f) for at, f in self._held if at > self._count]
        return [Delivery(r, f) for f in due for r in members if r != f.publisher]

    def _made_up(self, like: Frame, *, blank: bool) -> Frame:
        """A frame under ``like``'s KID with a counter near its own (a valid-looking
        header), whose body the SFU made up: random bytes, or silence / a blank frame."""
        start = 0
        if like.kind == VIDEO:
            start = 3 if like.data[0] & 0x01 else 10
        kid, ctr, _ = sframe.decode_header(like.data, start)
        ctr = max(0, ctr + self.rand.randint(-3, 3))
        header = sframe.encode_header(kid, ctr)
        tag = self.rand.randbytes(16)
        if like.kind == AUDIO:
            body = OPUS_SILENCE if blank else self.rand.randbytes(self.rand.randint(20, 200))
            data = header + body + tag
        else:
            prefix = VP8_BLANK_DELTA if blank else like.data[:start]
            body = bytes(40) if blank else self.rand.randbytes(self.rand.randint(20, 800))
            data = prefix + header + body + tag
        self.bogus.append(data)
        self.done["blank" if blank else "inject"] += 1
        return Frame(like.publisher, like.kind, data, like.seq)


@dataclass
class Member:
    id: str
    key: SigningKey
    crypto: MediaCrypto
    auth: FrameAuthenticity
    #: per other member: its liveness, fed by the frames of its KIDs that arrive
    liveness: dict[str, PeerLiveness] = field(default_factory=dict)
    #: (sender by KID, kind, plaintext) of every frame accepted
    shown: list[tuple[str, str, bytes]] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    alarms: list[tuple[float, FrameAlarm]] = field(default_factory=list)
    decisions: list[tuple[float, str, Decision]] = field(default_factory=list)
    next_audio: float = 0.0
    next_video: float = 0.0
    frame_no: int = 0


class Conference:
    """``ids`` in one epoch, through ``sfu``; ``strict`` digests (the SFU path)."""

    def __init__(
        self,
        ids: Iterable[str],
        sfu: Sfu,
        *,
        seed: int,
        strict: bool = True,
        replay_window: int = sframe.DEFAULT_REPLAY_WINDOW,
        liveness: LivenessSettings | None = None,
    ) -> None:
        self.sfu = sfu
        self.seed = seed
        self.rand = random.Random(seed ^ 0x5F0)
        self.now = 0.0
        self.roster = tuple(sorted(ids))
        keys = {i: SigningKey.generate() for i in self.roster}
        directory = {i: k.public for i, k in keys.items()}
        #: every member's base key of the epoch (each member holds all of them)
        self.base_keys = {i: self.rand.randbytes(32) for i in self.roster}
        #: what each member really sent: (kind, plaintext)
        self.sent: dict[str, set[tuple[str, bytes]]] = {i: set() for i in self.roster}
        self.members: dict[str, Member] = {}
        for i in self.roster:
            crypto = MediaCrypto(replay_window=replay_window)
            crypto.install_receive_keys(
                EPOCH, self.roster, {o: self.base_keys[o] for o in self.roster if o != i}
            )
            crypto.activate_send(EPOCH, self.roster.index(i), self.base_keys[i])
            auth = FrameAuthenticity(
                context=Context(LINE, CALL, 1),
                self_id=i,
                identity_key=keys[i],
                directory=directory,
                strict=strict,
                member_of=crypto.member_of,
            )
            member = Member(i, keys[i], crypto, auth)
            for o in self.roster:
                if o != i:
                    member.liveness[o] = PeerLiveness(
                        offerer=False, settings=liveness or LivenessSettings()
                    )
            self.members[i] = member
        self._seq = 0
        self._next_tick = 0.0
        self.forged: list[bytes] = []
        self.silent: set[str] = set()

    def kid_of(self, member: str) -> int:
        return sframe.make_kid(EPOCH, self.roster.index(member))

    # --- media ---------------------------------------------------------------------------

    def _payload(self, member: Member, kind: str) -> bytes:
        member.frame_no += 1
        tag = f"{member.id}:{kind}:{member.frame_no}:".encode()
        if kind == AUDIO:
            return b"\xfc" + tag + self.rand.randbytes(60)
        return VP8_BLANK_DELTA + tag + self.rand.randbytes(self.rand.randint(200, 1200))

    def _publish(self, member: Member, kind: str) -> None:
        plain = self._payload(member, kind)
        data = member.crypto.protect(kind, plain)
        self.sent[member.id].add((kind, plain))
        self._seq += 1
        frame = Frame(member.id, kind, data, self._seq)
        self._deliver(self.sfu.forward(frame, self.roster, self.now))

    def _deliver(self, deliveries: Iterable[Delivery]) -> None:
        for d in deliveries:
            rx = self.members[d.recipient]
            try:
                plain = rx.crypto.unprotect(d.frame.kind, d.frame.data)  # no peer binding
            except SFrameError as exc:
                rx.refused[exc.reason] += 1
                continue
            sender = self._claimed_sender(d.frame)
            rx.shown.append((sender, d.frame.kind, plain))

    def _claimed_sender(self, frame: Frame) -> str:
        start = 0 if frame.kind == AUDIO else (3 if frame.data[0] & 0x01 else 10)
        kid, _, _ = sframe.decode_header(frame.data, start)
        return self.roster[sframe.kid_sender_index(kid)]

    def forge(self, forger: str, victim: str, count: int, *, ahead: int = 0) -> None:
        """``forger`` (a member) protects ``count`` frames under ``victim``'s KID with the
        key it holds as a receiver, and publishes them through the SFU. Counters: the
        victim's next ones plus ``ahead`` (so that they arrive first and the victim's own
        are later refused as replays), or far ahead of them (``ahead`` large)."""
        base = self.members[victim].crypto.stats().protected + ahead
        key = sframe.SFrameKey(sframe.DEFAULT_SUITE, self.kid_of(victim), self.base_keys[victim])
        for i in range(count):
            plain = b"\xfc" + f"forged by {forger} #{i}".encode() + bytes(40)
            data = key.protect(base + i, plain, b"a")
            self.forged.append(data)
            self._seq += 1
            frame = Frame(forger, AUDIO, data, self._seq)  # its own connection to the SFU
            self._deliver(self.sfu.forward(frame, self.roster, self.now))

    # --- time ----------------------------------------------------------------------------

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            for member in self.members.values():
                if member.id in self.silent:
                    continue
                if self.now >= member.next_audio:
                    member.next_audio += AUDIO_INTERVAL_S
                    self._publish(member, AUDIO)
                if self.now >= member.next_video:
                    member.next_video += VIDEO_INTERVAL_S
                    self._publish(member, VIDEO)
            if self.now >= self._next_tick:
                self._next_tick += TICK_S
                self.tick()
            self.now = round(self.now + AUDIO_INTERVAL_S / 2, 6)

    def tick(self) -> None:
        """What each member's call layer does every tick: hashes in, digests out (over the
        honest exchange), alarms raised, liveness of every other member observed."""
        self._deliver(self.sfu.flush(self.roster, self.now))
        outgoing: list[tuple[str, bytes]] = []
        for member in self.members.values():
            member.auth.frames(member.crypto.take_frame_hashes(), self.now)
            outgoing += [(member.id, body) for body in member.auth.outgoing(self.now)]
        for sender, body in outgoing:
            for rx in self.members.values():
                if rx.id != sender:
                    try:
                        rx.auth.receive(sender, body, self.now)
                    except E2EEError as exc:
                        rx.refused[exc.reason] += 1
        for member in self.members.values():
            member.alarms += [(self.now, a) for a in member.auth.poll(self.now)]
            by_sender = member.crypto.stats().unprotected_by_sender
            for peer, live in member.liveness.items():
                view = LinkView(created=0.0, state="connected", media_total=by_sender.get(peer, 0))
                for d in live.observe(self.now, view, None, keys_ready=True):
                    member.decisions.append((self.now, peer, d))

    # --- what a test reads -------------------------------------------------------------------

    def shown_only_what_was_sent(self, member: str) -> bool:
        """Every frame ``member`` accepted is one its KID's member really sent."""
        return all((kind, plain) in self.sent[s] for s, kind, plain in self.members[member].shown)

    def lost(self, member: str) -> dict[str, float]:
        """When ``member`` first saw each other member lost (liveness ``LOST``)."""
        out: dict[str, float] = {}
        for at, peer, d in self.members[member].decisions:
            if d.action is Action.LOST:
                out.setdefault(peer, at)
        return out
