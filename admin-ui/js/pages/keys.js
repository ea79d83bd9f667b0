// Keys (admin): create a key (shown once), list, revoke.

import { api } from '../api.js';
import { h, clear, card, table, badge, button, empty, toast, when, ago, field, select } from '../dom.js';

export async function render(ctx) {
  const list = await api('/keys');
  if (!ctx.alive()) return;
  const created = h('div');
  const name = h('input', { name: 'name', required: true, maxlength: 100, placeholder: 'who or what uses it' });
  const role = select('role', ['client', 'analyst', 'admin'], 'analyst');
  const err = h('div', { class: 'inline-error', role: 'alert' });
  const form = h('form', { class: 'form-row' }, field('Name', name), field('Role', role), h('button', { type: 'submit', class: 'btn btn-primary' }, 'Create key'), err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.textContent = '';
    try {
      const k = await api('/keys', { method: 'POST', body: { name: name.value.trim(), role: role.value } });
      const code = h('code', { class: 'secret', 'data-test': 'new-key' }, k.key);
      created.replaceChildren(h('div', { class: 'state state-good' }, h('p', null, `Key for ${k.name} (${k.role}). Copy it now: it is not shown again.`), code,
        button('Copy', () => navigator.clipboard?.writeText(k.key).then(() => toast('Copied.'), () => toast('Select the key and copy it.')), 'small')));
      name.value = '';
      draw();
    } catch (ex) { err.textContent = ex.message; }
  });
  const listEl = h('div');
  let rows = list.data;
  const draw = async () => {
    rows = (await api('/keys')).data;
    paint();
  };
  const paint = () => listEl.replaceChildren(rows.length ? table([
    { label: 'Name', cell: (k) => k.name },
    { label: 'Role', cell: (k) => badge(k.role, k.role === 'admin' ? 'warn' : k.role === 'analyst' ? 'info' : 'neutral') },
    { label: 'Id', cell: (k) => h('code', null, k.id) },
    { label: 'Created', cell: (k) => h('span', { title: when(k.created_at) }, ago(k.created_at)) },
    { label: 'State', cell: (k) => k.revoked_at ? badge(`revoked ${ago(k.revoked_at)}`, 'bad') : badge('active', 'good') },
    { label: '', cell: (k) => k.revoked_at ? '' : button('Revoke', async () => {
      if (!window.confirm(`Revoke the key "${k.name}"? Requests with it fail from now on.`)) return;
      try { await api(`/keys/${encodeURIComponent(k.id)}`, { method: 'DELETE' }); toast('Key revoked.'); draw(); } catch (ex) { toast(ex.message, 'error'); }
    }, 'bad small') },
  ], rows) : empty('No key yet besides the bootstrap token.'));
  paint();
  clear(ctx.root).append(h('div', { class: 'page' }, h('div', { class: 'page-head' }, h('h1', null, 'Keys')),
    card('Create a key', form, created), card('Keys', listEl)));
}
