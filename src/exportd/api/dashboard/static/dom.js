// Building the page from data without ever parsing it as HTML: every value the API
// returns (file names, error messages, dataset names) becomes text, never markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// Rebuild `el`'s content only when `key` changed since the last time (keeps focus,
// selections and hover states of parts that did not change).
export function renderIf(el, key, build) {
  const text = typeof key === "string" ? key : JSON.stringify(key);
  if (el.dataset.renderKey === text) return;
  el.dataset.renderKey = text;
  el.replaceChildren(...[build()].flat().filter((x) => x !== null && x !== undefined));
}

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const item = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}
