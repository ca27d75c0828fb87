"""The topology rule and the call's room (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hotline.charter import SfuEndpoint
from hotline.sfu.janus import MAX_ID
from hotline.sfu.topology import choose, conference_spec, room_of, room_secret

SFU = (SfuEndpoint("http://127.0.0.1:8088/janus"),)


def test_mesh_up_to_the_limit_sfu_above_it() -> None:
    assert [choose(n, 3, SFU) for n in (2, 3, 4, 10)] == ["mesh", "mesh", "sfu", "sfu"]
    assert choose(10, 3, ()) == "mesh"  # a charter without an SFU keeps calls a mesh


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_every_member_derives_the_same_valid_room(line: str, call: str) -> None:
    room = room_of(line, call)
    assert 0 < room <= MAX_ID
    assert room == room_of(line, call)
    assert room_secret(line, call) == room_secret(line, call)
    assert len(room_secret(line, call)) == 32


def test_rooms_differ_between_calls_and_lines() -> None:
    assert room_of("l", "call-1") != room_of("l", "call-2")
    assert room_of("l1", "call-1") != room_of("l2", "call-1")
    assert room_secret("l", "call-1") != room_secret("l", "call-2")


def test_the_spec_carries_the_pin() -> None:
    pinned = SfuEndpoint("https://sfu.example:8089/janus", "sha256:" + "ab" * 32)
    spec = conference_spec(self_id="a", line_id="l", call_id="c", sfu=pinned, publishers=4)
    assert spec.tls_fingerprint == bytes.fromhex("ab" * 32)
    assert spec.room == room_of("l", "c")
