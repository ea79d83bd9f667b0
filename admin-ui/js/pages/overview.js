// Overview: the review funnel, the way to a better model (the guided
// path from approved conversations to a promoted fine-tune), the success
// metrics against their targets — production's accuracy beside what it
// replaced — open alerts and where traffic goes.

import { api, qs, isMissingRoute } from '../api.js';
import { h, add, card, pct, num, empty, errorBox, loading, statusBadge, badge, button, toast, ago, words, clear } from '../dom.js';

export async function render(ctx) {
  const stats = await api('/stats');
  if (!ctx.alive()) return;
  const page = h('div', { class: 'page' }, h('div', { class: 'page-head' }, h('h1', null, 'Overview'), h('span', { class: 'spacer' }),
    stats.pending ? h('a', { class: 'btn btn-primary', href: '#/review?status=pending' }, `Review ${num(stats.pending)} pending`) : h('span', { class: 'muted' }, 'Nothing waits for review.')));
  page.append(h('div', { class: 'tiles' },
    tile('Conversations', num(stats.conversations_total), `${num(stats.pending)} waiting for review`
      + (stats.background_tasks ? ` · ${num(stats.background_tasks)} housekeeping requests apart` : ''), 'tile-total'),
    tile('Approved for training', num(stats.approved), `approval rate ${pct(stats.approval_rate)}`, 'tile-approved'),
    tile('High quality (4+)', num(stats.high_quality), `mean quality ${stats.avg_quality_score == null ? '—' : num(stats.avg_quality_score, 2)}`, 'tile-quality'),
    tile('Rejected', num(stats.rejected), `${pct(stats.feedback_share)} have feedback`, 'tile-rejected'),
    tile('Mean rating', stats.mean_rating == null ? '—' : num(stats.mean_rating, 2), `${num(stats.ratings ?? 0)} ratings`, 'tile-rating'),
    tile('Fine-tuned traffic', pct(stats.fine_tuned_traffic_share), `${num(stats.turns_total ?? 0)} turns captured`, 'tile-ft'),
  ));

  page.append(improveCard(ctx, stats));
  const metrics = h('div', null, loading());
  const alerts = h('div', null, loading());
  const traffic = h('div', null, loading());
  const providers = h('div', null, loading());
  const coverage = stats.taxonomy_coverage || { covered: 0, total: 0, missing: [] };
  page.append(h('div', { class: 'grid-2' },
    card('Success metrics', metrics),
    card('Open alerts', alerts),
    card('Traffic by version', traffic),
    card('Labels by threat type', labels(stats, coverage)),
    card('Providers', providers),
  ));
  clear(ctx.root).append(page);

  successMetrics(ctx, metrics);
  openAlerts(alerts);
  trafficByVersion(traffic);
  providerSigning(providers);
}

/** Each provider and whether its requests can be signed now: a missing
 * key or Entra ID tokens that stopped renewing show here before chats
 * fail. */
async function providerSigning(el) {
  try {
    const list = await api('/providers');
    const rows = list.data.map((p) => h('tr', { dataset: { provider: p.name } },
      h('td', null, p.name, p.default ? h('span', { class: 'muted small' }, ' (default)') : ''),
      h('td', null, p.kind),
      h('td', null, signing(p.signing)),
      h('td', null, p.management_signing ? signing(p.management_signing) : h('span', { class: 'muted' }, '—'))));
    el.replaceChildren(h('div', { class: 'table-wrap' }, h('table', { class: 'table' },
      h('thead', null, h('tr', null, ['Provider', 'Kind', 'Requests signed with', 'Deployments'].map((t) => h('th', null, t)))),
      h('tbody', null, rows))));
  } catch (e) {
    el.replaceChildren(errorBox(e));
  }
}

const SIGNED_WITH = { key: 'key', entra: 'Entra ID (client credentials)', managed_identity: 'managed identity', none: 'nothing (no key configured)' };

function signing(s) {
  if (!s) return h('span', { class: 'muted' }, 'serves no chats');
  const what = SIGNED_WITH[s.source] ?? s.source;
  if (!s.ready) return h('span', { 'data-test': 'signing-problem' }, badge('cannot sign', 'bad'), ' ', what, h('div', { class: 'small' }, s.problem));
  const left = s.valid_for_s == null ? '' : `, token valid ${Math.round(s.valid_for_s / 60)} min more`;
  return h('span', null, badge(s.source === 'none' ? 'unsigned' : 'ready', s.source === 'none' ? 'neutral' : 'good'), ` ${what}${left}`);
}

/** The entry to the guided path: what there is to learn from, and one
 * button. */
function improveCard(ctx, stats) {
  return card('Improve the model',
    h('div', { class: 'row' },
      h('p', { class: 'spacer' }, `${num(stats.approved)} approved conversations can teach the model. `,
        'Build a dataset of them, fine-tune production\'s model on it, evaluate the result against production and promote it if it is better — one step after another.'),
      h('a', { class: `btn ${stats.approved ? 'btn-primary' : ''}`, href: '#/improve', 'data-test': 'improve' }, 'Improve the model →')),
    ctx.isAdmin ? null : h('p', { class: 'muted small' }, 'Each step needs an admin key; you can follow them.'));
}

function tile(label, value, sub, cls) {
  return h('div', { class: `tile ${cls}` }, h('div', { class: 'tile-label' }, label), h('div', { class: 'tile-value' }, value), h('div', { class: 'tile-sub' }, sub));
}

function labels(stats, coverage) {
  const rows = Object.entries(stats.by_threat_type || {}).sort((a, b) => b[1] - a[1]);
  const max = Math.max(1, ...rows.map((r) => r[1]));
  return h('div', null,
    h('p', null, `Taxonomy coverage: ${coverage.covered} of ${coverage.total} threat types have an approved conversation.`),
    coverage.missing?.length ? h('p', { class: 'muted' }, 'Missing: ', coverage.missing.map(words).join(', ')) : null,
    rows.length === 0 ? empty('No conversation is labelled yet.') :
      h('div', { class: 'bars' }, rows.map(([k, v]) => bar(words(k), v, v / max))),
  );
}

function bar(label, value, share) {
  const fill = h('span', { class: 'bar-fill' });
  fill.style.width = `${Math.max(2, share * 100)}%`;
  return h('div', { class: 'bar-row' }, h('span', { class: 'bar-label' }, label), h('span', { class: 'bar-track' }, fill), h('span', { class: 'bar-value' }, String(value)));
}

async function successMetrics(ctx, el) {
  const targets = ctx.me.evaluation_targets || {};
  try {
    const [list, models] = await Promise.all([api(`/evaluations${qs({ limit: 20 })}`), api('/models')]);
    const done = (list.data || []).find((e) => e.status === 'succeeded');
    if (!done) { el.replaceChildren(noEvaluation(targets)); return; }
    const full = await api(`/evaluations/${encodeURIComponent(done.id)}`);
    const production = models.data.find((m) => m.alias === full.alias)?.production;
    const rows = [];
    for (const [version, r] of Object.entries(full.results || {})) {
      for (const metric of ['accuracy', 'precision_high_severity', 'recall_critical']) {
        const target = targets[metric];
        const value = r[metric];
        const met = value != null && target != null && value >= target;
        rows.push(h('tr', { dataset: { version, metric } }, h('td', null, version, version === production ? h('span', { class: 'muted small' }, ' (production)') : ''), h('td', null, words(metric)), h('td', { class: 'num' }, pct(value)),
          h('td', { class: 'num' }, pct(target, 0)), h('td', null, value == null ? badge('no data', 'neutral') : badge(met ? 'met' : 'below target', met ? 'good' : 'bad'))));
      }
    }
    el.replaceChildren(h('p', { class: 'muted' }, `From evaluation `, h('a', { href: `#/evaluations/${encodeURIComponent(full.id)}` }, full.id), ` on ${full.alias}.`),
      productionLine(full, production),
      h('div', { class: 'table-wrap' }, h('table', { class: 'table' }, h('thead', null, h('tr', null, ['Version', 'Metric', 'Score', 'Target', ''].map((t) => h('th', null, t)))), h('tbody', null, rows))));
  } catch (e) {
    if (isMissingRoute(e)) el.replaceChildren(noEvaluation(targets));
    else el.replaceChildren(errorBox(e));
  }
}

/** Production's accuracy in the newest evaluation, beside every other
 * version the same run scored. */
function productionLine(ev, production) {
  const mine = ev.results?.[production];
  if (!mine) return null;
  const others = Object.entries(ev.results).filter(([v]) => v !== production);
  return h('p', { 'data-test': 'production-accuracy', 'data-version': production, 'data-accuracy': String(mine.accuracy ?? '') },
    'Production ', h('strong', null, production), `: accuracy ${pct(mine.accuracy)}`,
    others.length ? `, against ${others.map(([v, r]) => `${v} ${pct(r.accuracy)}`).join(', ')} on the same ${num(mine.n)} examples.` : '.');
}

function noEvaluation(targets) {
  return h('div', { class: 'state state-empty', 'data-test': 'no-evaluation' },
    h('p', null, 'No evaluation yet.'),
    h('p', { class: 'muted' }, 'Targets: accuracy ', pct(targets.accuracy, 0), ', precision on high severity ', pct(targets.precision_high_severity, 0), ', recall on critical ', pct(targets.recall_critical, 0), '.'));
}

async function openAlerts(el) {
  try {
    const list = await api(`/alerts${qs({ state: 'open' })}`);
    if (list.data.length === 0) { el.replaceChildren(empty('No open alerts.')); return; }
    const SHOWN = 5;
    const more = list.data.length - SHOWN;
    add(clear(el), [h('ul', { class: 'alert-list' }, list.data.slice(0, SHOWN).map((a) => {
      const li = h('li', { class: 'alert-item' },
        h('div', null, statusBadge(a.state), ' ', h('strong', null, `${a.alias} · ${a.version}`), ' ', h('span', { class: 'muted' }, ago(a.at))),
        h('div', null, a.message),
        button('Acknowledge', async () => {
          try { await api(`/alerts/${encodeURIComponent(a.id)}/ack`, { method: 'POST' }); li.remove(); toast('Alert acknowledged.', 'good'); } catch (e) { toast(e.message, 'error'); }
        }, 'small'));
      return li;
    })), more > 0 || list.has_more ? h('p', { class: 'muted' }, more > 0 ? `and ${more}${list.has_more ? '+' : ''} more open alerts.` : 'and more open alerts.') : null]);
  } catch (e) { el.replaceChildren(errorBox(e)); }
}

async function trafficByVersion(el) {
  try {
    const list = await api('/models');
    if (list.data.length === 0) { el.replaceChildren(empty('No model alias is configured.')); return; }
    el.replaceChildren(...list.data.map((m) => h('div', { class: 'traffic' },
      h('div', { class: 'traffic-head' }, h('a', { href: `#/models/${encodeURIComponent(m.alias)}` }, m.alias), h('span', { class: 'muted' }, ` production: ${m.production}`)),
      h('div', { class: 'bars' }, m.versions.filter((v) => v.state !== 'retired' || v.weight > 0).map((v) => bar(`${v.name}${v.shadow ? ' (shadow)' : ''}`, `${v.weight} %`, v.weight / 100))))));
  } catch (e) { el.replaceChildren(errorBox(e)); }
}
