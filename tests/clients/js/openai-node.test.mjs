// The official OpenAI SDK for JavaScript and TypeScript (`openai`, pinned
// in package-lock.json to the last release that runs on Debian's Node 20)
// against the real proxy in front of the real simulator, as an app that
// only changed its base URL uses it: unary calls with Flywheel's headers
// read through `withResponse()`, streams (raw, and the `stream()`
// helper), structured output through `parse()` and zod, a tool loop, the
// Responses API with a `previous_response_id` chain, embeddings in the
// SDK's default base64 encoding, the SDK's error classes and its retries,
// a stream broken upstream, feedback riding a request's header, and the
// SDK's `AzureOpenAI` client of an app built for Azure OpenAI.
// Exchanges are checked captured through the admin API; every test sends
// its own `x-flywheel-user`.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import OpenAI, { AzureOpenAI } from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import { z } from 'zod';
import { ALERT, suiteStack } from './suite.mjs';

const MESSAGES = [{ role: 'user', content: ALERT }];
const suite = suiteStack();

/** A client whose every request names `user` to Flywheel. */
function client(user, options = {}) {
  return new OpenAI({
    baseURL: `${suite.stack.url}/v1`,
    apiKey: suite.stack.keys.client,
    defaultHeaders: { 'x-flywheel-user': user },
    ...options,
  });
}

/** A fresh id for the simulator's fault counters. */
function faultId() {
  return `node-${randomUUID()}`;
}

test('a unary completion carries Flywheel headers and is captured', async () => {
  const user = `openai-node-unary-${randomUUID()}`;
  const { data, response, request_id } = await client(user)
    .chat.completions.create({ model: 'triage', messages: MESSAGES })
    .withResponse();
  assert.match(response.headers.get('x-flywheel-inference-id'), /^inf_/);
  assert.equal(response.headers.get('x-flywheel-variant'), 'base');
  assert.ok(response.headers.get('x-flywheel-conversation-id'));
  assert.equal(request_id, response.headers.get('x-request-id'));
  assert.equal(data.object, 'chat.completion');
  assert.equal(data.choices[0].finish_reason, 'stop');
  assert.match(data.choices[0].message.content, /^Threat type: credential_access/);
  assert.equal(data.usage.total_tokens, data.usage.prompt_tokens + data.usage.completion_tokens);
  const [conversation] = await suite.captured(user, 1);
  assert.equal(conversation.turns[0].inference_id, response.headers.get('x-flywheel-inference-id'));
  assert.equal(conversation.turns[0].response.message.content, data.choices[0].message.content);
});

test('a raw stream with include_usage matches the unary answer and ends with usage', async () => {
  const user = `openai-node-stream-${randomUUID()}`;
  const unary = await client(user).chat.completions.create({ model: 'triage', messages: MESSAGES });
  const stream = await client(user).chat.completions.create({
    model: 'triage', messages: MESSAGES, stream: true, stream_options: { include_usage: true },
  });
  const deltas = [];
  let usage;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) if (choice.delta.content) deltas.push(choice.delta.content);
  }
  assert.ok(deltas.length > 3, 'several deltas');
  assert.equal(deltas.join(''), unary.choices[0].message.content);
  assert.deepEqual(usage, unary.usage);
  const conversations = await suite.captured(user, 2);
  const streamed = conversations.flatMap((c) => c.turns).find((t) => t.streamed);
  assert.equal(streamed.response.message.content, deltas.join(''));
});

test('the stream() helper gives content events and the final completion', async () => {
  const user = `openai-node-helper-${randomUUID()}`;
  const runner = client(user).chat.completions.stream({ model: 'triage', messages: MESSAGES });
  const deltas = [];
  runner.on('content', (delta) => deltas.push(delta));
  const final = await runner.finalChatCompletion();
  assert.equal(final.choices[0].message.content, deltas.join(''));
  assert.match(final.choices[0].message.content, /^Threat type: credential_access/);
  const [conversation] = await suite.captured(user, 1);
  assert.equal(conversation.turns[0].streamed, true);
});

test('parse() with a zod response format gets a valid object', async () => {
  const user = `openai-node-parse-${randomUUID()}`;
  const Verdict = z.object({
    threat_type: z.string(),
    severity: z.enum(['informational', 'low', 'medium', 'high', 'critical']),
    rationale: z.string(),
  });
  const completion = await client(user).chat.completions.parse({
    model: 'triage', messages: MESSAGES, response_format: zodResponseFormat(Verdict, 'verdict'),
  });
  const verdict = completion.choices[0].message.parsed;
  assert.equal(verdict.threat_type, 'credential_access');
  assert.equal(verdict.severity, 'high');
  const [conversation] = await suite.captured(user, 1);
  assert.equal(conversation.turns[0].request.params.response_format.type, 'json_schema');
});

test('a tool loop is answered and threaded as one conversation', async () => {
  const user = `openai-node-tools-${randomUUID()}`;
  const openai = client(user);
  const tools = [{
    type: 'function',
    function: {
      name: 'lookup_host',
      description: 'Looks a host up in the asset inventory.',
      parameters: { type: 'object', properties: { host: { type: 'string' } }, required: ['host'] },
    },
  }];
  const messages = [...MESSAGES];
  const first = await openai.chat.completions.create({ model: 'triage', messages, tools, tool_choice: 'required' });
  const call = first.choices[0].message.tool_calls?.[0];
  assert.equal(call?.function.name, 'lookup_host');
  assert.equal(typeof JSON.parse(call.function.arguments).host, 'string');
  messages.push(first.choices[0].message, {
    role: 'tool', tool_call_id: call.id, content: JSON.stringify({ owner: 'finance', criticality: 'high' }),
  });
  const second = await openai.chat.completions.create({ model: 'triage', messages, tools });
  assert.match(second.choices[0].message.content, /Threat type:/);
  const conversations = await suite.captured(user, 2);
  assert.equal(conversations.length, 1, 'one conversation');
  assert.equal(conversations[0].turns.length, 2);
});

test('the Responses API chains previous_response_id into one conversation', async () => {
  const user = `openai-node-responses-${randomUUID()}`;
  const openai = client(user);
  const first = await openai.responses.create({ model: 'triage', input: ALERT });
  assert.match(first.id, /^resp_/);
  assert.match(first.output_text, /^Threat type: credential_access/);
  const stream = openai.responses.stream({
    model: 'triage', input: 'Is the host isolated already?', previous_response_id: first.id,
  });
  const deltas = [];
  stream.on('response.output_text.delta', (event) => deltas.push(event.delta));
  const second = await stream.finalResponse();
  assert.equal(second.output_text, deltas.join(''));
  const conversations = await suite.captured(user, 2);
  assert.equal(conversations.length, 1, 'one conversation');
  assert.equal(conversations[0].turns[1].streamed, true);
});

test('embeddings in the SDK\'s default base64 encoding decode to the float answer', async () => {
  const openai = client('openai-node-embeddings');
  const input = ['mimikatz on DC01', 'benign backup job'];
  // Asked for base64 (the SDK's default), the answer is base64 on the wire.
  const raw = await openai.embeddings.create({ model: 'text-embedding-3-small', input }).asResponse();
  assert.equal(typeof (await raw.json()).data[0].embedding, 'string');
  const decoded = await openai.embeddings.create({ model: 'text-embedding-3-small', input });
  const floats = await openai.embeddings.create({ model: 'text-embedding-3-small', input, encoding_format: 'float' });
  assert.deepEqual(decoded.data.map((d) => d.index), [0, 1]);
  for (const [i, d] of decoded.data.entries()) {
    assert.ok(d.embedding.length > 0);
    assert.equal(d.embedding.length, floats.data[i].embedding.length);
    // base64 carries float32: equal to float32 precision.
    d.embedding.forEach((x, j) => assert.ok(Math.abs(x - floats.data[i].embedding[j]) < 1e-6));
  }
});

test('errors arrive as the SDK\'s classes with OpenAI\'s fields', async () => {
  const openai = client('openai-node-errors', { maxRetries: 0 });
  await assert.rejects(openai.chat.completions.create({ model: 'no-such-alias-or-model', messages: MESSAGES }), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError, e.constructor.name);
    assert.equal(e.status, 404);
    assert.ok(e.message && e.type, JSON.stringify(e.error));
    return true;
  });
  await assert.rejects(openai.chat.completions.create({ model: 'triage', messages: [] }), (e) => {
    assert.ok(e instanceof OpenAI.BadRequestError, e.constructor.name);
    assert.equal(e.param, 'messages');
    return true;
  });
  const stranger = new OpenAI({ baseURL: `${suite.stack.url}/v1`, apiKey: 'fw-not-a-key', maxRetries: 0 });
  await assert.rejects(stranger.models.list(), (e) => {
    assert.ok(e instanceof OpenAI.AuthenticationError, e.constructor.name);
    assert.equal(e.status, 401);
    return true;
  });
});

test('the SDK retries an upstream 503 through Flywheel and succeeds', async () => {
  const faults = { 'x-sim-status': '503', 'x-sim-fail-times': '1' };
  const once = client('openai-node-retry', { maxRetries: 0 });
  await assert.rejects(
    once.chat.completions.create({ model: 'triage', messages: MESSAGES }, { headers: { ...faults, 'x-sim-fault-id': faultId() } }),
    (e) => e instanceof OpenAI.InternalServerError && e.status === 503,
  );
  const retrying = client('openai-node-retry', { maxRetries: 2 });
  const answer = await retrying.chat.completions.create(
    { model: 'triage', messages: MESSAGES },
    { headers: { ...faults, 'x-sim-fault-id': faultId() } },
  );
  assert.match(answer.choices[0].message.content, /^Threat type:/);
});

test('a stream broken upstream raises an APIError after its content', async () => {
  const openai = client('openai-node-broken', { maxRetries: 0 });
  const stream = await openai.chat.completions.create(
    { model: 'triage', messages: MESSAGES, stream: true },
    { headers: { 'x-sim-drop-after': '3', 'x-sim-token-delay-ms': '10' } },
  );
  let received = '';
  await assert.rejects(
    (async () => {
      for await (const chunk of stream) for (const choice of chunk.choices) received += choice.delta.content ?? '';
    })(),
    (e) => {
      assert.ok(e instanceof OpenAI.APIError, e.constructor.name);
      assert.ok(!(e instanceof OpenAI.APIConnectionError), 'Flywheel ends the stream with an error event');
      return true;
    },
  );
  assert.ok(received.length > 0, 'content before the break reached the client');
});

test('feedback rides the next request\'s header', async () => {
  const user = `openai-node-feedback-${randomUUID()}`;
  const openai = client(user);
  const { response } = await openai.chat.completions.create({ model: 'triage', messages: MESSAGES }).withResponse();
  const inference = response.headers.get('x-flywheel-inference-id');
  const followed = await openai.models
    .list({ headers: { 'x-flywheel-feedback': `id="${inference}", rating=5` } })
    .withResponse();
  assert.match(followed.response.headers.get('x-flywheel-feedback-id'), /^fb_/);
  const deadline = Date.now() + 30000;
  let feedback = [];
  while (Date.now() < deadline && feedback.length === 0) {
    const [conversation] = await suite.captured(user, 1);
    feedback = conversation.turns[0].feedback ?? [];
    if (feedback.length === 0) await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(feedback[0]?.rating, 5);
});

test('the AzureOpenAI client of an app built for Azure reaches the alias as its deployment', async () => {
  const user = `openai-node-azure-${randomUUID()}`;
  const azure = new AzureOpenAI({
    endpoint: suite.stack.url, apiKey: suite.stack.keys.client, apiVersion: '2024-10-21', deployment: 'triage',
    defaultHeaders: { 'x-flywheel-user': user },
  });
  const { data, response } = await azure.chat.completions
    .create({ model: 'what-the-app-calls-it', messages: MESSAGES })
    .withResponse();
  assert.equal(response.headers.get('x-flywheel-variant'), 'base');
  assert.match(data.choices[0].message.content, /^Threat type: credential_access/);
  const stream = await azure.chat.completions.create({ model: 'what-the-app-calls-it', messages: MESSAGES, stream: true });
  let text = '';
  for await (const chunk of stream) for (const choice of chunk.choices) text += choice.delta?.content ?? '';
  assert.equal(text, data.choices[0].message.content);
  const conversations = await suite.captured(user, 2);
  assert.deepEqual(new Set(conversations.flatMap((c) => c.turns).map((t) => t.alias)), new Set(['triage']));
});
