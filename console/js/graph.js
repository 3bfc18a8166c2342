// The graph view (`#/graph`, and behind the component panel): the running flows as a
// left-to-right DAG of producers, topics, subscribers, relays, queues, stores and chains.
// The SVG is built when the model changes (laid out by layout.js, positions kept where
// nodes persist) and only its texts and classes change on each snapshot. Zoom (buttons,
// wheel, keys), pan (drag), fit; nodes are focusable links to their component panel.

import { layout } from './layout.js';
import { formatCount, formatRate, routeHash, setClass, setText, svg } from './api.js';

const NODE_H = 46;
const LAYER_GAP = 74;
/** A topic: a capsule TOPIC_W × TOPIC_H under a TOPIC_LABEL-high name. */
const TOPIC_W = 34;
const TOPIC_H = 22;
const TOPIC_LABEL = 18;
const ICONS = { producer: 'P', topic: 'T', subscriber: 'S', queue: 'Q', relay: 'R', chain: 'C', store: 'D' };
/** Edges that say what watches or reads what, not where events go: they do not order the layers. */
const LOOSE = new Set(['step', 'reads']);
const MIN_K = 0.2;
const MAX_K = 2.5;
/** The first automatic fit goes no smaller than this. */
const READABLE_K = 0.62;
/** Errors or dead letters that grew within this long mark a node (red border, "!" badge). */
const ALERT_MS = 60000;

export function createGraphView(ctx) {
  const section = document.getElementById('view-graph');
  const canvas = document.getElementById('graph-canvas');
  const root = document.getElementById('graph');
  const viewport = root.querySelector('.viewport');
  const edgeLayer = root.querySelector('.edges');
  const nodeLayer = root.querySelector('.nodes');
  const message = document.getElementById('graph-message');
  const minimap = document.getElementById('graph-minimap');
  const miniView = minimap.querySelector('.minimap-view');
  minimap.setAttribute('preserveAspectRatio', 'xMidYMid meet');
  const zoomOut = document.getElementById('graph-zoom-out');
  const zoomLabel = document.getElementById('graph-zoom');
  const find = document.getElementById('graph-find');
  const summary = document.getElementById('graph-summary');

  /** id → {el, node, box, parts…} */
  const nodes = new Map();
  /** key → {el, edge, line, hit, rateEl, countEl, counter} */
  const edges = new Map();
  let signature = '';
  let placed = null; // the layout result
  const view = { x: 20, y: 20, k: 1 };
  let userMoved = false;
  /** After Fit, automatic fits show everything; before, they stay readable. */
  let fitAll = false;
  let selected = null;
  let visible = false;
  /** node id → {errors, dead, at}: when its errors or dead letters last grew. */
  const alerts = new Map();

  // ---------------------------------------------------------------- building
  const measure = document.createElement('canvas').getContext('2d');
  const textWidth = (text, font) => {
    measure.font = font;
    return measure.measureText(text).width;
  };

  function nodeSize(node) {
    const family = getComputedStyle(root).fontFamily || 'sans-serif';
    if (node.kind === 'topic') {
      // A small capsule with the name above it; the name may spill into the gaps on both
      // sides (only edges run there), so the capsule widens only for very long names.
      const label = textWidth(node.name, `600 12px ${family}`);
      const width = Math.ceil(Math.max(TOPIC_W, label + 8 - 2 * (LAYER_GAP - 16)));
      return { width, height: TOPIC_LABEL + TOPIC_H, anchor: TOPIC_LABEL + TOPIC_H / 2 };
    }
    const label = textWidth(node.name, `600 13px ${family}`);
    // The small print as wide as it usually gets, live figures included.
    const typical = { subscriber: '▶ 12 · 345 queued', queue: '≡ 1,234 waiting · 12 in flight', chain: ' · ▶ 123 in flight' };
    const sub = textWidth(`${subText(node, ctx.model) || ''}${typical[node.kind] || ''}`, `11px ${family}`);
    const min = node.kind === 'subscriber' || node.kind === 'queue' ? 150 : 110;
    const width = Math.ceil(Math.min(300, Math.max(min, 40 + Math.max(label, sub) + 12)));
    return { width, height: NODE_H };
  }

  function rebuild(model) {
    const sig = JSON.stringify([model.nodes.map((n) => [n.id, n.kind, n.name]),
      model.edges.map((e) => [e.from, e.to, e.kind])]);
    if (sig === signature) return;
    signature = sig;
    const previous = new Map();
    if (placed) {
      for (const [id, p] of placed.nodes) previous.set(id, { x: p.x, y: p.y + p.height / 2 });
    }
    const sizes = new Map(model.nodes.map((n) => [n.id, nodeSize(n)]));
    const edgeList = model.edges.map((e) => ({ ...e, id: edgeKey(e) }));
    placed = layout(
      {
        nodes: model.nodes.map((n) => ({ id: n.id, ...sizes.get(n.id) })),
        edges: edgeList.map((e) => ({ id: e.id, from: e.from, to: e.to, loose: LOOSE.has(e.kind), hint: e.kind === 'step' })),
      },
      { layerGap: LAYER_GAP, nodeGap: 30, previous, aspect: canvasAspect() },
    );
    alignWith(placed, previous);

    const focusedId = document.activeElement?.closest?.('.node')?.dataset.id;
    // Nodes: keep the elements of nodes that stay (same kind), make the new ones.
    const keep = new Set(model.nodes.map((n) => n.id));
    for (const [id, entry] of nodes) {
      if (!keep.has(id) || entry.node.kind !== model.nodes.find((n) => n.id === id).kind) {
        entry.el.remove();
        nodes.delete(id);
      }
    }
    for (const node of model.nodes) {
      const box = placed.nodes.get(node.id);
      let entry = nodes.get(node.id);
      if (!entry || entry.box.width !== box.width) {
        if (entry) entry.el.remove();
        entry = makeNode(node, box);
        nodes.set(node.id, entry);
      }
      entry.node = node;
      entry.box = box;
      entry.el.setAttribute('transform', `translate(${round(box.x)},${round(box.y)})`);
      if (node.kind !== 'topic') setText(entry.sub, subText(node, model));
    }
    // Tab order follows the picture: column by column, top to bottom.
    const ordered = [...nodes.values()].sort((a, b) => a.box.layer - b.box.layer || a.box.y - b.box.y);
    ordered.forEach((entry) => nodeLayer.append(entry.el));
    if (focusedId && nodes.has(focusedId)) nodes.get(focusedId).el.focus({ preventScroll: true });

    // Edges. Their figures go where the curve is not shared with a sibling edge, away
    // from a topic's name when that is free too.
    const fanOut = new Map();
    const fanIn = new Map();
    for (const e of edgeList) {
      if (LOOSE.has(e.kind)) continue;
      fanOut.set(e.from, (fanOut.get(e.from) || 0) + 1);
      fanIn.set(e.to, (fanIn.get(e.to) || 0) + 1);
    }
    const kindOf = (id) => ctx.nodeById.get(id)?.kind;
    const labelEnd = (e) => {
      const sharedStart = fanOut.get(e.from) > 1;
      const sharedEnd = fanIn.get(e.to) > 1;
      if (sharedStart && sharedEnd) return 'mid';
      if (sharedStart) return 'end';
      if (sharedEnd) return 'start';
      if (kindOf(e.to) === 'topic' && kindOf(e.from) !== 'topic') return 'start';
      if (kindOf(e.from) === 'topic' && kindOf(e.to) !== 'topic') return 'end';
      return 'mid';
    };
    const keepEdges = new Set(edgeList.map((e) => e.id));
    for (const [key, entry] of edges) {
      if (!keepEdges.has(key)) {
        entry.el.remove();
        edges.delete(key);
      }
    }
    for (const edge of edgeList) {
      let entry = edges.get(edge.id);
      if (!entry) {
        entry = makeEdge(edge);
        edges.set(edge.id, entry);
        edgeLayer.append(entry.el);
      }
      entry.edge = edge;
      entry.counter = edgeCounter(edge, model);
      routeEdge(entry, placed.edges.get(edge.id), labelEnd(edge));
    }
    const counts = {};
    for (const n of model.nodes) counts[n.kind] = (counts[n.kind] || 0) + 1;
    summary.textContent = Object.entries(counts)
      .map(([k, n]) => `${n} ${k}${n === 1 ? '' : 's'}`)
      .join(' · ');
    message.hidden = model.nodes.length > 0;
    message.textContent = 'No components in the running flows.';
    markSelected();
    applyFind();
    if (!userMoved) fit(!fitAll);
  }

  function makeNode(node, box) {
    const { width: w, height: h } = box;
    const el = svg('g', {
      class: `node kind-${node.kind}-node`,
      'data-id': node.id,
      'data-kind': node.kind,
      tabindex: '0',
      role: 'link',
    });
    const title = svg('title');
    title.textContent = `${node.id} (${node.kind})`;
    el.append(title);
    const stats = svg('text', { class: 'node-stats' });
    const sub = svg('tspan', { class: 'node-sub' });
    const inflight = svg('tspan', { class: 'node-inflight' });
    stats.append(sub, inflight);
    const status = svg('text', { class: 'node-stats node-status' });
    const errors = svg('tspan', { class: 'node-errors' });
    const dead = svg('tspan', { class: 'node-dead' });
    status.append(errors, dead);
    const label = svg('text', { class: 'node-label' });
    label.textContent = node.name;
    const icon = svg('text', { class: 'icon' });
    icon.textContent = ICONS[node.kind] || '?';
    let badgeAt;
    if (node.kind === 'topic') {
      const family = getComputedStyle(root).fontFamily || 'sans-serif';
      const lw = Math.max(w, textWidth(node.name, `600 12px ${family}`));
      const top = TOPIC_LABEL;
      el.append(svg('rect', { class: 'focus-ring', x: (w - lw) / 2 - 5, y: -4, width: lw + 10, height: h + 8, rx: 8 }));
      el.append(svg('rect', { class: 'shape', x: 0, y: top, width: w, height: TOPIC_H, rx: TOPIC_H / 2 }));
      el.append(svg('circle', { class: 'icon-bg', cx: w / 2, cy: top + TOPIC_H / 2, r: 8 }));
      icon.setAttribute('x', w / 2);
      icon.setAttribute('y', top + TOPIC_H / 2 + 0.5);
      icon.setAttribute('class', 'icon small');
      label.setAttribute('x', w / 2);
      label.setAttribute('y', top - 5);
      label.setAttribute('class', 'node-label topic-label');
      el.append(icon, label, stats, status);
      badgeAt = [w, top];
    } else {
      el.append(svg('rect', { class: 'focus-ring', x: -5, y: -5, width: w + 10, height: h + 10, rx: 10 }));
      el.append(svg('path', { class: 'shape', d: shapePath(node.kind, w, h) }));
      const deco = decoPath(node.kind, w, h);
      if (deco) el.append(svg('path', { class: 'shape deco', d: deco, fill: 'none' }));
      el.append(svg('circle', { class: 'icon-bg', cx: 19, cy: h / 2, r: 11 }));
      icon.setAttribute('x', 19);
      icon.setAttribute('y', h / 2 + 0.5);
      label.setAttribute('x', 38);
      label.setAttribute('y', 19);
      stats.setAttribute('x', 38);
      stats.setAttribute('y', 35);
      status.setAttribute('x', 4);
      status.setAttribute('y', h + 14);
      el.append(icon, label, stats, status);
      badgeAt = [w - 2, 2];
    }
    const badge = svg('g', { class: 'alert-badge', transform: `translate(${badgeAt[0]},${badgeAt[1]})` });
    badge.append(svg('circle', { r: 9 }));
    const bang = svg('text', { y: 0.5 });
    bang.textContent = '!';
    badge.append(bang);
    el.append(badge);
    return { el, node, box, label, sub, inflight, errors, dead, title, aria: '' };
  }

  function makeEdge(edge) {
    const el = svg('g', {
      class: `edge kind-${edge.kind}`,
      'data-from': edge.from,
      'data-to': edge.to,
      'data-kind': edge.kind,
    });
    const title = svg('title');
    el.append(title);
    const hit = svg('path', { class: 'hit' });
    const line = svg('path', { class: 'line' });
    const label = svg('g', { class: 'edge-label idle' });
    const rateEl = svg('text', { class: 'edge-rate', y: -5 });
    const countEl = svg('text', { class: 'edge-count', y: 11 });
    label.append(rateEl, countEl);
    el.append(hit, line, label);
    return { el, edge, title, hit, line, label, rateEl, countEl };
  }

  function routeEdge(entry, route, end) {
    if (!route) return;
    const d = route.self ? selfLoop(route.points)
      : route.loose ? looseCurve(route.points)
        : route.reversed ? backPath(route.points) : curve(route.points);
    entry.line.setAttribute('d', d);
    entry.hit.setAttribute('d', d);
    setClass(entry.el, 'back', route.reversed);
    const at = labelPoint(route, end);
    entry.label.setAttribute('transform', `translate(${round(at.x)},${round(at.y)})`);
    // A topic's name sits above its capsule and spills into the gaps beside it: the
    // figures of its edges go under the line.
    const byTopic = ctx.nodeById.get(entry.edge.to)?.kind === 'topic'
      || ctx.nodeById.get(entry.edge.from)?.kind === 'topic';
    entry.rateEl.setAttribute('y', byTopic ? 12 : -5);
    entry.countEl.setAttribute('y', byTopic ? 23 : 11);
  }

  function canvasAspect() {
    const r = canvas.getBoundingClientRect();
    return r.width > 0 && r.height > 0 ? r.width / r.height : 2.2;
  }

  // ---------------------------------------------------------------- live figures
  function update(snap) {
    if (!placed || !snap) return;
    const history = ctx.history;
    const old = rateBase(history);
    for (const entry of edges.values()) {
      const now = entry.counter ? entry.counter(snap) : null;
      if (!now) {
        setText(entry.rateEl, '');
        setText(entry.countEl, '');
        setText(entry.title, `${entry.edge.from} → ${entry.edge.to} (${entry.edge.kind})`);
        continue;
      }
      const then = old && old !== snap ? entry.counter(old) : null;
      const dt = then ? (snap.at_ms - old.at_ms) / 1000 : 0;
      const rate = then && dt > 0 ? Math.max(0, now.count - then.count) / dt : null;
      const prefix = now.exact ? '' : '≤';
      setText(entry.rateEl, rate == null ? '–/s' : `${prefix}${formatRate(rate)}`);
      setText(entry.countEl, `${prefix}${formatCount(now.count)}`);
      const busy = rate != null && rate > 0;
      setClass(entry.el, 'active', busy);
      setClass(entry.label, 'idle', !busy);
      setClass(entry.label, 'busy', busy);
      setText(entry.title, `${entry.edge.from} → ${entry.edge.to} (${entry.edge.kind}): `
        + `${rate == null ? 'rate pending' : formatRate(rate)} now, ${prefix}${formatCount(now.count)} since start`
        + (now.exact ? '' : ' (at most: the figures are shared with other edges)'));
    }
    for (const entry of nodes.values()) updateNode(entry, snap);
  }

  function updateNode(entry, snap) {
    const { node } = entry;
    let inflight = '';
    let busy = false;
    let errors = 0;
    let dead = 0;
    let errorWord = 'error';
    let fullInflight = null;
    if (node.kind === 'subscriber') {
      const s = snap.subscribers?.[node.name];
      if (s && s.in_flight == null && s.queued == null) {
        inflight = 'no buffer here';
        errors = s.errors || 0;
        dead = s.dead_letters || 0;
      } else if (s) {
        busy = s.in_flight > 0 || s.queued > 0;
        if (s.queued > 0) inflight = `▶ ${formatCount(s.in_flight)} · ${formatCount(s.queued)} queued`;
        else inflight = busy ? `▶ ${formatCount(s.in_flight)} in flight` : 'idle';
        fullInflight = `${s.in_flight} in flight, ${s.queued} queued`;
        errors = s.errors || 0;
        dead = s.dead_letters || 0;
      } else inflight = 'not running here';
    } else if (node.kind === 'queue') {
      const q = snap.queues?.[node.name];
      if (q) {
        busy = q.depth > 0 || q.in_flight > 0;
        inflight = q.depth > 0 ? `≡ ${formatCount(q.depth)} waiting` : 'empty';
        if (q.in_flight > 0) inflight += ` · ${formatCount(q.in_flight)} in flight`;
        dead = q.dead_letters || 0;
      }
    } else if (node.kind === 'relay') {
      const r = snap.relays?.[node.name];
      if (r) errors = r.errors || 0;
    } else if (node.kind === 'chain') {
      const c = (snap.chains || []).find((x) => x.chain === node.name);
      if (c) {
        busy = c.in_flight > 0;
        inflight = `▶ ${formatCount(c.in_flight)} in flight`;
        errors = c.timed_out || 0;
        errorWord = 'timed out';
      }
    }
    setText(entry.inflight, inflight ? `${entry.sub.textContent ? ' · ' : ''}${inflight}` : '');
    setClass(entry.inflight, 'busy', busy);
    const errorText = errors
      ? `⚠ ${formatCount(errors)} ${errorWord === 'error' ? (errors === 1 ? 'error' : 'errors') : errorWord}`
      : '';
    setText(entry.errors, errorText);
    setText(entry.dead, dead ? `${errors ? '  ' : ''}☠ ${formatCount(dead)} dead` : '');
    // Alert: errors or dead letters grew within the last minute.
    const seen = alerts.get(node.id);
    const now = snap.at_ms;
    if (!seen) alerts.set(node.id, { errors, dead, at: 0 });
    else if (errors > seen.errors || dead > seen.dead) alerts.set(node.id, { errors, dead, at: now });
    else {
      seen.errors = errors;
      seen.dead = dead;
    }
    const alert = now - (alerts.get(node.id).at || 0) < ALERT_MS;
    setClass(entry.el, 'alert', alert);
    const words = [`${node.kind} ${node.name}`];
    if (fullInflight || inflight) words.push(fullInflight || inflight.replace(/^[▶≡] /, ''));
    if (errors) words.push(errorText.replace('⚠ ', ''));
    if (dead) words.push(`${dead} dead letter${dead === 1 ? '' : 's'}`);
    if (alert) words.push('new failures in the last minute');
    const aria = words.join(', ');
    if (aria !== entry.aria) {
      entry.aria = aria;
      entry.el.setAttribute('aria-label', aria);
    }
  }

  // ---------------------------------------------------------------- zoom and pan
  function apply() {
    viewport.setAttribute('transform', `translate(${round(view.x)},${round(view.y)}) scale(${view.k.toFixed(4)})`);
    zoomLabel.value = `${Math.round(view.k * 100)}%`;
    zoomLabel.textContent = zoomLabel.value;
    setClass(root, 'zoom-far', view.k < 0.45);
    updateMinimap();
  }

  /** The overview in the corner, shown while part of the graph is off screen. */
  function updateMinimap() {
    if (!placed) return;
    const r = root.getBoundingClientRect();
    const pad = 20;
    const x0 = -view.x / view.k;
    const y0 = -view.y / view.k;
    const w = r.width / view.k;
    const h = r.height / view.k;
    const b = placed.bounds;
    const inside = x0 <= b.x && y0 <= b.y && x0 + w >= b.x + b.width && y0 + h >= b.y + b.height + 16;
    const hide = inside || !placed.nodes.size;
    minimap.toggleAttribute('hidden', hide);
    if (hide) return;
    minimap.setAttribute('viewBox', `${b.x - pad} ${b.y - pad} ${b.width + 2 * pad} ${b.height + 2 * pad}`);
    const ratio = (b.height + 2 * pad) / (b.width + 2 * pad);
    minimap.style.height = `${Math.round(Math.max(48, Math.min(150, 220 * ratio)))}px`;
    miniView.setAttribute('x', x0);
    miniView.setAttribute('y', y0);
    miniView.setAttribute('width', w);
    miniView.setAttribute('height', h);
  }

  /** Centres the view on the graph point under a pointer on the minimap. */
  function minimapPan(e) {
    const m = minimap.getScreenCTM();
    if (!m) return;
    const pt = new DOMPoint(e.clientX, e.clientY).matrixTransform(m.inverse());
    const r = root.getBoundingClientRect();
    userMoved = true;
    view.x = r.width / 2 - pt.x * view.k;
    view.y = r.height / 2 - pt.y * view.k;
    apply();
  }
  minimap.addEventListener('pointerdown', (e) => {
    minimap.setPointerCapture(e.pointerId);
    minimapPan(e);
  });
  minimap.addEventListener('pointermove', (e) => {
    if (minimap.hasPointerCapture(e.pointerId)) minimapPan(e);
  });

  function zoomAt(factor, cx, cy) {
    const k = Math.min(MAX_K, Math.max(MIN_K, view.k * factor));
    const f = k / view.k;
    view.x = cx - (cx - view.x) * f;
    view.y = cy - (cy - view.y) * f;
    view.k = k;
    apply();
  }

  function zoomCentre(factor) {
    userMoved = true;
    const r = root.getBoundingClientRect();
    zoomAt(factor, r.width / 2, r.height / 2);
  }

  /**
   * Fits the whole graph on screen. `readable`: not below READABLE_K (the first view of a
   * big graph starts readable at its sources; Fit and the minimap show the rest).
   */
  function fit(readable = false) {
    if (!placed) return;
    const r = root.getBoundingClientRect();
    if (!r.width || !r.height) return;
    const pad = 28;
    const b = placed.bounds;
    const w = Math.max(1, b.width);
    const h = Math.max(1, b.height + 16);
    let k = Math.max(MIN_K, Math.min(1.15, (r.width - 2 * pad) / w, (r.height - 2 * pad) / h));
    if (readable) k = Math.max(k, READABLE_K);
    view.k = k;
    view.x = Math.max(pad, (r.width - w * k) / 2) - b.x * k;
    view.y = Math.max(pad, (r.height - h * k) / 2) - b.y * k;
    apply();
  }

  /** Pans so that a node is on screen (with a margin), when it is not. */
  function reveal(entry) {
    const r = root.getBoundingClientRect();
    const { x, y, width, height } = entry.box;
    const left = view.x + x * view.k;
    const top = view.y + y * view.k;
    const right = left + width * view.k;
    const bottom = top + (height + 16) * view.k;
    const m = 30;
    if (left >= m && top >= m && right <= r.width - m && bottom <= r.height - m) return;
    userMoved = true;
    view.x = r.width / 2 - (x + width / 2) * view.k;
    view.y = r.height / 2 - (y + height / 2) * view.k;
    apply();
  }

  root.addEventListener('wheel', (e) => {
    e.preventDefault();
    userMoved = true;
    const r = root.getBoundingClientRect();
    const lines = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
    const dy = Math.max(-300, Math.min(300, e.deltaY * lines));
    zoomAt(Math.exp(-dy * 0.0016), e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });

  let drag = null;
  let suppressClick = false;
  root.addEventListener('pointerdown', (e) => {
    if (e.button !== 0) return;
    drag = { x: e.clientX, y: e.clientY, vx: view.x, vy: view.y, moved: false, id: e.pointerId };
    suppressClick = false;
  });
  root.addEventListener('pointermove', (e) => {
    if (!drag || e.pointerId !== drag.id) return;
    const dx = e.clientX - drag.x;
    const dy = e.clientY - drag.y;
    if (!drag.moved && Math.hypot(dx, dy) < 4) return;
    if (!drag.moved) {
      drag.moved = true;
      root.setPointerCapture(e.pointerId);
      root.classList.add('panning');
    }
    userMoved = true;
    view.x = drag.vx + dx;
    view.y = drag.vy + dy;
    apply();
  });
  const endDrag = (e) => {
    if (!drag || e.pointerId !== drag.id) return;
    suppressClick = drag.moved;
    drag = null;
    root.classList.remove('panning');
  };
  root.addEventListener('pointerup', endDrag);
  root.addEventListener('pointercancel', endDrag);

  root.addEventListener('click', (e) => {
    const el = e.target.closest('.node');
    if (suppressClick) {
      suppressClick = false;
      return;
    }
    if (el) ctx.navigate(routeHash('component', el.dataset.id));
  });

  section.addEventListener('keydown', (e) => {
    if (e.target.closest('input, textarea, #component-panel')) return;
    const el = e.target.closest('.node');
    if (el && (e.key === 'Enter' || e.key === ' ')) {
      e.preventDefault();
      ctx.navigate(routeHash('component', el.dataset.id));
      return;
    }
    if (el && e.key.startsWith('Arrow')) {
      const next = neighbour(el.dataset.id, e.key);
      if (next) {
        e.preventDefault();
        nodes.get(next).el.focus();
      }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === '+' || e.key === '=') zoomCentre(1.25);
    else if (e.key === '-' || e.key === '_') zoomCentre(0.8);
    else if (e.key === '0') {
      userMoved = false;
      fitAll = true;
      fit();
    } else return;
    e.preventDefault();
  });

  // On the section, not on the SVG group: Chrome puts an SVG element with such listeners
  // in the tab order.
  canvas.addEventListener('focusin', (e) => {
    const el = e.target.closest?.('.node');
    if (el) {
      reveal(nodes.get(el.dataset.id));
      light(el.dataset.id);
    }
  });
  canvas.addEventListener('focusout', () => light(null));
  canvas.addEventListener('pointerover', (e) => {
    const el = e.target.closest?.('.node');
    if (el && !drag) light(el.dataset.id);
  });
  canvas.addEventListener('pointerout', (e) => {
    if (!e.relatedTarget || !e.relatedTarget.closest?.('.node')) {
      const focused = document.activeElement?.closest?.('.node');
      light(focused ? focused.dataset.id : null);
    }
  });

  /** Lights a node, its edges and its neighbours, and dims the rest (null: none). */
  let litId = null;
  function light(id) {
    if (id === litId) return;
    litId = id;
    for (const entry of nodes.values()) setClass(entry.el, 'lit', false);
    for (const entry of edges.values()) setClass(entry.el, 'lit', false);
    setClass(root, 'graph-dim', !!id);
    if (!id) return;
    nodes.get(id) && setClass(nodes.get(id).el, 'lit', true);
    for (const entry of edges.values()) {
      const { from, to } = entry.edge;
      if (from === id || to === id) {
        setClass(entry.el, 'lit', true);
        setClass(nodes.get(from === id ? to : from)?.el ?? entry.el, 'lit', true);
      }
    }
  }

  /** The node an arrow key leads to: along the edges (left/right) or within the column. */
  function neighbour(id, key) {
    const here = nodes.get(id).box;
    const centre = (b) => b.y + b.height / 2;
    if (key === 'ArrowRight' || key === 'ArrowLeft') {
      const forward = key === 'ArrowRight';
      const ids = [...edges.values()]
        .map((e) => e.edge)
        .filter((e) => (forward ? e.from === id : e.to === id))
        .map((e) => (forward ? e.to : e.from))
        .filter((other) => nodes.has(other));
      ids.sort((a, b) => Math.abs(centre(nodes.get(a).box) - centre(here)) - Math.abs(centre(nodes.get(b).box) - centre(here)));
      return ids[0];
    }
    const down = key === 'ArrowDown';
    let best = null;
    let bestD = Infinity;
    for (const [other, entry] of nodes) {
      if (other === id || entry.box.layer !== here.layer) continue;
      const d = centre(entry.box) - centre(here);
      if ((down ? d > 0 : d < 0) && Math.abs(d) < bestD) {
        bestD = Math.abs(d);
        best = other;
      }
    }
    return best;
  }

  document.getElementById('graph-zoom-in').addEventListener('click', () => zoomCentre(1.25));
  zoomOut.addEventListener('click', () => zoomCentre(0.8));
  document.getElementById('graph-fit').addEventListener('click', () => {
    userMoved = false;
    fitAll = true;
    fit();
  });
  new ResizeObserver(() => {
    if (visible && !userMoved) fit(!fitAll);
    else updateMinimap();
  }).observe(canvas);

  // ---------------------------------------------------------------- find
  function applyFind() {
    const q = find.value.trim().toLowerCase();
    let first = null;
    for (const entry of nodes.values()) {
      const hit = !!q && (entry.node.name.toLowerCase().includes(q) || entry.node.id.toLowerCase().includes(q));
      setClass(entry.el, 'match', hit);
      if (hit && !first) first = entry;
    }
    return first;
  }
  find.addEventListener('input', applyFind);
  find.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter') return;
    e.preventDefault();
    const first = applyFind();
    if (first) first.el.focus();
  });

  function markSelected() {
    for (const [id, entry] of nodes) setClass(entry.el, 'selected', id === selected);
  }

  return {
    el: section,
    show(nodeId) {
      visible = true;
      selected = nodeId || null;
      markSelected();
      if (ctx.model) rebuild(ctx.model);
      if (ctx.snap) update(ctx.snap);
      requestAnimationFrame(() => {
        if (!userMoved) fit(!fitAll);
        else if (selected && nodes.has(selected)) reveal(nodes.get(selected));
      });
    },
    hide() {
      visible = false;
    },
    onModel(model) {
      if (visible) {
        rebuild(model);
        if (ctx.snap) update(ctx.snap);
      }
    },
    onSnapshot(snap) {
      if (visible) update(snap);
    },
    /** Puts focus back on a node (when its panel closes). */
    focusNode(id) {
      const entry = nodes.get(id);
      if (entry) entry.el.focus({ preventScroll: true });
    },
  };
}

/**
 * Moves a new layout so that the nodes it shares with the previous one stay where they
 * were (by the median of their moves), and records its bounds.
 */
function alignWith(placed, previous) {
  const dx = [];
  const dy = [];
  for (const [id, p] of placed.nodes) {
    const before = previous.get(id);
    if (before) {
      dx.push(before.x - p.x);
      dy.push(before.y - (p.y + p.height / 2));
    }
  }
  const median = (list) => {
    if (!list.length) return 0;
    const sorted = list.slice().sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)];
  };
  const mx = median(dx);
  const my = median(dy);
  let x0 = Infinity;
  let y0 = Infinity;
  let x1 = -Infinity;
  let y1 = -Infinity;
  for (const p of placed.nodes.values()) {
    p.x += mx;
    p.y += my;
    x0 = Math.min(x0, p.x);
    y0 = Math.min(y0, p.y);
    x1 = Math.max(x1, p.x + p.width);
    y1 = Math.max(y1, p.y + p.height);
  }
  for (const route of placed.edges.values()) {
    for (const pt of route.points) {
      pt.x += mx;
      pt.y += my;
    }
  }
  placed.bounds = Number.isFinite(x0)
    ? { x: x0, y: y0, width: x1 - x0, height: y1 - y0 }
    : { x: 0, y: 0, width: 0, height: 0 };
}

// ------------------------------------------------------------------ figures per edge

/** The snapshot a rate is measured against: the oldest kept within about 5 s. */
function rateBase(history) {
  if (history.length < 2) return null;
  const last = history[history.length - 1];
  for (const snap of history) {
    if (last.at_ms - snap.at_ms <= 5500) return snap;
  }
  return history[history.length - 2];
}

/**
 * How many events an edge carried, from a snapshot: `{count, exact}` or null when no
 * counter says (store reads and writes). Where a counter is shared (a subscriber that reads
 * several topics, or emits to several), the edge gets an upper bound and says so (`exact`).
 */
function edgeCounter(edge, model) {
  const byId = new Map(model.nodes.map((n) => [n.id, n]));
  const from = byId.get(edge.from);
  const to = byId.get(edge.to);
  if (!from || !to) return null;
  const inputs = (id, kinds) => model.edges.filter((e) => e.to === id && kinds.includes(e.kind));
  const outputs = (id, kinds) => model.edges.filter((e) => e.from === id && kinds.includes(e.kind));
  const topicIn = (s, name) => s.topics?.[name]?.in;
  const sub = (s, name) => s.subscribers?.[name];
  const exact = (count) => (count == null ? null : { count, exact: true });
  const bound = (...counts) => {
    const known = counts.filter((c) => c != null);
    return known.length ? { count: Math.min(...known), exact: false } : null;
  };
  switch (edge.kind) {
    case 'publishes': {
      const others = inputs(to.id, ['publishes', 'emits']).filter((e) => e !== edge && !(e.from === edge.from && e.kind === edge.kind));
      if (!others.length) return (s) => exact(topicIn(s, to.name));
      // What the emitters are known to have put in is not this producer's.
      const emitters = others.filter((e) => e.kind === 'emits' && byId.get(e.from)?.kind === 'subscriber'
        && outputs(e.from, ['emits']).length === 1);
      if (emitters.length === others.length) {
        return (s) => {
          const total = topicIn(s, to.name);
          if (total == null) return null;
          const known = emitters.reduce((sum, e) => sum + (sub(s, byId.get(e.from).name)?.out || 0), 0);
          return { count: Math.max(0, total - known), exact: true };
        };
      }
      return (s) => bound(topicIn(s, to.name));
    }
    case 'subscribes':
    case 'feeds': {
      const single = inputs(to.id, ['subscribes', 'feeds']).length === 1;
      if (to.kind !== 'subscriber') return (s) => bound(topicIn(s, from.name));
      if (single) return (s) => exact(sub(s, to.name)?.in);
      return (s) => bound(sub(s, to.name)?.in, from.kind === 'topic' ? topicIn(s, from.name) : null);
    }
    case 'emits': {
      if (from.kind === 'chain') {
        return (s) => exact((s.chains || []).find((c) => c.chain === from.name)?.timed_out);
      }
      if (from.kind === 'subscriber') {
        if (outputs(from.id, ['emits', 'enqueues']).length === 1) return (s) => exact(sub(s, from.name)?.out);
        return (s) => bound(sub(s, from.name)?.out, topicIn(s, to.name));
      }
      return (s) => bound(topicIn(s, to.name));
    }
    case 'relays':
      return (s) => {
        const r = s.relays?.[to.name];
        return r ? exact((r.relayed || 0) + (r.filtered || 0) + (r.dropped || 0) + (r.errors || 0)) : null;
      };
    case 'enqueues':
      if (from.kind === 'relay') return (s) => exact(s.relays?.[from.name]?.relayed);
      if (from.kind === 'subscriber') return (s) => bound(sub(s, from.name)?.out);
      return null;
    case 'step':
      return (s) => exact(topicIn(s, from.name));
    default:
      return null;
  }
}

// ------------------------------------------------------------------ geometry

function edgeKey(e) {
  return `${e.from}\u2192${e.to}\u2192${e.kind}`;
}

const round = (v) => Math.round(v * 10) / 10;

/** Horizontal-tangent cubic curves through the points (a wire, as flow editors draw). */
function curve(points) {
  let d = `M${round(points[0].x)},${round(points[0].y)}`;
  for (let i = 1; i < points.length; i++) {
    const p = points[i - 1];
    const q = points[i];
    const dx = Math.max(24, (q.x - p.x) / 2);
    d += ` C${round(p.x + dx)},${round(p.y)} ${round(q.x - dx)},${round(q.y)} ${round(q.x)},${round(q.y)}`;
  }
  return d;
}

/** An edge against the flow (it closes a cycle): out of the source's bottom, looping under. */
function backPath(points) {
  const a = points[0];
  const b = points[points.length - 1];
  const drop = 48;
  if (points.length === 2) {
    return `M${round(a.x)},${round(a.y)} C${round(a.x)},${round(a.y + drop + 20)} ${round(b.x)},${round(b.y + drop + 20)} ${round(b.x)},${round(b.y + 2)}`;
  }
  let d = `M${round(a.x)},${round(a.y)}`;
  const mid = points.slice(1, -1);
  d += ` C${round(a.x)},${round(a.y + drop)} ${round(mid[0].x + 40)},${round(mid[0].y)} ${round(mid[0].x)},${round(mid[0].y)}`;
  for (let i = 1; i < mid.length; i++) {
    const p = mid[i - 1];
    const q = mid[i];
    const dx = (p.x - q.x) / 2;
    d += ` C${round(p.x - dx)},${round(p.y)} ${round(q.x + dx)},${round(q.y)} ${round(q.x)},${round(q.y)}`;
  }
  const last = mid[mid.length - 1];
  d += ` C${round(last.x - 40)},${round(last.y)} ${round(b.x)},${round(b.y + drop)} ${round(b.x)},${round(b.y + 2)}`;
  return d;
}

/** A loose edge: a curve leaving and entering along the sides its points are on. */
function looseCurve([a, b]) {
  const horizontal = Math.abs(b.x - a.x) > Math.abs(b.y - a.y);
  if (horizontal) {
    const dx = (b.x - a.x) / 2;
    return `M${round(a.x)},${round(a.y)} C${round(a.x + dx)},${round(a.y)} ${round(b.x - dx)},${round(b.y)} ${round(b.x)},${round(b.y)}`;
  }
  const dy = (b.y - a.y) / 2;
  return `M${round(a.x)},${round(a.y)} C${round(a.x)},${round(a.y + dy)} ${round(b.x)},${round(b.y - dy)} ${round(b.x)},${round(b.y)}`;
}

function selfLoop(points) {
  const [a, b] = points;
  return `M${round(a.x)},${round(a.y)} C${round(a.x + 40)},${round(a.y - 60)} ${round(b.x - 40)},${round(b.y - 60)} ${round(b.x)},${round(b.y)}`;
}

/** Where an edge's figures go: mid-route, or near its start or end (`end`). */
function labelPoint(route, end = 'mid') {
  const pts = route.points;
  if (route.self) return { x: (pts[0].x + pts[1].x) / 2, y: pts[0].y - 48 };
  if (route.reversed && pts.length === 2) {
    return { x: (pts[0].x + pts[1].x) / 2, y: Math.max(pts[0].y, pts[1].y) + 40 };
  }
  if (pts.length > 2) {
    // With dummies: on the dummy nearest the middle (the curve passes through it).
    return pts[Math.floor(pts.length / 2)];
  }
  const [a, b] = pts;
  if (route.loose || route.reversed || end === 'mid' || b.x - a.x < 90) {
    return { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
  }
  // On the curve drawn by `curve`, at 30 px from the chosen end.
  const dx = Math.max(24, (b.x - a.x) / 2);
  const p = [a, { x: a.x + dx, y: a.y }, { x: b.x - dx, y: b.y }, b];
  const at = (t, k) => {
    const u = 1 - t;
    return u * u * u * p[0][k] + 3 * u * u * t * p[1][k] + 3 * u * t * t * p[2][k] + t * t * t * p[3][k];
  };
  const x = end === 'start' ? a.x + 30 : b.x - 30;
  let lo = 0;
  let hi = 1;
  for (let i = 0; i < 24; i++) {
    const mid = (lo + hi) / 2;
    if (at(mid, 'x') < x) lo = mid;
    else hi = mid;
  }
  return { x, y: at(lo, 'y') };
}

/** The box of a node, by kind: its outline tells the kind even without colour. */
function shapePath(kind, w, h) {
  const r = 7;
  const rounded = (rad) => `M${rad},0 H${w - rad} A${rad},${rad} 0 0 1 ${w},${rad} V${h - rad} A${rad},${rad} 0 0 1 ${w - rad},${h} H${rad} A${rad},${rad} 0 0 1 0,${h - rad} V${rad} A${rad},${rad} 0 0 1 ${rad},0 Z`;
  switch (kind) {
    case 'producer': // an arrow pointing into the flow
      return `M${r},0 H${w - 14} L${w},${h / 2} L${w - 14},${h} H${r} A${r},${r} 0 0 1 0,${h - r} V${r} A${r},${r} 0 0 1 ${r},0 Z`;
    case 'topic': // a pill
      return rounded(h / 2);
    case 'relay': // a parallelogram
      return `M10,0 H${w} L${w - 10},${h} H0 Z`;
    case 'queue':
      return rounded(3);
    case 'store': { // a cylinder lying on its side
      const e = 8;
      return `M${e},0 H${w - e} A${e},${h / 2} 0 0 1 ${w - e},${h} H${e} A${e},${h / 2} 0 0 1 ${e},0 Z`;
    }
    case 'chain':
      return rounded(4);
    default:
      return rounded(r);
  }
}

function decoPath(kind, w, h) {
  switch (kind) {
    case 'queue': // slots at the right end, where items leave
      return `M${w - 8},0 V${h} M${w - 16},0 V${h}`;
    case 'store': {
      const e = 8;
      return `M${w - e},0 A${e},${h / 2} 0 0 0 ${w - e},${h}`;
    }
    case 'chain': // links: a double border
      return `M4,4 H${w - 4} V${h - 4} H4 Z`;
    default:
      return null;
  }
}

/** The small print of a node that has no live figures of its own. */
function subText(node, model) {
  const s = node.settings || {};
  switch (node.kind) {
    case 'producer':
      return [s.kind, s.listen].filter(Boolean).join(' · ') || 'producer';
    case 'topic': {
      const readers = model ? model.edges.filter((e) => e.from === node.id && e.kind === 'subscribes').length : 0;
      const kind = s.kind && s.kind !== 'event' ? `${s.kind} topic` : 'topic';
      return readers ? `${kind} · ${readers} reader${readers === 1 ? '' : 's'}` : kind;
    }
    case 'relay':
      return s.to ? `relay → ${s.to}` : 'relay';
    case 'store':
      return s.expose ? 'store · exposed' : 'store';
    case 'chain':
      return Array.isArray(s.steps) ? `${s.steps.length} steps` : 'chain';
    default:
      return '';
  }
}
