// Small DOM helpers. Text always goes in through textContent, never innerHTML, so nothing the
// API answers (names, descriptions, error messages) can become markup.

/** Create an element: `attrs` are attributes (true: present, false/null: absent). */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** Return the element with this id (it must exist). */
export function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`no element #${id}`);
  return element;
}

/** Replace an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) element.append(child);
  }
}

/** "outbound_fax" -> "Outbound fax". */
export function humanize(kind) {
  const text = String(kind).replaceAll("_", " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** A link only for http(s) addresses; anything else (javascript:, data:) stays plain text. */
export function safeLink(href, text) {
  if (typeof href !== "string" || !/^https?:\/\//i.test(href)) return text;
  return h("a", { href, rel: "noopener noreferrer", target: "_blank" }, text);
}
