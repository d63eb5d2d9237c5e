// Building the page from data, never by parsing strings as markup: every value goes in as text, so
// nothing a tenant named (an instance, a key) can become markup.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// A table: columns [{title, value: row => text|Node, num: bool}], with a caption for screen readers.
export function table(caption, columns, rows, empty = 'None.') {
  if (!rows.length) return h('p', {class: 'note'}, empty);
  return h('table', {},
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, columns.map(c => h('th', {scope: 'col', class: c.num ? 'num' : null}, c.title)))),
    h('tbody', {}, rows.map(r => h('tr', {}, columns.map(c => h('td', {class: c.num ? 'num' : null}, c.value(r)))))));
}

export function kv(pairs) {
  return h('dl', {class: 'kv'}, pairs.filter(p => p).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
}

export function field(labelText, input) {
  return h('label', {}, labelText, input);
}

export function when(t) {
  if (!t) return '—';
  const d = new Date(t);
  return d.toISOString().replace('T', ' ').replace(/:\d\d(\.\d+)?Z$/, ' UTC');
}

export function money(s) { return s === null || s === undefined ? '—' : '$' + s; }

export function stateBadge(state) { return h('span', {class: 'state state-' + state}, state); }

export function errorBox(err) {
  const box = h('div', {class: 'error', role: 'alert'});
  if (err && err.status === 403) {
    box.append(h('strong', {}, 'Not allowed. '),
      `Your key may not do this (the API answered 403 ${err.code}): ${err.message}`);
  } else if (err && err.status) {
    box.append(h('strong', {}, `Error ${err.status} ${err.code}. `), err.message);
  } else {
    box.append(h('strong', {}, 'Error. '), String(err && err.message || err));
  }
  if (err && err.requestId) box.append(h('span', {class: 'note'}, ` (request ${err.requestId})`));
  return box;
}

export function toast(text) {
  const t = document.getElementById('toast');
  t.textContent = text;
  t.classList.add('shown');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove('shown'), 3000);
}

// A form's submit: fn() sends it and gives a message for the toast, and then the page is drawn
// again (`refresh`); nothing when fn gives none (the user cancelled). A refusal shows in `problem`.
export function onSubmit(problem, refresh, fn) {
  return async e => {
    e.preventDefault();
    clear(problem);
    try {
      const message = await fn();
      if (!message) return;
      toast(message);
      refresh();
    } catch (err) {
      problem.append(errorBox(err));
    }
  };
}
