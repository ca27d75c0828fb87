// SFrame (RFC 9605) with WebCrypto, in the same frame format as hotline/e2ee/media.py.
//
//   video (VP8):  clear prefix (10 bytes on key frames, 3 on delta frames) || SFrame ciphertext
//   audio (Opus): SFrame ciphertext
//   SFrame ciphertext = header (KID, CTR) || AES-GCM ciphertext || tag
//   AAD               = header || kind byte ("v" or "a") || clear prefix
//   KID               = epoch << 8 | sender index (the sender's place in the sorted roster)
//
// Only the AES-GCM suites (4 and 5); the page refuses the others (fail closed).

export const SUITES = {
  AES_128_GCM_SHA256_128: { value: 4, hash: "SHA-256", nh: 32, nk: 16, nn: 12, nt: 16 },
  AES_256_GCM_SHA512_128: { value: 5, hash: "SHA-512", nh: 64, nk: 32, nn: 12, nt: 16 },
};
export const SUITE_BY_VALUE = Object.fromEntries(
  Object.entries(SUITES).map(([name, s]) => [s.value, { ...s, name }]));

export const VP8_KEY_FRAME_PREFIX = 10;
export const VP8_DELTA_FRAME_PREFIX = 3;
const KIND_BYTE = { video: 0x76, audio: 0x61 };
const ENC = new TextEncoder();

export class FrameError extends Error {
  constructor(reason, message) { super(message || reason); this.reason = reason; }
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function beBytes(value, length) {  // value: BigInt, big-endian, exactly `length` bytes
  const out = new Uint8Array(length);
  for (let i = length - 1; i >= 0; i--) { out[i] = Number(value & 0xffn); value >>= 8n; }
  return out;
}

function minimalBytes(value) {
  let n = 1;
  while (value >> BigInt(8 * n) > 0n) n++;
  return beBytes(value, n);
}

export function makeKid(epoch, senderIndex) { return (BigInt(epoch) << 8n) | BigInt(senderIndex); }
export function kidEpoch(kid) { return Number(kid >> 8n); }
export function kidSenderIndex(kid) { return Number(kid & 0xffn); }

/** The minimal SFrame header for kid and ctr (BigInts in [0, 2^64)). */
export function encodeHeader(kid, ctr) {
  let config = 0;
  const tail = [];
  if (kid < 8n) config |= Number(kid) << 4;
  else { const b = minimalBytes(kid); config |= 0x80 | ((b.length - 1) << 4); tail.push(b); }
  if (ctr < 8n) config |= Number(ctr);
  else { const b = minimalBytes(ctr); config |= 0x08 | (b.length - 1); tail.push(b); }
  return concat(new Uint8Array([config]), ...tail);
}

/** Parse the header at data[offset:]: {kid, ctr, length}. */
export function decodeHeader(data, offset = 0) {
  if (data.length <= offset) throw new FrameError("malformed_frame", "empty SFrame ciphertext");
  const config = data[offset];
  let pos = offset + 1;
  const read = (n) => {
    if (pos + n > data.length) throw new FrameError("malformed_frame", "SFrame header truncated");
    let v = 0n;
    for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(data[pos + i]);
    pos += n;
    return v;
  };
  const kid = config & 0x80 ? read(((config >> 4) & 0x07) + 1) : BigInt((config >> 4) & 0x07);
  const ctr = config & 0x08 ? read((config & 0x07) + 1) : BigInt(config & 0x07);
  return { kid, ctr, length: pos - offset };
}

function labels(suite, kid) {
  const tail = concat(beBytes(kid, 8), beBytes(BigInt(suite.value), 2));
  return [concat(ENC.encode("SFrame 1.0 Secret key "), tail),
          concat(ENC.encode("SFrame 1.0 Secret salt "), tail)];
}

/** sframe_key and sframe_salt of kid (RFC 9605 §4.4.2), the key ready for AES-GCM. */
export async function deriveKey(suite, kid, baseKey) {
  const ikm = await crypto.subtle.importKey("raw", baseKey, "HKDF", false, ["deriveBits"]);
  const [keyLabel, saltLabel] = labels(suite, kid);
  const salt = new Uint8Array(suite.nh);  // HKDF-Extract with an empty salt: Nh zeros
  const keyBytes = new Uint8Array(await crypto.subtle.deriveBits(
    { name: "HKDF", hash: suite.hash, salt, info: keyLabel }, ikm, suite.nk * 8));
  const saltBytes = new Uint8Array(await crypto.subtle.deriveBits(
    { name: "HKDF", hash: suite.hash, salt, info: saltLabel }, ikm, suite.nn * 8));
  const key = await crypto.subtle.importKey("raw", keyBytes, "AES-GCM", false,
                                            ["encrypt", "decrypt"]);
  return { suite, kid, key, salt: saltBytes, keyBytes };
}

export function nonce(k, ctr) {
  const out = k.salt.slice();
  const c = beBytes(ctr, k.suite.nn);
  for (let i = 0; i < out.length; i++) out[i] ^= c[i];
  return out;
}

/** prefix || header || AES-GCM(plaintext), AAD = header || metadata. */
export async function protect(k, ctr, plaintext, metadata = new Uint8Array(0),
                              prefix = new Uint8Array(0)) {
  const header = encodeHeader(k.kid, ctr);
  const ct = new Uint8Array(await crypto.subtle.encrypt(
    { name: "AES-GCM", iv: nonce(k, ctr), additionalData: concat(header, metadata),
      tagLength: k.suite.nt * 8 }, k.key, plaintext));
  return concat(prefix, header, ct);
}

/** Decrypt the body after an already parsed header. */
export async function open(k, header, ctr, body, metadata = new Uint8Array(0)) {
  if (body.length < k.suite.nt) throw new FrameError("malformed_frame", "shorter than its tag");
  try {
    return new Uint8Array(await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: nonce(k, ctr), additionalData: concat(header, metadata),
        tagLength: k.suite.nt * 8 }, k.key, body));
  } catch (e) {
    throw new FrameError("bad_tag", "SFrame tag does not verify");
  }
}

/** The clear prefix length of a frame of `kind` (VP8: bit 0 of byte 0 is 0 on key frames). */
export function clearLength(kind, frame) {
  if (kind === "audio") return 0;
  if (kind !== "video" || frame.length === 0) throw new FrameError("malformed_frame", "empty frame");
  return frame[0] & 0x01 ? VP8_DELTA_FRAME_PREFIX : VP8_KEY_FRAME_PREFIX;
}

/** Protect one encoded frame of `kind` under sender key k at counter ctr. */
export async function protectFrame(k, ctr, kind, frame) {
  const n = clearLength(kind, frame);
  if (frame.length < n) throw new FrameError("invalid_media_frame", "VP8 frame shorter than its prefix");
  const clear = frame.subarray(0, n);
  const metadata = concat(new Uint8Array([KIND_BYTE[kind]]), clear);
  return protect(k, ctr, frame.subarray(n), metadata, clear);
}

/** Parse a protected frame: {clear, kid, ctr, header, body, metadata}. */
export function parseFrame(kind, data) {
  const start = clearLength(kind, data);
  if (kind === "video" && data.length <= start) {
    throw new FrameError("malformed_frame", "protected VP8 frame ends inside its clear prefix");
  }
  const clear = data.subarray(0, start);
  const { kid, ctr, length } = decodeHeader(data, start);
  const header = data.subarray(start, start + length);
  const body = data.subarray(start + length);
  const metadata = concat(new Uint8Array([KIND_BYTE[kind]]), clear);
  return { clear, kid, ctr, header, body, metadata };
}

/** Open a parsed frame with key k: the encoded frame (clear prefix || plaintext). */
export async function openFrame(k, parsed) {
  const pt = await open(k, parsed.header, parsed.ctr, parsed.body, parsed.metadata);
  return parsed.clear.length ? concat(parsed.clear, pt) : pt;
}

/** A sliding replay window per KID (as hotline/e2ee/sframe.py's ReplayWindow). */
export class ReplayWindow {
  constructor(size = 1024) { this.size = BigInt(size); this.top = -1n; this.seen = new Set(); }
  check(ctr) {
    if (this.top >= 0n && ctr + this.size <= this.top) throw new FrameError("replay", "too old");
    if (this.seen.has(ctr)) throw new FrameError("replay", "replayed frame");
  }
  /** True if ctr was accepted already (an exact repeat, inside the window). */
  has(ctr) { return this.seen.has(ctr); }
  accept(ctr) {
    this.check(ctr);
    this.seen.add(ctr);
    if (ctr > this.top) {
      this.top = ctr;
      for (const c of this.seen) if (c + this.size <= this.top) this.seen.delete(c);
    }
  }
}

const FRAME_HASH_LABEL = ENC.encode("hotline.e2ee.v1.frame-hash");

/** The hash that names one protected frame in a signed frame digest (docs/protocol.md §11):
 *  SHA-256("hotline.e2ee.v1.frame-hash" || kind byte || protected frame)[0:16]. The input
 *  is copied before this returns, so the frame's buffer may be handed on at once. */
export async function frameHash(kind, data) {
  const input = concat(FRAME_HASH_LABEL, new Uint8Array([KIND_BYTE[kind]]), data);
  return new Uint8Array(await crypto.subtle.digest("SHA-256", input)).slice(0, 16);
}

export function hex(bytes) { return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(""); }
export function unhex(text) {
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(2 * i, 2), 16);
  return out;
}
