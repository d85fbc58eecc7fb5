// The admin API client: the key kept in this tab's sessionStorage, and one fetch wrapper that
// sends it and turns the API's error bodies into ApiError. Nothing here logs or persists a key
// anywhere else.

const KEY_ITEM = "corral.apiKey";

export const session = {
  get key() {
    return sessionStorage.getItem(KEY_ITEM);
  },
  remember(key) {
    sessionStorage.setItem(KEY_ITEM, key);
  },
  forget() {
    sessionStorage.removeItem(KEY_ITEM);
  },
};

/** An error answer: `status`, the API's `code`, `message`, `details` (path + message each). */
export class ApiError extends Error {
  constructor(status, body) {
    const message =
      body && typeof body.message === "string" ? body.message : `the host answered ${status}`;
    super(message);
    this.status = status;
    this.code = body && typeof body.error === "string" ? body.error : "http_error";
    this.details = body && Array.isArray(body.details) ? body.details : [];
    this.requestId = body && typeof body.request_id === "string" ? body.request_id : null;
  }

  /** One line for a person: the API's message, its code and the request id to quote. */
  describe() {
    const request = this.requestId ? `, request ${this.requestId}` : "";
    return `${this.message} (${this.code}${request})`;
  }
}

/** Call the API; resolve to {data, etag, status}, or reject with an ApiError. */
export async function call(method, path, { key = session.key, body, headers = {} } = {}) {
  const sent = { Accept: "application/json", ...headers };
  if (key) sent["X-API-Key"] = key;
  const init = { method, headers: sent, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    sent["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    // A key with characters a header cannot carry lands here too; never echo it.
    throw new ApiError(0, { error: "no_answer", message: "the request could not be sent" });
  }
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("application/json") ? await response.json() : null;
  if (!response.ok) throw new ApiError(response.status, data);
  return { data, etag: response.headers.get("ETag"), status: response.status };
}

/** Build a path with its query string; `undefined` and `null` values are left out. */
export function path(base, query = {}) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null) params.set(name, String(value));
  }
  const text = params.toString();
  return text ? `${base}?${text}` : base;
}
