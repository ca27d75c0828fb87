// Speaker view and gallery (--engine browser): one tile per other member of the call. The
// active speaker's video is large (the stage's #remote), the others are a strip. Who speaks
// is measured here, on the decrypted, decoded audio this page receives from each member
// (a WebAudio analyser on the received track), never taken from the RTP audio-level header
// extension or anything else a relay or SFU could write. Each tile can mute its member's
// audio on this screen only (an interpreter one does not need): nothing is sent.

const TICK_MS = 100;
const SPEAK_ON = 0.02;     // RMS (full scale 1) above which a member counts as speaking
const SPEAK_OFF = 0.008;   // ... and below which it stops (hysteresis band in between)
const ON_MS = 300;         // above SPEAK_ON this long: speaking
const OFF_MS = 1000;       // below SPEAK_OFF this long: not speaking any more
const SWITCH_MS = 1500;    // a new active speaker holds the stage at least this long

function label(el, value) { el.textContent = value == null ? "" : String(value); }

export class Gallery {
  // large: the stage's <video>; strip: the strip's container; caption: the stage's caption
  // (name, role, language and the mute button of the member on the stage); describe(peer)
  // gives {name, role, language?} from the charter
  constructor({ large, strip, caption, describe }) {
    this.large = large;
    this.strip = strip;
    this.caption = caption;
    this.describe = describe;
    this.tiles = new Map();  // peer -> tile
    this.mutedHere = new Set();  // members muted on this screen (kept across rebuilt links)
    this.active = null;
    this.activeSince = 0;
    this.ctx = null;
    this.timer = setInterval(() => this.tick(), TICK_MS);
    // an AudioContext may start suspended until the page was used once
    const wake = () => { if (this.ctx && this.ctx.state === "suspended") this.ctx.resume(); };
    document.addEventListener("click", wake, true);
    document.addEventListener("keydown", wake, true);
  }

  audio() {
    if (!this.ctx) this.ctx = new AudioContext();
    if (this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
    return this.ctx;
  }

  // the member's current stream (its shown link's); called again when tracks arrive
  put(peer, stream) {
    let tile = this.tiles.get(peer);
    if (!tile) {
      tile = this.makeTile(peer);
      this.tiles.set(peer, tile);
      this.strip.append(tile.el);
    }
    tile.stream = stream;
    if (tile.video.srcObject !== stream) tile.video.srcObject = stream;
    const audioTrack = stream.getAudioTracks()[0] || null;
    if (audioTrack && tile.track !== audioTrack) {
      tile.track = audioTrack;
      // the track plays through its own element (every member is heard, large or not);
      // Chromium also feeds a remote track to WebAudio only while an element plays it
      tile.player.srcObject = new MediaStream([audioTrack]);
      tile.player.play().catch(() => {});
      if (tile.source) tile.source.disconnect();
      try {
        const ctx = this.audio();
        tile.source = ctx.createMediaStreamSource(new MediaStream([audioTrack]));
        tile.analyser = ctx.createAnalyser();
        tile.analyser.fftSize = 1024;
        tile.source.connect(tile.analyser);
        tile.samples = new Float32Array(tile.analyser.fftSize);
      } catch (e) { tile.analyser = null; }
    }
    this.layout();
  }

  drop(peer) {
    const tile = this.tiles.get(peer);
    if (!tile) return;
    if (tile.source) tile.source.disconnect();
    tile.player.srcObject = null;
    tile.video.srcObject = null;
    tile.el.remove();
    this.tiles.delete(peer);
    if (this.active === peer) this.active = null;
    this.layout();
  }

  // the call is over: nothing is kept, not even who was muted
  clear() {
    for (const peer of [...this.tiles.keys()]) this.drop(peer);
    this.mutedHere.clear();
  }

  // the page stops being the engine
  close() {
    this.clear();
    clearInterval(this.timer);
    if (this.ctx) this.ctx.close().catch(() => {});
    this.ctx = null;
  }

  makeTile(peer) {
    const el = document.createElement("div");
    el.className = "tile";
    el.dataset.peer = peer;
    const video = document.createElement("video");
    video.autoplay = true; video.playsInline = true; video.muted = true;  // audio: player
    const player = document.createElement("audio");
    player.autoplay = true;
    const name = document.createElement("div");
    name.className = "tile-name";
    const meter = document.createElement("div");
    meter.className = "meter";
    const bar = document.createElement("span");
    meter.append(bar);
    const mute = document.createElement("button");
    mute.className = "btn quiet tile-mute";
    const tile = { peer, el, video, player, name, bar, mute, level: 0, speaking: false,
                   aboveSince: null, belowSince: null, muted: false };
    mute.onclick = () => this.setMuted(peer, !tile.muted);
    tile.muted = player.muted = this.mutedHere.has(peer);
    // what this tile painted: frames, and the longest gap between two since the first (a
    // freeze), across the member's links (a move between mesh and SFU swaps its stream)
    tile.frames = 0; tile.lastFrameAt = null; tile.maxGapMs = 0;
    const onFrame = (now) => {
      tile.frames++;
      if (tile.lastFrameAt != null) tile.maxGapMs = Math.max(tile.maxGapMs, now - tile.lastFrameAt);
      tile.lastFrameAt = now;
      if (this.tiles.get(peer) === tile) video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
    el.append(video, player, name, meter, mute);
    this.refreshLabels(tile);
    return tile;
  }

  // each tile's painted frames and longest freeze (what the page reports)
  frameStats() {
    const out = {};
    for (const [peer, tile] of this.tiles) {
      out[peer] = { frames: tile.frames, longest_freeze_ms: Math.round(tile.maxGapMs) };
    }
    return out;
  }

  // the longest freeze is counted again from now (a test times one move with it)
  resetFrameStats() {
    for (const tile of this.tiles.values()) tile.maxGapMs = 0;
  }

  setMuted(peer, muted) {
    const tile = this.tiles.get(peer);
    if (!tile) return;
    tile.muted = muted;
    tile.player.muted = muted;  // this screen only: the member still sends, others still hear
    if (muted) this.mutedHere.add(peer); else this.mutedHere.delete(peer);
    this.refreshLabels(tile);
    this.layout();
  }

  who(peer) {
    const d = this.describe(peer) || {};
    return [d.name || peer, d.role, d.language].filter(Boolean).join(" · ");
  }

  refreshLabels(tile) {
    label(tile.name, this.who(tile.peer));
    const role = (this.describe(tile.peer) || {}).role;
    tile.el.dataset.role = role || "";
    tile.el.dataset.muted = tile.muted ? "1" : "";
    label(tile.mute, tile.muted ? "Unmute here" : (role === "interpreter" ? "Mute interpreter" : "Mute"));
    tile.mute.classList.toggle("on", tile.muted);
  }

  measure(tile, now) {
    let rms = 0;
    if (tile.analyser) {
      tile.analyser.getFloatTimeDomainData(tile.samples);
      let sum = 0;
      for (const s of tile.samples) sum += s * s;
      rms = Math.sqrt(sum / tile.samples.length);
    }
    tile.level = rms;
    if (rms > SPEAK_ON) {
      tile.belowSince = null;
      if (tile.aboveSince == null) tile.aboveSince = now;
      if (now - tile.aboveSince >= ON_MS) tile.speaking = true;
    } else if (rms < SPEAK_OFF) {
      tile.aboveSince = null;
      if (tile.belowSince == null) tile.belowSince = now;
      if (now - tile.belowSince >= OFF_MS) tile.speaking = false;
    }
    // what this screen plays of the member: nothing while muted here
    const heard = tile.muted ? 0 : rms;
    tile.el.dataset.level = rms.toFixed(4);
    tile.el.dataset.heard = heard.toFixed(4);
    tile.el.dataset.speaking = tile.speaking ? "1" : "";
    tile.bar.style.width = `${Math.min(100, Math.round(heard * 400))}%`;
  }

  tick() {
    const now = performance.now();
    for (const tile of this.tiles.values()) this.measure(tile, now);
    // the loudest member speaking (and not muted here) takes the stage once the current one
    // has held it SWITCH_MS, or at once when the current one is silent
    const current = this.tiles.get(this.active);
    let best = null;
    for (const tile of this.tiles.values()) {
      if (!tile.speaking || tile.muted) continue;
      if (!best || tile.level > best.level) best = tile;
    }
    if (!current) {
      this.setActive(best ? best.peer : (this.tiles.keys().next().value ?? null), now);
    } else if (best && best !== current && now - this.activeSince >= SWITCH_MS &&
               (!current.speaking || current.muted)) {
      this.setActive(best.peer, now);
    }
    this.layout();
  }

  setActive(peer, now) {
    if (peer === this.active) return;
    this.active = peer;
    this.activeSince = now;
    this.layout();
  }

  layout() {
    const tile = this.tiles.get(this.active);
    if (!tile && this.tiles.size) { this.active = this.tiles.keys().next().value; }
    const shown = this.tiles.get(this.active);
    this.large.muted = true;  // every member's audio plays through its tile's player
    if (shown && this.large.srcObject !== shown.stream) this.large.srcObject = shown.stream;
    this.large.dataset.peer = shown ? shown.peer : "";
    for (const t of this.tiles.values()) t.el.classList.toggle("on-stage", t === shown);
    this.strip.classList.toggle("hidden", this.tiles.size < 2);
    const cap = this.caption;
    cap.el.classList.toggle("hidden", !shown);
    if (shown) {
      label(cap.name, this.who(shown.peer));
      cap.el.dataset.peer = shown.peer;
      cap.el.dataset.speaking = shown.speaking ? "1" : "";
      label(cap.mute, shown.muted ? "Unmute here" : shown.mute.textContent);
      cap.mute.classList.toggle("on", shown.muted);
      cap.mute.onclick = () => this.setMuted(shown.peer, !shown.muted);
    }
    this.large.parentElement.classList.toggle("speaking", !!(shown && shown.speaking && !shown.muted));
  }
}
