// @ts-check
// A whole agent turn through the host library, against the real sidecar (or the frozen
// binary: SIDECAR_BIN) and a scripted fake OpenAI-compatible provider: the model calls a
// tool, the host runs it and sends the result back as a tool turn, the model answers.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { SidecarHost } from '../index.js';
import { HOST_DIR, PYTHON, REPO, SIDECAR_ENV, makeDataDir, sidecarCommand } from './helpers.js';

/**
 * @typedef {import('../types.js').ToolDefinition} ToolDefinition
 * @typedef {import('../types.js').ModelRequest} ModelRequest
 * @typedef {import('../types.js').ToolCall} ToolCall
 */

/** @type {ToolDefinition} */
const READ_FILE = {
  name: 'read_file',
  description: 'Read a text file of the project.',
  parameters: { type: 'object', properties: { path: { type: 'string' } }, required: ['path'], additionalProperties: false },
};
const PROMPT = 'What does the project README say?';
const FILE_TEXT = '# model-sidecar\nA sidecar process for LLM calls.';

/** @type {{ url: string, send: (command: object) => Promise<any>, stop: () => void }} */ let fake;
/** @type {{ dir: string, remove: () => Promise<void> }} */ let data;
/** @type {SidecarHost} */ let host;

/** The scripted fake: one JSON command a line on its stdin, one JSON answer a line on its stdout. */
async function startScriptedFake() {
  const proc = spawn(PYTHON, [path.join(HOST_DIR, 'test/fixtures/scripted_fake.py'), '--kind', 'openai'], {
    cwd: REPO,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: /** @type {import('node:stream').Readable} */ (proc.stdout) })[Symbol.asyncIterator]();
  const first = await lines.next();
  assert.ok(!first.done && first.value.startsWith('http://127.0.0.1:'), `the fake did not start: ${first.value}`);
  return {
    url: /** @type {string} */ (first.value),
    /** @param {object} command */
    send: async (command) => {
      proc.stdin?.write(JSON.stringify(command) + '\n');
      const answer = await lines.next();
      assert.ok(!answer.done, 'the fake exited');
      return JSON.parse(answer.value);
    },
    stop: () => proc.stdin?.end(), // end of input: the fake stops
  };
}

/** What the host implements: `read_file` of a path (here a fixed text, to compare with what the model got). */
/** @param {ToolCall} call */
function runTool(call) {
  assert.equal(call.name, 'read_file');
  return call.arguments.path === 'README.md' ? FILE_TEXT : `no such file: ${call.arguments.path}`;
}

before(async () => {
  fake = await startScriptedFake();
  data = await makeDataDir({ fake: fake.url });
  const { command, args } = sidecarCommand();
  host = new SidecarHost({ command, args, dataDir: data.dir, env: SIDECAR_ENV });
  await host.start();
});

after(async () => {
  await host?.close();
  fake?.stop();
  await data?.remove();
});

/**
 * The second turn: the first turn's messages, the model's calls, one tool turn per call.
 * @param {ToolCall[]} calls
 * @returns {ModelRequest}
 */
function followUp(calls) {
  return {
    prompt: '',
    tools: [READ_FILE],
    messages: [
      { role: 'user', content: PROMPT },
      { role: 'assistant', content: '', toolCalls: calls },
      ...calls.map((call) => ({ role: /** @type {'tool'} */ ('tool'), toolCallId: call.id, content: runTool(call) })),
    ],
  };
}

test('generate: the model calls read_file, the host sends the result, the model answers', async () => {
  await fake.send({ enqueue: [
    { toolCalls: [{ name: 'read_file', arguments: { path: 'README.md' }, id: 'call_gen_1' }] },
    { text: 'The README introduces model-sidecar.' },
  ] });
  const first = await host.generate({ request: { prompt: PROMPT, tools: [READ_FILE], toolChoice: 'auto' } });
  assert.equal(first.finishReason, 'tool_calls');
  assert.deepEqual(first.toolCalls, [{ id: 'call_gen_1', name: 'read_file', arguments: { path: 'README.md' } }]);

  const second = await host.generate({ request: followUp(first.toolCalls ?? []) });
  assert.equal(second.content, 'The README introduces model-sidecar.');
  assert.equal(second.finishReason, 'stop');
  assert.ok(!second.toolCalls?.length);

  // What the provider got on the second turn: the call and its result, in OpenAI's form.
  const { requests } = await fake.send({ requests: true });
  const messages = requests.at(-1).messages;
  const assistant = messages.find((/** @type {any} */ m) => m.role === 'assistant');
  assert.equal(assistant.tool_calls[0].id, 'call_gen_1');
  assert.deepEqual(JSON.parse(assistant.tool_calls[0].function.arguments), { path: 'README.md' });
  const tool = messages.find((/** @type {any} */ m) => m.role === 'tool');
  assert.deepEqual({ id: tool.tool_call_id, content: tool.content }, { id: 'call_gen_1', content: FILE_TEXT });
});

test('stream: tool-call deltas are assembled on stream.toolCalls; the result holds the parsed call', async () => {
  await fake.send({ enqueue: [
    { toolCalls: [{ name: 'read_file', arguments: { path: 'README.md' }, id: 'call_str_1' }] },
    { text: 'It introduces model-sidecar.' },
  ] });
  const stream = host.stream({ request: { prompt: PROMPT, tools: [READ_FILE], toolChoice: { name: 'read_file' } } });
  let deltas = 0;
  for await (const chunk of stream) deltas += chunk.toolCalls?.length ?? 0;
  const result = await stream.result;
  assert.ok(deltas > 1, `the arguments came in ${deltas} delta(s)`);
  assert.deepEqual(stream.toolCalls.map((c) => ({ ...c, arguments: JSON.parse(c.arguments) })),
    [{ index: 0, id: 'call_str_1', name: 'read_file', arguments: { path: 'README.md' } }]);
  assert.deepEqual(result.toolCalls, [{ id: 'call_str_1', name: 'read_file', arguments: { path: 'README.md' } }]);
  assert.equal(result.finishReason, 'tool_calls');

  const answer = host.stream({ request: followUp(result.toolCalls ?? []) });
  for await (const _chunk of answer) { /* drain */ }
  assert.equal((await answer.result).content, 'It introduces model-sidecar.');
  assert.deepEqual(answer.toolCalls, []);
});
