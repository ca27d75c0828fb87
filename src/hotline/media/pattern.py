"""The synthetic test picture: moving diagonal bands, the terminal's name, a clock, a frame id.

Pure: produces the three planes of a yuv420p picture as bytes (no numpy: aiortc and PyAV
do not depend on it). About 0.2 ms per 640×360 picture; the moving bands keep the VP8
encoder honestly busy, like a camera picture would.
"""

from __future__ import annotations

import hashlib

from hotline.errors import UsageError
from hotline.media.frame_id import FrameId, FrameIdLayout

#: 5×7 glyphs, one int per row, bit 4 = leftmost pixel (HD44780-style character ROM)
FONT_5X7: dict[str, tuple[int, ...]] = {
    " ": (0, 0, 0, 0, 0, 0, 0),
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E),
    "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F),
    "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02),
    "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E),
    "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E),
    "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11),
    "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E),
    "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F),
    "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F),
    "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11),
    "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11),
    "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D),
    "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E),
    "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A),
    "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04),
    "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    ":": (0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00),
    ".": (0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C),
    ",": (0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08),
    "-": (0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00),
    "_": (0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F),
    "/": (0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00),
    "#": (0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A),
    "+": (0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00),
    "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02),
    ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08),
    "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04),
}
GLYPH_W = 5
GLYPH_H = 7
TEXT_FG = 235
TEXT_BG = 16

BAND_PERIOD = 128  #: pixels per light/dark cycle of the moving bands
BAND_SPEED = 3  #: pixels the bands move per frame


def render_text(text: str, scale: int) -> tuple[int, int, bytes]:
    """Render ``text`` (upper-cased; unknown characters as ``?``) with a 1-glyph margin.

    Returns ``(width, height, luma)`` of a light-on-dark box.
    """
    glyphs = [FONT_5X7.get(c, FONT_5X7["?"]) for c in text.upper()]
    cell = (GLYPH_W + 1) * scale
    width = max(1, len(glyphs)) * cell + scale
    height = (GLYPH_H + 2) * scale
    rows: list[bytes] = [bytes([TEXT_BG]) * width] * scale
    fg = bytes([TEXT_FG]) * scale
    bg = bytes([TEXT_BG]) * scale
    for gy in range(GLYPH_H):
        parts = [bg]
        for glyph in glyphs:
            bits = glyph[gy]
            parts.extend(fg if bits >> (GLYPH_W - 1 - gx) & 1 else bg for gx in range(GLYPH_W))
            parts.append(bg)
        row = b"".join(parts)
        rows.extend([row] * scale)
    rows.extend([bytes([TEXT_BG]) * width] * scale)
    return width, height, b"".join(rows)


def _triangle(period: int) -> bytes:
    half = period // 2
    up = [40 + (180 * i) // half for i in range(half)]
    return bytes(up + up[::-1])


class TestPattern:
    """Draws the synthetic picture for one terminal at one size."""

    __test__ = False  # not a pytest test class

    def __init__(self, width: int, height: int, name: str) -> None:
        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise UsageError(f"video size must be positive and even, not {width}x{height}")
        self.width = width
        self.height = height
        self.name = name
        self.layout = FrameIdLayout.for_size(width, height)
        self.scale = max(1, min(4, width // 200))
        repeats = width // BAND_PERIOD + 2
        self._bands = _triangle(BAND_PERIOD) * repeats
        digest = hashlib.sha256(name.encode()).digest()
        cw, ch = width // 2, height // 2
        self._u = bytes([96 + digest[0] % 64]) * (cw * ch)
        self._v = bytes([96 + digest[1] % 64]) * (cw * ch)
        self._name_img = render_text(name, self.scale)
        self._text_cache: tuple[str, tuple[int, int, bytes]] | None = None

    def render(self, index: int, frame_id: FrameId, clock_text: str) -> tuple[bytes, bytes, bytes]:
        """The planes (Y, U, V, tightly packed) of picture number ``index``."""
        w, h = self.width, self.height
        shift = (index * BAND_SPEED) % BAND_PERIOD
        bands = self._bands
        luma = bytearray(
            b"".join(bands[(o := (y + shift) % BAND_PERIOD) : o + w] for y in range(h))
        )
        margin = self.layout.block
        name_h = self._name_img[1]
        text_top = h - margin - name_h
        self._blit(luma, margin, text_top, self._name_img)
        line = f"{clock_text} #{frame_id.counter:06d}"
        if self._text_cache is None or self._text_cache[0] != line:
            self._text_cache = (line, render_text(line, self.scale))
        th = self._text_cache[1][1]
        self._blit(luma, margin, max(0, text_top - th - self.scale), self._text_cache[1])
        self.layout.draw(luma, w, frame_id)
        return bytes(luma), self._u, self._v

    def _blit(self, luma: bytearray, x: int, y: int, image: tuple[int, int, bytes]) -> None:
        w, h, pixels = image
        w_clip = min(w, self.width - x)
        for row in range(min(h, self.height - y)):
            start = (y + row) * self.width + x
            luma[start : start + w_clip] = pixels[row * w : row * w + w_clip]
