// The journey view (`#/journey/{correlation}`): `GET /trace/{correlation}` drawn as a tree
// by causation (who caused what), each step with its time, the time since its cause and a
// bar on a shared timeline; and the model's chains that this journey started, each step
// done, overdue or pending (in words as well as colours).

import { ApiError, el, formatAgo, formatClock, formatMs, getJSON, parseTime, routeHash, setText } from './api.js';

const REFRESH_MS = 2000;
const REFRESH_FOR_MS = 120000;

export function createJourneyView(ctx) {
  const section = document.getElementById('view-journey');
  const form = document.getElementById('journey-form');
  const input = document.getElementById('journey-id');
  const status = document.getElementById('journey-status');
  const tree = document.getElementById('journey-tree');
  const chains = document.getElementById('journey-chains');
  const scale = document.getElementById('journey-scale');
  const refresh = document.getElementById('journey-refresh');

  let correlation = null;
  let entries = null;
  let timer = 0;
  let loadedAt = 0;
  let request = 0;

  /** The component that emitted a step (the history names it bare), linked to its panel. */
  function emitter(name) {
    const id = ctx.nodeById.has(name) ? name
      : ['subscribers', 'producers', 'relays', 'chains'].map((k) => `${k}.${name}`).find((i) => ctx.nodeById.has(i));
    return id ? el('a', { href: routeHash('component', id) }, name.slice(name.indexOf('.') + 1)) : name;
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const id = input.value.trim();
    if (id) ctx.navigate(routeHash('journey', id));
  });
  refresh.addEventListener('click', () => load(true));

  async function load(manual = false) {
    clearTimeout(timer);
    if (!correlation) return;
    const mine = ++request;
    if (manual || !entries) setText(status, `Loading journey ${correlation}…`);
    try {
      const list = await getJSON(`/trace/${encodeURIComponent(correlation)}`);
      if (mine !== request) return;
      entries = Array.isArray(list) ? list : [];
      render();
    } catch (e) {
      if (mine !== request) return;
      entries = null;
      tree.replaceChildren();
      chains.replaceChildren();
      scale.replaceChildren();
      status.classList.add('bad');
      setText(status, e instanceof ApiError && e.status === 404
        ? `✖ No journey recorded for ${correlation}. The history keeps recent journeys only.`
        : `✖ Could not load the journey: ${e.message}`);
    }
  }

  function render() {
    status.classList.remove('bad');
    const steps = entries
      .map((e) => ({ ...e, t: parseTime(e.time) }))
      .sort((a, b) => a.t - b.t);
    const byId = new Map(steps.map((s) => [s.id, s]));
    const children = new Map();
    const roots = [];
    for (const s of steps) {
      const cause = s.causation_id && byId.get(s.causation_id);
      if (cause && cause !== s) {
        if (!children.has(cause.id)) children.set(cause.id, []);
        children.get(cause.id).push(s);
      } else roots.push(s);
    }
    const t0 = steps.length ? steps[0].t : 0;
    const t1 = steps.length ? steps[steps.length - 1].t : 0;
    const span = Math.max(t1 - t0, 0.001);
    const pct = (t) => `${(((t - t0) / span) * 100).toFixed(2)}%`;

    const visited = new Set();
    const item = (s, depth) => {
      visited.add(s.id);
      const cause = s.causation_id && byId.get(s.causation_id);
      const elapsed = cause ? s.t - cause.t : null;
      const track = el('div', { class: 'track', 'aria-hidden': 'true' });
      if (cause) {
        track.append(el('span', { class: 'span', style: `left:${pct(cause.t)};width:${(((s.t - cause.t) / span) * 100).toFixed(2)}%` }));
      }
      track.append(el('span', { class: `tick${cause ? '' : ' root'}`, style: `left:calc(${pct(s.t)} - 1px)` }));
      const who = el('div', { class: 'who', style: `--depth:${depth};--arrow:${depth ? 'visible' : 'hidden'}` },
        el('a', { class: 'topic', href: ctx.nodeById.has(`topics.${s.topic}`) ? routeHash('component', `topics.${s.topic}`) : null }, s.topic),
        el('span', { class: 'by', title: `emitted by ${s.emitted_by}${s.generation != null ? `, generation ${s.generation}` : ''}` },
          'by ', emitter(s.emitted_by)));
      const times = el('div', { class: 'times' },
        el('span', { class: 'step-elapsed', title: 'time since its cause' }, elapsed == null ? 'start' : `+${formatMs(elapsed)}`),
        el('span', { class: 'step-time', title: s.time }, formatClock(s.t)));
      const li = el('li', { class: 'journey-step', dataset: { id: s.id, topic: s.topic } },
        el('div', { class: 'row' }, who, times, track));
      const kids = (children.get(s.id) || []).filter((k) => !visited.has(k.id));
      if (kids.length) li.append(el('ul', {}, kids.map((k) => item(k, depth + 1))));
      return li;
    };
    const ul = el('ul', {}, roots.map((r) => item(r, 0)));
    tree.replaceChildren(ul);
    scale.replaceChildren(el('span', {}, '0'), el('span', {}, `+${formatMs(span / 2)}`), el('span', {}, `+${formatMs(t1 - t0)}`));

    const pending = renderChains(steps);
    const topics = new Set(steps.map((s) => s.topic)).size;
    setText(status, `${steps.length} event${steps.length === 1 ? '' : 's'} on ${topics} topic${topics === 1 ? '' : 's'}`
      + `, over ${formatMs(t1 - t0)}`
      + (steps.length ? `, started ${formatAgo(new Date(t0))}` : '')
      + (pending ? ' · refreshing while chain steps are pending' : ''));
    loadedAt = loadedAt || Date.now();
    if (pending && !section.hidden && Date.now() - loadedAt < REFRESH_FOR_MS) {
      timer = setTimeout(() => load(), REFRESH_MS);
    }
  }

  /** Renders the chains this journey started; true when a step is still pending. */
  function renderChains(steps) {
    const now = Date.now();
    let anyPending = false;
    const blocks = [];
    for (const chain of ctx.model?.chains || []) {
      const first = chain.steps[0] && steps.find((s) => s.topic === chain.steps[0].topic);
      if (!first) continue;
      const start = first.t;
      // A step's own deadline, else the chain's (every step is due before the chain's end).
      const deadline = (step) => step.timeout_ms ?? chain.timeout_ms ?? null;
      const items = chain.steps.map((step, i) => {
        const seen = i === 0 ? first : steps.find((s) => s.topic === step.topic && s.t >= start);
        let state;
        let when;
        if (seen) {
          state = 'done';
          when = i === 0 ? formatClock(seen.t) : `+${formatMs(seen.t - start)}`;
        } else if (deadline(step) != null && now - start > deadline(step)) {
          state = 'overdue';
          when = `due by +${formatMs(deadline(step))}, ${formatMs(now - start - deadline(step))} late`;
        } else {
          state = 'pending';
          anyPending = true;
          when = deadline(step) != null ? `due by +${formatMs(deadline(step))}` : 'waiting';
        }
        const icon = { done: '✓', overdue: '✖', pending: '…' }[state];
        return el('li', { class: `chain-step ${state}`, dataset: { topic: step.topic } },
          el('span', { class: 'state' }, `${icon} ${state}`),
          el('span', { class: 'topic' }, step.topic),
          el('span', { class: 'when' }, when));
      });
      blocks.push(el('div', { class: 'chain' },
        el('h3', {}, ctx.nodeById.has(`chains.${chain.name}`)
          ? el('a', { href: routeHash('component', `chains.${chain.name}`) }, chain.name) : chain.name),
        el('ol', {}, items)));
    }
    if (!blocks.length) blocks.push(el('p', { class: 'hint' }, 'No chain starts with a topic of this journey.'));
    chains.replaceChildren(...blocks);
    return anyPending;
  }

  return {
    el: section,
    show(param) {
      if (param !== correlation) {
        correlation = param;
        entries = null;
        loadedAt = 0;
        tree.replaceChildren();
        chains.replaceChildren();
        scale.replaceChildren();
      }
      input.value = correlation || '';
      if (!correlation) {
        status.classList.remove('bad');
        setText(status, 'Give a correlation id, or open a journey from the tail, a dead letter or a recent error.');
        input.focus();
        return;
      }
      loadedAt = 0;
      load(true);
    },
    hide() {
      clearTimeout(timer);
    },
    onModel() {
      if (!section.hidden && entries) render();
    },
  };
}
