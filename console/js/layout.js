// A layered (Sugiyama-style) layout for the flow graph, left to right: cycles broken by
// reversing DFS back edges, longest-path layering from the sources, dummy nodes on edges
// that span layers, barycenter sweeps with adjacent swaps to reduce crossings, then a
// vertical placement that pulls each node towards its neighbours while keeping the order.
// Each weakly connected part is laid out on its own; the parts are packed on shelves.
//
// Pure: no DOM. `layout(graph, options)` takes sizes and returns positions and edge routes.

/**
 * @param {{nodes: {id: string, width: number, height: number, anchor?: number}[],
 *          edges: {id: string, from: string, to: string, loose?: boolean, hint?: boolean}[]}} graph
 *   A loose edge (a chain watching a topic, a handler reading a store) does not order
 *   the layers: it is drawn from wherever its ends land. A node with only loose edges
 *   floats in a band under its part, below the middle of its neighbours. A loose edge with
 *   `hint` pulls its target towards the layers of its sources (a chain amid its steps).
 * @param {{layerGap?: number, nodeGap?: number, partGap?: number, aspect?: number,
 *          previous?: Map<string, {x: number, y: number}>}} options
 *   `previous`: where nodes were before; kept nodes keep their relative order when that
 *   costs no extra crossing, so a re-layout moves as little as it can.
 * @returns {{nodes: Map<string, {x, y, width, height, layer}>,
 *            edges: Map<string, {points: {x, y}[], reversed: boolean, self: boolean}>,
 *            width: number, height: number}}
 *   Node x/y are the top-left corner; `anchor` (default: half the height) is how far below
 *   the top edges attach. An edge's points run from its source's right side
 *   through the dummy points to its target's left side (a reversed edge runs from its source
 *   to its target too, backwards: its caller draws it as a loop). A loose edge has two
 *   points, on the sides of its ends that face each other, and `loose: true`.
 */
export function layout(graph, options = {}) {
  const opts = { layerGap: 110, nodeGap: 22, partGap: 48, dummyHeight: 10, ...options };
  const byId = new Map();
  graph.nodes.forEach((n, index) => byId.set(n.id, { ...n, index }));
  const edges = graph.edges.filter((e) => byId.has(e.from) && byId.has(e.to));

  const parts = connectedParts(graph.nodes.map((n) => n.id), edges);
  const placedParts = parts.map((part) => {
    const partEdges = edges.filter((e) => part.has(e.from));
    return layoutPart([...part].map((id) => byId.get(id)), partEdges, opts);
  });
  // Parts go on shelves, biggest first, as wide as the widest part or as the screen's
  // shape asks (`aspect`: width / height), whichever is wider.
  const gap = opts.partGap;
  const area = placedParts.reduce((s, p) => s + (p.width + gap) * (p.height + gap), 0);
  const widest = Math.max(0, ...placedParts.map((p) => p.width));
  const shelf = Math.max(widest, Math.sqrt(area * (opts.aspect || 1.6)));
  const result = { nodes: new Map(), edges: new Map(), width: 0, height: 0 };
  let x = 0;
  let y = 0;
  let rowHeight = 0;
  for (const placed of placedParts) {
    if (x > 0 && x + placed.width > shelf) {
      x = 0;
      y += rowHeight + gap;
      rowHeight = 0;
    }
    for (const [id, p] of placed.nodes) result.nodes.set(id, { ...p, x: p.x + x, y: p.y + y });
    for (const [id, route] of placed.edges) {
      route.points = route.points.map((pt) => ({ x: pt.x + x, y: pt.y + y }));
      result.edges.set(id, route);
    }
    result.width = Math.max(result.width, x + placed.width);
    rowHeight = Math.max(rowHeight, placed.height);
    result.height = Math.max(result.height, y + placed.height);
    x += placed.width + gap * 1.5;
  }
  return result;
}

/** Weakly connected parts, biggest first; ties in the order their first node came. */
function connectedParts(ids, edges) {
  const parent = new Map(ids.map((id) => [id, id]));
  const find = (x) => {
    while (parent.get(x) !== x) {
      parent.set(x, parent.get(parent.get(x)));
      x = parent.get(x);
    }
    return x;
  };
  for (const e of edges) parent.set(find(e.from), find(e.to));
  const groups = new Map();
  ids.forEach((id, index) => {
    const root = find(id);
    if (!groups.has(root)) groups.set(root, { first: index, members: new Set() });
    groups.get(root).members.add(id);
  });
  return [...groups.values()]
    .sort((a, b) => b.members.size - a.members.size || a.first - b.first)
    .map((g) => g.members);
}

function layoutPart(allNodes, allEdges, opts) {
  const firm = allEdges.filter((e) => !e.loose);
  const anchored = new Set();
  for (const e of firm) {
    anchored.add(e.from);
    anchored.add(e.to);
  }
  // With no firm edge at all, every node is laid out as usual (one layer).
  const floating = anchored.size ? allNodes.filter((n) => !anchored.has(n.id)) : [];
  const floatingIds = new Set(floating.map((n) => n.id));
  const nodes = allNodes.filter((n) => !floatingIds.has(n.id));
  const edges = anchored.size ? firm : [];
  // Where loose edges come from decides nothing, but it hints: a chain is best placed
  // amid the steps it watches.
  const hints = new Map();
  if (anchored.size) {
    for (const e of allEdges) {
      if (!e.loose || !e.hint || floatingIds.has(e.to) || floatingIds.has(e.from)) continue;
      if (!hints.has(e.to)) hints.set(e.to, []);
      hints.get(e.to).push(e.from);
    }
  }
  const placed = layoutLayers(nodes, edges, opts, hints);
  placeFloating(floating, allEdges, placed, opts);
  for (const e of allEdges) {
    if (!placed.edges.has(e.id)) placed.edges.set(e.id, looseRoute(placed.nodes.get(e.from), placed.nodes.get(e.to)));
  }
  return placed;
}

/** Puts nodes with only loose edges in a band under the part, each under its neighbours. */
function placeFloating(floating, edges, placed, opts) {
  if (!floating.length) return;
  const top = placed.height + opts.partGap * 0.75;
  const wanted = floating.map((n) => {
    const xs = [];
    for (const e of edges) {
      const other = e.from === n.id ? e.to : e.to === n.id ? e.from : null;
      const p = other && placed.nodes.get(other);
      if (p) xs.push(p.x + p.width / 2);
    }
    const centre = xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : placed.width / 2;
    return { n, x: centre - n.width / 2 };
  }).sort((a, b) => a.x - b.x || a.n.index - b.n.index);
  let right = -Infinity;
  let height = 0;
  for (const w of wanted) {
    const x = Math.max(w.x, right + opts.nodeGap * 2, 0);
    placed.nodes.set(w.n.id, { x, y: top, width: w.n.width, height: w.n.height, anchor: w.n.anchor, layer: -1 });
    right = x + w.n.width;
    height = Math.max(height, w.n.height);
  }
  placed.width = Math.max(placed.width, right);
  placed.height = top + height;
}

/** A loose edge: from the side of its source that faces its target, to the facing side. */
function looseRoute(a, b) {
  const ac = { x: a.x + a.width / 2, y: a.y + anchorOf(a) };
  const bc = { x: b.x + b.width / 2, y: b.y + anchorOf(b) };
  let from;
  let to;
  if (b.x >= a.x + a.width + 20) {
    from = { x: a.x + a.width, y: ac.y };
    to = { x: b.x, y: bc.y };
  } else if (a.x >= b.x + b.width + 20 && Math.abs(bc.y - ac.y) < a.height) {
    from = { x: a.x, y: ac.y };
    to = { x: b.x + b.width, y: bc.y };
  } else if (bc.y > ac.y) {
    from = { x: ac.x, y: a.y + a.height };
    to = { x: bc.x, y: b.y };
  } else {
    from = { x: ac.x, y: a.y };
    to = { x: bc.x, y: b.y + b.height };
  }
  return { points: [from, to], reversed: false, self: false, loose: true };
}

function layoutLayers(nodes, edges, opts, hints = new Map()) {
  const ids = nodes.map((n) => n.id);
  const info = new Map(nodes.map((n) => [n.id, n]));

  // 1. Break cycles: DFS from the sources (then from whatever is left), in input order;
  //    an edge to a node still on the stack closes a cycle and is reversed for layering.
  const out = new Map(ids.map((id) => [id, []]));
  const indeg = new Map(ids.map((id) => [id, 0]));
  for (const e of edges) {
    if (e.from === e.to) continue;
    out.get(e.from).push(e);
    indeg.set(e.to, indeg.get(e.to) + 1);
  }
  const reversed = new Set();
  const state = new Map(); // 1 on stack, 2 done
  const starts = [...ids.filter((id) => indeg.get(id) === 0), ...ids];
  for (const start of starts) {
    if (state.has(start)) continue;
    const stack = [[start, 0]];
    state.set(start, 1);
    while (stack.length) {
      const frame = stack[stack.length - 1];
      const [id, i] = frame;
      const list = out.get(id);
      if (i >= list.length) {
        state.set(id, 2);
        stack.pop();
        continue;
      }
      frame[1] = i + 1;
      const e = list[i];
      const s = state.get(e.to);
      if (s === 1) reversed.add(e.id);
      else if (!s) {
        state.set(e.to, 1);
        stack.push([e.to, 0]);
      }
    }
  }
  // The acyclic edges used for layering: (u → v) with u before v.
  const dag = [];
  for (const e of edges) {
    if (e.from === e.to) continue;
    if (reversed.has(e.id)) dag.push({ id: e.id, u: e.to, v: e.from });
    else dag.push({ id: e.id, u: e.from, v: e.to });
  }

  // 2. Longest-path layering from the sources.
  const succ = new Map(ids.map((id) => [id, []]));
  const pred = new Map(ids.map((id) => [id, []]));
  for (const e of dag) {
    succ.get(e.u).push(e.v);
    pred.get(e.v).push(e.u);
  }
  const order = topologicalOrder(ids, succ, pred);
  const layer = new Map();
  for (const id of order) {
    let l = 0;
    for (const p of pred.get(id)) l = Math.max(l, layer.get(p) + 1);
    layer.set(id, l);
  }
  // Every node with successors moves right up to the layer before its nearest one: a
  // source, or a branch that only joins the flow late, sits by what it feeds.
  for (let i = order.length - 1; i >= 0; i--) {
    const id = order[i];
    if (!succ.get(id).length) continue;
    let l = Infinity;
    for (const s of succ.get(id)) l = Math.min(l, layer.get(s) - 1);
    if (l > layer.get(id)) layer.set(id, l);
  }

  // A node with hints (loose inputs) moves right towards the mean layer of those inputs,
  // as far as it can without making the drawing deeper; what follows it moves along.
  if (hints.size) {
    const maxLayer = Math.max(0, ...layer.values());
    const tail = new Map(); // longest path from a node to a sink
    for (let i = order.length - 1; i >= 0; i--) {
      const id = order[i];
      let h = 0;
      for (const s of succ.get(id)) h = Math.max(h, tail.get(s) + 1);
      tail.set(id, h);
    }
    for (const id of order) {
      const from = (hints.get(id) || []).filter((h) => layer.has(h));
      if (!from.length) continue;
      const mean = from.reduce((sum, h) => sum + layer.get(h), 0) / from.length;
      const target = Math.min(Math.round(mean) + 1, maxLayer - tail.get(id));
      if (target <= layer.get(id)) continue;
      layer.set(id, target);
      const queue = [id];
      while (queue.length) {
        const u = queue.shift();
        for (const s of succ.get(u)) {
          if (layer.get(s) <= layer.get(u)) {
            layer.set(s, layer.get(u) + 1);
            queue.push(s);
          }
        }
      }
    }
  }

  // 3. Dummy nodes on edges longer than one layer; `chains` maps an edge to its node list.
  const layerCount = Math.max(0, ...layer.values()) + 1;
  const layers = Array.from({ length: layerCount }, () => []);
  // Each node's extent above and below the line its edges attach at (its anchor).
  const above = new Map();
  const below = new Map();
  for (const id of order) {
    layers[layer.get(id)].push(id);
    const n = info.get(id);
    above.set(id, anchorOf(n));
    below.set(id, n.height - anchorOf(n));
  }
  const down = new Map(); // id → neighbours in the next layer
  const up = new Map(); // id → neighbours in the previous layer
  const link = (a, b) => {
    if (!down.has(a)) down.set(a, []);
    if (!up.has(b)) up.set(b, []);
    down.get(a).push(b);
    up.get(b).push(a);
  };
  const chains = new Map();
  for (const e of dag) {
    const lu = layer.get(e.u);
    const lv = layer.get(e.v);
    const chain = [e.u];
    let prev = e.u;
    for (let l = lu + 1; l < lv; l++) {
      const dummy = `\u0000${e.id}\u0000${l}`;
      layer.set(dummy, l);
      layers[l].push(dummy);
      above.set(dummy, opts.dummyHeight / 2);
      below.set(dummy, opts.dummyHeight / 2);
      link(prev, dummy);
      chain.push(dummy);
      prev = dummy;
    }
    link(prev, e.v);
    chain.push(e.v);
    chains.set(e.id, chain);
  }

  // 4. Order within layers: start from the previous positions when there are some (a
  //    re-layout keeps what it can), else from the DFS order; then barycenter sweeps and
  //    adjacent swaps, keeping the best ordering found (the first one on ties).
  const previous = opts.previous;
  if (previous && previous.size) {
    const guess = new Map();
    for (const list of layers) {
      for (const id of list) {
        const p = previous.get(id);
        if (p) {
          guess.set(id, p.y);
          continue;
        }
        // New nodes and dummies go next to their neighbours that have a place.
        const near = [...(up.get(id) || []), ...(down.get(id) || [])]
          .map((n) => guess.get(n) ?? previous.get(n)?.y)
          .filter((y) => y != null && Number.isFinite(y));
        guess.set(id, near.length ? near.reduce((s, y) => s + y, 0) / near.length + 0.5 : Infinity);
      }
      const index = new Map(list.map((id, i) => [id, i]));
      list.sort((a, b) => (guess.get(a) - guess.get(b)) || index.get(a) - index.get(b));
    }
  }
  const pos = new Map();
  const renumber = (list) => list.forEach((id, i) => pos.set(id, i));
  layers.forEach(renumber);
  let best = layers.map((l) => l.slice());
  let bestCrossings = totalCrossings(layers, down, pos);
  for (let iter = 0; iter < 16 && bestCrossings > 0; iter++) {
    const downward = iter % 2 === 0;
    const range = downward
      ? [...Array(layerCount).keys()].slice(1)
      : [...Array(layerCount).keys()].reverse().slice(1);
    for (const l of range) {
      const list = layers[l];
      const ref = downward ? up : down;
      const bary = new Map();
      for (const id of list) {
        const ns = ref.get(id);
        if (ns && ns.length) {
          bary.set(id, ns.reduce((s, n) => s + pos.get(n), 0) / ns.length);
        } else {
          bary.set(id, pos.get(id));
        }
      }
      list.sort((a, b) => bary.get(a) - bary.get(b) || pos.get(a) - pos.get(b));
      renumber(list);
    }
    transpose(layers, up, down, pos);
    const crossings = totalCrossings(layers, down, pos);
    if (crossings < bestCrossings) {
      bestCrossings = crossings;
      best = layers.map((l) => l.slice());
    }
  }
  best.forEach((list, l) => {
    layers[l] = list;
    renumber(list);
  });

  // 5. Vertical placement: stacked first, then pulled towards the neighbours' centres a few
  //    times, each layer solved as an ordered least-squares problem (pool adjacent violators).
  const gapBetween = (a, b) => {
    const dummy = (id) => id.startsWith('\u0000');
    const gap = dummy(a) || dummy(b) ? opts.nodeGap / 2 : opts.nodeGap;
    return below.get(a) + gap + above.get(b);
  };
  const cy = new Map();
  for (const list of layers) {
    let y = 0;
    list.forEach((id, i) => {
      if (i > 0) y += gapBetween(list[i - 1], id);
      cy.set(id, y);
    });
    const shift = y / 2;
    for (const id of list) cy.set(id, cy.get(id) - shift);
  }
  for (let iter = 0; iter < 12; iter++) {
    const downward = iter % 2 === 0;
    const seq = downward ? [...layers.keys()] : [...layers.keys()].reverse();
    for (const l of seq) {
      const list = layers[l];
      const desired = list.map((id) => {
        const ns = [...(up.get(id) || []), ...(down.get(id) || [])];
        if (!ns.length) return cy.get(id);
        // Dummies weigh more: long edges stay straight.
        let sum = 0;
        let weight = 0;
        for (const n of ns) {
          const w = n.startsWith('\u0000') && id.startsWith('\u0000') ? 4 : 1;
          sum += cy.get(n) * w;
          weight += w;
        }
        return sum / weight;
      });
      const placed = orderedFit(list, desired, gapBetween);
      list.forEach((id, i) => cy.set(id, placed[i]));
    }
  }

  // 6. Coordinates: each layer a column as wide as its widest node, nodes centred in it.
  const columnX = [];
  const columnW = [];
  let x = 0;
  for (const list of layers) {
    let w = 0;
    for (const id of list) if (!id.startsWith('\u0000')) w = Math.max(w, info.get(id).width);
    columnX.push(x);
    columnW.push(w);
    x += w + opts.layerGap;
  }
  let minY = Infinity;
  let maxY = -Infinity;
  for (const [id, y] of cy) {
    minY = Math.min(minY, y - above.get(id));
    maxY = Math.max(maxY, y + below.get(id));
  }
  if (!Number.isFinite(minY)) {
    minY = 0;
    maxY = 0;
  }
  const nodesOut = new Map();
  for (const id of ids) {
    const n = info.get(id);
    const l = layer.get(id);
    nodesOut.set(id, {
      x: columnX[l] + (columnW[l] - n.width) / 2,
      y: cy.get(id) - anchorOf(n) - minY,
      width: n.width,
      height: n.height,
      anchor: n.anchor,
      layer: l,
    });
  }
  const point = (id) => {
    const l = layer.get(id);
    return { x: columnX[l] + columnW[l] / 2, y: cy.get(id) - minY };
  };
  const edgesOut = new Map();
  for (const e of edges) {
    const a = nodesOut.get(e.from);
    const b = nodesOut.get(e.to);
    if (e.from === e.to) {
      edgesOut.set(e.id, {
        points: [{ x: a.x + a.width, y: a.y + anchorOf(a) }, { x: a.x, y: a.y + anchorOf(a) }],
        reversed: false,
        self: true,
      });
      continue;
    }
    const isReversed = reversed.has(e.id);
    const middle = chains.get(e.id).slice(1, -1).map(point);
    if (isReversed) middle.reverse();
    const points = isReversed
      ? [{ x: a.x + a.width / 2, y: a.y + a.height }, ...middle, { x: b.x + b.width / 2, y: b.y + b.height }]
      : [{ x: a.x + a.width, y: a.y + anchorOf(a) }, ...middle, { x: b.x, y: b.y + anchorOf(b) }];
    edgesOut.set(e.id, { points, reversed: isReversed, self: false });
  }
  return {
    nodes: nodesOut,
    edges: edgesOut,
    width: Math.max(0, x - opts.layerGap),
    height: maxY - minY,
  };
}

/** Where edges attach below a node's top. */
const anchorOf = (n) => (n.anchor == null ? n.height / 2 : n.anchor);

/** Kahn's order; ties broken by the input order so the result is deterministic. */
function topologicalOrder(ids, succ, pred) {
  const remaining = new Map(ids.map((id) => [id, pred.get(id).length]));
  const index = new Map(ids.map((id, i) => [id, i]));
  const ready = ids.filter((id) => remaining.get(id) === 0);
  const order = [];
  while (ready.length) {
    ready.sort((a, b) => index.get(b) - index.get(a));
    const id = ready.pop();
    order.push(id);
    for (const s of succ.get(id)) {
      remaining.set(s, remaining.get(s) - 1);
      if (remaining.get(s) === 0) ready.push(s);
    }
  }
  return order;
}

/** Crossings between two adjacent layers' edges (`down` links layer l to l + 1). */
function crossingsBetween(list, down, pos) {
  const pairs = [];
  for (const id of list) {
    for (const n of down.get(id) || []) pairs.push([pos.get(id), pos.get(n)]);
  }
  pairs.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let count = 0;
  for (let i = 0; i < pairs.length; i++) {
    for (let j = i + 1; j < pairs.length; j++) {
      if (pairs[i][0] < pairs[j][0] && pairs[i][1] > pairs[j][1]) count++;
    }
  }
  return count;
}

function totalCrossings(layers, down, pos) {
  let count = 0;
  for (let l = 0; l + 1 < layers.length; l++) count += crossingsBetween(layers[l], down, pos);
  return count;
}

/** Swaps neighbours in a layer while that lowers the crossings on both of its sides. */
function transpose(layers, up, down, pos) {
  const cost = (a, b) => {
    // Crossings among a's and b's edges when a is above b.
    let c = 0;
    for (const map of [up, down]) {
      const na = map.get(a) || [];
      const nb = map.get(b) || [];
      for (const x of na) for (const y of nb) if (pos.get(x) > pos.get(y)) c++;
    }
    return c;
  };
  let improved = true;
  for (let pass = 0; improved && pass < 4; pass++) {
    improved = false;
    for (const list of layers) {
      for (let i = 0; i + 1 < list.length; i++) {
        const a = list[i];
        const b = list[i + 1];
        if (cost(a, b) > cost(b, a)) {
          list[i] = b;
          list[i + 1] = a;
          pos.set(b, i);
          pos.set(a, i + 1);
          improved = true;
        }
      }
    }
  }
}

/**
 * Places `list` (in this order) as near as it can to `desired` (least squares) with at
 * least `gap(a, b)` between neighbours: with z_i = y_i − offset_i the order constraint
 * becomes z non-decreasing, an isotonic regression solved by pooling adjacent violators.
 */
function orderedFit(list, desired, gap) {
  const offset = [0];
  for (let i = 1; i < list.length; i++) offset.push(offset[i - 1] + gap(list[i - 1], list[i]));
  const blocks = []; // {sum, count, value}
  list.forEach((_, i) => {
    blocks.push({ sum: desired[i] - offset[i], count: 1 });
    while (blocks.length > 1) {
      const b = blocks[blocks.length - 1];
      const a = blocks[blocks.length - 2];
      if (a.sum / a.count <= b.sum / b.count) break;
      a.sum += b.sum;
      a.count += b.count;
      blocks.pop();
    }
  });
  const out = [];
  let i = 0;
  for (const b of blocks) {
    const z = b.sum / b.count;
    for (let k = 0; k < b.count; k++, i++) out.push(z + offset[i]);
  }
  return out;
}
