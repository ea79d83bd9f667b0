// Headless Chromium from the system (never a downloaded build), driven by
// playwright-core, with a fresh profile directory for every run.

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ARTIFACTS } from './harness.mjs';

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

export async function launchBrowser() {
  const profile = mkdtempSync(join(tmpdir(), 'flywheel-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 860 },
    acceptDownloads: true,
    timeout: 60000,
  });
  context.setDefaultTimeout(15000);
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** A browser with one page open, and what `watch` collects on it. */
export async function openPage() {
  const browser = await launchBrowser();
  const page = await browser.context.newPage();
  return { browser, page, problems: watch(page) };
}

/** Collects what must never happen on a page: script errors, CSP
 * violations, failed console errors. */
export function watch(page) {
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 40[34]|status of 409|Failed to load resource/.test(m.text())) problems.push(`console error: ${m.text()}`);
  });
  return problems;
}

/** Text nodes that say "null", "undefined" or "[object Object]": a value
 * put on the page without being formatted. */
export async function strayValues(page) {
  return page.evaluate(() => {
    const bad = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      if (/^(null|undefined|NaN)$|\[object Object\]/.test(n.textContent.trim())) bad.push(n.textContent.trim());
    }
    return bad;
  });
}

/** What `shot` found printed unformatted, by screenshot. */
export const strays = [];

export async function shot(page, name, { fullPage = true } = {}) {
  const bad = await strayValues(page);
  if (bad.length) strays.push(`${name}: ${bad.join(', ')}`);
  mkdirSync(join(ARTIFACTS, 'screenshots'), { recursive: true });
  // Toasts fade by themselves; a picture of the page should not hold them.
  await page.evaluate(() => document.getElementById('toasts')?.replaceChildren());
  await page.screenshot({ path: join(ARTIFACTS, 'screenshots', `${name}.png`), fullPage });
}
