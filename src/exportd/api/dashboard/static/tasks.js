// The project's exports: filters (status, dataset, file name), pages of 20, a form to
// start an export, and a refresh while any task on the page is still running.

import { h, renderIf, toast } from "./dom.js";
import {
  FORMATS,
  STATUSES,
  TERMINAL,
  ago,
  count,
  duration,
  elapsed,
  shortId,
  statusClass,
  statusLabel,
} from "./format.js";

const PAGE = 20;
const BUSY_REFRESH_MS = 2000;
const IDLE_REFRESH_MS = 10000;

export function statusBadge(status) {
  return h("span", { class: `badge ${statusClass(status)}`, dataset: { status } }, statusLabel(status));
}

// A random Idempotency-Key for one submission of the form: a double click, or a retry of
// the same submission, returns the task the first one created.
function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `dashboard-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function miniBar(task) {
  const value = Math.round(task.progress ?? 0);
  const fill = h("span", { class: "fill" });
  fill.style.width = `${value}%`;
  return h(
    "span",
    { class: `mini-bar ${statusClass(task.status)}`, role: "progressbar", "aria-valuenow": value, "aria-valuemin": 0, "aria-valuemax": 100, title: `${value}%` },
    fill,
  );
}

function row(task, names) {
  const link = `#/tasks/${encodeURIComponent(task.task_id)}`;
  return h(
    "tr",
    { dataset: { taskId: task.task_id } },
    h("td", {}, statusBadge(task.status)),
    h(
      "td",
      { class: "name" },
      h("a", { href: link, class: "task-link" }, task.file_name ?? task.task_id),
      h("div", { class: "muted mono small", title: task.task_id }, shortId(task.task_id)),
    ),
    h("td", { class: "hide-sm", title: task.dataset_id }, names.get(task.dataset_id) ?? task.dataset_id),
    h("td", { class: "hide-sm" }, h("span", { class: "chip" }, task.format)),
    h("td", {}, h("div", { class: "progress-cell" }, miniBar(task), h("span", { class: "small muted" }, `${Math.round(task.progress ?? 0)}%`))),
    h("td", { class: "num" }, count(task.finished_count)),
    h("td", { class: "hide-sm", title: task.create_time }, ago(task.create_time)),
    h("td", { class: "hide-sm num" }, duration(elapsed(task))),
  );
}

export function tasksView(root, ctx, params) {
  const state = {
    status: params.get("status") ?? "",
    dataset: params.get("dataset") ?? "",
    file: params.get("file") ?? "",
    offset: Math.max(0, Number.parseInt(params.get("offset") ?? "0", 10) || 0),
  };
  let timer = null;
  let disposed = false;
  let formKey = newKey();
  const names = new Map(); // dataset_id -> name
  let shown = null; // the last page, shown again once the dataset names are known

  const statusSelect = h(
    "select",
    { id: "filter-status", "aria-label": "Status" },
    h("option", { value: "" }, "Any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === state.status }, statusLabel(s))),
  );
  const datasetSelect = h("select", { id: "filter-dataset", "aria-label": "Dataset" }, h("option", { value: "" }, "Any dataset"));
  const fileInput = h("input", {
    id: "filter-file",
    type: "search",
    placeholder: "File name starts with…",
    "aria-label": "File name",
    value: state.file,
  });
  const tbody = h("tbody");
  const summary = h("span", { class: "muted" });
  const prev = h("button", { type: "button", class: "ghost", id: "page-prev" }, "← Previous");
  const next = h("button", { type: "button", class: "ghost", id: "page-next" }, "Next →");
  const listError = h("div", { class: "alert error", role: "alert", hidden: true });

  // the start form
  const startDataset = h("select", { id: "start-dataset", name: "dataset", required: true });
  const startFormat = h(
    "select",
    { id: "start-format", name: "format" },
    FORMATS.map((f) => h("option", { value: f }, f)),
  );
  const startFile = h("input", { id: "start-file", name: "file_name", placeholder: "optional, e.g. report.csv" });
  const startParallelism = h("input", { id: "start-parallelism", name: "parallelism", type: "number", min: 1, max: 1024, placeholder: "server default" });
  const startError = h("div", { class: "alert error", role: "alert", hidden: true });
  const startButton = h("button", { type: "submit", class: "primary", id: "start-export" }, "Start export");
  const startForm = h(
    "form",
    { class: "start-form", id: "start-form", onsubmit: start },
    h("div", { class: "field" }, h("label", { for: "start-dataset" }, "Dataset"), startDataset),
    h("div", { class: "field" }, h("label", { for: "start-format" }, "Format"), startFormat),
    h("div", { class: "field grow" }, h("label", { for: "start-file" }, "File name"), startFile),
    h("div", { class: "field" }, h("label", { for: "start-parallelism" }, "Partitions"), startParallelism),
    h("div", { class: "field end" }, startButton),
  );

  root.replaceChildren(
    h(
      "section",
      { class: "page" },
      h(
        "div",
        { class: "page-head" },
        h("div", {}, h("h1", {}, "Exports"), summary),
        h("button", { type: "button", class: "ghost", onclick: () => load() }, "↻ Refresh"),
      ),
      h("div", { class: "card" }, h("h2", {}, "Start an export"), startError, startForm),
      h(
        "div",
        { class: "card" },
        h("div", { class: "filters" }, statusSelect, datasetSelect, fileInput),
        listError,
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "tasks", id: "tasks" },
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                ["Status", "Export", "Dataset", "Format", "Progress", "Rows", "Created", "Duration"].map((t, i) =>
                  h("th", { class: [2, 3, 6, 7].includes(i) ? "hide-sm" : i === 5 ? "num" : "" }, t),
                ),
              ),
            ),
            tbody,
          ),
        ),
        h("div", { class: "pager" }, prev, next),
      ),
    ),
  );

  function remember() {
    const query = new URLSearchParams();
    if (state.status) query.set("status", state.status);
    if (state.dataset) query.set("dataset", state.dataset);
    if (state.file) query.set("file", state.file);
    if (state.offset) query.set("offset", String(state.offset));
    const text = query.toString();
    history.replaceState(null, "", `#/${text ? `?${text}` : ""}`);
  }

  async function load() {
    clearTimeout(timer);
    remember();
    try {
      const body = await ctx.api.exports({
        status: state.status || undefined,
        dataset_id: state.dataset || undefined,
        file_name_prefix: state.file || undefined,
        offset: state.offset,
        limit: PAGE,
      });
      if (disposed) return;
      listError.hidden = true;
      show(body);
      const busy = body.export_tasks.some((t) => !TERMINAL.has(t.status));
      timer = setTimeout(load, busy ? BUSY_REFRESH_MS : IDLE_REFRESH_MS);
    } catch (err) {
      if (disposed || ctx.refused(err)) return;
      listError.textContent = String(err);
      listError.hidden = false;
      timer = setTimeout(load, IDLE_REFRESH_MS);
    }
  }

  function show(body) {
    const tasks = body.export_tasks;
    shown = body;
    const key = [names.size, tasks.map((t) => [t.task_id, t.status, t.progress, t.finished_count, t.update_time])];
    renderIf(tbody, key, () =>
      tasks.length
        ? tasks.map((t) => row(t, names))
        : h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No exports match these filters yet.")),
    );
    const first = body.count ? state.offset + 1 : 0;
    const last = state.offset + tasks.length;
    summary.textContent = body.count ? `${count(first)}–${count(last)} of ${count(body.count)}` : "none yet";
    prev.disabled = state.offset === 0;
    next.disabled = last >= body.count;
  }

  async function start(event) {
    event.preventDefault();
    startButton.disabled = true;
    startError.hidden = true;
    const request = { dataset_id: startDataset.value, format: startFormat.value };
    if (startFile.value.trim()) request.file_name = startFile.value.trim();
    if (startParallelism.value) request.parallelism = Number(startParallelism.value);
    try {
      const task = await ctx.api.start(request, formKey);
      formKey = newKey();
      toast(`Export ${shortId(task.task_id)} started`);
      location.hash = `#/tasks/${encodeURIComponent(task.task_id)}`;
    } catch (err) {
      if (ctx.refused(err)) return;
      startError.textContent = String(err);
      startError.hidden = false;
    } finally {
      startButton.disabled = false;
    }
  }

  function refilter() {
    state.offset = 0;
    load();
  }

  let typing = null;
  statusSelect.addEventListener("change", () => {
    state.status = statusSelect.value;
    refilter();
  });
  datasetSelect.addEventListener("change", () => {
    state.dataset = datasetSelect.value;
    refilter();
  });
  fileInput.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.file = fileInput.value.trim();
      refilter();
    }, 300);
  });
  prev.addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE);
    load();
  });
  next.addEventListener("click", () => {
    state.offset += PAGE;
    load();
  });
  // Any change of the form's content is a new request: a new Idempotency-Key.
  startForm.addEventListener("input", () => {
    formKey = newKey();
  });

  ctx
    .datasets()
    .then((datasets) => {
      if (disposed) return;
      for (const ds of datasets) {
        names.set(ds.dataset_id, ds.name);
        const label = ds.kind === "sql" ? ds.name : `${ds.name} (${ds.kind})`;
        datasetSelect.append(h("option", { value: ds.dataset_id, selected: ds.dataset_id === state.dataset }, label));
        startDataset.append(h("option", { value: ds.dataset_id }, label));
      }
      if (!datasets.length) {
        startDataset.append(h("option", { value: "", disabled: true, selected: true }, "no datasets yet"));
        startButton.disabled = true;
      }
      if (shown) show(shown);
    })
    .catch((err) => {
      if (!disposed && !ctx.refused(err)) toast(String(err), "error");
    });
  load();

  return () => {
    disposed = true;
    clearTimeout(timer);
    clearTimeout(typing);
  };
}
