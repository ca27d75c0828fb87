"""RTP payload for redundant audio (RED, RFC 2198): build and parse, strictly.

Opus in-band FEC (LBRR) rebuilds only the one frame before a packet; in a burst of lost
packets every frame but the last is left to concealment. A RED packet carries, before its
primary frame, a copy of the frame(s) sent before it, so the first packet after a burst brings
back the frame before it whole, and that copy's own LBRR rebuilds the one before that.

Each block is an SFrame-protected Opus frame exactly as it was sent as a primary (the
redundancy is added after protection, as Chromium does it after its encoded-frame
transform): nothing is encrypted twice, and a redundant block is authenticated on its own
before it is played (:mod:`hotline.media.audio_path`).

Layout (RFC 2198 §3): one 4-byte header per redundant block (F=1, block PT, 14-bit timestamp
offset, 10-bit length), a 1-byte header for the primary (F=0, PT), then the blocks' data in
the same order, the primary last.
"""

from __future__ import annotations

from dataclasses import dataclass

from hotline.errors import RemoteError

#: a redundant block's length is 10 bits, its timestamp offset 14 bits
MAX_BLOCK = 0x3FF
MAX_OFFSET = 0x3FFF
#: more redundant blocks than this in one packet is refused (Chromium sends at most 2)
MAX_BLOCKS = 4


class RedMalformed(RemoteError):
    """A RED payload whose headers do not describe it (never decrypted, never played)."""

    reason = "red_malformed"


@dataclass(frozen=True)
class RedBlock:
    """One block: ``offset`` samples before the packet's RTP timestamp (0 for the primary)."""

    payload_type: int
    offset: int
    data: bytes


def build(primary_pt: int, primary: bytes, redundant: list[RedBlock]) -> bytes:
    """A RED payload: ``redundant`` (oldest first) then ``primary``.

    A block that does not fit the header's fields is left out (it is only redundancy)."""
    headers = bytearray()
    body = bytearray()
    for block in redundant:
        if not (0 < block.offset <= MAX_OFFSET and len(block.data) <= MAX_BLOCK):
            continue
        if not 0 <= block.payload_type <= 0x7F:
            raise ValueError("payload type out of range")
        headers.append(0x80 | block.payload_type)
        headers += ((block.offset << 10) | len(block.data)).to_bytes(3, "big")
        body += block.data
    if not 0 <= primary_pt <= 0x7F:
        raise ValueError("payload type out of range")
    headers.append(primary_pt)
    return bytes(headers + body + primary)


def parse(payload: bytes) -> tuple[list[RedBlock], RedBlock]:
    """``(redundant blocks oldest first, primary)``; raises :class:`RedMalformed`.

    Refused: an empty payload, a header chain that runs off the end, more than
    :data:`MAX_BLOCKS` redundant blocks, block lengths beyond the payload, a zero timestamp
    offset or offsets that do not decrease toward the primary, an empty primary."""
    pos = 0
    headers: list[tuple[int, int, int]] = []
    while True:
        if pos >= len(payload):
            raise RedMalformed("RED header runs off the end of the payload")
        first = payload[pos]
        if not first & 0x80:  # the primary's 1-byte header ends the chain
            primary_pt = first & 0x7F
            pos += 1
            break
        if len(headers) >= MAX_BLOCKS:
            raise RedMalformed("too many RED blocks")
        if pos + 4 > len(payload):
            raise RedMalformed("RED block header runs off the end of the payload")
        word = int.from_bytes(payload[pos + 1 : pos + 4], "big")
        headers.append((first & 0x7F, word >> 10, word & 0x3FF))
        pos += 4
    blocks: list[RedBlock] = []
    previous_offset = MAX_OFFSET + 1
    for pt, offset, length in headers:
        if offset == 0 or offset >= previous_offset:
            raise RedMalformed("RED timestamp offsets must decrease toward the primary")
        previous_offset = offset
        if pos + length > len(payload):
            raise RedMalformed("RED block longer than the payload")
        blocks.append(RedBlock(pt, offset, payload[pos : pos + length]))
        pos += length
    primary = payload[pos:]
    if not primary:
        raise RedMalformed("RED packet without a primary block")
    return blocks, RedBlock(primary_pt, 0, primary)
