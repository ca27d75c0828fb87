// The page's frame crypto: every encoded frame of every peer connection passes through here
// (RTCRtpScriptTransform). Keys come from the daemon (over the page's WebSocket, then
// postMessage); without a send key nothing is sent, and a frame that does not open under a
// key of the link's peer is dropped and counted: no key, no media.

import * as sf from "./sframe.js";

const receive = new Map();   // kid (BigInt) -> {k, member, window}
const rosters = new Map();   // epoch -> [member ids, sorted]
let sender = null;           // {k, ctr: BigInt}
let pauseReason = "no epoch is active yet";
// by_sender: frames accepted per member (liveness per member through the SFU)
const counters = { protected: 0, decrypted: 0, rejected: {}, refused: {}, by_sender: {} };
const perLink = new Map();   // link -> {decrypted, rejected}
const receivers = new Set(); // transformers of received media (key frame requests)
// the hash of every frame protected and accepted, for the daemon to sign and check (signed
// frame digests): [kid, ctr, hash] and [kid, ctr, hash, member], kid and ctr as decimal
const hashes = { sent: [], received: [], overflow: 0, since: null };
const MAX_HASHES = 8192;
let hashing = 0;  // accepted frames whose hash is being computed
// counters being protected and hashed, per kid: a sent hash is handed over only once every
// lower counter of its kid is done, so the daemon gets them in counter order
const inflight = new Map();   // kid (decimal) -> Set of counters (BigInt)

function count(table, reason) { table[reason] = (table[reason] || 0) + 1; }
function linkStats(link) {
  let s = perLink.get(link);
  if (!s) { s = { decrypted: 0, rejected: 0, sent: 0 }; perLink.set(link, s); }
  return s;
}
function keepHash(list, entry) {
  if (list.length >= MAX_HASHES) { list.shift(); hashes.overflow++; }
  if (hashes.since == null) hashes.since = Date.now();
  list.push(entry);
}
function takeHashes() {
  const ready = [], held = [];
  for (const entry of hashes.sent) {
    const busy = inflight.get(entry[0]);
    const ctr = BigInt(entry[1]);
    (busy && [...busy].some((c) => c < ctr) ? held : ready).push(entry);
  }
  // since: when the oldest hash taken was recorded (the daemon measures how late it is)
  const out = { sent: ready, received: hashes.received, overflow: hashes.overflow,
                since: hashes.since };
  hashes.sent = held; hashes.received = []; hashes.overflow = 0;
  hashes.since = held.length ? Date.now() : null;
  return out;
}
function b64(text) { return Uint8Array.from(atob(text), (c) => c.charCodeAt(0)); }

async function onKeys(msg) {
  if (msg.op === "install") {
    const suite = sf.SUITES[msg.suite];
    if (!suite) { count(counters.refused, "unsupported_suite"); return; }
    rosters.set(msg.epoch, msg.roster);
    for (const [member, key] of Object.entries(msg.keys)) {
      const kid = sf.makeKid(msg.epoch, msg.roster.indexOf(member));
      receive.set(kid, { k: await sf.deriveKey(suite, kid, b64(key)), member,
                         window: new sf.ReplayWindow() });
    }
    // the new keys open the next key frame: ask for one now so that video resumes
    for (const t of receivers) t.sendKeyFrameRequest().catch(() => {});
  } else if (msg.op === "send") {
    const suite = sf.SUITES[msg.suite];
    if (!suite) { sender = null; pauseReason = `suite ${msg.suite} not supported`; return; }
    const kid = sf.makeKid(msg.epoch, msg.index);
    sender = { k: await sf.deriveKey(suite, kid, b64(msg.key)), ctr: 0n, epoch: msg.epoch };
  } else if (msg.op === "pause") {
    sender = null; pauseReason = msg.reason;
  } else if (msg.op === "erase_through") {
    for (const kid of [...receive.keys()]) if (sf.kidEpoch(kid) <= msg.epoch) receive.delete(kid);
    if (sender && sender.epoch <= msg.epoch) { sender = null; pauseReason = "keys erased"; }
  } else if (msg.op === "erase") {
    for (const kid of [...receive.keys()]) if (sf.kidEpoch(kid) === msg.epoch) receive.delete(kid);
  } else if (msg.op === "forget") {
    for (const [kid, entry] of [...receive]) if (entry.member === msg.member) receive.delete(kid);
  } else if (msg.op === "end") {
    receive.clear(); rosters.clear(); sender = null; pauseReason = "the call ended";
  }
}

// The hash channel: the worker's own WebSocket to the daemon's UI (the same origin, so the
// same login cookie and Origin check as the page's), bound to this page by a token the
// daemon gave it over the page's socket. The worker sends its frame hashes and counters on
// it itself, off the page's main thread (the signed digests' 2 s deadline through an SFU);
// without it (not open yet, or closed) they go with the stats replies as before.
let call = null;      // the call the keys are for (the daemon routes hash reports by it)
let channel = null;   // the WebSocket, once open
let seq = 0;          // counters snapshots, in order (the daemon keeps the newest)
const CHANNEL_MS = 100;

function snapshot() {
  seq++;
  return { protected: counters.protected, decrypted: counters.decrypted,
           rejected: counters.rejected, refused: counters.refused,
           by_sender: counters.by_sender, seq };
}

let channelToken = null;
function openChannel(token) {
  if (channel) { try { channel.close(); } catch (e) { /* closing anyway */ } }
  channel = null;
  channelToken = token;
  const ws = new WebSocket(`ws://${self.location.host}/api/hashes`);
  ws.onopen = () => { ws.send(JSON.stringify({ type: "hello", token })); channel = ws; };
  ws.onclose = (ev) => {
    if (channel === ws) channel = null;
    // refused (4003: not the engine page's token any more): stay closed; else try again
    if (ev.code !== 4003 && channelToken === token) {
      setTimeout(() => { if (channelToken === token && !channel) openChannel(token); }, 1000);
    }
  };
}

// withCounters: the interval's reports carry the worker's counters too; a report sent as a
// frame leaves carries its hashes alone
function sendHashes(withCounters = true) {
  if (!channel || channel.readyState !== WebSocket.OPEN || call == null) return;
  if (!hashes.sent.length && !hashes.received.length && !hashes.overflow) return;
  channel.send(JSON.stringify({ type: "hashes", call, hashes: takeHashes(),
                                crypto: withCounters ? snapshot() : null }));
}
setInterval(sendHashes, CHANNEL_MS);

// key operations must apply in order (derivation is asynchronous)
let keyChain = Promise.resolve();
self.onmessage = (event) => {
  const msg = event.data;
  if (msg.type === "keys" && msg.call != null) call = msg.call;
  if (msg.type === "keys") keyChain = keyChain.then(() => onKeys(msg)).catch(() => {});
  else if (msg.type === "stats") {
    const direct = channel != null && channel.readyState === WebSocket.OPEN;
    self.postMessage({ type: "stats", counters: snapshot(), links: Object.fromEntries(perLink),
                       sending: sender ? sender.epoch : 0, pauseReason, channel: direct,
                       hashes: direct ? null : takeHashes() });
  } else if (msg.type === "channel") openChannel(msg.token);
  else if (msg.type === "ping") self.postMessage({ type: "pong" });
};

function sendTransform(kind, link) {
  return async (frame, controller) => {
    const s = sender;
    if (!s) { count(counters.refused, "no_media_key"); return; }  // dropped: fail closed
    const ctr = s.ctr; s.ctr += 1n;
    const kid = s.k.kid.toString();
    if (!inflight.has(kid)) inflight.set(kid, new Set());
    const busy = inflight.get(kid);
    busy.add(ctr);
    const done = () => {
      busy.delete(ctr);
      if (!busy.size && inflight.get(kid) === busy && sender !== s) inflight.delete(kid);
    };
    try {
      const out = await sf.protectFrame(s.k, ctr, kind, new Uint8Array(frame.data));
      frame.data = out.buffer;
      // the hash is handed to the channel before the frame leaves: a stall of this worker
      // after it (seconds, on a starved host) cannot hold back the signing of a frame the
      // others already have (a frame whose hash fails is dropped: it could never be signed)
      const h = await sf.frameHash(kind, out);
      keepHash(hashes.sent, [kid, ctr.toString(), sf.hex(h)]);
      done();
      sendHashes(false);
      counters.protected++;
      const ls = linkStats(link);
      ls.sent++;
      ls[`sent_${kind}`] = (ls[`sent_${kind}`] || 0) + 1;
      controller.enqueue(frame);
    } catch (e) {
      count(counters.refused, e.reason || "error");
      done();
    }
  };
}

function receiveTransform(kind, link, peer, strict) {
  return async (frame, controller) => {
    try {
      const data = new Uint8Array(frame.data);
      const parsed = sf.parseFrame(kind, data);
      const entry = receive.get(parsed.kid);
      if (!entry) throw new sf.FrameError("unknown_kid");
      if (entry.member !== peer) throw new sf.FrameError("wrong_sender");
      // where the digests bind frames to senders (strict), a frame is never shown while
      // the record of hashes for them is full: its hash would fall out unchecked
      if (strict && hashes.received.length + hashing >= MAX_HASHES) {
        throw new sf.FrameError("hash_overflow");
      }
      const repeat = entry.window.has(parsed.ctr);
      if (!repeat) entry.window.check(parsed.ctr);  // too old: refused before decryption
      const plain = await sf.openFrame(entry.k, parsed);  // a forgery fails here (bad_tag)
      // an authentic frame received twice (the browser can hand a frame over again after
      // a retransmission): dropped and counted apart, it says nothing about an attack
      if (repeat) throw new sf.FrameError(`duplicate_${kind}`);
      entry.window.accept(parsed.ctr);
      const hashed = sf.frameHash(kind, data);  // the frame as it arrived, copied now
      frame.data = plain.buffer;
      counters.decrypted++;
      count(counters.by_sender, entry.member);
      const ls = linkStats(link);
      ls.decrypted++;
      ls[`decrypted_${kind}`] = (ls[`decrypted_${kind}`] || 0) + 1;
      controller.enqueue(frame);
      const member = entry.member;
      hashing++;
      hashed.then((h) => keepHash(hashes.received, [parsed.kid.toString(), parsed.ctr.toString(),
                                                    sf.hex(h), member]))
        .catch(() => count(counters.rejected, "frame_hash"))
        .finally(() => { hashing--; });
    } catch (e) {
      count(counters.rejected, e.reason || "error");  // dropped, never shown
      linkStats(link).rejected++;
    }
  };
}

self.onrtctransform = (event) => {
  const t = event.transformer;
  const { side, kind, link, peer, strict } = t.options;
  const fn = side === "send" ? sendTransform(kind, link)
                             : receiveTransform(kind, link, peer, strict === true);
  linkStats(link)[`${side}_${kind}_transforms`] = (linkStats(link)[`${side}_${kind}_transforms`] || 0) + 1;
  if (side === "recv" && kind === "video") receivers.add(t);
  t.readable
    .pipeThrough(new TransformStream({ transform: fn }))
    .pipeTo(t.writable)
    .catch(() => {})
    .finally(() => receivers.delete(t));
};

self.postMessage({ type: "ready" });
