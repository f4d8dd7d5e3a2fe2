// The runs page: a filtered, paged listing (newest first) whose rows follow the phase stream.

import { api, phases } from "./api.js";
import { badge, duration, errorText, h, parallel, time } from "./ui.js";

const PHASES = ["setuperror", "queued", "cancelled", "running", "finished"];
const RESULTS = ["unknown", "stopped", "success", "failed"];
const LIMIT = 25;
const FINAL = new Set(["setuperror", "cancelled", "finished"]);

function select(name, label, values, current) {
  const id = `filter-${name}`;
  return [
    h("label", { for: id }, label),
    h(
      "select",
      { id, name },
      h("option", { value: "" }, "any"),
      values.map((v) => h("option", { value: v, selected: v === current }, v)),
    ),
  ];
}

function matches(filters, group, phase, result) {
  const prefix = filters.group.replace(/\/+$/, "");
  const inGroup = !prefix || group === prefix || group.startsWith(prefix + "/");
  return inGroup && (!filters.phase || phase === filters.phase) && (!filters.result || result === filters.result);
}

export function renderRuns(root, query) {
  const filters = {
    group: query.get("group") || "",
    phase: query.get("phase") || "",
    result: query.get("result") || "",
  };
  const cursor = query.get("cursor") || "";
  const rows = new Map(); // run id -> {tr, run}
  let closed = false;

  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter runs" },
    h("label", { for: "filter-group" }, "Group prefix"),
    h("input", {
      id: "filter-group",
      name: "group",
      type: "text",
      value: filters.group,
      placeholder: "/project/p1",
      autocomplete: "off",
    }),
    select("phase", "Phase", PHASES, filters.phase),
    select("result", "Result", RESULTS, filters.result),
    h("button", { type: "submit" }, "Show"),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const k of ["group", "phase", "result"]) {
      const v = form.elements[k].value.trim();
      if (v) q.set(k, v);
    }
    location.hash = `#/runs?${q}`;
  });

  const tbody = h("tbody", { id: "runs-body" });
  const status = h("p", { id: "runs-status", class: "muted", role: "status" }, "Loading…");
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  const table = h(
    "table",
    { id: "runs-table", class: "runs" },
    h("caption", { class: "visually-hidden" }, "Runs, newest first"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["#", "Name", "Run id", "Group", "Phase", "Result", "Enqueued (UTC)", "Started (UTC)", "Ended (UTC)", "Took"].map((t) =>
          h("th", { scope: "col" }, t),
        ),
      ),
    ),
    tbody,
  );
  root.replaceChildren(h("h1", {}, "Runs"), form, status, h("div", { class: "scroll" }, table), pager);

  function number(run) {
    if (run.counter === undefined) return h("span", { class: "muted" }, "…"); // details pending
    return run.counter ? `#${run.counter}` : h("span", { class: "muted", title: "no run number" }, "—");
  }

  function cells(run) {
    const final = FINAL.has(run.phase);
    return [
      h("td", { class: "counter", "data-label": "#" }, number(run)),
      h("td", { class: "name", "data-label": "Name" }, run.name ?? h("span", { class: "muted" }, "…")),
      h("td", { class: "id", "data-label": "Run id" }, h("a", { href: `#/run/${run.id}` }, run.id)),
      h("td", { class: "group", "data-label": "Group" }, run.group),
      h("td", { class: "phase", "data-label": "Phase" }, badge("phase", run.phase)),
      h("td", { class: "result", "data-label": "Result" }, badge("result", run.result)),
      h("td", { "data-label": "Enqueued" }, time(run.enqueue_time, false)),
      h("td", { "data-label": "Started" }, time(run.start_time, false)),
      h("td", { "data-label": "Ended" }, time(run.end_time, false)),
      h("td", { "data-label": "Took" }, run.start_time ? duration(run.start_time, final ? run.end_time : null) : ""),
    ];
  }

  function draw(id) {
    const row = rows.get(id);
    if (row) row.tr.replaceChildren(...cells(row.run));
  }

  function addRow(entry, atTop) {
    const tr = h("tr", { dataset: { runId: entry.id } });
    rows.set(entry.id, { tr, run: { ...entry }, seq: 0 });
    if (atTop) tbody.prepend(tr);
    else tbody.append(tr);
    draw(entry.id);
  }

  async function details(id) {
    // The listing may carry name, counter and times one day; until then GET each run.
    const row = rows.get(id);
    if (!row || (row.run.name !== undefined && row.run.counter !== undefined && "enqueue_time" in row.run)) return;
    try {
      const got = await api.getRun(id);
      if (closed || !rows.has(id)) return;
      const r = got.run;
      const fresh = got.seq >= row.seq;
      row.run = { ...row.run, ...r, phase: fresh ? r.phase : row.run.phase, result: fresh ? r.result : row.run.result };
      row.seq = Math.max(row.seq, got.seq);
      draw(id);
    } catch (err) {
      row.tr.title = `details not available: ${errorText(err)}`;
    }
  }

  function onPhase(event) {
    if (event.type !== "run.phase_changed") return;
    const d = event.data;
    const row = rows.get(event.run_id);
    if (!row) {
      // A new run on the first page of a matching filter: show it at the top.
      if (!cursor && d.seq === 1 && matches(filters, d.group, d.phase, d.result)) {
        addRow({ id: event.run_id, group: d.group, phase: d.phase, result: d.result }, true);
        rows.get(event.run_id).seq = d.seq;
        status.textContent = `${rows.size} runs shown`;
        details(event.run_id);
      }
      return;
    }
    if (d.seq <= row.seq) return; // already shown (the details were newer)
    row.seq = d.seq;
    row.run.phase = d.phase;
    row.run.result = d.result;
    if (d.phase === "running" && !row.run.start_time) row.run.start_time = event.at;
    if (FINAL.has(d.phase) && !row.run.end_time) row.run.end_time = event.at;
    draw(event.run_id);
    row.tr.classList.remove("changed");
    void row.tr.offsetWidth; // restart the highlight
    row.tr.classList.add("changed");
  }

  // Follow first, then list: a change between the two is not lost (it is applied by seq).
  const unsubscribe = phases.on(onPhase);

  const params = new URLSearchParams({ limit: String(LIMIT) });
  if (filters.group) params.set("group", filters.group);
  if (filters.phase) params.set("phase", filters.phase);
  if (filters.result) params.set("result", filters.result);
  if (cursor) params.set("cursor", cursor);

  api
    .listRuns(params)
    .then((page) => {
      if (closed) return;
      for (const entry of page.runs) if (!rows.has(entry.id)) addRow(entry, false);
      status.textContent = rows.size ? `${rows.size} runs shown` : "No runs match.";
      const base = new URLSearchParams();
      for (const [k, v] of Object.entries(filters)) if (v) base.set(k, v);
      if (cursor) pager.append(h("a", { href: `#/runs?${base}`, class: "button" }, "First page"));
      if (page.next_cursor) {
        const next = new URLSearchParams(base);
        next.set("cursor", page.next_cursor);
        pager.append(h("a", { href: `#/runs?${next}`, class: "button", id: "next-page" }, "Older runs →"));
      }
      return parallel([...rows.keys()], 6, details);
    })
    .catch((err) => {
      status.textContent = `Could not list runs: ${errorText(err)}`;
      status.setAttribute("role", "alert");
    });

  return () => {
    closed = true;
    unsubscribe();
  };
}
