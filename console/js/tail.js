// The live tail (`#/tail`): `GET /tail?pattern=…` read as NDJSON with a stream reader,
// newest event first, at most MAX_ROWS rows. The stream runs only while this view shows
// (the server taps the broker for every open tail). Pause keeps reading but renders
// nothing, counting what it skips. Rows are rendered in batches, once per frame.

import { el, formatClock, formatCount, routeHash, setText } from './api.js';

const MAX_ROWS = 500;
const RETRY_MS = 2000;

export function createTailView(ctx) {
  const section = document.getElementById('view-tail');
  const form = document.getElementById('tail-form');
  const input = document.getElementById('tail-pattern');
  const pause = document.getElementById('tail-pause');
  const clear = document.getElementById('tail-clear');
  const list = document.getElementById('tail-list');
  const status = document.getElementById('tail-status');
  const json = document.getElementById('tail-json');
  const hint = document.getElementById('tail-detail-hint');
  const links = document.getElementById('tail-detail-links');

  let pattern = '';
  let running = null; // {controller}
  let paused = false;
  let skipped = 0;
  let received = 0;
  let pending = []; // events waiting for the next frame
  let frame = 0;
  let selectedRow = null;
  let retryTimer = 0;
  let state = 'idle';
  const events = new WeakMap(); // row → event

  function setStatus(text, bad = false) {
    state = text;
    status.classList.toggle('bad', bad);
    renderStatus();
  }

  function renderStatus() {
    const parts = [state];
    if (received) parts.push(`${formatCount(received)} received`);
    if (paused) parts.push(`‖ paused: ${formatCount(skipped)} not shown`);
    setText(status, parts.join(' · '));
  }

  async function start() {
    stop();
    const controller = new AbortController();
    running = { controller };
    const shown = pattern || '>';
    setStatus(`connecting to ${shown}…`);
    let response;
    try {
      response = await fetch(`/tail?pattern=${encodeURIComponent(shown)}`, {
        credentials: 'same-origin',
        signal: controller.signal,
        headers: { Accept: 'application/x-ndjson' },
      });
    } catch (e) {
      if (e.name !== 'AbortError' && running?.controller === controller) retryLater('the server cannot be reached');
      return;
    }
    if (running?.controller !== controller) return;
    if (!response.ok) {
      let detail = `HTTP ${response.status}`;
      try {
        const body = await response.json();
        detail = body.detail || body.error || detail;
      } catch {
        // Not JSON: keep the status.
      }
      if (response.status === 400) {
        setStatus(`✖ ${detail}`, true);
        input.setAttribute('aria-invalid', 'true');
        running = null;
        return;
      }
      if (response.status === 401) ctx.refreshModel();
      retryLater(detail);
      return;
    }
    input.removeAttribute('aria-invalid');
    setStatus(`● live: ${shown}`);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, nl).trim();
          buffer = buffer.slice(nl + 1);
          if (line) accept(line);
        }
      }
    } catch (e) {
      if (e.name === 'AbortError' || running?.controller !== controller) return;
    }
    if (running?.controller === controller) retryLater('the stream ended');
  }

  function retryLater(why) {
    running = null;
    setStatus(`↻ ${why}; retrying…`, true);
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => {
      if (!section.hidden) start();
    }, RETRY_MS);
  }

  function stop() {
    clearTimeout(retryTimer);
    if (running) running.controller.abort();
    running = null;
  }

  function accept(line) {
    received++;
    if (paused) {
      skipped++;
      if (skipped % 10 === 1) renderStatus();
      return;
    }
    let event;
    try {
      event = JSON.parse(line);
    } catch {
      return;
    }
    pending.push(event);
    if (pending.length > MAX_ROWS) pending = pending.slice(-MAX_ROWS);
    if (!frame) frame = requestAnimationFrame(flush);
  }

  function flush() {
    frame = 0;
    const batch = pending;
    pending = [];
    const fragment = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i--) fragment.append(row(batch[i]));
    const atTop = list.scrollTop < 4;
    const before = list.scrollHeight;
    list.prepend(fragment);
    while (list.childElementCount > MAX_ROWS) {
      const last = list.lastElementChild;
      if (last === selectedRow) selectedRow = null;
      last.remove();
    }
    // Someone reading further down keeps their place.
    if (!atTop) list.scrollTop += list.scrollHeight - before;
    renderStatus();
  }

  function row(event) {
    const data = event.data !== undefined ? JSON.stringify(event.data)
      : event.data_base64 !== undefined ? `(${event.datacontenttype || 'binary'}, base64)` : '';
    const li = el('li', {
      class: 'tail-event',
      role: 'option',
      'aria-selected': 'false',
      dataset: { id: event.id || '', correlation: event.correlationid || '', topic: event.type || '' },
    },
    el('span', { class: 't' }, formatClock(event.time)),
    el('span', { class: 'topic' }, event.type || '?'),
    el('span', { class: 'data' }, data.length > 300 ? `${data.slice(0, 300)}…` : data),
    el('span', { class: 'corr', title: `correlation ${event.correlationid || ''}` }, event.correlationid || ''));
    events.set(li, event);
    return li;
  }

  function select(li, focus = false) {
    if (selectedRow && selectedRow.isConnected) selectedRow.setAttribute('aria-selected', 'false');
    selectedRow = li;
    if (!li) return;
    li.setAttribute('aria-selected', 'true');
    li.id = 'tail-selected';
    list.setAttribute('aria-activedescendant', 'tail-selected');
    for (const other of list.querySelectorAll('#tail-selected')) if (other !== li) other.removeAttribute('id');
    if (focus) li.scrollIntoView({ block: 'nearest' });
    const event = events.get(li);
    json.textContent = JSON.stringify(event, null, 2);
    json.hidden = false;
    hint.hidden = true;
    links.replaceChildren();
    if (event.correlationid) {
      links.append(el('a', { class: 'open-journey', href: routeHash('journey', event.correlationid) }, '↳ Open its journey'));
    }
    const topic = `topics.${event.type}`;
    if (ctx.nodeById.has(topic)) links.append(el('a', { href: routeHash('component', topic) }, `Topic ${event.type}`));
    links.hidden = !links.childElementCount;
  }

  list.addEventListener('click', (e) => {
    const li = e.target.closest('.tail-event');
    if (li) {
      select(li);
      list.focus({ preventScroll: true });
    }
  });
  list.addEventListener('keydown', (e) => {
    const rows = list.children;
    if (!rows.length) return;
    let next = null;
    if (e.key === 'ArrowDown') next = selectedRow?.isConnected ? selectedRow.nextElementSibling : rows[0];
    else if (e.key === 'ArrowUp') next = selectedRow?.isConnected ? selectedRow.previousElementSibling : rows[0];
    else if (e.key === 'Home') next = rows[0];
    else if (e.key === 'End') next = rows[rows.length - 1];
    else if (e.key === 'Enter' && selectedRow) {
      const journey = links.querySelector('.open-journey');
      if (journey) ctx.navigate(journey.getAttribute('href'));
      e.preventDefault();
      return;
    } else return;
    e.preventDefault();
    if (next) select(next, true);
  });

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    apply();
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      e.preventDefault();
      apply();
    }
  });
  function apply() {
    pattern = input.value.trim();
    list.replaceChildren();
    pending = [];
    received = 0;
    skipped = 0;
    selectedRow = null;
    if (!section.hidden) start();
  }

  pause.addEventListener('click', () => {
    paused = !paused;
    pause.setAttribute('aria-pressed', String(paused));
    pause.textContent = paused ? 'Resume' : 'Pause';
    if (!paused) skipped = 0;
    renderStatus();
  });
  clear.addEventListener('click', () => {
    list.replaceChildren();
    pending = [];
    received = 0;
    skipped = 0;
    selectedRow = null;
    json.hidden = true;
    links.hidden = true;
    hint.hidden = false;
    renderStatus();
  });

  // Leaving the page, or the tab going to the background, also ends the stream.
  window.addEventListener('pagehide', stop);
  document.addEventListener('visibilitychange', () => {
    if (section.hidden) return;
    if (document.hidden) {
      stop();
      setStatus('stopped while the tab is in the background');
    } else if (!running) start();
  });

  return {
    el: section,
    show() {
      if (!running) start();
    },
    hide() {
      stop();
      setStatus('stopped while another view shows');
    },
  };
}
