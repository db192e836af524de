// The HTTP API client (SPEC §6). Keeps the session's CSRF token and sends it as X-CSRF-Token on
// every state-changing request; a 401 from any call but login means the session is gone, and
// the app goes back to the login page.

let csrfToken = null;
const listeners = new Set();

export function setCsrf(token) {
  csrfToken = token || null;
}

/** `fn()` is called when a request answers 401 (the session ended or expired). */
export function onUnauthorized(fn) {
  listeners.add(fn);
}

export class ApiError extends Error {
  constructor(status, message, body, headers) {
    super(message);
    this.status = status;
    this.body = body;
    this.headers = headers;
  }
}

const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);

/**
 * Calls the API. `json` is sent as JSON, `text` as the raw body with `type`. Resolves to
 * {status, data, headers} for 2xx answers (and for the statuses in `accept`); throws ApiError
 * otherwise, with the server's `{"error": ...}` message.
 */
export async function api(method, path, { json, text, type, headers = {}, accept = [], signal } = {}) {
  const h = { Accept: 'application/json', ...headers };
  let body;
  if (json !== undefined) {
    h['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (text !== undefined) {
    h['Content-Type'] = type || 'text/plain; charset=utf-8';
    body = text;
  }
  if (!SAFE.has(method) && csrfToken) h['X-CSRF-Token'] = csrfToken;
  let res;
  try {
    res = await fetch(path, { method, headers: h, body, credentials: 'same-origin', cache: 'no-store', signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, `The gateway did not answer (${e.message}).`, null, new Headers());
  }
  const ct = res.headers.get('Content-Type') || '';
  let data = null;
  if (res.status !== 204) {
    const raw = await res.text();
    if (ct.includes('json')) {
      try { data = JSON.parse(raw); } catch { data = raw; }
    } else {
      data = raw;
    }
  }
  if (res.status === 401 && path !== '/api/login') {
    csrfToken = null;
    for (const fn of listeners) fn();
  }
  if (res.ok || accept.includes(res.status)) return { status: res.status, data, headers: res.headers };
  const msg = (data && typeof data === 'object' && data.error) ? data.error
    : (typeof data === 'string' && data.trim() ? data.trim().slice(0, 300) : `${res.status} ${res.statusText}`);
  throw new ApiError(res.status, msg, data, res.headers);
}

export const get = (path, opts) => api('GET', path, opts);
export const post = (path, json, opts) => api('POST', path, { ...opts, json });

/** A device or tag name as one path segment. */
export const seg = (name) => encodeURIComponent(name);
