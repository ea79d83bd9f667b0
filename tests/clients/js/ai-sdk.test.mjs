// The Vercel AI SDK (`ai` + `@ai-sdk/openai`, versions pinned in
// package-lock.json) against the real proxy in front of the real
// simulator: a unary call, a stream, structured output and a tool loop
// through the chat provider (`openai.chat('triage')`), and the Responses
// provider (`openai('triage')`) — the same four, plus a
// `previousResponseId` chain — each asked of the admin API afterwards:
// captured, and the tool loops and the Responses chain threaded as one
// conversation. Every test sends its own `x-flywheel-user`, so the admin
// API's `user` filter finds exactly its exchanges.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, streamText, generateObject, tool, stepCountIs } from 'ai';
import { z } from 'zod';
import { ALERT, suiteStack } from './suite.mjs';

const suite = suiteStack();

/** A provider whose every request names `user` to Flywheel. */
function provider(user) {
  return createOpenAI({ baseURL: `${suite.stack.url}/v1`, apiKey: suite.stack.keys.client, headers: { 'x-flywheel-user': user } });
}

test('unary generateText is answered and captured', async () => {
  const user = `ai-sdk-unary-${randomUUID()}`;
  const { text, usage } = await generateText({ model: provider(user).chat('triage'), prompt: ALERT });
  assert.match(text, /^Threat type: credential_access/);
  assert.ok(usage.inputTokens > 0 && usage.outputTokens > 0);
  const [conversation] = await suite.captured(user, 1);
  assert.equal(conversation.turns[0].response.message.content, text);
});

test('streamText streams and is captured whole', async () => {
  const user = `ai-sdk-stream-${randomUUID()}`;
  const result = streamText({ model: provider(user).chat('triage'), prompt: ALERT });
  const parts = [];
  for await (const part of result.textStream) parts.push(part);
  assert.ok(parts.length > 3, 'several deltas');
  const text = parts.join('');
  assert.match(text, /^Threat type: credential_access/);
  const [conversation] = await suite.captured(user, 1);
  assert.equal(conversation.turns[0].streamed, true);
  assert.equal(conversation.turns[0].response.message.content, text);
});

test('generateObject gets an object valid against its schema', async () => {
  const user = `ai-sdk-object-${randomUUID()}`;
  const schema = z.object({
    threat_type: z.string(),
    severity: z.enum(['informational', 'low', 'medium', 'high', 'critical']),
    rationale: z.string(),
    indicators: z.array(z.string()),
  });
  const { object } = await generateObject({ model: provider(user).chat('triage'), schema, prompt: ALERT });
  assert.equal(object.threat_type, 'credential_access');
  assert.equal(object.severity, 'high');
  assert.ok(object.indicators.length >= 1);
  const [conversation] = await suite.captured(user, 1);
  assert.equal(conversation.turns[0].request.params.response_format.type, 'json_schema');
});

/** A two-step tool loop with `model`: the tool runs once, then the model
 * answers; both steps are captured in one conversation of `user`. */
async function toolLoop(model, user) {
  const calls = [];
  const result = await generateText({
    model,
    tools: {
      lookup_host: tool({
        description: 'Look up the owner and role of a host',
        inputSchema: z.object({ hostname: z.string() }),
        execute: async ({ hostname }) => {
          calls.push(hostname);
          return { hostname, owner: 'alice', role: 'workstation' };
        },
      }),
    },
    stopWhen: stepCountIs(4),
    prompt: `${ALERT} Look up the host first.`,
  });
  assert.equal(calls.length, 1, 'the tool ran once');
  assert.equal(result.steps.length, 2, 'a call, then the answer');
  assert.match(result.text, /Threat type:/);
  const conversations = await suite.captured(user, 2);
  assert.equal(conversations.length, 1, 'one conversation');
  const turns = conversations[0].turns;
  assert.equal(turns.length, 2);
  assert.equal(turns[0].response.message.tool_calls[0].function.name, 'lookup_host');
  assert.match(turns[1].response.message.content, /Threat type:/);
}

test('a tool loop runs the tool and threads into one conversation', async () => {
  const user = `ai-sdk-tools-${randomUUID()}`;
  await toolLoop(provider(user).chat('triage'), user);
});

test('the Responses provider with a provider model name', async () => {
  // A name that is no alias goes unchanged to the default provider's
  // `responses`, unary and streamed.
  const model = provider('ai-sdk-responses').responses('gpt-4o-mini');
  const { text } = await generateText({ model, prompt: ALERT });
  assert.match(text, /^Threat type: credential_access/);
  const streamed = streamText({ model, prompt: ALERT });
  const parts = [];
  for await (const part of streamed.textStream) parts.push(part);
  assert.ok(parts.length > 3, 'typed delta events arrive one by one');
  assert.equal(parts.join(''), text);
});

test('the Responses provider with the alias', async () => {
  // The default provider (`openai('triage')`) speaks the Responses API:
  // routed by alias, and a follow-up naming the previous response is
  // captured in the same conversation.
  const user = `ai-sdk-responses-alias-${randomUUID()}`;
  const model = provider(user)('triage');
  const first = await generateText({ model, prompt: ALERT });
  assert.match(first.text, /^Threat type: credential_access/);
  const previousResponseId = first.providerMetadata.openai.responseId;
  assert.match(previousResponseId, /^resp_/);
  const streamed = streamText({
    model,
    prompt: 'Is the host isolated already?',
    providerOptions: { openai: { previousResponseId } },
  });
  const parts = [];
  for await (const part of streamed.textStream) parts.push(part);
  const conversations = await suite.captured(user, 2);
  assert.equal(conversations.length, 1, 'one conversation');
  const turns = conversations[0].turns;
  assert.equal(turns.length, 2);
  assert.equal(turns[0].response.message.content, first.text);
  assert.equal(turns[1].streamed, true);
  assert.equal(turns[1].response.message.content, parts.join(''));
});

test('the Responses provider runs a tool loop threaded as one conversation', async () => {
  // Its second step resends the first's input with the call and the
  // tool's output (no `previous_response_id`).
  const user = `ai-sdk-responses-tools-${randomUUID()}`;
  await toolLoop(provider(user)('triage'), user);
});

test('the Responses provider gets an object valid against its schema', async () => {
  const user = `ai-sdk-responses-object-${randomUUID()}`;
  const schema = z.object({
    threat_type: z.string(),
    severity: z.enum(['informational', 'low', 'medium', 'high', 'critical']),
    rationale: z.string(),
  });
  const { object } = await generateObject({ model: provider(user)('triage'), schema, prompt: ALERT });
  assert.equal(object.threat_type, 'credential_access');
  assert.equal(object.severity, 'high');
  const [conversation] = await suite.captured(user, 1);
  assert.equal(conversation.turns[0].request.params.text.format.type, 'json_schema');
});

test('the Responses provider threads a chat that resends its messages', async () => {
  // A chat app keeps the messages and sends them all each turn; with
  // `store` on (the default) the SDK names earlier answers by item id.
  const user = `ai-sdk-responses-history-${randomUUID()}`;
  const model = provider(user)('triage');
  const messages = [{ role: 'user', content: ALERT }];
  const first = await generateText({ model, messages });
  messages.push(...first.response.messages, { role: 'user', content: 'Is the host isolated already?' });
  const second = await generateText({ model, messages });
  assert.match(second.text, /\S/);
  const conversations = await suite.captured(user, 2);
  assert.equal(conversations.length, 1, 'one conversation');
  assert.equal(conversations[0].turns.length, 2);
  // The first answer went back as a reference to its stored item, which
  // the record keeps for datasets to put the answer's text in its place.
  const sent = conversations[0].turns[1].request.messages;
  assert.ok(sent.some((m) => m.role === 'assistant' && /^msg_/.test(m.item_reference ?? '')), JSON.stringify(sent));
});
