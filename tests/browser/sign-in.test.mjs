// Signing in to the admin UI with a Microsoft account: the simulator is
// the identity platform (Entra ID's authorize and token endpoints, its
// signed tokens, its published keys); Chromium goes there and back, and
// the page redeems the code it brings with its PKCE verifier.

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startStack } from './harness.mjs';
import { openPage, shot } from './browser.mjs';

let stack, browser, page, problems;

describe('signing in with Microsoft', { timeout: 120000 }, () => {
  before(async () => {
    stack = await startStack({}, { entraRoles: ['Flywheel.Analyst'] });
    ({ browser, page, problems } = await openPage());
  });

  after(async () => {
    await browser?.close();
    await stack?.stop();
  });

  test('an analyst signs in with a Microsoft account, within the page\'s CSP', async () => {
    const res = await page.goto(`${stack.url}/admin/`);
    // The page may call the identity platform, and nothing else but Flywheel.
    assert.match(res.headers()['content-security-policy'], new RegExp(`connect-src 'self' ${stack.simUrl};`));
    const button = page.locator('#signin-entra-button');
    await button.waitFor();
    await shot(page, 'sign-in-with-microsoft');
    // Flywheel fetches the tenant's signing keys in the background at
    // start; until then a token is refused with "try again shortly".
    for (let attempt = 0; ; attempt += 1) {
      await page.click('#signin-entra-button');
      const outcome = await Promise.race([
        page.locator('#who-role', { hasText: 'analyst' }).waitFor().then(() => 'in'),
        page.locator('#signin-error:not([hidden])').waitFor().then(() => 'refused'),
      ]);
      if (outcome === 'in') break;
      const said = await page.locator('#signin-error').textContent();
      assert.ok(attempt < 20 && /try again shortly/.test(said), said);
      await page.waitForTimeout(250);
    }
    // The account is shown; the caller id the server knows it by is its title.
    assert.equal(await page.locator('#who-id').textContent(), 'analyst@soc.example');
    assert.match(await page.locator('#who-id').getAttribute('title'), /^entra:/);
    assert.equal(new URL(page.url()).search, '', 'the code is not left in the address bar');
    assert.deepEqual(await page.locator('#nav a').allTextContents(),
      ['Overview', 'Review', 'Datasets', 'Fine-tuning', 'Models', 'Performance']);
    await page.locator('.tile-total').waitFor();
    await shot(page, 'signed-in-with-microsoft');
    assert.deepEqual(problems, []);
  });

  test('a token Flywheel refuses is renewed with the refresh token, once', async () => {
    // As if the hour were up: the token kept for the tab is no longer one
    // Flywheel takes. The next call renews it and carries on, whether the
    // page moves on or is loaded again.
    const expire = () => page.evaluate(() => sessionStorage.setItem('flywheel.key', 'eyJhbGciOiJSUzI1NiJ9.e30.expired'));
    const kept = () => page.evaluate(() => sessionStorage.getItem('flywheel.key'));
    const before = await kept();
    await expire();
    await page.goto(`${stack.url}/admin/#/review`);
    await page.locator('#review-search').waitFor();
    const renewed = await kept();
    assert.notEqual(renewed, before);
    assert.match(renewed, /^eyJ/);
    await expire();
    await page.reload();
    await page.locator('#who-role', { hasText: 'analyst' }).waitFor();
    assert.notEqual(await kept(), renewed);
    assert.match(await kept(), /^eyJ/);
    // A refresh token that no longer works: back to the sign-in page.
    await page.evaluate(() => {
      const renewal = JSON.parse(sessionStorage.getItem('flywheel.entra-renewal'));
      sessionStorage.setItem('flywheel.entra-renewal', JSON.stringify({ ...renewal, refresh_token: 'spent' }));
      sessionStorage.setItem('flywheel.key', 'eyJhbGciOiJSUzI1NiJ9.e30.expired');
    });
    await page.reload();
    await page.locator('#signin-error:not([hidden])').waitFor();
    assert.equal(await kept(), null);
    assert.deepEqual(problems, []);
  });

  test('a sign-in that did not start in this tab is refused', async () => {
    await page.evaluate(() => sessionStorage.clear());
    await page.goto(`${stack.url}/admin/?code=stolen&state=forged`);
    await page.getByText('This sign-in was not started from this tab').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('flywheel.key')), null);
  });
});
