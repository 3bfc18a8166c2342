// The editor (`#/edit/{fileId}`): the flow folder's files (from the model), each opened
// into a buffer that survives switching files; a textarea over a highlighted copy of its
// text, with a line-number gutter kept in step on scroll. Save (button or Ctrl+S) PUTs
// the text with `If-Match` and shows the reload's outcome as soon as the answer is in:
// applied, unchanged, or the problems (file, line, message; the line marked in the
// gutter; a click moves the caret there). A 409 offers "Load from disk" or "Overwrite".

import { ApiError, el, getJSON, request, routeHash, setClass, setText } from './api.js';
import { highlightInto, languageOf } from './highlight.js';

/** A path as the file list shows it: its folder muted, a line break allowed after it. */
function pathParts(path) {
  const slash = path.lastIndexOf('/');
  if (slash < 0) return [path];
  return [el('span', { class: 'dir' }, path.slice(0, slash + 1)), el('wbr'), path.slice(slash + 1)];
}

export function createEditorView(ctx) {
  const section = document.getElementById('view-edit');
  const fileList = document.getElementById('file-list');
  const title = document.getElementById('editor-file');
  const dirtyFlag = document.getElementById('editor-dirty');
  const cursor = document.getElementById('editor-cursor');
  const revert = document.getElementById('editor-revert');
  const saveButton = document.getElementById('editor-save');
  const conflict = document.getElementById('editor-conflict');
  const conflictText = document.getElementById('editor-conflict-text');
  const loadDisk = document.getElementById('editor-load-disk');
  const overwrite = document.getElementById('editor-overwrite');
  const frame = document.getElementById('editor-frame');
  const gutter = document.getElementById('editor-gutter');
  const shade = document.getElementById('editor-highlight');
  const textarea = document.getElementById('editor');
  const outcome = document.getElementById('editor-outcome');
  const diagnostics = document.getElementById('editor-diagnostics');
  const navBadge = document.getElementById('nav-unsaved');

  /** file id → {text, saved, version, problems, outcome, scrollTop, caret} */
  const buffers = new Map();
  let currentId = null;
  let saving = false;
  let diskVersion = null; // the version a 409 reported
  let paintFrame = 0;
  let gutterLines = 0;
  let currentLine = 0;

  // ---------------------------------------------------------------- file list
  function renderFiles() {
    const files = ctx.model?.files || [];
    const roots = new Set(files.map((f) => f.id.split('/')[0]));
    const shown = (id) => (roots.size > 1 ? id : id.slice(id.indexOf('/') + 1));
    const group = (label, kind) => {
      const items = files.filter((f) => (kind === 'flow' ? f.kind === 'flow' : f.kind !== 'flow'))
        .sort((a, b) => a.id.localeCompare(b.id));
      if (!items.length) return [];
      return [el('li', {}, el('h2', {}, label), el('ul', {}, items.map((f) => el('li', {},
        el('a', {
          href: routeHash('edit', f.id),
          dataset: { file: f.id },
          title: f.id,
          class: buffers.get(f.id) && isDirty(f.id) ? 'dirty' : null,
          'aria-current': f.id === currentId ? 'page' : null,
        }, el('span', { class: 'ext', 'aria-hidden': 'true' }, languageOf(f.id) === 'toml' ? 'TOML' : 'RHAI'),
        el('span', {}, ...pathParts(shown(f.id))))))))];
    };
    fileList.replaceChildren(...group('Flow files', 'flow'), ...group('Scripts', 'script'));
    if (!files.length) fileList.append(el('li', { class: 'hint', style: 'padding: 0 14px' }, 'No editable files.'));
  }

  function markList() {
    for (const a of fileList.querySelectorAll('a[data-file]')) {
      const id = a.dataset.file;
      if (id === currentId) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
      setClass(a, 'dirty', isDirty(id));
    }
    const dirty = [...buffers.keys()].filter(isDirty).length;
    navBadge.hidden = dirty === 0;
    setText(navBadge, `● ${dirty}`);
    navBadge.title = `${dirty} file${dirty === 1 ? '' : 's'} with unsaved changes`;
  }

  const isDirty = (id) => {
    const b = buffers.get(id);
    return !!b && b.text !== b.saved;
  };

  // ---------------------------------------------------------------- opening
  async function open(id) {
    if (currentId && buffers.has(currentId)) {
      const b = buffers.get(currentId);
      b.text = textarea.value;
      b.scrollTop = textarea.scrollTop;
      b.caret = textarea.selectionStart;
    }
    currentId = id;
    conflict.hidden = true;
    setText(title, id);
    markList();
    let buffer = buffers.get(id);
    if (!buffer) {
      textarea.disabled = true;
      textarea.value = '';
      paint();
      showOutcome('Loading…', '');
      diagnostics.replaceChildren();
      try {
        const file = await getJSON(`/console/file?id=${encodeURIComponent(id)}`);
        buffer = { text: file.text, saved: file.text, version: file.version, problems: [], outcome: null };
        buffers.set(id, buffer);
      } catch (e) {
        if (currentId !== id) return;
        showOutcome(e instanceof ApiError && e.status === 404
          ? `✖ ${id} is not a file of the running flows (or is outside their folders).`
          : `✖ Could not open ${id}: ${e.message}`, 'bad');
        return;
      }
      if (currentId !== id) return;
    }
    textarea.disabled = false;
    textarea.value = buffer.text;
    paint(true);
    restoreOutcome(buffer);
    requestAnimationFrame(() => {
      textarea.scrollTop = buffer.scrollTop || 0;
      syncScroll();
      const jump = ctx.editorJump;
      if (jump && jump.file === id) {
        ctx.editorJump = null;
        moveCaret(jump.line, 1);
      } else if (buffer.caret != null) {
        textarea.setSelectionRange(buffer.caret, buffer.caret);
      }
    });
    markList();
  }

  // ---------------------------------------------------------------- painting
  function paint(now = false) {
    if (now) {
      cancelAnimationFrame(paintFrame);
      paintFrame = 0;
      repaint();
    } else if (!paintFrame) {
      paintFrame = requestAnimationFrame(() => {
        paintFrame = 0;
        repaint();
      });
    }
  }

  function repaint() {
    const text = textarea.value;
    highlightInto(shade, `${text}\n`, languageOf(currentId));
    const lines = text.split('\n').length;
    if (lines !== gutterLines) {
      gutterLines = lines;
      const fragment = document.createDocumentFragment();
      for (let i = 1; i <= lines; i++) {
        const div = document.createElement('div');
        div.dataset.line = String(i);
        div.textContent = String(i);
        fragment.append(div);
      }
      gutter.replaceChildren(fragment);
      currentLine = 0;
    }
    markGutter();
    syncScroll();
    const buffer = buffers.get(currentId);
    const dirty = !!buffer && text !== buffer.saved;
    dirtyFlag.hidden = !dirty;
    saveButton.disabled = saving || !buffer;
    revert.disabled = !dirty;
    trackCaret();
  }

  function markGutter() {
    const buffer = buffers.get(currentId);
    const lines = new Map();
    for (const p of buffer?.problems || []) {
      if (p.line && fileIdFor(p.file) === currentId) lines.set(p.line, p);
    }
    for (const div of gutter.children) {
      const n = Number(div.dataset.line);
      const p = lines.get(n);
      setClass(div, 'diagnostic-line', !!p);
      if (p) div.title = p.message;
      else if (div.title) div.removeAttribute('title');
    }
  }

  function syncScroll() {
    gutter.scrollTop = textarea.scrollTop;
    shade.scrollTop = textarea.scrollTop;
    shade.scrollLeft = textarea.scrollLeft;
  }

  function trackCaret() {
    if (textarea.disabled) {
      setText(cursor, '');
      return;
    }
    const upto = textarea.value.slice(0, textarea.selectionStart);
    const line = upto.split('\n').length;
    const col = textarea.selectionStart - upto.lastIndexOf('\n');
    setText(cursor, `Ln ${line}, Col ${col}`);
    if (line !== currentLine) {
      gutter.children[currentLine - 1]?.classList.remove('current');
      gutter.children[line - 1]?.classList.add('current');
      currentLine = line;
    }
  }

  function moveCaret(line, column = 1) {
    const lines = textarea.value.split('\n');
    const l = Math.max(1, Math.min(line || 1, lines.length));
    let offset = 0;
    for (let i = 0; i < l - 1; i++) offset += lines[i].length + 1;
    offset += Math.max(0, Math.min((column || 1) - 1, lines[l - 1].length));
    textarea.focus({ preventScroll: true });
    textarea.setSelectionRange(offset, offset);
    const lineHeight = parseFloat(getComputedStyle(textarea).lineHeight) || 19;
    const top = (l - 1) * lineHeight;
    if (top < textarea.scrollTop || top > textarea.scrollTop + textarea.clientHeight - 2 * lineHeight) {
      textarea.scrollTop = Math.max(0, top - textarea.clientHeight / 3);
    }
    syncScroll();
    trackCaret();
  }

  textarea.addEventListener('input', () => {
    const buffer = buffers.get(currentId);
    if (buffer) buffer.text = textarea.value;
    paint();
    markList();
  });
  textarea.addEventListener('scroll', syncScroll);
  for (const type of ['keyup', 'click', 'select', 'focus']) textarea.addEventListener(type, trackCaret);

  // ---------------------------------------------------------------- saving
  async function save(version) {
    const buffer = buffers.get(currentId);
    if (!buffer || saving) return;
    const started = performance.now();
    const id = currentId;
    const text = textarea.value;
    buffer.text = text;
    saving = true;
    saveButton.disabled = true;
    conflict.hidden = true;
    showOutcome('Saving and reloading…', '');
    let answer;
    try {
      answer = await request('PUT', `/console/file?id=${encodeURIComponent(id)}`, {
        body: text,
        headers: { 'If-Match': `"${version || buffer.version}"`, 'Content-Type': 'text/plain; charset=utf-8' },
        accept: [409],
      });
    } catch (e) {
      saving = false;
      const detail = e instanceof ApiError && e.status === 428 ? 'the server asked for the version this file was loaded at' : e.message;
      buffer.outcome = { text: `✖ Not saved: ${detail}`, kind: 'bad' };
      if (currentId === id) restoreOutcome(buffer);
      record(started, 'error');
      paint();
      return;
    }
    saving = false;
    if (answer.status === 409) {
      diskVersion = answer.data?.version || null;
      buffer.outcome = { text: '✖ Not saved: the file changed on disk since it was opened.', kind: 'bad' };
      if (currentId === id) {
        restoreOutcome(buffer);
        const detail = answer.data?.detail ? String(answer.data.detail).replace(/\.?$/, '.') : '';
        conflictText.textContent = `Someone or something else saved this file since you opened it${detail ? ` (${detail.replace(/\.$/, '')})` : ''}. `
          + 'Load it from disk (your changes here are lost) or overwrite it with yours.';
        conflict.hidden = false;
      }
      record(started, 'conflict');
      paint();
      return;
    }
    const { version: saved, report } = answer.data || {};
    buffer.version = saved || buffer.version;
    buffer.saved = text;
    applyReport(buffer, report);
    if (currentId === id) {
      restoreOutcome(buffer);
      repaint();
      markList();
    }
    record(started, report ? report.result : 'saved');
    ctx.fileCache.delete(id);
  }

  function record(started, result) {
    window.edaflowConsole = window.edaflowConsole || {};
    window.edaflowConsole.lastSave = { ms: performance.now() - started, result };
  }

  /** Turns a reload report into the buffer's outcome line and problems. */
  function applyReport(buffer, report) {
    buffer.problems = [];
    buffer.awaiting = false;
    if (!report) {
      buffer.outcome = { text: '✓ Saved · nothing reloads flows in this process', kind: 'warn' };
      return;
    }
    switch (report.result) {
      case 'applied': {
        const changes = ['added', 'changed', 'removed', 'swapped']
          .map((k) => ((report[k] || []).length ? `${k} ${report[k].join(', ')}` : null))
          .filter(Boolean);
        buffer.outcome = {
          text: `✓ Saved · applied · generation ${report.generation}${changes.length ? ` · ${changes.join(' · ')}` : ''}`
            + (report.took_ms != null ? ` · ${Number(report.took_ms).toFixed(1)} ms` : ''),
          kind: 'ok',
        };
        break;
      }
      case 'unchanged':
        buffer.outcome = { text: `✓ Saved · unchanged · generation ${report.generation} keeps running`, kind: 'ok' };
        break;
      case 'invalid': {
        buffer.problems = Array.isArray(report.problems) ? report.problems : [];
        const n = buffer.problems.length;
        buffer.outcome = {
          text: `✖ Saved, but invalid: ${n ? `${n} problem${n === 1 ? '' : 's'}` : 'see below'} · generation ${report.generation} keeps running`,
          kind: 'bad',
          detail: n ? null : report.diagnostic,
        };
        break;
      }
      case 'rolled_back':
        buffer.outcome = {
          text: `✖ Saved, but applying failed and was rolled back · generation ${report.generation} keeps running`,
          kind: 'bad',
          detail: report.error,
        };
        break;
      case 'in_progress':
        // The outcome comes on the live stream (`onReload`).
        buffer.awaiting = true;
        buffer.outcome = { text: `✓ Saved · reloading… ${report.detail || ''}`.trim(), kind: 'warn' };
        break;
      default:
        buffer.outcome = { text: `Saved · ${report.result || 'no reload report'}`, kind: 'warn' };
    }
  }

  function showOutcome(text, kind, detail) {
    outcome.className = `editor-outcome ${kind || ''}`;
    outcome.replaceChildren(el('span', {}, text), ...(detail ? [el('pre', {}, detail)] : []));
  }

  function restoreOutcome(buffer) {
    if (buffer.outcome) showOutcome(buffer.outcome.text, buffer.outcome.kind, buffer.outcome.detail);
    else outcome.replaceChildren();
    diagnostics.replaceChildren(...(buffer.problems || []).map((p) => {
      const where = `${p.file}${p.line ? `:${p.line}` : ''}${p.line && p.column ? `:${p.column}` : ''}`;
      return el('li', {
        class: 'diagnostic',
        tabindex: '0',
        role: 'button',
        dataset: { line: p.line != null ? String(p.line) : '', file: p.file || '' },
      },
      el('span', { class: 'where' }, `✖ ${where}`),
      el('span', { class: 'message' }, p.message, p.help ? el('span', { class: 'help' }, ` — ${p.help}`) : null),
      p.code ? el('span', { class: 'code' }, p.code) : null);
    }));
  }

  function goToProblem(li) {
    const line = Number(li.dataset.line) || 1;
    const target = fileIdFor(li.dataset.file) || currentId;
    const column = Number((li.querySelector('.where')?.textContent.match(/:(\d+):(\d+)$/) || [])[2]) || 1;
    if (target === currentId) moveCaret(line, column);
    else {
      ctx.editorJump = { file: target, line };
      ctx.navigate(routeHash('edit', target));
    }
  }
  diagnostics.addEventListener('click', (e) => {
    const li = e.target.closest('li.diagnostic');
    if (li) goToProblem(li);
  });
  diagnostics.addEventListener('keydown', (e) => {
    const li = e.target.closest('li.diagnostic');
    if (li && (e.key === 'Enter' || e.key === ' ')) {
      e.preventDefault();
      goToProblem(li);
    }
  });

  /** The file id a problem names: an id itself, or a display path ending in an id's path. */
  function fileIdFor(name) {
    if (!name) return null;
    const files = (ctx.model?.files || []).map((f) => f.id);
    if (files.includes(name)) return name;
    const clean = name.replace(/\\/g, '/');
    let best = null;
    for (const id of files) {
      const path = id.slice(id.indexOf('/') + 1);
      if ((clean === path || clean.endsWith(`/${path}`)) && (!best || path.length > best.length)) best = id;
    }
    return best;
  }

  saveButton.addEventListener('click', () => save());
  document.addEventListener('keydown', (e) => {
    if (section.hidden) return;
    if ((e.ctrlKey || e.metaKey) && !e.altKey && e.key.toLowerCase() === 's') {
      e.preventDefault();
      save();
    }
  });
  revert.addEventListener('click', () => {
    const buffer = buffers.get(currentId);
    if (!buffer || !window.confirm('Throw away your changes to this file?')) return;
    textarea.value = buffer.saved;
    buffer.text = buffer.saved;
    paint(true);
    markList();
  });
  loadDisk.addEventListener('click', async () => {
    const id = currentId;
    try {
      const file = await getJSON(`/console/file?id=${encodeURIComponent(id)}`);
      buffers.set(id, { text: file.text, saved: file.text, version: file.version, problems: [], outcome: { text: '↻ Loaded the file as it is on disk.', kind: '' } });
      conflict.hidden = true;
      if (currentId === id) {
        textarea.value = file.text;
        paint(true);
        restoreOutcome(buffers.get(id));
        markList();
      }
    } catch (e) {
      showOutcome(`✖ Could not load from disk: ${e.message}`, 'bad');
    }
  });
  overwrite.addEventListener('click', () => {
    conflict.hidden = true;
    save(diskVersion);
  });
  window.addEventListener('beforeunload', (e) => {
    if ([...buffers.keys()].some(isDirty)) {
      e.preventDefault();
      e.returnValue = '';
    }
  });
  frame.addEventListener('click', (e) => {
    if (e.target === frame || e.target === gutter) textarea.focus();
  });

  renderFiles();
  return {
    el: section,
    show(param) {
      if (!ctx.model) return;
      if (param && param !== currentId) open(param);
      else if (param && !buffers.has(param)) open(param);
      else if (!param && !currentId) {
        setText(title, 'No file open');
        showOutcome('Choose a file on the left to edit it. Saving reloads the flows.', '');
        textarea.disabled = true;
      } else if (param === currentId && ctx.editorJump?.file === currentId) {
        const jump = ctx.editorJump;
        ctx.editorJump = null;
        moveCaret(jump.line, 1);
      }
    },
    /** A reload finished: a save still waiting for its outcome (answered 202) takes it. */
    onReload(report) {
      for (const [id, buffer] of buffers) {
        if (!buffer.awaiting) continue;
        applyReport(buffer, report);
        if (id === currentId) {
          restoreOutcome(buffer);
          repaint();
        }
      }
    },
    onModel() {
      renderFiles();
      // Opened before the model came: open the file the route names.
      const routed = /^#\/edit\/(.+)$/.exec(location.hash);
      if (!section.hidden && !currentId && routed) open(decodeURIComponent(routed[1]));
    },
  };
}
