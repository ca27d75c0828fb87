"""The page's SFrame (static/sframe.js) in real Chromium, byte for byte against Python.

RFC 9605 vectors (suites 4 and 5, and every header encoding), then frames in Hotline's media
format (VP8 key and delta frames with their clear prefix, Opus) made by Python and opened by
JavaScript, and made by JavaScript at the same key and counter: the bytes must be equal, and
Python's MediaCrypto must open them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hotline.e2ee.frame_digest import frame_hash
from hotline.e2ee.media import MediaCrypto
from hotline.e2ee.sframe import SFrameKey, make_kid, suite_by_name
from tests.e2ee.vectors import SFRAME_FILE, load
from tests.ui.browser import chromium

pytestmark = pytest.mark.slow

STATIC = Path(str(resources.files("hotline.ui").joinpath("static")))


@contextlib.asynccontextmanager
async def static_server() -> AsyncIterator[str]:
    """The page's own files on 127.0.0.1 (a secure context: WebCrypto works)."""
    app = web.Application()

    async def blank(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>sframe</title>", content_type="text/html")

    app.router.add_get("/", blank)
    app.router.add_static("/static", STATIC)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


RFC_CHECK = """async (v) => {
  const sf = await import('/static/sframe.js');
  const out = {header: 0, suites: []};
  for (const h of v.header) {
    const enc = sf.hex(sf.encodeHeader(BigInt(h.kid), BigInt(h.ctr)));
    if (enc !== h.encoded) throw new Error(`header ${h.kid}/${h.ctr}: ${enc}`);
    const dec = sf.decodeHeader(sf.unhex(h.encoded));
    if (dec.kid !== BigInt(h.kid) || dec.ctr !== BigInt(h.ctr)) throw new Error('decode');
    out.header++;
  }
  for (const t of v.sframe) {
    const suite = sf.SUITE_BY_VALUE[t.cipher_suite];
    if (!suite) continue;
    const k = await sf.deriveKey(suite, BigInt(t.kid), sf.unhex(t.base_key));
    const ctr = BigInt(t.ctr);
    const ct = await sf.protect(k, ctr, sf.unhex(t.pt), sf.unhex(t.metadata));
    const parsed = sf.decodeHeader(sf.unhex(t.ct));
    const opened = await sf.open(k, sf.unhex(t.ct).subarray(0, parsed.length), ctr,
                                 sf.unhex(t.ct).subarray(parsed.length), sf.unhex(t.metadata));
    out.suites.push({suite: t.cipher_suite, key: sf.hex(k.keyBytes), salt: sf.hex(k.salt),
                     nonce: sf.hex(sf.nonce(k, ctr)), ct: sf.hex(ct), pt: sf.hex(opened)});
  }
  return out;
}"""

CROSS = """async (v) => {
  const sf = await import('/static/sframe.js');
  const suite = sf.SUITES[v.suite];
  const k = await sf.deriveKey(suite, BigInt(v.kid), sf.unhex(v.base_key));
  const out = [];
  for (const f of v.frames) {
    const made = await sf.protectFrame(k, BigInt(f.ctr), f.kind, sf.unhex(f.frame));
    const parsed = sf.parseFrame(f.kind, sf.unhex(f.python));
    const opened = await sf.openFrame(k, parsed);
    const tamper = [];
    for (const at of f.kind === 'video' ? [1, -1] : [-1]) {  // clear prefix (AAD), tag
      const bad = sf.unhex(f.python);
      bad[at < 0 ? bad.length + at : at] ^= 0x04;
      try { await sf.openFrame(k, sf.parseFrame(f.kind, bad)); tamper.push('accepted'); }
      catch (e) { tamper.push(e.reason); }
    }
    out.push({made: sf.hex(made), opened: sf.hex(opened), tamper});
  }
  return out;
}"""


async def test_rfc9605_vectors_in_chromium(tmp_path: Path, vectors_dir: Path) -> None:
    vectors = load(vectors_dir, SFRAME_FILE)
    async with static_server() as origin, chromium(tmp_path) as browser:
        page = await browser.new_page()
        await page.goto(origin + "/")
        # counters and KIDs above 2^53 travel as decimal strings (BigInt in the page)
        as_text = {
            "header": [
                {**h, "kid": str(h["kid"]), "ctr": str(h["ctr"])} for h in vectors["header"]
            ],
            "sframe": [
                {**t, "kid": str(t["kid"]), "ctr": str(t["ctr"])} for t in vectors["sframe"]
            ],
        }
        result: dict[str, Any] = await page.evaluate(RFC_CHECK, as_text)
    assert result["header"] == len(vectors["header"]) == 289
    expected = {t["cipher_suite"]: t for t in vectors["sframe"]}
    assert {r["suite"] for r in result["suites"]} == {4, 5}
    for r in result["suites"]:
        t = expected[r["suite"]]
        assert (r["key"], r["salt"], r["nonce"]) == (t["sframe_key"], t["sframe_salt"], t["nonce"])
        assert r["ct"] == t["ct"]
        assert r["pt"] == t["pt"]


@pytest.mark.parametrize("suite", ["AES_128_GCM_SHA256_128", "AES_256_GCM_SHA512_128"])
async def test_media_frames_cross_python_and_javascript(tmp_path: Path, suite: str) -> None:
    cipher = suite_by_name(suite)
    base_key = bytes(range(7, 7 + cipher.nh))
    epoch, index, roster = 12, 1, ["alpha", "bravo"]
    kid = make_kid(epoch, index)
    key = SFrameKey(cipher, kid, base_key)
    vp8_key = bytes([0x50, 0x42, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01]) + bytes(range(90))
    vp8_delta = bytes([0x31, 0x12, 0x00]) + bytes(range(200, 256)) * 3
    opus = bytes([0xFC]) + bytes(range(60))
    frames = []
    for ctr, kind, frame in [
        (0, "video", vp8_key),
        (1, "video", vp8_delta),
        (2, "audio", opus),
        (300, "video", vp8_delta),
        (2**40 + 5, "audio", opus),
    ]:
        clear = b"" if kind == "audio" else frame[: 10 if frame[0] & 1 == 0 else 3]
        python = key.protect(
            ctr, frame[len(clear) :], (b"v" if kind == "video" else b"a") + clear, clear
        )
        frames.append({"ctr": str(ctr), "kind": kind, "frame": frame.hex(), "python": python.hex()})
    async with static_server() as origin, chromium(tmp_path) as browser:
        page = await browser.new_page()
        await page.goto(origin + "/")
        out = await page.evaluate(
            CROSS, {"suite": suite, "kid": str(kid), "base_key": base_key.hex(), "frames": frames}
        )
    receiver = MediaCrypto(cipher)
    receiver.install_receive_keys(epoch, roster, {"bravo": base_key})
    for f, r in zip(frames, out, strict=True):
        assert r["made"] == f["python"], f"{f['kind']} ctr {f['ctr']}: JS bytes differ"
        assert r["opened"] == f["frame"]
        assert set(r["tamper"]) == {"bad_tag"}
        made = bytes.fromhex(r["made"])
        assert receiver.unprotect(f["kind"], made, "bravo") == bytes.fromhex(f["frame"])


FRAME_HASHES = """async (frames) => {
  const sf = await import('/static/sframe.js');
  const out = [];
  for (const f of frames) out.push(sf.hex(await sf.frameHash(f.kind, sf.unhex(f.data))));
  return out;
}"""


async def test_frame_hashes_equal_in_python_and_javascript(tmp_path: Path) -> None:
    """The hash a signed frame digest names each frame by (docs/protocol.md §11): the page's
    worker computes it for the frames it protects and accepts, the daemon signs and checks
    it against Python's, so the two must agree byte for byte."""
    samples = [
        ("audio", b""),
        ("audio", bytes([0xFC]) + bytes(range(60))),
        ("video", bytes([0x31, 0x12, 0x00]) + bytes(range(256)) * 40),
        ("video", bytes(range(256)) * 200),  # a 50 KB key frame's size
    ]
    async with static_server() as origin, chromium(tmp_path) as browser:
        page = await browser.new_page()
        await page.goto(origin + "/")
        out = await page.evaluate(
            FRAME_HASHES, [{"kind": kind, "data": data.hex()} for kind, data in samples]
        )
    expected = [frame_hash(b"v" if kind == "video" else b"a", data).hex() for kind, data in samples]
    assert out == expected
    assert len(set(out)) == len(out)
