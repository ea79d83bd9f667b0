// The admin API client: every call carries the key kept for this tab, and
// every failure becomes an ApiError whose message is the API's own words.

const KEY = 'flywheel.key';
const BASE = '/admin/api';

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `The server answered ${status}.`);
    this.status = status;
    this.code = error?.code ?? null;
    this.param = error?.param ?? null;
    this.type = error?.type ?? null;
    this.details = error ?? {};
  }
}

let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

// What may renew the tab's sign-in once it is refused (a Microsoft
// sign-in's expired token): the new key, or null.
let renew = async () => null;
export function renewingWith(fn) { renew = fn; }

/** `api('/stats')`, `api('/conversations/x', {method: 'PATCH', body: {...}})`. */
export async function api(path, { method = 'GET', body, headers = {}, text = false, key, renewed = false } = {}) {
  const h = { ...headers };
  const k = key ?? session.key;
  if (k) h.Authorization = `Bearer ${k}`;
  if (body !== undefined) h['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(BASE + path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, { message: `The server could not be reached (${e.message}).` });
  }
  if (res.status === 204) return null;
  const raw = await res.text();
  if (!res.ok) {
    let error = null;
    try { error = JSON.parse(raw).error; } catch { /* not JSON */ }
    const err = new ApiError(res.status, error ?? { message: raw.slice(0, 300) || `The server answered ${res.status}.` });
    if (res.status === 401 && key === undefined) {
      const fresh = renewed ? null : await renew();
      if (fresh) {
        session.set(fresh);
        return api(path, { method, body, headers, text, renewed: true });
      }
      onUnauthorized(err);
    }
    throw err;
  }
  if (text) return raw;
  return raw ? JSON.parse(raw) : null;
}

/** Query string from an object, leaving out empty values. */
export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === '') continue;
    p.set(k, String(v));
  }
  const s = p.toString();
  return s ? `?${s}` : '';
}

/** A route that has not been built yet answers 404 with `not_found` on the
 * path itself; pages use this to say "not available" instead of failing. */
export function isMissingRoute(err) {
  return err instanceof ApiError && err.status === 404 && !err.param;
}
