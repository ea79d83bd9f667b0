// Models: every alias with its versions; one alias's traffic editor
// (If-Match on the alias revision), promotion — beside each candidate's
// button, what evaluation gating says of it (against production, with
// McNemar's p), and overriding a refusal only as a second, deliberate
// step — rollback with a reason, the online experiment and the history.

import { api, qs, ApiError, isMissingRoute } from '../api.js';
import { h, clear, card, table, badge, statusBadge, button, empty, errorBox, loading, toast, askReason, when, ago, num, pct, ms, interval, words, dash, field, kv } from '../dom.js';

export async function render(ctx) {
  if (ctx.parts[1]) return alias(ctx, ctx.parts[1]);
  const list = await api('/models');
  if (!ctx.alive()) return;
  const page = h('div', { class: 'page' }, h('div', { class: 'page-head' }, h('h1', null, 'Models')));
  if (list.data.length === 0) page.append(empty('No model alias is configured.'));
  for (const m of list.data) {
    page.append(card(null,
      h('div', { class: 'card-head' }, h('h2', { class: 'card-title' }, h('a', { href: `#/models/${encodeURIComponent(m.alias)}` }, m.alias)),
        h('span', { class: 'muted' }, `${words(m.model_type)} · production ${m.production} · revision ${m.revision}`)),
      versionsTable(m.versions)));
  }
  clear(ctx.root).append(page);
}

function versionsTable(versions) {
  return table([
    { label: 'Version', cell: (v) => h('strong', null, v.name) },
    { label: 'State', cell: (v) => statusBadge(v.state) },
    { label: 'Model', cell: (v) => h('code', null, v.model) },
    { label: 'Provider', cell: (v) => v.provider },
    { label: 'Origin', cell: (v) => v.origin?.startsWith('job_') ? h('a', { href: `#/jobs/${encodeURIComponent(v.origin)}` }, v.origin) : v.origin },
    { label: 'Traffic', class: 'num', cell: (v) => `${v.weight} %${v.shadow ? ' · shadow' : ''}` },
    { label: 'Created', cell: (v) => ago(v.created_at) },
  ], versions);
}

async function alias(ctx, name) {
  const m = await api(`/models/${encodeURIComponent(name)}`);
  if (!ctx.alive()) return;
  const page = h('div', { class: 'page' });
  const reload = () => ctx.navigate(`#/models/${encodeURIComponent(name)}`);
  page.append(h('div', { class: 'page-head' },
    h('a', { href: '#/models', class: 'back' }, '← Models'),
    h('h1', null, m.alias), statusBadge('production'), h('span', null, m.production),
    h('span', { class: 'muted' }, `revision ${m.revision}${m.previous_production ? ` · before: ${m.previous_production}` : ''}`),
    h('span', { class: 'spacer' }),
    button('Roll back', async () => {
      const reason = await askReason(`Roll back ${m.alias}`, m.previous_production
        ? `${m.previous_production} becomes production again at 100 %, ${m.production} is retired.`
        : 'There is no earlier production version to go back to; the server will refuse.', 'Roll back');
      if (!reason) return;
      try {
        const r = await api(`/models/${encodeURIComponent(m.alias)}/rollback`, { method: 'POST', body: { reason }, headers: { 'If-Match': String(m.revision) } });
        toast(`Rolled back: ${r.production} is production.`, 'good');
        reload();
      } catch (e) { toast(conflictWords(e), 'error'); }
    }, 'bad', { disabled: !ctx.isAdmin, title: ctx.isAdmin ? 'Restore the previous production version' : 'Needs an admin key', 'data-test': 'rollback' })));

  page.append(card('Versions and traffic', trafficEditor(ctx, m, reload)));
  const experiment = h('div', null, loading());
  const history = h('div', null, loading());
  page.append(card('Online experiment', experiment), card('History', history));
  if (ctx.isAdmin) page.append(card('Register a version', registerForm(m, reload)));
  clear(ctx.root).append(page);

  api(`/models/${encodeURIComponent(name)}/experiment`).then((x) => experiment.replaceChildren(experimentView(x)), (e) => experiment.replaceChildren(errorBox(e)));
  const historyRows = (items) => table([
    { label: 'When', class: 'nowrap', cell: (r) => h('span', { title: when(r.at) }, ago(r.at)) },
    { label: 'Action', cell: (r) => r.forced ? badge(`${r.action} (forced)`, 'bad') : badge(r.action, r.action === 'rollback' || r.action === 'guardrail' ? 'bad' : r.action === 'promote' ? 'good' : 'neutral') },
    { label: 'By', class: 'nowrap', cell: (r) => r.actor },
    { label: 'Change', cell: (r) => r.from || r.to ? `${r.from ?? dash} → ${r.to ?? dash}` : dash },
    { label: 'Traffic after', cell: (r) => r.weights ? Object.entries(r.weights).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v} %`).join(', ') || dash : dash },
    { label: 'Reason', cell: (r) => r.reason || dash },
  ], items);
  api(`/models/${encodeURIComponent(name)}/history${qs({ limit: 20 })}`).then((page1) => {
    history.replaceChildren(page1.data.length ? historyRows(page1.data) : empty('No history yet.'));
  }, (e) => history.replaceChildren(errorBox(e)));
}

function conflictWords(e) {
  if (e instanceof ApiError && e.status === 409 && e.code === 'conflict') {
    return `Conflict: ${e.message} Someone changed this alias after you opened it — reload to see the current state, then try again.`;
  }
  if (e instanceof ApiError && e.code === 'promotion_gated') {
    const failing = (e.details.failing || []).map((f) => `${words(f.metric)} ${pct(f.value)} (needs ${f.against === 'production' ? 'to beat production at' : ''} ${pct(f.target)})`);
    return `Promotion refused by evaluation gating: ${e.message}${failing.length ? ` — ${failing.join('; ')}` : ''}`;
  }
  return e.message;
}

function trafficEditor(ctx, m, reload) {
  const inputs = new Map();
  const shadows = new Map();
  const total = h('strong', { class: 'total' });
  const errorEl = h('div', { class: 'inline-error', role: 'alert' });
  const reason = h('input', { name: 'reason', placeholder: 'Why this change? (required)', maxlength: 1000, disabled: !ctx.isAdmin, 'aria-label': 'Reason for the traffic change' });
  const sum = () => {
    const t = [...inputs.values()].reduce((a, i) => a + (Number(i.value) || 0), 0);
    total.textContent = `${Math.round(t * 100) / 100} %`;
    total.classList.toggle('bad-text', Math.abs(t - 100) > 0.001);
  };
  const rows = m.versions.map((v) => {
    const input = h('input', { type: 'number', min: 0, max: 100, step: 0.01, value: String(v.weight), class: 'weight', disabled: !ctx.isAdmin, 'aria-label': `Weight of ${v.name}`, oninput: sum, dataset: { version: v.name } });
    const shadow = h('input', { type: 'checkbox', checked: !!v.shadow, disabled: !ctx.isAdmin, 'aria-label': `${v.name} as shadow` });
    inputs.set(v.name, input);
    shadows.set(v.name, shadow);
    return v;
  });
  sum();
  // What gating says of each candidate, fetched once the table is shown.
  const gates = new Map();
  const verdictCells = new Map();
  const forceRows = new Map();
  const verdictCell = (v) => {
    if (v.state === 'production') return h('span', { class: 'muted' }, dash);
    const cell = h('span', { class: 'muted small', 'data-test': `verdict-${v.name}` }, '…');
    verdictCells.set(v.name, cell);
    return cell;
  };
  const forced = (v) => async () => {
    const gate = gates.get(v.name);
    const r = await askReason(`Force ${v.name} into production`,
      `Evaluation gating refuses this promotion.${gate ? ` ${gate.message}` : ''} Forcing it makes ${v.name} production of ${m.alias} all the same; the audit log records it as a forced promotion, with your reason.`, 'Force the promotion');
    if (!r) return;
    try {
      const res = await api(`/models/${encodeURIComponent(m.alias)}/promote`, { method: 'POST', body: { version: v.name, reason: r, force: true }, headers: { 'If-Match': String(m.revision) } });
      toast(`${res.production} is production (forced past gating).`, 'good');
      reload();
    } catch (e) { errorEl.textContent = conflictWords(e); toast(conflictWords(e), 'error'); }
  };
  const refuse = (v, message) => {
    errorEl.textContent = message;
    forceRows.get(v.name)?.removeAttribute('hidden');
    toast(message, 'error');
  };
  const promote = (v) => async () => {
    errorEl.textContent = '';
    const gate = gates.get(v.name);
    // A refusal is shown first; forcing it is a separate button.
    if (gate && !gate.allowed) { refuse(v, `Promotion refused by evaluation gating: ${gate.message}`); return; }
    const r = await askReason(`Promote ${v.name}`, `${v.name} becomes production of ${m.alias} at 100 % of traffic; ${m.production} is retired and kept for rollback.`, 'Promote');
    if (!r) return;
    try {
      const res = await api(`/models/${encodeURIComponent(m.alias)}/promote`, { method: 'POST', body: { version: v.name, reason: r }, headers: { 'If-Match': String(m.revision) } });
      toast(`${res.production} is production.`, 'good');
      reload();
    } catch (e) {
      if (e instanceof ApiError && e.code === 'promotion_gated') refuse(v, conflictWords(e));
      else { errorEl.textContent = conflictWords(e); toast(conflictWords(e), 'error'); }
    }
  };
  const actions = (v) => {
    if (v.state === 'production') return h('span', { class: 'muted' }, 'production');
    const force = button('Promote anyway…', forced(v), 'bad small', { hidden: true, disabled: !ctx.isAdmin, title: 'Promote past evaluation gating (audited as forced)', 'data-test': `force-${v.name}` });
    forceRows.set(v.name, force);
    return h('span', { class: 'row' },
      button('Promote', promote(v), 'primary small', { disabled: !ctx.isAdmin, title: ctx.isAdmin ? `Make ${v.name} production` : 'Needs an admin key', 'data-test': `promote-${v.name}` }),
      force);
  };
  const tbl = table([
    { label: 'Version', cell: (v) => h('strong', null, v.name) },
    { label: 'State', cell: (v) => statusBadge(v.state) },
    { label: 'Model', cell: (v) => h('code', null, v.model) },
    { label: 'Origin', cell: (v) => v.origin?.startsWith('job_') ? h('a', { href: `#/jobs/${encodeURIComponent(v.origin)}` }, v.origin) : v.origin },
    { label: 'Weight %', cell: (v) => inputs.get(v.name) },
    { label: 'Shadow', cell: (v) => shadows.get(v.name) },
    { label: 'Evaluation vs production', cell: verdictCell },
    { label: '', cell: actions },
  ], rows, { rowAttrs: (v) => ({ dataset: { version: v.name } }) });
  for (const [name, cell] of verdictCells) {
    api(`/models/${encodeURIComponent(m.alias)}/gate${qs({ version: name })}`).then((gate) => {
      gates.set(name, gate);
      cell.replaceChildren(compactVerdict(gate));
    }, (e) => cell.replaceChildren(isMissingRoute(e) ? 'not available' : e.message));
  }
  const save = button('Save traffic', async () => {
    errorEl.textContent = '';
    const weights = {};
    for (const [k, i] of inputs) weights[k] = Number(i.value) || 0;
    const shadow = [...shadows].filter(([, c]) => c.checked).map(([k]) => k);
    if (!reason.value.trim()) { errorEl.textContent = 'Give a reason: it is kept in the history.'; reason.focus(); return; }
    try {
      await api(`/models/${encodeURIComponent(m.alias)}/traffic`, { method: 'PUT', body: { weights, shadow, reason: reason.value.trim() }, headers: { 'If-Match': String(m.revision) } });
      toast('Traffic saved.', 'good');
      reload();
    } catch (e) { errorEl.textContent = conflictWords(e); }
  }, 'primary', { disabled: !ctx.isAdmin, 'data-test': 'save-traffic' });
  return h('div', { class: 'traffic-editor' }, tbl,
    h('div', { class: 'row' }, h('span', null, 'Total: ', total), reason, save),
    ctx.isAdmin ? null : h('p', { class: 'muted' }, 'Changing traffic, promoting and rolling back need an admin key.'),
    errorEl);
}

/** A candidate's gate verdict in a table cell: the badge, the figures
 * against production and McNemar's p; the whole message on hover. */
function compactVerdict(gate) {
  const a = gate.candidate, b = gate.production_figures;
  const kind = !gate.gated ? 'neutral' : gate.allowed ? 'good' : 'bad';
  const label = !a ? 'no evaluation' : gate.beats_production ? `beats ${gate.production}` : gate.allowed ? 'passes' : `does not beat ${gate.production}`;
  const figures = a ? ` accuracy ${pct(a.accuracy)} vs ${pct(b?.accuracy)}, macro-F1 ${pct(a.macro_f1)} vs ${pct(b?.macro_f1)}${gate.mcnemar_p != null ? `, McNemar p = ${num(gate.mcnemar_p, 3)}` : ''}` : '';
  return h('span', { title: gate.message, 'data-allowed': String(gate.allowed) }, badge(label, kind), figures,
    gate.gated && !gate.allowed ? h('span', { class: 'muted' }, ' · promotion gated') : '');
}

function experimentView(x) {
  if (!x.versions?.length) return empty('No traffic measured yet.');
  const versions = table([
    { label: 'Version', cell: (v) => h('span', null, h('strong', null, v.name), v.shadow ? ' (shadow)' : '', ' ', statusBadge(v.state)) },
    { label: 'Requests', class: 'num', cell: (v) => num(v.requests) },
    { label: 'Error rate', class: 'num', cell: (v) => h('span', null, pct(v.error_rate), h('span', { class: 'ci' }, interval(v.error_rate_ci95, (y) => pct(y)))) },
    { label: 'Latency p50 / p95', class: 'num', cell: (v) => `${ms(v.latency_ms?.p50)} / ${ms(v.latency_ms?.p95)}` },
    { label: 'Mean rating', class: 'num', cell: (v) => h('span', null, v.ratings?.mean == null ? dash : num(v.ratings.mean, 2), h('span', { class: 'ci' }, interval(v.ratings?.ci95)), h('span', { class: 'muted small' }, ` n=${v.ratings?.n ?? 0}`)) },
    { label: 'Thumbs up', class: 'num', cell: (v) => h('span', null, pct(v.thumbs?.up_rate), h('span', { class: 'ci' }, interval(v.thumbs?.up_rate_ci95, (y) => pct(y)))) },
    { label: 'Label agreement', class: 'num', cell: (v) => h('span', null, pct(v.label_agreement), h('span', { class: 'ci' }, interval(v.label_agreement_ci95, (y) => pct(y)))) },
    { label: 'Tokens', class: 'num', cell: (v) => num(v.tokens) },
  ], x.versions);
  const comparisons = x.comparisons?.length ? table([
    { label: 'Candidate', cell: (c) => `${c.candidate}${c.shadow ? ' (shadow)' : ''}` },
    { label: 'vs', cell: (c) => c.production },
    { label: 'Metric', cell: (c) => words(c.metric) },
    { label: 'Candidate', class: 'num', cell: (c) => fmtMetric(c.metric, c.candidate_value) },
    { label: 'Production', class: 'num', cell: (c) => fmtMetric(c.metric, c.production_value) },
    { label: 'p', class: 'num', cell: (c) => c.p_value == null ? dash : num(c.p_value, 3) },
    { label: 'Verdict', cell: (c) => statusBadge(c.verdict) },
  ], x.comparisons) : empty('No candidate has data to compare with production yet.');
  return h('div', null, h('p', { class: 'muted' }, `95 % intervals. Verdicts from a sequential test at α = ${x.alpha ?? 0.05}, valid however often you look.`), versions,
    h('h3', null, 'Candidate vs production'), comparisons);
}

function fmtMetric(metric, v) { return metric === 'mean_rating' ? (v == null ? dash : num(v, 2)) : pct(v); }

function registerForm(m, reload) {
  const name = h('input', { name: 'name', placeholder: 'e.g. ft2', required: true });
  const provider = h('input', { name: 'provider', value: m.versions[0]?.provider || '', required: true });
  const model = h('input', { name: 'model', placeholder: 'provider model name', required: true });
  const err = h('div', { class: 'inline-error', role: 'alert' });
  const form = h('form', { class: 'form-row' }, field('Name', name), field('Provider', provider), field('Model', model),
    h('button', { type: 'submit', class: 'btn' }, 'Register as candidate'), err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.textContent = '';
    try {
      await api(`/models/${encodeURIComponent(m.alias)}/versions`, { method: 'POST', body: { name: name.value.trim(), provider: provider.value.trim(), model: model.value.trim() } });
      toast('Version registered.', 'good');
      reload();
    } catch (ex) { err.textContent = ex.message; }
  });
  return h('div', null, form, kv([]));
}
