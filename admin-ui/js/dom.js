// DOM helpers. Everything captured is rendered with text nodes: triage
// conversations carry attacker-controlled strings, so no HTML is ever
// parsed from data.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  add(el, children);
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
  add(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value' || k === 'checked' || k === 'selected' || k === 'disabled' || k === 'hidden' || k === 'required') el[k] = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
}

export function add(el, children) {
  for (const c of [children].flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) { el.replaceChildren(); return el; }

// ---- formatting ----
export const dash = '—';
export function pct(x, digits = 1) { return x == null || Number.isNaN(x) ? dash : `${(x * 100).toFixed(digits)}\u00a0%`; }
export function num(x, digits) {
  if (x == null || Number.isNaN(x)) return dash;
  if (digits !== undefined) return Number(x).toFixed(digits);
  return Number(x).toLocaleString('en-US');
}
export function ms(x) { return x == null ? dash : x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${Math.round(x)} ms`; }
export function when(iso) {
  if (!iso) return dash;
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString('en-GB', { year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}
export function ago(iso) {
  if (!iso) return dash;
  const sec = (Date.now() - new Date(iso).getTime()) / 1000;
  if (sec < 60) return 'just now';
  if (sec < 3600) return `${Math.floor(sec / 60)} min ago`;
  if (sec < 86400) return `${Math.floor(sec / 3600)} h ago`;
  return `${Math.floor(sec / 86400)} d ago`;
}
export function interval(ci, f = (x) => num(x, 2)) { return ci && ci.length === 2 ? `[${f(ci[0])}, ${f(ci[1])}]` : ''; }
export function words(s) { return s == null ? dash : String(s).replaceAll('_', ' '); }

// ---- components ----
export function badge(text, kind = '') { return h('span', { class: `badge ${kind ? `badge-${kind}` : ''}` }, text); }

const STATUS_KIND = {
  pending: 'neutral', approved: 'good', rejected: 'bad',
  production: 'good', candidate: 'info', retired: 'neutral',
  succeeded: 'good', failed: 'bad', cancelled: 'neutral', running: 'info', queued: 'info',
  validating_files: 'info', preparing: 'info',
  better: 'good', worse: 'bad', inconclusive: 'neutral', open: 'bad', acknowledged: 'neutral',
  critical: 'bad', high: 'warn', medium: 'info', low: 'neutral', informational: 'neutral',
};
export function statusBadge(status) { return status ? badge(words(status), STATUS_KIND[status] || 'neutral') : h('span', { class: 'muted' }, dash); }

export function card(title, ...body) {
  return h('section', { class: 'card' }, title ? h('h2', { class: 'card-title' }, title) : null, ...body);
}
export function loading(text = 'Loading…') { return h('div', { class: 'state state-loading', role: 'status' }, h('span', { class: 'spinner' }), text); }
export function empty(text, ...more) { return h('div', { class: 'state state-empty' }, h('p', null, text), ...more); }
export function errorBox(err) {
  return h('div', { class: 'state state-error', role: 'alert' },
    h('strong', null, err?.status ? `Error ${err.status}` : 'Error'), ' ', err?.message ?? String(err));
}
export function kv(pairs) {
  return h('dl', { class: 'kv' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', null, k), h('dd', null, v ?? dash)]));
}

/** A table: columns are [{label, cell(row) → node|string, class}]. */
export function table(columns, rows, { rowAttrs } = {}) {
  return h('div', { class: 'table-wrap' }, h('table', { class: 'table' },
    h('thead', null, h('tr', null, columns.map((c) => h('th', { class: c.class || null, scope: 'col' }, c.label)))),
    h('tbody', null, rows.map((r, i) => h('tr', rowAttrs ? rowAttrs(r, i) : null,
      columns.map((c) => h('td', { class: c.class || null, 'data-label': c.label }, c.cell(r, i))))))));
}

export function field(label, control, hint) {
  return h('label', { class: 'field' }, h('span', { class: 'field-label' }, label), control, hint ? h('span', { class: 'field-hint' }, hint) : null);
}
export function select(name, options, value, attrs = {}) {
  return h('select', { name, ...attrs }, options.map((o) => {
    const [v, label] = Array.isArray(o) ? o : [o, words(o)];
    return h('option', { value: v, selected: String(v) === String(value ?? '') }, label);
  }));
}
export function button(label, onclick, kind = '', attrs = {}) {
  return h('button', { type: 'button', class: `btn ${kind ? `btn-${kind}` : ''}`, onclick, ...attrs }, label);
}

// ---- toasts ----
export function toast(message, kind = 'info') {
  const t = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
  const box = document.getElementById('toasts');
  box.append(t);
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 3500);
}

/** Asks for a required reason in a dialog; resolves to the text or null. */
export function askReason(title, text, confirm = 'Confirm') {
  const dialog = document.getElementById('ask');
  const form = document.getElementById('ask-form');
  const reason = document.getElementById('ask-reason');
  document.getElementById('ask-title').textContent = title;
  document.getElementById('ask-text').textContent = text;
  document.getElementById('ask-ok').textContent = confirm;
  reason.value = '';
  return new Promise((resolve) => {
    const done = (value) => {
      form.removeEventListener('submit', onSubmit);
      cancel.removeEventListener('click', onCancel);
      dialog.removeEventListener('cancel', onCancel);
      dialog.close();
      resolve(value);
    };
    const onSubmit = (e) => { e.preventDefault(); const v = reason.value.trim(); if (v) done(v); else reason.focus(); };
    const onCancel = (e) => { e.preventDefault(); done(null); };
    const cancel = document.getElementById('ask-cancel');
    form.addEventListener('submit', onSubmit);
    cancel.addEventListener('click', onCancel);
    dialog.addEventListener('cancel', onCancel);
    dialog.showModal();
    reason.focus();
  });
}

/** "Load more" paging over an admin API list. `load(cursor)` returns the
 * list envelope; `renderItems(items)` appends rows. */
export function pager(load, renderItems, { emptyText = 'Nothing here yet.' } = {}) {
  const more = h('div', { class: 'pager' });
  const wrap = h('div', null, more);
  let cursor = null;
  let count = 0;
  async function next() {
    more.replaceChildren(loading());
    try {
      const page = await load(cursor);
      count += page.data.length;
      renderItems(page.data, wrap);
      cursor = page.next_cursor;
      more.replaceChildren();
      if (page.has_more && cursor) more.append(button('Load more', next, '', { 'data-test': 'load-more' }));
      else if (count === 0) more.append(empty(emptyText));
    } catch (e) {
      more.replaceChildren(errorBox(e), button('Try again', next));
    }
  }
  next();
  return wrap;
}
