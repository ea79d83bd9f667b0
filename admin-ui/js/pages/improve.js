// Improve the model: the loop from approved conversations to a better model
// in production, one step after another — a dataset of the approved
// conversations, a fine-tune of production's model on it, an evaluation of
// the candidate against production on the held-out split, and a promotion
// that evaluation gating lets through only if the candidate is better.
// Each step shows what the one before produced. What has been done so far
// lives in the address (`#/improve?alias=&dataset=&job=&evaluation=`), so
// a reload picks up where it was.

import { api, qs, ApiError } from '../api.js';
import { h, clear, card, table, badge, statusBadge, button, empty, errorBox, toast, askReason, num, pct, words, dash } from '../dom.js';

const JOB_DONE = new Set(['succeeded', 'failed', 'cancelled']);
const EVAL_DONE = new Set(['succeeded', 'failed']);

export async function render(ctx) {
  const models = await api('/models');
  if (!ctx.alive()) return;
  const aliasName = ctx.query.get('alias') || models.data[0]?.alias;
  const model = models.data.find((m) => m.alias === aliasName);
  const el = h('div', { class: 'page' });
  clear(ctx.root).append(el);
  if (!model) { el.append(h('h1', null, 'Improve the model'), empty('No model alias is configured.')); return; }
  let timer = null;
  const go = (more) => {
    const q = { alias: model.alias, dataset: ctx.query.get('dataset'), job: ctx.query.get('job'), evaluation: ctx.query.get('evaluation'), ...more };
    ctx.navigate(`#/improve${qs(q)}`);
  };
  const refresh = async () => {
    try {
      const state = await load(model.alias, ctx.query);
      if (!ctx.alive()) return;
      el.replaceChildren(...draw(ctx, state, go));
      const busy = (state.job && !JOB_DONE.has(state.job.status)) || (state.evaluation && !EVAL_DONE.has(state.evaluation.status));
      if (busy) timer = setTimeout(refresh, 1000);
    } catch (e) { if (ctx.alive()) el.replaceChildren(errorBox(e)); }
  };
  await refresh();
  return () => clearTimeout(timer);
}

/** Everything the steps show, read fresh from the admin API. */
async function load(alias, query) {
  const get = (path) => (path ? api(path) : Promise.resolve(null));
  const [model, stats, dataset, job, evaluation] = await Promise.all([
    api(`/models/${encodeURIComponent(alias)}`),
    api('/stats'),
    get(query.get('dataset') && `/datasets/${encodeURIComponent(query.get('dataset'))}`),
    get(query.get('job') && `/fine-tuning/jobs/${encodeURIComponent(query.get('job'))}`),
    get(query.get('evaluation') && `/evaluations/${encodeURIComponent(query.get('evaluation'))}`),
  ]);
  const candidate = job?.registered_version;
  const gate = candidate && evaluation?.status === 'succeeded' && model.production !== candidate
    ? await api(`/models/${encodeURIComponent(alias)}/gate${qs({ version: candidate })}`)
    : null;
  return { model, stats, dataset, job, evaluation, candidate, gate };
}

function step(n, title, stateName, ...body) {
  return h('section', { class: `card guide-step guide-${stateName}`, 'data-step': String(n), 'data-state': stateName },
    h('div', { class: 'card-head' }, h('span', { class: 'guide-num' }, String(n)), h('h2', { class: 'card-title' }, title), badge(words(stateName), { done: 'good', current: 'info', waiting: 'neutral' }[stateName])),
    ...body);
}

function draw(ctx, s, go) {
  const { model, stats, dataset, job, evaluation, candidate, gate } = s;
  const production = model.production;
  const prodModel = model.versions.find((v) => v.name === production)?.model;
  const promoted = candidate && production === candidate;
  const adminOnly = ctx.isAdmin ? {} : { disabled: true, title: 'Needs an admin key' };
  const fail = (e) => toast(e instanceof ApiError ? e.message : String(e), 'error');

  // 1. Dataset
  const dsDone = !!dataset;
  const build = button('Build the dataset', async (e) => {
    e.target.disabled = true;
    try {
      const stamp = new Date().toISOString().slice(0, 16).replace('T', ' ');
      const d = await api('/datasets', { method: 'POST', body: { name: `${model.alias} ${stamp}`, format: 'sft', filter: { status: 'approved', alias: model.alias } } });
      go({ dataset: d.id, job: null, evaluation: null });
    } catch (ex) { e.target.disabled = false; fail(ex); }
  }, dsDone ? '' : 'primary', { 'data-test': 'improve-dataset', ...adminOnly });
  const one = step(1, 'A dataset of the approved conversations', dsDone ? 'done' : 'current',
    h('p', null, `${num(stats.approved)} conversations are approved for training. They become examples — the analyst's correction where there is one, else the answer as given — `,
      '80 % to fine-tune on, 20 % held out to evaluate on.'),
    dataset ? datasetSummary(dataset) : null,
    dsDone && dataset.ready_for_training ? null : h('div', { class: 'row' }, build));

  // 2. Fine-tune
  const ready = dataset?.ready_for_training;
  const jobOk = job?.status === 'succeeded';
  const start = button('Start fine-tuning', async (e) => {
    e.target.disabled = true;
    try {
      const j = await api('/fine-tuning/jobs', { method: 'POST', body: { alias: model.alias, dataset_id: dataset.id, suffix: 'improved' } });
      go({ job: j.id, evaluation: null });
    } catch (ex) { e.target.disabled = false; fail(ex); }
  }, 'primary', { 'data-test': 'improve-finetune', ...adminOnly });
  const two = step(2, `Fine-tune ${prodModel ? `${prodModel} (production: ${production})` : production}`, jobOk ? 'done' : ready ? 'current' : 'waiting',
    ready ? h('p', null, `On the ${num(dataset.counts?.train)} training examples of `, h('a', { href: `#/datasets/${encodeURIComponent(dataset.id)}` }, dataset.name), '. The fine-tuned model becomes a candidate version, without traffic.')
      : h('p', { class: 'muted' }, 'Needs a dataset that is ready for training.'),
    job ? jobSummary(job) : null,
    ready && (!job || job.status === 'failed' || job.status === 'cancelled') ? h('div', { class: 'row' }, start) : null);

  // 3. Evaluate
  const evalOk = evaluation?.status === 'succeeded';
  const evaluate = button(`Evaluate ${candidate} against ${production}`, async (e) => {
    e.target.disabled = true;
    try {
      const ev = await api('/evaluations', { method: 'POST', body: { alias: model.alias, versions: [production, candidate], dataset_id: dataset.id, split: 'validation' } });
      go({ evaluation: ev.id });
    } catch (ex) { e.target.disabled = false; fail(ex); }
  }, 'primary', { 'data-test': 'improve-evaluate', ...adminOnly });
  const three = step(3, 'Evaluate it against production', evalOk ? 'done' : jobOk ? 'current' : 'waiting',
    jobOk ? h('p', null, `Both `, h('strong', null, candidate), ` and production `, h('strong', null, production), ` answer the ${num(dataset?.counts?.validation)} held-out conversations; their answers are scored against the analysts' labels.`)
      : h('p', { class: 'muted' }, 'Needs the fine-tuned candidate.'),
    evaluation ? evaluationSummary(evaluation) : null,
    jobOk && !promoted && (!evaluation || evaluation.status === 'failed') ? h('div', { class: 'row' }, evaluate) : null);

  // 4. Promote
  const four = step(4, 'Promote it if it is better', promoted ? 'done' : evalOk ? 'current' : 'waiting',
    promoted ? h('div', { class: 'state state-good', 'data-test': 'improve-done' },
      h('strong', null, `${candidate} is production of ${model.alias} and serves all of its traffic.`),
      h('span', null, 'The ', h('a', { href: '#/overview' }, 'Overview'), ' shows its accuracy; ', h('a', { href: `#/models/${encodeURIComponent(model.alias)}` }, 'Models'), ' can roll it back.'))
      : evalOk && gate ? promoteStep(ctx, model, candidate, gate, go, adminOnly, fail)
        : h('p', { class: 'muted' }, 'Needs the evaluation against production.'));
  return [h('div', { class: 'page-head' }, h('a', { href: '#/overview', class: 'back' }, '← Overview'), h('h1', null, `Improve ${model.alias}`),
    h('span', { class: 'muted' }, 'from approved conversations to a better model in production')), one, two, three, four];
}

function datasetSummary(d) {
  const c = d.counts || {};
  const reasons = new Map();
  for (const r of d.rejections || []) reasons.set(r.reason, (reasons.get(r.reason) || 0) + 1);
  return h('div', { 'data-test': 'improve-dataset-summary' },
    h('p', null, h('a', { href: `#/datasets/${encodeURIComponent(d.id)}` }, d.name), ' ', d.ready_for_training ? badge('ready for training', 'good') : badge('not ready', 'bad'),
      ` ${num(c.accepted)} examples: ${num(c.train)} to train on, ${num(c.validation)} held out; ${num(c.rejected)} rejected, ${num(c.duplicates)} duplicates.`),
    d.problems?.length ? h('ul', { class: 'problems' }, d.problems.map((p) => h('li', null, p))) : null,
    reasons.size ? h('p', { class: 'muted small' }, 'Rejected: ', [...reasons].map(([r, n]) => `${r} (${n})`).join('; ')) : null);
}

function jobSummary(j) {
  const m = j.metrics || {};
  return h('div', { 'data-test': 'improve-job' },
    h('p', null, h('a', { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id), ' ', statusBadge(j.status),
      m.step != null && m.total_steps ? ` step ${m.step} of ${m.total_steps}` : '',
      m.full_valid_accuracy != null ? ` · validation accuracy while training ${pct(m.full_valid_accuracy)}` : ''),
    j.registered_version ? h('p', null, 'Registered as candidate ', h('strong', { 'data-test': 'improve-candidate' }, j.registered_version), '.') : null,
    j.error ? h('div', { class: 'state state-error' }, j.error.message || String(j.error)) : null);
}

function evaluationSummary(ev) {
  const head = h('p', null, h('a', { href: `#/evaluations/${encodeURIComponent(ev.id)}` }, ev.id), ' ', statusBadge(ev.status),
    ev.progress ? ` ${ev.progress.done} of ${ev.progress.total} answers` : '');
  if (ev.status !== 'succeeded') return h('div', null, head, ev.error ? h('div', { class: 'state state-error' }, String(ev.error)) : null);
  const versions = ev.versions || Object.keys(ev.results || {});
  const c = ev.comparison;
  return h('div', { 'data-test': 'improve-evaluation' }, head,
    table([
      { label: 'Version', cell: (v) => h('strong', null, v) },
      { label: 'Accuracy', class: 'num', cell: (v) => pct(ev.results[v]?.accuracy) },
      { label: 'Macro-F1', class: 'num', cell: (v) => pct(ev.results[v]?.macro_f1) },
      { label: 'Examples', class: 'num', cell: (v) => num(ev.results[v]?.n) },
    ], versions, { rowAttrs: (v) => ({ dataset: { version: v } }) }),
    c ? h('p', { class: 'muted small' }, `Right where the other was wrong: ${c.versions[0]} ${c.only_a_correct ?? dash}, ${c.versions[1]} ${c.only_b_correct ?? dash}; McNemar p = ${c.mcnemar_p == null ? dash : num(c.mcnemar_p, 3)}.`) : null);
}

/** The gate's verdict beside the promote button; a refusal can be
 * overridden only as a second, deliberate step. */
function promoteStep(ctx, model, candidate, gate, go, adminOnly, fail) {
  const reason = h('input', { name: 'reason', 'aria-label': 'Reason for the promotion', maxlength: 1000, value: defaultReason(gate), disabled: !ctx.isAdmin });
  const promote = async (force) => {
    const body = { version: candidate, reason: reason.value.trim() };
    if (!body.reason) { reason.focus(); toast('Give a reason: it is kept in the history.', 'error'); return; }
    if (force) body.force = true;
    try {
      await api(`/models/${encodeURIComponent(model.alias)}/promote`, { method: 'POST', body, headers: { 'If-Match': String(model.revision) } });
      toast(`${candidate} is production.`, 'good');
      go({});
    } catch (e) { fail(e); }
  };
  const verdict = gateVerdict(gate);
  if (gate.allowed) {
    return h('div', null, verdict,
      h('div', { class: 'row' }, reason, button(`Promote ${candidate}`, () => promote(false), 'primary', { 'data-test': 'improve-promote', ...adminOnly })));
  }
  const second = h('div', { class: 'row', hidden: true },
    button('Promote anyway (forced, audited)…', async () => {
      const why = await askReason(`Force ${candidate} into production`,
        `Evaluation gating refuses this promotion. ${gate.message} Forcing it makes ${candidate} production all the same; the audit log records it as a forced promotion with your reason.`, 'Force the promotion');
      if (!why) return;
      reason.value = why;
      promote(true);
    }, 'bad', { 'data-test': 'improve-force', ...adminOnly }));
  return h('div', null, verdict,
    h('div', { class: 'row' }, reason, button(`Promote ${candidate}`, () => { second.hidden = false; toast('Gating refuses this promotion; see why above.', 'error'); }, 'primary', { 'data-test': 'improve-promote', ...adminOnly })),
    second);
}

function defaultReason(gate) {
  const a = gate.candidate, b = gate.production_figures;
  if (!a || !b) return '';
  return `Evaluated against ${gate.production}: accuracy ${pct(a.accuracy)} vs ${pct(b.accuracy)}, macro-F1 ${pct(a.macro_f1)} vs ${pct(b.macro_f1)}`;
}

/** What gating says of a candidate: the verdict, both versions' figures
 * and McNemar's p. */
function gateVerdict(gate) {
  const a = gate.candidate, b = gate.production_figures;
  const figures = a ? table([
    { label: 'Version', cell: (r) => h('strong', null, r[0]) },
    { label: 'Accuracy', class: 'num', cell: (r) => pct(r[1]?.accuracy) },
    { label: 'Macro-F1', class: 'num', cell: (r) => pct(r[1]?.macro_f1) },
  ], [[gate.version, a], [gate.production, b]]) : null;
  const kind = !gate.gated ? 'neutral' : gate.allowed ? 'good' : 'bad';
  const text = !gate.gated ? 'promotions are not gated' : gate.allowed ? (gate.beats_production ? `beats ${gate.production}` : 'passes the gate') : 'gated';
  return h('div', { class: 'gate', 'data-test': `gate-${gate.version}`, 'data-allowed': String(gate.allowed) },
    h('p', null, badge(text, kind), ' ', gate.message,
      gate.mcnemar_p != null ? ` McNemar p = ${num(gate.mcnemar_p, 3)}.` : ''),
    figures);
}
