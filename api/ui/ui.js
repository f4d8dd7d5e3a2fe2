// DOM helpers (no innerHTML with data: every text goes through textContent), badges, times.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** A coloured label that always carries its text: colour is never the only signal. */
export function badge(kind, value, label = value) {
  return h("span", { class: `badge ${kind}-${value}`, dataset: { [kind]: value } }, label);
}

export function time(ms, zone = true) {
  if (ms === null || ms === undefined) return h("span", { class: "muted" }, "—");
  const d = new Date(ms);
  const text = d.toISOString().replace("T", " ").slice(0, 19) + (zone ? " UTC" : "");
  return h("time", { datetime: d.toISOString() }, text);
}

export function duration(start, end) {
  if (!start) return "";
  const secs = Math.max(0, Math.round(((end || Date.now()) - start) / 1000));
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ${secs % 60}s`;
  return `${Math.floor(secs / 3600)}h ${Math.floor((secs % 3600) / 60)}m`;
}

/** The region where results and refusals of actions are announced. */
export function notice(text, kind = "error") {
  const region = document.getElementById("notice");
  region.replaceChildren();
  if (!text) return;
  region.append(h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text));
}

export function errorText(err) {
  return err && err.status ? `${err.status}: ${err.message}` : String(err && err.message ? err.message : err);
}

/** Runs fn(item) for every item, at most `limit` at a time. */
export async function parallel(items, limit, fn) {
  const queue = [...items];
  const workers = Array.from({ length: Math.min(limit, queue.length) }, async () => {
    while (queue.length) await fn(queue.shift());
  });
  await Promise.all(workers);
}
