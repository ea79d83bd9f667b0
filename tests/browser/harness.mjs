// Starts what the browser tests drive: the real simulator and the real
// proxy (target/debug/flywheel, or FLYWHEEL_BIN), each on a free loopback
// port, the proxy on a temporary data dir with keys made by
// `flywheel keys create` before it starts (sled admits one process per
// data dir). Process logs go to test-artifacts/.

import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync, openSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ARTIFACTS = join(ROOT, 'test-artifacts');
export const BIN = resolve(process.env.FLYWHEEL_BIN || join(ROOT, 'target', 'debug', 'flywheel'));
export const ADMIN_TOKEN = `fw-browser-suite-admin-${randomBytes(8).toString('hex')}`;
/** The admin UI's app registration at the simulated identity platform. */
export const ENTRA = { tenant: 'soc-tenant', uiClientId: 'flywheel-admin-ui', secret: `ui-${randomBytes(8).toString('hex')}` };
const run = promisify(execFile);

export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => ok(port)); });
  });
}

function childEnv() {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('FLYWHEEL__')));
  env.FLYWHEEL_ADMIN_TOKEN = ADMIN_TOKEN;
  env.FLYWHEEL_TEST_ENTRA_SECRET = ENTRA.secret;
  // The Azure provider's key stays unset (the simulator takes requests
  // without one), and the overview says so.
  delete env.AZURE_OPENAI_API_KEY;
  env.RUST_LOG = env.RUST_LOG || 'info';
  env.NO_COLOR = '1';
  env.NO_PROXY = [env.NO_PROXY, '127.0.0.1', 'localhost'].filter(Boolean).join(',');
  return env;
}

const config = ({ port, dataDir, simPort }) => `
[server]
listen = "127.0.0.1:${port}"
data_dir = "${dataDir}"

[auth]
admin_token_env = "FLYWHEEL_ADMIN_TOKEN"
allow_anonymous_clients = false

[limits]
requests_per_minute = 0

[capture]
flush_every_ms = 50

[fine_tuning]
min_examples = 3
poll_interval_s = 1

[[providers]]
name = "sim"
base_url = "http://127.0.0.1:${simPort}/v1"
max_retries = 0
timeout_s = 20
first_byte_timeout_s = 10
fine_tuning = true
# The simulator takes LoRA adapters at run time, as vLLM does.
lora = true

# The test trainer (plain Python), its adapters served by \`sim\`.
[[providers]]
name = "trainer"
kind = "command"
fine_tuning = true
command = ${JSON.stringify(['python3', join(ROOT, 'tests/fixtures/trainer/train.py'), '--train', '{train_file}', '--validation', '{validation_file}',
  '--base-model', '{base_model}', '--method', '{method}', '--epochs', '{epochs}', '--batch-size', '{batch_size}',
  '--learning-rate-multiplier', '{learning_rate_multiplier}', '--seed', '{seed}', '--output', '{output_dir}'])}
adapters_dir = "${join(dataDir, 'adapters')}"
serve_on = ["sim"]

# The same simulator in Azure mode (no key: it takes any), with no
# management access: a job there ends awaiting its deployment.
[[providers]]
name = "azure"
kind = "azure"
base_url = "http://127.0.0.1:${simPort}"
api_version = "2024-10-21"
api_key_env = "AZURE_OPENAI_API_KEY"
max_retries = 0
fine_tuning = true

[[models]]
name = "triage"
model_type = "threat_detection"
  [[models.versions]]
  name = "base"
  provider = "sim"
  model = "gpt-4o-mini"
`;

async function waitReady(child, url, name, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode} before ${url} was ready; see test-artifacts/browser-${name}.log`);
    try {
      const r = await fetch(url);
      if (r.ok) return;
      last = `${r.status}`;
    } catch (e) { last = e.message; }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms (last: ${last})`);
}

function launch(name, args) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const log = openSync(join(ARTIFACTS, `browser-${name}.log`), 'w');
  return spawn(BIN, args, { cwd: ROOT, env: childEnv(), stdio: ['ignore', log, log] });
}

/** People sign in to the admin UI with Microsoft accounts: Entra ID's
 * tokens (the simulator's) for Flywheel's API, `roles` their app roles. */
const entraConfig = (simPort) => `
[auth.entra]
tenant_id = "${ENTRA.tenant}"
audiences = ["api://flywheel"]
authority = "http://127.0.0.1:${simPort}"
admin_ui_client_id = "${ENTRA.uiClientId}"
`;

/** Starts simulator and proxy; `keys` maps a handle to a role. With
 * `entraRoles`, the simulator is also the identity platform, signing
 * everyone in with those app roles, and the admin UI offers it. */
export async function startStack(keys = {}, { entraRoles } = {}) {
  if (!existsSync(BIN)) throw new Error(`flywheel binary not found at ${BIN}: run \`cargo build --bin flywheel\` or set FLYWHEEL_BIN`);
  const work = mkdtempSync(join(tmpdir(), 'flywheel-browser-'));
  const children = [];
  const stop = async () => {
    for (const c of children.reverse()) {
      if (c.exitCode !== null) continue;
      const exited = new Promise((r) => c.once('exit', r));
      c.kill('SIGTERM');
      const timer = setTimeout(() => c.kill('SIGKILL'), 10000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(work, { recursive: true, force: true });
  };
  try {
    const simPort = await freePort();
    const entra = entraRoles ? ['--azure-entra-secret-env', 'FLYWHEEL_TEST_ENTRA_SECRET', '--azure-entra-tenant', ENTRA.tenant,
      '--azure-entra-client-id', ENTRA.uiClientId, '--azure-entra-app-roles', entraRoles.join(',')] : [];
    const sim = launch('simulator', ['simulate', '--azure', '--listen', `127.0.0.1:${simPort}`, '--job-step-ms', '1000', ...entra]);
    children.push(sim);
    await waitReady(sim, `http://127.0.0.1:${simPort}/v1/models`, 'simulator');

    const port = await freePort();
    const configPath = join(work, 'flywheel.toml');
    writeFileSync(configPath, config({ port, dataDir: join(work, 'data'), simPort }) + (entraRoles ? entraConfig(simPort) : ''));
    const made = {};
    for (const [handle, role] of Object.entries(keys)) {
      const { stdout } = await run(BIN, ['keys', 'create', '--role', role, '--name', `browser ${handle}`, '--config', configPath], { cwd: ROOT, env: childEnv() });
      made[handle] = stdout.trim();
    }
    const proxy = launch('proxy', ['serve', '--config', configPath]);
    children.push(proxy);
    const url = `http://127.0.0.1:${port}`;
    await waitReady(proxy, `${url}/readyz`, 'proxy');
    return { url, simUrl: `http://127.0.0.1:${simPort}`, keys: made, admin: ADMIN_TOKEN, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** Starts `flywheel demo` as a newcomer runs it (its own config, its
 * defaults), on a free port instead of the usual one, and waits until its
 * terminal says it is ready; the addresses and keys are read from what it
 * printed. */
export async function startDemo({ timeoutMs = 180000 } = {}) {
  if (!existsSync(BIN)) throw new Error(`flywheel binary not found at ${BIN}: run \`cargo build --bin flywheel\` or set FLYWHEEL_BIN`);
  mkdirSync(ARTIFACTS, { recursive: true });
  const port = await freePort();
  const env = childEnv();
  env.FLYWHEEL__SERVER__LISTEN = `127.0.0.1:${port}`;
  delete env.FLYWHEEL_ADMIN_TOKEN;
  const log = openSync(join(ARTIFACTS, 'browser-demo.log'), 'w');
  const child = spawn(BIN, ['demo'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', log] });
  let out = '';
  const stop = async () => {
    if (child.exitCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10000);
    await exited;
    clearTimeout(timer);
  };
  const ready = new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`the demo was not ready within ${timeoutMs} ms; it printed:\n${out}`)), timeoutMs);
    child.stdout.on('data', (chunk) => {
      out += chunk;
      if (/Flywheel demo is ready[\s\S]*promotes it if it is better/.test(out)) { clearTimeout(timer); ok(); }
    });
    child.once('exit', (code) => { clearTimeout(timer); fail(new Error(`the demo exited with ${code}; it printed:\n${out}`)); });
  });
  try {
    await ready;
  } catch (e) {
    await stop();
    throw e;
  }
  const field = (label) => {
    const line = out.split('\n').find((l) => l.trim().startsWith(label));
    if (!line) throw new Error(`no ${label} in what the demo printed:\n${out}`);
    return line.trim().split(/\s+/).pop();
  };
  return { url: field('OpenAI base URL').replace(/\/v1$/, ''), admin: field('Admin token'), client: field('Client key'), printed: () => out, stop };
}

/** A small admin API client for assertions from the test. */
export function adminApi(url, key) {
  return async (path, { method = 'GET', body, headers = {} } = {}) => {
    const res = await fetch(`${url}/admin/api${path}`, {
      method,
      headers: { Authorization: `Bearer ${key}`, ...(body ? { 'Content-Type': 'application/json' } : {}), ...headers },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { json = text; }
    return { status: res.status, body: json, headers: res.headers };
  };
}

/** A chat completion through the proxy, as a chat app would send it. */
export async function chat(url, key, content, { user = 'analyst-1', system } = {}) {
  const messages = system ? [{ role: 'system', content: system }, { role: 'user', content }] : [{ role: 'user', content }];
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json', 'x-flywheel-user': user },
    body: JSON.stringify({ model: 'triage', messages }),
  });
  if (!res.ok) throw new Error(`chat completion failed: ${res.status} ${await res.text()}`);
  return { body: await res.json(), conversation: res.headers.get('x-flywheel-conversation-id'), inference: res.headers.get('x-flywheel-inference-id'), variant: res.headers.get('x-flywheel-variant') };
}
