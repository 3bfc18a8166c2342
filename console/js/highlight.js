// Syntax colouring for the two languages of a flow folder: Rhai scripts and TOML flow
// files. A small tokenizer per language: keywords, strings, numbers, comments (and, for
// TOML, table headers and keys); everything else is plain text. Tokens never span a
// class change, so the result can be rebuilt on every keystroke of the editor.

const RHAI_KEYWORDS = new Set([
  'let', 'const', 'if', 'else', 'switch', 'do', 'while', 'until', 'loop', 'for', 'in',
  'continue', 'break', 'return', 'throw', 'try', 'catch', 'fn', 'private', 'import',
  'export', 'as', 'true', 'false', 'this', 'global', 'is', 'Fn', 'call', 'curry',
  'is_def_fn', 'is_def_var', 'is_shared',
]);

/** The language of a file id, from its extension. */
export function languageOf(fileId) {
  if (/\.toml$/i.test(fileId || '')) return 'toml';
  if (/\.rhai$/i.test(fileId || '')) return 'rhai';
  return 'text';
}

/**
 * Splits `text` into `[kind, text]` pairs: kind is one of 'kw', 'str', 'num', 'com',
 * 'fn', 'key', 'sec', 'punct' or '' (plain). Concatenating the texts gives `text` back.
 */
export function tokenize(text, language) {
  if (language === 'rhai') return tokenizeRhai(text);
  if (language === 'toml') return tokenizeToml(text);
  return [['', text]];
}

/** Appends `[kind, text]` to `out`, merging it into the last token when of the same kind. */
function pusher(out) {
  return (kind, text) => {
    if (!text) return;
    const last = out[out.length - 1];
    if (last && last[0] === kind) last[1] += text;
    else out.push([kind, text]);
  };
}

function tokenizeRhai(src) {
  const out = [];
  const push = pusher(out);
  let i = 0;
  const n = src.length;
  while (i < n) {
    const c = src[i];
    const next = src[i + 1];
    if (c === '/' && next === '/') {
      const end = src.indexOf('\n', i);
      const stop = end < 0 ? n : end;
      push('com', src.slice(i, stop));
      i = stop;
    } else if (c === '/' && next === '*') {
      // Rhai block comments nest.
      let depth = 0;
      let j = i;
      while (j < n) {
        if (src[j] === '/' && src[j + 1] === '*') {
          depth++;
          j += 2;
        } else if (src[j] === '*' && src[j + 1] === '/') {
          depth--;
          j += 2;
          if (depth === 0) break;
        } else j++;
      }
      push('com', src.slice(i, j));
      i = j;
    } else if (c === '"' || c === '`' || c === "'") {
      let j = i + 1;
      while (j < n && src[j] !== c) {
        if (src[j] === '\\') j++;
        else if (src[j] === '\n' && c !== '`') break;
        j++;
      }
      j = Math.min(n, j + 1);
      push('str', src.slice(i, j));
      i = j;
    } else if (/[0-9]/.test(c)) {
      const m = /^(0x[0-9a-fA-F_]+|0o[0-7_]+|0b[01_]+|[0-9][0-9_]*(\.[0-9][0-9_]*)?([eE][+-]?[0-9]+)?)/.exec(src.slice(i, i + 64));
      push('num', m[0]);
      i += m[0].length;
    } else if (/[A-Za-z_]/.test(c)) {
      const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(src.slice(i, i + 256));
      const word = m[0];
      let kind = '';
      if (RHAI_KEYWORDS.has(word)) kind = 'kw';
      else if (/^\s*\(/.test(src.slice(i + word.length, i + word.length + 8))) kind = 'fn';
      push(kind, word);
      i += word.length;
    } else if (c === '#' && next === '{') {
      push('punct', '#{');
      i += 2;
    } else {
      push('', c);
      i++;
    }
  }
  return out;
}

function tokenizeToml(src) {
  const out = [];
  const push = pusher(out);
  let i = 0;
  const n = src.length;
  let lineStart = true; // only whitespace since the last newline
  let expectKey = true; // at a place where a key may come (line start, after `{` or `,`)
  let depth = 0; // inside [ ] or { } of a value
  while (i < n) {
    const c = src[i];
    if (c === '\n') {
      push('', c);
      i++;
      lineStart = true;
      if (depth === 0) expectKey = true;
      continue;
    }
    if (c === ' ' || c === '\t' || c === '\r') {
      push('', c);
      i++;
      continue;
    }
    if (c === '#') {
      const end = src.indexOf('\n', i);
      const stop = end < 0 ? n : end;
      push('com', src.slice(i, stop));
      i = stop;
      continue;
    }
    if (lineStart && depth === 0 && c === '[') {
      // A table header: [name] or [[name]], up to its closing bracket.
      let j = i;
      while (j < n && src[j] !== '\n' && src[j] !== '#') {
        if (src[j] === '"') {
          j++;
          while (j < n && src[j] !== '"' && src[j] !== '\n') j++;
        }
        if (src[j] === ']' && src[j + 1] !== ']') {
          j++;
          break;
        }
        j++;
      }
      const header = src.slice(i, j);
      const trailing = header.match(/\s+$/);
      push('sec', trailing ? header.slice(0, -trailing[0].length) : header);
      if (trailing) push('', trailing[0]);
      i = j;
      lineStart = false;
      expectKey = false;
      continue;
    }
    lineStart = false;
    if (c === '"' || c === "'") {
      const triple = src.startsWith(c.repeat(3), i);
      let j;
      if (triple) {
        j = src.indexOf(c.repeat(3), i + 3);
        j = j < 0 ? n : j + 3;
        while (src[j] === c) j++; // """a"""" ends with a quote inside
      } else {
        j = i + 1;
        while (j < n && src[j] !== c && src[j] !== '\n') {
          if (c === '"' && src[j] === '\\') j++;
          j++;
        }
        j = Math.min(n, j + 1);
      }
      push(expectKey ? 'key' : 'str', src.slice(i, j));
      i = j;
      continue;
    }
    if (expectKey && /[A-Za-z0-9_-]/.test(c)) {
      const m = /^[A-Za-z0-9_-]+/.exec(src.slice(i, i + 256));
      push('key', m[0]);
      i += m[0].length;
      continue;
    }
    if (c === '=') {
      push('punct', c);
      expectKey = false;
      i++;
      continue;
    }
    if (c === '.' && expectKey) {
      push('key', c);
      i++;
      continue;
    }
    if (c === '{' || c === '[') {
      depth++;
      expectKey = c === '{';
      push('punct', c);
      i++;
      continue;
    }
    if (c === '}' || c === ']') {
      depth = Math.max(0, depth - 1);
      expectKey = false;
      push('punct', c);
      i++;
      continue;
    }
    if (c === ',') {
      // In an inline table the next thing is a key; in an array, a value.
      const inTable = lastOpen(src, i) === '{';
      expectKey = inTable;
      push('punct', c);
      i++;
      continue;
    }
    const word = /^[A-Za-z0-9_:.+-]+/.exec(src.slice(i, i + 64));
    if (word) {
      const w = word[0];
      let kind = '';
      if (w === 'true' || w === 'false') kind = 'kw';
      else if (/^[+-]?(\d|inf|nan)/.test(w)) kind = 'num';
      push(kind, w);
      i += w.length;
      continue;
    }
    push('', c);
    i++;
  }
  return out;
}

/** The innermost `{` or `[` still open before `i` on its line (inline tables stay on one). */
function lastOpen(src, i) {
  let depth = 0;
  for (let j = i - 1; j >= 0 && src[j] !== '\n'; j--) {
    const c = src[j];
    if (c === '}' || c === ']') depth++;
    else if (c === '{' || c === '[') {
      if (depth === 0) return c;
      depth--;
    }
  }
  return '';
}

const CLASSES = {
  kw: 'tok-kw',
  str: 'tok-str',
  num: 'tok-num',
  com: 'tok-com',
  fn: 'tok-fn',
  key: 'tok-key',
  sec: 'tok-kw tok-sec',
  punct: 'tok-punct',
};

/** Fills `target` (a <pre> or <code>) with `text` coloured as `language`. */
export function highlightInto(target, text, language) {
  const fragment = document.createDocumentFragment();
  for (const [kind, part] of tokenize(text, language)) {
    if (!kind) {
      fragment.append(part);
    } else {
      const span = document.createElement('span');
      span.className = CLASSES[kind];
      span.textContent = part;
      fragment.append(span);
    }
  }
  target.replaceChildren(fragment);
}
