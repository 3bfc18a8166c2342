// The component panel (`#/component/{id}`), beside the graph: what one component is (its
// settings, connections, handler source or flow-file section, highlighted) and how it is
// doing (live counters, buffer or queue depth, latency histogram, recent errors). Built
// when it opens; only the live parts change with each snapshot.

import {
  el, formatClock, formatCount, formatMs, formatSeconds, routeHash, setClass, setText, svg,
} from './api.js';
import { highlightInto, languageOf } from './highlight.js';

const ICONS = { producer: 'P', topic: 'T', subscriber: 'S', queue: 'Q', relay: 'R', chain: 'C', store: 'D' };

export function createComponentPanel(ctx, graph) {
  const panel = document.getElementById('component-panel');
  let id = null;
  let parts = null; // the live elements of the panel shown
  let histogramMode = 'total';

  function close() {
    const was = id;
    ctx.navigate('#/graph');
    requestAnimationFrame(() => graph.focusNode(was));
  }

  // Escape closes the panel, from the panel or from the graph beside it.
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape' || panel.hidden || e.defaultPrevented) return;
    if (!e.target.closest?.('#view-graph') || e.target.matches('input')) return;
    e.preventDefault();
    close();
  });

  function build() {
    const node = ctx.nodeById.get(id);
    panel.replaceChildren();
    parts = null;
    const head = el('div', { class: 'panel-head' },
      el('span', { class: `legend-icon kind-${node?.kind || 'topic'}`, 'aria-hidden': 'true' }, ICONS[node?.kind] || '?'),
      el('h2', { id: 'component-title' }, id),
      el('button', { type: 'button', class: 'panel-close', 'aria-label': 'Close the panel', title: 'Close (Esc)', onclick: close }, '×'));
    panel.append(head);
    if (!node) {
      panel.append(el('p', { class: 'hint' }, ctx.model
        ? 'No component with this id runs in this generation.'
        : 'Loading the flows…'));
      return;
    }
    const fileLink = node.file
      ? el('a', { href: routeHash('edit', node.file), class: 'mono' }, node.file)
      : null;
    panel.append(el('div', { class: 'panel-meta' },
      el('span', {}, node.kind),
      node.flow ? el('span', {}, `flow ${node.flow}`) : null,
      fileLink));

    // Live figures.
    const stats = el('div', { class: 'stat-grid' });
    const depth = el('div', { class: 'component-depth' });
    const meter = el('div', {
      class: 'meter', role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-label': 'Buffer fill', hidden: true,
    }, el('span'));
    panel.append(el('section', { class: 'panel-section', 'aria-label': 'Live figures' },
      el('h3', {}, 'Now ', el('span', { class: 'aside' }, '(counts since start)')), stats, depth, meter));

    let histogram = null;
    let histogramSummary = null;
    if (node.kind === 'subscriber') {
      histogram = svg('svg', { id: 'latency-histogram', role: 'img', 'aria-label': 'Handler latency histogram' });
      histogramSummary = el('p', { class: 'latency-summary' });
      const toggle = el('span', { class: 'seg-toggle', role: 'group', 'aria-label': 'Histogram range' });
      for (const [mode, label] of [['total', 'since start'], ['recent', 'last few s']]) {
        toggle.append(el('button', {
          type: 'button',
          'aria-pressed': String(mode === histogramMode),
          onclick: (e) => {
            histogramMode = mode;
            for (const b of toggle.children) b.setAttribute('aria-pressed', String(b === e.currentTarget));
            if (ctx.snap) update(ctx.snap);
          },
        }, label));
      }
      panel.append(el('section', { class: 'panel-section', 'aria-label': 'Latency' },
        el('div', { class: 'source-head' }, el('h3', {}, 'Handler latency'), toggle),
        histogram, histogramSummary));
    }

    let errors = null;
    if (node.kind === 'subscriber' || node.kind === 'relay') {
      errors = el('ul', { class: 'recent-errors' });
      const none = el('p', { class: 'no-errors' }, '✓ No recent errors.');
      panel.append(el('section', { class: 'panel-section', 'aria-label': 'Recent errors' },
        el('h3', {}, 'Recent errors'), errors, none));
      errors.none = none;
    }

    // Connections.
    const inputs = ctx.model.edges.filter((e) => e.to === id);
    const outputs = ctx.model.edges.filter((e) => e.from === id);
    if (inputs.length || outputs.length) {
      const list = (edges, side) => el('ul', { class: 'links' }, edges.map((e) => {
        const other = side === 'in' ? e.from : e.to;
        return el('li', {}, el('span', { class: 'hint' }, `${e.kind} `),
          el('a', { href: routeHash('component', other), class: 'mono' }, other));
      }));
      panel.append(el('section', { class: 'panel-section', 'aria-label': 'Connections' },
        el('h3', {}, 'Connections'),
        inputs.length ? el('div', {}, el('span', { class: 'hint' }, 'from'), list(inputs, 'in')) : null,
        outputs.length ? el('div', {}, el('span', { class: 'hint' }, 'to'), list(outputs, 'out')) : null));
    }

    // Settings.
    const settings = el('dl', { class: 'component-settings' });
    for (const [key, value] of Object.entries(node.settings || {})) {
      settings.append(el('dt', {}, key), el('dd', {}, settingValue(key, value)));
    }
    if (!settings.children.length) settings.append(el('dt', {}, '—'), el('dd', {}, 'no settings'));
    panel.append(el('section', { class: 'panel-section', 'aria-label': 'Settings' }, el('h3', {}, 'Settings'), settings));

    // Source: the handler script, or the component's section of its flow file.
    const sourceId = node.script || node.file;
    if (sourceId) {
      const pre = el('pre', { class: 'source', tabindex: '0' }, 'Loading…');
      const edit = el('a', { class: 'edit-source', href: routeHash('edit', sourceId) }, '✎ Edit source');
      const title = node.script ? 'Handler' : 'Definition';
      panel.append(el('section', { class: 'panel-section', 'aria-label': title },
        el('div', { class: 'source-head' }, el('h3', {}, title), el('span', { class: 'mono' }, sourceId), edit),
        pre));
      let definition = null;
      if (node.script && node.file) {
        definition = el('pre', { class: 'definition', tabindex: '0' });
        panel.append(el('details', { class: 'panel-section' },
          el('summary', {}, el('span', { class: 'hint' }, `Definition in ${node.file}`)), definition));
      }
      const shownId = id;
      loadSource(node, node.script, pre, edit, shownId);
      if (definition) loadSource(node, null, definition, null, shownId);
    } else {
      panel.append(el('p', { class: 'hint' }, node.kind === 'topic'
        ? 'Not declared in a flow file: this topic exists because components name it.'
        : 'Its flow file is outside the flow folders, so the console cannot show it.'));
    }
    parts = { node, stats, depth, meter, histogram, histogramSummary, errors };
  }

  async function loadSource(node, scriptId, pre, edit, shownId) {
    const fileId = scriptId || node.file;
    try {
      const file = await ctx.loadFile(fileId);
      if (id !== shownId) return;
      if (scriptId) {
        highlightInto(pre, file.text, languageOf(fileId));
      } else {
        const section = tomlSection(file.text, node);
        if (section) highlightInto(pre, section.text, 'toml');
        else pre.textContent = `No [${node.kind}s.${node.name}] table in ${fileId}.`;
        if (edit && section) {
          edit.addEventListener('click', () => {
            ctx.editorJump = { file: fileId, line: section.line };
          });
        }
      }
    } catch (e) {
      if (id === shownId) pre.textContent = `Could not load ${fileId}: ${e.message}`;
    }
  }

  function update(snap) {
    if (!parts) return;
    const { node } = parts;
    const stat = (label, value, bad) => el('div', { class: `stat${bad ? ' bad' : ''}` },
      el('span', { class: 'v' }, (bad ? '⚠ ' : '') + value), el('span', { class: 'k' }, label));
    const cells = [];
    let depthText = null;
    let fill = null;
    if (node.kind === 'subscriber') {
      const s = snap.subscribers?.[node.name];
      if (s) {
        cells.push(stat('received', formatCount(s.in)), stat('handled', formatCount(s.handled)),
          stat('emitted', formatCount(s.out)), stat('in flight', formatCount(s.in_flight)),
          stat(s.errors === 1 ? 'error' : 'errors', formatCount(s.errors), s.errors > 0),
          stat('dead letters', formatCount(s.dead_letters), s.dead_letters > 0));
        const fromQueue = parts.node.settings?.queue;
        if (s.queued == null && s.in_flight == null) {
          depthText = 'No buffer figures: this process does not run its consumer.';
        } else if (fromQueue) {
          depthText = `Queue ${fromQueue}: ${formatCount(s.queued)} due now · ${formatCount(s.in_flight)} in flight`;
        } else {
          depthText = `Group buffer: ${formatCount(s.queued)} queued`
            + `${s.capacity != null ? ` of ${formatCount(s.capacity)}` : ''} · ${formatCount(s.in_flight)} in flight`;
          fill = s.capacity ? (s.queued || 0) / s.capacity : null;
        }
        drawHistogram(s.latency, snap);
        updateErrors(s.recent_errors || []);
      } else {
        depthText = 'Not running in this process (another role or process runs it).';
      }
    } else if (node.kind === 'queue') {
      const q = snap.queues?.[node.name];
      if (q) {
        cells.push(stat('depth', formatCount(q.depth)), stat('due now', formatCount(q.due_now)),
          stat('next due', q.next_due_ms == null ? '—' : `in ${formatMs(q.next_due_ms)}`),
          stat('in flight', formatCount(q.in_flight)),
          stat('dead letters', formatCount(q.dead_letters), q.dead_letters > 0));
        depthText = `Queue depth: ${formatCount(q.depth)} waiting, ${formatCount(q.due_now)} due now`
          + (q.next_due_ms == null ? '' : `, next due in ${formatMs(q.next_due_ms)}`);
      }
    } else if (node.kind === 'topic') {
      const t = snap.topics?.[node.name];
      if (t) cells.push(stat('published', formatCount(t.in)), stat('handed to handlers', formatCount(t.out)));
      else depthText = 'No event seen on this topic yet.';
    } else if (node.kind === 'relay') {
      const r = snap.relays?.[node.name];
      if (r) {
        cells.push(stat('relayed', formatCount(r.relayed)), stat('filtered out', formatCount(r.filtered)),
          stat('dropped', formatCount(r.dropped)), stat('errors', formatCount(r.errors), r.errors > 0));
        updateErrors(r.recent_errors || []);
      }
    } else if (node.kind === 'chain') {
      const c = (snap.chains || []).find((x) => x.chain === node.name);
      if (c) {
        cells.push(stat('started', formatCount(c.started)), stat('completed', formatCount(c.completed)),
          stat('in flight', formatCount(c.in_flight)), stat('timed out', formatCount(c.timed_out), c.timed_out > 0));
        if (c.duration_ms) {
          depthText = `Whole chain: p50 ${formatMs(c.duration_ms.p50)}, p90 ${formatMs(c.duration_ms.p90)}, `
            + `p99 ${formatMs(c.duration_ms.p99)}, max ${formatMs(c.duration_ms.max)} (${c.duration_ms.samples} recent)`;
        }
      }
    } else if (node.kind === 'producer') {
      const h = snap.http;
      if (h && (node.settings?.kind === 'http' || !node.settings?.kind)) {
        cells.push(stat('accepted', formatCount(h.accepted)), stat('rejected', formatCount(h.rejected), h.rejected > 0),
          stat('back-pressured', formatCount(h.backpressured), h.backpressured > 0),
          stat('connections', formatCount(h.connections_open)));
        depthText = 'HTTP figures are for every http producer of the process together.';
      }
    }
    parts.stats.replaceChildren(...cells);
    parts.stats.hidden = !cells.length;
    if (depthText == null && !cells.length) depthText = 'No live figures for this kind of component.';
    setText(parts.depth, depthText || '');
    parts.meter.hidden = fill == null;
    if (fill != null) {
      setClass(parts.meter, 'high', fill > 0.8);
      parts.meter.setAttribute('aria-valuenow', String(Math.round(fill * 100)));
      parts.meter.firstElementChild.style.width = `${Math.min(100, fill * 100).toFixed(1)}%`;
    }
  }

  function updateErrors(list) {
    const ul = parts.errors;
    if (!ul) return;
    const key = list.map((e) => `${e.at}${e.event_id}`).join('|');
    if (ul.dataset.key === key) return;
    ul.dataset.key = key;
    ul.replaceChildren(...[...list].reverse().map((e) => el('li', {},
      el('span', { class: 'err-meta' }, `⚠ ${formatClock(e.at)} · attempt ${e.attempt ?? '–'}`),
      el('span', { class: 'err-msg' }, e.message),
      el('span', { class: 'err-meta' },
        e.correlation ? el('a', { href: routeHash('journey', e.correlation) }, 'journey') : null,
        e.event_id ? ` · event ${e.event_id}` : ''))));
    ul.none.hidden = list.length > 0;
  }

  function drawHistogram(latency, snap) {
    const chart = parts.histogram;
    if (!chart || !latency) return;
    let counts = latency.counts.slice();
    let total = latency.count;
    if (histogramMode === 'recent') {
      const old = ctx.history[0];
      const before = old && old !== snap ? old.subscribers?.[parts.node.name]?.latency : null;
      if (before) {
        counts = counts.map((c, i) => Math.max(0, c - (before.counts[i] || 0)));
        total = Math.max(0, latency.count - before.count);
      }
    }
    const le = latency.le;
    // Observations past the last bound: an explicit last count, or what the buckets miss.
    let over;
    if (counts.length > le.length) over = counts.pop();
    else over = Math.max(0, total - counts.reduce((a, b) => a + b, 0));
    const bars = [...counts.map((c, i) => ({ c, label: shortDuration(le[i]), title: `≤ ${formatSeconds(le[i])}` })),
      { c: over, label: `>${shortDuration(le[le.length - 1])}`, title: `over ${formatSeconds(le[le.length - 1])}`, overflow: true }];
    const W = 400;
    const H = 160;
    const top = 14;
    const bottom = 26;
    const max = Math.max(1, ...bars.map((b) => b.c));
    const bw = W / bars.length;
    chart.setAttribute('viewBox', `0 0 ${W} ${H}`);
    chart.replaceChildren();
    bars.forEach((b, i) => {
      const h = b.c ? Math.max(2, (b.c / max) * (H - top - bottom)) : 0;
      const x = i * bw + 3;
      const rect = svg('rect', {
        class: `bar${b.overflow ? ' overflow' : ''}`, x, y: H - bottom - h, width: bw - 6, height: h, rx: 2,
      });
      const t = svg('title');
      t.textContent = `${b.title}: ${b.c}`;
      rect.append(t);
      chart.append(rect);
      if (b.c) {
        const count = svg('text', { class: 'bar-count', x: x + (bw - 6) / 2, y: H - bottom - h - 3 });
        count.textContent = formatCount(b.c);
        chart.append(count);
      }
      // Labels on two staggered rows, so that "100ms" and "500ms" never touch.
      const label = svg('text', { class: 'axis', x: x + (bw - 6) / 2, y: i % 2 ? H - 1 : H - 10 });
      label.textContent = b.label;
      chart.append(label);
    });
    chart.append(svg('line', { class: 'baseline', x1: 0, x2: W, y1: H - bottom + 0.5, y2: H - bottom + 0.5 }));
    chart.setAttribute('aria-label', `Handler latency: ${bars.map((b) => `${b.title} ${b.c}`).join(', ')}`);
    const quantile = (q) => {
      const n = bars.reduce((a, b) => a + b.c, 0);
      if (!n) return null;
      let acc = 0;
      for (let i = 0; i < bars.length; i++) {
        acc += bars[i].c;
        if (acc >= q * n) return i < le.length ? `≤ ${formatSeconds(le[i])}` : `> ${formatSeconds(le[le.length - 1])}`;
      }
      return null;
    };
    const mean = histogramMode === 'total' && latency.count ? formatSeconds(latency.sum_seconds / latency.count) : null;
    const p50 = quantile(0.5);
    const p99 = quantile(0.99);
    parts.histogramSummary.replaceChildren(
      el('strong', {}, formatCount(total)), ` runs${histogramMode === 'recent' ? ' lately' : ''}`,
      ...(mean ? [' · mean ', el('strong', {}, mean)] : []),
      ...(p50 ? [' · p50 ', el('strong', {}, p50)] : []),
      ...(p99 ? [' · p99 ', el('strong', {}, p99)] : []));
  }

  function settingValue(key, value) {
    if (value == null) return el('span', { class: 'hint' }, 'not set');
    const link = (kind, name) => {
      const target = `${kind}.${name}`;
      return ctx.nodeById.has(target) ? el('a', { href: routeHash('component', target) }, name) : name;
    };
    const kindOf = { topic: 'topics', topics: 'topics', emits: 'topics', queue: 'queues', from: 'topics', on_timeout: 'topics', steps: 'topics' };
    if (kindOf[key] && (typeof value === 'string' || Array.isArray(value))) {
      const list = Array.isArray(value) ? value : [value];
      const out = [];
      list.forEach((v, i) => {
        if (i) out.push(', ');
        out.push(typeof v === 'string' ? link(kindOf[key], v) : JSON.stringify(v));
      });
      return out.length ? out : '[]';
    }
    if (key === 'to' && typeof value === 'string') return link('queues', value);
    if (typeof value === 'string') return value;
    if (value && typeof value === 'object' && !Array.isArray(value)) {
      return Object.entries(value).map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join(', ');
    }
    return JSON.stringify(value);
  }

  return {
    el: panel,
    show(nodeId) {
      const changed = nodeId !== id || panel.hidden;
      id = nodeId;
      panel.hidden = false;
      if (changed || !parts) build();
      if (ctx.snap) update(ctx.snap);
    },
    hide() {
      if (panel.hidden) return;
      panel.hidden = true;
      id = null;
      parts = null;
      panel.replaceChildren();
    },
    onModel() {
      if (!panel.hidden && id) {
        build();
        if (ctx.snap) update(ctx.snap);
      }
    },
    onSnapshot(snap) {
      if (!panel.hidden) update(snap);
    },
  };
}

/** 0.00005 → "50µs", 0.0025 → "2.5ms", 0.5 → "500ms", 2.5 → "2.5s". */
function shortDuration(s) {
  if (s < 0.001) return `${+(s * 1e6).toPrecision(3)}µs`;
  if (s < 1) return `${+(s * 1e3).toPrecision(3)}ms`;
  return `${+s.toPrecision(3)}s`;
}

/**
 * The part of a flow file that defines `node`: its table (`[subscribers.name]`, with
 * subtables) and the comment lines just above it. `{text, line}` (1-based) or null.
 */
export function tomlSection(text, node) {
  const plural = `${node.kind}s`;
  const lines = text.split('\n');
  const quoted = (name) => (/^[A-Za-z0-9_-]+$/.test(name) ? [name] : [`"${name}"`, `'${name}'`]);
  const heads = quoted(node.name).map((n) => `[${plural}.${n}]`);
  const start = lines.findIndex((l) => heads.some((h) => l.replace(/\s+/g, '').startsWith(h.replace(/\s+/g, ''))));
  if (start < 0) return null;
  let end = start + 1;
  const prefix = heads.map((h) => h.slice(0, -1));
  while (end < lines.length) {
    const t = lines[end].trim();
    if (t.startsWith('[') && !prefix.some((p) => t.replace(/\s+/g, '').startsWith(`${p}.`))) break;
    end++;
  }
  let first = start;
  while (first > 0 && lines[first - 1].trim().startsWith('#')) first--;
  while (end > start + 1 && !lines[end - 1].trim()) end--;
  return { text: lines.slice(first, end).join('\n'), line: start + 1 };
}
