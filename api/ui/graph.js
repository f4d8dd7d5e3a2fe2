// A run's task graph as SVG: one column per level, dependency edges labelled with their
// conditions, each task's status as a colour and as text, approvals marked.

import { s } from "./ui.js";

const ENDED = new Set(["skipped", "cancelled", "stopped", "success", "failed"]);
const W = 160;
const H = 70;
const GAP_X = 104;
const GAP_Y = 24;
const PAD = 20;

const LABELS = {
  notstarted: "not started",
  waitingapproval: "waiting for approval",
  ready: "ready",
  running: "running",
  success: "success",
  failed: "failed",
  stopped: "stopped",
  cancelled: "cancelled",
  skipped: "skipped",
};

export function statusLabel(status) {
  return LABELS[status] || status;
}

/** What a task is doing, for people: its status, or for a task not started yet whether it
 * waits for approval, is ready (every parent ended in a running run), or waits for parents. */
export function taskStatus(task, parents, run) {
  if (task.status !== "notstarted") return task.status;
  if (task.waiting_approval) return "waitingapproval";
  if (task.ready === true) return "ready"; // a server that says so itself
  const tasksById = new Map(run.tasks.map((t) => [t.id, t]));
  const parentsEnded = parents.every((p) => ENDED.has(tasksById.get(p)?.status));
  if (run.phase === "running" && !run.stop && parentsEnded) return "ready";
  return "notstarted";
}

function levels(config) {
  const byId = new Map(config.tasks.map((t) => [t.id, t]));
  const memo = new Map();
  const level = (id, seen = new Set()) => {
    const t = byId.get(id);
    if (!t) return 0;
    if (typeof t.level === "number") return t.level;
    if (memo.has(id)) return memo.get(id);
    if (seen.has(id)) return 0; // a cycle (setup error): draw it flat
    seen.add(id);
    const parents = (t.depends || []).map((d) => level(d.task_id, seen) + 1);
    const l = parents.length ? Math.max(...parents) : 0;
    memo.set(id, l);
    return l;
  };
  return new Map(config.tasks.map((t) => [t.id, level(t.id)]));
}

function short(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

export function drawGraph(run, config) {
  const tasks = config.tasks;
  const state = new Map(run.tasks.map((t) => [t.id, t]));
  const lv = levels(config);
  const columns = [];
  for (const t of tasks) (columns[lv.get(t.id)] ||= []).push(t);
  const pos = new Map();
  columns.forEach((col, level) =>
    (col || []).forEach((t, i) => pos.set(t.id, { x: PAD + level * (W + GAP_X), y: PAD + i * (H + GAP_Y) })),
  );
  const width = PAD * 2 + Math.max(1, columns.length) * (W + GAP_X) - GAP_X;
  const height = PAD * 2 + Math.max(1, ...columns.map((c) => (c ? c.length : 0))) * (H + GAP_Y) - GAP_Y;

  const svg = s("svg", {
    id: "task-graph",
    class: "graph",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-labelledby": "graph-title",
  });
  const summary = tasks
    .map((t) => `${t.name}: ${statusLabel(taskStatus(state.get(t.id) || { status: "notstarted" }, deps(t), run))}`)
    .join("; ");
  svg.append(
    s("title", { id: "graph-title" }, `Task graph. ${summary}`),
    s(
      "defs",
      {},
      s(
        "marker",
        { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" },
        s("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }),
      ),
    ),
  );

  const edges = s("g", { class: "edges" });
  for (const t of tasks) {
    for (const d of t.depends || []) {
      const from = pos.get(d.task_id);
      const to = pos.get(t.id);
      if (!from || !to) continue;
      const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x, y2 = to.y + H / 2;
      const mx = (x1 + x2) / 2;
      const conditions = d.conditions && d.conditions.length ? d.conditions : [];
      const kind = conditions.length ? conditions.join(" ") : "on_success";
      edges.append(
        s(
          "g",
          { class: `edge ${kind}`, dataset: { from: d.task_id, to: t.id, conditions: conditions.join(",") } },
          s("path", { d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`, "marker-end": "url(#arrow)" }),
          conditions.length
            ? s(
                "text",
                { x: mx, y: (y1 + y2) / 2 - 6 - 12 * (conditions.length - 1), "text-anchor": "middle", class: "edge-label" },
                conditions.map((c, i) => s("tspan", { x: mx, dy: i ? 12 : 0 }, i < conditions.length - 1 ? `${c},` : c)),
              )
            : null,
        ),
      );
    }
  }
  svg.append(edges);

  for (const t of tasks) {
    const p = pos.get(t.id);
    const rt = state.get(t.id) || { status: "notstarted", waiting_approval: false, approved: false };
    const status = taskStatus(rt, deps(t), run);
    const marks = [];
    if (t.needs_approval) marks.push(rt.approved ? "approved" : "needs approval");
    if (t.ignore_failure) marks.push("failure ignored");
    if (t.skip) marks.push("skip");
    svg.append(
      s(
        "g",
        { class: `task status-${status}`, dataset: { taskId: t.id, status }, transform: `translate(${p.x} ${p.y})` },
        s("title", {}, `${t.name} (${t.id}): ${statusLabel(status)}${marks.length ? "; " + marks.join(", ") : ""}`),
        s("rect", { width: W, height: H, rx: 8 }),
        s("text", { x: 10, y: 20, class: "task-name" }, short(t.name, 20)),
        s("text", { x: 10, y: 40, class: "task-status" }, statusLabel(status)),
        marks.length ? s("text", { x: 10, y: 59, class: "task-marks" }, short(marks.join(" · "), 26)) : null,
      ),
    );
  }
  return svg;
}

export function deps(task) {
  return (task.depends || []).map((d) => d.task_id);
}
