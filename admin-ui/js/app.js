// The single-page shell: sign-in, the navigation the role allows, and a
// hash router (`#/review`, `#/models/triage`) that renders one page at a
// time into <main id="view">.

import { api, session, whenUnauthorized, renewingWith, ApiError } from './api.js';
import { startEntraSignIn, finishEntraSignIn, renewEntraSignIn, forgetEntraSignIn, signedInAs } from './entra.js';
import { h, clear, errorBox, loading, toast } from './dom.js';
import * as overview from './pages/overview.js';
import * as review from './pages/review.js';
import * as datasets from './pages/datasets.js';
import * as jobs from './pages/jobs.js';
import * as models from './pages/models.js';
import * as performance from './pages/performance.js';
import * as keys from './pages/keys.js';
import * as audit from './pages/audit.js';
import * as improve from './pages/improve.js';

const PAGES = [
  { path: 'overview', label: 'Overview', page: overview },
  { path: 'review', label: 'Review', page: review },
  { path: 'improve', page: improve, hidden: true },
  { path: 'conversations', page: review, hidden: true },
  { path: 'datasets', label: 'Datasets', page: datasets },
  { path: 'jobs', label: 'Fine-tuning', page: jobs },
  { path: 'models', label: 'Models', page: models },
  { path: 'performance', label: 'Performance', page: performance },
  { path: 'evaluations', page: performance, hidden: true },
  { path: 'keys', label: 'Keys', page: keys, admin: true },
  { path: 'audit', label: 'Audit log', page: audit, admin: true },
];

const state = { me: null, cleanup: null, seq: 0 };

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query) };
}

export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function route() {
  if (!state.me) return;
  const { parts, query } = parseHash();
  const name = parts[0] || 'overview';
  const entry = PAGES.find((p) => p.path === name);
  const view = document.getElementById('view');
  if (state.cleanup) { try { state.cleanup(); } catch { /* page gone */ } state.cleanup = null; }
  const seq = ++state.seq;
  for (const a of document.querySelectorAll('#nav a')) {
    const target = a.dataset.path;
    const on = target === name || (name === 'conversations' && target === 'review') || (name === 'evaluations' && target === 'performance') || (name === 'improve' && target === 'overview');
    a.classList.toggle('active', on);
    if (on) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  clear(view);
  if (!entry || (entry.admin && state.me.role !== 'admin')) {
    view.append(h('div', { class: 'page' }, h('h1', null, 'Not here'),
      errorBox(new ApiError(entry ? 403 : 404, { message: entry ? 'This page needs an admin key.' : 'There is no such page.' }))));
    return;
  }
  document.title = `${entry.label || { improve: 'Improve the model' }[name] || name[0].toUpperCase() + name.slice(1)} · Flywheel`;
  view.append(loading());
  const ctx = {
    root: view, parts, query, me: state.me, isAdmin: state.me.role === 'admin', navigate,
    alive: () => seq === state.seq,
  };
  try {
    const cleanup = await entry.page.render(ctx);
    if (seq === state.seq) state.cleanup = cleanup || null;
    else if (cleanup) cleanup();
  } catch (e) {
    if (seq !== state.seq) return;
    clear(view);
    view.append(h('div', { class: 'page' }, errorBox(e)));
  }
}

function buildNav() {
  const nav = document.getElementById('nav');
  clear(nav);
  for (const p of PAGES) {
    if (p.hidden || (p.admin && state.me.role !== 'admin')) continue;
    nav.append(h('a', { href: `#/${p.path}`, dataset: { path: p.path } }, p.label));
  }
  document.getElementById('who-role').textContent = state.me.role;
  document.getElementById('who-role').className = `badge badge-${state.me.role === 'admin' ? 'warn' : 'info'}`;
  const who = document.getElementById('who-id');
  who.textContent = signedInAs(session.key) ?? state.me.id;
  who.title = state.me.id;
  document.body.dataset.role = state.me.role;
}

function showSignin(message) {
  state.me = null;
  document.getElementById('shell').hidden = true;
  document.getElementById('signin').hidden = false;
  const err = document.getElementById('signin-error');
  err.hidden = !message;
  err.textContent = message || '';
  document.getElementById('signin-key').focus();
}

async function signIn(key) {
  const me = await api('/me', { key });
  if (me.role !== 'admin' && me.role !== 'analyst') throw new ApiError(403, { message: 'This key cannot use the admin console.' });
  session.set(key);
  state.me = me;
  document.getElementById('signin').hidden = true;
  document.getElementById('shell').hidden = false;
  buildNav();
  route();
}

function globalKeys(e) {
  if (e.target.closest('input, textarea, select, [contenteditable]')) {
    if (e.key === 'Escape') e.target.blur();
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === '?') { e.preventDefault(); document.getElementById('help').showModal(); return; }
  if (globalKeys.g) {
    globalKeys.g = false;
    const go = { o: '#/overview', r: '#/review', m: '#/models', d: '#/datasets', j: '#/jobs', p: '#/performance' }[e.key];
    if (go) { e.preventDefault(); navigate(go); }
    return;
  }
  if (e.key === 'g') { globalKeys.g = true; setTimeout(() => { globalKeys.g = false; }, 1200); }
}

/** Offers signing in with a Microsoft account when the server does. */
async function offerEntra() {
  let methods;
  try { methods = await api('/sign-in', { key: '' }); } catch { return; }
  if (!methods.entra) return;
  document.getElementById('signin-entra').hidden = false;
  document.getElementById('signin-entra-button').addEventListener('click', () => {
    startEntraSignIn(methods.entra).catch((err) => showSignin(err.message));
  });
}

async function start() {
  whenUnauthorized(() => { session.clear(); forgetEntraSignIn(); showSignin('Your sign-in is no longer accepted (a revoked key, or a Microsoft sign-in that could not be renewed); sign in again.'); });
  renewingWith(renewEntraSignIn);
  document.getElementById('signin-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const input = document.getElementById('signin-key');
    const key = input.value.trim();
    const button = e.target.querySelector('button');
    button.disabled = true;
    try {
      await signIn(key);
      input.value = '';
    } catch (err) {
      showSignin(err.status === 401 ? 'That key is not valid (unknown or revoked).' : err.message);
    } finally {
      button.disabled = false;
    }
  });
  document.getElementById('signout').addEventListener('click', () => { session.clear(); forgetEntraSignIn(); showSignin(); toast('Signed out.'); });
  document.getElementById('help-button').addEventListener('click', () => document.getElementById('help').showModal());
  document.addEventListener('keydown', globalKeys);
  window.addEventListener('hashchange', route);
  offerEntra();
  let returned = null;
  try {
    returned = await finishEntraSignIn();
  } catch (err) {
    showSignin(`Signing in with Microsoft failed: ${err.message}`);
    return;
  }
  const key = returned ?? session.key;
  if (key) resume(key).catch((err) => { session.clear(); forgetEntraSignIn(); showSignin(err.message); });
  else showSignin();
}

/** Signs the tab in with what it kept: its key, or, when that is a
 * Microsoft sign-in's token that has expired, the token it renews to. */
async function resume(key) {
  try {
    await signIn(key);
  } catch (err) {
    if (err.status !== 401) throw err;
    const fresh = await renewEntraSignIn();
    if (!fresh) throw err;
    await signIn(fresh);
  }
}

start();
