// The console's entry: the token form, the stream indicator and a hash router over the pages.

import { phases, setToken, token } from "./api.js";
import { renderDeadLetter, renderDeadLetters } from "./dlq.js";
import { renderRun } from "./run.js";
import { renderRuns } from "./runs.js";
import { notice } from "./ui.js";

const main = document.getElementById("main");
let cleanup = null;

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  notice("");
  const hash = location.hash.replace(/^#/, "") || "/runs";
  const [path, qs] = hash.split("?");
  const query = new URLSearchParams(qs || "");
  const run = path.match(/^\/run\/([0-9]{16})$/);
  const letter = path.match(/^\/dlq\/([0-9]+):([0-9]+)$/);
  for (const a of document.querySelectorAll("nav.top a")) {
    const current = (a.dataset.page === "runs" && path === "/runs") || (a.dataset.page === "dlq" && (path === "/dlq" || letter));
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (run) {
    document.title = `Run ${run[1]} · runstream`;
    cleanup = renderRun(main, run[1]);
  } else if (letter) {
    document.title = `Dead letter ${letter[1]}:${letter[2]} · runstream`;
    cleanup = renderDeadLetter(main, letter[1], letter[2]);
  } else if (path === "/dlq") {
    document.title = "Dead letters · runstream";
    cleanup = renderDeadLetters(main);
  } else {
    document.title = "Runs · runstream";
    cleanup = renderRuns(main, query);
  }
  main.focus({ preventScroll: true });
}

function tokenForm() {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token");
  const state = document.getElementById("token-state");
  const show = () => (state.textContent = token() ? "token given" : "no token");
  input.value = token();
  show();
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    show();
    phases.restart(); // the stream carries the token too
    route();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    input.value = "";
    setToken("");
    show();
    phases.restart();
    route();
  });
}

function streamState() {
  const el = document.getElementById("stream-state");
  phases.onState((state) => {
    el.textContent = { live: "live", connecting: "connecting…", reconnecting: "reconnecting…", closed: "off" }[state] || state;
    el.dataset.state = state;
  });
}

tokenForm();
streamState();
phases.restart();
window.addEventListener("hashchange", route);
route();
