// The review queue: filters, a list with cursor paging and bulk actions,
// and the conversation beside it with the labelling form. Built for the
// keyboard: j/k move, a/r approve or reject, 1–5 score, x selects, / searches.

import { api, qs } from '../api.js';
import { h, clear, add, badge, statusBadge, button, field, select, loading, empty, errorBox, toast, when, ago, ms, num, words, dash } from '../dom.js';

const FILTERS = ['q', 'status', 'threat_type', 'severity', 'min_quality', 'signal', 'alias', 'version', 'user', 'since', 'until'];
// Quality signals the conversation list filters on, one at a time.
const SIGNALS = [['', 'Any'], ['complete:true', 'complete answer'], ['complete:false', 'incomplete answer'],
  ['has_labels:false', 'unlabelled'], ['has_rating:true', 'rated'], ['duplicate:true', 'duplicates'], ['duplicate:false', 'no duplicates'],
  ['upstream_error:true', 'upstream errors'], ['background_task:true', "chat apps' housekeeping"]];

export async function render(ctx) {
  if (ctx.parts[0] === 'conversations' && ctx.parts[1]) return single(ctx, ctx.parts[1]);
  const filters = {};
  for (const f of FILTERS) filters[f] = ctx.query.get(f) || '';
  if (!ctx.query.has('status')) filters.status = 'pending';
  const s = {
    ctx, filters, items: [], cursor: null, hasMore: false, index: -1, checked: new Set(),
    listEl: h('ol', { class: 'queue', 'aria-label': 'Conversations' }), moreEl: h('div', { class: 'pager' }),
    detailEl: h('section', { class: 'detail', 'aria-label': 'Conversation' }), countEl: h('span', { class: 'muted' }),
    bulkEl: h('div', { class: 'bulk' }), detail: null, loadingMore: null,
    pageSize: Math.max(1, Math.min(500, Number(ctx.query.get('limit')) || 50)),
  };
  const models = await api('/models').catch(() => ({ data: [] }));
  if (!ctx.alive()) return;
  const page = h('div', { class: 'page page-wide' },
    h('div', { class: 'page-head' }, h('h1', null, 'Review queue'), s.countEl,
      h('span', { class: 'spacer' }), h('span', { class: 'muted hint' }, 'Press ', h('kbd', null, '?'), ' for shortcuts')),
    filterForm(s, models.data.map((m) => m.alias)),
    h('div', { class: 'split' },
      h('div', { class: 'list-pane' }, s.bulkEl, s.listEl, s.moreEl),
      s.detailEl));
  clear(ctx.root).append(page);
  renderBulk(s);
  s.detailEl.append(empty('Select a conversation to review it.'));
  await loadMore(s);
  if (s.items.length) select_(s, 0);
  const onKey = (e) => keys(s, e);
  document.addEventListener('keydown', onKey);
  return () => document.removeEventListener('keydown', onKey);
}

function filterForm(s, aliases) {
  const tax = s.ctx.me.taxonomy || { threat_types: [], severities: [] };
  const f = s.filters;
  const form = h('form', { class: 'filters', role: 'search' },
    field('Search', h('input', { name: 'q', type: 'search', value: f.q, placeholder: 'text, user or id', id: 'review-search' })),
    field('Status', select('status', [['any', 'Any status'], 'pending', 'approved', 'rejected'], f.status || 'any')),
    field('Threat type', select('threat_type', [['', 'Any'], ...tax.threat_types], f.threat_type)),
    field('Severity', select('severity', [['', 'Any'], ...tax.severities], f.severity)),
    field('Min quality', select('min_quality', [['', 'Any'], ['1', '1+'], ['2', '2+'], ['3', '3+'], ['4', '4+'], ['5', '5']], f.min_quality)),
    field('Signal', select('signal', SIGNALS, f.signal)),
    field('Alias', select('alias', [['', 'Any'], ...aliases.map((a) => [a, a])], f.alias)),
    field('Version', h('input', { name: 'version', value: f.version, placeholder: 'any', size: 8 })),
    field('User', h('input', { name: 'user', value: f.user, placeholder: 'any', size: 10 })),
    field('From', h('input', { name: 'since', type: 'date', value: f.since })),
    field('Until', h('input', { name: 'until', type: 'date', value: f.until })),
    h('div', { class: 'filter-actions' },
      h('button', { type: 'submit', class: 'btn btn-primary' }, 'Apply'),
      button('Reset', () => s.ctx.navigate('#/review'))));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const q = {};
    for (const k of FILTERS) q[k] = (data.get(k) || '').toString().trim();
    s.ctx.navigate(`#/review${qs(q)}`);
  });
  return form;
}

function apiFilters(f) {
  const q = { ...f };
  if (q.status === 'any') q.status = '';
  if (q.signal) {
    const [name, value] = q.signal.split(':');
    q[name] = value;
  }
  delete q.signal;
  return q;
}

async function loadMore(s) {
  if (s.loadingMore) return s.loadingMore;
  s.moreEl.replaceChildren(loading());
  s.loadingMore = (async () => {
    try {
      const page = await api(`/conversations${qs({ ...apiFilters(s.filters), cursor: s.cursor, limit: s.pageSize })}`);
      const start = s.items.length;
      s.items.push(...page.data);
      page.data.forEach((c, i) => s.listEl.append(item(s, c, start + i)));
      s.cursor = page.next_cursor;
      s.hasMore = page.has_more && !!s.cursor;
      s.moreEl.replaceChildren();
      if (s.hasMore) s.moreEl.append(button('Load more', () => loadMore(s), '', { 'data-test': 'load-more' }));
      else if (s.items.length === 0) {
        s.moreEl.append(empty('No conversation matches these filters.'));
        s.detailEl.replaceChildren(empty('Nothing to review here.'));
      }
      s.countEl.textContent = `${s.items.length}${s.hasMore ? '+' : ''} shown`;
    } catch (e) {
      s.moreEl.replaceChildren(errorBox(e), button('Try again', () => loadMore(s)));
    } finally {
      s.loadingMore = null;
    }
  })();
  return s.loadingMore;
}

function item(s, c, i) {
  const box = h('input', { type: 'checkbox', 'aria-label': `Select ${c.id}`, checked: s.checked.has(c.id), onclick: (e) => e.stopPropagation(),
    onchange: (e) => { if (e.target.checked) s.checked.add(c.id); else s.checked.delete(c.id); renderBulk(s); } });
  const li = h('li', { class: `queue-item${i === s.index ? ' selected' : ''}`, dataset: { id: c.id, index: String(i) }, tabindex: '-1',
    onclick: () => select_(s, i) },
    box,
    h('div', { class: 'queue-body' },
      h('div', { class: 'queue-top' }, statusBadge(c.status),
        c.threat_type ? badge(words(c.threat_type), 'info') : null,
        c.severity ? statusBadge(c.severity) : null,
        c.quality_score ? h('span', { class: 'quality', title: 'quality score' }, `Q${c.quality_score}`) : null,
        c.signals?.duplicate_of ? badge('duplicate', 'warn') : null),
      h('div', { class: 'queue-preview' }, c.preview || dash),
      h('div', { class: 'queue-meta muted small', title: when(c.created_at) }, `${ago(c.created_at)} · ${c.alias} · ${(c.versions || []).join(', ')} · ${c.turns} turn${c.turns === 1 ? '' : 's'}${c.user ? ` · ${c.user}` : ''}`)));
  return li;
}

function refreshItem(s, i) {
  const old = s.listEl.children[i];
  if (old) old.replaceWith(item(s, s.items[i], i));
}

function renderBulk(s) {
  const n = s.checked.size;
  const all = h('input', { type: 'checkbox', 'aria-label': 'Select all shown', checked: n > 0 && n === s.items.length,
    onchange: (e) => {
      if (e.target.checked) s.items.forEach((c) => s.checked.add(c.id)); else s.checked.clear();
      s.items.forEach((_, i) => refreshItem(s, i)); renderBulk(s);
    } });
  s.bulkEl.replaceChildren(all, h('span', { class: 'bulk-count' }, n ? `${n} selected` : 'Select all shown'),
    h('span', { class: 'spacer' }),
    button('Approve', () => bulk(s, 'approve'), 'good small', { disabled: n === 0, title: 'Approve the selected conversations', 'data-test': 'bulk-approve' }),
    button('Reject', () => bulk(s, 'reject'), 'bad small', { disabled: n === 0, title: 'Reject the selected conversations', 'data-test': 'bulk-reject' }));
}

async function bulk(s, action) {
  const ids = [...s.checked];
  if (!ids.length) return;
  try {
    const res = await api('/conversations/bulk', { method: 'POST', body: { ids, action } });
    const missing = new Set(res.missing || []);
    const status = action === 'approve' ? 'approved' : 'rejected';
    s.items.forEach((c, i) => { if (s.checked.has(c.id) && !missing.has(c.id)) { c.status = status; refreshItem(s, i); } });
    s.checked.clear();
    renderBulk(s);
    s.items.forEach((_, i) => refreshItem(s, i));
    if (s.detail && ids.includes(s.detail.id)) select_(s, s.index);
    toast(`${res.updated} conversation${res.updated === 1 ? '' : 's'} ${status}${missing.size ? `; ${missing.size} no longer exist` : ''}.`, 'good');
  } catch (e) { toast(e.message, 'error'); }
}

async function select_(s, i) {
  if (i < 0 || i >= s.items.length) return;
  const prev = s.index;
  s.index = i;
  if (prev >= 0) s.listEl.children[prev]?.classList.remove('selected');
  const li = s.listEl.children[i];
  li?.classList.add('selected');
  li?.scrollIntoView({ block: 'nearest' });
  const id = s.items[i].id;
  s.detailEl.replaceChildren(loading());
  try {
    const conv = await api(`/conversations/${encodeURIComponent(id)}`);
    if (s.index !== i) return;
    s.detail = conversationView(s.ctx, conv, {
      onChange: (updated) => { const { turns, ...summary } = updated; Object.assign(s.items[i], summary); refreshItem(s, i); s.listEl.children[i]?.classList.add('selected'); },
      onDone: () => move(s, 1),
    });
    s.detailEl.replaceChildren(s.detail.el);
  } catch (e) {
    if (s.index === i) s.detailEl.replaceChildren(errorBox(e));
  }
}

async function move(s, delta) {
  let next = s.index + delta;
  if (next >= s.items.length && s.hasMore) await loadMore(s);
  next = Math.max(0, Math.min(next, s.items.length - 1));
  if (next !== s.index || !s.detail) select_(s, next);
}

function keys(s, e) {
  if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.target.closest('input, textarea, select, [contenteditable]') || document.querySelector('dialog[open]')) return;
  const d = s.detail;
  switch (e.key) {
    case 'j': case 'ArrowDown': e.preventDefault(); move(s, 1); break;
    case 'k': case 'ArrowUp': e.preventDefault(); move(s, -1); break;
    case 'a': if (d) { e.preventDefault(); d.decide('approved'); } break;
    case 'r': if (d) { e.preventDefault(); d.decide('rejected'); } break;
    case '1': case '2': case '3': case '4': case '5': if (d) { e.preventDefault(); d.score(Number(e.key)); } break;
    case 'x': {
      const c = s.items[s.index];
      if (c) { e.preventDefault(); if (s.checked.has(c.id)) s.checked.delete(c.id); else s.checked.add(c.id); refreshItem(s, s.index); s.listEl.children[s.index]?.classList.add('selected'); renderBulk(s); }
      break;
    }
    case '/': e.preventDefault(); document.getElementById('review-search')?.focus(); break;
    default:
  }
}

async function single(ctx, id) {
  const conv = await api(`/conversations/${encodeURIComponent(id)}`);
  if (!ctx.alive()) return;
  const view = conversationView(ctx, conv, { onChange: () => {}, onDone: () => {} });
  const onKey = (e) => {
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target.closest('input, textarea, select') || document.querySelector('dialog[open]')) return;
    if (e.key === 'a') view.decide('approved');
    else if (e.key === 'r') view.decide('rejected');
    else if ('12345'.includes(e.key) && e.key.length === 1) view.score(Number(e.key));
  };
  document.addEventListener('keydown', onKey);
  clear(ctx.root).append(h('div', { class: 'page' },
    h('div', { class: 'page-head' }, h('a', { href: '#/review', class: 'back' }, '← Review queue')),
    h('section', { class: 'detail detail-full' }, view.el)));
  return () => document.removeEventListener('keydown', onKey);
}

/** One conversation: its review form and every turn. */
export function conversationView(ctx, initial, { onChange, onDone }) {
  let conv = initial;
  const tax = ctx.me.taxonomy || { threat_types: [], severities: [] };
  const el = h('div', { class: 'conversation', dataset: { id: conv.id } });
  const head = h('div', { class: 'conv-head' });
  const threat = select('threat_type', [['', '— threat type —'], ...tax.threat_types], conv.threat_type, { 'aria-label': 'Threat type' });
  const severity = select('severity', [['', '— severity —'], ...tax.severities], conv.severity, { 'aria-label': 'Severity' });
  const notes = h('textarea', { name: 'notes', rows: 2, maxlength: 4000, placeholder: 'Notes for other analysts', 'aria-label': 'Notes' });
  notes.value = conv.notes || '';
  const correction = h('textarea', { name: 'correction', rows: 3, maxlength: 16000, placeholder: 'The answer the model should have given (optional)', 'aria-label': 'Correction' });
  correction.value = conv.correction || '';
  const scores = h('div', { class: 'scores', role: 'group', 'aria-label': 'Quality score' });
  const status = h('div', { class: 'decision' });

  function renderHead() {
    add(clear(head), [
      h('div', { class: 'conv-title' }, statusBadge(conv.status), h('code', { class: 'conv-id' }, conv.id)),
      h('div', { class: 'muted small' }, `${conv.alias} · ${(conv.versions || []).join(', ')} · ${conv.turns?.length ?? 0} turn${conv.turns?.length === 1 ? '' : 's'} · ${conv.user || 'no user'} · ${when(conv.created_at)}`,
        conv.reviewer ? ` · reviewed by ${conv.reviewer}` : '', conv.parent_id ? ` · branched from ${conv.parent_id}` : ''),
      signalsLine(conv.signals)]);
    scores.replaceChildren(...[1, 2, 3, 4, 5].map((n) => h('button', { type: 'button', class: `score${conv.quality_score === n ? ' on' : ''}`, 'aria-pressed': String(conv.quality_score === n), title: `Quality ${n} (key ${n})`, onclick: () => score(n) }, String(n))));
  }

  async function patch(body, message) {
    try {
      conv = { ...conv, ...(await api(`/conversations/${encodeURIComponent(conv.id)}`, { method: 'PATCH', body })) };
      renderHead();
      onChange(conv);
      if (message) toast(message, 'good');
      return true;
    } catch (e) {
      toast(e.message, 'error');
      return false;
    }
  }

  function formChanges() {
    const body = {};
    if ((threat.value || null) !== (conv.threat_type || null)) body.threat_type = threat.value || null;
    if ((severity.value || null) !== (conv.severity || null)) body.severity = severity.value || null;
    if (notes.value !== (conv.notes || '')) body.notes = notes.value || null;
    if (correction.value !== (conv.correction || '')) body.correction = correction.value || null;
    return body;
  }

  async function save() {
    const body = formChanges();
    if (Object.keys(body).length === 0) { toast('Nothing changed.'); return; }
    await patch(body, 'Saved.');
  }
  async function score(n) { await patch({ quality_score: n }, `Quality ${n}.`); }
  async function decide(to) {
    const ok = await patch({ ...formChanges(), status: to });
    if (ok) toast(to === 'approved' ? 'Approved for training.' : 'Rejected.', to === 'approved' ? 'good' : 'info');
    if (ok) onDone();
  }

  renderHead();
  const form = h('form', { class: 'label-form' },
    h('div', { class: 'label-row' }, field('Threat type', threat), field('Severity', severity), field('Quality', scores)),
    h('div', { class: 'label-row' }, field('Notes', notes), field('Correction', correction)),
    h('div', { class: 'label-actions' },
      button('Save labels', save, '', { 'data-test': 'save' }),
      h('span', { class: 'spacer' }),
      button('Reject', () => decide('rejected'), 'bad', { title: 'Reject (r)', 'data-test': 'reject' }),
      button('Approve for training', () => decide('approved'), 'good', { title: 'Approve (a)', 'data-test': 'approve' })));
  form.addEventListener('submit', (e) => { e.preventDefault(); save(); });
  add(el, [head, form, status, h('div', { class: 'turns' }, (conv.turns || []).map((t, i) => turnView(t, i)))]);
  return { el, decide, score, get id() { return conv.id; } };
}

function signalsLine(sig) {
  if (!sig) return null;
  const items = [];
  if (sig.duplicate_of) items.push(h('span', null, badge('duplicate', 'warn'), ' of ', h('a', { href: `#/conversations/${encodeURIComponent(sig.duplicate_of)}` }, sig.duplicate_of)));
  if (sig.complete_answer === false) items.push(badge('incomplete answer', 'warn'));
  if (sig.upstream_error) items.push(badge('upstream error', 'bad'));
  return items.length ? h('div', { class: 'signals' }, items) : null;
}

function turnView(t, i) {
  if (t.status === 'missing') return h('article', { class: 'turn' }, h('p', { class: 'muted' }, `Turn ${i + 1} is not in the store: still being written, or lost in a crash (${t.inference_id}).`));
  const usage = t.response?.usage;
  const meta = h('div', { class: 'turn-meta' },
    h('strong', null, `Turn ${i + 1}`), ' ', badge(t.version || dash, 'info'), ' ',
    t.status && t.status !== 'ok' ? statusBadge(t.status) : null,
    h('span', { class: 'muted small' }, ` ${ms(t.latency_ms)}${t.first_byte_ms != null ? ` (first byte ${ms(t.first_byte_ms)})` : ''}`,
      usage ? ` · ${num(usage.prompt_tokens)} + ${num(usage.completion_tokens)} tokens${usage.estimated ? ' (estimated)' : ''}` : '', t.streamed ? ' · streamed' : '', ` · ${when(t.created_at)}`),
    t.fallback_from ? h('span', { class: 'badge badge-warn' }, `fallback from ${t.fallback_from}`) : null);
  const messages = (t.request?.messages || []).map((m) => message(m.role, m));
  const answer = t.response?.message ? message('assistant', t.response.message, true) : null;
  const error = t.response?.error ? h('div', { class: 'msg msg-error' }, h('div', { class: 'msg-role' }, 'error'), h('div', { class: 'msg-text' }, t.response.error.message || JSON.stringify(t.response.error))) : null;
  const fb = (t.feedback || []).length ? h('div', { class: 'feedback' }, h('div', { class: 'feedback-title' }, 'Feedback'),
    t.feedback.map((f) => h('div', { class: 'feedback-item' },
      f.rating ? h('span', { class: 'rating' }, `${'★'.repeat(f.rating)}${'☆'.repeat(5 - f.rating)}`) : null,
      f.thumbs ? badge(f.thumbs === 'up' ? '👍 up' : '👎 down', f.thumbs === 'up' ? 'good' : 'bad') : null,
      f.threat_type ? badge(words(f.threat_type), 'info') : null, f.severity ? statusBadge(f.severity) : null,
      f.quality_score ? h('span', { class: 'quality' }, `Q${f.quality_score}`) : null,
      f.approved_for_training != null ? badge(f.approved_for_training ? 'approve' : 'reject', f.approved_for_training ? 'good' : 'bad') : null,
      h('span', { class: 'muted small' }, ` ${f.author || ''} · ${ago(f.created_at)}`),
      f.notes ? h('div', { class: 'feedback-notes' }, f.notes) : null,
      f.correction ? h('div', { class: 'feedback-notes' }, 'Correction: ', f.correction) : null))) : null;
  const shadows = (t.shadows || []).length ? h('details', { class: 'shadows' }, h('summary', null, `${t.shadows.length} shadow answer${t.shadows.length === 1 ? '' : 's'}`),
    t.shadows.map((sh) => h('div', null, h('div', { class: 'muted small' }, `${sh.version} · ${ms(sh.latency_ms)} · ${sh.status}`), sh.response?.message ? message('assistant', sh.response.message, true) : null))) : null;
  return h('article', { class: 'turn' }, meta, messages, answer, error, fb, shadows);
}

function message(role, m, isAnswer = false) {
  const parts = [];
  const c = m.content;
  if (typeof c === 'string') parts.push(c);
  else if (Array.isArray(c)) for (const p of c) parts.push(p?.type === 'text' ? p.text : `[${p?.type || 'part'}]`);
  if (m.tool_calls) parts.push(m.tool_calls.map((tc) => `→ ${tc.function?.name}(${tc.function?.arguments ?? ''})`).join('\n'));
  if (m.refusal) parts.push(`Refusal: ${m.refusal}`);
  if (m.item_reference) parts.push(`[an earlier answer, named by its item id ${m.item_reference}]`);
  return h('div', { class: `msg msg-${role}${isAnswer ? ' msg-answer' : ''}` },
    h('div', { class: 'msg-role' }, isAnswer ? 'answer' : role),
    h('div', { class: 'msg-text' }, parts.join('\n') || dash));
}
