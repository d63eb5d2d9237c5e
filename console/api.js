// The console speaks only the public REST API, as any client would. It holds no key: the session
// cookie (HttpOnly, set by POST /v1/console/sessions) goes with every request, and every change
// carries the session's CSRF token.
export class ApiError extends Error {
  constructor(status, code, message, requestId) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

export const session = {csrf: null, role: null, tenantId: null, keyId: null};
let onSignedOut = () => {};
export function whenSignedOut(fn) { onSignedOut = fn; }

export async function api(method, path, body, extraHeaders = {}) {
  const headers = {Accept: 'application/json', ...extraHeaders};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD' && session.csrf) headers['X-CSRF-Token'] = session.csrf;
  let res;
  try {
    res = await fetch(path, {method, headers, credentials: 'same-origin',
                             body: body === undefined ? undefined : JSON.stringify(body)});
  } catch (e) {
    throw new ApiError(0, 'unreachable', 'the API could not be reached: ' + e.message, null);
  }
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!res.ok) {
    const e = json && json.error || {};
    const err = new ApiError(res.status, e.code || 'error', e.message || res.statusText, e.request_id || res.headers.get('X-Request-Id'));
    // The session ended (signed out in another tab, expired, its key revoked): back to sign-in.
    if (res.status === 401 && session.csrf && path !== '/v1/console/sessions') {
      session.csrf = null;
      onSignedOut(err);
    }
    throw err;
  }
  return json;
}

// Every page of a list: follows next_cursor up to `max` items.
export async function all(path, max = 1000) {
  const out = [];
  let cursor = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const page = await api('GET', path + (cursor ? `${sep}cursor=${encodeURIComponent(cursor)}` : ''));
    out.push(...page.data);
    cursor = page.next_cursor;
  } while (cursor && out.length < max);
  return out;
}

export async function signIn(apiKey) {
  const s = await api('POST', '/v1/console/sessions', {api_key: apiKey});
  Object.assign(session, {csrf: s.csrf_token, role: s.role, tenantId: s.tenant_id, keyId: s.key_id});
  return s;
}

export async function resume() {
  const s = await api('GET', '/v1/console/session');
  Object.assign(session, {csrf: s.csrf_token, role: s.role, tenantId: s.tenant_id, keyId: s.key_id});
  return s;
}

export async function signOut() {
  try { await api('DELETE', '/v1/console/session'); } finally { session.csrf = null; session.role = null; }
}

// crypto.randomUUID needs a secure context; getRandomValues does not (a console on plain HTTP).
export function newIdempotencyKey() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return 'console-' + Array.from(b, x => x.toString(16).padStart(2, '0')).join('');
}
