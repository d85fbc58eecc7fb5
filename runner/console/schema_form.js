// A settings form built from a plugin's JSON Schema (the object `settings_schema` of GET
// /plugins): one field per property, with required marks, enums as selects, booleans as
// checkboxes, numbers with their bounds, defaults, descriptions as help, and secrets
// (writeOnly / format password) masked and write-only. The API stays the judge: the form never
// blocks a value, it only shows the API's 422 problems next to the fields they name.

import { h } from "./dom.js";

export const MASK = "***";

/** Whether the schema marks a property as a secret. */
export function isSecret(prop) {
  return prop.writeOnly === true || prop.format === "password" || prop["x-secret"] === true;
}

function typeOf(prop) {
  const type = Array.isArray(prop.type) ? prop.type.find((t) => t !== "null") : prop.type;
  if (Array.isArray(prop.enum)) return "enum";
  return typeof type === "string" ? type : "string";
}

function helpText(prop, type) {
  const parts = [];
  if (prop.description) parts.push(prop.description);
  if (prop.default !== undefined && !isSecret(prop)) parts.push(`Default: ${JSON.stringify(prop.default)}.`);
  const bounds = [];
  if (prop.minimum !== undefined) bounds.push(`at least ${prop.minimum}`);
  if (prop.exclusiveMinimum !== undefined) bounds.push(`more than ${prop.exclusiveMinimum}`);
  if (prop.maximum !== undefined) bounds.push(`at most ${prop.maximum}`);
  if (prop.exclusiveMaximum !== undefined) bounds.push(`less than ${prop.exclusiveMaximum}`);
  if (bounds.length) parts.push(`${type === "integer" ? "A whole number" : "A number"}, ${bounds.join(" and ")}.`);
  if (prop.format === "uri") parts.push("An http:// or https:// address.");
  return parts.join(" ");
}

class Field {
  constructor(name, prop, required, stored) {
    this.name = name;
    this.prop = prop;
    this.required = required;
    this.type = typeOf(prop);
    this.secret = isSecret(prop);
    this.hasStored = stored !== undefined;
    this.id = `field-${name}`;
    this.errorId = `error-${name}`;
    this.helpId = `help-${name}`;
    const initial = stored !== undefined ? stored : prop.default;
    this.control = this.makeControl(initial);
    this.error = h("p", { id: this.errorId, class: "field-error", "aria-live": "polite" });
    this.element = this.layout();
  }

  makeControl(initial) {
    const common = { id: this.id, name: this.name, "aria-describedby": `${this.helpId} ${this.errorId}` };
    const prop = this.prop;
    switch (this.type) {
      case "enum": {
        const select = h("select", common);
        if (!this.required) select.append(h("option", { value: "" }, "(not set)"));
        for (const value of prop.enum) {
          const option = h("option", { value: JSON.stringify(value) }, String(value));
          option.selected = initial !== undefined && JSON.stringify(initial) === JSON.stringify(value);
          select.append(option);
        }
        return select;
      }
      case "boolean": {
        const box = h("input", { ...common, type: "checkbox" });
        box.checked = initial === true;
        return box;
      }
      case "integer":
      case "number": {
        const input = h("input", {
          ...common,
          type: "number",
          inputmode: this.type === "integer" ? "numeric" : "decimal",
          step: this.type === "integer" ? "1" : "any",
          min: prop.minimum ?? prop.exclusiveMinimum ?? null,
          max: prop.maximum ?? prop.exclusiveMaximum ?? null,
        });
        if (typeof initial === "number") input.value = String(initial);
        return input;
      }
      case "object":
      case "array": {
        const area = h("textarea", { ...common, rows: 4, spellcheck: "false", class: "json" });
        if (initial !== undefined) area.value = JSON.stringify(initial, null, 2);
        return area;
      }
      default: {
        if (this.secret) {
          // Write-only: the stored value never reaches the page; "***" stands for it.
          return h("input", {
            ...common,
            type: "password",
            autocomplete: "new-password",
            spellcheck: "false",
            placeholder: this.hasStored ? MASK : "not set",
            "data-secret": "true",
          });
        }
        const input = h("input", {
          ...common,
          type: prop.format === "uri" ? "url" : "text",
          spellcheck: "false",
          maxlength: prop.maxLength ?? null,
        });
        if (typeof initial === "string") input.value = initial;
        return input;
      }
    }
  }

  layout() {
    const title = this.prop.title || this.name;
    const marks = [
      this.required ? h("span", { class: "required", title: "required" }, " *") : null,
      this.secret ? h("span", { class: "badge secret" }, this.hasStored ? "secret · stored" : "secret") : null,
    ];
    const label = h("label", { for: this.id }, title, ...marks);
    const help = h("p", { id: this.helpId, class: "help" }, helpText(this.prop, this.type));
    const name = h("code", { class: "field-name" }, this.name);
    const classes = `field field-${this.type}`;
    if (this.type === "boolean") {
      return h("div", { class: classes, "data-field": this.name }, h("div", { class: "check" }, this.control, label), name, help, this.error);
    }
    return h("div", { class: classes, "data-field": this.name }, label, name, this.control, help, this.error);
  }

  /** Return [present, value]: absent fields are left out of the PUT (which replaces). */
  value() {
    const control = this.control;
    switch (this.type) {
      case "enum":
        return control.value === "" ? [false] : [true, JSON.parse(control.value)];
      case "boolean":
        return [true, control.checked];
      case "integer":
      case "number":
        if (control.validity.badInput) throw new FieldProblem(this.name, "is not a number");
        return control.value === "" ? [false] : [true, Number(control.value)];
      case "object":
      case "array":
        if (control.value.trim() === "") return [false];
        try {
          return [true, JSON.parse(control.value)];
        } catch {
          throw new FieldProblem(this.name, "is not valid JSON");
        }
      default:
        if (this.secret && control.value === "") return this.hasStored ? [true, MASK] : [false];
        return control.value === "" ? [false] : [true, control.value];
    }
  }

  showError(message) {
    this.error.textContent = message;
    this.control.setAttribute("aria-invalid", "true");
    this.element.classList.add("invalid");
  }

  clearError() {
    this.error.textContent = "";
    this.control.removeAttribute("aria-invalid");
    this.element.classList.remove("invalid");
  }
}

/** A value the browser itself cannot turn into JSON (not a number, bad JSON). */
export class FieldProblem extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

const SETTINGS_PATH = /^\$\.settings(?:\.([A-Za-z_][A-Za-z0-9_-]*)|\['((?:[^'\\]|\\.)*)'\])?/;

/** The field a JSON path such as `$.settings.callback_url` names, or null. */
export function fieldOfPath(path) {
  const match = SETTINGS_PATH.exec(String(path));
  if (!match) return null;
  return match[1] ?? (match[2] !== undefined ? match[2].replace(/\\(.)/g, "$1") : null);
}

/** The form for one plugin's settings; `collect()` gives the settings to PUT. */
export class SchemaForm {
  constructor(schema, settings) {
    const properties = schema && typeof schema.properties === "object" ? schema.properties : {};
    const required = new Set(Array.isArray(schema?.required) ? schema.required : []);
    this.fields = new Map();
    for (const [name, prop] of Object.entries(properties)) {
      this.fields.set(name, new Field(name, prop || {}, required.has(name), settings?.[name]));
    }
    this.element = h("div", { class: "fields" }, [...this.fields.values()].map((f) => f.element));
    if (this.fields.size === 0) this.element.append(h("p", { class: "muted" }, "This plugin has no settings."));
  }

  /** Return the settings object; throw FieldProblem for a value the browser cannot read. */
  collect() {
    const settings = {};
    for (const field of this.fields.values()) {
      const [present, value] = field.value();
      if (present) settings[field.name] = value;
    }
    return settings;
  }

  clearErrors() {
    for (const field of this.fields.values()) field.clearError();
  }

  /** Show each problem next to its field; return the problems that name no field. */
  showProblems(details) {
    const unplaced = [];
    const byField = new Map();
    for (const detail of details) {
      const name = fieldOfPath(detail.path);
      if (name !== null && this.fields.has(name)) {
        byField.set(name, [...(byField.get(name) || []), detail.message]);
      } else {
        unplaced.push(detail);
      }
    }
    for (const [name, messages] of byField) this.fields.get(name).showError(messages.join("; "));
    const first = byField.keys().next();
    if (!first.done) this.fields.get(first.value).control.focus();
    return unplaced;
  }
}
