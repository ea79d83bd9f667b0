// Performance: metrics over time per version (line charts), offline
// evaluations with their confusion matrices and a side-by-side
// comparison of two versions.

import { api, qs, isMissingRoute } from '../api.js';
import { h, clear, card, table, badge, statusBadge, button, empty, errorBox, loading, toast, when, ago, num, pct, words, dash, field, select, pager } from '../dom.js';
import { lineChart } from '../chart.js';

const HEADLINE = ['accuracy', 'macro_f1', 'weighted_f1', 'precision_high_severity', 'recall_critical'];

export async function render(ctx) {
  if (ctx.parts[0] === 'evaluations' && ctx.parts[1]) return one(ctx, ctx.parts[1]);
  const models = await api('/models').catch(() => ({ data: [] }));
  if (!ctx.alive()) return;
  const aliases = models.data.map((m) => m.alias);
  const alias = ctx.query.get('alias') || aliases[0] || '';
  const page = h('div', { class: 'page' }, h('div', { class: 'page-head' }, h('h1', null, 'Performance'),
    h('span', { class: 'spacer' }), field('Alias', select('alias', aliases.map((a) => [a, a]), alias, { onchange: (e) => ctx.navigate(`#/performance${qs({ alias: e.target.value })}`) }))));
  const charts = h('div', null, loading());
  const evals = h('div');
  page.append(card('Metrics over time', charts));
  if (ctx.isAdmin && alias) page.append(card('Run an evaluation', runForm(ctx, models.data.find((m) => m.alias === alias))));
  page.append(card('Evaluations', evals));
  clear(ctx.root).append(page);

  const targets = ctx.me.evaluation_targets || {};
  api(`/performance${qs({ alias })}`).then((perf) => {
    const data = perf.data || [];
    if (!data.length) { charts.replaceChildren(empty('No evaluation yet: run one to see metrics over time.')); return; }
    const byMetric = new Map();
    for (const p of data) {
      if (!byMetric.has(p.metric)) byMetric.set(p.metric, new Map());
      const m = byMetric.get(p.metric);
      if (!m.has(p.version)) m.set(p.version, []);
      m.get(p.version).push({ at: p.at, y: p.score });
    }
    const order = (m) => (HEADLINE.indexOf(m) + 1 || 99);
    charts.replaceChildren(h('div', { class: 'charts' }, [...byMetric].sort((a, b) => order(a[0]) - order(b[0])).map(([metric, versions]) => lineChart({
      title: words(metric), target: targets[metric], format: (v) => `${Math.round(v * 100)}%`,
      series: [...versions].map(([name, points]) => ({ name, points })),
    }))));
  }, (e) => charts.replaceChildren(isMissingRoute(e) ? empty('No evaluation yet: performance tracking is not available on this server yet.') : errorBox(e)));

  evals.append(pager((cursor) => api(`/evaluations${qs({ alias, cursor, limit: 20 })}`).catch((e) => {
    if (isMissingRoute(e)) throw new Error('Evaluations are not available on this server yet.');
    throw e;
  }), (items, wrap) => {
    if (!items.length) return;
    wrap.insertBefore(table([
      { label: 'Evaluation', cell: (e) => h('a', { href: `#/evaluations/${encodeURIComponent(e.id)}` }, e.id) },
      { label: 'Versions', cell: (e) => (e.versions || Object.keys(e.results || {})).join(', ') || dash },
      { label: 'Dataset', cell: (e) => e.dataset_id ? h('a', { href: `#/datasets/${encodeURIComponent(e.dataset_id)}` }, e.dataset_id) : dash },
      { label: 'Status', cell: (e) => statusBadge(e.status) },
      { label: 'Progress', cell: (e) => e.progress ? `${e.progress.done} / ${e.progress.total}` : dash },
      { label: 'When', cell: (e) => ago(e.created_at || e.at) },
    ], items), wrap.lastChild);
  }, { emptyText: 'No evaluation yet.' }));
}

function runForm(ctx, model) {
  const err = h('div', { class: 'inline-error', role: 'alert' });
  const versions = h('div', { class: 'checks' }, (model?.versions || []).filter((v) => v.state !== 'retired').map((v) =>
    h('label', { class: 'check' }, h('input', { type: 'checkbox', value: v.name, checked: true }), v.name)));
  const dataset = h('input', { name: 'dataset_id', placeholder: 'ds_…', required: true });
  api(`/datasets${qs({ limit: 100 })}`).then((list) => {
    if (!list.data.length) return;
    dataset.replaceWith(select('dataset_id', list.data.map((d) => [d.id, d.name]), list.data[0].id));
  }, () => {});
  const splitSel = select('split', [['validation', 'validation split'], ['all', 'all examples']], 'validation');
  const form = h('form', { class: 'form-row' }, field('Versions', versions), field('Dataset', dataset), field('Examples', splitSel),
    h('button', { type: 'submit', class: 'btn btn-primary' }, 'Run evaluation'), err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.textContent = '';
    const ds = form.querySelector('[name=dataset_id]').value;
    const vs = [...versions.querySelectorAll('input:checked')].map((i) => i.value);
    try {
      const ev = await api('/evaluations', { method: 'POST', body: { alias: model.alias, versions: vs, dataset_id: ds, split: splitSel.value } });
      toast(`Evaluation ${ev.id} queued.`, 'good');
      ctx.navigate(`#/evaluations/${encodeURIComponent(ev.id)}`);
    } catch (ex) { err.textContent = isMissingRoute(ex) ? 'Evaluations are not available on this server yet.' : ex.message; }
  });
  return form;
}

async function one(ctx, id) {
  let timer = null;
  const el = h('div', { class: 'page' });
  clear(ctx.root).append(el);
  const poll = async () => {
    try {
      const ev = await api(`/evaluations/${encodeURIComponent(id)}`);
      if (!ctx.alive()) return;
      draw(ctx, el, ev);
      if (ev.status === 'queued' || ev.status === 'running') timer = setTimeout(poll, 1500);
    } catch (e) { if (ctx.alive()) el.replaceChildren(errorBox(e)); }
  };
  await poll();
  return () => clearTimeout(timer);
}

function draw(ctx, el, ev) {
  const versions = Object.keys(ev.results || {});
  const targets = ev.targets || {};
  const head = h('div', { class: 'page-head' }, h('a', { href: `#/performance${qs({ alias: ev.alias })}`, class: 'back' }, '← Performance'), h('h1', null, ev.id), statusBadge(ev.status),
    ev.progress ? h('span', { class: 'muted' }, `${ev.progress.done} / ${ev.progress.total} examples`) : null);
  if (!versions.length) { el.replaceChildren(head, empty(ev.status === 'failed' ? `The evaluation failed${ev.error ? `: ${ev.error.message || ev.error}` : '.'}` : 'Results appear here when the evaluation finishes.')); return; }
  const summary = table([
    { label: 'Metric', cell: (m) => words(m) },
    ...versions.map((v) => ({ label: v, class: 'num', cell: (m) => metricCell(ev.results[v][m], targets[m]) })),
    { label: 'Target', class: 'num', cell: (m) => targets[m] ? pct(targets[m].target, 0) : dash },
  ], HEADLINE);
  const a = h('div');
  const pickA = select('a', versions.map((v) => [v, v]), versions[0]);
  const pickB = select('b', versions.map((v) => [v, v]), versions[1] || versions[0]);
  const side = () => a.replaceChildren(sideBySide(ev, pickA.value, pickB.value));
  pickA.addEventListener('change', side);
  pickB.addEventListener('change', side);
  side();
  el.replaceChildren(head,
    card(`Results on ${ev.results[versions[0]].n ?? '?'} examples of ${ev.dataset_id}`, summary),
    card('Side by side', h('div', { class: 'row' }, field('Version A', pickA), field('Version B', pickB)), a),
    ...versions.map((v) => card(`Confusion matrix · ${v}`, confusion(ev.results[v].confusion))));
}

function metricCell(value, target) {
  const met = target && value != null ? value >= target.target : null;
  return h('span', { class: met === null ? '' : met ? 'good-text' : 'bad-text' }, pct(value));
}

function sideBySide(ev, va, vb) {
  const A = ev.results[va], B = ev.results[vb];
  // Threat types neither labelled nor predicted in this run say nothing.
  const seen = (r, l) => r.per_class?.[l] && (r.per_class[l].support > 0 || r.per_class[l].f1 != null);
  const labels = [...new Set([...Object.keys(A.per_class || {}), ...Object.keys(B.per_class || {})])].filter((l) => seen(A, l) || seen(B, l));
  const delta = (x, y) => (x == null || y == null ? dash : `${y - x >= 0 ? '+' : ''}${((y - x) * 100).toFixed(1)} pts`);
  const cmp = ev.comparison && ev.comparison.versions?.includes(va) && ev.comparison.versions?.includes(vb) ? ev.comparison : null;
  return h('div', null,
    table([
      { label: 'Metric', cell: (m) => words(m) },
      { label: va, class: 'num', cell: (m) => pct(A[m]) },
      { label: vb, class: 'num', cell: (m) => pct(B[m]) },
      { label: 'B − A', class: 'num', cell: (m) => delta(A[m], B[m]) },
    ], HEADLINE),
    labels.length ? h('h3', null, 'F1 per threat type') : null,
    labels.length ? table([
      { label: 'Threat type', cell: (l) => words(l) },
      { label: `${va} F1`, class: 'num', cell: (l) => pct(A.per_class?.[l]?.f1) },
      { label: `${vb} F1`, class: 'num', cell: (l) => pct(B.per_class?.[l]?.f1) },
      { label: 'Support', class: 'num', cell: (l) => num(A.per_class?.[l]?.support ?? B.per_class?.[l]?.support) },
    ], labels) : null,
    cmp ? h('p', null, `On ${cmp.n ?? '?'} examples: only ${cmp.versions[0]} right on ${cmp.only_a_correct ?? '?'}, only ${cmp.versions[1]} right on ${cmp.only_b_correct ?? '?'}; McNemar's ${cmp.exact ? 'exact ' : ''}test p = ${cmp.mcnemar_p == null ? dash : num(cmp.mcnemar_p, 4)}.`) : null,
    cmp && cmp.disagreements?.length ? table([
      { label: 'Conversation', cell: (d) => h('a', { href: `#/conversations/${encodeURIComponent(d.conversation_id)}` }, d.conversation_id) },
      { label: 'Expected', cell: (d) => words(d.expected) },
      { label: va, cell: (d) => words(d.predicted?.[va]) },
      { label: vb, cell: (d) => words(d.predicted?.[vb]) },
    ], cmp.disagreements.slice(0, 50)) : null);
}

function confusion(c) {
  if (!c || !c.labels?.length) return empty('No confusion matrix.');
  const width = Math.max(c.labels.length, ...c.matrix.map((r) => r.length));
  const cols = Array.from({ length: width }, (_, j) => c.labels[j] ?? 'none');
  const rows = c.matrix.map((r, i) => [c.labels[i] ?? 'none', r]);
  const max = Math.max(1, ...c.matrix.flat());
  return h('div', { class: 'table-wrap' }, h('table', { class: 'confusion' },
    h('thead', null, h('tr', null, h('th', { class: 'corner' }, 'labelled ↓ / predicted →'), cols.map((l) => h('th', { scope: 'col' }, words(l))))),
    h('tbody', null, rows.map(([label, row]) => h('tr', null, h('th', { scope: 'row' }, words(label)), cols.map((col, j) => {
      const n = row[j] ?? 0;
      const td = h('td', { class: label === col ? 'diag' : 'off', title: `${n} labelled ${label}, predicted ${col}` }, String(n));
      if (n > 0) td.style.setProperty('--heat', (0.15 + 0.85 * (n / max)).toFixed(2));
      else td.classList.add('zero');
      if (n / max > 0.55) td.classList.add('hot');
      return td;
    }))))));
}
