// The terminal's screen: follows the daemon's event stream (WebSocket, no polling) and
// drives the same commands as `hotline call ...`. With --engine browser it also loads the
// page's media engine (engine.js), which the daemon keys over the same socket.

const $ = (id) => document.getElementById(id);
let status = null;
let socket = null;
let pageEngine = null;
let activeSince = null;   // performance.now() of the call's activation (duration display)
let lastProblem = "";
let codeChangedAt = null;  // performance.now() when the security code last changed

function text(el, value) { el.textContent = value == null ? "" : String(value); }

async function post(path, body) {
  const resp = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
    credentials: "same-origin",
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) showBanner(data.error || `HTTP ${resp.status}`, true);
  return data;
}

function showBanner(message, error) {
  const el = $("banner");
  if (!message) { el.classList.add("hidden"); return; }
  text(el, message);
  el.classList.toggle("error", !!error);
  el.classList.remove("hidden");
}

function nameOf(id) {
  const t = (status && status.terminals || []).find((x) => x.id === id);
  return t ? `${t.name} (${t.role})` : id;
}

function render() {
  if (!status) return;
  const ex = status.exchange || {};
  text($("line"), `${status.line} · charter v${status.charter_version}`);
  text($("digest"), status.charter_digest || "");
  text($("me"), `${status.name} — ${status.role}`);
  const pill = $("exchange");
  text(pill, ex.connected ? "exchange connected" : `exchange unreachable (${ex.reason || ""})`);
  pill.className = "pill " + (ex.connected ? "ok" : "bad");

  const online = new Set(ex.online || []);
  const list = $("terminals");
  list.replaceChildren();
  const select = $("target");
  const chosen = select.value;
  select.replaceChildren();
  for (const t of status.terminals || []) {
    if (t.id === status.terminal) continue;
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "dot" + (online.has(t.id) ? " on" : "");
    text(name, `${t.name}`);
    const role = document.createElement("span");
    role.className = "muted";
    text(role, `${t.role} · ${t.site} · ${online.has(t.id) ? "online" : "offline"}`);
    const fp = document.createElement("span");
    fp.className = "fp mono muted";
    text(fp, `key ${t.fingerprint}`);
    name.append(fp);
    li.append(name, role);
    list.append(li);
    const opt = document.createElement("option");
    opt.value = t.id;
    text(opt, t.name);
    select.append(opt);
  }
  if (chosen) select.value = chosen;
  document.body.dataset.engine = status.engine || "aiortc";
  const recent = $("recent");
  recent.replaceChildren();
  // readiness checks are on the line screen's "Line readiness", not among the calls
  const calls = (status.past_calls || []).filter((c) => c.purpose !== "check");
  for (const c of calls.slice(-5).reverse()) {
    const li = document.createElement("li");
    const id = document.createElement("span");
    text(id, c.call);
    const end = document.createElement("span");
    end.className = "muted";
    text(end, c.end || "");
    li.append(id, end);
    recent.append(li);
  }
  const refusals = $("refusals");
  refusals.replaceChildren();
  for (const [reason, n] of Object.entries(status.rejected || {})) {
    const li = document.createElement("li");
    const r = document.createElement("span");
    text(r, reason);
    const c = document.createElement("span");
    c.className = "muted";
    text(c, String(n));
    li.append(r, c);
    refusals.append(li);
  }

  renderReadiness(status.readiness || {});
  // a readiness check never takes the principal's screen: no ring, no call view, only
  // the discreet "line check" pill; a real call ends it and shows as any call
  const checking = status.call && status.call.purpose === "check";
  const checkLive = checking && ["outgoing", "incoming", "active"].includes(status.call.state);
  $("line-check").classList.toggle("hidden", !checkLive);
  if (checkLive) {
    const ring = status.last_ring || {};
    const peer = (status.call.members || []).find((m) => m !== status.terminal)
      || (ring.call === status.call.call ? ring.from : null);
    text($("line-check"), peer ? `line check with ${nameOf(peer)}…` : "line check…");
  }
  document.body.dataset.lineCheck = checkLive ? "running" : "";
  const call = checking ? null : status.call;
  const state = call ? call.state : "idle";
  const live = ["outgoing", "incoming", "active"].includes(state);
  $("ring").classList.toggle("hidden", state !== "incoming");
  ringTone(state === "incoming");
  if (state === "incoming" && status.last_ring) text($("ring-from"), nameOf(status.last_ring.from));
  $("call").classList.toggle("hidden", !(state === "active" || state === "outgoing"));
  $("idle").classList.toggle("hidden", live);
  document.body.dataset.callState = state;

  if (!call) { activeSince = null; codeChangedAt = null; return; }
  if (state === "active" && call.active_s != null && activeSince == null) {
    activeSince = performance.now() - call.active_s * 1000;
  }
  if (state !== "active") activeSince = null;
  const others = (call.members || []).filter((m) => m !== status.terminal).map(nameOf);
  text($("call-state"), state === "outgoing" ? "Ringing…" : `In call with ${others.join(", ")}`);
  const code = call.security_code;
  const e2ee = $("e2ee");
  if (code) {
    const suite = (call.e2ee && call.e2ee.suite) || (status.policy && status.policy.suite);
    text(e2ee, `End-to-end encrypted · ${suite} · ${call.e2ee.kem}`);
    e2ee.classList.add("ok");
    text($("code"), code);
    text($("epoch"), `epoch ${call.epoch}`);
    if (call.epoch_age_s != null) text($("rekey"), `keys renewed ${Math.round(call.epoch_age_s)} s ago`);
  } else {
    text(e2ee, state === "active" ? "Agreeing keys… no media until encrypted" : "Not yet encrypted");
    e2ee.classList.remove("ok");
    text($("code"), "— — —");
    text($("epoch"), "");
  }
  const previous = $("code").dataset.code;
  if (code && previous && previous !== code) {
    codeChangedAt = performance.now();  // a new epoch: the code must be compared again
  }
  $("code-changed").classList.toggle("hidden",
    codeChangedAt == null || performance.now() - codeChangedAt > 60000);
  $("code").dataset.code = code || "";
  const members = $("members");
  members.replaceChildren();
  const problems = [];
  for (const m of call.members || []) {
    const li = document.createElement("li");
    const who = document.createElement("span");
    const peer = (call.peers || {})[m];
    let st = m === status.terminal ? "this terminal" : "joined";
    if (peer) {
      st = peer.transport === "reconnecting" ? "reconnecting…" : (peer.transport || st);
      if (peer.transport === "reconnecting") problems.push(`${nameOf(m)}: reconnecting (${peer.lost_reason || "no media"})`);
      if ((peer.quality || []).length) problems.push(`path to ${nameOf(m)}: ${peer.quality.join(", ")}`);
    }
    who.className = "dot " + (peer && peer.transport === "reconnecting" ? "warn" : "on");
    text(who, nameOf(m));
    const s = document.createElement("span");
    s.className = "muted";
    text(s, st);
    li.append(who, s);
    members.append(li);
  }
  const rejected = (call.e2ee && call.e2ee.rejected) || {};
  const all = Object.entries(rejected).map(([k, v]) => `${k} ${v}`).join(", ");
  // authentic frames received twice are counted, but are no sign of trouble
  const rej = Object.entries(rejected).filter(([k]) => !k.startsWith("duplicate_"))
    .map(([k, v]) => `${k} ${v}`).join(", ");
  text($("media"), `frames protected ${call.e2ee.protected} · decrypted ${call.e2ee.unprotected}` + (all ? ` · dropped: ${all}` : ""));
  if (rej) problems.push(`frames rejected, not shown: they do not decrypt (${rej})`);
  if (state === "active" && !code) problems.push("keys missing: no media until the call is encrypted");
  const problem = problems.join(" · ");
  if (problem !== lastProblem) { lastProblem = problem; showBanner(problem, false); }
}

function ago(unix) {
  const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

// the line's readiness: the last good check and its age, the last verdict, open alarms
function renderReadiness(r) {
  const alarms = r.alarms || [];
  const good = r.last_good;
  const last = r.last;
  const pill = $("line-ready");
  if (alarms.length) {
    text(pill, `line alarm: ${alarms.map((a) => nameOf(a.peer)).join(", ")}`);
    pill.className = "pill bad";
  } else if (last && last.verdict === "amber") {
    text(pill, `line degraded · checked ${ago(last.time)}`);
    pill.className = "pill warn";
  } else if (good) {
    text(pill, `line ready · checked ${ago(good.time)}`);
    pill.className = "pill ok";
  } else {
    text(pill, "line not yet checked");
    pill.className = "pill";
  }
  const box = $("readiness");
  box.replaceChildren();
  const line = (label, value, cls) => {
    const div = document.createElement("div");
    const l = document.createElement("span");
    l.className = "muted";
    text(l, `${label}: `);
    const v = document.createElement("span");
    if (cls) v.className = cls;
    text(v, value);
    div.append(l, v);
    box.append(div);
  };
  line("last good check", good ? `with ${nameOf(good.peer)}, ${good.verdict}, ${ago(good.time)}` : "none yet");
  if (last && last !== good && (!good || last.time !== good.time)) {
    line("last check", `with ${nameOf(last.with || last.peer)}: ${last.verdict} — ${(last.reasons || []).join("; ")}`,
      `verdict-${last.verdict}`);
  }
  const list = $("alarms");
  list.replaceChildren();
  for (const a of alarms) {
    const li = document.createElement("li");
    li.dataset.peer = a.peer;
    const who = document.createElement("span");
    who.className = "dot bad";
    text(who, `Alarm: line to ${nameOf(a.peer)} is red`);
    const why = document.createElement("span");
    text(why, `since ${new Date(a.since * 1000).toLocaleTimeString()} · ${a.count}× · ${a.reason}`);
    li.append(who, why);
    list.append(li);
  }
}

// a soft two-tone ring while a call is waiting for an answer (stops when it is not)
let ringing = null;
function ringTone(on) {
  if (on && !ringing) {
    try {
      const ctx = new AudioContext();
      const gain = ctx.createGain();
      gain.gain.value = 0;
      gain.connect(ctx.destination);
      for (const f of [440, 480]) {
        const osc = ctx.createOscillator();
        osc.frequency.value = f;
        osc.connect(gain);
        osc.start();
      }
      const beat = setInterval(() => {
        gain.gain.setTargetAtTime(0.08, ctx.currentTime, 0.02);
        gain.gain.setTargetAtTime(0, ctx.currentTime + 1.2, 0.05);
      }, 3000);
      ringing = { ctx, beat };
    } catch (e) { ringing = null; }
  } else if (!on && ringing) {
    clearInterval(ringing.beat);
    ringing.ctx.close();
    ringing = null;
  }
}

function toggleTrack(kind, button, onLabel, offLabel) {
  if (!pageEngine || !pageEngine.local) return;
  for (const t of pageEngine.local.getTracks()) if (t.kind === kind) t.enabled = !t.enabled;
  const off = pageEngine.local.getTracks().some((t) => t.kind === kind && !t.enabled);
  button.classList.toggle("on", off);
  text(button, off ? onLabel : offLabel);
}

function tickDuration() {
  if (activeSince != null) {
    const s = Math.floor((performance.now() - activeSince) / 1000);
    text($("duration"), `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`);
  }
  requestAnimationFrame(tickDuration);
}

function onEvent(event) {
  if (event.kind === "e2ee_failed") showBanner(`end-to-end encryption failed: ${event.reason}`, true);
  if (event.kind === "unauthenticated_frame") showBanner(`ALARM: ${event.message}`, true);
  // the end of a readiness check is no news for the principal (its result is on the line screen)
  if (event.kind === "ended" && event.purpose !== "check") showBanner(`call ended: ${event.reason}`, false);
  if (event.kind === "ring") showBanner("", false);
  if (event.kind === "invite_withdrawn") {
    showBanner(`invitation of ${event.target} withdrawn: ${event.because}`, false);
  }
  if (event.kind === "epoch") $("code").classList.add("changed");
  // this page took over mid-call: it sends nothing until a new epoch (never the old send key)
  if (event.kind === "e2ee_sending_paused") {
    sendPaused = true;
    showBanner(`not sending: ${event.reason}; no media until a new epoch (${event.resumes})`, true);
  }
  if (event.kind === "epoch" && sendPaused) { sendPaused = false; showBanner("", false); }
}
let sendPaused = false;

// speaker view and strip of a call's members, from the charter's names, roles, languages
async function makeGallery() {
  const { Gallery } = await import("/static/gallery.js");
  const describe = (id) => (status && status.terminals || []).find((t) => t.id === id);
  return new Gallery({ large: $("remote"), strip: $("strip"), describe,
                       caption: { el: $("speaker"), name: $("speaker-name"), mute: $("speaker-mute") } });
}

let engineStarting = false;
let superseded = false;
async function startEngine() {
  if (superseded || engineStarting || pageEngine || !status || status.engine !== "browser") return;
  engineStarting = true;
  try {
    const { PageEngine } = await import("/static/engine.js");
    const engine = new PageEngine((msg) => {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(msg));
    }, { remote: $("remote"), self: $("self"), noVideo: $("no-video"), gallery: await makeGallery(),
         capture: status.capture });
    await engine.start();
    if (superseded || !socket || socket.readyState !== WebSocket.OPEN) {
      engine.stopAll();  // the channel closed while the camera started: not this page's turn
      return;
    }
    pageEngine = window.hotlineEngine = engine;
    socket.send(JSON.stringify({ type: "engine_hello" }));
  } catch (e) {
    showBanner(`this screen cannot be the media engine: ${e.message || e}`, true);
  } finally {
    engineStarting = false;
  }
}

function connect() {
  socket = new WebSocket(`ws://${location.host}/api/ws`);
  socket.onmessage = async (m) => {
    const data = JSON.parse(m.data);
    if (data.type === "status" || data.type === "event") {
      status = data.status;
      if (data.type === "event") onEvent(data.event);
      render();
      await startEngine();
    } else if (pageEngine && (data.type === "engine" || data.type === "keys")) {
      pageEngine.handle(data);
    }
  };
  socket.onclose = (ev) => {
    if (pageEngine) { pageEngine.stopAll(); pageEngine = window.hotlineEngine = null; }
    if (ev.code === 4001) {  // another window is this terminal's screen now: stay closed
      superseded = true;
      showBanner("another window took over as this terminal's screen; this one is closed " +
                 "(reload it to take the screen back)", true);
      return;
    }
    showBanner("lost the connection to this terminal's daemon; reconnecting…", true);
    setTimeout(connect, 1000);
  };
  socket.onopen = () => showBanner("", false);
}

$("dial").onclick = () => post("/api/call", { target: $("target").value });
$("answer").onclick = () => post("/api/answer");
$("decline").onclick = () => post("/api/decline");
$("hangup").onclick = () => post("/api/hangup");
$("mute-mic").onclick = () => toggleTrack("audio", $("mute-mic"), "Unmute mic", "Mute mic");
$("mute-cam").onclick = () => toggleTrack("video", $("mute-cam"), "Camera on", "Camera off");
$("remote").classList.add("hidden");
tickDuration();
connect();
