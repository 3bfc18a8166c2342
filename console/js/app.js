// The console's shell: hash routing between the views, the header (generation, broker,
// uptime, live state), the login form, reload toasts, and the one live stream whose
// snapshots feed whichever view is showing. Views are made once and shown or hidden, so
// a view keeps its state (zoom, scroll, unsaved text) while another is on screen.

import {
  ApiError, LiveStream, formatCount, formatUptime, getJSON, postJSON, setClass, setText,
  setUnauthorizedHandler,
} from './api.js';
import { createGraphView } from './graph.js';
import { createComponentPanel } from './component.js';
import { createTailView } from './tail.js';
import { createJourneyView } from './journey.js';
import { createQueuesView } from './queues.js';
import { createEditorView } from './editor.js';
import { createHealthView } from './health.js';

/** Snapshots kept for rates (the graph measures over about five seconds). */
const HISTORY = 8;

const ctx = {
  model: null,
  snap: null,
  history: [],
  /** Reload reports seen since the page opened, newest last. */
  reloads: [],
  nodeById: new Map(),
  navigate(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  },
  toast: showToast,
  /** Fetches a flow file's text once per generation (the component panel shows sources). */
  fileCache: new Map(),
  loadFile(id) {
    if (!ctx.fileCache.has(id)) {
      const p = getJSON(`/console/file?id=${encodeURIComponent(id)}`);
      p.catch(() => ctx.fileCache.delete(id));
      ctx.fileCache.set(id, p);
    }
    return ctx.fileCache.get(id);
  },
  /** Reloads the model now (after a save, say), without waiting for the next snapshot. */
  refreshModel: () => refreshModel(),
};
window.edaflowConsole = window.edaflowConsole || {};

const views = {};
let current = null; // {name, view}
let loggedOut = false;

const stream = new LiveStream({
  snapshot: onSnapshot,
  reload: onReload,
  state: (s) => {
    const pill = document.getElementById('status-stream');
    const text = { open: '● live', reconnecting: '↻ reconnecting…', closed: '✖ offline' }[s] || s;
    setText(pill, text);
    setClass(pill, 'bad', s === 'closed');
    setClass(pill, 'warn', s === 'reconnecting');
    pill.title = s === 'open' ? 'Live updates every second' : 'Live updates interrupted; retrying';
  },
  closed: async () => {
    try {
      await getJSON('/console/model');
      return true;
    } catch (e) {
      return !(e instanceof ApiError && e.status === 401);
    }
  },
});

// ------------------------------------------------------------------ start

function start() {
  views.graph = createGraphView(ctx);
  views.panel = createComponentPanel(ctx, views.graph);
  views.tail = createTailView(ctx);
  views.journey = createJourneyView(ctx);
  views.queues = createQueuesView(ctx);
  views.edit = createEditorView(ctx);
  views.health = createHealthView(ctx);

  setUnauthorizedHandler(showLogin);
  document.getElementById('login').addEventListener('submit', onLogin);
  document.getElementById('logout').addEventListener('click', async () => {
    try {
      await postJSON('/console/logout', {});
    } catch {
      // Logged out or not, the login form comes next.
    }
    showLogin();
  });
  document.getElementById('skip-link').addEventListener('click', () => {
    const target = document.querySelector('.view:not([hidden]) h1, .view:not([hidden]) input, .view:not([hidden]) [tabindex="0"]');
    (target && target.matches('input, [tabindex]') ? target : document.getElementById('main')).focus();
  });
  window.addEventListener('hashchange', route);
  loadModel();
}

async function loadModel() {
  try {
    const model = await getJSON('/console/model');
    loggedOut = false;
    setModel(model);
    stream.start();
    route();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return; // the login form is up
    route();
    const message = document.getElementById('graph-message');
    message.hidden = false;
    message.textContent = `The console could not load the flows: ${e.message}. Retrying…`;
    setTimeout(loadModel, 3000);
  }
}

let refreshing = null;
function refreshModel() {
  if (refreshing) return refreshing;
  refreshing = getJSON('/console/model')
    .then(setModel)
    .catch(() => {})
    .finally(() => {
      refreshing = null;
    });
  return refreshing;
}

function setModel(model) {
  const changed = !ctx.model || ctx.model.generation !== model.generation;
  ctx.model = model;
  ctx.nodeById = new Map(model.nodes.map((n) => [n.id, n]));
  if (changed) ctx.fileCache.clear();
  setText(document.getElementById('status-generation'), `generation ${model.generation}`);
  for (const name of ['graph', 'panel', 'tail', 'journey', 'queues', 'edit', 'health']) {
    views[name].onModel?.(model);
  }
}

// ------------------------------------------------------------------ login

function showLogin() {
  if (loggedOut) return;
  loggedOut = true;
  stream.stop();
  if (current) current.view.hide?.();
  current = null;
  for (const section of document.querySelectorAll('main > .view')) section.hidden = true;
  document.getElementById('view-login').hidden = false;
  document.getElementById('logout').hidden = true;
  setText(document.getElementById('status-stream'), 'signed out');
  setNav(null);
  document.getElementById('login-token').focus();
}

async function onLogin(e) {
  e.preventDefault();
  const input = document.getElementById('login-token');
  const error = document.getElementById('login-error');
  const button = document.getElementById('login-submit');
  button.disabled = true;
  error.hidden = true;
  try {
    const response = await fetch('/console/login', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-Edaflow-Console': '1' },
      body: JSON.stringify({ token: input.value }),
    });
    if (!response.ok) {
      error.textContent = response.status === 401
        ? '✖ That token is not the right one.'
        : `✖ Sign-in failed (HTTP ${response.status}).`;
      error.hidden = false;
      input.select();
      return;
    }
    input.value = '';
    document.getElementById('view-login').hidden = true;
    document.getElementById('logout').hidden = false;
    loggedOut = false;
    await loadModel();
  } catch {
    error.textContent = '✖ The server cannot be reached.';
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ routing

function parseRoute() {
  const hash = location.hash.replace(/^#\/?/, '');
  const slash = hash.indexOf('/');
  const name = (slash < 0 ? hash : hash.slice(0, slash)) || 'graph';
  let param = slash < 0 ? null : hash.slice(slash + 1);
  if (param) {
    try {
      param = decodeURIComponent(param);
    } catch {
      // A malformed escape: take the text as it is.
    }
  }
  return { name, param: param || null };
}

function route() {
  if (loggedOut) return;
  let { name, param } = parseRoute();
  if (!['graph', 'component', 'tail', 'journey', 'queues', 'edit', 'health'].includes(name)) {
    name = 'graph';
    param = null;
  }
  const viewName = name === 'component' ? 'graph' : name;
  const view = views[viewName];
  if (current && current.name !== viewName) {
    current.view.hide?.();
    current.view.el.hidden = true;
  }
  if (name !== 'component') views.panel.hide();
  view.el.hidden = false;
  const previous = current?.name;
  current = { name: viewName, view };
  // The component panel opens beside the graph: the graph gets the id to mark it.
  view.show(param);
  if (name === 'component') views.panel.show(param);
  setNav(viewName);
  const titles = {
    graph: 'Graph', tail: 'Tail', journey: 'Journey', queues: 'Queues', edit: 'Editor', health: 'Health',
  };
  document.title = `${name === 'component' && param ? param : titles[viewName]} · edaflow console`;
  if (previous && previous !== viewName) document.getElementById('main').focus({ preventScroll: true });
}

function setNav(name) {
  for (const a of document.querySelectorAll('nav a[data-nav]')) {
    if (a.dataset.nav === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

// ------------------------------------------------------------------ live updates

function onSnapshot(snap) {
  ctx.snap = snap;
  ctx.history.push(snap);
  if (ctx.history.length > HISTORY) ctx.history.shift();
  updateHeader(snap);
  if (ctx.model && snap.generation !== ctx.model.generation) refreshModel();
  if (!current) return;
  current.view.onSnapshot?.(snap);
  if (current.name === 'graph') views.panel.onSnapshot(snap);
}

function updateHeader(snap) {
  const gen = document.getElementById('status-generation');
  const failed = snap.last_reload && snap.last_reload.ok === false;
  setText(gen, `generation ${snap.generation}${failed ? ' · ⚠ last reload failed' : ''}`);
  setClass(gen, 'warn', failed);
  gen.title = failed ? `Last reload failed: ${snap.last_reload.message || ''}` : 'Running generation';

  const health = snap.health || {};
  const pill = document.getElementById('status-health');
  const status = health.status || 'ok';
  const words = { ok: '● broker up', degraded: '▲ broker degraded', down: '✖ broker down' };
  const reason = health.reason ? `: ${health.reason}` : '';
  const text = `${words[status] || `broker ${status}`}${status === 'ok' ? '' : reason}`;
  setText(pill, text.length > 60 ? `${text.slice(0, 58)}…` : text);
  pill.title = `Broker ${status}${reason}`;
  setClass(pill, 'ok', status === 'ok');
  setClass(pill, 'warn', status === 'degraded');
  setClass(pill, 'bad', status === 'down');

  setText(document.getElementById('status-uptime'), `up ${formatUptime(snap.uptime_seconds)}`);
  const dead = document.getElementById('nav-dead');
  dead.hidden = !snap.dead_letters;
  setText(dead, `☠ ${formatCount(snap.dead_letters || 0)}`);
  dead.title = `${snap.dead_letters} dead letters`;
}

function onReload(report) {
  ctx.reloads.push({ at: Date.now(), report });
  if (ctx.reloads.length > 50) ctx.reloads.shift();
  views.health.onReload?.(report);
  views.edit.onReload?.(report);
  const gen = report.generation;
  // The editor shows every outcome in place, under the text: a toast there would cover it.
  const toast = location.hash.startsWith('#/edit') ? () => {} : showToast;
  switch (report.result) {
    case 'applied':
      toast(`Generation ${gen} applied${changeSummary(report)}`, 'ok');
      refreshModel();
      break;
    case 'unchanged':
      // Nothing to tell (a watcher often reloads a save once more): Health lists it.
      break;
    case 'invalid': {
      const first = (report.problems || [])[0];
      const where = first ? `${first.file}${first.line ? `:${first.line}` : ''}: ` : '';
      const more = report.problems && report.problems.length > 1 ? ` (+${report.problems.length - 1} more)` : '';
      const text = first ? `${where}${first.message}${more}` : firstLine(report.diagnostic);
      toast(`Invalid: ${text} — generation ${gen} keeps running`, 'bad');
      break;
    }
    case 'rolled_back':
      toast(`Reload failed and was rolled back to generation ${gen}: ${report.error || ''}`, 'bad');
      break;
    default:
      toast(`Reload: ${report.result}`, 'info');
  }
}

function changeSummary(report) {
  const parts = [];
  for (const key of ['added', 'changed', 'removed', 'swapped']) {
    const n = (report[key] || []).length;
    if (n) parts.push(`${n} ${key}`);
  }
  return parts.length ? ` · ${parts.join(', ')}` : '';
}

function firstLine(text) {
  return String(text || '').split('\n').map((l) => l.trim()).find((l) => l) || 'the flows are not valid';
}

// ------------------------------------------------------------------ toasts

function showToast(text, kind = 'info', timeout) {
  const region = document.getElementById('toasts');
  const icon = { ok: '✓', bad: '✖', info: 'ℹ' }[kind] || 'ℹ';
  const box = document.createElement('div');
  box.className = `toast ${kind}`;
  const iconEl = document.createElement('span');
  iconEl.className = 'toast-icon';
  iconEl.setAttribute('aria-hidden', 'true');
  iconEl.textContent = icon;
  const textEl = document.createElement('span');
  textEl.className = 'toast-text';
  textEl.textContent = text;
  const close = document.createElement('button');
  close.type = 'button';
  close.setAttribute('aria-label', 'Dismiss');
  close.textContent = '×';
  close.addEventListener('click', () => box.remove());
  box.append(iconEl, textEl, close);
  region.append(box);
  while (region.children.length > 4) region.firstElementChild.remove();
  setTimeout(() => box.remove(), timeout || (kind === 'bad' ? 15000 : 6000));
}

start();
