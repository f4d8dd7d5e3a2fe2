// Dead letters: counts by reason from /metrics (this worker's counter since it started), and
// the newest records with their headers where the worker serves GET /api/v1/dlq.

import { api } from "./api.js";
import { errorText, h } from "./ui.js";

const METRIC = "runstream_dead_letters_total";

/** {reason: count} from the Prometheus text format. */
export function deadLetterCounts(text) {
  const counts = {};
  for (const line of text.split("\n")) {
    if (!line.startsWith(METRIC + "{")) continue;
    const m = line.match(/^[a-z_]+\{(.*)\}\s+([0-9.eE+-]+)/);
    if (!m) continue;
    const reason = (m[1].match(/reason="((?:[^"\\]|\\.)*)"/) || [])[1];
    if (reason === undefined) continue;
    counts[reason.replace(/\\(.)/g, "$1")] = Number(m[2]);
  }
  return counts;
}

function recordsView(body) {
  const records = Array.isArray(body) ? body : body.records || body.dead_letters || [];
  if (!records.length) return h("p", { class: "muted" }, "No dead letters.");
  return h(
    "ol",
    { class: "records" },
    records.map((r) =>
      h(
        "li",
        {},
        h("strong", {}, r.id || `${r.partition}:${r.offset}`),
        ` ${r.time || ""} `,
        h("code", {}, r.reason || ""),
        r.message ? ` — ${r.message}` : "",
        r.headers
          ? h(
              "dl",
              { class: "pairs" },
              (Array.isArray(r.headers) ? r.headers : Object.entries(r.headers)).map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]),
            )
          : null,
      ),
    ),
  );
}

export function renderDeadLetters(root) {
  let closed = false;
  const counts = h("section", { id: "dlq-counts", "aria-labelledby": "dlq-counts-h" }, h("h2", { id: "dlq-counts-h" }, "Counts by reason"), h("p", { class: "muted" }, "Loading…"));
  const newest = h("section", { id: "dlq-records", "aria-labelledby": "dlq-records-h" }, h("h2", { id: "dlq-records-h" }, "Newest records"), h("p", { class: "muted" }, "Loading…"));
  root.replaceChildren(h("h1", {}, "Dead letters"), counts, newest);

  api
    .metrics()
    .then((text) => {
      if (closed) return;
      const c = deadLetterCounts(text);
      const reasons = Object.keys(c).sort();
      const total = reasons.reduce((n, r) => n + c[r], 0);
      counts.replaceChildren(
        counts.firstChild,
        h("p", { class: "muted" }, "Records this worker sent to the dead-letter topic since it started (its /metrics)."),
        reasons.length
          ? h(
              "table",
              { id: "dlq-table" },
              h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Reason"), h("th", { scope: "col" }, "Records"))),
              h("tbody", {}, reasons.map((r) => h("tr", {}, h("td", {}, h("code", {}, r)), h("td", { class: "num" }, String(c[r]))))),
              h("tfoot", {}, h("tr", {}, h("th", { scope: "row" }, "Total"), h("td", { class: "num" }, String(total)))),
            )
          : h("p", { id: "dlq-none" }, "None: this worker has sent no record to the dead-letter topic."),
      );
    })
    .catch((err) => counts.replaceChildren(counts.firstChild, h("p", { class: "notice error" }, errorText(err))));

  api
    .deadLetters(20)
    .then((body) => !closed && newest.replaceChildren(newest.firstChild, recordsView(body)))
    .catch((err) =>
      newest.replaceChildren(
        newest.firstChild,
        err.status === 404 || err.status === 501
          ? h("p", { class: "muted", id: "dlq-records-missing" }, "This worker does not serve the records; list them with `runstream dlq list` (and `runstream dlq show ID` for the headers).")
          : h("p", { class: "notice error" }, errorText(err)),
      ),
    );

  return () => {
    closed = true;
  };
}
