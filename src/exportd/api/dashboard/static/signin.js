// Sign-in: a project and a token, checked by reading the project's datasets (a reader
// may do that). A refused token shows the API's own error.

import { Api } from "./api.js";
import { h } from "./dom.js";

const LAST_PROJECT_KEY = "exportd.last-project"; // not a secret: kept across visits

export function signInView(root, { message, onSignedIn }) {
  const alert = h("div", { class: "alert error", role: "alert", hidden: !message }, message ? String(message) : "");
  const project = h("input", {
    id: "signin-project",
    name: "project",
    required: true,
    autocomplete: "username",
    placeholder: "acme",
    value: localStorage.getItem(LAST_PROJECT_KEY) ?? "",
  });
  const token = h("input", {
    id: "signin-token",
    name: "token",
    type: "password",
    required: true,
    autocomplete: "current-password",
    placeholder: "the token you were given",
  });
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");

  async function submit(event) {
    event.preventDefault();
    button.disabled = true;
    alert.hidden = true;
    const api = new Api(project.value.trim(), token.value.trim());
    try {
      await api.datasets();
      localStorage.setItem(LAST_PROJECT_KEY, api.project);
      onSignedIn(api.project, api.token);
    } catch (err) {
      alert.textContent = String(err);
      alert.hidden = false;
      button.disabled = false;
    }
  }

  root.replaceChildren(
    h(
      "section",
      { class: "signin card" },
      h("h1", {}, "Sign in"),
      h(
        "p",
        { class: "muted" },
        "Watch and start the exports of a project. The token stays in this tab only and is sent to the API as a bearer token.",
      ),
      alert,
      h(
        "form",
        { onsubmit: submit, class: "stack" },
        h("label", { for: "signin-project" }, "Project"),
        project,
        h("label", { for: "signin-token" }, "Token"),
        token,
        button,
      ),
    ),
  );
  (project.value ? token : project).focus();
  return () => {};
}
