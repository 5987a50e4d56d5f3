// How numbers, sizes, times and statuses read on the page.

export const TERMINAL = new Set(["COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELED", "TIMEOUT"]);

export const STATUSES = [
  "PENDING",
  "RUNNING",
  "CANCELING",
  "COMPLETED",
  "COMPLETED_WITH_ERRORS",
  "FAILED",
  "CANCELED",
  "TIMEOUT",
];

export const FORMATS = ["csv", "tsv", "jsonl", "json", "parquet", "xlsx"];

// Seed 000's stages, numbers and texts exactly (current_state.status_id / .status).
export const STAGES = [
  [0, "Not started yet..."],
  [10, "Getting total..."],
  [20, "Creating headers for CSV file..."],
  [30, "Merging headers for CSV file..."],
  [40, "Wait till parallel tasks create headers for CSV file ..."],
  [50, "Wait till master task merge all headers for CSV file ..."],
  [60, "Exporting..."],
  [70, "Completing upload"],
  [80, "Writing manifest, preparing urls, sending emails..."],
  [90, "Completed"],
];

// The header stages (20-50) happen only for CSV from schemaless documents.
export const HEADER_STAGES = new Set([20, 30, 40, 50]);

const numbers = new Intl.NumberFormat("en-US");

export function count(n) {
  return n === null || n === undefined ? "—" : numbers.format(n);
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

export function rate(perSecond) {
  if (perSecond === null || perSecond === undefined) return "—";
  return `${numbers.format(Math.round(perSecond))} rows/s`;
}

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : date.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

export function ago(iso) {
  if (!iso) return "—";
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  return seconds < 5 ? "just now" : `${duration(seconds)} ago`;
}

// Seconds from the task's start to its end (or to now while it runs).
export function elapsed(task) {
  if (!task.start_time) return null;
  const end = task.end_time ? new Date(task.end_time) : new Date();
  return (end.getTime() - new Date(task.start_time).getTime()) / 1000;
}

export function statusLabel(status) {
  return status.replaceAll("_", " ");
}

export function statusClass(status) {
  return `status-${status.toLowerCase().replaceAll("_", "-")}`;
}

export function shortId(id) {
  return id.length > 12 ? `${id.slice(0, 8)}…` : id;
}
