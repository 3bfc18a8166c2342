// What the page asks of the server: JSON requests (with the CSRF header on writes), the one
// live stream of snapshots and reload reports, and the small formatting helpers every view
// shares (counts, rates, durations, times, links).

/** Thrown for any answer that is not 2xx; `status` and the server's JSON `body` ride along. */
export class ApiError extends Error {
  constructor(status, body, fallback) {
    const detail = body && (body.detail || body.error || body.message);
    super(detail ? String(detail) : fallback || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** Called with no argument whenever the server answers 401 (the login form takes over). */
let onUnauthorized = () => {};
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

/**
 * One request. `body` may be a string (sent as is) or anything else (sent as JSON). Every
 * request that is not a GET carries `X-Edaflow-Console: 1`, the guard the server asks of
 * cookie-authenticated writes. Resolves to `{status, data, headers}` (data: parsed JSON, or
 * the text when the answer is not JSON); rejects with ApiError on a non-2xx answer unless
 * `accept` lists that status.
 */
export async function request(method, url, { body, headers = {}, accept = [], signal } = {}) {
  const init = { method, credentials: 'same-origin', headers: { ...headers }, signal };
  if (method !== 'GET' && method !== 'HEAD') init.headers['X-Edaflow-Console'] = '1';
  if (body !== undefined) {
    if (typeof body === 'string') {
      init.body = body;
      if (!init.headers['Content-Type']) init.headers['Content-Type'] = 'text/plain; charset=utf-8';
    } else {
      init.body = JSON.stringify(body);
      init.headers['Content-Type'] = 'application/json';
    }
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, null, 'the server cannot be reached');
  }
  const type = response.headers.get('Content-Type') || '';
  let data = null;
  const text = await response.text();
  if (type.includes('json') && text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  } else {
    data = text;
  }
  if (response.status === 401) onUnauthorized();
  if (!response.ok && !accept.includes(response.status)) {
    throw new ApiError(response.status, typeof data === 'object' ? data : null,
      `${method} ${url.split('?')[0]} answered ${response.status}`);
  }
  return { status: response.status, data, headers: response.headers };
}

export const getJSON = async (url, options) => (await request('GET', url, options)).data;
export const postJSON = async (url, body, options) =>
  (await request('POST', url, { ...options, body })).data;

/**
 * The one EventSource of the page. `handlers.snapshot(data)` and `handlers.reload(data)` are
 * called with parsed JSON; `handlers.state(s)` with 'open' | 'reconnecting' | 'closed'.
 * A stream the browser gave up on (the server refused it) is reopened after a pause, once
 * `handlers.closed()` (which may check the login) resolves true.
 */
export class LiveStream {
  constructor(handlers) {
    this.handlers = handlers;
    this.source = null;
    this.retry = 0;
    this.stopped = true;
  }

  start() {
    if (this.source) return;
    this.stopped = false;
    const source = new EventSource('/console/stream', { withCredentials: true });
    this.source = source;
    source.addEventListener('open', () => {
      this.retry = 0;
      this.handlers.state('open');
    });
    source.addEventListener('snapshot', (e) => this.deliver('snapshot', e.data));
    source.addEventListener('reload', (e) => this.deliver('reload', e.data));
    source.addEventListener('error', () => {
      if (source.readyState === EventSource.CLOSED) {
        this.source = null;
        this.handlers.state('closed');
        if (this.stopped) return;
        const wait = Math.min(10000, 1000 * 2 ** this.retry++);
        setTimeout(async () => {
          if (!this.stopped && (await this.handlers.closed())) this.start();
        }, wait);
      } else {
        this.handlers.state('reconnecting');
      }
    });
  }

  deliver(kind, text) {
    let data;
    try {
      data = JSON.parse(text);
    } catch {
      return;
    }
    this.handlers[kind](data);
  }

  stop() {
    this.stopped = true;
    if (this.source) this.source.close();
    this.source = null;
  }
}

// ------------------------------------------------------------------ formatting

/** 1234 → "1234"; 12345 → "12.3k"; 1234567 → "1.23M". */
export function formatCount(n) {
  if (n == null || Number.isNaN(n)) return '–';
  if (n < 10000) return String(Math.round(n));
  if (n < 1e6) return `${(n / 1e3).toFixed(n < 1e5 ? 1 : 0)}k`;
  if (n < 1e9) return `${(n / 1e6).toFixed(n < 1e8 ? 2 : 0)}M`;
  return `${(n / 1e9).toFixed(2)}G`;
}

/** Events per second as the graph shows them: "0/s", "0.4/s", "12/s", "1.2k/s". */
export function formatRate(r) {
  if (r == null || Number.isNaN(r)) return '–/s';
  if (r <= 0) return '0/s';
  if (r < 0.1) return '<0.1/s';
  if (r < 10) return `${r.toFixed(1).replace(/\.0$/, '')}/s`;
  if (r < 1000) return `${Math.round(r)}/s`;
  return `${formatCount(r)}/s`;
}

/** Seconds → "48 µs", "1.2 ms", "350 ms", "2.5 s". */
export function formatSeconds(s) {
  if (s == null || Number.isNaN(s)) return '–';
  if (s < 0.001) return `${+(s * 1e6).toPrecision(3)} µs`;
  if (s < 1) return `${+(s * 1e3).toPrecision(3)} ms`;
  if (s < 120) return `${+s.toPrecision(3)} s`;
  return formatUptime(s);
}

export const formatMs = (ms) => (ms == null ? '–' : formatSeconds(ms / 1000));

/** Seconds → "3 d 4 h", "2 h 5 min", "4 min 12 s", "12 s". */
export function formatUptime(s) {
  if (s == null) return '–';
  s = Math.floor(s);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${sec} s`;
  return `${sec} s`;
}

/** A time (RFC 3339 text, ms since the epoch, or a Date) as local "HH:MM:SS.mmm". */
export function formatClock(t) {
  const d = t instanceof Date ? t : new Date(t);
  if (Number.isNaN(d.getTime())) return String(t ?? '–');
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/** "12 s ago", "3 min ago", or the date for older times. */
export function formatAgo(t, now = Date.now()) {
  const d = t instanceof Date ? t : new Date(t);
  const ms = now - d.getTime();
  if (Number.isNaN(ms)) return '–';
  if (ms < 1500) return 'just now';
  if (ms < 3600e3) return `${formatUptime(ms / 1000)} ago`;
  if (ms < 86400e3) return `${formatUptime(ms / 1000)} ago`;
  return d.toLocaleString();
}

/** RFC 3339 text with up to nanoseconds → ms since the epoch, keeping the microseconds. */
export function parseTime(text) {
  if (typeof text === 'number') return text;
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/i.exec(String(text));
  if (!m) return Date.parse(text);
  const frac = (m[2] || '').padEnd(6, '0').slice(0, 6);
  return Date.parse(`${m[1]}${m[3]}`) + Number(frac) / 1000;
}

/** A hash fragment for a route with an id that may hold slashes (file ids do). */
export function routeHash(route, id) {
  return `#/${route}/${encodeURIComponent(id).replace(/%2F/g, '/')}`;
}

/** Makes an element: el('li', {class: 'x', dataset: {id}}, 'text', child…). */
export function el(tag, attrs = {}, ...children) {
  const node = tag === 'svg' || attrs.svg
    ? document.createElementNS('http://www.w3.org/2000/svg', tag)
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false || key === 'svg') continue;
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'class') node.setAttribute('class', value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Makes an SVG element with attributes. */
export function svg(tag, attrs = {}) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value != null) node.setAttribute(key, value);
  }
  return node;
}

/** Sets an element's text only when it changed (no layout work for unchanged figures). */
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/** Sets or removes a class only when needed. */
export function setClass(node, name, on) {
  if (node.classList.contains(name) !== !!on) node.classList.toggle(name, !!on);
}
