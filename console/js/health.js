// The health view (`#/health`): generation, broker status with its reason, uptime, the
// last reload (when, what changed, ok or failed and why), the processes sharing the
// broker, HTTP ingest counts, chains, and the reloads seen since the page opened.

import { el, formatAgo, formatClock, formatCount, formatMs, formatUptime, setClass, setText } from './api.js';

export function createHealthView(ctx) {
  const section = document.getElementById('view-health');
  const generation = document.getElementById('health-generation');
  const broker = document.getElementById('health-broker');
  const uptime = document.getElementById('health-uptime');
  const processId = document.getElementById('health-process');
  const dead = document.getElementById('health-dead');
  const lastReload = document.getElementById('health-last-reload');
  const http = document.getElementById('health-http');
  const processes = document.querySelector('#processes tbody');
  const chains = document.querySelector('#health-chains tbody');
  const reloads = document.getElementById('health-reloads');
  let reloadKey = '';

  function update(snap) {
    setText(generation, String(snap.generation));
    const h = snap.health || {};
    const words = { ok: '● up', degraded: '▲ degraded', down: '✖ down' };
    const kind = ctx.model?.process?.broker;
    setText(broker, `${words[h.status] || h.status || 'unknown'}${h.reason ? `: ${h.reason}` : ''}${kind ? ` (${kind} broker)` : ''}`);
    setClass(broker, 'flag', true);
    setClass(broker, 'ok', h.status === 'ok');
    setClass(broker, 'warn', h.status === 'degraded');
    setClass(broker, 'bad', h.status === 'down');
    setText(uptime, formatUptime(snap.uptime_seconds));
    setText(processId, ctx.model?.process?.id || '–');
    setText(dead, snap.dead_letters ? `☠ ${formatCount(snap.dead_letters)} in the store` : 'none');
    setClass(dead, 'flag', !!snap.dead_letters);
    setClass(dead, 'bad', !!snap.dead_letters);

    renderLastReload(snap.last_reload);

    const ht = snap.http || {};
    const facts = [
      ['Accepted', formatCount(ht.accepted)],
      ['Rejected', ht.rejected ? `⚠ ${formatCount(ht.rejected)}` : '0'],
      ['Back-pressured', ht.backpressured ? `⚠ ${formatCount(ht.backpressured)}` : '0'],
      ['Connections open', formatCount(ht.connections_open)],
    ];
    if (http.children.length !== facts.length * 2) {
      http.replaceChildren(...facts.flatMap(([k]) => [el('dt', {}, k), el('dd')]));
    }
    facts.forEach(([, v], i) => setText(http.children[i * 2 + 1], v));

    const rows = (snap.processes || []).map((p) => el('tr', { class: 'process', dataset: { id: p.id } },
      el('td', { class: 'mono' }, p.id, p.self ? el('span', { class: 'tag' }, 'this process') : null),
      el('td', {}, p.host || '–'),
      el('td', { class: 'num' }, p.pid != null ? String(p.pid) : '–'),
      el('td', { class: 'num' }, String(p.generation ?? '–'),
        p.generation != null && p.generation !== snap.generation ? el('span', { class: 'flag warn' }, ' ⚠ differs') : null),
      el('td', { title: p.started_at }, p.started_at ? formatAgo(p.started_at) : '–'),
      el('td', {}, p.seen_ms_ago == null ? '–' : p.seen_ms_ago < 1000 ? 'just now' : `${formatMs(p.seen_ms_ago)} ago`,
        p.seen_ms_ago > 10000 ? el('span', { class: 'flag warn' }, ' ⚠ silent') : null)));
    if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: '6', class: 'hint' }, 'No process reports (memory broker: this process only).')));
    processes.replaceChildren(...rows);

    const chainRows = (snap.chains || []).map((c) => el('tr', { dataset: { chain: c.chain } },
      el('th', { scope: 'row', class: 'mono' }, c.chain),
      el('td', { class: 'num' }, formatCount(c.started)),
      el('td', { class: 'num' }, formatCount(c.completed)),
      el('td', { class: `num${c.timed_out ? ' flag bad' : ''}` }, c.timed_out ? `⚠ ${formatCount(c.timed_out)}` : '0'),
      el('td', { class: 'num' }, formatCount(c.in_flight)),
      el('td', { class: 'num' }, c.duration_ms ? formatMs(c.duration_ms.p50) : '–'),
      el('td', { class: 'num' }, c.duration_ms ? formatMs(c.duration_ms.p99) : '–')));
    if (!chainRows.length) chainRows.push(el('tr', {}, el('td', { colspan: '7', class: 'hint' }, 'No chains in the running flows.')));
    chains.replaceChildren(...chainRows);
  }

  function renderLastReload(r) {
    const key = JSON.stringify(r || null);
    if (key === reloadKey) return;
    reloadKey = key;
    if (!r) {
      lastReload.replaceChildren(el('p', { class: 'hint' }, 'No reload since the start.'));
      return;
    }
    const list = (label, items) => (items && items.length
      ? el('div', {}, el('span', { class: 'hint' }, `${label}: `), el('span', { class: 'changes' }, items.join(', '))) : null);
    const nothing = !['added', 'changed', 'removed', 'swapped'].some((k) => (r[k] || []).length);
    lastReload.replaceChildren(el('div', { class: 'reload-summary' },
      el('div', {},
        r.ok ? el('span', { class: 'flag ok' }, '✓ applied') : el('span', { class: 'flag bad' }, '✖ failed'),
        ` · generation ${r.generation}`,
        r.took_ms != null && r.ok ? ` · took ${formatMs(r.took_ms)}` : ''),
      el('div', { class: 'hint', title: r.at }, `${formatClock(r.at)} (${formatAgo(r.at)})`),
      r.message ? el('div', { class: r.ok ? '' : 'flag bad' }, r.message) : null,
      list('added', r.added), list('changed', r.changed), list('removed', r.removed), list('scripts swapped', r.swapped),
      r.ok && nothing ? el('div', { class: 'hint' }, 'No component changed.') : null,
      ...(r.backlogs || []).map((b) => el('div', { class: b.dropped ? 'flag bad' : '' },
        `${b.component}: ${b.moved} moved${b.to ? ` to ${b.to}` : ''}${b.dropped ? `, ⚠ ${b.dropped} dropped` : ''}`))));
  }

  function renderReloads() {
    const items = [...ctx.reloads].reverse().map(({ at, report }) => {
      const ok = report.result === 'applied' || report.result === 'unchanged';
      const detail = report.result === 'invalid'
        ? (report.problems || []).map((p) => `${p.file}${p.line ? `:${p.line}` : ''} ${p.message}`).join('; ') || (report.diagnostic || '').split('\n')[0]
        : report.result === 'rolled_back' ? report.error : '';
      return el('li', {}, el('span', { class: 'hint' }, formatClock(at)), ' ',
        el('span', { class: `flag ${ok ? 'ok' : 'bad'}` }, `${ok ? '✓' : '✖'} ${report.result}`),
        ` · generation ${report.generation}`, detail ? ` · ${detail}` : '');
    });
    reloads.replaceChildren(...items);
    reloads.nextElementSibling?.remove();
    if (!items.length) reloads.after(el('p', { class: 'hint' }, 'None yet: reloads (a save, a file changed on disk, SIGHUP) show here as they finish.'));
  }

  return {
    el: section,
    show() {
      if (ctx.snap) update(ctx.snap);
      renderReloads();
    },
    onSnapshot: update,
    onReload() {
      if (!section.hidden) renderReloads();
    },
  };
}
