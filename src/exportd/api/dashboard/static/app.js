// The dashboard's entry point: the session (project and token, kept in sessionStorage
// so that it ends with the tab), the routes (`#/` the tasks, `#/tasks/<id>` one task)
// and the header.

import { Api } from "./api.js";
import { signInView } from "./signin.js";
import { taskView } from "./task.js";
import { tasksView } from "./tasks.js";

const SESSION_KEY = "exportd.session";

let dispose = null;

function loadSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
    return saved && saved.project && saved.token ? saved : null;
  } catch {
    return null;
  }
}

function saveSession(project, token) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({ project, token }));
}

function signOut(reason) {
  sessionStorage.removeItem(SESSION_KEY);
  show(reason);
}

function parseRoute() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = hash.split("?");
  return { parts: path.split("/").filter(Boolean), params: new URLSearchParams(query) };
}

function showHeader(session) {
  document.getElementById("session").hidden = !session;
  document.getElementById("session-project").textContent = session ? session.project : "";
}

// The context every view gets: the API of the session, the project's datasets (read
// once a session), and what to do when the token stops working.
function context(session) {
  const api = new Api(session.project, session.token);
  let datasets = null;
  return {
    api,
    project: session.project,
    datasets() {
      datasets ??= api.datasets().then((body) => body.datasets);
      return datasets;
    },
    refused(err) {
      if (err && err.status === 401) {
        signOut(err);
        return true;
      }
      return false;
    },
  };
}

function show(message) {
  if (dispose) dispose();
  dispose = null;
  const view = document.getElementById("view");
  const session = loadSession();
  showHeader(session);
  document.title = "exportd";
  if (!session) {
    dispose = signInView(view, {
      message,
      onSignedIn(project, token) {
        saveSession(project, token);
        if (location.hash && location.hash !== "#/") show();
        else location.hash = "#/";
      },
    });
    return;
  }
  const ctx = context(session);
  const { parts, params } = parseRoute();
  if (parts[0] === "tasks" && parts[1]) dispose = taskView(view, ctx, decodeURIComponent(parts[1]));
  else dispose = tasksView(view, ctx, params);
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => show());
show();
