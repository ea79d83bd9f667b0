// Datasets: build an immutable snapshot from a filter, read its
// validation report (every rejection with its reason), download the JSONL.

import { api, qs, isMissingRoute, session } from '../api.js';
import { h, add, clear, card, table, badge, button, empty, errorBox, toast, when, ago, num, words, dash, field, select, kv, pager } from '../dom.js';

export async function render(ctx) {
  if (ctx.parts[1]) return one(ctx, ctx.parts[1]);
  const page = h('div', { class: 'page' }, h('div', { class: 'page-head' }, h('h1', null, 'Datasets')));
  const models = await api('/models').catch(() => ({ data: [] }));
  if (!ctx.alive()) return;
  if (ctx.isAdmin) page.append(card('Build a dataset', buildForm(ctx, models.data.map((m) => m.alias))));
  else page.append(h('p', { class: 'muted' }, 'Building datasets needs an admin key; you can read them.'));
  const listEl = h('div');
  page.append(card('Snapshots', listEl));
  clear(ctx.root).append(page);
  listEl.append(pager((cursor) => api(`/datasets${qs({ cursor, limit: 50 })}`).catch((e) => {
    if (isMissingRoute(e)) throw new Error('Datasets are not available on this server yet.');
    throw e;
  }), (items, wrap) => {
    if (!items.length) return;
    wrap.insertBefore(table([
      { label: 'Name', cell: (d) => h('a', { href: `#/datasets/${encodeURIComponent(d.id)}` }, d.name) },
      { label: 'Format', cell: (d) => d.format },
      { label: 'Ready', cell: (d) => readyBadge(d) },
      { label: 'Train / validation', class: 'num', cell: (d) => `${num(d.counts?.train)} / ${num(d.counts?.validation)}` },
      { label: 'Rejected', class: 'num', cell: (d) => num(d.counts?.rejected) },
      { label: 'Created', cell: (d) => h('span', { title: when(d.created_at) }, ago(d.created_at)) },
    ], items), wrap.lastChild);
  }, { emptyText: 'No dataset built yet.' }));
}

function byType(d) {
  const rows = Object.entries(d.by_threat_type || {}).sort((a, b) => b[1] - a[1]);
  const labelled = rows.reduce((n, r) => n + r[1], 0);
  const accepted = d.counts?.accepted ?? labelled;
  if (accepted > labelled) rows.push([null, accepted - labelled]);
  if (!rows.length) return empty('No example.');
  return table([
    { label: 'Threat type', cell: (r) => r[0] === null ? h('span', { class: 'muted' }, 'no threat type label') : words(r[0]) },
    { label: 'Examples', class: 'num', cell: (r) => num(r[1]) },
  ], rows);
}

function readyBadge(d) { return d.ready_for_training ? badge('ready for training', 'good') : badge('not ready', 'bad'); }

function buildForm(ctx, aliases) {
  const tax = ctx.me.taxonomy || { threat_types: [], severities: [] };
  const name = h('input', { name: 'name', required: true, placeholder: 'e.g. triage-2026-12', maxlength: 100 });
  const format = select('format', [['sft', 'SFT (chat examples)'], ['dpo', 'DPO (preferred vs rejected)']], 'sft');
  const minQ = select('min_quality', [['', 'any'], '1', '2', '3', '4', '5'], '3');
  const alias = select('alias', [['', 'any'], ...aliases.map((a) => [a, a])], '');
  const since = h('input', { type: 'date', name: 'since' });
  const until = h('input', { type: 'date', name: 'until' });
  const split = h('input', { type: 'number', name: 'validation_split', min: 0, max: 0.5, step: 0.05, placeholder: 'default' });
  const checks = (values, nm) => h('div', { class: 'checks' }, values.map((v) => h('label', { class: 'check' }, h('input', { type: 'checkbox', name: nm, value: v }), words(v))));
  const types = checks(tax.threat_types, 'threat_types');
  const sevs = checks(tax.severities, 'severities');
  const err = h('div', { class: 'inline-error', role: 'alert' });
  const form = h('form', { class: 'stack' },
    h('div', { class: 'form-row' }, field('Name', name), field('Format', format), field('Min quality', minQ), field('Alias', alias), field('From', since), field('Until', until), field('Validation share (0–0.5)', split)),
    h('p', { class: 'muted small' }, 'Only approved conversations are used. Leave the boxes empty for every threat type and severity.'),
    field('Threat types', types), field('Severities', sevs),
    h('div', { class: 'row' }, h('button', { type: 'submit', class: 'btn btn-primary', 'data-test': 'build' }, 'Build snapshot'), err));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.textContent = '';
    const filter = { status: 'approved' };
    if (minQ.value) filter.min_quality = Number(minQ.value);
    if (alias.value) filter.alias = alias.value;
    if (since.value) filter.since = since.value;
    if (until.value) filter.until = until.value;
    const tt = [...types.querySelectorAll('input:checked')].map((i) => i.value);
    const sv = [...sevs.querySelectorAll('input:checked')].map((i) => i.value);
    if (tt.length) filter.threat_types = tt;
    if (sv.length) filter.severities = sv;
    const body = { name: name.value.trim(), format: format.value, filter };
    if (split.value !== '') body.validation_split = Number(split.value);
    const submit = form.querySelector('button[type=submit]');
    submit.disabled = true;
    try {
      const d = await api('/datasets', { method: 'POST', body });
      toast(`Built ${d.name}.`, 'good');
      ctx.navigate(`#/datasets/${encodeURIComponent(d.id)}`);
    } catch (ex) { err.textContent = isMissingRoute(ex) ? 'Datasets are not available on this server yet.' : ex.message; } finally { submit.disabled = false; }
  });
  return form;
}

async function one(ctx, id) {
  const d = await api(`/datasets/${encodeURIComponent(id)}`);
  if (!ctx.alive()) return;
  const c = d.counts || {};
  const page = h('div', { class: 'page' },
    h('div', { class: 'page-head' }, h('a', { href: '#/datasets', class: 'back' }, '← Datasets'), h('h1', null, d.name), readyBadge(d),
      h('span', { class: 'spacer' }),
      button('Download train.jsonl', () => download(d, 'train'), '', { 'data-test': 'download-train' }),
      button('Download validation.jsonl', () => download(d, 'validation'), '', { 'data-test': 'download-validation' }),
      ctx.isAdmin && d.ready_for_training ? h('a', { class: 'btn btn-primary', href: `#/jobs?dataset=${encodeURIComponent(d.id)}` }, 'Fine-tune from this') : null));
  page.append(h('div', { class: 'tiles' },
    ['candidates', 'accepted', 'rejected', 'duplicates', 'train', 'validation'].map((k) => h('div', { class: 'tile' }, h('div', { class: 'tile-label' }, words(k)), h('div', { class: 'tile-value' }, num(c[k]))))));
  page.append(h('div', { class: 'grid-2' },
    card('Snapshot', kv([['Id', h('code', null, d.id)], ['Format', d.format], ['Created', when(d.created_at)], ['Content hash', h('code', null, d.content_hash || dash)],
      ['Coverage', d.coverage ? `${d.coverage.covered} of ${d.coverage.total} threat types${d.coverage.missing?.length ? ` (missing ${d.coverage.missing.map(words).join(', ')})` : ''}` : dash]]),
      d.problems?.length ? h('div', { class: 'problems' }, h('h3', null, 'Problems'), h('ul', null, d.problems.map((p) => h('li', null, typeof p === 'string' ? p : p.message || JSON.stringify(p))))) : null),
    card('By threat type', byType(d))));
  const rejections = d.rejections || [];
  const rejEl = h('div');
  const PAGE = 50;
  const showRejections = (n) => {
    add(clear(rejEl), [table([
      { label: 'Conversation', cell: (r) => h('a', { href: `#/conversations/${encodeURIComponent(r.conversation_id)}` }, r.conversation_id) },
      { label: 'Reason', cell: (r) => r.reason },
    ], rejections.slice(0, n)), n < rejections.length ? button(`Show more (${rejections.length - n} left)`, () => showRejections(n + PAGE)) : null]);
  };
  if (rejections.length) showRejections(PAGE); else rejEl.append(empty('Every candidate was accepted.'));
  page.append(card(`Rejections (${rejections.length})`, rejEl));
  clear(ctx.root).append(page);
}

async function download(d, split) {
  try {
    const res = await fetch(`/admin/api/datasets/${encodeURIComponent(d.id)}/${split}.jsonl`, { headers: { Authorization: `Bearer ${session.key}` } });
    if (!res.ok) {
      let message = `The server answered ${res.status}.`;
      try { message = (await res.json()).error.message; } catch { /* not JSON */ }
      throw new Error(message);
    }
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    const a = h('a', { href: url, download: `${d.name}-${split}.jsonl`, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) { toast(e.message, 'error'); }
}
