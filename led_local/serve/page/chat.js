// The chat page of `led-local serve`: streams /v1/chat/completions from its own server,
// shows each token's exploration (stream_options.led_tokens) and asks for the API key on a 401.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "led-local-key";
const conversation = []; // the conversation as sent: {role, content}
let controller = null; // the reply in progress (its AbortController)

// -- requests -------------------------------------------------------------------------------
function askKey() {
  return new Promise((resolve) => {
    const form = $("keyform");
    form.hidden = false;
    $("key").focus();
    form.onsubmit = (e) => {
      e.preventDefault();
      form.hidden = true;
      resolve($("key").value.trim());
    };
  });
}

// fetch with the stored key; a 401 asks for the key once and retries
async function api(path, init = {}) {
  for (let asked = false; ; asked = true) {
    const headers = { ...(init.headers || {}) };
    const key = sessionStorage.getItem(KEY);
    if (key) headers.Authorization = "Bearer " + key;
    const r = await fetch(path, { ...init, headers });
    if (r.status !== 401 || asked) return r;
    sessionStorage.setItem(KEY, await askKey());
  }
}

function value(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : v;
}

// the request body: only the settings given (the rest are the server's)
function request(method, messages) {
  const body = { messages, method, stream: true,
    stream_options: { include_usage: true, led_tokens: $("explore_view").checked } };
  const set = (id, parse) => { const v = value(id); if (v !== undefined) body[id] = parse(v); };
  const int = (v) => parseInt(v, 10);
  set("temperature", Number);
  set("max_tokens", int);
  set("seed", int);
  set("thinking", (v) => v === "on");
  if (method === "led") {
    set("led_depths", int);
    set("led_candidates", int);
    set("led_norm", (v) => v === "on");
    set("exploit", (v) => v === "on");
  }
  return body;
}

// POST a streaming request; hand every SSE data object to reply.chunk
async function stream(body, reply, signal) {
  const r = await api("/v1/chat/completions", { method: "POST", signal, body: JSON.stringify(body),
    headers: { "Content-Type": "application/json" } });
  if (!r.ok) {
    const e = await r.json().catch(() => ({}));
    throw new Error((e.error && e.error.message) || `HTTP ${r.status}`);
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value: bytes, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(bytes, { stream: true });
    const lines = buf.split("\n");
    buf = lines.pop();
    for (const line of lines) {
      if (!line.startsWith("data: ")) continue;
      if (line === "data: [DONE]") return;
      reply.chunk(JSON.parse(line.slice(6)));
    }
  }
}

// -- rendering ------------------------------------------------------------------------------
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function scroll() {
  $("log").scrollTop = $("log").scrollHeight;
}

function hover(t) {
  const where = t.depth === null ? "final layer (not explored)" : `explored: depth ${t.depth}`;
  const gate = t.gate === null ? "no gate" : `gate ${t.gate}`;
  const top = t.top.map(([s, p]) => `${JSON.stringify(s)} ${p}`).join(", ");
  return `${where}\n${gate}, top-1 ${t.p_top1}\ntop: ${top}`;
}

// a token of the reply; its facts show on hover, and below the reply on a tap (touch screens)
function tokenSpan(t, info) {
  const s = el("span", t.depth === null ? "tok" : "tok x", t.token);
  s.onclick = () => { info.textContent = `${JSON.stringify(t.token)}: ${hover(t)}`; };
  if (t.depth !== null) {
    s.dataset.depth = t.depth;
    s.style.setProperty("--hue", (t.depth * 47 + 200) % 360);
  }
  s.title = hover(t);
  return s;
}

class Reply {
  constructor(turn, title) {
    this.box = el("div", "reply");
    if (title) this.box.append(el("h4", "", title));
    this.thinking = el("details", "thinking");
    this.thinking.append(el("summary", "", "thinking"), el("div"));
    this.thinking.hidden = true;
    this.content = el("div", "content");
    this.stats = el("div", "stats");
    this.info = el("div", "info");
    this.box.append(this.thinking, this.content, this.stats, this.info);
    turn.append(this.box);
    this.text = "";
    this.reasoning = "";
    this.tokens = 0; // led_tokens entries seen
    this.explored = null; // the server's count (led.explored)
    this.usage = null;
    this.seed = null;
    this.start = performance.now();
    this.first = null;
  }

  chunk(c) {
    if (c.error) throw new Error(c.error.message);
    if (c.usage) this.usage = c.usage;
    const ch = c.choices && c.choices[0];
    if (!ch) return;
    const d = ch.delta || {};
    const toks = ch.led_tokens || [];
    if ((d.content || d.reasoning_content) && this.first === null) this.first = performance.now();
    if (d.reasoning_content) {
      this.thinking.hidden = false;
      this.thinking.lastChild.append(d.reasoning_content);
      this.reasoning += d.reasoning_content;
    }
    if (d.content) {
      this.text += d.content;
      // tokens as spans where they are exactly this text (else, e.g. thinking in between: text)
      if (toks.length && toks.map((t) => t.token).join("") === d.content) {
        this.content.append(...toks.map((t) => tokenSpan(t, this.info)));
      } else {
        this.content.append(d.content);
      }
    }
    this.tokens += toks.length;
    if (ch.led) {
      this.explored = ch.led.explored;
      this.seed = ch.led.seed;
    }
    scroll();
  }

  finish(note) {
    const n = this.usage ? this.usage.completion_tokens : this.tokens;
    const secs = this.first === null ? 0 : (performance.now() - this.first) / 1000;
    const parts = [`${n} tokens`];
    if (secs > 0) parts.push(`${(n / secs).toFixed(1)} tokens/s`);
    if (this.explored !== null && n > 0) {
      parts.push(`explored ${this.explored}/${n} (${Math.round((100 * this.explored) / n)}%)`);
    }
    if (this.seed !== null) parts.push(`seed ${this.seed}`);
    if (note) parts.push(note);
    this.stats.textContent = parts.join(" · ");
  }

  fail(message) {
    this.stats.append(el("span", "error", message));
  }
}

// one request into one reply: "done", "stopped" or "error"
async function run(body, reply) {
  try {
    await stream(body, reply, controller.signal);
    reply.finish();
    return "done";
  } catch (e) {
    if (e.name === "AbortError") {
      reply.finish("stopped");
      return "stopped";
    }
    reply.fail(e.message);
    return "error";
  } finally {
    scroll();
  }
}

function busy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
}

async function send(e) {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  $("prompt").value = "";
  $("log").append(el("div", "user", text));
  conversation.push({ role: "user", content: text });
  const messages = conversation.slice();
  const method = $("method").value;
  const compare = $("compare").checked && method !== "sample";
  const turn = el("div", "turn");
  $("log").append(turn);
  const reply = new Reply(turn, compare ? method : "");
  controller = new AbortController();
  busy(true);
  const status = await run(request(method, messages), reply);
  if (status === "error") conversation.pop();
  else {
    // the reply goes back with its thinking, which the model's template keeps or drops
    const turn = { role: "assistant", content: reply.text };
    if (reply.reasoning) turn.reasoning_content = reply.reasoning;
    conversation.push(turn);
  }
  if (status === "done" && compare) {
    // the same seed with plain sampling, beside it
    const side = new Reply(turn, "sample, same seed");
    const body = request("sample", messages);
    if (reply.seed !== null) body.seed = reply.seed;
    await run(body, side);
  }
  controller = null;
  busy(false);
}

function newChat() {
  if (controller) controller.abort();
  conversation.length = 0;
  $("log").replaceChildren();
  $("prompt").focus();
}

function showLedFields() {
  const led = $("method").value === "led";
  for (const l of document.querySelectorAll("label.led")) l.hidden = !led;
}

async function init() {
  $("ask").onsubmit = send;
  $("stop").onclick = () => controller && controller.abort();
  $("new").onclick = newChat;
  $("method").onchange = showLedFields;
  $("prompt").onkeydown = (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("ask").requestSubmit();
    }
  };
  showLedFields();
  const r = await api("/v1/models");
  if (r.ok) {
    const model = (await r.json()).data[0];
    $("model").textContent = model.id;
    // the thinking switch, where the model's chat template has one
    $("thinking").parentElement.hidden = !(model.led && model.led.thinking_switch);
  }
  else $("model").textContent = `(models: HTTP ${r.status})`;
}

init();
