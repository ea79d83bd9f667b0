// What the JavaScript client suites share: one stack (simulator and proxy,
// the browser tests' harness) for a file's tests, the alert they send,
// and what the admin API says was captured for one test's end user —
// every test sends its own `x-flywheel-user`, so the `user` filter finds
// exactly its exchanges.

import { before, after } from 'node:test';
import { startStack, adminApi } from '../../browser/harness.mjs';

export const ALERT = 'Endpoint alert: LSASS memory dumped by rundll32.exe via comsvcs.dll MiniDump on host WS-042.';

/** Starts the stack before the file's tests and stops it after them;
 * `stack` (with a `client` key) and `admin` are set once it runs, and
 * `captured(user, turns)` reads through that `admin`. */
export function suiteStack() {
  const suite = { stack: undefined, admin: undefined };
  suite.captured = (user, turns) => captured(suite.admin, user, turns);
  before(async () => {
    suite.stack = await startStack({ client: 'client' });
    suite.admin = adminApi(suite.stack.url, suite.stack.admin);
  });
  after(async () => {
    await suite.stack?.stop();
  });
  return suite;
}

/** The conversations `user` has once they hold `turns` stored turns in
 * all, read through `admin`; fails with what it last saw after 30 s. */
export async function captured(admin, user, turns) {
  const deadline = Date.now() + 30000;
  let last;
  while (Date.now() < deadline) {
    const list = await admin(`/conversations?user=${encodeURIComponent(user)}`);
    last = list.body;
    if (list.status === 200) {
      const details = [];
      for (const summary of list.body.data) {
        details.push((await admin(`/conversations/${summary.id}`)).body);
      }
      const stored = details.flatMap((d) => d.turns ?? []).filter((t) => t.status === 'ok');
      if (stored.length >= turns) return details;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${user} never had ${turns} stored turns: ${JSON.stringify(last)}`);
}
