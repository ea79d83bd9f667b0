// The guided path in the admin UI, measured as the issue that asked for it
// measures it: a fresh `flywheel demo` with its defaults, an admin who
// signs in and follows "Improve the model" — dataset, fine-tune,
// evaluation against production, gated promotion — in at most ten UI
// actions and under five minutes, ending with the fine-tuned version
// serving and the overview showing its accuracy above base's.

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startDemo, adminApi, chat } from './harness.mjs';
import { openPage, shot, strays } from './browser.mjs';

const MAX_ACTIONS = 10;
const MAX_MS = 5 * 60 * 1000;

let demo, api, browser, page, problems;

describe('the guided path from approved conversations to a better model', { timeout: 420000 }, () => {
  before(async () => {
    demo = await startDemo();
    api = adminApi(demo.url, demo.admin);
    ({ browser, page, problems } = await openPage());
  });

  after(async () => {
    await browser?.close();
    await demo?.stop();
  });

  test('sign in, improve the model in four steps, and see it serve with a better accuracy', async () => {
    const started = Date.now();
    const done = [];
    // Every click, key press or typed field a person would do.
    const act = async (what, fn) => { done.push(what); await fn(); };

    await act('open the Admin UI address', () => page.goto(`${demo.url}/admin/`));
    await act('paste the admin token', () => page.fill('#signin-key', demo.admin));
    await act('sign in', () => page.click('#signin-form button'));
    await page.locator('[data-test=improve]').waitFor();
    await shot(page, '20-guided-overview-before');
    await act('Improve the model', () => page.click('[data-test=improve]'));

    // 1. The dataset, and what it holds.
    await act('Build the dataset', () => page.click('[data-test=improve-dataset]'));
    const summary = page.locator('[data-test=improve-dataset-summary]');
    await summary.waitFor();
    assert.match(await summary.textContent(), /134 examples: 107 to train on, 27 held out/);
    await shot(page, '21-guided-dataset');

    // 2. The fine-tune of production's model on it.
    await act('Start fine-tuning', () => page.click('[data-test=improve-finetune]'));
    const candidate = await page.locator('[data-test=improve-candidate]').textContent({ timeout: 120000 });
    assert.match(candidate, /^ft-/);
    await page.locator('[data-step="2"][data-state=done]').waitFor();
    await shot(page, '22-guided-fine-tune');

    // 3. The candidate against production on the held-out conversations.
    await act('Evaluate against production', () => page.click('[data-test=improve-evaluate]'));
    const results = page.locator('[data-test=improve-evaluation]');
    await results.waitFor({ timeout: 180000 });
    const figure = async (version, column) => Number((await results.locator(`tr[data-version="${version}"] td`).nth(column).textContent()).replace(/[^0-9.]/g, ''));
    for (const column of [1, 2]) {
      assert.ok(await figure(candidate, column) > await figure('base', column), `${candidate} above base in column ${column}`);
    }

    // 4. The gate's verdict beside the promote button, then the promotion.
    const verdict = page.locator(`[data-test="gate-${candidate}"]`);
    await verdict.waitFor();
    assert.equal(await verdict.getAttribute('data-allowed'), 'true');
    assert.match(await verdict.textContent(), /beats base/);
    assert.match(await verdict.textContent(), /McNemar p = /);
    await shot(page, '23-guided-evaluation-and-gate');
    await act('Promote', () => page.click('[data-test=improve-promote]'));
    await page.locator('[data-test=improve-done]').waitFor();
    await shot(page, '24-guided-promoted');

    // The overview: the fine-tuned version is production, its accuracy
    // above base's in the same evaluation.
    await act('back to the Overview', () => page.click('[data-test=improve-done] a[href="#/overview"]'));
    const line = page.locator('[data-test=production-accuracy]');
    await line.waitFor();
    assert.equal(await line.getAttribute('data-version'), candidate);
    const accuracy = async (version) => Number((await page.locator(`tr[data-version="${version}"][data-metric=accuracy] td.num`).first().textContent()).replace(/[^0-9.]/g, ''));
    assert.ok(await accuracy(candidate) > await accuracy('base'), 'the overview shows the fine-tune above base');
    assert.match(await line.textContent(), new RegExp(`Production ${candidate}: accuracy`));
    await shot(page, '25-guided-overview-after');

    const elapsed = Date.now() - started;
    assert.ok(done.length <= MAX_ACTIONS, `${done.length} UI actions: ${done.join(', ')}`);
    assert.ok(elapsed < MAX_MS, `${Math.round(elapsed / 1000)} s`);

    // And it really serves: the chat app's next request goes to it.
    const alias = (await api('/models/triage')).body;
    assert.equal(alias.production, candidate);
    const answered = await chat(demo.url, demo.client, 'Endpoint alert: mimikatz sekurlsa::logonpasswords on DC-01', { user: 'after-the-guided-path' });
    assert.equal(answered.variant, candidate);
    const audit = (await api('/audit?limit=10')).body.data;
    assert.ok(audit.some((e) => e.action === 'model.promote'), 'promoted through the gate');
    assert.ok(!audit.some((e) => e.action === 'model.promote.forced'), 'not forced');
  });

  test('no page of the path raised a script error or printed a raw null', () => {
    assert.deepEqual(strays, []);
    assert.deepEqual(problems, []);
  });
});
