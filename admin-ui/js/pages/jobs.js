// Fine-tuning: start a job from a dataset, follow its status, progress
// and events, cancel it; on Azure, register the deployment of a job
// awaiting one, and delete a deployment its version no longer needs; for a
// self-hosted trainer's job, unload its adapter from the servers.

import { api, qs, isMissingRoute } from '../api.js';
import { h, clear, card, table, badge, statusBadge, button, empty, errorBox, toast, when, ago, num, words, dash, field, select, kv, pager } from '../dom.js';

const STEPS = ['preparing', 'validating_files', 'queued', 'running', 'succeeded'];
const DONE = new Set(['succeeded', 'failed', 'cancelled']);

export async function render(ctx) {
  if (ctx.parts[1]) return one(ctx, ctx.parts[1]);
  const page = h('div', { class: 'page' }, h('div', { class: 'page-head' }, h('h1', null, 'Fine-tuning')));
  const [models, datasets] = await Promise.all([
    api('/models').catch(() => ({ data: [] })),
    api(`/datasets${qs({ limit: 100 })}`).catch(() => ({ data: [] })),
  ]);
  if (!ctx.alive()) return;
  if (ctx.isAdmin) page.append(card('Start a job', startForm(ctx, models.data, datasets.data)));
  else page.append(h('p', { class: 'muted' }, 'Starting and cancelling jobs needs an admin key; you can follow them.'));
  const listEl = h('div');
  page.append(card('Jobs', listEl));
  clear(ctx.root).append(page);
  listEl.append(pager((cursor) => api(`/fine-tuning/jobs${qs({ cursor, limit: 50 })}`).catch((e) => {
    if (isMissingRoute(e)) throw new Error('Fine-tuning jobs are not available on this server yet.');
    throw e;
  }), (items, wrap) => {
    if (!items.length) return;
    wrap.insertBefore(table([
      { label: 'Job', cell: (j) => h('a', { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id) },
      { label: 'Alias', cell: (j) => j.alias },
      { label: 'Base model', cell: (j) => h('code', null, j.base_model || dash) },
      { label: 'Status', cell: (j) => statusBadge(j.status) },
      { label: 'Result', cell: (j) => j.registered_version ? h('a', { href: `#/models/${encodeURIComponent(j.alias)}` }, j.registered_version) : (j.error?.message || j.error || dash) },
      { label: 'Started', cell: (j) => h('span', { title: when(j.created_at) }, ago(j.created_at)) },
    ], items), wrap.lastChild);
  }, { emptyText: 'No fine-tuning job yet.' }));
}

function startForm(ctx, models, datasets) {
  const preset = ctx.query.get('dataset') || '';
  const ready = datasets.filter((d) => d.ready_for_training);
  const alias = select('alias', models.map((m) => [m.alias, m.alias]), models[0]?.alias);
  const dataset = select('dataset_id', ready.length ? ready.map((d) => [d.id, `${d.name} (${d.counts?.train ?? '?'} train)`]) : [['', 'no dataset is ready']], preset);
  const baseModel = h('input', { name: 'base_model', placeholder: 'the dataset\'s' });
  const suffix = h('input', { name: 'suffix', placeholder: 'optional', maxlength: 40 });
  const method = select('method', [['', 'from the dataset'], ['supervised', 'supervised'], ['dpo', 'DPO']], '');
  const epochs = h('input', { type: 'number', name: 'n_epochs', min: 1, max: 50, placeholder: 'auto' });
  const batch = h('input', { type: 'number', name: 'batch_size', min: 1, max: 256, placeholder: 'auto' });
  const lr = h('input', { type: 'number', name: 'learning_rate_multiplier', min: 0.01, max: 10, step: 0.01, placeholder: 'auto' });
  const seed = h('input', { type: 'number', name: 'seed', placeholder: 'random' });
  const err = h('div', { class: 'inline-error', role: 'alert' });
  const fillBase = () => {
    const m = models.find((x) => x.alias === alias.value);
    const prod = m?.versions.find((v) => v.name === m.production);
    const ds = datasets.find((d) => d.id === dataset.value);
    baseModel.placeholder = ds?.base_model || (prod ? prod.model : 'base model');
  };
  alias.addEventListener('change', fillBase);
  dataset.addEventListener('change', fillBase);
  fillBase();
  const form = h('form', { class: 'stack' },
    h('div', { class: 'form-row' }, field('Alias', alias), field('Dataset', dataset), field('Base model', baseModel), field('Suffix', suffix), field('Method', method)),
    h('div', { class: 'form-row' }, field('Epochs', epochs), field('Batch size', batch), field('Learning-rate multiplier', lr), field('Seed', seed)),
    h('div', { class: 'row' }, h('button', { type: 'submit', class: 'btn btn-primary', disabled: !ready.length, 'data-test': 'start-job' }, 'Start fine-tuning'), err));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.textContent = '';
    const body = { alias: alias.value, dataset_id: dataset.value };
    if (method.value) body.method = method.value;
    if (baseModel.value.trim()) body.base_model = baseModel.value.trim();
    if (suffix.value.trim()) body.suffix = suffix.value.trim();
    if (seed.value !== '') body.seed = Number(seed.value);
    const hp = {};
    if (epochs.value !== '') hp.n_epochs = Number(epochs.value);
    if (batch.value !== '') hp.batch_size = Number(batch.value);
    if (lr.value !== '') hp.learning_rate_multiplier = Number(lr.value);
    if (Object.keys(hp).length) body.hyperparameters = hp;
    try {
      const job = await api('/fine-tuning/jobs', { method: 'POST', body });
      toast(`Job ${job.id} started.`, 'good');
      ctx.navigate(`#/jobs/${encodeURIComponent(job.id)}`);
    } catch (ex) { err.textContent = isMissingRoute(ex) ? 'Fine-tuning jobs are not available on this server yet.' : ex.message; }
  });
  return form;
}

function stepper(status) {
  const failed = status === 'failed' || status === 'cancelled';
  const at = STEPS.indexOf(status);
  return h('ol', { class: 'stepper' }, STEPS.map((step, i) => h('li', { class: `step${i < at || status === 'succeeded' ? ' done' : ''}${i === at && status !== 'succeeded' ? ' current' : ''}` }, words(step))),
    failed ? h('li', { class: 'step failed current' }, words(status)) : null);
}

// Azure: where the fine-tuned model's deployment stands, and what an
// admin can do about it (the server refuses what it must).
function deployment(ctx, job, draw) {
  const d = job.deployment;
  if (!d) return null;
  const admin = { disabled: !ctx.isAdmin, title: ctx.isAdmin ? '' : 'Needs an admin key' };
  const path = `/fine-tuning/jobs/${encodeURIComponent(job.id)}/deployment`;
  if (d.state === 'awaiting_deployment') {
    const name = h('input', { name: 'deployment', placeholder: 'the deployment\'s name', required: true, 'data-test': 'deployment-name', ...admin });
    const err = h('span', { class: 'error' });
    const form = h('form', { class: 'row' }, field('Deployment', name), h('button', { type: 'submit', class: 'btn btn-primary', 'data-test': 'register-deployment', ...admin }, 'Register deployment'), err);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      err.textContent = '';
      try { draw(await api(path, { method: 'POST', body: { name: name.value.trim() } })); toast('Deployment registered.', 'good'); } catch (ex) { err.textContent = ex.message; }
    });
    return card('Deployment', h('p', null, 'Deploy ', h('code', null, job.fine_tuned_model || dash), ' in Azure, then register the deployment\'s name: it becomes a candidate version.'), form);
  }
  return card('Deployment', kv([['Name', h('code', null, d.name || dash)], ['State', h('span', { 'data-test': 'deployment-state' }, statusBadge(d.state))], ['Created by', d.managed ? 'Flywheel' : 'an admin']]),
    (d.state === 'succeeded' || (d.managed && d.created && d.state !== 'deleted')) ? button('Delete deployment', async () => {
      try { draw(await api(path, { method: 'DELETE' })); toast('Deployment deleted.'); } catch (e) { toast(e.message, 'error'); }
    }, 'bad', { ...admin, title: ctx.isAdmin ? 'Once its version was rolled back or retired' : 'Needs an admin key', 'data-test': 'delete-deployment' }) : null);
}

// A self-hosted trainer's job: where its adapter is, which servers hold it,
// and unloading it once its version was rolled back (the server refuses it
// while the version serves).
function adapter(ctx, job, draw) {
  const t = job.trainer;
  if (!t) return null;
  const loaded = t.loaded_on || [];
  return card('Adapter', kv([['Output directory', h('code', null, t.output_dir || dash)], ['Trainer exit status', t.exit_code ?? dash],
    ['Loaded on', h('span', { 'data-test': 'adapter-loaded-on' }, loaded.length ? loaded.join(', ') : 'no server')]]),
    loaded.length ? button('Unload adapter', async () => {
      try { draw(await api(`/fine-tuning/jobs/${encodeURIComponent(job.id)}/unload-adapter`, { method: 'POST' })); toast('Adapter unloaded.'); } catch (e) { toast(e.message, 'error'); }
    }, 'bad', { disabled: !ctx.isAdmin, title: ctx.isAdmin ? 'Once its version was rolled back or retired' : 'Needs an admin key', 'data-test': 'unload-adapter' }) : null);
}

function progress(job) {
  const m = job.metrics || {};
  const step = m.step ?? m.steps_done;
  const total = m.total_steps;
  if (step == null || !total) return null;
  const fill = h('span', { class: 'bar-fill' });
  fill.style.width = `${Math.min(100, (step / total) * 100)}%`;
  return h('div', { class: 'bar-row' }, h('span', { class: 'bar-label' }, 'Steps'), h('span', { class: 'bar-track' }, fill), h('span', { class: 'bar-value' }, `${step} / ${total}`));
}

async function one(ctx, id) {
  let timer = null;
  const el = h('div', { class: 'page' });
  clear(ctx.root).append(el);
  const draw = (job) => {
    const hp = job.hyperparameters || {};
    el.replaceChildren(
      h('div', { class: 'page-head' }, h('a', { href: '#/jobs', class: 'back' }, '← Fine-tuning'), h('h1', null, job.id), h('span', { 'data-test': 'job-status' }, statusBadge(job.status)),
        h('span', { class: 'spacer' }),
        !DONE.has(job.status) ? button('Cancel job', async () => {
          try { draw(await api(`/fine-tuning/jobs/${encodeURIComponent(job.id)}/cancel`, { method: 'POST' })); toast('Job cancelled.'); } catch (e) { toast(e.message, 'error'); }
        }, 'bad', { disabled: !ctx.isAdmin, title: ctx.isAdmin ? 'Cancel this job' : 'Needs an admin key', 'data-test': 'cancel-job' }) : null),
      card('Progress', stepper(job.status), progress(job),
        job.error ? h('div', { class: 'state state-error' }, job.error.message || String(job.error)) : null,
        job.registered_version ? h('p', null, 'Registered as ', h('a', { href: `#/models/${encodeURIComponent(job.alias)}`, 'data-test': 'registered-version' }, `${job.alias} · ${job.registered_version}`), ' (a candidate without traffic until you give it some).') : null),
      // replaceChildren would print a null: only a job with a deployment
      // (Azure) or an adapter (a trainer's) gets its card.
      ...[deployment(ctx, job, draw), adapter(ctx, job, draw)].filter(Boolean),
      h('div', { class: 'grid-2' },
        card('Job', kv([['Alias', job.alias], ['Dataset', h('a', { href: `#/datasets/${encodeURIComponent(job.dataset_id)}` }, job.dataset_id)], ['Provider', job.provider], ['Base model', h('code', null, job.base_model || dash)],
          ['Method', job.method], ['Epochs / batch / lr', `${hp.n_epochs ?? 'auto'} / ${hp.batch_size ?? 'auto'} / ${hp.learning_rate_multiplier ?? 'auto'}`],
          ['Provider job', h('code', null, job.provider_job_id || dash)], ['Trained tokens', num(job.trained_tokens)], ['Fine-tuned model', h('code', null, job.fine_tuned_model || dash)],
          ['Created', when(job.created_at)], ['Finished', when(job.finished_at)]])),
        card('Metrics', job.metrics && Object.keys(job.metrics).length ? kv(Object.entries(job.metrics).map(([k, v]) => [words(k), typeof v === 'number' ? num(v, Number.isInteger(v) ? undefined : 4) : JSON.stringify(v)])) : empty('No metrics yet.'))),
      card('Events', (job.events || []).length ? h('ol', { class: 'events' }, [...job.events].reverse().map((ev) => h('li', { class: `event event-${ev.level}` },
        h('span', { class: 'muted small' }, when(ev.at)), ' ', badge(ev.level, ev.level === 'error' ? 'bad' : ev.level === 'warn' ? 'warn' : 'neutral'), ' ', ev.message))) : empty('No events yet.')));
  };
  const poll = async () => {
    try {
      const job = await api(`/fine-tuning/jobs/${encodeURIComponent(id)}`);
      if (!ctx.alive()) return;
      draw(job);
      if (!DONE.has(job.status)) timer = setTimeout(poll, 1500);
    } catch (e) {
      if (ctx.alive()) el.replaceChildren(errorBox(e));
    }
  };
  await poll();
  return () => clearTimeout(timer);
}
