// A run: its summary, actions, task graph and table, environment keys, annotations, setup
// errors and history. It reloads itself when the phase stream says the run changed.

import { api, phases, readyTasks, token } from "./api.js";
import { deps, drawGraph, statusLabel, taskStatus } from "./graph.js";
import { badge, duration, errorText, h, notice, time } from "./ui.js";

function keys(title, map, id) {
  const names = Object.keys(map || {}).sort();
  return h(
    "section",
    { id, "aria-labelledby": `${id}-h` },
    h("h2", { id: `${id}-h` }, title),
    names.length
      ? h("ul", { class: "keys" }, names.map((k) => h("li", {}, h("code", {}, k), " = ", h("span", { class: "hidden-value" }, "(hidden)"))))
      : h("p", { class: "muted" }, "none"),
  );
}

function pairs(title, map, id) {
  const names = Object.keys(map || {}).sort();
  return h(
    "section",
    { id, "aria-labelledby": `${id}-h` },
    h("h2", { id: `${id}-h` }, title),
    names.length
      ? h("dl", { class: "pairs" }, names.map((k) => [h("dt", {}, k), h("dd", {}, map[k])]))
      : h("p", { class: "muted" }, "none"),
  );
}

/** What a task waits for, as the server derived it (`waiting` of GET /runs/{id}); a task
 * that ended waits for nothing, and says why the run service ended it when it did. */
function waitText(wait, task) {
  if (wait) return wait.text;
  if (task.reason) return h("span", { class: "muted" }, `ended: ${task.reason}`);
  return h("span", { class: "muted" }, "—");
}

function item(term, dd) {
  return h("div", {}, h("dt", {}, term), dd);
}

function historyItems(body) {
  if (Array.isArray(body)) return body;
  for (const k of ["history", "events", "entries", "items"]) if (body && Array.isArray(body[k])) return body[k];
  return [];
}

function historyView(items) {
  if (!items.length) return h("p", { class: "muted" }, "no events");
  return h(
    "ol",
    { class: "timeline" },
    items.map((it) => {
      const ev = it.event || it;
      const outcome = it.outcome || (it.reason ? "refused" : "applied");
      const reason = it.reason || it.message || "";
      return h(
        "li",
        { class: "entry" },
        time(ev.at ?? it.at),
        " ",
        h("strong", {}, ev.type || it.type || "event"),
        " ",
        badge("outcome", outcome),
        ev.data && ev.data.task_id ? [" task ", h("code", {}, ev.data.task_id)] : null,
        ev.data && ev.data.status ? [" → ", ev.data.status] : null,
        ev.data && ev.data.phase ? [" → ", ev.data.phase, "/", ev.data.result] : null,
        typeof it.seq === "number" ? h("span", { class: "muted" }, ` (revision ${it.seq})`) : null,
        reason ? h("span", { class: "reason" }, ` — ${reason}`) : null,
      );
    }),
  );
}

export function renderRun(root, runId) {
  let closed = false;
  let seq = -1;
  let active = false;
  let shown = "";
  let reloading = null;

  async function act(label, fn) {
    notice(`${label}…`, "info");
    try {
      const result = await fn();
      notice(`${label}: done`, "ok");
      return result;
    } catch (err) {
      notice(`${label} refused — ${errorText(err)}`, "error");
      return undefined;
    } finally {
      await load(true);
    }
  }

  /** What the run's phase allows, no more: queued → start, cancel; running → stop; a final
   * phase → recreate (approve is offered on each task waiting for approval). */
  function allowedActions(run) {
    if (run.phase === "queued") return ["start", "cancel"];
    if (run.phase === "running") return ["stop"];
    if (["setuperror", "cancelled", "finished"].includes(run.phase)) return ["recreate-start", "recreate-failed"];
    return [];
  }

  function actions(run) {
    const button = (id, label, fn) => h("button", { id, type: "button", onclick: fn }, label);
    return h(
      "section",
      { id: "actions", "aria-labelledby": "actions-h" },
      h("h2", { id: "actions-h" }, "Actions"),
      token() ? null : h("p", { class: "muted" }, "No API token given: a worker that needs one refuses these (give it at the top)."),
      h("div", { class: "buttons", id: "action-buttons", dataset: { phase: run.phase } }, allowedActions(run).map((a) => {
        const [id, label, fn] = {
          start: ["action-start", "Start", () => act("Start", () => api.runAction(run.id, "start"))],
          stop: ["action-stop", "Stop", () => act("Stop", () => api.runAction(run.id, "stop"))],
          cancel: ["action-cancel", "Cancel", () => act("Cancel", () => api.runAction(run.id, "cancel"))],
          "recreate-start": ["action-recreate-start", "Recreate from start", () => recreate(run.id, true)],
          "recreate-failed": ["action-recreate-failed", "Recreate from failed tasks", () => recreate(run.id, false)],
        }[a];
        return button(id, label, fn);
      })),
      run.stop && run.phase === "running" ? h("p", { class: "muted" }, "A stop was requested: the run ends once its running tasks end.") : null,
    );
  }

  async function recreate(id, fromStart) {
    const got = await act(fromStart ? "Recreate from start" : "Recreate from failed tasks", () => api.recreate(id, fromStart));
    if (got && got.run) location.hash = `#/run/${got.run.id}`;
  }

  function taskTable(run, config, waiting) {
    const byId = new Map(run.tasks.map((t) => [t.id, t]));
    const waits = new Map(((waiting && waiting.tasks) || []).map((w) => [w.task_id, w]));
    return h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { id: "tasks-table" },
        h("caption", {}, "Tasks"),
        h("thead", {}, h("tr", {}, ["Task", "Level", "Status", "Waiting for", "Holder", "Attempt", "Depends on", "Started (UTC)", "Ended (UTC)", "Environment keys"].map((t) => h("th", { scope: "col" }, t)))),
        h(
          "tbody",
          {},
          config.tasks.map((ct) => {
            const t = byId.get(ct.id) || { status: "notstarted" };
            const status = taskStatus(t, deps(ct), run);
            return h(
              "tr",
              { dataset: { taskId: ct.id, status } },
              h("th", { scope: "row" }, ct.name, ct.name !== ct.id ? h("span", { class: "muted" }, ` (${ct.id})`) : null),
              h("td", {}, ct.level ?? ""),
              h(
                "td",
                {},
                badge("task", status, statusLabel(status)),
                ct.needs_approval ? h("span", { class: "mark" }, t.approved ? " (approved)" : " (needs approval)") : null,
                t.waiting_approval
                  ? [" ", h("button", { type: "button", class: "approve", dataset: { taskId: ct.id }, onclick: () => act(`Approve ${ct.name}`, () => api.approve(run.id, ct.id)) }, `Approve ${ct.name}`)]
                  : null,
              ),
              h("td", { class: "waiting" }, waitText(waits.get(ct.id), t)),
              h("td", { class: "holder" }, t.holder ? h("code", {}, t.holder) : h("span", { class: "muted" }, "—")),
              h("td", { class: "num attempt" }, String(t.attempt || 1)),
              h(
                "td",
                {},
                (ct.depends || []).map((d, i) => [
                  i ? ", " : "",
                  h("code", {}, d.task_id),
                  d.conditions && d.conditions.length ? ` (${d.conditions.join(", ")})` : "",
                ]),
              ),
              h("td", {}, time(t.start_time, false)),
              h("td", {}, time(t.end_time, false)),
              h("td", {}, Object.keys(ct.environment || {}).sort().join(", ")),
            );
          }),
        ),
      ),
    );
  }

  function legend() {
    const states = ["notstarted", "ready", "waitingapproval", "running", "success", "failed", "stopped", "cancelled", "skipped"];
    return h(
      "p",
      { class: "legend" },
      "Status: ",
      states.map((st) => [badge("task", st, statusLabel(st)), " "]),
      " Edges without a label: on_success.",
    );
  }

  function draw(got) {
    const { run, run_config: config } = got;
    const final = ["setuperror", "cancelled", "finished"].includes(run.phase);
    const head = h(
      "header",
      { class: "run-head" },
      h("h1", {}, run.counter ? `#${run.counter} ` : "", run.name),
      h(
        "dl",
        { class: "summary" },
        item("Run id", h("dd", { id: "run-id" }, run.id)),
        item("Group", h("dd", {}, h("a", { href: `#/runs?group=${encodeURIComponent(run.group)}` }, run.group))),
        item("Phase", h("dd", { id: "run-phase" }, badge("phase", run.phase))),
        item("Result", h("dd", { id: "run-result" }, badge("result", run.result))),
        item("Enqueued", h("dd", {}, time(run.enqueue_time))),
        item("Started", h("dd", {}, time(run.start_time))),
        item("Ended", h("dd", {}, time(run.end_time), run.start_time ? ` (${duration(run.start_time, final ? run.end_time : null)})` : "")),
        run.stop ? item("Stop", h("dd", {}, "requested")) : null,
        got.waiting && got.waiting.run ? item("Waiting for", h("dd", { id: "run-waiting" }, got.waiting.run.text)) : null,
        config.recreated_from ? item("Recreated from", h("dd", {}, h("a", { href: `#/run/${config.recreated_from}` }, config.recreated_from))) : null,
        item("Revision", h("dd", {}, String(got.seq))),
      ),
    );
    const errors =
      run.phase === "setuperror" || (config.setup_errors || []).length
        ? h(
            "section",
            { id: "setup-errors", "aria-labelledby": "setup-errors-h" },
            h("h2", { id: "setup-errors-h" }, "Setup errors"),
            h("ul", {}, (config.setup_errors || []).map((e) => h("li", {}, e.message, e.task_ids && e.task_ids.length ? h("span", { class: "muted" }, ` (tasks: ${e.task_ids.join(", ")})`) : ""))),
          )
        : null;
    const graph = config.tasks.length
      ? h(
          "section",
          { id: "graph", "aria-labelledby": "graph-h" },
          h("h2", { id: "graph-h" }, "Task graph"),
          legend(),
          h("div", { class: "scroll graph-box" }, drawGraph(run, config)),
          taskTable(run, config, got.waiting),
        )
      : null;
    const history = h("section", { id: "history", "aria-labelledby": "history-h" }, h("h2", { id: "history-h" }, "History"), h("p", { class: "muted", id: "history-body" }, "Loading…"));
    const parts = [
      head,
      errors,
      graph,
      actions(run),
      keys("Environment", config.environment, "environment"),
      keys("Static environment", config.static_environment, "static-environment"),
      pairs("Annotations", { ...(config.annotations || {}), ...(run.annotations || {}) }, "annotations"),
      history,
    ];
    root.replaceChildren(...parts.filter(Boolean));
    loadHistory(history);
  }

  async function loadHistory(section) {
    let content;
    try {
      content = historyView(historyItems(await api.history(runId)));
    } catch (err) {
      content =
        err.status === 404 || err.status === 501
          ? h("p", { class: "muted", id: "history-body" }, "History not available from this worker.")
          : h("p", { class: "notice error", id: "history-body" }, `Could not read the history: ${errorText(err)}`);
    }
    if (!closed) section.replaceChildren(section.firstChild, content);
  }

  async function load(force = false) {
    try {
      const got = await api.getRun(runId);
      if (closed) return;
      seq = got.seq;
      active = !["setuperror", "cancelled", "finished"].includes(got.run.phase);
      if (active) readyTasks.follow(); // tasks of a final run never become ready
      else readyTasks.stop();
      const text = JSON.stringify(got);
      if (text === shown && !force) return; // unchanged: keep the page (and the focus) as it is
      shown = text;
      draw(got);
    } catch (err) {
      shown = "";
      if (!closed) root.replaceChildren(h("h1", {}, `Run ${runId}`), h("p", { class: "notice error", role: "alert" }, errorText(err)));
    }
  }

  let again = false;
  function refresh() {
    if (reloading) {
      again = true; // read once more when this read is done: nothing seen is left out
      return;
    }
    reloading = load().finally(() => {
      reloading = null;
      if (again && !closed) {
        again = false;
        refresh();
      }
    });
  }

  // Phase changes (their seq is the run's revision) on the phase stream, and tasks becoming
  // ready (task.ready, with a seq of their own) on the ready-task stream: either way the run is
  // read again.
  const unsubscribe = phases.on((event) => {
    if (event.run_id !== runId) return;
    if (event.type === "run.phase_changed" && event.data.seq <= seq) return;
    refresh();
  });
  const unsubscribeReady = readyTasks.on((event) => {
    if (event.run_id === runId) refresh();
  });
  // Claims and status reports move no phase: while the run is active, read it again now and
  // then (only while the page is shown) so holders and what tasks wait for stay current.
  const timer = setInterval(() => {
    if (active && !closed && document.visibilityState === "visible") refresh();
  }, 5000);
  root.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  load();
  return () => {
    closed = true;
    clearInterval(timer);
    unsubscribe();
    unsubscribeReady();
    readyTasks.stop();
  };
}
