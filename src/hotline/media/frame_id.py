"""A machine-readable frame id drawn into synthetic video as large luma blocks.

64 bits, most significant first: a 24-bit frame counter, the low 32 bits of the sender's
``CLOCK_MONOTONIC`` in milliseconds when the frame was handed to the sender, and a CRC-8
over those 7 bytes. Processes on one host share ``CLOCK_MONOTONIC``, so a receiver on the
same host gets the one-way latency as ``now_ms - send_ms`` (mod 2**32) with no clock sync.

The 64 bits are drawn as 2 rows of 32 square blocks (16 px, aligned to VP8's 16×16
macroblocks; 8 px for frames narrower than 544 px), one block margin from the top-left
corner: a 1 is light (luma 224), a 0 dark (luma 32). The reader averages the centre
quarter of each block and thresholds at 128, which survives VP8 at 250 kbps and 640×360.

Pure: works on a luma plane given as bytes plus its stride.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hotline.errors import UsageError

COUNTER_BITS = 24
TIME_BITS = 32
CRC_BITS = 8
TOTAL_BITS = COUNTER_BITS + TIME_BITS + CRC_BITS  # 64
COLUMNS = 32
ROWS = TOTAL_BITS // COLUMNS  # 2

#: CRC-8 with polynomial x^8 + x^2 + x + 1 (0x07), initial value 0, no reflection (CRC-8/SMBUS)
CRC8_POLY = 0x07

LUMA_ONE = 224
LUMA_ZERO = 32
LUMA_THRESHOLD = 128

COUNTER_MOD = 1 << COUNTER_BITS
TIME_MOD = 1 << TIME_BITS


def crc8(data: bytes) -> int:
    """CRC-8/SMBUS (poly 0x07, init 0): ``crc8(b"123456789") == 0xF4``."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ CRC8_POLY) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def monotonic_ms() -> int:
    """The low 32 bits of ``CLOCK_MONOTONIC`` in milliseconds (what a frame id carries)."""
    return (time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000_000) % TIME_MOD


def latency_ms(send_ms: int, recv_ms: int) -> int:
    """One-way latency from two 32-bit millisecond stamps of the same monotonic clock."""
    return (recv_ms - send_ms) % TIME_MOD


@dataclass(frozen=True)
class FrameId:
    counter: int  #: frame number modulo 2**24
    send_ms: int  #: low 32 bits of the sender's CLOCK_MONOTONIC in ms

    def to_bits(self) -> int:
        """The 64-bit value drawn into the frame (counter, time, CRC-8)."""
        body = ((self.counter % COUNTER_MOD) << TIME_BITS) | (self.send_ms % TIME_MOD)
        return (body << CRC_BITS) | crc8(body.to_bytes(7, "big"))

    @classmethod
    def from_bits(cls, value: int) -> FrameId | None:
        """Parse 64 bits; ``None`` when the CRC does not match (an unreadable frame)."""
        body = value >> CRC_BITS
        if crc8(body.to_bytes(7, "big")) != value & 0xFF:
            return None
        return cls(counter=body >> TIME_BITS, send_ms=body % TIME_MOD)


@dataclass(frozen=True)
class FrameIdLayout:
    """Where the id blocks sit in a frame of a given size."""

    block: int
    x0: int
    y0: int

    @classmethod
    def for_size(cls, width: int, height: int) -> FrameIdLayout:
        block = 16 if width >= (COLUMNS + 2) * 16 else 8
        if width < (COLUMNS + 2) * block or height < (ROWS + 2) * block:
            raise UsageError(f"video size {width}x{height} is too small for a frame id")
        return cls(block=block, x0=block, y0=block)

    @property
    def width(self) -> int:
        return COLUMNS * self.block

    @property
    def height(self) -> int:
        return ROWS * self.block

    def draw(self, luma: bytearray, stride: int, frame_id: FrameId) -> None:
        """Draw ``frame_id`` into a luma plane (``stride`` bytes per row), in place."""
        bits = frame_id.to_bits()
        b = self.block
        one = bytes([LUMA_ONE]) * b
        zero = bytes([LUMA_ZERO]) * b
        for row in range(ROWS):
            segment = b"".join(
                one if (bits >> (TOTAL_BITS - 1 - (row * COLUMNS + col))) & 1 else zero
                for col in range(COLUMNS)
            )
            for y in range(self.y0 + row * b, self.y0 + (row + 1) * b):
                start = y * stride + self.x0
                luma[start : start + len(segment)] = segment

    def read(self, luma: bytes | bytearray | memoryview, stride: int) -> FrameId | None:
        """Read the frame id back; ``None`` if the blocks do not form a valid id."""
        b = self.block
        q = b // 4  # sample the centre half of the block in each direction
        span = b // 2
        value = 0
        for row in range(ROWS):
            for col in range(COLUMNS):
                x = self.x0 + col * b + q
                y0 = self.y0 + row * b + q
                total = 0
                for y in range(y0, y0 + span):
                    start = y * stride + x
                    total += sum(luma[start : start + span])
                bit = 1 if total > LUMA_THRESHOLD * span * span else 0
                value = (value << 1) | bit
        return FrameId.from_bits(value)
