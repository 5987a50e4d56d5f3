// One task, live: its status, seed 000's stage timeline, a progress bar with rate and
// ETA, a bar per partition, failed items, files and the manifest; cancel and delete.
//
// The page follows the task's server-sent events (sse.js). An event carries the new
// status, stage and counts, shown at once; the full task (rates, attempts, errors,
// files) is read again at most once a second after events. When the stream breaks, the
// page reconnects with a backoff of 1 s doubling to 30 s.

import { ApiError } from "./api.js";
import { h, renderIf, toast } from "./dom.js";
import {
  HEADER_STAGES,
  STAGES,
  TERMINAL,
  bytes,
  count,
  duration,
  elapsed,
  rate,
  shortId,
  statusClass,
  statusLabel,
  when,
} from "./format.js";
import { readEvents } from "./sse.js";
import { statusBadge } from "./tasks.js";

const REFRESH_MS = 1000;
const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const CONFIRM_MS = 4000;

const SUCCESS = new Set(["COMPLETED", "COMPLETED_WITH_ERRORS"]);
const TASK_FIELDS = [
  "status",
  "is_terminal",
  "file_status",
  "current_state",
  "progress",
  "total_count",
  "total_is_estimate",
  "finished_count",
  "failed_count",
  "bytes_written",
  "error_code",
  "error_msg",
  "update_time",
];

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

// An event's snapshot folded into the task last read in full.
function merge(task, snap) {
  const merged = { ...task };
  for (const field of TASK_FIELDS) if (field in snap) merged[field] = snap[field];
  const byIndex = new Map((snap.partitions ?? []).map((p) => [p.index, p]));
  merged.partitions = (task.partitions ?? []).map((p) => ({ ...p, ...(byIndex.get(p.index) ?? {}) }));
  for (const p of snap.partitions ?? []) {
    if (!merged.partitions.some((q) => q.index === p.index)) merged.partitions.push(p);
  }
  return merged;
}

function usesHeaderStages(task, dataset) {
  const cur = task.current_state?.status_id ?? 0;
  if (HEADER_STAGES.has(cur)) return true;
  if ((task.partitions ?? []).some((p) => p.phase === "HEADERS" || HEADER_STAGES.has(p.current_state?.status_id))) {
    return true;
  }
  return ["csv", "tsv"].includes(task.format) && dataset?.kind === "documents";
}

function stageState(task, id, headers) {
  const cur = task.current_state?.status_id ?? 0;
  if (HEADER_STAGES.has(id) && !headers) return "skipped";
  if (task.status === "COMPLETED" || task.status === "COMPLETED_WITH_ERRORS") return id <= cur ? "done" : "skipped";
  if (id < cur) return "done";
  if (id === cur) return TERMINAL.has(task.status) ? "stopped" : "current";
  return "todo";
}

function timeline(task, dataset) {
  const headers = usesHeaderStages(task, dataset);
  const here = new Map();
  for (const p of task.partitions ?? []) {
    if (p.status === "DONE" || p.status === "FAILED" || p.status === "CANCELED") continue;
    const id = p.current_state?.status_id;
    here.set(id, (here.get(id) ?? 0) + 1);
  }
  return STAGES.map(([id, text]) => {
    const state = stageState(task, id, headers);
    const partitions = here.get(id);
    const passed = state === "skipped" && id < (task.current_state?.status_id ?? 0) ? " passed" : "";
    return h(
      "li",
      { class: `stage ${state}${passed}`, dataset: { stage: id, state }, "aria-current": state === "current" ? "step" : null },
      h("span", { class: "dot", "aria-hidden": "true" }),
      h("span", { class: "stage-id mono" }, String(id)),
      h("span", { class: "stage-text" }, text),
      partitions ? h("span", { class: "stage-parts" }, `${partitions} partition${partitions > 1 ? "s" : ""}`) : null,
      state === "skipped" && HEADER_STAGES.has(id) ? h("span", { class: "stage-parts" }, "not needed") : null,
    );
  });
}

function partitionShare(task, partition) {
  if (partition.status === "DONE") return 100;
  const n = (task.partitions ?? []).length;
  if (!task.total_count || !n) return null;
  return Math.min(99, (100 * partition.finished_count * n) / task.total_count);
}

function partitionRow(task, p) {
  const share = partitionShare(task, p);
  const fill = h("span", { class: "fill" });
  fill.style.width = `${share ?? 100}%`;
  const detail = [
    `${count(p.finished_count)} rows`,
    `attempt ${p.attempts || 0}`,
    p.lost_count ? `${p.lost_count} lost` : null,
    p.current_state?.status,
  ].filter(Boolean);
  return h(
    "div",
    { class: `partition ${statusClass(p.status)}`, dataset: { partition: p.index } },
    h("span", { class: "partition-index mono" }, `#${p.index}`),
    h(
      "span",
      {
        class: `bar small ${share === null ? "indeterminate" : ""}`,
        role: "progressbar",
        "aria-label": `Partition ${p.index}`,
        "aria-valuemin": 0,
        "aria-valuemax": 100,
        "aria-valuenow": share === null ? null : Math.round(share),
      },
      fill,
    ),
    h("span", { class: "partition-status" }, statusBadge(p.status)),
    h("span", { class: "partition-detail muted small" }, detail.join(" · ")),
    p.error_code ? h("span", { class: "partition-error small" }, `${p.error_code}: ${p.error_msg ?? ""}`) : null,
  );
}

function failedItems(task) {
  const items = task.failed_items ?? [];
  if (!items.length && !task.failed_count) return null;
  return [
    h(
      "p",
      { class: "muted" },
      task.success_rate === null ? "" : `Success rate ${task.success_rate}% of the partitions that ended. `,
      `${count(task.failed_count)} failed items.`,
    ),
    items.length
      ? h(
          "table",
          { class: "plain" },
          h("thead", {}, h("tr", {}, h("th", {}, "Partition"), h("th", {}, "Error"), h("th", {}, "Message"))),
          h(
            "tbody",
            {},
            items.map((item) =>
              h("tr", {}, h("td", { class: "mono" }, `#${item.partition}`), h("td", { class: "mono" }, item.error_code ?? "—"), h("td", {}, item.error_msg ?? "")),
            ),
          ),
        )
      : null,
  ];
}

function safeHref(url) {
  return typeof url === "string" && /^(https?:\/\/|\/)/.test(url) ? url : null;
}

export function taskView(root, ctx, taskId) {
  const controller = new AbortController();
  const { signal } = controller;
  let task = null;
  let dataset = null;
  let fetchedAt = 0;
  let refreshTimer = null;
  let lastRefresh = 0;
  let confirmTimer = null;

  const title = h("h1", { class: "task-title" }, shortId(taskId));
  const meta = h("div", { class: "muted task-meta" });
  const badge = h("div", { class: "task-status", id: "task-status", "aria-live": "polite" });
  const cancelButton = h("button", { type: "button", class: "warn", id: "task-cancel" }, "Cancel");
  const deleteButton = h("button", { type: "button", class: "danger ghost", id: "task-delete" }, "Delete");
  const errorBox = h("div", { class: "alert error", role: "alert", hidden: true });
  const live = h("span", { class: "live", id: "task-live" });

  const stages = h("ol", { class: "timeline", id: "task-timeline" });
  const fill = h("span", { class: "fill" });
  const bar = h(
    "div",
    { class: "bar", id: "task-progress", role: "progressbar", "aria-label": "Export progress", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": 0 },
    fill,
  );
  const percent = h("div", { class: "percent", id: "task-percent" }, "0%");
  const stats = h("dl", { class: "stats", id: "task-stats" });
  const partitions = h("div", { class: "partitions", id: "task-partitions" });
  const failedCard = h("div", { class: "card", hidden: true }, h("h2", {}, "Failed items"));
  const failedBody = h("div", { id: "task-failed" });
  failedCard.append(failedBody);
  const files = h("div", { id: "task-files" });
  const manifest = h("pre", { class: "manifest mono", id: "task-manifest" });
  const manifestBox = h("details", { class: "manifest-box", hidden: true }, h("summary", {}, "manifest.json"), manifest);
  const times = h("dl", { class: "times" });

  root.replaceChildren(
    h(
      "section",
      { class: "page" },
      h("a", { href: "#/", class: "back" }, "← All exports"),
      h(
        "div",
        { class: "card task-head" },
        h("div", { class: "task-head-main" }, title, meta),
        h("div", { class: "task-head-side" }, badge, live, h("div", { class: "actions" }, cancelButton, deleteButton)),
      ),
      errorBox,
      h("div", { class: "card" }, h("h2", {}, "Stage"), stages),
      h("div", { class: "card" }, h("div", { class: "progress-head" }, h("h2", {}, "Progress"), percent), bar, stats),
      h("div", { class: "grid-2" }, h("div", { class: "card" }, h("h2", {}, "Partitions"), partitions), h("div", { class: "card" }, h("h2", {}, "Times"), times)),
      failedCard,
      h("div", { class: "card" }, h("h2", {}, "Files"), files, manifestBox),
    ),
  );

  function stat(label, value, id) {
    return [h("dt", {}, label), h("dd", { id }, value)];
  }

  function tile(label, value, id) {
    return h("div", { class: "stat" }, ...stat(label, value, id));
  }

  function etaNow() {
    if (!task || task.eta_seconds === null || task.eta_seconds === undefined || TERMINAL.has(task.status)) return null;
    return Math.max(0, task.eta_seconds - (Date.now() - fetchedAt) / 1000);
  }

  function render() {
    if (!task) return;
    document.title = `${statusLabel(task.status)} · ${task.file_name ?? shortId(taskId)} · exportd`;
    title.textContent = task.file_name ?? task.task_id;
    meta.replaceChildren(
      h("span", { class: "mono", title: "task id" }, task.task_id),
      " · ",
      dataset?.name ?? task.dataset_id,
      " · ",
      h("span", { class: "chip" }, task.format),
      ` · ${task.parallelism} partition${task.parallelism === 1 ? "" : "s"}`,
    );
    renderIf(badge, task.status, () => statusBadge(task.status));
    const terminal = TERMINAL.has(task.status);
    cancelButton.disabled = terminal || task.status === "CANCELING";
    deleteButton.disabled = !terminal;
    if (task.error_code) {
      errorBox.className = `alert ${task.status === "CANCELED" ? "neutral" : "error"}`;
      errorBox.textContent = `${task.error_code}: ${task.error_msg ?? ""}`;
      errorBox.hidden = false;
    } else errorBox.hidden = true;

    stages.className = `timeline ${statusClass(task.status)}`;
    renderIf(stages, [task.status, task.current_state, (task.partitions ?? []).map((p) => [p.status, p.current_state]), dataset?.kind], () =>
      timeline(task, dataset),
    );

    const value = Math.max(0, Math.min(100, task.progress ?? 0));
    fill.style.width = `${value}%`;
    bar.setAttribute("aria-valuenow", String(value));
    bar.className = `bar ${statusClass(task.status)}${task.status === "RUNNING" && task.total_count === null ? " indeterminate" : ""}`;
    percent.textContent = `${value.toFixed(value < 10 && value > 0 ? 1 : 0)}%`;
    const total = task.total_count === null ? "unknown" : `${task.total_is_estimate ? "~" : ""}${count(task.total_count)}`;
    stats.replaceChildren(
      tile("Rows", `${count(task.finished_count)} of ${total}`, "stat-rows"),
      tile("Rate", rate(task.rows_per_second), "stat-rate"),
      tile("ETA", terminal ? "—" : duration(etaNow()), "stat-eta"),
      tile("Elapsed", duration(elapsed(task)), "stat-elapsed"),
      tile("Written", bytes(task.bytes_written), "stat-bytes"),
      tile("Failed", count(task.failed_count), "stat-failed"),
    );

    renderIf(partitions, (task.partitions ?? []).map((p) => [p.status, p.current_state, p.finished_count, p.attempts, p.lost_count, p.error_code, task.total_count]), () =>
      (task.partitions ?? []).length
        ? task.partitions.map((p) => partitionRow(task, p))
        : h("p", { class: "muted" }, "Partitions appear once the task is planned."),
    );

    const failed = failedItems(task);
    failedCard.hidden = !failed;
    renderIf(failedBody, [task.failed_items, task.success_rate, task.failed_count], () => failed ?? []);

    renderIf(files, [task.file_status, task.files], renderFiles);
    manifestBox.hidden = task.file_status !== "GENERATED";

    times.replaceChildren(
      ...stat("Created", when(task.create_time)),
      ...stat("Started", when(task.start_time)),
      ...stat("Updated", when(task.update_time)),
      ...stat("Ended", when(task.end_time)),
      ...stat("Files expire", when(task.file_expires_at)),
    );
  }

  function renderFiles() {
    const list = task.files ?? [];
    if (!list.length) {
      const text = {
        PREPARING: "The files appear here once the export is complete.",
        DELETED: "The files were deleted (expired or removed).",
        FAILED: "No files: the export did not complete.",
      };
      return h("p", { class: "muted" }, text[task.file_status] ?? "No files.");
    }
    return h(
      "table",
      { class: "plain files" },
      h("thead", {}, h("tr", {}, ["File", "Rows", "Size", "sha256", ""].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        list.map((f) =>
          h(
            "tr",
            { dataset: { file: f.name } },
            h("td", {}, f.name, f.kind === "manifest" ? h("span", { class: "chip" }, "manifest") : null),
            h("td", { class: "num" }, f.kind === "manifest" ? "—" : count(f.rows)),
            h("td", { class: "num" }, bytes(f.bytes)),
            h("td", { class: "mono small sha", title: f.sha256 }, f.sha256 ? `${f.sha256.slice(0, 12)}…` : "—"),
            h("td", { class: "end" }, downloadLink(f)),
          ),
        ),
      ),
    );
  }

  // A signed link (works without a token until url_expires_at) where the server gave
  // one; else the token-protected route, fetched with the token and saved.
  function downloadLink(f) {
    const href = safeHref(f.url);
    if (href) {
      return h("a", { href, download: f.name, class: "button small", title: `link valid until ${when(f.url_expires_at)}` }, "Download");
    }
    return h(
      "button",
      {
        type: "button",
        class: "small ghost",
        async onclick() {
          try {
            const blob = await ctx.api.download(f.download_url);
            const url = URL.createObjectURL(blob);
            h("a", { href: url, download: f.name }).click();
            setTimeout(() => URL.revokeObjectURL(url), 10000);
          } catch (err) {
            toast(String(err), "error");
          }
        },
      },
      "Download",
    );
  }

  async function refresh() {
    lastRefresh = Date.now();
    try {
      task = await ctx.api.task(taskId, signal);
      fetchedAt = Date.now();
      render();
    } catch (err) {
      if (signal.aborted || ctx.refused(err)) return;
      if (err instanceof ApiError && err.status === 404) return gone(err);
      toast(String(err), "error");
    }
  }

  function scheduleRefresh() {
    if (refreshTimer) return;
    const wait = Math.max(0, REFRESH_MS - (Date.now() - lastRefresh));
    refreshTimer = setTimeout(async () => {
      refreshTimer = null;
      await refresh();
    }, wait);
  }

  function gone(err) {
    controller.abort();
    root.replaceChildren(
      h(
        "section",
        { class: "page" },
        h("a", { href: "#/", class: "back" }, "← All exports"),
        h("div", { class: "card" }, h("h1", {}, "Not found"), h("div", { class: "alert error", role: "alert" }, String(err))),
      ),
    );
  }

  function setLive(state, text) {
    live.className = `live ${state}`;
    live.textContent = text;
  }

  async function follow() {
    let backoff = BACKOFF_FIRST_MS;
    while (!signal.aborted && task && !TERMINAL.has(task.status)) {
      let ended = false;
      try {
        const response = await ctx.api.events(taskId, signal);
        setLive("on", "live");
        backoff = BACKOFF_FIRST_MS;
        await readEvents(response, (ev) => {
          if (ev.event === "end") {
            ended = true;
            return;
          }
          if (ev.data && typeof ev.data === "object" && task) {
            task = merge(task, ev.data);
            render();
            scheduleRefresh();
          }
        });
      } catch (err) {
        if (signal.aborted || ctx.refused(err)) return;
        if (err instanceof ApiError && err.status === 404) return gone(err);
        setLive("off", `reconnecting in ${Math.round(backoff / 1000)}s`);
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      }
      if (signal.aborted) return;
      await refresh();
      if (ended) break;
      await sleep(BACKOFF_FIRST_MS, signal); // the stream closed early: do not spin
    }
    if (!signal.aborted) setLive("done", "");
  }

  cancelButton.addEventListener("click", async () => {
    cancelButton.disabled = true;
    try {
      task = await ctx.api.cancel(taskId);
      fetchedAt = Date.now();
      render();
      toast(`Cancel requested: ${statusLabel(task.status)}`);
    } catch (err) {
      if (ctx.refused(err)) return;
      toast(String(err), "error");
      render();
    }
  });

  deleteButton.addEventListener("click", async () => {
    if (!deleteButton.classList.contains("confirm")) {
      deleteButton.classList.add("confirm");
      deleteButton.textContent = "Delete task and files?";
      confirmTimer = setTimeout(() => {
        deleteButton.classList.remove("confirm");
        deleteButton.textContent = "Delete";
      }, CONFIRM_MS);
      return;
    }
    clearTimeout(confirmTimer);
    deleteButton.disabled = true;
    try {
      await ctx.api.remove(taskId);
      toast(`Export ${shortId(taskId)} deleted`);
      location.hash = "#/";
    } catch (err) {
      if (ctx.refused(err)) return;
      toast(String(err), "error");
      deleteButton.classList.remove("confirm");
      deleteButton.textContent = "Delete";
      render();
    }
  });

  manifestBox.addEventListener("toggle", async () => {
    if (!manifestBox.open || manifest.dataset.loaded) return;
    manifest.textContent = "loading…";
    try {
      const body = await ctx.api.manifest(taskId);
      manifest.textContent = JSON.stringify(typeof body === "string" ? JSON.parse(body) : body, null, 2);
      manifest.dataset.loaded = "1";
    } catch (err) {
      manifest.textContent = String(err);
    }
  });

  // the clock: elapsed time and the ETA count on between two reads of the task
  const clock = setInterval(() => {
    if (task && !TERMINAL.has(task.status)) render();
  }, 1000);

  (async () => {
    const [datasets] = await Promise.all([ctx.datasets().catch(() => []), refresh()]);
    dataset = datasets.find((d) => d.dataset_id === task?.dataset_id) ?? null;
    render();
    await follow();
  })();

  return () => {
    controller.abort();
    clearInterval(clock);
    clearTimeout(refreshTimer);
    clearTimeout(confirmTimer);
  };
}
