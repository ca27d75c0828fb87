// The page's frame crypto: every encoded frame of every peer connection passes through here
// (RTCRtpScriptTransform). Keys come from the daemon (over the page's WebSocket, then
// postMessage); without a send key nothing is sent, and a frame that does not open under a
// key of the link's peer is dropped and counted: no key, no media.

import * as sf from "./sframe.js";

const receive = new Map();   // kid (BigInt) -> {k, member, window}
const rosters = new Map();   // epoch -> [member ids, sorted]
let sender = null;           // {k, ctr: BigInt}
let pauseReason = "no epoch is active yet";
const counters = { protected: 0, decrypted: 0, rejected: {}, refused: {} };
const perLink = new Map();   // link -> {decrypted, rejected}
const receivers = new Set(); // transformers of received media (key frame requests)

function count(table, reason) { table[reason] = (table[reason] || 0) + 1; }
function linkStats(link) {
  let s = perLink.get(link);
  if (!s) { s = { decrypted: 0, rejected: 0, sent: 0 }; perLink.set(link, s); }
  return s;
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

// key operations must apply in order (derivation is asynchronous)
let keyChain = Promise.resolve();
self.onmessage = (event) => {
  const msg = event.data;
  if (msg.type === "keys") keyChain = keyChain.then(() => onKeys(msg)).catch(() => {});
  else if (msg.type === "stats") {
    self.postMessage({ type: "stats", counters, links: Object.fromEntries(perLink),
                       sending: sender ? sender.epoch : 0, pauseReason });
  } else if (msg.type === "ping") self.postMessage({ type: "pong" });
};

function sendTransform(kind, link) {
  return async (frame, controller) => {
    const s = sender;
    if (!s) { count(counters.refused, "no_media_key"); return; }  // dropped: fail closed
    try {
      const ctr = s.ctr; s.ctr += 1n;
      frame.data = (await sf.protectFrame(s.k, ctr, kind, new Uint8Array(frame.data))).buffer;
      counters.protected++;
      const ls = linkStats(link);
      ls.sent++;
      ls[`sent_${kind}`] = (ls[`sent_${kind}`] || 0) + 1;
      controller.enqueue(frame);
    } catch (e) {
      count(counters.refused, e.reason || "error");
    }
  };
}

function receiveTransform(kind, link, peer) {
  return async (frame, controller) => {
    try {
      const parsed = sf.parseFrame(kind, new Uint8Array(frame.data));
      const entry = receive.get(parsed.kid);
      if (!entry) throw new sf.FrameError("unknown_kid");
      if (entry.member !== peer) throw new sf.FrameError("wrong_sender");
      const repeat = entry.window.has(parsed.ctr);
      if (!repeat) entry.window.check(parsed.ctr);  // too old: refused before decryption
      const plain = await sf.openFrame(entry.k, parsed);  // a forgery fails here (bad_tag)
      // an authentic frame received twice (the browser can hand a frame over again after
      // a retransmission): dropped and counted apart, it says nothing about an attack
      if (repeat) throw new sf.FrameError(`duplicate_${kind}`);
      entry.window.accept(parsed.ctr);
      frame.data = plain.buffer;
      counters.decrypted++;
      const ls = linkStats(link);
      ls.decrypted++;
      ls[`decrypted_${kind}`] = (ls[`decrypted_${kind}`] || 0) + 1;
      controller.enqueue(frame);
    } catch (e) {
      count(counters.rejected, e.reason || "error");  // dropped, never shown
      linkStats(link).rejected++;
    }
  };
}

self.onrtctransform = (event) => {
  const t = event.transformer;
  const { side, kind, link, peer } = t.options;
  const fn = side === "send" ? sendTransform(kind, link) : receiveTransform(kind, link, peer);
  linkStats(link)[`${side}_${kind}_transforms`] = (linkStats(link)[`${side}_${kind}_transforms`] || 0) + 1;
  if (side === "recv" && kind === "video") receivers.add(t);
  t.readable
    .pipeThrough(new TransformStream({ transform: fn }))
    .pipeTo(t.writable)
    .catch(() => {})
    .finally(() => receivers.delete(t));
};

self.postMessage({ type: "ready" });
