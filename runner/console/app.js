// The admin console: sign-in, the tenant, and the Plugins, Workers and Registry tabs.
// Backend isolation: plugins are grouped by their primary category, and a category shows
// exactly one provider at a time (its settings, its help); the others are a choice in a select.

import { ApiError, call, path, session } from "./api.js";
import { byId, fill, h, humanize, safeLink } from "./dom.js";
import { FieldProblem, SchemaForm } from "./schema_form.js";

const TENANT_ITEM = "corral.tenant";
const GLOBAL = "global";
const SETTLING_STATES = new Set(["starting", "draining", "stopping", "backoff"]);
const MAX_POLLS = 30;

const state = {
  tenant: GLOBAL,
  boundTenant: null, // set for a tenant-bound key: the only tenant it may act on
  plugins: [],
  category: null,
  provider: new Map(), // category -> chosen plugin id
  etag: null,
  polls: 0,
};

// -- sign-in and session ----------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const input = byId("api-key");
  const key = input.value.trim();
  const error = byId("sign-in-error");
  error.textContent = "";
  if (!key) {
    error.textContent = "Enter an API key.";
    return;
  }
  try {
    await startSession(key);
    input.value = "";
  } catch (exc) {
    error.textContent = exc instanceof ApiError ? exc.describe() : String(exc);
  }
}

/** Check the key with GET /plugins, then keep it in sessionStorage and show the console. */
async function startSession(key) {
  let first = null;
  let problem = null;
  try {
    first = (await call("GET", "/plugins", { key })).data;
  } catch (exc) {
    if (!(exc instanceof ApiError) || [0, 401, 429].includes(exc.status)) throw exc;
    problem = exc; // e.g. 403 (no read scope) or 404 (plugins turned off): still signed in
  }
  session.remember(key);
  const own = first ? first.tenant_id : GLOBAL;
  state.boundTenant = own !== GLOBAL ? own : null;
  state.tenant = state.boundTenant || sessionStorage.getItem(TENANT_ITEM) || GLOBAL;
  showConsole();
  if (problem) showBanner(problem.describe());
  else if (state.tenant === own) renderPlugins(first);
  if (!problem && state.tenant !== own) await loadPlugins();
}

function signOut() {
  session.forget();
  sessionStorage.removeItem(TENANT_ITEM);
  state.plugins = [];
  state.category = null;
  state.provider.clear();
  state.etag = null;
  state.boundTenant = null;
  fill(byId("categories"));
  fill(byId("category-panel"));
  fill(byId("workers-table").tBodies[0]);
  fill(byId("registry-results"));
  byId("console-view").hidden = true;
  byId("session").hidden = true;
  byId("sign-in-view").hidden = false;
  byId("api-key").focus();
}

function showConsole() {
  byId("sign-in-view").hidden = true;
  byId("console-view").hidden = false;
  byId("session").hidden = false;
  const tenant = byId("tenant");
  tenant.value = state.tenant;
  tenant.readOnly = state.boundTenant !== null;
  byId("tenant-apply").hidden = state.boundTenant !== null;
  byId("tenant-note").textContent = state.boundTenant
    ? "this key is bound to this tenant"
    : "operator key: global or a tenant id";
  selectTab("plugins-view");
}

function showBanner(message) {
  const banner = byId("banner");
  banner.textContent = message;
  banner.hidden = !message;
}

/** A call made with the session's key; a 401 (key revoked meanwhile) ends the session. */
async function api(method, target, options = {}) {
  try {
    return await call(method, target, options);
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 401) {
      signOut();
      byId("sign-in-error").textContent = exc.describe();
    }
    throw exc;
  }
}

// -- tabs ---------------------------------------------------------------------------------------

function selectTab(view) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const selected = tab.dataset.view === view;
    tab.setAttribute("aria-selected", String(selected));
    byId(tab.dataset.view).hidden = !selected;
  }
  if (view === "workers-view") loadWorkers();
  if (view === "registry-view") searchRegistry();
}

// -- tenant -------------------------------------------------------------------------------------

async function switchTenant() {
  if (state.boundTenant) return;
  const wanted = byId("tenant").value.trim() || GLOBAL;
  state.tenant = wanted;
  sessionStorage.setItem(TENANT_ITEM, wanted);
  const options = byId("tenant-options");
  if (![...options.options].some((o) => o.value === wanted)) options.append(h("option", { value: wanted }));
  await loadPlugins();
}

// -- plugins ------------------------------------------------------------------------------------

async function loadPlugins() {
  showBanner("");
  try {
    const { data } = await api("GET", path("/plugins", { tenant_id: state.tenant }));
    renderPlugins(data);
  } catch (exc) {
    state.plugins = [];
    fill(byId("categories"));
    fill(byId("category-panel"));
    if (exc instanceof ApiError) showBanner(exc.describe());
  }
}

function categories() {
  const groups = new Map();
  for (const plugin of state.plugins) {
    const kind = plugin.type || "other";
    groups.set(kind, [...(groups.get(kind) || []), plugin]);
  }
  return [...groups.entries()].sort(([a], [b]) => a.localeCompare(b));
}

function renderPlugins(listing) {
  state.plugins = listing.plugins;
  const nav = byId("categories");
  const groups = categories();
  fill(
    nav,
    groups.map(([kind, plugins]) => {
      const active = plugins.some((p) => p.enabled);
      return h(
        "button",
        { type: "button", class: "category", "data-category": kind, "aria-pressed": String(kind === state.category) },
        h("span", {}, humanize(kind)),
        h("span", { class: "count" }, plugins.length === 1 ? "1 provider" : `${plugins.length} providers`),
        active ? h("span", { class: "badge on" }, "enabled") : null,
      );
    }),
  );
  if (groups.length === 0) fill(nav, h("p", { class: "muted" }, "No plugins are installed."));
  if (state.category && groups.some(([kind]) => kind === state.category)) openCategory(state.category);
  else fill(byId("category-panel"), h("p", { class: "muted" }, "Choose a category."));
}

function chosenProvider(kind, plugins) {
  const chosen = state.provider.get(kind);
  if (chosen && plugins.some((p) => p.id === chosen)) return chosen;
  const enabled = plugins.find((p) => p.enabled);
  return (enabled || plugins[0]).id;
}

function openCategory(kind) {
  state.category = kind;
  for (const button of document.querySelectorAll("#categories .category")) {
    button.setAttribute("aria-pressed", String(button.dataset.category === kind));
  }
  const plugins = categories().find(([k]) => k === kind)?.[1] || [];
  const chosen = chosenProvider(kind, plugins);
  state.provider.set(kind, chosen);
  const panel = byId("category-panel");
  const parts = [h("h2", {}, humanize(kind))];
  if (plugins.length > 1) {
    const select = h("select", { id: "provider-select", "data-category": kind });
    for (const plugin of plugins) {
      const option = h("option", { value: plugin.id }, `${plugin.name}${plugin.enabled ? " (enabled)" : ""}`);
      option.selected = plugin.id === chosen;
      select.append(option);
    }
    select.addEventListener("change", () => {
      state.provider.set(kind, select.value);
      openCategory(kind);
    });
    parts.push(
      h("div", { class: "provider-choice" }, h("label", { for: "provider-select" }, "Provider"), select),
      h("p", { class: "muted" }, "Only the selected provider's settings and help are shown."),
    );
  }
  const plugin = plugins.find((p) => p.id === chosen);
  const others = plugins.filter((p) => p.id !== chosen && p.enabled);
  if (others.length && !plugin.enabled) {
    // The guided switch: name what is enabled now, give only this provider's steps.
    parts.push(
      h(
        "p",
        { class: "guide", id: "switch-guide" },
        `Enabled now for ${state.tenant}: ${others.map((p) => p.name).join(", ")}. To switch, save ` +
          `this provider's settings with "Enabled" checked, then deactivate the other one.`,
      ),
    );
  }
  const holder = h("div", { id: "provider-panel" });
  parts.push(holder);
  fill(panel, parts);
  openProvider(plugin, holder);
}

async function openProvider(plugin, holder) {
  fill(holder, h("p", { class: "muted" }, "Loading…"));
  let config;
  try {
    const answer = await api("GET", path(`/plugins/${encodeURIComponent(plugin.id)}/config`, { tenant_id: state.tenant }));
    config = answer.data;
    state.etag = answer.etag;
  } catch (exc) {
    fill(holder, h("p", { class: "error", role: "alert" }, exc instanceof ApiError ? exc.describe() : String(exc)));
    return;
  }
  renderProvider(plugin, config, holder);
}

function networkGrants(plugin) {
  const permissions = plugin.manifest && Array.isArray(plugin.manifest.permissions) ? plugin.manifest.permissions : [];
  return permissions.filter((p) => p.startsWith("network.outbound:")).map((p) => p.slice("network.outbound:".length));
}

function renderProvider(plugin, config, holder) {
  const form = new SchemaForm(plugin.settings_schema, config.settings);
  const enabled = h("input", { id: "plugin-enabled", type: "checkbox" });
  enabled.checked = config.enabled;
  const formError = h("div", { id: "form-error", class: "error", role: "alert" });
  const status = h("span", { id: "save-status", class: "status", role: "status" });
  const element = h(
    "form",
    { id: "settings-form", class: "settings", novalidate: true, autocomplete: "off", "data-plugin-id": plugin.id },
    form.element,
    h("div", { class: "check enable" }, enabled, h("label", { for: "plugin-enabled" }, `Enabled for ${config.tenant_id}`)),
    formError,
    h("div", { class: "actions" }, h("button", { type: "submit", id: "save" }, "Save"), status),
  );
  element.addEventListener("submit", (event) => {
    event.preventDefault();
    save(plugin, form, enabled, formError, status, holder);
  });

  const grants = networkGrants(plugin);
  const activation = h("span", { id: "activation-state", class: `badge ${config.enabled ? "on" : "off"}` }, config.enabled ? "enabled" : "not enabled");
  const actionStatus = h("span", { id: "activation-status", class: "status", role: "status" });
  const activate = h("button", { type: "button", id: "activate", disabled: config.enabled }, "Activate");
  const deactivate = h("button", { type: "button", id: "deactivate", class: "secondary", disabled: !config.enabled }, "Deactivate");
  activate.addEventListener("click", () => setActive(plugin, true, form, formError, actionStatus, holder));
  deactivate.addEventListener("click", () => setActive(plugin, false, form, formError, actionStatus, holder));

  fill(
    holder,
    h(
      "article",
      { class: "provider", "data-plugin-id": plugin.id },
      h("h3", {}, plugin.name, " ", activation),
      h("p", { class: "description" }, plugin.description),
      h(
        "dl",
        { class: "meta" },
        h("dt", {}, "Plugin"), h("dd", {}, h("code", {}, plugin.id), ` ${plugin.version}`),
        h("dt", {}, "Categories"), h("dd", {}, plugin.categories.map(humanize).join(", ")),
        h("dt", {}, "Network"), h("dd", {}, grants.length ? grants.join(", ") : "none"),
        plugin.manifest && plugin.manifest.homepage ? [h("dt", {}, "Provider docs"), h("dd", {}, safeLink(plugin.manifest.homepage, plugin.manifest.homepage))] : null,
      ),
      h("div", { class: "actions" }, activate, deactivate, actionStatus),
      h("h4", {}, `Settings for ${config.tenant_id}`),
      element,
    ),
  );
}

function showProblems(exc, form, formError) {
  const unplaced = form.showProblems(exc.details);
  fill(
    formError,
    h("p", {}, exc.describe()),
    unplaced.length ? h("ul", {}, unplaced.map((d) => h("li", {}, h("code", {}, d.path), ` ${d.message}`))) : null,
  );
}

async function save(plugin, form, enabled, formError, status, holder) {
  form.clearErrors();
  fill(formError);
  status.textContent = "";
  let settings;
  try {
    settings = form.collect();
  } catch (exc) {
    if (!(exc instanceof FieldProblem)) throw exc;
    form.showProblems([{ path: `$.settings.${exc.field}`, message: exc.message }]);
    return;
  }
  const headers = state.etag ? { "If-Match": state.etag } : {};
  status.textContent = "Saving…";
  try {
    const target = path(`/plugins/${encodeURIComponent(plugin.id)}/config`, { tenant_id: state.tenant });
    const answer = await api("PUT", target, { body: { enabled: enabled.checked, settings }, headers });
    state.etag = answer.etag;
    await refreshListing(plugin.id);
    renderProvider(currentPlugin(plugin), answer.data, holder); // typed secrets leave the page
    byId("save-status").textContent = `Saved. Workers: ${answer.data.workers || "unchanged"}.`;
  } catch (exc) {
    status.textContent = "";
    if (!(exc instanceof ApiError)) throw exc;
    if (exc.status === 422) {
      showProblems(exc, form, formError);
    } else if (exc.status === 412) {
      const reload = h("button", { type: "button", class: "secondary" }, "Reload the current settings");
      reload.addEventListener("click", () => openProvider(currentPlugin(plugin), holder));
      fill(formError, h("p", {}, `These settings changed since they were read. ${exc.describe()}`), reload);
    } else {
      fill(formError, h("p", {}, exc.describe()));
    }
  }
}

async function setActive(plugin, active, form, formError, status, holder) {
  form.clearErrors();
  fill(formError);
  status.textContent = active ? "Activating…" : "Deactivating…";
  const verb = active ? "activate" : "deactivate";
  try {
    const answer = await api("POST", `/api/v1/admin/plugins/${encodeURIComponent(plugin.id)}/${verb}`, {
      body: { tenant_id: state.tenant },
    });
    await refreshListing(plugin.id);
    await openProvider(currentPlugin(plugin), holder);
    byId("activation-status").textContent = `${active ? "Activated" : "Deactivated"}. Workers: ${answer.data.workers}.`;
  } catch (exc) {
    status.textContent = "";
    if (!(exc instanceof ApiError)) throw exc;
    if (exc.status === 422) showProblems(exc, form, formError);
    else fill(formError, h("p", {}, exc.describe()));
  }
}

function currentPlugin(plugin) {
  return state.plugins.find((p) => p.id === plugin.id) || plugin;
}

/** Re-read the listing (enabled badges) without re-rendering the open form. */
async function refreshListing() {
  try {
    const { data } = await api("GET", path("/plugins", { tenant_id: state.tenant }));
    state.plugins = data.plugins;
    for (const button of document.querySelectorAll("#categories .category")) {
      const kind = button.dataset.category;
      const active = state.plugins.some((p) => (p.type || "other") === kind && p.enabled);
      button.querySelector(".badge")?.remove();
      if (active) button.append(h("span", { class: "badge on" }, "enabled"));
    }
    const select = document.getElementById("provider-select");
    if (select) {
      for (const option of select.options) {
        const p = state.plugins.find((x) => x.id === option.value);
        if (p) option.textContent = `${p.name}${p.enabled ? " (enabled)" : ""}`;
      }
    }
  } catch (exc) {
    if (exc instanceof ApiError) showBanner(exc.describe());
  }
}

// -- workers ------------------------------------------------------------------------------------

function formatBytes(bytes) {
  if (typeof bytes !== "number") return "–";
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

async function loadWorkers() {
  const error = byId("workers-error");
  error.textContent = "";
  try {
    const { data } = await api("GET", "/api/v1/workers");
    renderWorkers(data.workers);
    byId("workers-status").textContent = `${data.workers.length} worker(s), as of ${new Date().toLocaleTimeString()}`;
    const settling = data.workers.some((w) => SETTLING_STATES.has(w.state));
    if (settling && state.polls < MAX_POLLS && !byId("workers-view").hidden) {
      state.polls += 1;
      setTimeout(loadWorkers, 1000);
    } else {
      state.polls = 0;
    }
  } catch (exc) {
    if (exc instanceof ApiError) error.textContent = exc.describe();
  }
}

function renderWorkers(workers) {
  const body = byId("workers-table").tBodies[0];
  const sorted = [...workers].sort((a, b) => a.id.localeCompare(b.id));
  fill(
    body,
    sorted.map((w) => {
      const restart = h("button", { type: "button", class: "restart", "data-worker-id": w.id }, "Restart");
      restart.addEventListener("click", () => restartWorker(w, restart));
      return h(
        "tr",
        { "data-worker-id": w.id },
        h("td", {}, h("code", {}, w.id)),
        h("td", { class: `state state-${w.state}` }, w.state),
        h("td", { class: "pid" }, w.pid === null ? "–" : String(w.pid)),
        h("td", {}, String(w.restarts)),
        h("td", {}, w.last_exit === null ? "–" : String(w.last_exit)),
        h("td", { class: "last-error" }, w.last_error || "–"),
        h("td", {}, formatBytes(w.rss_bytes)),
        h("td", {}, `${w.calls} (${w.inflight} in flight)`),
        h("td", {}, restart),
      );
    }),
  );
  if (sorted.length === 0) {
    fill(body, h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No workers: activate a plugin for a tenant.")));
  }
}

async function restartWorker(worker, button) {
  button.disabled = true;
  const error = byId("workers-error");
  error.textContent = "";
  byId("workers-status").textContent = `Restarting ${worker.id}…`;
  try {
    await api("POST", `/api/v1/workers/${encodeURIComponent(worker.id)}/restart`);
    state.polls = 0;
    await loadWorkers();
  } catch (exc) {
    button.disabled = false;
    if (exc instanceof ApiError) error.textContent = exc.describe();
  }
}

// -- registry -----------------------------------------------------------------------------------

async function searchRegistry(event) {
  if (event) event.preventDefault();
  const error = byId("registry-error");
  error.textContent = "";
  const q = byId("registry-q").value.trim();
  try {
    const { data } = await api("GET", path("/plugin-registry", { q: q || undefined }));
    renderRegistry(data.providers);
  } catch (exc) {
    if (exc instanceof ApiError) error.textContent = exc.describe();
  }
}

function renderRegistry(providers) {
  const installed = new Set(state.plugins.map((p) => p.id));
  const list = byId("registry-results");
  fill(
    list,
    providers.map((p) => {
      const types = Array.isArray(p.type) ? p.type : [p.type];
      const manifest = p.manifest || {};
      const domains = Array.isArray(manifest.allowed_domains)
        ? manifest.allowed_domains
        : (manifest.permissions || []).filter((x) => String(x).startsWith("network.outbound:")).map((x) => x.slice(17));
      return h(
        "li",
        { class: "card", "data-provider-id": p.id },
        h("h3", {}, p.name || p.id, " ", installed.has(p.id) ? h("span", { class: "badge on" }, "installed") : null),
        h("p", { class: "description" }, p.description || ""),
        h(
          "dl",
          { class: "meta" },
          h("dt", {}, "Id"), h("dd", {}, h("code", {}, p.id), p.version ? ` ${p.version}` : ""),
          h("dt", {}, "Type"), h("dd", {}, types.filter(Boolean).map(humanize).join(", ")),
          h("dt", {}, "Network"), h("dd", {}, domains.length ? domains.join(", ") : "none"),
          p.homepage ? [h("dt", {}, "Docs"), h("dd", {}, safeLink(p.homepage, p.homepage))] : null,
        ),
      );
    }),
  );
  if (providers.length === 0) fill(list, h("li", { class: "muted" }, "Nothing matches."));
}

// -- wiring -------------------------------------------------------------------------------------

function wire() {
  byId("sign-in-form").addEventListener("submit", signIn);
  byId("sign-out").addEventListener("click", signOut);
  byId("tenant-apply").addEventListener("click", switchTenant);
  byId("tenant").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      switchTenant();
    }
  });
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => selectTab(tab.dataset.view));
  }
  byId("categories").addEventListener("click", (event) => {
    const button = event.target.closest(".category");
    if (button) openCategory(button.dataset.category);
  });
  byId("workers-refresh").addEventListener("click", () => {
    state.polls = 0;
    loadWorkers();
  });
  byId("registry-form").addEventListener("submit", searchRegistry);
}

async function resume() {
  const key = session.key;
  if (!key) {
    byId("api-key").focus();
    return;
  }
  try {
    await startSession(key);
  } catch (exc) {
    session.forget();
    byId("sign-in-error").textContent = exc instanceof ApiError ? exc.describe() : String(exc);
  }
}

wire();
resume();
