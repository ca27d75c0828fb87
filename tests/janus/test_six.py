"""A conference of six Python terminals through a real Janus, with real keys, real signed
frame digests and a hostile forwarder at the point Janus controls.

Five members start in one epoch (a real key agreement: ``tests.e2ee.net``), a sixth joins
mid-call and one leaves, each with a new epoch. Every member decrypts every other member's
video and audio in each epoch (counted per sender from what its frame crypto accepted).
The SFU's reach is modelled where it really is: after Janus terminates SRTP it hands each
subscriber whatever payload it likes, so a subscription's frame crypto is wrapped by
:class:`SfuTap`, which substitutes frames the test chooses for frames Janus delivered, right
before ``unprotect``. What it delivers is refused and counted (made-up frames: ``bad_tag``; a
member that left: ``expired_key``), or, when a member colludes (frames under another
member's KID, which every member holds, delivered on that member's subscription), accepted
by SFrame and caught by the signed frame digests (``docs/protocol.md`` §11): an
``unauthenticated_frame`` alarm naming the victim at every other member.

All six terminals here are Python ones in one process (the SFU's hand on a subscription is
modelled in aiortc's frame crypto); browser terminals through Janus are in
``tests/janus/test_browser_conference.py``. The figures the test prints are in
``docs/performance.md``.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from hotline.e2ee import sframe
from hotline.e2ee.frame_digest import FORGED, UNAUTHENTICATED_FRAME, FrameAlarm, FrameAuthenticity
from hotline.e2ee.media import AUDIO, MediaCrypto
from hotline.e2ee.messages import Context
from hotline.errors import E2EEError, SFrameError
from hotline.media.aiortc_patch import FrameCrypto
from hotline.media.sources import MediaSource, SyntheticAudioTrack, SyntheticVideoTrack
from hotline.sfu.conference import SfuConference
from tests.e2ee.net import Net
from tests.janus.conference import room_id, run_in_host
from tests.janus.server import JanusServer, janus_in_lab
from tests.netlab import Host

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FIRST = ("berlin", "london", "paris", "rome", "washington")
JOINER = "ottawa"
LEAVER = "rome"
ALL = (*FIRST, JOINER)
#: a member colluding with the SFU forges frames of the victim
FORGER, VICTIM = "paris", "london"
WAIT_S = 60.0
#: frames (video + audio) each member must accept from each other member in an epoch
PER_EPOCH = 30
#: six terminals share one process and event loop here (30 subscriptions decoded in it),
#: where a call gives each its own: smaller and fewer pictures than the 4-terminal tests
WIDTH, HEIGHT, FPS = 288, 64, 8


def small_source(name: str) -> MediaSource:
    return MediaSource(
        audio=SyntheticAudioTrack(),
        video=SyntheticVideoTrack(name, WIDTH, HEIGHT, FPS),
        description=f"synthetic {name}",
    )


@pytest.fixture(scope="module")
def sfu_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Host, JanusServer]]:
    with janus_in_lab(tmp_path_factory.mktemp("janus-six"), "sfu6", seed=6) as pair:
        yield pair


class SfuTap:
    """The frame crypto of one subscription, with the SFU's hand on it: ``substitute``
    queues makers of payloads that replace the next audio frames Janus delivers (a maker
    gets the real frame, as the SFU has it). Every substitution's fate is recorded."""

    def __init__(self, inner: FrameCrypto) -> None:
        self.inner = inner
        self.queue: list[Callable[[bytes], bytes]] = []
        self.outcomes: Counter[str] = Counter()

    def protect(self, kind: str, frame: bytes) -> bytes:
        return self.inner.protect(kind, frame)

    def unprotect(self, kind: str, data: bytes) -> bytes:
        if kind != AUDIO or not self.queue:
            return self.inner.unprotect(kind, data)
        made = self.queue.pop(0)(data)
        try:
            out = self.inner.unprotect(kind, made)
        except SFrameError as exc:
            self.outcomes[exc.reason] += 1
            raise  # what Janus would cause: the frame is refused, counted, never played
        self.outcomes["accepted"] += 1
        return out


def made_up(rand: random.Random) -> Callable[[bytes], bytes]:
    """Silence under the real frame's header (its KID, its counter + 1) and a made-up tag:
    what a server injecting silence under E2EE produces."""

    def make(real: bytes) -> bytes:
        kid, ctr, _ = sframe.decode_header(real)
        body = bytes.fromhex("f8fffe") + rand.randbytes(16)
        return sframe.encode_header(kid, ctr + 1) + body

    return make


def forged(forger: MediaCrypto, ahead: int, victim: int | None = None) -> Callable[[bytes], bytes]:
    """The forger protects Opus under the victim's KID (the key it holds as a receiver), at
    the real frame's counter + ``ahead``. ``victim``: the victim's index in the roster (None:
    the real frame is the victim's, and the victim later signs other frames there)."""

    def make(real: bytes) -> bytes:
        kid, ctr, _ = sframe.decode_header(real)
        if victim is not None:
            kid = sframe.make_kid(sframe.kid_epoch(kid), victim)
        key = forger._store.lookup_entry(kid).key
        return key.protect(ctr + ahead, b"\xfc forged by " + FORGER.encode() + bytes(40), b"a")

    return make


def test_six_terminals_join_leave_injection_and_forgery_through_janus(
    sfu_host: tuple[Host, JanusServer],
) -> None:
    host, janus = sfu_host
    rand = random.Random(6)
    cryptos = {i: MediaCrypto() for i in ALL}
    net = Net(ALL, seed=6)
    for i in ALL:
        net.session_kw = {"key_sink": cryptos[i]}
        net.add_member(i)

    def agree(ids: tuple[str, ...], at: tuple[str, ...] | None = None) -> int:
        net.set_view(ids, at=at)
        for _ in range(200):
            try:
                return net.agreed(ids)
            except AssertionError:
                net.advance(0.25)
        return net.agreed(ids)

    epochs = [agree(FIRST)]
    ctx = Context("line-six-capitals", "call-six", 1)
    auths = {
        i: FrameAuthenticity(
            context=ctx,
            self_id=i,
            identity_key=net.keys[i],
            directory=net.directory,
            strict=True,  # through an SFU an unsigned frame is an alarm
            member_of=cryptos[i].member_of,
        )
        for i in ALL
    }
    taps: dict[tuple[str, str], SfuTap] = {}
    active: set[str] = set(FIRST)
    #: frames each member accepted from each other member, by epoch (from its frame crypto)
    accepted: Counter[tuple[str, str, int]] = Counter()
    alarms: list[tuple[str, float, FrameAlarm]] = []
    digest_errors: list[tuple[str, str, str]] = []
    lag: list[float] = []
    room, secret = room_id(), secrets.token_hex(16)
    figures: dict[str, object] = {}

    def tapped(me: str) -> Callable[[str], FrameCrypto]:
        def make(member: str) -> FrameCrypto:
            taps[me, member] = SfuTap(cryptos[me].for_peer(member))
            return taps[me, member]

        return make

    def digest_round(*, force: str | None = None) -> None:
        """What each member's call layer does each tick: take the hashes its frame crypto
        recorded, sign and send digests over signalling (honest, in memory), raise alarms."""
        now = time.monotonic()
        for i in sorted(active):
            hashes = cryptos[i].take_frame_hashes()
            for r in hashes.received:
                accepted[i, r.member, sframe.kid_epoch(r.kid)] += 1
            auths[i].frames(hashes, now)
        for i in sorted(active):
            for body in auths[i].outgoing(now, force=force == i):
                for o in sorted(active - {i}):
                    try:
                        auths[o].receive(i, body, now)
                    except E2EEError as exc:  # counted by reason in its stats
                        digest_errors.append((o, i, exc.reason))
        for i in sorted(active):
            alarms.extend((i, now, a) for a in auths[i].poll(now))

    async def signalling() -> None:
        while True:
            digest_round()
            before = time.monotonic()
            await asyncio.sleep(0.2)
            lag.append(time.monotonic() - before - 0.2)

    async def every_pair_in(epoch: int, what: str) -> float:
        started = time.monotonic()
        while time.monotonic() - started < WAIT_S:
            if all(accepted[rx, tx, epoch] >= PER_EPOCH for rx in active for tx in active - {rx}):
                return time.monotonic() - started
            await asyncio.sleep(0.25)
        low = {
            (rx, tx): accepted[rx, tx, epoch]
            for rx in active
            for tx in active - {rx}
            if accepted[rx, tx, epoch] < PER_EPOCH
        }
        raise AssertionError(f"{what}: epoch {epoch} not flowing between {low}")

    async def every_pair_shown(terminals: dict[str, SfuConference], ids: tuple[str, ...]) -> None:
        """Wait (up to WAIT_S; the asserts at the end judge) until each member decoded ten
        video frames and ten audio packets from each other member."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not all(
            terminals[i].received(o).video_frames >= 10
            and terminals[i].received(o).audio_packets >= 10
            for i in ids
            for o in set(ids) - {i}
        ):
            await asyncio.sleep(0.25)

    async def main() -> dict[str, SfuConference]:
        terminals = {
            i: SfuConference(
                self_id=i,
                url=janus.url,
                room=room,
                secret=secret,
                crypto=cryptos[i],
                source=small_source(i),
                members=FIRST,
                frame_crypto_for=tapped(i),
            )
            for i in ALL
        }
        pump = asyncio.create_task(signalling())
        try:
            started = time.monotonic()
            await terminals[FIRST[0]].create_room(publishers=len(ALL))
            for i in FIRST:
                await terminals[i].join()
            figures["five_joined_s"] = round(time.monotonic() - started, 1)
            figures["first_epoch_flowing_s"] = round(
                await every_pair_in(epochs[0], "five members"), 1
            )
            # every member decrypts every other member's video and audio
            await every_pair_shown(terminals, FIRST)

            # a sixth member joins mid-call: a new epoch, everyone sends and receives in it
            started = time.monotonic()
            epochs.append(agree(ALL))
            for i in FIRST:
                terminals[i].member_joined(JOINER)
            terminals[JOINER].members = set(ALL) - {JOINER}
            active.add(JOINER)
            await terminals[JOINER].join()
            await every_pair_in(epochs[1], "after the join")
            figures["join_flowing_s"] = round(time.monotonic() - started, 1)
            # the joiner's pictures of the leaver start at its first key frame: let them
            # reach the count asserted below before the leaver goes
            await every_pair_shown(terminals, ALL)
            for i in ALL:
                assert cryptos[i].stats().sending_epoch == epochs[1], i

            # the SFU injects silence into every member's subscription to washington
            for i in set(ALL) - {"washington"}:
                taps[i, "washington"].queue.extend(made_up(rand) for _ in range(5))
            # paris, colluding with the SFU, has its frames under london's KID delivered on
            # every other member's subscription to london
            for i in set(ALL) - {FORGER, VICTIM}:
                taps[i, VICTIM].queue.extend(forged(cryptos[FORGER], 5) for _ in range(3))
            # and on its own feed: the subscription to paris takes only paris's KIDs
            victim = sorted(ALL).index(VICTIM)  # its place in epoch 2's roster
            for i in set(ALL) - {FORGER, VICTIM}:  # london holds no receive key of its own
                taps[i, FORGER].queue.extend(forged(cryptos[FORGER], 5, victim) for _ in range(2))
            forged_at = time.monotonic()
            deadline = forged_at + 10
            # until every member judged all three (a member may name them in two alarms, a
            # tick apart: the frames arrive on different ticks)
            while time.monotonic() < deadline and not all(
                any(a.member == VICTIM for m, _, a in alarms if m == i)
                and auths[i].stats()[UNAUTHENTICATED_FRAME].get(VICTIM, 0) >= 3
                for i in set(ALL) - {FORGER, VICTIM}
            ):
                await asyncio.sleep(0.2)
            figures["alarm_after_s"] = round(
                min((t for _, t, a in alarms if a.member == VICTIM), default=99.0) - forged_at, 2
            )

            # rome leaves: a new epoch among the rest, its keys erased everywhere
            started = time.monotonic()
            digest_round(force=LEAVER)  # its last digests go out before it hangs up
            rest = tuple(sorted(set(ALL) - {LEAVER}))
            epochs.append(agree(rest, at=rest))
            active.discard(LEAVER)
            for i in rest:
                await terminals[i].member_left(LEAVER)
            await terminals.pop(LEAVER).close()
            await every_pair_in(epochs[2], "after the leave")
            figures["leave_flowing_s"] = round(time.monotonic() - started, 1)
            # the SFU, still holding rome's stream, slips rome's frames into a subscription
            for i in rest:
                other = next(o for o in sorted(rest) if o != i)
                taps[i, other].queue.append(
                    lambda _real: cryptos[LEAVER].protect(AUDIO, b"\xfc from rome" + bytes(40))
                )
            await asyncio.sleep(3.0)
            digest_round()
            return terminals
        finally:
            pump.cancel()
            await asyncio.gather(*(t.close() for t in terminals.values()))

    terminals = run_in_host(host, main)
    rest = set(ALL) - {LEAVER}
    assert set(terminals) == rest
    assert len(set(epochs)) == 3 and epochs == sorted(epochs), epochs

    # per member and sender: frames accepted in each epoch
    table = {
        rx: {tx: [accepted[rx, tx, e] for e in epochs] for tx in sorted(set(ALL) - {rx})}
        for rx in ALL
    }
    print(f"six terminals through Janus: epochs {epochs}, figures {figures}")
    print(f"digests refused: {digest_errors}")
    print(f"  longest event-loop lag of the signalling tick: {max(lag):.2f} s")
    for m, _, a in alarms:
        print(f"  alarm at {m}: {a.message} ({a.reason})")
    for rx, row in table.items():
        print(f"  {rx:10} accepted per sender per epoch: {row}")

    for rx in rest:
        for tx in set(ALL) - {rx}:
            got = terminals[rx].received(tx)
            if JOINER not in (rx, tx):
                assert accepted[rx, tx, epochs[0]] >= PER_EPOCH, (rx, tx)
            assert accepted[rx, tx, epochs[1]] >= PER_EPOCH, (rx, tx)
            if rx in rest and tx in rest:
                assert accepted[rx, tx, epochs[2]] >= PER_EPOCH, (rx, tx)
            assert got.video_frames >= 10 and got.audio_packets >= 10, (rx, tx, got)
            assert got.corrupt_shown == 0, (rx, tx)
        # the leaver holds no key of the last epoch
        assert epochs[2] not in cryptos[LEAVER].stats().receive_epochs
        assert not terminals[rx].refused, (rx, terminals[rx].refused)

    # injected silence: refused (bad tag) and counted at each of the five members
    for i in set(ALL) - {"washington"}:
        assert taps[i, "washington"].outcomes == {"bad_tag": 5}, (i, taps[i, "washington"])
        assert cryptos[i].stats().rejected.get("bad_tag", 0) >= 5, cryptos[i].stats()

    # forged frames: SFrame accepts them (every member holds london's key), the digests do
    # not: an alarm naming london at every other member, within the 2 s deadline + a tick
    for i in set(ALL) - {FORGER, VICTIM}:
        assert taps[i, VICTIM].outcomes["accepted"] == 3, (i, taps[i, VICTIM].outcomes)
        named = [a for m, _, a in alarms if m == i]
        assert named and {(a.member, a.reason) for a in named} == {(VICTIM, FORGED)}, named
        assert "london" in named[0].message
        stats = auths[i].stats()
        assert stats[UNAUTHENTICATED_FRAME] == {VICTIM: 3}, (i, stats)
    assert not [a for m, _, a in alarms if m in (FORGER, VICTIM)], alarms
    assert isinstance(figures["alarm_after_s"], float) and figures["alarm_after_s"] <= 3.0

    # paris's forgeries on its own feed: refused before decryption (wrong sender)
    for i in set(ALL) - {FORGER, VICTIM}:
        assert taps[i, FORGER].outcomes == {"wrong_sender": 2}, (i, taps[i, FORGER].outcomes)
        assert cryptos[i].stats().rejected.get("wrong_sender") == 2, cryptos[i].stats()

    # rome's frames after it left: its keys are erased at every remaining member
    for i in rest:
        other = next(o for o in sorted(rest) if o != i)
        # refused as a KID erased with its sender (``expired_key``), never decrypted
        assert taps[i, other].outcomes["expired_key"] == 1, (i, taps[i, other].outcomes)
