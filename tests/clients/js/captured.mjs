// What the admin API says was captured for one test's end user: the
// client suites each send their own `x-flywheel-user`, so the `user`
// filter finds exactly their exchanges.

/** The conversations `user` has once they hold `turns` stored turns in
 * all, read through `admin` (`adminApi` of the browser harness); fails
 * with what it last saw after 30 s. */
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
