// The page as this terminal's media engine (--engine browser): the browser's WebRTC with
// the camera and microphone, every frame through the SFrame worker. The daemon drives it
// over the page's WebSocket (hotline/ui/browser_engine.py documents the messages); the
// page never sees a long-term key, only the call's SFrame base keys.

const VIDEO_CODECS = ["video/vp8", "video/rtx"];
const AUDIO_CODECS = ["audio/opus"];
const GATHER_TIMEOUT_MS = 3000;
// a link shown in place of another shows its picture once it has one, or after this long
const SHOW_WAIT_MS = 3000;

function only(kind, allowed) {
  const caps = RTCRtpReceiver.getCapabilities(kind);
  return caps.codecs.filter((c) => allowed.includes(c.mimeType.toLowerCase()));
}

function gathered(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") { resolve(); return; }
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

export class PageEngine {
  constructor(send, elements) {
    this.send = send;
    this.el = elements;
    this.links = new Map();  // link id -> {pc, peer, call, stream}
    this.call = null;
    this.shown = null;
    this.framesShown = 0;
    this.workerStats = { counters: { protected: 0, decrypted: 0, rejected: {}, refused: {} }, links: {} };
    this.pendingHashes = { sent: [], received: [], overflow: 0, since: null };
    this.timer = null;
    this.gallery = elements.gallery || null;  // speaker view and strip (gallery.js)
  }

  async start() {
    this.worker = new Worker("/static/worker.js", { type: "module" });
    await new Promise((resolve) => {
      this.worker.onmessage = (e) => { if (e.data.type === "ready") resolve(); };
    });
    this.worker.onmessage = (e) => {
      if (e.data.type === "stats") {
        this.workerStats = e.data;
        const h = e.data.hashes;  // taken from the worker with each stats reply: keep them
        if (h) {
          const p = this.pendingHashes;
          p.sent.push(...h.sent); p.received.push(...h.received); p.overflow += h.overflow;
          if (h.since != null && (p.since == null || h.since < p.since)) p.since = h.since;
        }
        const waiting = this.statsWaiters || [];
        this.statsWaiters = [];
        waiting.forEach((resolve) => resolve());
      }
    };
    // the camera at 640×480 @ 20; a terminal set below the default 640×360 (a small
    // measuring terminal) gets its --width/--height/--fps
    const cap = this.el.capture || {};
    const small = cap.width && cap.height && (cap.width < 640 || cap.height < 360);
    this.local = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true },
      video: small ? { width: cap.width, height: cap.height, frameRate: Math.min(20, cap.fps || 20) }
                   : { width: 640, height: 480, frameRate: 20 },
    });
    this.el.self.srcObject = this.local;
    this.el.noVideo.textContent = "Waiting for the other side's video";
    this.watchFrames();
    this.timer = setInterval(() => this.report(), 500);
    // the frame hashes (and the worker's counters) more often than the full report: the
    // daemon signs and checks them against a 2 s deadline (signed frame digests)
    this.hashTimer = setInterval(() => this.reportHashes(), 200);
  }

  async reportHashes() {
    if (this.reporting || this.call == null) return;  // the full report takes them then
    // the worker sends its hashes itself on its own channel (op_hash_channel) while open
    if (this.workerStats.channel) return;
    await this.freshWorkerStats();
    const h = this.pendingHashes;
    if (!h.sent.length && !h.received.length && !h.overflow) return;
    this.pendingHashes = { sent: [], received: [], overflow: 0, since: null };
    this.send({ type: "hashes", call: this.call, hashes: h, crypto: this.cryptoCounters() });
  }

  cryptoCounters() {
    const c = this.workerStats.counters || {};
    return { protected: c.protected || 0, decrypted: c.decrypted || 0,
             rejected: c.rejected || {}, refused: c.refused || {},
             by_sender: c.by_sender || {}, seq: c.seq || 0 };
  }

  async op_hash_channel(msg) {
    // the daemon's token for the worker's own channel (the hashes off this main thread)
    this.worker.postMessage({ type: "channel", token: msg.token });
    return {};
  }

  watchFrames() {
    // frames painted, and the longest gap between two of them (a freeze) since the first
    const video = this.el.remote;
    this.lastFrameAt = null;
    this.maxGapMs = 0;
    const onFrame = (now) => {
      this.framesShown++;
      if (this.lastFrameAt != null) this.maxGapMs = Math.max(this.maxGapMs, now - this.lastFrameAt);
      this.lastFrameAt = now;
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  async handle(msg) {
    if (msg.type === "keys") { this.call = msg.call; this.worker.postMessage(msg); return; }
    let reply = { type: "reply", id: msg.id, ok: true };
    try {
      const extra = await this[`op_${msg.op}`](msg);
      reply = { ...reply, ...(extra || {}) };
    } catch (e) {
      reply = { type: "reply", id: msg.id, ok: false, error: String(e && e.message || e) };
    }
    if (msg.id != null) this.send(reply);
  }

  attachTransforms(link, transceiver) {
    const kind = transceiver.receiver.track.kind;
    transceiver.sender.transform = new RTCRtpScriptTransform(this.worker,
      { side: "send", kind, link: link.id, peer: link.peer });
    transceiver.receiver.transform = new RTCRtpScriptTransform(this.worker,
      { side: "recv", kind, link: link.id, peer: link.peer });
    transceiver.setCodecPreferences(kind === "video" ? only("video", VIDEO_CODECS)
                                                     : only("audio", AUDIO_CODECS));
  }

  async op_open(msg) {
    const mode = msg.mode || "mesh";
    if (!["mesh", "publish", "subscribe"].includes(mode)) throw new Error(`unknown link mode ${mode}`);
    this.call = msg.call;
    // the daemon's explicit servers only (never a public STUN server), relay-only if so
    const pc = new RTCPeerConnection({
      iceServers: msg.ice_servers || [],
      iceTransportPolicy: msg.ice_policy === "relay" ? "relay" : "all",
      bundlePolicy: "max-bundle",
    });
    const link = { id: msg.link, peer: msg.peer, call: msg.call, pc, stream: new MediaStream() };
    this.links.set(msg.link, link);
    pc.onconnectionstatechange = () => {
      this.send({ type: "link", link: link.id, state: pc.connectionState });
    };
    pc.ontrack = (e) => {
      link.stream.addTrack(e.track);
      if (this.isShown(link)) this.show(link);
    };
    link.mode = mode;
    if (link.mode === "publish") {
      // through the SFU, upstream: send-only, the page offers (the daemon talks to Janus)
      for (const track of this.local.getTracks()) {
        pc.addTransceiver(track, { direction: "sendonly", streams: [this.local] });
      }
    } else if (link.mode === "mesh") {
      // addTrack (not addTransceiver): an answerer's remote offer takes these transceivers
      // over (JSEP), so the transforms are in place before any SDP is applied
      for (const track of this.local.getTracks()) pc.addTrack(track, this.local);
    }
    // "subscribe" (one member's feed through the SFU): receive-only, Janus offers; the
    // receive transforms go on in op_accept, before the answer
    for (const t of pc.getTransceivers()) this.attachTransforms(link, t);
    return {};
  }

  async op_offer(msg) {
    const pc = this.links.get(msg.link).pc;
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    return { sdp: pc.localDescription.sdp };
  }

  async op_accept(msg) {
    const link = this.links.get(msg.link);
    const pc = link.pc;
    await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    if (link.mode === "subscribe") {
      for (const t of pc.getTransceivers()) {
        const kind = t.receiver.track.kind;
        // frames on this link open only under the keys of its member (link.peer)
        // strict: through the SFU the signed digests are what binds a frame to its sender,
        // so a frame whose hash cannot be kept for them is refused (hash_overflow)
        t.receiver.transform = new RTCRtpScriptTransform(this.worker,
          { side: "recv", kind, link: link.id, peer: link.peer, strict: true });
        t.direction = "recvonly";
        t.setCodecPreferences(kind === "video" ? only("video", VIDEO_CODECS)
                                               : only("audio", AUDIO_CODECS));
      }
      await pc.setLocalDescription(await pc.createAnswer());
      await gathered(pc);
      return { sdp: pc.localDescription.sdp };
    }
    for (const t of pc.getTransceivers()) {
      if (!t.sender.transform || !t.receiver.transform) {
        throw new Error("an offered media section without the frame crypto: refused");
      }
      t.direction = "sendrecv";
      t.setCodecPreferences(t.receiver.track.kind === "video" ? only("video", VIDEO_CODECS)
                                                               : only("audio", AUDIO_CODECS));
    }
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    return { sdp: pc.localDescription.sdp };
  }

  async op_answer(msg) {
    await this.links.get(msg.link).pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
    return {};
  }

  async op_show(msg) {
    this.shown = msg.link;
    const link = this.links.get(msg.link);
    if (link) (this.shownOf = this.shownOf || new Map()).set(link.peer, link.id);
    if (link) this.show(link);
    return {};
  }

  isShown(link) {
    return this.shown === link.id || (this.shownOf != null && this.shownOf.get(link.peer) === link.id);
  }

  show(link) {
    // make before break: while another link's picture of this peer is up, a link whose
    // video has not arrived yet leaves it there until its first frame comes (the track
    // unmutes), so a move between mesh and SFU shows no gap; after SHOW_WAIT_MS it is
    // shown whatever it has
    const video = link.stream.getVideoTracks()[0];
    const tile = this.gallery ? this.gallery.tiles.get(link.peer) : null;
    const showing = this.gallery ? tile != null && tile.stream !== link.stream
                                 : this.el.remote.srcObject != null && this.el.remote.srcObject !== link.stream;
    if (showing && !link.showNow && (!video || video.muted)) {
      const go = () => {
        link.showNow = true;
        clearTimeout(link.showTimer);
        if (this.links.get(link.id) === link && this.isShown(link)) this.show(link);
      };
      if (!link.showTimer) link.showTimer = setTimeout(go, SHOW_WAIT_MS);
      if (video && link.unmuteOn !== video) {
        link.unmuteOn = video;
        video.addEventListener("unmute", go, { once: true });
      }
      return;
    }
    if (this.gallery) this.gallery.put(link.peer, link.stream);  // it picks the large one
    else if (this.el.remote.srcObject !== link.stream) this.el.remote.srcObject = link.stream;
    this.el.remote.classList.remove("hidden");
    this.el.noVideo.classList.add("hidden");
  }

  async op_close(msg) {
    const link = this.links.get(msg.link);
    if (!link) return {};
    this.links.delete(msg.link);
    link.pc.close();
    if (this.gallery && this.shownOf && this.shownOf.get(link.peer) === link.id) {
      this.shownOf.delete(link.peer);
      this.gallery.drop(link.peer);
    }
    if (this.el.remote.srcObject === link.stream) {
      this.el.remote.srcObject = null;
      this.el.remote.classList.add("hidden");
      this.el.noVideo.classList.remove("hidden");
    }
    return {};
  }

  async op_end(msg) {
    for (const id of [...this.links.keys()]) await this.op_close({ link: id });
    this.worker.postMessage({ type: "keys", op: "end" });
    if (this.gallery) this.gallery.clear();
    this.report();
    return {};
  }

  freshWorkerStats() {
    return new Promise((resolve) => {
      (this.statsWaiters = this.statsWaiters || []).push(resolve);
      this.worker.postMessage({ type: "stats" });
    });
  }

  async report() {
    // one report at a time: on a busy page a slow one is skipped over, never stacked up
    if (this.reporting) return;
    this.reporting = true;
    try { await this.reportOnce(); } finally { this.reporting = false; }
  }

  async reportOnce() {
    const links = {};
    // every link's RTP counters at once (a conference has a link per member), then the
    // worker's: read after the RTP counters, it has seen those frames
    const current = [...this.links];
    const reports = await Promise.all(current.map(([, link]) =>
      link.pc.getStats().catch(() => null)));  // null: closed meanwhile
    await this.freshWorkerStats();
    for (const [i, [id, link]] of current.entries()) {
      let framesSent = 0;
      const stats = reports[i];
      if (stats) {
        stats.forEach((s) => { if (s.type === "outbound-rtp" && s.kind === "video") framesSent += s.framesSent || 0; });
      }
      const w = (this.workerStats.links || {})[id] || {};
      const entry = { decrypted: w.decrypted || 0, rejected: w.rejected || 0, sent: w.sent || 0,
                      decrypted_video: w.decrypted_video || 0, decrypted_audio: w.decrypted_audio || 0,
                      state: link.pc.connectionState };
      if (stats) {
        let pairId = null;
        stats.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId; });
        const pair = pairId && stats.get(pairId);
        if (pair) {
          const local = stats.get(pair.localCandidateId);
          const remote = stats.get(pair.remoteCandidateId);
          entry.path = { local: local && local.candidateType, remote: remote && remote.candidateType };
        }
        stats.forEach((s) => {
          if (s.type === "inbound-rtp") {
            entry[`${s.kind}_received`] = s.packetsReceived;
            entry[`${s.kind}_lost`] = s.packetsLost;
            if (s.kind === "audio") entry.audio_samples = s.totalSamplesReceived;
            if (s.kind === "video") {
              entry.video_decoded = s.framesDecoded;
              entry.video_width = s.frameWidth;
              entry.keyframe_requests = s.pliCount;
            }
          }
        });
        // fail closed: video frames leaving that never went through the worker mean a
        // transform is not in place and this link's media is in clear: close it
        if (framesSent > 10 && !w.sent_video) {
          entry.state = "failed";
          entry.refused = "transform_missing";
          link.pc.close();
          this.send({ type: "link", link: id, state: "failed" });
        }
      }
      if (id === this.shown) {
        entry.shown = this.framesShown;
        entry.longest_freeze_ms = Math.round(this.maxGapMs);
      }
      links[id] = entry;
    }
    // a frozen picture is never left looking live: dim it and say so
    const stale = this.shown != null && this.lastFrameAt != null &&
                  performance.now() - this.lastFrameAt > 1000;
    this.el.remote.classList.toggle("stale", stale);
    this.el.noVideo.classList.toggle("hidden", !stale && this.el.remote.srcObject != null);
    if (stale) this.el.noVideo.textContent = "Video interrupted: no frame could be decrypted or received for over a second";
    const hashes = this.pendingHashes;
    this.pendingHashes = { sent: [], received: [], overflow: 0, since: null };
    this.send({
      type: "stats", call: this.call, crypto: this.cryptoCounters(),
      links, frames_shown: this.framesShown, hashes,
      tiles: this.gallery ? this.gallery.frameStats() : null,
    });
  }

  stopAll() {
    clearInterval(this.timer);
    clearInterval(this.hashTimer);
    if (this.gallery) this.gallery.close();
    for (const link of this.links.values()) link.pc.close();
    this.links.clear();
    if (this.worker) this.worker.terminate();
    if (this.local) this.local.getTracks().forEach((t) => t.stop());
  }
}
