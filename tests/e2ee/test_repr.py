"""No secret in any repr: every object of the key session that holds or touched a key,
printed at every step of join, rekey and leave epochs, shows none of the secrets its
member's random source made (ephemeral seeds, base keys, nonces before they are revealed)."""

from __future__ import annotations

from hotline.e2ee import messages as msgs
from hotline.e2ee.media import MediaCrypto
from hotline.e2ee.sframe import DEFAULT_SUITE, SFrameKey, SFrameSender

from .net import Delivery, Net, Relay


class ReprEverything(Relay):
    """Before each delivery, print every key-holding object of every member."""

    def __init__(self) -> None:
        self.printed: list[str] = []

    def route(self, d: Delivery, net: Net) -> list[Delivery]:
        for m in net.members.values():
            s = m.session
            objects: list[object] = [s, s._pending, s._active, s.media, s.media._send]
            objects += list(s.media._store._entries.values())
            if s._pending is not None:
                objects += [s._pending.ephemeral, s._pending.roster]
            self.printed.extend(repr(o) for o in objects)
            self.printed.append(str(s._pending))
        return [d]


def secret_forms(secret: bytes) -> list[str]:
    return [repr(secret)[2:-1], secret.hex(), repr(bytearray(secret))]


def test_no_secret_in_any_repr() -> None:
    relay = ReprEverything()
    net = Net("abc", relay=relay, rekey_interval_s=30)
    net.set_view("ab", at="ab")
    net.set_view("abc")
    net.advance(31)  # a rekey
    net.set_view("ab", at="ab")
    net.agreed("ab")
    revealed = set()
    for d in net.log:
        if d.msg_type == msgs.MSG_CONFIRM:
            confirm = msgs.parse(d.msg_type, d.body)
            assert isinstance(confirm, msgs.Confirm)
            revealed.add(confirm.reveal)
    made = [b for m in net.members.values() for b in m.random_outputs]
    secrets = [b for b in made if b not in revealed and len(b) > 8]
    assert len(secrets) >= 12 and len(relay.printed) > 100
    printed = "\n".join(relay.printed)
    for secret in secrets:
        for form in secret_forms(secret):
            assert form not in printed, "a secret appears in a repr"


def test_frame_key_objects_print_no_key() -> None:
    base_key = bytes(range(32))
    key = SFrameKey(DEFAULT_SUITE, 0x105, base_key)
    media = MediaCrypto()
    media.activate_send(1, 0, base_key)
    media.install_receive_keys(1, ["a", "b"], {"b": bytearray(base_key)})
    for obj in (key, SFrameSender(key), media, media._send, *media._store._entries.values()):
        text = repr(obj)
        assert all(f not in text for f in secret_forms(base_key)), text
