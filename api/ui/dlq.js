// Dead letters: counts by reason from /metrics (this worker's counter since it started), the
// records of the dead-letter topic from GET /api/v1/dlq (filtered, newest first, a page at a
// time), one of them decoded (GET /api/v1/dlq/{partition}/{offset}), and redrive (POST
// /api/v1/dlq/redrive, with a dry run first). These are operator routes: a worker with tokens
// wants one holding the admin scope (the token field at the top).

import { api } from "./api.js";
import { errorText, h, notice } from "./ui.js";

const METRIC = "runstream_dead_letters_total";
const PAGE = 20;

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

function refusedText(err) {
  if (err.status === 401 || err.status === 403) return `${errorText(err)} (dead letters need a token with the admin scope: give it at the top)`;
  return errorText(err);
}

function source(r) {
  if (!r.source_topic) return h("span", { class: "muted" }, "—");
  return `${r.source_topic}/${r.source_partition ?? "?"}@${r.source_offset ?? "?"}`;
}

function size(r) {
  return `${r.size} B` + (r.truncated_from ? ` (truncated from ${r.truncated_from} B)` : "");
}

/** The redrive answer: counts, then one line per dead letter. */
function redriveView(result) {
  const verb = result.dry_run ? "would be redriven" : "redriven";
  return h(
    "section",
    { id: "dlq-redrive-result", "aria-labelledby": "dlq-redrive-h", dataset: { dryRun: String(result.dry_run) } },
    h("h2", { id: "dlq-redrive-h" }, result.dry_run ? "Redrive, dry run" : "Redrive"),
    h("p", { id: "dlq-redrive-counts" }, `${result.redriven} ${verb}, ${result.skipped} skipped`),
    h(
      "ul",
      { class: "records" },
      result.items.map((i) =>
        h(
          "li",
          { dataset: { id: i.id, outcome: i.outcome } },
          h("strong", {}, i.id),
          " ",
          i.outcome.replace("_", " "),
          i.topic ? ` → ${i.topic}${i.partition !== null && i.partition !== undefined ? `/${i.partition}` : ""}` : "",
          i.why ? ` — ${i.why}` : "",
        ),
      ),
    ),
    result.items_truncated ? h("p", { class: "muted" }, "More were selected than listed here.") : null,
  );
}

async function redrive(body, into) {
  const label = body.dry_run ? "Redrive (dry run)" : "Redrive";
  notice(`${label}…`, "info");
  try {
    const result = await api.redrive(body);
    notice(`${label}: ${result.redriven} ${body.dry_run ? "would be redriven" : "redriven"}, ${result.skipped} skipped`, "ok");
    into.replaceChildren(redriveView(result));
    return result;
  } catch (err) {
    notice(`${label} refused — ${refusedText(err)}`, "error");
    return undefined;
  }
}

function countsSection(isClosed) {
  const counts = h("section", { id: "dlq-counts", "aria-labelledby": "dlq-counts-h" }, h("h2", { id: "dlq-counts-h" }, "Counts by reason"), h("p", { class: "muted" }, "Loading…"));
  api
    .metrics()
    .then((text) => {
      if (isClosed()) return;
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
  return counts;
}

/** The filters of the listing, as GET /api/v1/dlq takes them. */
function filterParams(form) {
  const params = new URLSearchParams();
  const reason = form.elements.reason.value.trim();
  const partition = form.elements.source_partition.value.trim();
  const since = form.elements.since.value.trim();
  if (reason) params.append("reason", reason);
  if (partition) params.append("source_partition", partition);
  if (since) params.append("since", since);
  return params;
}

export function renderDeadLetters(root) {
  let closed = false;
  const isClosed = () => closed;
  const field = (name, label, hint) => h("label", {}, label, " ", h("input", { name, id: `dlq-filter-${name}`, placeholder: hint, size: 14 }));
  const form = h(
    "form",
    { id: "dlq-filters", class: "filters" },
    field("reason", "Reason", "invalid_json"),
    field("source_partition", "Source partition", "0"),
    field("since", "Since", "1h or ISO time"),
    h("button", { type: "submit" }, "Filter"),
  );
  const body = h("tbody", { id: "dlq-records-body" });
  const more = h("div", { id: "dlq-more" });
  const listState = h("p", { class: "muted", id: "dlq-records-state" }, "Loading…");
  const result = h("div", { id: "dlq-redrive" });
  const selected = () => [...body.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.value);
  const buttons = h(
    "div",
    { class: "buttons" },
    h("button", { type: "button", id: "dlq-redrive-dry", onclick: () => redriveSelection(true) }, "Dry run: redrive selected"),
    h("button", { type: "button", id: "dlq-redrive-selected", onclick: () => redriveSelection(false) }, "Redrive selected"),
  );
  const table = h(
    "table",
    { id: "dlq-records-table" },
    h("caption", {}, "Dead letters, newest first"),
    h("thead", {}, h("tr", {}, ["", "Id", "Time", "Reason", "Message", "Source", "Size"].map((t) => h("th", { scope: "col" }, t)))),
    body,
  );
  const records = h("section", { id: "dlq-records", "aria-labelledby": "dlq-records-h" }, h("h2", { id: "dlq-records-h" }, "Records"), form, listState, table, more, buttons, result);
  root.replaceChildren(h("h1", {}, "Dead letters"), countsSection(isClosed), records);

  async function redriveSelection(dryRun) {
    const ids = selected();
    if (!ids.length) {
      notice("Select the dead letters to redrive first.", "error");
      return;
    }
    const done = await redrive({ ids, dry_run: dryRun }, result);
    if (done && !dryRun) load(null, true);
  }

  function row(r) {
    return h(
      "tr",
      { dataset: { id: r.id, reason: r.reason } },
      h("td", {}, h("input", { type: "checkbox", value: r.id, "aria-label": `select ${r.id}` })),
      h("td", {}, h("a", { href: `#/dlq/${r.partition}:${r.offset}` }, r.id)),
      h("td", {}, r.time),
      h("td", {}, h("code", {}, r.reason)),
      h("td", { class: "message" }, r.message || ""),
      h("td", {}, source(r)),
      h("td", { class: "num" }, size(r)),
    );
  }

  function load(cursor, fresh) {
    const params = filterParams(form);
    params.set("limit", String(PAGE));
    if (cursor) params.set("cursor", cursor);
    api
      .deadLetters(params)
      .then((page) => {
        if (closed) return;
        if (fresh) body.replaceChildren();
        body.append(...page.dead_letters.map(row));
        listState.textContent = body.children.length ? `${body.children.length} shown` : "No dead letters.";
        more.replaceChildren(
          page.next_cursor ? h("button", { type: "button", id: "dlq-load-more", onclick: () => load(page.next_cursor, false) }, "Older") : "",
        );
      })
      .catch((err) => {
        if (!closed) listState.replaceChildren(h("span", { class: "notice error" }, refusedText(err)));
      });
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    load(null, true);
  });
  load(null, true);

  return () => {
    closed = true;
  };
}

/** One dead letter: headers, reason, source, the value as text (UTF-8 JSON) or base64, its
 * events decoded (or why not), and redrive of this one. */
export function renderDeadLetter(root, partition, offset) {
  let closed = false;
  const id = `${partition}:${offset}`;
  const result = h("div", { id: "dlq-redrive" });
  root.replaceChildren(h("p", {}, h("a", { href: "#/dlq" }, "← Dead letters")), h("h1", {}, "Dead letter ", h("span", { id: "dlq-id" }, id)), h("p", { class: "muted" }, "Loading…"));
  api
    .deadLetter(partition, offset)
    .then((r) => {
      if (closed) return;
      const item = (k, v) => [h("dt", {}, k), h("dd", {}, v)];
      root.replaceChildren(
        root.children[0],
        root.children[1],
        h(
          "dl",
          { class: "pairs", id: "dlq-summary" },
          item("Reason", h("code", { id: "dlq-reason" }, r.reason)),
          item("Message", r.message || ""),
          item("Time", r.time),
          item("Source", source(r)),
          item("Key", r.key === null ? h("span", { class: "muted" }, "none") : h("code", {}, r.key)),
          item("Size", h("span", { id: "dlq-size" }, size(r))),
          r.truncated ? item("Truncated", h("strong", { id: "dlq-truncated" }, `only the first ${r.size} of ${r.truncated_from} bytes are kept`)) : null,
        ),
        h("h2", {}, "Headers"),
        h("dl", { class: "pairs", id: "dlq-headers" }, Object.entries(r.headers).map(([k, v]) => item(k, v))),
        h("h2", {}, "Value ", h("span", { class: "muted", id: "dlq-value-encoding" }, `(${r.value.encoding === "json" ? "UTF-8 JSON" : "base64"})`)),
        h("pre", { id: "dlq-value", class: "value" }, r.value.text),
        h("h2", {}, "Events decoded"),
        r.decoded
          ? h("pre", { id: "dlq-decoded" }, JSON.stringify(r.decoded, null, 2))
          : h("p", { id: "dlq-decode-error", class: "notice error" }, r.decode_error || "not decoded"),
        h(
          "div",
          { class: "buttons" },
          h("button", { type: "button", id: "dlq-redrive-dry", onclick: () => redrive({ ids: [id], dry_run: true }, result) }, "Dry run: redrive this"),
          h("button", { type: "button", id: "dlq-redrive-one", onclick: () => redrive({ ids: [id], dry_run: false }, result) }, "Redrive this"),
        ),
        result,
      );
    })
    .catch((err) => {
      if (!closed) root.replaceChildren(root.children[0], root.children[1], h("p", { class: "notice error", id: "dlq-error" }, refusedText(err)));
    });
  return () => {
    closed = true;
  };
}
