"""Just enough PNG decoding (stdlib zlib) to read the pixels of Chromium's screenshots."""

from __future__ import annotations

import struct
import zlib


def decode(data: bytes) -> tuple[int, int, int, bytes]:
    """``(width, height, channels, pixels)`` of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    out = bytearray(height * stride)
    prev = bytearray(stride)
    at = 0
    for y in range(height):
        kind, line = raw[at], bytearray(raw[at + 1 : at + 1 + stride])
        at += 1 + stride
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = prev[i]
            corner = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 0xFF
        out[y * stride : (y + 1) * stride] = line
        prev = line
    return width, height, channels, bytes(out)


def region_stats(png: bytes, box: tuple[int, int, int, int], step: int = 4) -> tuple[float, int]:
    """Within ``box`` (x, y, w, h): the share of pixels that are not near-black, and how
    many distinct colours (quantised to 4 bits a channel) appear. Samples every ``step``."""
    width, height, channels, pixels = decode(png)
    x0, y0, w, h = box
    lit, total, colours = 0, 0, set()
    for y in range(max(0, y0), min(height, y0 + h), step):
        for x in range(max(0, x0), min(width, x0 + w), step):
            i = (y * width + x) * channels
            r, g, b = pixels[i], pixels[i + 1], pixels[i + 2]
            total += 1
            if r + g + b > 60:
                lit += 1
            colours.add((r >> 4, g >> 4, b >> 4))
    return (lit / total if total else 0.0), len(colours)
