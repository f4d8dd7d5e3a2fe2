// The public HTTP API, as the Python client uses it: JSON bodies, {"message"} errors, the token
// as "Authorization: Bearer", 503 + Retry-After retried with an Idempotency-Key on writes.

const TOKEN_KEY = "runstream.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

function randomKey() {
  // crypto.randomUUID needs a secure context; getRandomValues works on plain http too.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "ui-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** One call; resolves to the parsed JSON body (null for 204), rejects with ApiError carrying
 * the server's status and message. Writes retry 503 a few times with the same Idempotency-Key,
 * so a retry is the same event (applied once). */
export async function call(path, { method = "GET", body, attempts = 5 } = {}) {
  const write = method !== "GET";
  const headers = authHeaders(body === undefined ? {} : { "Content-Type": "application/json" });
  if (write && method === "PUT") headers["Idempotency-Key"] = randomKey();
  for (let attempt = 1; ; attempt++) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError(0, `the worker did not answer (${err.message})`);
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (response.ok) return data;
    if (response.status === 503 && attempt < attempts && (!write || method === "PUT")) {
      const after = Number(response.headers.get("Retry-After")) || 1;
      await sleep(Math.min(after, 5) * 1000);
      continue;
    }
    const message = data && typeof data.message === "string" ? data.message : response.statusText;
    throw new ApiError(response.status, message || `HTTP ${response.status}`);
  }
}

export const api = {
  listRuns(params) {
    return call(`/api/v1/runs?${params.toString()}`);
  },
  getRun(id) {
    return call(`/api/v1/runs/${encodeURIComponent(id)}`);
  },
  history(id) {
    return call(`/api/v1/runs/${encodeURIComponent(id)}/history`);
  },
  runAction(id, action) {
    return call(`/api/v1/runs/${encodeURIComponent(id)}/actions`, {
      method: "PUT",
      body: { action_type: action },
    });
  },
  approve(id, taskId) {
    const path = `/api/v1/runs/${encodeURIComponent(id)}/tasks/${encodeURIComponent(taskId)}/actions`;
    return call(path, { method: "PUT", body: { action_type: "approve" } });
  },
  recreate(id, fromStart) {
    return call("/api/v1/runs", { method: "POST", body: { run_id: id, from_start: fromStart } });
  },
  /** params: URLSearchParams of GET /api/v1/dlq (reason, source_partition, since, limit, cursor). */
  deadLetters(params) {
    return call(`/api/v1/dlq?${params.toString()}`);
  },
  deadLetter(partition, offset) {
    return call(`/api/v1/dlq/${encodeURIComponent(partition)}/${encodeURIComponent(offset)}`);
  },
  /** body: {ids | reasons | source_partitions | since | until | all, dry_run}. */
  redrive(body) {
    return call("/api/v1/dlq/redrive", { method: "POST", body });
  },
  async metrics() {
    const response = await fetch("/metrics", { headers: { Accept: "text/plain" } });
    if (!response.ok) throw new ApiError(response.status, `/metrics answered ${response.status}`);
    return response.text();
  },
};

// ----------------------------------------------------------------------------- event streams
/** One server-sent event stream of the API (phase changes, or ready tasks), to every listener,
 * over one connection for the page. Without a token: an EventSource (the browser resumes with
 * Last-Event-ID by itself). With a token: fetch() reading the same stream, because an
 * EventSource cannot send Authorization; it resumes the same way, sending Last-Event-ID itself. */
class EventStream {
  constructor(url) {
    this.url = url;
    this.running = false;
    this.listeners = new Set();
    this.stateListeners = new Set();
    this.state = "closed";
    this.last = null;
    this.source = null;
    this.abort = null;
    this.generation = 0;
  }

  on(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  onState(fn) {
    this.stateListeners.add(fn);
    fn(this.state);
    return () => this.stateListeners.delete(fn);
  }

  setState(state) {
    this.state = state;
    for (const fn of this.stateListeners) fn(state);
  }

  deliver(id, data) {
    if (id) this.last = id;
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    for (const fn of this.listeners) fn(event);
  }

  /** (Re)connect, e.g. after the token changed; the cursor is kept, nothing is lost. */
  restart() {
    this.stop();
    this.running = true;
    const gen = ++this.generation;
    if (token()) this.fetchLoop(gen);
    else this.openSource(gen);
  }

  /** Connect from now on, unless connected (a page that needs the stream while it is shown). */
  follow() {
    if (this.running) return;
    this.last = null;
    this.restart();
  }

  stop() {
    this.running = false;
    this.generation++;
    if (this.source) this.source.close();
    if (this.abort) this.abort.abort();
    this.source = null;
    this.abort = null;
  }

  openSource(gen) {
    const url = this.last ? `${this.url}?after=${encodeURIComponent(this.last)}` : this.url;
    const source = new EventSource(url);
    this.source = source;
    this.setState("connecting");
    source.onopen = () => this.setState("live");
    source.onmessage = (e) => this.deliver(e.lastEventId, e.data);
    source.onerror = () => {
      if (gen !== this.generation) return;
      if (source.readyState === EventSource.CLOSED) {
        // Refused (410 cursor expired, 401, 5xx): EventSource gives up; start again ourselves.
        this.setState("reconnecting");
        source.close();
        setTimeout(() => gen === this.generation && this.openSource(gen), 2000);
      } else {
        this.setState("reconnecting"); // the browser retries with Last-Event-ID
      }
    };
  }

  async fetchLoop(gen) {
    let delay = 500;
    while (gen === this.generation) {
      const abort = new AbortController();
      this.abort = abort;
      this.setState("connecting");
      try {
        const headers = authHeaders({ Accept: "text/event-stream" });
        if (this.last) headers["Last-Event-ID"] = this.last;
        const response = await fetch(this.url, { headers, signal: abort.signal, cache: "no-store" });
        if (response.status === 410) this.last = null; // too old: follow from now on
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        this.setState("live");
        delay = 500;
        await this.read(response.body, gen);
      } catch {
        if (gen !== this.generation) return;
      }
      this.setState("reconnecting");
      await sleep(delay);
      delay = Math.min(delay * 2, 10000);
    }
  }

  async read(body, gen) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let id = null;
    let data = [];
    while (gen === this.generation) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).replace(/\r$/, "");
        buffer = buffer.slice(nl + 1);
        if (line === "") {
          if (data.length) this.deliver(id, data.join("\n"));
          id = null;
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        } else if (line.startsWith("id:")) {
          id = line.slice(3).replace(/^ /, "");
        }
      }
    }
  }
}

/** The phase changes of every run (runs.phases): followed as long as the console is open. */
export const phases = new EventStream("/api/v1/runs/events");
/** The tasks becoming ready (runs.tasks, never mixed into the phase stream): a run's page
 * follows them while its run is active. */
export const readyTasks = new EventStream("/api/v1/runs/tasks/events");
