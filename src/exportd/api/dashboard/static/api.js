// The /v1 API as the dashboard uses it: every call carries the signed-in token as a
// bearer token (never in a URL), and every refusal becomes an ApiError holding the
// API's own {error_code, error_msg}.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  toString() {
    return `${this.code}: ${this.message}`;
  }
}

// The API lives next to the page (at `/` or `/dashboard`, behind any path prefix).
export const API_ROOT = new URL(".", document.baseURI);

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (body && typeof body.error_code === "string") {
    return new ApiError(response.status, body.error_code, String(body.error_msg ?? ""));
  }
  return new ApiError(response.status, `HTTP_${response.status}`, response.statusText || "request failed");
}

export class Api {
  constructor(project, token) {
    this.project = project;
    this.token = token;
  }

  url(path, query) {
    const url = new URL(`v1/projects/${encodeURIComponent(this.project)}${path}`, API_ROOT);
    for (const [name, value] of Object.entries(query ?? {})) {
      if (value === undefined || value === null || value === "") continue;
      for (const one of Array.isArray(value) ? value : [value]) url.searchParams.append(name, one);
    }
    return url;
  }

  headers(extra) {
    return { Authorization: `Bearer ${this.token}`, ...extra };
  }

  // A call whose answer is JSON (or nothing: 204); throws ApiError on any refusal and
  // on a network failure (code NETWORK_ERROR).
  async call(method, path, { query, body, headers, signal } = {}) {
    let response;
    try {
      response = await fetch(this.url(path, query), {
        method,
        signal,
        headers: this.headers(body === undefined ? headers : { "Content-Type": "application/json", ...headers }),
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "NETWORK_ERROR", "the server cannot be reached");
    }
    if (!response.ok) throw await errorOf(response);
    if (response.status === 204) return null;
    const type = response.headers.get("content-type") ?? "";
    return type.includes("json") ? response.json() : response.text();
  }

  // A stream (server-sent events): the open response, for sse.js to read.
  async stream(path, signal) {
    let response;
    try {
      response = await fetch(this.url(path), {
        signal,
        headers: this.headers({ Accept: "text/event-stream" }),
        cache: "no-store",
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "NETWORK_ERROR", "the server cannot be reached");
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  datasets() {
    return this.call("GET", "/datasets");
  }

  exports(query) {
    return this.call("GET", "/exports", { query });
  }

  task(taskId, signal) {
    return this.call("GET", `/exports/${encodeURIComponent(taskId)}`, { signal });
  }

  start(body, idempotencyKey) {
    return this.call("POST", "/exports", { body, headers: { "Idempotency-Key": idempotencyKey } });
  }

  cancel(taskId) {
    return this.call("POST", `/exports/${encodeURIComponent(taskId)}/cancel`);
  }

  remove(taskId) {
    return this.call("DELETE", `/exports/${encodeURIComponent(taskId)}`);
  }

  manifest(taskId) {
    return this.call("GET", `/exports/${encodeURIComponent(taskId)}/manifest`);
  }

  events(taskId, signal) {
    return this.stream(`/exports/${encodeURIComponent(taskId)}/events`, signal);
  }

  // A file through the token-protected route, for when there is no signed link.
  async download(path) {
    let response;
    try {
      response = await fetch(new URL(path, API_ROOT), { headers: this.headers() });
    } catch {
      throw new ApiError(0, "NETWORK_ERROR", "the server cannot be reached");
    }
    if (!response.ok) throw await errorOf(response);
    return response.blob();
  }
}
