// fairlane's job browser: a client of the /v1 API, like any other.
//
// The API key is entered once, kept in this tab's sessionStorage and sent as
// `Authorization: Bearer` on every fetch; it never goes into a URL and is never logged.
// Views are chosen by the URL's fragment (#/jobs?state=…, #/jobs/<id>, #/dead-letters), so
// links, the back button and reloads work. Every value from the API is put in the page as
// text (never as HTML). Event streams are read with fetch: EventSource cannot send the key.

const KEY_STORAGE = "fairlane.api-key";
const FINISHED = new Set(["succeeded", "dead", "cancelled"]);
const PAGE_SIZES = ["20", "50", "100"];
const DEFAULT_PAGE_SIZE = "50";

const $ = (id) => document.getElementById(id);

let session = null; // {key, tenant, admin, lanes, states} of the key in use
let current = null; // the view on screen: {name, update(params)?, stop()}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.title = problem.title || `HTTP ${status}`;
  }

  static async of(response) {
    let problem = {};
    try {
      problem = await response.json();
    } catch {
      // not a problem body (a proxy's error page): the status says enough
    }
    return new ApiError(response.status, problem);
  }
}

function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

function authHeaders(key = storedKey()) {
  return { Authorization: `Bearer ${key}` };
}

async function request(path, { method = "GET", body, key, signal, headers = {} } = {}) {
  const init = { method, signal, headers: { ...authHeaders(key), ...headers }, cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (response.status === 401 && key === undefined) {
    signOut("The API key is unknown or was revoked: sign in again.");
  }
  if (!response.ok) throw await ApiError.of(response);
  return response;
}

async function getJson(path, options) {
  return (await request(path, options)).json();
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// Server-Sent Events over fetch: yields {event, id, data, retry} as the stream delivers them.
async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const terminator = /\r\n|\r|\n/g;
  let buffer = "";
  let event = { event: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let start = 0;
    terminator.lastIndex = 0;
    for (let match; (match = terminator.exec(buffer)); ) {
      if (match[0] === "\r" && match.index === buffer.length - 1) break; // may be half of \r\n
      const line = buffer.slice(start, match.index);
      start = terminator.lastIndex;
      if (line === "") {
        if (event.data.length) yield { ...event, data: event.data.join("\n") };
        event = { event: "message", data: [] };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") event.data.push(text);
        else if (field === "event") event.event = text;
        else if (field === "id") event.id = text;
        else if (field === "retry" && /^\d+$/.test(text)) event.retry = Number(text);
      }
    }
    buffer = buffer.slice(start);
  }
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => clearTimeout(timer) || resolve(), { once: true });
  });
}

// Follow a job's events until it finishes (reconnecting with Last-Event-ID) or `signal` aborts.
async function followJob(jobId, onChange, signal) {
  let lastId = null;
  let retry = 2000;
  while (!signal.aborted) {
    const headers = lastId ? { "Last-Event-ID": lastId } : {};
    const response = await request(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { signal, headers });
    if (response.status === 204) return;
    for await (const event of readEvents(response.body)) {
      lastId = event.id || lastId;
      retry = event.retry || retry;
      const data = JSON.parse(event.data);
      onChange(data);
      if (FINISHED.has(data.state)) return;
    }
    await pause(retry, signal);
  }
}

// ---------------------------------------------------------------- building the page

// Children worth adding: nested lists flattened, null, undefined and false left out.
function fragment(...children) {
  return children.flat().filter((child) => child !== null && child !== undefined && child !== false);
}

function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...fragment(...children));
  return element;
}

function badge(state) {
  return h("span", { class: `badge state-${state}` }, state);
}

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return h("time", { datetime: iso, title: iso }, date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" }));
}

function shortId(id) {
  return id.length > 13 ? `${id.slice(0, 8)}…` : id;
}

function jobLink(id) {
  return h("a", { href: `#/jobs/${encodeURIComponent(id)}`, class: "mono", "aria-label": `Job ${id}`, title: id }, shortId(id));
}

function progressText(progress) {
  if (!progress) return "";
  const total = progress.total === null || progress.total === undefined ? "" : ` of ${progress.total}`;
  const percent = progress.percent === undefined ? "" : ` (${progress.percent}%)`;
  return `${progress.done}${total}${percent}`;
}

function progressBar(progress, label) {
  const bar = h("progress", { max: "100", "aria-label": label });
  if (progress && progress.percent !== undefined) bar.value = progress.percent;
  else if (progress === null) bar.value = 0;
  return bar; // no value: indeterminate (a count with no total)
}

function errorNotice(error) {
  return h("p", { class: "notice error", role: "alert" }, `${error.title || "Error"}: ${error.message}`);
}

function toast(text) {
  const box = $("toast");
  box.textContent = text;
  box.classList.add("shown");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => box.classList.remove("shown"), 6000);
}

// The confirmation dialog: resolves true when the user confirms, false on "keep" or Escape.
function confirmAction({ title, text, confirm, keep }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = confirm;
  $("confirm-keep").textContent = keep;
  return new Promise((resolve) => {
    const finish = (answer) => {
      $("confirm-ok").removeEventListener("click", onConfirm);
      $("confirm-keep").removeEventListener("click", onKeep);
      dialog.removeEventListener("close", onClose);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const onConfirm = () => finish(true);
    const onKeep = () => finish(false);
    const onClose = () => finish(false);
    $("confirm-ok").addEventListener("click", onConfirm);
    $("confirm-keep").addEventListener("click", onKeep);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
  });
}

function labelled(label, control) {
  return h("label", { class: "field" }, h("span", {}, label), control);
}

function select(name, options, value) {
  return h(
    "select",
    { name },
    options.map(([optionValue, text]) => h("option", { value: optionValue, selected: optionValue === value }, text)),
  );
}

// ---------------------------------------------------------------- views

function jobsView(params) {
  const results = h("div", { class: "results" });
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter jobs", method: "post" },
    labelled("State", select("state", [["", "any"], ...session.states.map((s) => [s, s])], "")),
    labelled("Actor", h("input", { name: "actor", type: "text", maxlength: "255", spellcheck: "false" })),
    labelled("Priority", select("priority", [["", "any"], ...session.lanes.map((l) => [l, l])], "")),
    session.admin
      ? labelled("Tenant", h("input", { name: "tenant", type: "text", maxlength: "255", spellcheck: "false" }))
      : null,
    labelled("Per page", select("limit", PAGE_SIZES.map((n) => [n, n]), DEFAULT_PAGE_SIZE)),
    h("div", { class: "filter-actions" },
      h("button", { type: "submit", class: "primary" }, "Apply filters"),
      h("a", { href: "#/jobs", class: "button quiet" }, "Clear")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form));
    if (values.limit === DEFAULT_PAGE_SIZE) delete values.limit;
    navigate(`#/jobs${query(values)}`);
  });

  let controller = new AbortController();

  async function update(next) {
    controller.abort();
    controller = new AbortController();
    for (const element of form.elements) {
      if (element.name) element.value = next.get(element.name) || (element.name === "limit" ? DEFAULT_PAGE_SIZE : "");
    }
    const filters = Object.fromEntries(next);
    const limit = filters.limit || DEFAULT_PAGE_SIZE;
    results.setAttribute("aria-busy", "true");
    try {
      const page = await getJson(`/v1/jobs${query({ ...filters, limit })}`, { signal: controller.signal });
      results.replaceChildren(jobsTable(page.jobs), pager(filters, page.next_cursor));
      announce(`${page.jobs.length} job${page.jobs.length === 1 ? "" : "s"} shown`);
    } catch (error) {
      if (error.name !== "AbortError") results.replaceChildren(errorNotice(error));
    } finally {
      results.removeAttribute("aria-busy");
    }
  }

  const refresh = h("button", { type: "button", class: "quiet", onclick: () => update(currentParams()) }, "Refresh");
  render(
    h("div", { class: "heading" }, h("h1", { tabindex: "-1" }, "Jobs"), refresh),
    form,
    h("p", { id: "results-status", class: "sr-only", role: "status" }),
    results,
  );
  update(params);
  return { name: "jobs", update, stop: () => controller.abort() };
}

function jobsTable(jobs) {
  if (!jobs.length) return h("p", { class: "empty" }, "No jobs match these filters.");
  const admin = session.admin;
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "jobs" },
      h("caption", { class: "sr-only" }, "Jobs, newest first"),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Job"),
        h("th", { scope: "col" }, "Actor"),
        admin ? h("th", { scope: "col" }, "Tenant") : null,
        h("th", { scope: "col" }, "Priority"),
        h("th", { scope: "col" }, "State"),
        h("th", { scope: "col", class: "num" }, "Attempts"),
        h("th", { scope: "col" }, "Progress"),
        h("th", { scope: "col" }, "Enqueued"))),
      h("tbody", {}, jobs.map((job) => h("tr", { "data-job-id": job.id },
        h("td", {}, jobLink(job.id)),
        h("td", { class: "mono" }, job.actor),
        admin ? h("td", {}, job.tenant) : null,
        h("td", {}, job.priority),
        h("td", {}, badge(job.state), job.cancel_requested && !FINISHED.has(job.state) ? h("span", { class: "note" }, " cancelling") : null),
        h("td", { class: "num" }, String(job.attempts)),
        h("td", {}, job.progress
          ? h("div", { class: "progress-cell" }, progressBar(job.progress, `Progress of job ${job.id}`), h("span", {}, progressText(job.progress)))
          : "—"),
        h("td", {}, when(job.enqueued_at))))),
    ),
  );
}

function pager(filters, nextCursor) {
  const { cursor, ...first } = filters;
  return h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    cursor ? h("a", { href: `#/jobs${query(first)}`, class: "button" }, "First page") : null,
    nextCursor ? h("a", { href: `#/jobs${query({ ...first, cursor: nextCursor })}`, class: "button" }, "Next page") : null,
  );
}

function jobView(jobId) {
  const controller = new AbortController();
  const body = h("div", { class: "job" }, h("p", { class: "loading" }, "Loading…"));
  render(
    h("p", { class: "back" }, h("a", { href: "#/jobs" }, "← All jobs")),
    h("div", { class: "heading" }, h("h1", { tabindex: "-1" }, "Job ", h("code", {}, jobId))),
    body,
  );

  let job = null;
  const live = h("span", { class: "live" });
  const stateSlot = h("span", {});
  const attemptsSlot = h("dd", {});
  const progressSlot = h("div", { class: "progress-block" });
  const actionsSlot = h("div", { class: "actions" });

  function showLive(data) {
    stateSlot.replaceChildren(badge(data.state));
    attemptsSlot.textContent = String(data.attempts);
    if (!data.progress && FINISHED.has(data.state)) {
      progressSlot.replaceChildren(h("p", { class: "progress-text note", id: "progress-text" }, "No progress was reported."));
      return;
    }
    const bar = progressBar(data.progress, "Progress");
    bar.id = "job-progress";
    const text = data.progress ? progressText(data.progress) : "No progress reported yet";
    progressSlot.replaceChildren(
      ...fragment(
        bar,
        h("p", { class: "progress-text", id: "progress-text" }, text),
        data.progress && data.progress.message ? h("span", { class: "message" }, data.progress.message) : null,
      ),
    );
  }

  function showActions() {
    const buttons = [];
    if (job.has_result) {
      buttons.push(h("button", { type: "button", class: "primary", onclick: () => downloadResult(job.id) }, "Download result"));
    }
    if (!FINISHED.has(job.state) && !job.cancel_requested) {
      buttons.push(h("button", { type: "button", class: "danger", onclick: cancel }, "Cancel job…"));
    }
    if (job.cancel_requested && !FINISHED.has(job.state)) {
      buttons.push(h("p", { class: "note" }, "Cancellation requested: the job stops at its next check."));
    }
    actionsSlot.replaceChildren(...buttons);
  }

  async function cancel() {
    const confirmed = await confirmAction({
      title: "Cancel this job?",
      text: `Job ${job.id} (${job.actor}) will not run, or stops if it is running. This cannot be undone.`,
      confirm: "Cancel job",
      keep: "Keep it",
    });
    if (!confirmed) return;
    try {
      job = await getJson(`/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" });
      showLive(job);
      showActions();
      toast(`Job ${shortId(job.id)} is ${job.state === "cancelled" ? "cancelled" : "being cancelled"}.`);
    } catch (error) {
      actionsSlot.append(errorNotice(error));
    }
  }

  function show() {
    const error = job.error
      ? h("section", { class: "card error-card", "aria-labelledby": "error-title" },
          h("h2", { id: "error-title" }, "Error"),
          h("p", {}, h("strong", { class: "mono" }, job.error.type), ": ", job.error.message),
          job.error.traceback
            ? h("details", { open: true }, h("summary", {}, "Traceback"), h("pre", { class: "traceback" }, job.error.traceback))
            : null)
      : null;
    const fact = (term, value) => [h("dt", {}, term), h("dd", {}, value)];
    body.replaceChildren(
      ...fragment(
        h("div", { class: "summary" }, stateSlot, live),
        h("section", { class: "card", "aria-labelledby": "progress-title" },
          h("h2", { id: "progress-title" }, "Progress"), progressSlot, actionsSlot),
        error,
        h("section", { class: "card", "aria-labelledby": "details-title" },
          h("h2", { id: "details-title" }, "Details"),
          h("dl", { class: "facts" },
            fact("Actor", h("span", { class: "mono" }, job.actor)),
            fact("Queue", job.queue),
            fact("Tenant", job.tenant),
            fact("Priority", job.priority),
            [h("dt", {}, "Attempts"), attemptsSlot],
            fact("Idempotency key", job.idempotency_key || "—"),
            fact("Enqueued", when(job.enqueued_at)),
            fact("Next run", when(job.next_run_at)),
            fact("Started", when(job.started_at)),
            fact("Finished", when(job.finished_at)))),
      ),
    );
    showLive(job);
    showActions();
  }

  async function load() {
    try {
      job = await getJson(`/v1/jobs/${encodeURIComponent(jobId)}`, { signal: controller.signal });
    } catch (error) {
      if (error.name !== "AbortError") body.replaceChildren(errorNotice(error));
      return;
    }
    show();
    if (FINISHED.has(job.state)) return;
    live.textContent = "● live";
    try {
      await followJob(job.id, (data) => {
        const actionsChanged = data.state !== job.state || data.cancel_requested !== job.cancel_requested;
        job = { ...job, ...data };
        showLive(job);
        if (actionsChanged) showActions();
      }, controller.signal);
      // Finished: read it whole once more (error, result, timestamps).
      job = await getJson(`/v1/jobs/${encodeURIComponent(jobId)}`, { signal: controller.signal });
      live.textContent = "";
      show();
    } catch (error) {
      if (error.name === "AbortError") return;
      live.textContent = "";
      body.prepend(h("p", { class: "notice error", role: "alert" }, `Live updates stopped: ${error.message}`));
    }
  }

  load();
  return { name: "job", stop: () => controller.abort() };
}

async function downloadResult(jobId) {
  try {
    const response = await request(`/v1/jobs/${encodeURIComponent(jobId)}/result`);
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: `${jobId}.json`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    toast(`No result: ${error.message}`);
  }
}

function deadLettersView(params) {
  const admin = session.admin;
  const results = h("div", { class: "results" });
  let controller = new AbortController();
  const filters = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter dead letters", method: "post" },
    labelled("Actor", h("input", { name: "actor", type: "text", maxlength: "255", spellcheck: "false" })),
    admin ? labelled("Tenant", h("input", { name: "tenant", type: "text", maxlength: "255", spellcheck: "false" })) : null,
    h("div", { class: "filter-actions" },
      h("button", { type: "submit", class: "primary" }, "Apply filters"),
      h("a", { href: "#/dead-letters", class: "button quiet" }, "Clear")),
  );
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    navigate(`#/dead-letters${query(Object.fromEntries(new FormData(filters)))}`);
  });

  const olderThan = h("input", { id: "purge-minutes", name: "minutes", type: "number", min: "0", step: "any", value: "60", required: true });
  const purgeForm = admin
    ? h("form", { class: "purge card", "aria-labelledby": "purge-title", method: "post" },
        h("h2", { id: "purge-title" }, "Purge"),
        h("p", {}, "Delete the dead letters shown by these filters that died more than this long ago."),
        h("div", { class: "inline" },
          h("label", { for: "purge-minutes" }, "Older than (minutes)"), olderThan,
          h("button", { type: "submit", class: "danger" }, "Purge…")))
    : h("p", { class: "note" }, "Requeue and purge need an admin key.");
  if (admin) purgeForm.addEventListener("submit", (event) => { event.preventDefault(); purge(); });

  let filterValues = {};

  async function update(next) {
    controller.abort();
    controller = new AbortController();
    filterValues = { actor: next.get("actor") || undefined, tenant: next.get("tenant") || undefined };
    for (const element of filters.elements) if (element.name) element.value = next.get(element.name) || "";
    results.setAttribute("aria-busy", "true");
    try {
      const jobs = await getJson(`/v1/dead-letters${query(filterValues)}`, { signal: controller.signal });
      results.replaceChildren(deadTable(jobs));
      announce(`${jobs.length} dead letter${jobs.length === 1 ? "" : "s"} shown`);
    } catch (error) {
      if (error.name !== "AbortError") results.replaceChildren(errorNotice(error));
    } finally {
      results.removeAttribute("aria-busy");
    }
  }

  async function requeue(job) {
    try {
      await request(`/v1/dead-letters/${encodeURIComponent(job.id)}/requeue`, { method: "POST" });
      toast(`Job ${shortId(job.id)} requeued.`);
    } catch (error) {
      toast(`Not requeued: ${error.message}`);
    }
    await update(currentParams());
    $("main").focus();
  }

  async function purge() {
    const minutes = Number(olderThan.value);
    const scope = [
      filterValues.actor ? `of actor ${filterValues.actor}` : null,
      filterValues.tenant ? `of tenant ${filterValues.tenant}` : null,
    ].filter(Boolean).join(" ");
    const unfiltered = !filterValues.actor && !filterValues.tenant;
    const confirmed = await confirmAction({
      title: "Purge dead letters?",
      text: `Every dead letter ${scope || "of every tenant"} that died more than ${minutes} minute${minutes === 1 ? "" : "s"} ago `
        + `is deleted with its result${unfiltered ? " (and undecodable messages that old in the dead-letter queues)" : ""}. `
        + "This cannot be undone.",
      confirm: "Purge",
      keep: "Keep them",
    });
    if (!confirmed) return;
    try {
      const { count } = await getJson("/v1/dead-letters:purge", {
        method: "POST",
        body: { older_than_seconds: minutes * 60, ...filterValues },
      });
      toast(`${count} dead letter${count === 1 ? "" : "s"} purged.`);
    } catch (error) {
      toast(`Not purged: ${error.message}`);
    }
    await update(currentParams());
  }

  function deadTable(jobs) {
    if (!jobs.length) return h("p", { class: "empty" }, "No dead letters. ✓");
    return h("div", { class: "table-wrap" }, h(
      "table",
      { class: "jobs dead" },
      h("caption", { class: "sr-only" }, "Dead letters, oldest first"),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Job"),
        h("th", { scope: "col" }, "Actor"),
        admin ? h("th", { scope: "col" }, "Tenant") : null,
        h("th", { scope: "col" }, "Error"),
        h("th", { scope: "col", class: "num" }, "Attempts"),
        h("th", { scope: "col" }, "Died"),
        admin ? h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Actions")) : null)),
      h("tbody", {}, jobs.map((job) => h("tr", { "data-job-id": job.id },
        h("td", {}, jobLink(job.id)),
        h("td", { class: "mono" }, job.actor),
        admin ? h("td", {}, job.tenant) : null,
        h("td", { class: "error-text" }, job.error ? `${job.error.type}: ${job.error.message}` : "—"),
        h("td", { class: "num" }, String(job.attempts)),
        h("td", {}, when(job.finished_at)),
        admin
          ? h("td", {}, h("button", { type: "button", onclick: () => requeue(job), "aria-label": `Requeue job ${job.id}` }, "Requeue"))
          : null))),
    ));
  }

  render(
    h("div", { class: "heading" }, h("h1", { tabindex: "-1" }, "Dead letters")),
    filters,
    h("p", { id: "results-status", class: "sr-only", role: "status" }),
    results,
    purgeForm,
  );
  update(params);
  return { name: "dead-letters", update, stop: () => controller.abort() };
}

function announce(text) {
  const status = $("results-status");
  if (status) status.textContent = text;
}

// ---------------------------------------------------------------- routing and signing in

function render(...children) {
  $("view").replaceChildren(...fragment(...children));
}

function currentParams() {
  const hash = location.hash || "#/jobs";
  const at = hash.indexOf("?");
  return new URLSearchParams(at < 0 ? "" : hash.slice(at + 1));
}

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function route() {
  if (!session) return;
  const hash = location.hash || "#/jobs";
  const path = hash.split("?")[0];
  const params = currentParams();
  const jobMatch = /^#\/jobs\/(.+)$/.exec(path);
  const name = jobMatch ? "job" : path === "#/dead-letters" ? "dead-letters" : "jobs";
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.view === name || (name === "job" && link.dataset.view === "jobs")) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (current && current.name === name && current.update) {
    current.update(params); // same list, new filters: keep the form and the focus where they are
    return;
  }
  if (current) current.stop();
  if (name === "job") current = jobView(decodeURIComponent(jobMatch[1]));
  else if (name === "dead-letters") current = deadLettersView(params);
  else current = jobsView(params);
  document.title = `${name === "job" ? "Job" : name === "dead-letters" ? "Dead letters" : "Jobs"} · fairlane`;
  $("view").querySelector("h1").focus();
}

function showSignedIn() {
  $("login").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  $("who-label").textContent = session.admin ? `${session.key} · admin` : `${session.key} · tenant ${session.tenant}`;
  route();
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY_STORAGE);
  session = null;
  if (current) current.stop();
  current = null;
  $("view").replaceChildren();
  $("nav").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("api-key").focus();
}

async function signIn(key) {
  try {
    session = await getJson("/ui/session", { key });
  } catch (error) {
    const message = error.status === 401 ? "This key is unknown or revoked." : error.message;
    signOut(message);
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  showSignedIn();
}

function start() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("api-key");
    const key = input.value.trim();
    input.value = "";
    if (key) signIn(key);
  });
  $("sign-out").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", route);
  const key = storedKey();
  if (key) signIn(key);
  else signOut();
}

start();
