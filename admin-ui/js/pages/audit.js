// The audit log (admin): every write, who made it, on what.

import { api, qs } from '../api.js';
import { h, clear, card, table, badge, when, ago, pager, dash } from '../dom.js';

export async function render(ctx) {
  const page = h('div', { class: 'page' }, h('div', { class: 'page-head' }, h('h1', null, 'Audit log')));
  const el = h('div');
  page.append(card(null, el));
  clear(ctx.root).append(page);
  el.append(pager((cursor) => api(`/audit${qs({ cursor, limit: 50 })}`), (items, wrap) => {
    if (!items.length) return;
    wrap.insertBefore(table([
      { label: 'When', class: 'nowrap', cell: (a) => h('span', { title: when(a.at) }, ago(a.at)) },
      { label: 'Actor', class: 'nowrap', cell: (a) => h('code', null, a.actor) },
      { label: 'Action', class: 'nowrap', cell: (a) => badge(a.action, 'neutral') },
      { label: 'Target', class: 'nowrap', cell: (a) => a.target ? h('code', null, a.target) : dash },
      { label: 'Details', cell: (a) => {
        const text = a.details == null ? dash : typeof a.details === 'string' ? a.details : JSON.stringify(a.details);
        return h('span', { class: 'details clamp', title: text }, text);
      } },
    ], items), wrap.lastChild);
  }, { emptyText: 'Nothing has been changed yet.' }));
}
