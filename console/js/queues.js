// Queues and dead letters (`#/queues`): the queues and subscriber groups live from the
// snapshots, and the dead-letter store from `GET /admin/dead`, where letters are selected
// (one, many, all) and replayed or dropped (`POST /admin/dead/replay|drop` with their ids;
// dropping asks first). What a replay or drop did is said in `#dead-result`.

import {
  ApiError, el, formatAgo, formatClock, formatCount, formatMs, getJSON, postJSON, routeHash, setClass, setText,
} from './api.js';

export function createQueuesView(ctx) {
  const section = document.getElementById('view-queues');
  const queueBody = document.querySelector('#queues-table tbody');
  const queuesEmpty = document.getElementById('queues-empty');
  const groupBody = document.querySelector('#groups-table tbody');
  const deadBody = document.querySelector('#dead-table tbody');
  const deadEmpty = document.getElementById('dead-empty');
  const deadCount = document.getElementById('dead-count');
  const result = document.getElementById('dead-result');
  const refreshButton = document.getElementById('dead-refresh');
  const selectAll = document.getElementById('dead-select-all');
  const replay = document.getElementById('dead-replay');
  const drop = document.getElementById('dead-drop');
  const delay = document.getElementById('dead-delay');
  const originForm = document.getElementById('dead-filter-form');
  const origin = document.getElementById('dead-origin');

  const queueRows = new Map();
  const groupRows = new Map();
  let letters = [];
  const selected = new Set();
  let busy = false;
  let loadedCount = null;

  // ---------------------------------------------------------------- live tables
  function updateQueues(snap) {
    const queues = snap.queues || {};
    const names = new Set(Object.keys(queues));
    for (const n of ctx.model?.nodes || []) if (n.kind === 'queue') names.add(n.name);
    for (const [name, row] of queueRows) {
      if (!names.has(name)) {
        row.tr.remove();
        queueRows.delete(name);
      }
    }
    for (const name of [...names].sort()) {
      let row = queueRows.get(name);
      if (!row) {
        const cells = Array.from({ length: 5 }, () => el('td', { class: 'num' }));
        const id = `queues.${name}`;
        const tr = el('tr', { dataset: { queue: name } },
          el('th', { scope: 'row' }, ctx.nodeById.has(id) ? el('a', { href: routeHash('component', id) }, name) : name),
          cells);
        row = { tr, cells };
        queueRows.set(name, row);
        queueBody.append(tr);
      }
      const q = queues[name];
      const [depth, due, next, inflight, dead] = row.cells;
      setText(depth, q ? formatCount(q.depth) : '–');
      setText(due, q ? formatCount(q.due_now) : '–');
      setText(next, q && q.next_due_ms != null ? `in ${formatMs(q.next_due_ms)}` : '—');
      setText(inflight, q ? formatCount(q.in_flight) : '–');
      setText(dead, q ? (q.dead_letters ? `☠ ${formatCount(q.dead_letters)}` : '0') : '–');
      setClass(dead, 'flag', !!q?.dead_letters);
      setClass(dead, 'bad', !!q?.dead_letters);
    }
    queuesEmpty.hidden = queueRows.size > 0;

    const subs = snap.subscribers || {};
    for (const [name, row] of groupRows) {
      if (!subs[name]) {
        row.tr.remove();
        groupRows.delete(name);
      }
    }
    for (const name of Object.keys(subs).sort()) {
      let row = groupRows.get(name);
      if (!row) {
        const cells = [el('td', { class: 'num' }), el('td', { class: 'num' }), el('td'), el('td', { class: 'num' })];
        const id = `subscribers.${name}`;
        const tr = el('tr', { dataset: { subscriber: name } },
          el('th', { scope: 'row' }, ctx.nodeById.has(id) ? el('a', { href: routeHash('component', id) }, name) : name),
          cells);
        row = { tr, cells, fill: null };
        groupRows.set(name, row);
        groupBody.append(tr);
      }
      const s = subs[name];
      const [queued, inflight, buffer, dead] = row.cells;
      setText(queued, formatCount(s.queued));
      setText(inflight, formatCount(s.in_flight));
      const ratio = s.capacity ? (s.queued || 0) / s.capacity : 0;
      const text = s.capacity
        ? `${Math.round(ratio * 100)}% of ${formatCount(s.capacity)}${ratio > 0.8 ? ' ⚠ nearly full' : ''}`
        : (s.queued == null ? '–' : 'unbounded');
      setText(buffer, text);
      setClass(buffer, 'flag', ratio > 0.8);
      setClass(buffer, 'bad', ratio > 0.8);
      setText(dead, s.dead_letters ? `☠ ${formatCount(s.dead_letters)}` : '0');
      setClass(dead, 'flag', !!s.dead_letters);
      setClass(dead, 'bad', !!s.dead_letters);
    }

    const inStore = snap.dead_letters;
    if (loadedCount != null && inStore != null && inStore !== loadedCount && !busy) {
      setText(deadCount, `(${formatCount(loadedCount)} listed · ${formatCount(inStore)} in the store now: Refresh)`);
    } else if (loadedCount != null) {
      setText(deadCount, `(${formatCount(loadedCount)})`);
    }
  }

  // ---------------------------------------------------------------- dead letters
  async function loadDead() {
    busy = true;
    refreshButton.disabled = true;
    const pattern = origin.value.trim();
    try {
      const list = await getJSON(`/admin/dead${pattern ? `?origin=${encodeURIComponent(pattern)}` : ''}`);
      letters = Array.isArray(list) ? list : [];
      origin.removeAttribute('aria-invalid');
    } catch (e) {
      if (e instanceof ApiError && e.status === 400) origin.setAttribute('aria-invalid', 'true');
      say(`✖ Could not list the dead letters: ${e.message}`, 'bad');
      letters = [];
    } finally {
      busy = false;
      refreshButton.disabled = false;
    }
    loadedCount = letters.length;
    const ids = new Set(letters.map((l) => l.id));
    for (const id of [...selected]) if (!ids.has(id)) selected.delete(id);
    renderDead();
  }

  function renderDead() {
    const rows = letters.map((letter) => {
      const check = el('input', {
        type: 'checkbox',
        class: 'dead-select',
        'aria-label': `Select dead letter ${letter.id}`,
      });
      check.checked = selected.has(letter.id);
      check.addEventListener('change', () => {
        if (check.checked) selected.add(letter.id);
        else selected.delete(letter.id);
        setClass(check.closest('tr'), 'selected', check.checked);
        syncButtons();
      });
      const queue = letter.deadletterqueue;
      const from = queue || letter.deadlettertopic || letter.type;
      const payload = letter.data !== undefined ? JSON.stringify(letter.data)
        : letter.data_base64 !== undefined ? `(${letter.datacontenttype}, ${letter.data_base64.length} base64 chars)` : '';
      const pretty = letter.data !== undefined ? JSON.stringify(letter.data, null, 2) : payload;
      const component = letter.deadlettersubscriber;
      const componentId = component ? [`subscribers.${component}`, `relays.${component}`].find((id) => ctx.nodeById.has(id)) : null;
      const tr = el('tr', { class: `dead-letter${selected.has(letter.id) ? ' selected' : ''}`, dataset: { id: letter.id } },
        el('td', {}, check),
        el('td', { title: letter.time }, formatClock(letter.time), el('br'), el('span', { class: 'hint' }, formatAgo(letter.time))),
        el('td', { class: 'mono' }, el('span', { class: 'hint' }, queue ? 'queue ' : 'topic '), from || '–'),
        el('td', { class: 'mono' }, componentId ? el('a', { href: routeHash('component', componentId) }, component) : (component || '–')),
        el('td', { class: 'num' }, letter.deadletterattempts != null ? String(letter.deadletterattempts) : '–'),
        el('td', { class: 'reason' }, el('span', { class: 'flag bad' }, '⚠ '), letter.deadletterreason || '(no reason recorded)'),
        el('td', { class: 'payload' },
          pretty.length > 60 || pretty.includes('\n')
            ? el('details', {}, el('summary', {}, el('code', {}, payload)), el('code', {}, pretty))
            : el('code', {}, payload),
          letter.correlationid
            ? el('a', { href: routeHash('journey', letter.correlationid), class: 'hint' }, 'journey')
            : null));
      return tr;
    });
    deadBody.replaceChildren(...rows);
    deadEmpty.hidden = letters.length > 0;
    setText(deadCount, `(${formatCount(letters.length)})`);
    syncButtons();
  }

  deadBody.addEventListener('click', (e) => {
    // A click on the row (not on a control in it) toggles its box.
    if (e.target.closest('input, a, summary, details, button')) return;
    const tr = e.target.closest('tr.dead-letter');
    if (!tr) return;
    const check = tr.querySelector('input.dead-select');
    check.checked = !check.checked;
    check.dispatchEvent(new Event('change'));
  });

  function syncButtons() {
    const n = selected.size;
    replay.disabled = busy || n === 0;
    drop.disabled = busy || n === 0;
    replay.textContent = n ? `Replay ${n}` : 'Replay';
    drop.textContent = n ? `Drop ${n}…` : 'Drop…';
    const all = letters.length > 0 && n === letters.length;
    selectAll.textContent = all ? 'Select none' : 'Select all';
    selectAll.disabled = letters.length === 0;
  }

  function say(text, kind) {
    result.textContent = text;
    result.className = `result-line ${kind || ''}`;
  }

  selectAll.addEventListener('click', () => {
    const all = letters.length > 0 && selected.size === letters.length;
    selected.clear();
    if (!all) for (const l of letters) selected.add(l.id);
    for (const tr of deadBody.querySelectorAll('tr.dead-letter')) {
      const on = selected.has(tr.dataset.id);
      tr.querySelector('input.dead-select').checked = on;
      setClass(tr, 'selected', on);
    }
    syncButtons();
  });

  replay.addEventListener('click', async () => {
    const ids = [...selected];
    if (!ids.length) return;
    const body = { ids };
    const wait = delay.value.trim();
    if (wait) body.delay = wait;
    await act(async () => {
      const report = await postJSON('/admin/dead/replay', body);
      const failed = report.failed || [];
      const text = `↻ Replayed ${report.replayed} dead letter${report.replayed === 1 ? '' : 's'}`
        + (wait ? ` (due in ${wait})` : '')
        + (failed.length ? ` · ✖ ${failed.length} could not be replayed and stay: ${failed.map((f) => `${f.id}: ${f.error}`).join('; ')}` : '');
      say(text, failed.length ? 'bad' : 'ok');
    });
  });

  drop.addEventListener('click', async () => {
    const ids = [...selected];
    if (!ids.length) return;
    const sure = window.confirm(`Drop ${ids.length} dead letter${ids.length === 1 ? '' : 's'}? They are deleted for good and cannot be replayed.`);
    if (!sure) {
      say('Nothing dropped.', '');
      return;
    }
    await act(async () => {
      const report = await postJSON('/admin/dead/drop', { ids });
      say(`✓ Dropped ${report.dropped} dead letter${report.dropped === 1 ? '' : 's'}.`, 'ok');
    });
  });

  async function act(work) {
    busy = true;
    syncButtons();
    try {
      await work();
      selected.clear();
    } catch (e) {
      say(`✖ ${e.message}`, 'bad');
    } finally {
      busy = false;
    }
    await loadDead();
  }

  refreshButton.addEventListener('click', loadDead);
  originForm.addEventListener('submit', (e) => {
    e.preventDefault();
    loadDead();
  });

  return {
    el: section,
    show() {
      if (ctx.snap) updateQueues(ctx.snap);
      loadDead();
    },
    onSnapshot(snap) {
      updateQueues(snap);
    },
  };
}
